//! Reloading: following the file as it changes, and on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::compile::compile;
use super::{RouteMap, RouteMapError};

/// What identifies a version of the file cheaply: modification time, length and inode (through
/// symlinks, so a Kubernetes ConfigMap update, which swaps the `..data` link to a new folder,
/// is a change even if the new file has the old one's time and length).
type Stamp = Option<(SystemTime, u64, u64)>;

async fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Keeps `current` in step with the file at `path`: checks its modification time and length
/// every second and reloads when they change, and reloads on SIGHUP. A file that fails to load
/// leaves the old map in force and is logged; a good one is swapped in atomically (requests in
/// flight finish with the map they started with) and passed to `on_reload`.
pub fn spawn_reloader(
    path: PathBuf,
    builtin: Vec<String>,
    current: Arc<arc_swap::ArcSwap<RouteMap>>,
    on_reload: impl Fn(&RouteMap) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let builtin: Vec<&str> = builtin.iter().map(String::as_str).collect();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; the route map reloads only when its file changes");
                None
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The map in `current` was loaded from the file as it is now.
        let mut seen = stamp(&path).await;
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            let now = stamp(&path).await;
            if !forced && now == seen {
                continue;
            }
            seen = now;
            let loaded = match tokio::fs::read_to_string(&path).await {
                Ok(text) => compile(&text, &builtin).map_err(|e| RouteMapError::Invalid {
                    file: Some(path.clone()),
                    line: e.line,
                    message: e.message,
                }),
                Err(source) => Err(RouteMapError::Read {
                    path: path.clone(),
                    source,
                }),
            };
            match loaded {
                Ok(map) => {
                    tracing::info!(
                        file = %path.display(),
                        routes = map.routes(),
                        "route map reloaded"
                    );
                    let map = Arc::new(map);
                    current.store(map.clone());
                    on_reload(&map);
                }
                Err(error) => {
                    tracing::warn!(%error, "route map not reloaded; the previous one stays in force");
                }
            }
        }
    })
}
