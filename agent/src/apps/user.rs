//! The app's system user: created by fleet for one app, and only ever used for that app.
//!
//! An existing account is used only if fleet made it for this app (its comment, the GECOS
//! field, says so): naming `daemon`, `www-data` or another app's user would hand this app
//! their files. The spec already refuses well-known system names; this is the rule that
//! holds on a real host, whatever accounts it has.

use std::process::Stdio;

use fleet_proto::spec::AppName;
use tokio::process::Command as Process;

use crate::releases::RunAs;

/// What agents before per-app comments wrote; still accepted as fleet's own.
const USER_COMMENT: &str = "fleet app";

/// The comment fleet gives the user it creates for `app`.
fn user_comment(app: &AppName) -> String {
    format!("{USER_COMMENT} {app}")
}

/// Whether an existing account with this GECOS field may run `app`: only one fleet made,
/// for this app (or, from an older agent, for an app).
fn user_is_fleets(gecos: &str, app: &AppName) -> bool {
    gecos == user_comment(app) || gecos == USER_COMMENT
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot look up user {user}: {source}")]
    LookUp { user: String, source: nix::Error },
    #[error(
        "user {user} already exists and was not created by fleet for app {app}; \
         set `user` in the spec to a name of the app's own (fleet creates it)"
    )]
    Foreign { user: String, app: AppName },
    #[error("cannot run useradd: {0}")]
    Spawn(std::io::Error),
    #[error("useradd {user} failed ({status}): {stderr}")]
    Useradd {
        user: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("useradd {user} succeeded but the user does not exist")]
    Vanished { user: String },
}

/// Creates the app's system user if missing and returns its ids; refuses an existing
/// account fleet did not create for this app. There is no D-Bus API for users; useradd
/// is what Debian's own maintainer scripts use.
pub(super) async fn ensure_user(user: &str, app: &AppName) -> Result<RunAs, UserError> {
    let look = || {
        nix::unistd::User::from_name(user).map_err(|source| UserError::LookUp {
            user: user.to_owned(),
            source,
        })
    };
    let ids = |u: nix::unistd::User| RunAs {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    };
    if let Some(u) = look()? {
        if !user_is_fleets(&u.gecos.to_string_lossy(), app) {
            return Err(UserError::Foreign {
                user: user.to_owned(),
                app: app.clone(),
            });
        }
        return Ok(ids(u));
    }
    let out = Process::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            &user_comment(app),
            "--",
            user,
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(UserError::Spawn)?;
    if !out.status.success() {
        return Err(UserError::Useradd {
            user: user.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    tracing::info!(%user, %app, "created system user for app");
    look()?.map(ids).ok_or_else(|| UserError::Vanished {
        user: user.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_accounts_fleet_made_for_the_app_are_used() {
        let shop: AppName = "shop".parse().unwrap();
        assert_eq!(user_comment(&shop), "fleet app shop");
        assert!(user_is_fleets("fleet app shop", &shop));
        // Made by an agent before comments named the app.
        assert!(user_is_fleets("fleet app", &shop));
        for other in [
            "",
            "daemon",
            "www-data",
            "fleet app api",
            "fleet app shopx",
            "Fleet App shop",
        ] {
            assert!(!user_is_fleets(other, &shop), "{other:?}");
        }
    }
}
