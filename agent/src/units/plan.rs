//! Writing what `units` renders. An activation renders everything first (so a bad value
//! or a missing secret is refused before the host changes), then applies: like
//! `logrotate::Plan`, `apply` only has to write. Each file goes through
//! `fleet_proto::files::write_if_changed`, so an unchanged unit keeps its mtime and the
//! caller learns whether systemd needs a daemon-reload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_proto::files::{ensure_dir, write_if_changed, FileError};
use fleet_proto::spec::{AppName, AppSpec, Server};

use crate::asgi_worker;

use crate::host_paths::{service_name, socket_name};

use super::{env_path, render_env, render_service, render_socket, Layout, RenderError, Runtime};

/// The env dir holds secrets: root only.
const ENV_DIR_MODE: u32 = 0o700;
const ENV_MODE: u32 = 0o600;
const UNIT_MODE: u32 = 0o644;

/// Where an activation writes: units, env files, the ASGI worker class.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub unit: PathBuf,
    pub env: PathBuf,
    pub worker: PathBuf,
}

/// Deletes the app's unit files and env file (absent ones are fine); the caller stops
/// and disables the units first and reloads systemd after. The ASGI worker class is
/// shared by every uvicorn app and stays.
pub fn remove_files(dirs: &Dirs, name: &AppName) -> Result<(), FileError> {
    for path in [
        dirs.unit.join(socket_name(name)),
        dirs.unit.join(service_name(name)),
        env_path(&dirs.env, name),
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FileError {
                    action: "remove",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// The env file and socket unit of an activation: everything that does not depend on the
/// release, rendered before the release is even staged.
pub struct Prepared {
    name: AppName,
    env_dir: PathBuf,
    unit_dir: PathBuf,
    worker_dir: PathBuf,
    /// The app runs fleet's ASGI worker class, so `apply` installs it.
    asgi: bool,
    env: String,
    socket: String,
}

/// All three files of an activation, rendered; `apply` writes them.
pub struct Plan {
    prepared: Prepared,
    service: String,
}

/// What `apply` changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub env_changed: bool,
    pub socket_changed: bool,
    pub service_changed: bool,
}

impl Applied {
    /// A unit file changed: systemd must reload (and the units be enabled).
    pub fn units_changed(&self) -> bool {
        self.socket_changed || self.service_changed
    }
}

impl Prepared {
    pub fn render(
        spec: &AppSpec,
        secrets: &BTreeMap<String, String>,
        dirs: &Dirs,
    ) -> Result<Prepared, RenderError> {
        Ok(Prepared {
            name: spec.name.clone(),
            env_dir: dirs.env.clone(),
            unit_dir: dirs.unit.clone(),
            worker_dir: dirs.worker.clone(),
            asgi: spec.server == Server::Uvicorn,
            env: render_env(spec, secrets)?,
            socket: render_socket(spec)?,
        })
    }

    /// Adds the service unit, which names the release's runtime (known once it is staged).
    pub fn with_service(
        self,
        spec: &AppSpec,
        app_dir: &Path,
        runtime: &Runtime,
        cores: u32,
    ) -> Result<Plan, RenderError> {
        let layout = Layout {
            app_dir,
            env_dir: &self.env_dir,
            worker_dir: &self.worker_dir,
        };
        let service = render_service(spec, &layout, runtime, cores)?;
        Ok(Plan {
            prepared: self,
            service,
        })
    }
}

impl Plan {
    pub fn socket_unit(&self) -> String {
        socket_name(&self.prepared.name)
    }

    pub fn service_unit(&self) -> String {
        service_name(&self.prepared.name)
    }

    /// Writes the env file first: a unit that changed never points at an env file that
    /// is not there yet.
    pub fn apply(&self) -> Result<Applied, FileError> {
        let p = &self.prepared;
        ensure_dir(&p.env_dir, ENV_DIR_MODE)?;
        let env_changed =
            write_if_changed(&env_path(&p.env_dir, &p.name), p.env.as_bytes(), ENV_MODE)?;
        // Before the unit that names it.
        if p.asgi {
            asgi_worker::install(&p.worker_dir)?;
        }
        let socket_changed = write_if_changed(
            &p.unit_dir.join(self.socket_unit()),
            p.socket.as_bytes(),
            UNIT_MODE,
        )?;
        let service_changed = write_if_changed(
            &p.unit_dir.join(self.service_unit()),
            self.service.as_bytes(),
            UNIT_MODE,
        )?;
        Ok(Applied {
            env_changed,
            socket_changed,
            service_changed,
        })
    }
}

/// The pre-start hook's own env file: the running app's keeps the running release's env
/// while the hook runs with the new one.
pub struct PrestartEnv {
    path: PathBuf,
    env_dir: PathBuf,
    text: String,
}

impl PrestartEnv {
    pub fn render(
        spec: &AppSpec,
        secrets: &BTreeMap<String, String>,
        env_dir: &Path,
    ) -> Result<PrestartEnv, RenderError> {
        Ok(PrestartEnv {
            path: env_dir.join(format!("{}.prestart.env", spec.name)),
            env_dir: env_dir.to_owned(),
            text: render_env(spec, secrets)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self) -> Result<(), FileError> {
        ensure_dir(&self.env_dir, ENV_DIR_MODE)?;
        write_if_changed(&self.path, self.text.as_bytes(), ENV_MODE).map(|_| ())
    }

    /// After the hook: the secrets do not outlive it on disk.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::units::tests::spec;
    use crate::units::SYSTEM_GUNICORN;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn runtime() -> Runtime {
        Runtime {
            gunicorn: SYSTEM_GUNICORN.into(),
            release: "r1".parse().unwrap(),
        }
    }

    #[test]
    fn apply_writes_all_three_with_their_modes_and_reports_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = dirs(tmp.path());
        let (units, env) = (dirs.unit.clone(), dirs.env.clone());
        std::fs::create_dir(&units).unwrap();
        let sp = spec("");
        let plan = || {
            Prepared::render(&sp, &BTreeMap::new(), &dirs)
                .unwrap()
                .with_service(&sp, Path::new("/var/lib/fleet/apps/shop"), &runtime(), 2)
                .unwrap()
        };
        let applied = plan().apply().unwrap();
        assert_eq!(
            applied,
            Applied {
                env_changed: true,
                socket_changed: true,
                service_changed: true
            }
        );
        assert_eq!(mode(&env), 0o700);
        assert_eq!(mode(&env.join("shop.env")), 0o600);
        assert_eq!(mode(&units.join("fleet-app-shop.socket")), 0o644);
        let service = std::fs::read_to_string(units.join("fleet-app-shop.service")).unwrap();
        assert!(service.contains(&env.join("shop.env").display().to_string()));
        // Nothing changed: no daemon-reload needed, nothing to restart for.
        let again = plan().apply().unwrap();
        assert!(!again.units_changed() && !again.env_changed);
        // A new secret changes only the env file, which a running app must restart to read.
        let sp = spec("secrets = [\"TOKEN\"]");
        let with_secret = |value: &str| {
            let secret = BTreeMap::from([("TOKEN".to_owned(), value.to_owned())]);
            Prepared::render(&sp, &secret, &dirs)
                .unwrap()
                .with_service(&sp, Path::new("/var/lib/fleet/apps/shop"), &runtime(), 2)
                .unwrap()
                .apply()
                .unwrap()
        };
        with_secret("one");
        let rotated = with_secret("two");
        assert!(rotated.env_changed && !rotated.units_changed());
    }

    fn dirs(root: &Path) -> Dirs {
        Dirs {
            unit: root.join("units"),
            env: root.join("env"),
            worker: root.join("python"),
        }
    }

    #[test]
    fn only_a_uvicorn_app_installs_the_worker_class_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = dirs(tmp.path());
        std::fs::create_dir(&dirs.unit).unwrap();
        let plan = |sp: &AppSpec| {
            Prepared::render(sp, &BTreeMap::new(), &dirs)
                .unwrap()
                .with_service(sp, Path::new("/var/lib/fleet/apps/shop"), &runtime(), 2)
                .unwrap()
        };
        plan(&spec("")).apply().unwrap();
        assert!(!dirs.worker.exists(), "a WSGI app got the ASGI worker");
        let mut sp = spec("");
        sp.server = Server::Uvicorn;
        plan(&sp).apply().unwrap();
        let module = crate::asgi_worker::path(&dirs.worker);
        assert_eq!(mode(&module), 0o644);
        let service = std::fs::read_to_string(dirs.unit.join("fleet-app-shop.service")).unwrap();
        assert!(
            service.contains(&format!("--pythonpath {}", dirs.worker.display())),
            "{service}"
        );
    }

    #[test]
    fn a_missing_secret_is_refused_before_any_file_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let sp = spec("secrets = [\"TOKEN\"]");
        let env = tmp.path().join("env");
        let dirs = Dirs {
            unit: tmp.path().to_owned(),
            env: env.clone(),
            worker: tmp.path().join("python"),
        };
        let e = Prepared::render(&sp, &BTreeMap::new(), &dirs)
            .err()
            .expect("refused");
        assert!(matches!(e, RenderError::MissingSecrets(_)), "{e}");
        assert!(PrestartEnv::render(&sp, &BTreeMap::new(), &env).is_err());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn prestart_env_is_its_own_file_and_goes_away() {
        let tmp = tempfile::tempdir().unwrap();
        let sp = spec("secrets = [\"TOKEN\"]");
        let secrets = BTreeMap::from([("TOKEN".to_string(), "s3cret".to_string())]);
        let pre = PrestartEnv::render(&sp, &secrets, tmp.path()).unwrap();
        pre.write().unwrap();
        assert_eq!(pre.path(), tmp.path().join("shop.prestart.env"));
        assert_eq!(mode(pre.path()), 0o600);
        assert!(std::fs::read_to_string(pre.path())
            .unwrap()
            .contains("TOKEN=\"s3cret\""));
        pre.remove();
        assert!(!pre.path().exists());
    }
}
