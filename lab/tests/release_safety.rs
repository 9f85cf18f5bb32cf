//! A release never runs code as root (issue 14, finding 1): requirements that would make
//! pip build a source tree, read another file or go to the network are refused before
//! anything changes on the host, while a wheel-only release still gets its venv.

mod common;

use common::ctl;

use std::net::TcpListener;
use std::time::Duration;

use fleet_lab::load;
use fleet_lab::{host_addr, release, Lab, LabOptions};

const PORT: u16 = 8000;

fn get(port: u16) -> String {
    let addr = format!("{}:{port}", host_addr(1)).parse().unwrap();
    match load::request(addr, "/", Duration::from_secs(5)) {
        load::Outcome::Ok(body) => body,
        load::Outcome::Failed(why) => format!("FAILED {why}"),
    }
}

#[test]
fn hostile_requirements_are_refused_and_wheels_still_install() {
    common::init();
    let Some(lab) = fleet_lab::test_lab(&LabOptions::fleet(1)) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        release::write(work.path(), name, bytes)
            .unwrap()
            .display()
            .to_string()
    };
    let spec = release::spec("shop", "gunicorn", PORT, "");
    ctl(&lab, &["app", "apply", &file("shop.toml", spec.as_bytes())]);
    let upload = |version: &str, extra: &[(&str, Vec<u8>)]| {
        let tar = release::sample_with("wsgi", version, extra).unwrap();
        let path = file(&format!("shop-{version}.tar.gz"), &tar);
        ctl(
            &lab,
            &["release", "upload", "shop", &path, "--version", version],
        );
    };
    upload("1.0", &[]);
    ctl(&lab, &["deploy", "shop", "--version", "1.0"]);
    assert!(get(PORT).starts_with("release=1.0"), "{}", get(PORT));

    let snapshot = |lab: &Lab| {
        lab.sh(
            1,
            "readlink /var/lib/fleet/apps/shop/current; ls -a /var/lib/fleet/apps/shop/releases; \
             ls -a /var/lib/fleet/apps/shop; ls / /root /tmp",
        )
        .unwrap()
    };
    let before = snapshot(&lab);

    // An in-tree PEP 517 backend: pip imports (runs) it to ask what the build needs.
    let evil = |req: String| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("requirements.txt", req.into_bytes()),
            (
                "evil/pyproject.toml",
                b"[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n"
                    .to_vec(),
            ),
            (
                "evil/backend.py",
                b"open('/root/pwned', 'w').write('ran as root')\n".to_vec(),
            ),
            ("wheels/README", b"no wheels".to_vec()),
        ]
    };
    // Anything connecting here is pip following --find-links to the outer machine.
    let listener = TcpListener::bind("198.18.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let links = format!("http://{}/", listener.local_addr().unwrap());
    let cases = [
        ("2.0-path", "./evil\n".to_owned(), "line 1"),
        (
            "2.0-url",
            "\nevil @ file:///var/lib/fleet/apps/shop/releases/2.0-url/evil\n".to_owned(),
            "line 2",
        ),
        ("2.0-shadow", "-r /etc/shadow\n".to_owned(), "line 1"),
        (
            "2.0-links",
            format!("# fetch\n\n--find-links {links}\nevil==1.0\n"),
            "line 3",
        ),
    ];
    for (version, req, line) in cases {
        upload(version, &evil(req));
        let err = match lab.fleetctl(&["deploy", "shop", "--version", version]) {
            Ok(out) => panic!("{version} was deployed: {out}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(line) && err.contains("requirements.txt"),
            "{version}: {err}"
        );
        assert!(
            !err.contains("root:"),
            "{version} quoted /etc/shadow: {err}"
        );
        assert!(
            listener.accept().is_err(),
            "{version}: pip reached the network"
        );
        assert_eq!(before, snapshot(&lab), "{version} changed the host");
        assert!(
            get(PORT).starts_with("release=1.0"),
            "{version}: {}",
            get(PORT)
        );
    }

    // A wheel-only release still builds its venv, owned by root, and serves.
    let (wheel, bytes) = release::tiny_wheel("tinypkg", "1.0", "from-wheel").unwrap();
    let wheel_path = format!("wheels/{wheel}");
    upload(
        "3.0",
        &[
            ("requirements.txt", b"TinyPkg==1.0\n".to_vec()),
            (wheel_path.as_str(), bytes),
        ],
    );
    ctl(&lab, &["deploy", "shop", "--version", "3.0"]);
    assert!(get(PORT).starts_with("release=3.0"), "{}", get(PORT));
    let venv = "/var/lib/fleet/apps/shop/current/.venv";
    let value = lab
        .sh(1, &format!("setpriv --reuid=shop --regid=shop --clear-groups {venv}/bin/python -c 'import tinypkg; print(tinypkg.VALUE)'"))
        .unwrap();
    assert_eq!(value.trim(), "from-wheel");
    let not_root = lab
        .sh(
            1,
            &format!("find {venv} ! -user root -o ! -group root -o -perm /022 ! -type l | head"),
        )
        .unwrap();
    assert_eq!(not_root.trim(), "", "the app's user could change its venv");
    let gecos = lab.sh(1, "getent passwd shop | cut -d: -f5").unwrap();
    assert_eq!(gecos.trim(), "fleet app shop");
}
