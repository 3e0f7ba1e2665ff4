//! What deployments rely on: the route map reloads when a Kubernetes ConfigMap changes, and the
//! manifests in `deploy/kubernetes/` are valid and in step with `gateway-config/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use usher::routes::{spawn_reloader, DefaultPolicy, Reload, RouteMap};

use crate::helpers::tool;

const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

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
        move |reload| {
            if let Reload::Loaded(map) = reload {
                let _ = tx.send(map.default_policy());
            }
        },
    );
    // The reloader has seen the file as it is once `spawn_reloader` returns. Publish a new
    // version that even has the old file's length and modification time: only the swapped link
    // tells them apart.
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

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
}

#[test]
fn kubernetes_manifests_are_valid_and_in_step_with_gateway_config() {
    let dir = Path::new(MANIFESTS);
    // The copies of gateway-config/ are what sync.sh makes of it now.
    let fresh = std::env::temp_dir().join(format!("usher-sync-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&fresh).unwrap();
    let status = Command::new("sh")
        .arg(dir.join("sync.sh"))
        .arg(&fresh)
        .status()
        .unwrap();
    assert!(status.success());
    for name in ["routes.toml", "envoy.yaml"] {
        let same = read(fresh.join(name)) == read(dir.join(name));
        assert!(
            same,
            "deploy/kubernetes/{name} differs from gateway-config/: run `sh deploy/kubernetes/sync.sh`"
        );
    }
    let _ = std::fs::remove_dir_all(&fresh);

    // Every manifest is applied by the kustomization, and the ConfigMaps mount folders.
    let kustomization = read(dir.join("kustomization.yaml"));
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" && name != "envoy.yaml" {
            if !name.ends_with(".example.yaml") {
                assert!(
                    kustomization.contains(&format!("- {name}")),
                    "{name} is not in kustomization.yaml"
                );
            }
            assert!(
                !read(dir.join(&name)).contains("subPath:"),
                "{name}: subPath blocks ConfigMap updates"
            );
            manifests.push(dir.join(name));
        }
    }
    manifests.sort();

    let Some(validate) = tool("kubernetes-validate", &[]) else {
        return;
    };
    let out = Command::new(validate)
        .arg("--strict")
        .args(&manifests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(envoy) = tool("envoy", &[]) else {
        return;
    };
    let out = Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(dir.join("envoy.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy rejects deploy/kubernetes/envoy.yaml:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
