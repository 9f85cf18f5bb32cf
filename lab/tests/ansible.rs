//! The fleet.fleet Ansible collection (ansible/): lint-clean under ansible-lint's
//! production profile with the pinned toolchain.

mod common;

use fleet_lab::ansible;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn collection_is_clean_under_the_production_profile() {
    common::init();
    let work = tempfile::tempdir().unwrap();
    let out = ansible::command("ansible-lint", work.path())
        .unwrap_or_else(|e| panic!("{e:#}"))
        // Never reach Galaxy: the collection has no dependencies to fetch.
        .args(["--offline", "--profile", "production", "--strict"])
        .current_dir(ansible::collection_dir())
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success(), "ansible-lint failed:\n{t}");
    assert!(
        t.contains("Profile 'production' was required, and it passed"),
        "{t}"
    );

    let out = ansible::command("ansible-playbook", work.path())
        .unwrap()
        .args(["--syntax-check", "-i", "localhost,", "fleet.fleet.site"])
        .output()
        .unwrap();
    assert!(out.status.success(), "syntax check failed:\n{}", text(&out));
}
