//! systemd over D-Bus (the system bus), never by running systemctl: typed errors, no
//! output parsing, and job results straight from `JobRemoved`.
//!
//! Only what fleet uses: daemon-reload, enable, disable, start/stop/restart/reload waiting for the
//! job's result, reset-failed, and the unit properties that make an app's state.
//! Signatures as measured against systemd 252 (docs/host.md).

use std::collections::HashMap;
use std::time::Duration;

use tokio_stream::StreamExt;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath, OwnedVariant};

const DEST: &str = "org.freedesktop.systemd1";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    /// daemon-reload
    fn reload(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    /// (cgroup path, pid, command line) of every process in the unit's cgroup.
    fn get_unit_processes(&self, name: &str) -> zbus::Result<Vec<(String, u32, String)>>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot reach systemd on the system bus: {0}")]
    Connect(zbus::Error),
    #[error("systemd {op} {unit}: {source}")]
    Call {
        op: &'static str,
        unit: String,
        source: zbus::Error,
    },
    #[error("systemd {op} {unit}: job ended {result}")]
    Job {
        op: &'static str,
        unit: String,
        result: String,
    },
    #[error("systemd {op} {unit}: no job result within {}s", .timeout.as_secs())]
    JobTimeout {
        op: &'static str,
        unit: String,
        timeout: Duration,
    },
}

/// How a service's main process ended, as systemd recorded it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MainExit {
    /// `Result=`: success, exit-code, signal, timeout, …
    pub result: String,
    /// `ExecMainCode`: the waitid() si_code (1 exited, 2 killed, 3 dumped core).
    pub code: i32,
    /// `ExecMainStatus`: the exit status or the signal number.
    pub status: i32,
}

/// The properties that make an app's state. Values as systemd names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitProps {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub n_restarts: u32,
    pub main_pid: u32,
    /// Microseconds since the epoch; 0 when never active.
    pub active_enter_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Start,
    Stop,
    Restart,
    Reload,
}

impl JobKind {
    fn op(self) -> &'static str {
        match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Restart => "restart",
            JobKind::Reload => "reload",
        }
    }
}

/// One connection to the system bus, shared by every app. Cheap to clone.
#[derive(Clone)]
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    pub async fn connect() -> Result<Systemd, SystemdError> {
        let conn = Connection::system().await.map_err(SystemdError::Connect)?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(SystemdError::Connect)?;
        // Without a subscriber systemd may not emit JobRemoved/PropertiesChanged at all.
        manager.subscribe().await.map_err(SystemdError::Connect)?;
        Ok(Systemd { conn, manager })
    }

    /// The bus connection, for readers that need no proxy of their own (metrics).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn call_err(op: &'static str, unit: &str) -> impl FnOnce(zbus::Error) -> SystemdError {
        let unit = unit.to_owned();
        move |source| SystemdError::Call { op, unit, source }
    }

    pub async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .await
            .map_err(Self::call_err("daemon-reload", ""))
    }

    /// Enables (symlinks into the targets' .wants) so the units come back after a reboot.
    pub async fn enable(&self, units: &[&str]) -> Result<(), SystemdError> {
        self.manager
            .enable_unit_files(units, false, true)
            .await
            .map(|_| ())
            .map_err(Self::call_err("enable", &units.join(" ")))
    }

    /// Removes the units' .wants links, so they do not start at boot (a stopped or
    /// removed app). Units with no file are fine.
    pub async fn disable(&self, units: &[&str]) -> Result<(), SystemdError> {
        match self.manager.disable_unit_files(units, false).await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            Err(e) => Err(Self::call_err("disable", &units.join(" "))(e)),
        }
    }

    /// Stops the unit and waits for it; a unit systemd does not know is stopped already.
    pub async fn stop_if_loaded(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        match self.job(JobKind::Stop, unit, timeout).await {
            Err(SystemdError::Call {
                source: zbus::Error::MethodError(name, _, _),
                ..
            }) if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
            other => other,
        }
    }

    /// Clears `failed` and the start-limit counter; a unit that is not loaded is fine.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        match self.manager.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(())
            }
            Err(e) => Err(Self::call_err("reset-failed", unit)(e)),
        }
    }

    /// Queues a job (mode "replace") and waits for its `JobRemoved`: the match is
    /// installed before the job is queued, so a fast job cannot finish unseen.
    pub async fn job(
        &self,
        kind: JobKind,
        unit: &str,
        timeout: Duration,
    ) -> Result<(), SystemdError> {
        let op = kind.op();
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(Self::call_err(op, unit))?;
        let job = match kind {
            JobKind::Start => self.manager.start_unit(unit, "replace").await,
            JobKind::Stop => self.manager.stop_unit(unit, "replace").await,
            JobKind::Restart => self.manager.restart_unit(unit, "replace").await,
            JobKind::Reload => self.manager.reload_unit(unit, "replace").await,
        }
        .map_err(Self::call_err(op, unit))?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job == job {
                    return Some(args.result);
                }
            }
            None
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(result)) if result == "done" => Ok(()),
            Ok(Some(result)) => Err(SystemdError::Job {
                op,
                unit: unit.to_owned(),
                result,
            }),
            Ok(None) => Err(SystemdError::Call {
                op,
                unit: unit.to_owned(),
                source: zbus::Error::Failure("signal stream ended".into()),
            }),
            Err(_) => Err(SystemdError::JobTimeout {
                op,
                unit: unit.to_owned(),
                timeout,
            }),
        }
    }

    /// Every process in the unit's cgroup (main, workers, anything they started); empty
    /// when the unit is not running.
    pub async fn unit_pids(&self, unit: &str) -> Result<Vec<u32>, SystemdError> {
        match self.manager.get_unit_processes(unit).await {
            Ok(procs) => Ok(procs.into_iter().map(|(_, pid, _)| pid).collect()),
            // Not loaded or not active: no processes.
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(Self::call_err("list processes of", unit)(e)),
        }
    }

    /// The unit's object (loaded if needed, never started).
    pub async fn unit_path(&self, unit: &str) -> Result<OwnedObjectPath, SystemdError> {
        self.manager
            .load_unit(unit)
            .await
            .map_err(Self::call_err("load", unit))
    }

    /// How a loaded unit's main process ended; `None` when systemd no longer has the unit
    /// (a unit that ended cleanly is unloaded at once). Never loads it.
    pub async fn main_exit(&self, unit: &str) -> Result<Option<MainExit>, SystemdError> {
        let path = match self.manager.get_unit(unit).await {
            Ok(p) => p,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Self::call_err("get", unit)(e)),
        };
        let props = self.properties(&path).await?;
        let s = props
            .get_all(InterfaceName::from_static_str_unchecked(SERVICE_IFACE))
            .await
            .map_err(|e| Self::call_err("read", unit)(e.into()))?;
        Ok(Some(MainExit {
            result: string(&s, "Result"),
            code: number::<i32>(&s, "ExecMainCode"),
            status: number::<i32>(&s, "ExecMainStatus"),
        }))
    }

    /// Properties of a unit object, uncached: always what systemd says now.
    pub async fn properties(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<PropertiesProxy<'static>, SystemdError> {
        PropertiesProxy::builder(&self.conn)
            .destination(DEST)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(Self::call_err("properties", path.as_str()))
    }

    /// Memory in bytes and CPU time in nanoseconds of a unit's cgroup, each `None` when
    /// systemd does not account it (it reports u64::MAX then).
    pub async fn usage(&self, unit: &str) -> (Option<u64>, Option<u64>) {
        let read = async {
            let path = self.unit_path(unit).await.ok()?;
            let props = self.properties(&path).await.ok()?;
            props
                .get_all(InterfaceName::from_static_str_unchecked(SERVICE_IFACE))
                .await
                .ok()
        };
        let Some(s) = read.await else {
            return (None, None);
        };
        let known = |v: u64| (v != u64::MAX).then_some(v);
        (
            known(number::<u64>(&s, "MemoryCurrent")),
            known(number::<u64>(&s, "CPUUsageNSec")),
        )
    }

    /// Reads the state of a service unit through its Properties proxy.
    pub async fn read_props(
        props: &PropertiesProxy<'static>,
        unit: &str,
    ) -> Result<UnitProps, SystemdError> {
        let get_all = |iface: &'static str| async move {
            props
                .get_all(InterfaceName::from_static_str_unchecked(iface))
                .await
                .map_err(|e| Self::call_err("read", unit)(e.into()))
        };
        let u = get_all(UNIT_IFACE).await?;
        // A unit whose file is gone has no Service interface: report what Unit says.
        let s = get_all(SERVICE_IFACE).await.unwrap_or_default();
        Ok(UnitProps {
            load_state: string(&u, "LoadState"),
            active_state: string(&u, "ActiveState"),
            sub_state: string(&u, "SubState"),
            result: string(&s, "Result"),
            n_restarts: number::<u32>(&s, "NRestarts"),
            main_pid: number::<u32>(&s, "MainPID"),
            active_enter_us: number::<u64>(&u, "ActiveEnterTimestamp"),
        })
    }
}

fn string(map: &HashMap<String, OwnedVariant>, key: &str) -> String {
    map.get(key)
        .and_then(|v| v.downcast_ref::<&str>().ok().map(str::to_owned))
        .unwrap_or_default()
}

fn number<T>(map: &HashMap<String, OwnedVariant>, key: &str) -> T
where
    T: Default + TryFrom<OwnedVariant>,
{
    map.get(key)
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| T::try_from(v).ok())
        .unwrap_or_default()
}
