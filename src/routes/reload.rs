//! Reloading: following the file as it changes, and on SIGHUP. A reload is [`RouteMap::load`]
//! again; only the noticing lives here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::RouteMap;

/// What a look at the file found, as passed to the reloader's callback.
#[derive(Debug, Clone, Copy)]
pub enum Reload<'a> {
    /// A new map, now in force.
    Loaded(&'a RouteMap),
    /// The file changed but does not load (the reason is logged); the previous map stays.
    Refused,
}

/// What identifies a version of the file cheaply: modification time, length and inode (through
/// symlinks, so a Kubernetes ConfigMap update, which swaps the `..data` link to a new folder,
/// is a change even if the new file has the old one's time and length).
type Stamp = Option<(SystemTime, u64, u64)>;

/// One `stat`, cheap enough to make on the runtime's thread once a second.
fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Keeps `current` in step with the file at `path`: checks its modification time and length
/// every second and reloads when they change, and reloads on SIGHUP. A file that fails to load
/// leaves the old map in force and is logged; a good one is swapped in atomically (requests in
/// flight finish with the map they started with). Either way `on_reload` hears of it.
pub fn spawn_reloader(
    path: PathBuf,
    builtin: Vec<String>,
    current: Arc<arc_swap::ArcSwap<RouteMap>>,
    on_reload: impl Fn(Reload<'_>) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    // The map in `current` was loaded from the file as it is now: what is seen of it is taken
    // before this returns, so an edit made right after counts as a change.
    let mut follower = Follower::new(path, builtin, current, on_reload);
    tokio::spawn(async move {
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
            follower.look(forced).await;
        }
    })
}

/// The file, what was last seen of it, and where a new map goes.
struct Follower<F> {
    path: PathBuf,
    builtin: Arc<[String]>,
    current: Arc<arc_swap::ArcSwap<RouteMap>>,
    on_reload: F,
    seen: Stamp,
}

impl<F: Fn(Reload<'_>)> Follower<F> {
    /// Starts from the file as it is now.
    fn new(
        path: PathBuf,
        builtin: Vec<String>,
        current: Arc<arc_swap::ArcSwap<RouteMap>>,
        on_reload: F,
    ) -> Self {
        let seen = stamp(&path);
        Follower {
            path,
            builtin: builtin.into(),
            current,
            on_reload,
            seen,
        }
    }

    /// Loads the file again if it changed since the last look, or always when `forced` (SIGHUP:
    /// an edit can keep the time and length).
    async fn look(&mut self, forced: bool) {
        let now = stamp(&self.path);
        if !forced && now == self.seen {
            return;
        }
        self.seen = now;
        let (path, builtin) = (self.path.clone(), self.builtin.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let builtin: Vec<&str> = builtin.iter().map(String::as_str).collect();
            RouteMap::load(&path, &builtin)
        })
        .await;
        match loaded {
            Ok(Ok(map)) => {
                tracing::info!(
                    file = %self.path.display(),
                    routes = map.routes(),
                    "route map reloaded"
                );
                let map = Arc::new(map);
                self.current.store(map.clone());
                (self.on_reload)(Reload::Loaded(&map));
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "route map not reloaded; the previous one stays in force");
                (self.on_reload)(Reload::Refused);
            }
            Err(error) => {
                tracing::warn!(%error, "route map not reloaded; the previous one stays in force");
                (self.on_reload)(Reload::Refused);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::*;
    use crate::routes::DefaultPolicy;

    const BUILTIN: &[&str] = &["user_self_read", "user_all_read", "role_read"];

    /// What the callback heard: the new map's default policy, or `None` for a refusal.
    type Heard = UnboundedReceiver<Option<DefaultPolicy>>;

    async fn follow(
        file: &Path,
        first: &str,
    ) -> (
        Follower<impl Fn(Reload<'_>)>,
        Arc<arc_swap::ArcSwap<RouteMap>>,
        Heard,
    ) {
        std::fs::write(file, first).unwrap();
        let current = Arc::new(arc_swap::ArcSwap::from_pointee(
            RouteMap::load(file, BUILTIN).unwrap(),
        ));
        let (tx, rx) = unbounded_channel();
        let follower = Follower::new(
            file.to_owned(),
            BUILTIN.iter().map(|s| s.to_string()).collect(),
            current.clone(),
            move |reload: Reload<'_>| {
                let _ = tx.send(match reload {
                    Reload::Loaded(map) => Some(map.default_policy()),
                    Reload::Refused => None,
                });
            },
        );
        (follower, current, rx)
    }

    #[tokio::test]
    async fn good_maps_are_swapped_in_and_bad_ones_refused() {
        let dir = std::env::temp_dir().join(format!("usher-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routes.toml");
        let (mut follower, current, mut heard) = follow(&file, "default_policy = \"deny\"\n").await;

        follower.look(false).await;
        assert!(
            heard.try_recv().is_err(),
            "an unchanged file is not reloaded"
        );

        // A bad file (and a different length, so the stamp changes) is refused.
        std::fs::write(&file, "default_policy = \"allow\"\nbogus = 1\n").unwrap();
        follower.look(false).await;
        assert_eq!(heard.try_recv().unwrap(), None);
        assert_eq!(current.load().default_policy(), DefaultPolicy::Deny);

        std::fs::write(&file, "default_policy = \"allow\"\n").unwrap();
        follower.look(false).await;
        assert_eq!(heard.try_recv().unwrap(), Some(DefaultPolicy::Allow));
        assert_eq!(current.load().default_policy(), DefaultPolicy::Allow);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_forced_look_reloads_even_when_the_file_looks_unchanged() {
        let dir = std::env::temp_dir().join(format!("usher-hup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("routes.toml");
        let (mut follower, current, mut heard) =
            follow(&file, "default_policy = \"deny\" \n").await;
        let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();

        // Same length, same modification time: only a SIGHUP can tell usher to look again.
        std::fs::write(&file, "default_policy = \"allow\"\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        follower.look(false).await;
        assert!(heard.try_recv().is_err(), "the poller sees no change");
        assert_eq!(current.load().default_policy(), DefaultPolicy::Deny);

        follower.look(true).await;
        assert_eq!(heard.try_recv().unwrap(), Some(DefaultPolicy::Allow));
        assert_eq!(current.load().default_policy(), DefaultPolicy::Allow);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
