//! The shipped gateway configurations validate as rendered.

use super::*;

/// Both Envoy configs pass `envoy --mode validate` as rendered.
#[tokio::test]
async fn envoy_configs_validate() {
    let Some(envoy) = gateway_binary(Kind::Envoy) else {
        return;
    };
    let dir =
        std::env::temp_dir().join(format!("usher-validate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = [
        ("GATEWAY_PORT", "8000".to_owned()),
        ("ADMIN_PORT", "9901".to_owned()),
        ("USHER_INTERNAL_HOST", "usher".to_owned()),
        ("USHER_INTERNAL_PORT", "9191".to_owned()),
        ("USHER_API_HOST", "usher".to_owned()),
        ("USHER_API_PORT", "8080".to_owned()),
        ("UPSTREAM_HOST", "upstream".to_owned()),
        ("UPSTREAM_PORT", "8080".to_owned()),
    ];
    for template in [Kind::Envoy, Kind::EnvoyGrpc].map(|k| k.templates()[0]) {
        let rendered = dir.join(template);
        render(template, &rendered, &vars);
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&rendered)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{template}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Kubernetes examples (Istio, Envoy Gateway) pass `gateway-config/kubernetes/check.py`:
/// kubernetes-validate where it has the kind's schema, the CRD fields they use otherwise, and
/// their references to each other.
#[test]
fn kubernetes_examples_check() {
    let script = Path::new(CONFIG_DIR).join("kubernetes/check.py");
    let out = Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        missing("kubernetes-validate");
        return;
    }
    assert!(out.status.success(), "{stderr}");
}
