//! Import rules that keep the parts separable: fleetctl and the agent talk to the
//! controller only through fleet-proto, never through controller internals.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn fleetctl_uses_only_fleet_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/bin/fleetctl"), &mut files);
    assert!(files.len() >= 3, "fleetctl sources not found");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            !text.contains("fleet_controller"),
            "{} reaches into controller internals",
            f.display()
        );
    }
}

#[test]
fn the_agent_does_not_depend_on_the_controller() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    assert!(text.contains("fleet-proto"));
    assert!(
        !text.contains("fleet-controller"),
        "fleet-agent must not depend on fleet-controller"
    );
}
