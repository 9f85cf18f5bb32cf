//! Staging against real temp directories, with archives built here byte by byte (so they
//! can say what a well-behaved `tar` never would). Every refusal also proves that the
//! running release and `current` are exactly as they were.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::*;
use crate::fetch::testing::{serve, Script};
use crate::fetch::FetchSettings;

/// Builds venvs in these tests: nobody/nogroup, never root.
const BUILDER: Option<RunAs> = Some(RunAs {
    uid: 65534,
    gid: 65534,
});

enum E<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str, u32),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Special(&'a str, EntryType),
}

/// A header whose name is copied verbatim: `Header::set_path` would refuse the very paths
/// these tests need.
fn header(kind: EntryType, path: &str, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

fn targz(entries: &[E]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        match *e {
            E::File(p, mode, data) => {
                let mut h = header(EntryType::Regular, p, mode, data.len() as u64);
                h.set_cksum();
                b.append(&h, data).unwrap();
            }
            E::Dir(p, mode) => {
                let mut h = header(EntryType::Directory, p, mode, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Link(p, target) | E::Hard(p, target) => {
                let kind = if matches!(e, E::Link(..)) {
                    EntryType::Symlink
                } else {
                    EntryType::Link
                };
                let mut h = header(kind, p, 0o777, 0);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Special(p, kind) => {
                let mut h = header(kind, p, 0o644, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

struct Fx {
    _dir: tempfile::TempDir,
    releases: Releases,
    /// Same root, default limits: sets up the running release in tests of tight limits.
    unlimited: Releases,
    app: AppName,
    /// Never connected: a stage that needs the network fails fast, which proves the
    /// tests that expect no download.
    offline: Fetcher,
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

impl Fx {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The venv builder (not root) must reach the release through it, as it reaches
        // /var/lib/fleet/apps on a host.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("apps");
        let releases = Releases::with(&root, limits, "/usr/bin/python3");
        Fx {
            _dir: dir,
            releases,
            unlimited: Releases::new(&root),
            app: "shop".parse().unwrap(),
            offline: Fetcher::with_settings(quick()),
        }
    }

    fn app_dir(&self) -> PathBuf {
        self.releases.app_dir(&self.app)
    }

    /// Puts `bytes` where a finished download would be, so `stage` needs no controller.
    fn download(&self, bytes: &[u8]) -> String {
        let sha = sha(bytes);
        let dir = self.app_dir().join(INCOMING);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{sha}.tar.gz")), bytes).unwrap();
        sha
    }

    async fn stage(&self, version: &str, bytes: &[u8]) -> Result<PathBuf, ReleaseError> {
        let sha = self.download(bytes);
        self.releases
            .stage(
                &self.app,
                &v(version),
                &sha,
                bytes.len() as u64,
                &self.offline,
                BUILDER,
            )
            .await
    }

    /// A release 1.0, made current: what every refusal must leave alone.
    async fn running(&self) -> BTreeMap<String, String> {
        let bytes = good();
        let sha = self.download(&bytes);
        self.unlimited
            .stage(
                &self.app,
                &v("1.0"),
                &sha,
                bytes.len() as u64,
                &self.offline,
                BUILDER,
            )
            .await
            .unwrap();
        self.releases
            .switch_current(&self.app, &v("1.0"))
            .await
            .unwrap();
        snapshot(&self.app_dir())
    }

    /// Stages `bytes` as 2.0, expects a refusal mentioning every `needles`, and checks
    /// that nothing else changed and nothing was left behind.
    async fn refused(&self, bytes: &[u8], needles: &[&str]) -> ReleaseError {
        let before = self.running().await;
        let err = self.stage("2.0", bytes).await.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("release shop 2.0"), "{text}");
        for n in needles {
            assert!(text.contains(n), "{text:?} should mention {n:?}");
        }
        assert_eq!(snapshot(&self.app_dir()), before, "after: {text}");
        assert!(!self.releases.release_dir(&self.app, &v("2.0")).exists());
        assert_eq!(self.releases.current(&self.app).unwrap(), Some(v("1.0")));
        let leftovers: Vec<_> = fs::read_dir(self.app_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(STAGING) || n.starts_with(LINK_TMP))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        err
    }
}

fn quick() -> FetchSettings {
    FetchSettings {
        attempts: 1,
        session_wait: Duration::from_millis(50),
        idle_timeout: Duration::from_secs(5),
        retry_delay: Duration::from_millis(10),
    }
}

fn good() -> Vec<u8> {
    targz(&[
        E::Dir("./", 0o755),
        E::File("./app.py", 0o644, b"def application(e, s): pass\n"),
        E::Dir("./pkg/", 0o700),
        E::File("./pkg/sub/deep.py", 0o600, b"X = 1\n"),
        E::File("./bin/run", 0o775, b"#!/bin/sh\n"),
        E::Link("./pkg/app-link", "../app.py"),
    ])
}

/// Everything under the app dir except downloads: kind, mode and content of each entry,
/// and where each link points. Two equal snapshots mean byte-identical trees.
fn snapshot(app_dir: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(base).unwrap().display().to_string();
            if rel == INCOMING {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(&path, base, out);
                format!("dir {mode:o}")
            } else {
                format!("file {mode:o} {}", sha(&fs::read(&path).unwrap()))
            };
            out.insert(rel, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(app_dir, app_dir, &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

// ---- happy path ----

#[tokio::test]
async fn stages_nested_dirs_links_and_normalized_modes() {
    let fx = Fx::new();
    let dir = fx.stage("1.0", &good()).await.unwrap();
    assert_eq!(dir, fx.app_dir().join("releases/1.0"));
    assert_eq!(
        fs::read(dir.join("app.py")).unwrap(),
        b"def application(e, s): pass\n"
    );
    assert_eq!(fs::read(dir.join("pkg/sub/deep.py")).unwrap(), b"X = 1\n");
    // Readable by the app's user, writable by nobody but root.
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("pkg")), 0o755);
    assert_eq!(mode(&dir.join("pkg/sub")), 0o755);
    assert_eq!(mode(&dir.join("pkg/sub/deep.py")), 0o644);
    assert_eq!(mode(&dir.join("bin/run")), 0o755);
    assert_eq!(mode(&dir.join("app.py")), 0o644);
    assert_eq!(
        fs::read(dir.join("pkg/app-link")).unwrap(),
        fs::read(dir.join("app.py")).unwrap()
    );
    let list = fx.releases.list(&fx.app).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].version, v("1.0"));
    assert_eq!(list[0].sha256, sha(&good()));
    // The download is gone once the release is in place.
    assert_eq!(
        fs::read_dir(fx.app_dir().join(INCOMING)).unwrap().count(),
        0
    );
    assert_eq!(venv_bin(&dir), None);
    // Staging does not switch.
    assert_eq!(fx.releases.current(&fx.app).unwrap(), None);
}

#[tokio::test]
async fn archives_without_a_dot_prefix_and_with_a_git_header_are_fine() {
    let fx = Fx::new();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    // What `git archive` writes first: a pax global header carrying the commit id.
    let mut h = header(EntryType::XGlobalHeader, "pax_global_header", 0o666, 52);
    h.set_cksum();
    b.append(
        &h,
        &b"52 comment=0123456789012345678901234567890123456789\n"[..],
    )
    .unwrap();
    let mut h = header(EntryType::Regular, "app.py", 0o644, 3);
    h.set_cksum();
    b.append(&h, &b"x=1"[..]).unwrap();
    let bytes = b.into_inner().unwrap().finish().unwrap();
    let dir = fx.stage("1.0", &bytes).await.unwrap();
    assert_eq!(fs::read(dir.join("app.py")).unwrap(), b"x=1");
    assert!(!dir.join("pax_global_header").exists());
}

#[tokio::test]
async fn restaging_the_same_bytes_is_a_no_op() {
    let fx = Fx::new();
    let first = fx.stage("1.0", &good()).await.unwrap();
    let before = snapshot(&fx.app_dir());
    // No download needed (the offline fetcher would fail), nothing rewritten.
    let again = fx
        .releases
        .stage(
            &fx.app,
            &v("1.0"),
            &sha(&good()),
            good().len() as u64,
            &fx.offline,
            BUILDER,
        )
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(snapshot(&fx.app_dir()), before);
    // Uppercase hex names the same bytes.
    fx.releases
        .stage(
            &fx.app,
            &v("1.0"),
            &sha(&good()).to_uppercase(),
            good().len() as u64,
            &fx.offline,
            BUILDER,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_interrupted_stage_is_cleaned_up_and_redone() {
    let fx = Fx::new();
    let before = fx.running().await;
    // What a crash mid-stage leaves: a staging dir, an unmarked release dir.
    let app_dir = fx.app_dir();
    fs::create_dir_all(app_dir.join(".staging-2.0-deadbeef/junk")).unwrap();
    fs::create_dir_all(app_dir.join("releases/2.0/half")).unwrap();
    assert_eq!(fx.releases.list(&fx.app).unwrap().len(), 1);
    let dir = fx.stage("2.0", &good()).await.unwrap();
    assert!(dir.join("app.py").exists());
    assert!(!dir.join("half").exists());
    assert!(!app_dir.join(".staging-2.0-deadbeef").exists());
    let after = snapshot(&app_dir);
    for (k, val) in &before {
        assert_eq!(after.get(k), Some(val), "{k}");
    }
}

#[tokio::test]
async fn stages_through_the_fetcher_across_a_dropped_session() {
    let fx = Fx::new();
    let bytes = targz(&[E::File(
        "app.py",
        0o644,
        &(0..200_000u32).map(|i| (i % 97) as u8).collect::<Vec<_>>(),
    )]);
    let fetcher = Fetcher::with_settings(FetchSettings {
        attempts: 3,
        session_wait: Duration::from_secs(2),
        ..quick()
    });
    let (server, offsets) = serve(
        fetcher.clone(),
        bytes.clone(),
        bytes.len() / 3 + 1,
        Script {
            cut_after: Some(1),
            ..Script::default()
        },
    );
    let dir = fx
        .releases
        .stage(
            &fx.app,
            &v("3.1"),
            &sha(&bytes),
            bytes.len() as u64,
            &fetcher,
            BUILDER,
        )
        .await
        .unwrap();
    server.abort();
    assert_eq!(fs::read(dir.join("app.py")).unwrap().len(), 200_000);
    let offsets = offsets.lock().unwrap().clone();
    assert_eq!(offsets, vec![0, (bytes.len() / 3 + 1) as u64]);
}

// ---- refusals ----

#[tokio::test]
async fn refuses_absolute_paths() {
    let fx = Fx::new();
    let bytes = targz(&[
        E::File("app.py", 0o644, b""),
        E::File("/etc/cron.d/evil", 0o644, b"* * * * * root sh"),
    ]);
    fx.refused(
        &bytes,
        &["\"/etc/cron.d/evil\"", "absolute paths are not allowed"],
    )
    .await;
}

#[tokio::test]
async fn refuses_dot_dot() {
    let fx = Fx::new();
    let bytes = targz(&[E::File("ok/../../x", 0o644, b"")]);
    fx.refused(&bytes, &["\"ok/../../x\"", "'..' is not allowed"])
        .await;
}

#[tokio::test]
async fn refuses_symlinks_to_absolute_paths() {
    let fx = Fx::new();
    let bytes = targz(&[E::Link("etc", "/etc")]);
    fx.refused(&bytes, &["\"etc\"", "symlink to absolute path \"/etc\""])
        .await;
}

#[tokio::test]
async fn refuses_symlinks_that_climb_out() {
    let fx = Fx::new();
    let bytes = targz(&[E::Dir("sub", 0o755), E::Link("sub/up", "../../shop")]);
    fx.refused(&bytes, &["\"sub/up\"", "points outside the release"])
        .await;
}

#[tokio::test]
async fn refuses_dot_dot_through_an_earlier_symlink() {
    let fx = Fx::new();
    // `a -> .` is harmless alone; `a/../../x` would climb out through it.
    let bytes = targz(&[E::Link("a", "."), E::File("a/../../x", 0o644, b"")]);
    fx.refused(&bytes, &["\"a/../../x\"", "'..'"]).await;
    // The same trick inside a link target: `y -> x/..` where `x -> .`.
    let fx = Fx::new();
    let bytes = targz(&[E::Link("x", "."), E::Link("y", "x/..")]);
    fx.refused(&bytes, &["\"y\"", "'..' after a name"]).await;
}

#[tokio::test]
async fn never_writes_through_a_symlink_made_earlier() {
    let fx = Fx::new();
    let bytes = targz(&[
        E::Dir("real", 0o755),
        E::Link("d", "real"),
        E::File("d/evil.py", 0o644, b"x"),
    ]);
    fx.refused(&bytes, &["\"d/evil.py\"", "d is a symlink in the archive"])
        .await;
    let fx = Fx::new();
    // A later entry replacing a link (or a file) is refused rather than followed.
    let bytes = targz(&[
        E::Link("app.py", "other.py"),
        E::File("app.py", 0o644, b"x"),
    ]);
    fx.refused(&bytes, &["\"app.py\"", "appears more than once"])
        .await;
}

#[tokio::test]
async fn refuses_hard_links() {
    let fx = Fx::new();
    let bytes = targz(&[E::File("a", 0o644, b""), E::Hard("b", "a")]);
    fx.refused(&bytes, &["\"b\"", "hard links are not allowed"])
        .await;
}

#[tokio::test]
async fn refuses_devices_and_fifos() {
    let fx = Fx::new();
    fx.refused(
        &targz(&[E::Special("null", EntryType::Char)]),
        &["\"null\"", "device files are not allowed"],
    )
    .await;
    let fx = Fx::new();
    fx.refused(
        &targz(&[E::Special("sda", EntryType::Block)]),
        &["\"sda\"", "device files are not allowed"],
    )
    .await;
    let fx = Fx::new();
    fx.refused(
        &targz(&[E::Special("pipe", EntryType::Fifo)]),
        &["\"pipe\"", "fifos are not allowed"],
    )
    .await;
}

#[tokio::test]
async fn refuses_setuid_setgid_and_sticky_bits() {
    let fx = Fx::new();
    fx.refused(
        &targz(&[E::File("bin/su", 0o4755, b"")]),
        &["\"bin/su\"", "setuid", "4755"],
    )
    .await;
    let fx = Fx::new();
    fx.refused(&targz(&[E::Dir("shared", 0o2775)]), &["\"shared\"", "2775"])
        .await;
}

#[tokio::test]
async fn refuses_reserved_names() {
    let fx = Fx::new();
    fx.refused(
        &targz(&[E::File(".fleet-release", 0o644, b"sha256=00")]),
        &["\".fleet-release\"", "reserved"],
    )
    .await;
}

#[tokio::test]
async fn refuses_archives_over_the_compressed_limit() {
    let fx = Fx::with_limits(Limits {
        max_compressed: 100,
        ..Limits::default()
    });
    let err = fx.refused(&good(), &["over the 100-byte limit"]).await;
    assert!(matches!(err, ReleaseError::TooLarge { limit: 100, .. }));
}

#[tokio::test]
async fn refuses_archives_over_the_unpacked_limit() {
    let fx = Fx::with_limits(Limits {
        max_unpacked: 10_000,
        ..Limits::default()
    });
    // Compresses to almost nothing: the limit is on what it unpacks to.
    let zeros = vec![0u8; 6_000];
    let bytes = targz(&[
        E::File("a.bin", 0o644, &zeros),
        E::File("b.bin", 0o644, &zeros),
    ]);
    assert!(bytes.len() < 1_000);
    fx.refused(&bytes, &["\"b.bin\"", "10000-byte unpacked size limit"])
        .await;
}

#[tokio::test]
async fn refuses_archives_with_too_many_entries() {
    let fx = Fx::with_limits(Limits {
        max_entries: 5,
        ..Limits::default()
    });
    let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, 0o644, b"")).collect();
    fx.refused(&targz(&entries), &["\"f5\"", "more than 5 entries"])
        .await;
}

#[tokio::test]
async fn refuses_garbage_and_empty_archives() {
    let fx = Fx::new();
    fx.refused(b"not a tarball at all", &["not a readable .tar.gz"])
        .await;
    let fx = Fx::new();
    fx.refused(&targz(&[]), &["archive is empty"]).await;
}

#[tokio::test]
async fn refuses_a_download_with_the_wrong_sha256() {
    let fx = Fx::new();
    let before = fx.running().await;
    let claimed = sha(b"what the controller said");
    let bytes = good();
    let incoming = fx
        .app_dir()
        .join(INCOMING)
        .join(format!("{claimed}.tar.gz"));
    fs::write(&incoming, &bytes).unwrap();
    let err = fx
        .releases
        .stage(
            &fx.app,
            &v("2.0"),
            &claimed,
            bytes.len() as u64,
            &fx.offline,
            None,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ReleaseError::Sha256Mismatch { .. }), "{text}");
    assert!(text.contains(&format!("expected {claimed}")), "{text}");
    assert!(text.contains(&sha(&bytes)), "{text}");
    assert_eq!(snapshot(&fx.app_dir()), before);
    // Discarded, so the next try downloads afresh instead of "resuming" bad bytes.
    assert!(!incoming.exists());
}

#[tokio::test]
async fn refuses_other_bytes_under_an_existing_version() {
    let fx = Fx::new();
    let before = fx.running().await;
    let other = targz(&[E::File("app.py", 0o644, b"different")]);
    let err = fx.stage("1.0", &other).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ReleaseError::VersionConflict { .. }),
        "{text}"
    );
    assert!(
        text.contains("release shop 1.0 is already staged"),
        "{text}"
    );
    assert!(
        text.contains(&sha(&good())) && text.contains(&sha(&other)),
        "{text}"
    );
    assert_eq!(snapshot(&fx.app_dir()), before);
}

#[tokio::test]
async fn refuses_a_malformed_sha256_before_touching_anything() {
    let fx = Fx::new();
    let err = fx
        .releases
        .stage(
            &fx.app,
            &v("1.0"),
            "../../etc/passwd",
            10,
            &fx.offline,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ReleaseError::BadSha256 { .. }), "{err}");
    assert!(!fx.app_dir().exists());
}

#[tokio::test]
async fn a_failed_download_names_the_release() {
    let fx = Fx::new();
    let err = fx
        .releases
        .stage(&fx.app, &v("1.0"), &sha(b"x"), 10, &fx.offline, None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("release shop 1.0: gave up fetching"),
        "{text}"
    );
}

// ---- switching and pruning ----

async fn stage_versions(fx: &Fx, versions: &[&str]) {
    for ver in versions {
        let bytes = targz(&[E::File("app.py", 0o644, ver.as_bytes())]);
        fx.stage(ver, &bytes).await.unwrap();
        // Staging order is what prune goes by; keep the timestamps distinct.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

#[tokio::test]
async fn switch_is_atomic_and_remembers_the_previous_release() {
    let fx = Fx::new();
    stage_versions(&fx, &["1", "2", "3"]).await;
    let r = &fx.releases;
    assert_eq!(r.switch_current(&fx.app, &v("1")).await.unwrap(), None);
    assert_eq!(
        r.switch_current(&fx.app, &v("2")).await.unwrap(),
        Some(v("1"))
    );
    assert_eq!(r.current(&fx.app).unwrap(), Some(v("2")));
    assert_eq!(r.previous(&fx.app).unwrap(), Some(v("1")));
    // Switching to what is already current changes nothing, previous included.
    assert_eq!(
        r.switch_current(&fx.app, &v("2")).await.unwrap(),
        Some(v("2"))
    );
    assert_eq!(r.previous(&fx.app).unwrap(), Some(v("1")));
    // `current` resolves to the tree (a relative link).
    let link = fx.app_dir().join(CURRENT);
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("releases/2"));
    assert_eq!(fs::read(link.join("app.py")).unwrap(), b"2");

    let err = r.switch_current(&fx.app, &v("9")).await.unwrap_err();
    assert!(matches!(err, ReleaseError::NotStaged { .. }), "{err}");
    assert_eq!(err.to_string(), "release shop 9 is not staged on this host");
    assert_eq!(r.current(&fx.app).unwrap(), Some(v("2")));
    assert!(fs::read_dir(fx.app_dir())
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(LINK_TMP)));
}

#[tokio::test]
async fn prune_keeps_the_newest_plus_current_and_previous() {
    let fx = Fx::new();
    stage_versions(&fx, &["1", "2", "3", "4", "5"]).await;
    let r = &fx.releases;
    r.switch_current(&fx.app, &v("2")).await.unwrap();
    r.switch_current(&fx.app, &v("3")).await.unwrap();
    // Leftovers a crash could leave.
    fs::create_dir_all(fx.app_dir().join(".staging-6-0000aaaa")).unwrap();
    fs::create_dir_all(fx.app_dir().join("releases/7")).unwrap();
    fs::write(fx.app_dir().join(".incoming/ab.tar.gz"), b"partial").unwrap();

    let removed = r.prune(&fx.app, 1).await.unwrap();
    assert_eq!(removed, vec![v("4"), v("1")]);
    let left: Vec<_> = r
        .list(&fx.app)
        .unwrap()
        .into_iter()
        .map(|i| i.version)
        .collect();
    assert_eq!(left, vec![v("2"), v("3"), v("5")]);
    assert!(!fx.app_dir().join(".staging-6-0000aaaa").exists());
    assert!(!fx.app_dir().join("releases/7").exists());
    assert_eq!(
        fs::read_dir(fx.app_dir().join(INCOMING)).unwrap().count(),
        0
    );
    assert_eq!(r.current(&fx.app).unwrap(), Some(v("3")));

    // Keeping zero still keeps what runs and what to roll back to.
    assert_eq!(r.prune(&fx.app, 0).await.unwrap(), vec![v("5")]);
    assert_eq!(r.prune(&fx.app, 0).await.unwrap(), Vec::<Version>::new());
    let left: Vec<_> = r
        .list(&fx.app)
        .unwrap()
        .into_iter()
        .map(|i| i.version)
        .collect();
    assert_eq!(left, vec![v("2"), v("3")]);
}

#[tokio::test]
async fn an_app_without_releases_lists_nothing() {
    let fx = Fx::new();
    assert_eq!(fx.releases.list(&fx.app).unwrap(), vec![]);
    assert_eq!(fx.releases.current(&fx.app).unwrap(), None);
    assert_eq!(fx.releases.prune(&fx.app, 3).await.unwrap(), vec![]);
}

// ---- venv ----

/// A minimal pure-python wheel, zipped by python itself (no zip crate just for tests).
fn make_wheel(dir: &Path) {
    let script = r#"
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("tinypkg/__init__.py", "VALUE = 'from-wheel'\n")
    z.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
    z.writestr("tinypkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: fleet-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("tinypkg-1.0.dist-info/RECORD", "tinypkg/__init__.py,,\ntinypkg-1.0.dist-info/METADATA,,\ntinypkg-1.0.dist-info/WHEEL,,\ntinypkg-1.0.dist-info/RECORD,,\n")
"#;
    let status = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join("tinypkg-1.0-py3-none-any.whl"))
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn builds_a_venv_offline_from_the_release_wheels() {
    let fx = Fx::new();
    let wheels = tempfile::tempdir().unwrap();
    make_wheel(wheels.path());
    let wheel = fs::read(wheels.path().join("tinypkg-1.0-py3-none-any.whl")).unwrap();
    let bytes = targz(&[
        E::File("app.py", 0o644, b""),
        E::File("requirements.txt", 0o644, b"tinypkg==1.0\n"),
        E::File("wheels/tinypkg-1.0-py3-none-any.whl", 0o644, &wheel),
    ]);
    let dir = fx.stage("1.0", &bytes).await.unwrap();
    let bin = venv_bin(&dir).expect("a venv");
    assert_eq!(bin, dir.join(".venv/bin"));
    let out = std::process::Command::new(bin.join("python"))
        .args(["-c", "import tinypkg; print(tinypkg.VALUE)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "from-wheel");
}

#[tokio::test]
async fn a_failed_venv_build_reports_pips_words_and_leaves_nothing() {
    let fx = Fx::new();
    let bytes = targz(&[
        E::File("app.py", 0o644, b""),
        E::File("requirements.txt", 0o644, b"tinypkg==1.0\n"),
        E::File("wheels/tinypkg-1.0-py3-none-any.whl", 0o644, b"not a zip"),
    ]);
    let err = fx
        .refused(&bytes, &["building the venv failed", "pip install"])
        .await;
    assert!(matches!(err, ReleaseError::Venv { .. }), "{err}");
}

#[tokio::test]
async fn the_venv_is_built_by_its_user_and_then_owned_by_root() {
    use std::os::unix::fs::MetadataExt;
    let fx = Fx::new();
    let wheels = tempfile::tempdir().unwrap();
    make_wheel(wheels.path());
    let wheel = fs::read(wheels.path().join("tinypkg-1.0-py3-none-any.whl")).unwrap();
    let bytes = targz(&[
        E::File("app.py", 0o644, b""),
        E::File("requirements.txt", 0o644, b"# pinned\nTinyPkg == 1.0\n"),
        E::File("wheels/tinypkg-1.0-py3-none-any.whl", 0o644, &wheel),
        // Not pinned: never installed (and an sdist is never built).
        E::File("wheels/other-2.0.tar.gz", 0o644, b"x"),
    ]);
    let dir = fx.stage("1.0", &bytes).await.unwrap();
    let mut seen = 0;
    let mut stack = vec![dir.join(VENV_DIR)];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        seen += 1;
        assert_eq!((m.uid(), m.gid()), (0, 0), "{}", p.display());
        if !m.file_type().is_symlink() {
            assert_eq!(m.mode() & 0o7022, 0, "{} is {:o}", p.display(), m.mode());
        }
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(seen > 50, "only {seen} entries");
    let site = fs::read_dir(dir.join(".venv/lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("site-packages");
    assert!(site.join("tinypkg/__init__.py").is_file());
    assert!(!site.join("other").exists());
    // Root is refused as the builder, and so is no builder at all.
    for run_as in [Some(RunAs { uid: 0, gid: 0 }), None] {
        let sha = fx.download(&bytes);
        let err = fx
            .releases
            .stage(
                &fx.app,
                &v("2.0"),
                &sha,
                bytes.len() as u64,
                &fx.offline,
                run_as,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ReleaseError::Requirements { .. }), "{err}");
        assert!(!fx.releases.release_dir(&fx.app, &v("2.0")).exists());
    }
}

/// Finding 1 of issue 14: each of these made pip, as root, run a package's build code,
/// quote a root-only file or go to the network. Each is refused before pip runs.
#[tokio::test]
async fn requirements_that_would_run_code_read_files_or_reach_out_are_refused() {
    let fx = Fx::new();
    let outside = tempfile::tempdir().unwrap();
    let pwned = outside.path().join("pwned");
    // An in-tree PEP 517 backend with no build requirements: pip imports it, and so runs
    // it, to ask what the build needs — `--only-binary :all:` does not apply to paths.
    let backend = format!(
        "open({:?}, 'w').write('ran')\n",
        pwned.display().to_string()
    );
    let pyproject =
        "[build-system]\nrequires = []\nbuild-backend = \"backend\"\nbackend-path = [\".\"]\n";
    let release = fx.releases.release_dir(&fx.app, &v("2.0"));
    let secret = outside.path().join("shadow");
    fs::write(&secret, "TOP-SECRET-LINE\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    // Anything connecting here is pip following --find-links.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let evil_dir = |req: String| {
        targz(&[
            E::File("app.py", 0o644, b""),
            E::File("requirements.txt", 0o644, req.as_bytes()),
            E::File("evil/pyproject.toml", 0o644, pyproject.as_bytes()),
            E::File("evil/backend.py", 0o644, backend.as_bytes()),
            E::File("wheels/evil-1.0.tar.gz", 0o644, b"x"),
        ])
    };
    let cases = [
        ("./evil\n".to_owned(), "line 1: paths"),
        (
            format!("tinypkg==1.0\n\nevil @ file://{}/evil\n", release.display()),
            "line 3: URLs",
        ),
        (format!("-r {}\n", secret.display()), "line 1: options"),
        (
            format!("--find-links http://127.0.0.1:{port}/\nevil==1.0\n"),
            "line 1: options",
        ),
        ("evil==1.0\n".to_owned(), "no wheel for evil==1.0"),
    ];
    for (req, needle) in cases {
        let err = fx.refused(&evil_dir(req.clone()), &[needle]).await;
        let text = err.to_string();
        assert!(
            matches!(err, ReleaseError::Requirements { .. }),
            "{req:?}: {text}"
        );
        assert!(
            !text.contains("TOP-SECRET"),
            "{req:?} leaked a file: {text}"
        );
        assert!(!pwned.exists(), "{req:?} ran setup.py");
        assert!(listener.accept().is_err(), "{req:?} reached the network");
    }
    // requirements.txt itself may not lead elsewhere.
    let link = targz(&[
        E::File("app.py", 0o644, b""),
        E::Link("requirements.txt", "app.py"),
        E::Dir("wheels", 0o755),
    ]);
    fx.refused(&link, &["symlink"]).await;
}

#[tokio::test]
async fn a_requirements_file_without_pins_gets_an_empty_venv() {
    let fx = Fx::new();
    let bytes = targz(&[
        E::File("app.py", 0o644, b""),
        E::File("requirements.txt", 0o644, b"# nothing needed yet\n"),
        E::Dir("wheels", 0o755),
    ]);
    let dir = fx.stage("1.0", &bytes).await.unwrap();
    assert!(venv_bin(&dir).is_some());
}
