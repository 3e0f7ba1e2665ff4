//! What deployments rely on: the route map reloads when a Kubernetes ConfigMap changes, and the
//! manifests in `deploy/kubernetes/` are valid and in step with `gateway-config/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use usher::routes::{spawn_reloader, DefaultPolicy, RouteMap};

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
const GATEWAY_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway-config");

/// The layout the kubelet gives a ConfigMap volume: `routes.toml` → `..data/routes.toml`, and
/// `..data` → a timestamped folder. An update writes a new folder and swaps `..data` atomically.
struct ConfigMapVolume {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapVolume {
    fn new(content: &str) -> ConfigMapVolume {
        let dir =
            std::env::temp_dir().join(format!("usher-configmap-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut volume = ConfigMapVolume { dir, version: 0 };
        volume.publish(content, None);
        std::os::unix::fs::symlink("..data/routes.toml", volume.file()).unwrap();
        volume
    }

    fn file(&self) -> PathBuf {
        self.dir.join("routes.toml")
    }

    /// Writes a new version and swaps `..data` to it (rename over the old link, as the kubelet
    /// does); `mtime` forces the new file's modification time.
    fn publish(&mut self, content: &str, mtime: Option<std::time::SystemTime>) {
        self.version += 1;
        let folder = format!("..2026_01_01_00_00_0{}.000", self.version);
        std::fs::create_dir(self.dir.join(&folder)).unwrap();
        let file = self.dir.join(&folder).join("routes.toml");
        std::fs::write(&file, content).unwrap();
        if let Some(mtime) = mtime {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&folder, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

impl Drop for ConfigMapVolume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_configmap_update_reloads_the_route_map() {
    let builtin = ["user_self_read"];
    let mut volume = ConfigMapVolume::new("default_policy = \"deny\" \n");
    let current = Arc::new(arc_swap::ArcSwap::from_pointee(
        RouteMap::load(&volume.file(), &builtin).unwrap(),
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = spawn_reloader(
        volume.file(),
        builtin.iter().map(|s| s.to_string()).collect(),
        current.clone(),
        move |map| {
            let _ = tx.send(map.default_policy());
        },
    );
    // Give the reloader time to take its first look, then publish a new version that even has
    // the old file's length and modification time: only the swapped link tells them apart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = std::fs::metadata(volume.file())
        .unwrap()
        .modified()
        .unwrap();
    volume.publish("default_policy = \"allow\"\n", Some(old));
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    task.abort();
    assert_eq!(got.ok().flatten(), Some(DefaultPolicy::Allow));
    assert_eq!(current.load().default_policy(), DefaultPolicy::Allow);
}
