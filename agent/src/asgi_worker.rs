//! The Gunicorn worker class ASGI apps run with: `fleet_uvicorn_worker.UvicornWorker`, a
//! subclass of uvicorn's own worker (`asgi_worker/fleet_uvicorn_worker.py`, embedded here).
//! Owns `/var/lib/fleet/python/fleet_uvicorn_worker.py`; the service unit puts that
//! directory on Gunicorn's `--pythonpath` (units.rs).
//!
//! Why a class of our own: on a graceful stop (every restart, and every HUP reload for
//! the old workers) uvicorn closes the connections it accepted but has not read yet; their
//! request bytes are still in the kernel buffer, so the close sends RST and the client sees
//! "connection reset" (measured: every reset of the lab's load test was one of these,
//! in uvicorn 0.17.6 and 0.54 alike; docs/host.md). The class lets those connections send
//! their request first. It also writes fleet's access line for every request (uvicorn's own
//! lines have no response time; agent/src/requests/parse.rs). It sits on the python path of whichever python runs Gunicorn,
//! Debian's or a release's venv, so it works with the uvicorn the release brings.

use std::path::{Path, PathBuf};

use fleet_proto::files::{ensure_dir, write_if_changed, FileError};

pub const DIR: &str = "/var/lib/fleet/python";
/// What `--worker-class` names.
pub const CLASS: &str = "fleet_uvicorn_worker.UvicornWorker";
const FILE: &str = "fleet_uvicorn_worker.py";
const SOURCE: &str = include_str!("asgi_worker/fleet_uvicorn_worker.py");
/// Root's, readable by every app's user (the module is code the apps run, never theirs to
/// change).
const DIR_MODE: u32 = 0o755;
const FILE_MODE: u32 = 0o644;

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes the module into `dir` unless it is there already with this agent's content.
/// Returns whether it changed. Running workers keep the class they imported until the app
/// restarts.
pub fn install(dir: &Path) -> Result<bool, FileError> {
    ensure_dir(dir, DIR_MODE)?;
    write_if_changed(&path(dir), SOURCE.as_bytes(), FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn installs_the_module_readable_by_apps_and_only_rewrites_on_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("python");
        assert!(install(&dir).unwrap());
        let meta = std::fs::metadata(path(&dir)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(!install(&dir).unwrap());
        std::fs::write(path(&dir), "tampered").unwrap();
        assert!(install(&dir).unwrap());
        assert_eq!(std::fs::read_to_string(path(&dir)).unwrap(), SOURCE);
    }

    #[test]
    fn the_class_named_is_the_one_the_module_defines() {
        let (module, class) = CLASS.split_once('.').unwrap();
        assert_eq!(format!("{module}.py"), FILE);
        assert!(SOURCE.contains(&format!("\nclass {class}(")));
    }
}
