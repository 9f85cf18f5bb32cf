//! The spec's pre-start hook (migrations and the like), run with a staged release before
//! any host restarts; it touches nothing that runs.

use fleet_proto::spec::{AppSpec, Version};
use fleet_proto::v1::RunPreStart;

use super::user::ensure_user;
use super::{Inner, Outcome};
use crate::units::PrestartEnv;

impl Inner {
    pub(super) async fn pre_start(&self, p: RunPreStart) -> Outcome {
        let spec = AppSpec::parse(&p.spec_toml).map_err(|e| format!("invalid spec: {e}"))?;
        let version: Version = p
            .version
            .parse()
            .map_err(|e| format!("invalid version: {e}"))?;
        if spec.pre_start.is_empty() {
            return Err(format!("{} has no pre_start hook in its spec", spec.name));
        }
        let release_dir = self.releases.release_dir(&spec.name, &version);
        if !release_dir.join(crate::releases::MARKER).is_file() {
            return Err(format!(
                "{} {version} is not staged on this host: stage it before its pre-start hook",
                spec.name
            ));
        }
        let env =
            PrestartEnv::render(&spec, &p.secrets, &self.env_dir).map_err(|e| e.to_string())?;
        ensure_user(&spec.user, &spec.name).await?;
        env.write().map_err(|e| e.to_string())?;
        let out = crate::hook::run(&spec, &release_dir, env.path()).await;
        env.remove();
        match &out {
            Ok(_) => tracing::info!(app = %spec.name, %version, "pre-start hook succeeded"),
            Err(e) => tracing::warn!(app = %spec.name, %version, "pre-start hook failed: {e}"),
        }
        out
    }
}
