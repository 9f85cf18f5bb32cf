//! Import rules that keep the parts separable, checked on Cargo's own dependency graph (not
//! on source text): fleetctl and the agent reach the controller only through fleet-proto,
//! and fleet-proto depends on none of the programs.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Workspace package name → names of the packages it links (normal dependencies only:
/// dev-dependencies never reach a shipped binary), taken from `cargo metadata`.
fn graph() -> HashMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut g = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| names[d["pkg"].as_str().unwrap()].to_string())
            .collect();
        g.insert(names[node["id"].as_str().unwrap()].to_string(), deps);
    }
    g
}

fn reachable(g: &HashMap<String, Vec<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(p) = todo.pop() {
        for d in g.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn fleetctl_and_the_agent_link_fleet_proto_and_not_the_controller() {
    let g = graph();
    for program in ["fleetctl", "fleet-agent"] {
        let deps = reachable(&g, program);
        assert!(
            deps.contains("fleet-proto"),
            "{program} should depend on fleet-proto"
        );
        assert!(
            !deps.contains("fleet-controller"),
            "{program} must not depend on fleet-controller (directly or through another crate)"
        );
    }
}

#[test]
fn fleet_proto_depends_on_no_program() {
    let g = graph();
    let deps = reachable(&g, "fleet-proto");
    for program in ["fleet-controller", "fleet-agent", "fleetctl", "fleet-lab"] {
        assert!(
            !deps.contains(program),
            "fleet-proto must not depend on {program}"
        );
    }
}
