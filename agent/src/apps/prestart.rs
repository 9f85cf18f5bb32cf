//! The spec's pre-start hook (migrations and the like), run with a staged release before
//! any host restarts; it touches nothing that runs.

use fleet_proto::spec::{AppSpec, Version};
use fleet_proto::v1::RunPreStart;

use super::user::ensure_user;
use super::{AppError, Inner, Outcome};
use crate::units::PrestartEnv;

impl Inner {
    pub(super) async fn pre_start(&self, p: RunPreStart) -> Outcome {
        let spec = AppSpec::parse(&p.spec_toml).map_err(AppError::Spec)?;
        let version: Version = p.version.parse().map_err(AppError::Version)?;
        if spec.pre_start.is_empty() {
            return Err(AppError::NoPreStart(spec.name));
        }
        let release_dir = self.releases.release_dir(&spec.name, &version);
        if !release_dir.join(crate::releases::MARKER).is_file() {
            return Err(AppError::NotStagedForHook {
                app: spec.name,
                version,
            });
        }
        let env = PrestartEnv::render(&spec, &p.secrets, &self.env_dir)?;
        ensure_user(&spec.user, &spec.name).await?;
        env.write()?;
        let out = crate::hook::run(&spec, &release_dir, env.path()).await;
        env.remove();
        match &out {
            Ok(_) => tracing::info!(app = %spec.name, %version, "pre-start hook succeeded"),
            Err(e) => tracing::warn!(app = %spec.name, %version, "pre-start hook failed: {e}"),
        }
        Ok(out?)
    }
}
