//! `fleetctl secret set|list|unset`: app secrets, sealed at rest (`sealing`), sent to a
//! host only inside the Activate of a deploy or rollout. No reply, audit entry or log
//! line ever holds a value.

use fleet_proto::spec::{check_env_key, check_env_value};
use fleet_proto::v1::{
    ListSecretsRequest, ListSecretsResponse, SecretInfo, SetSecretRequest, SetSecretResponse,
    UnsetSecretRequest, UnsetSecretResponse,
};
use tonic::Status;

use crate::apps::{app_name, load_app};
use crate::shared::{internal, Shared};
use crate::store::SecretMeta;
use crate::timefmt::now_ms;

fn key(name: &str) -> Result<(), Status> {
    check_env_key("name", name).map_err(|e| Status::invalid_argument(e.to_string()))
}

pub fn set(
    shared: &Shared,
    actor: &str,
    req: SetSecretRequest,
) -> Result<SetSecretResponse, Status> {
    let app = app_name(&req.app)?;
    load_app(shared, app.as_str())?;
    key(&req.key)?;
    // The error names the key, never the value.
    check_env_value(&req.key, &req.value).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let meta = SecretMeta {
        set_at_ms: now_ms(),
        set_by: actor.to_owned(),
    };
    let sealed = shared
        .sealer
        .seal(&format!("{app}/{}", req.key), &req.value);
    let created = shared
        .store
        .set_secret(app.as_str(), &req.key, &sealed, Some(&meta))
        .map_err(internal)?;
    let change = if created { "created" } else { "changed" };
    shared
        .audit(
            actor,
            "secret.set",
            app.as_str(),
            &format!("{} {change}", req.key),
        )
        .map_err(internal)?;
    Ok(SetSecretResponse { created })
}

pub fn list(shared: &Shared, req: ListSecretsRequest) -> Result<ListSecretsResponse, Status> {
    let app = app_name(&req.app)?;
    let (_, spec) = load_app(shared, app.as_str())?;
    let secrets = shared
        .store
        .secret_names(app.as_str())
        .map_err(internal)?
        .into_iter()
        .map(|(name, meta)| {
            let meta = meta.unwrap_or(SecretMeta {
                set_at_ms: 0,
                set_by: String::new(),
            });
            SecretInfo {
                in_spec: spec.secrets.contains(&name),
                name,
                set_at_ms: meta.set_at_ms,
                set_by: meta.set_by,
            }
        })
        .collect();
    Ok(ListSecretsResponse { secrets })
}

/// Removes a secret from the controller. Hosts keep the value they were given until the
/// app's next deploy or rollout, which no longer carries it; a secret the spec needs is
/// kept unless `force`, since every deploy of the app would then fail.
pub fn unset(
    shared: &Shared,
    actor: &str,
    req: UnsetSecretRequest,
) -> Result<UnsetSecretResponse, Status> {
    let app = app_name(&req.app)?;
    let (_, spec) = load_app(shared, app.as_str())?;
    key(&req.name)?;
    if spec.secrets.contains(&req.name) && !req.force {
        return Err(Status::failed_precondition(format!(
            "{app}'s spec needs {name} (secrets = [...]), so every deploy of {app} would fail without it; remove it from the spec first (`fleetctl app apply`), or pass --force; nothing was changed",
            name = req.name
        )));
    }
    let existed = shared
        .store
        .unset_secret(app.as_str(), &req.name)
        .map_err(internal)?;
    if existed {
        shared
            .audit(
                actor,
                "secret.unset",
                app.as_str(),
                &format!("{}{}", req.name, if req.force { " (forced)" } else { "" }),
            )
            .map_err(internal)?;
    }
    Ok(UnsetSecretResponse { existed })
}
