//! The operator API behind fleetctl.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::admin_server::Admin;
use fleet_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::apps;
use crate::auth::Caller;
use crate::backup;
use crate::catalog;
use crate::hosts;
use crate::lifecycle;
use crate::operators;
use crate::paging;
use crate::ratelimit::MAX_BULK_PER_MINUTE;
use crate::releases;
use crate::secrets;
use crate::shared::{internal, Shared};
use crate::store::{RevokedRecord, TokenRecord};
use crate::timefmt::now_secs;
use crate::tokens;
use tokio_stream::wrappers::ReceiverStream;

pub struct AdminService(pub Arc<Shared>);

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_TOKEN_USES: u32 = 10_000;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let shared = &self.0;
        let actor = Caller::from_request(&request)?.actor();
        let req = request.into_inner();
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s => Duration::from_secs(s),
        };
        if ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(
                "token ttl must be at most 30 days",
            ));
        }
        let group = hosts::group_name(&req.group)?;
        let uses = if req.uses == 0 { 1 } else { req.uses };
        if uses > MAX_TOKEN_USES {
            return Err(Status::invalid_argument(format!(
                "token uses must be at most {MAX_TOKEN_USES}"
            )));
        }
        if req.bulk_per_minute > MAX_BULK_PER_MINUTE {
            return Err(Status::invalid_argument(format!(
                "bulk_per_minute must be at most {MAX_BULK_PER_MINUTE} (it is {})",
                req.bulk_per_minute
            )));
        }
        let token = tokens::generate();
        let now = now_secs();
        let expires_at = now + ttl.as_secs() as i64;
        shared
            .store
            .put_token(
                &token.hash,
                &TokenRecord {
                    token_id: token.id.clone(),
                    created_at: now,
                    expires_at,
                    uses_total: uses,
                    uses_left: uses,
                    created_by: actor.clone(),
                    group: group.clone(),
                    bulk_per_minute: req.bulk_per_minute,
                    revoked_at: 0,
                },
            )
            .map_err(internal)?;
        shared
            .audit(
                &actor,
                "token.create",
                &format!("token:{}", token.id),
                &format!(
                    "uses={uses} ttl={}s{}{}",
                    ttl.as_secs(),
                    if group.is_empty() {
                        String::new()
                    } else {
                        format!(" group={group}")
                    },
                    match req.bulk_per_minute {
                        0 => String::new(),
                        n => format!(" bulk={n}/min"),
                    }
                ),
            )
            .map_err(internal)?;
        Ok(Response::new(CreateTokenResponse {
            token: token.secret,
            expires_at,
            uses,
            token_id: token.id,
            bulk_per_minute: req.bulk_per_minute,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        tokens::list(&self.0, request.into_inner()).map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        tokens::revoke(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        hosts::list(&self.0, request.into_inner()).map(Response::new)
    }

    async fn set_host_group(
        &self,
        request: Request<SetHostGroupRequest>,
    ) -> Result<Response<Host>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        hosts::set_group(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn set_host_cordon(
        &self,
        request: Request<SetHostCordonRequest>,
    ) -> Result<Response<Host>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        hosts::set_cordon(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn remove_host(
        &self,
        request: Request<RemoveHostRequest>,
    ) -> Result<Response<RemoveHostResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        hosts::remove(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn apply_app(
        &self,
        request: Request<ApplyAppRequest>,
    ) -> Result<Response<ApplyAppResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        apps::apply(&self.0, &actor, &request.into_inner().spec_toml)
            .await
            .map(Response::new)
    }

    async fn list_apps(
        &self,
        _request: Request<ListAppsRequest>,
    ) -> Result<Response<ListAppsResponse>, Status> {
        apps::list(&self.0).map(Response::new)
    }

    async fn get_app(&self, request: Request<GetAppRequest>) -> Result<Response<AppInfo>, Status> {
        apps::get(&self.0, &request.into_inner().app).map(Response::new)
    }

    async fn upload_release(
        &self,
        request: Request<tonic::Streaming<UploadReleaseChunk>>,
    ) -> Result<Response<UploadReleaseResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        releases::upload(&self.0, &actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_secret(
        &self,
        request: Request<SetSecretRequest>,
    ) -> Result<Response<SetSecretResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        secrets::set(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    type EventsStream = ReceiverStream<Result<FleetEvent, Status>>;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.0
            .events
            .stream(request.into_inner())
            .map(Response::new)
    }

    type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        backup::serve(self.0.clone(), actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_releases(
        &self,
        request: Request<ListReleasesRequest>,
    ) -> Result<Response<ListReleasesResponse>, Status> {
        catalog::list(&self.0, request.into_inner()).map(Response::new)
    }

    async fn remove_release(
        &self,
        request: Request<RemoveReleaseRequest>,
    ) -> Result<Response<RemoveReleaseResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        catalog::remove(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn list_secrets(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        secrets::list(&self.0, request.into_inner()).map(Response::new)
    }

    async fn unset_secret(
        &self,
        request: Request<UnsetSecretRequest>,
    ) -> Result<Response<UnsetSecretResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        secrets::unset(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    type DeployStream = ReceiverStream<Result<HostProgress, Status>>;

    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<Self::DeployStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        apps::deploy(self.0.clone(), actor, request.into_inner()).map(Response::new)
    }

    type RestartAppStream = ReceiverStream<Result<HostProgress, Status>>;

    async fn restart_app(
        &self,
        request: Request<RestartAppRequest>,
    ) -> Result<Response<Self::RestartAppStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        apps::restart(self.0.clone(), actor, request.into_inner()).map(Response::new)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        apps::status(&self.0, request.into_inner()).map(Response::new)
    }

    type LogsStream = ReceiverStream<Result<LogLine, Status>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        apps::logs(self.0.clone(), request.into_inner())
            .await
            .map(Response::new)
    }

    type SetAppRunningStream = ReceiverStream<Result<HostProgress, Status>>;

    async fn set_app_running(
        &self,
        request: Request<SetAppRunningRequest>,
    ) -> Result<Response<Self::SetAppRunningStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        lifecycle::set_running(self.0.clone(), actor, request.into_inner()).map(Response::new)
    }

    type RemoveAppStream = ReceiverStream<Result<HostProgress, Status>>;

    async fn remove_app(
        &self,
        request: Request<RemoveAppRequest>,
    ) -> Result<Response<Self::RemoveAppStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        lifecycle::remove(self.0.clone(), actor, request.into_inner()).map(Response::new)
    }

    type ExecStream = ReceiverStream<Result<ExecEvent, Status>>;

    async fn exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::exec::exec(self.0.clone(), actor, request.into_inner()).map(Response::new)
    }

    type ApplyFirewallStream = ReceiverStream<Result<HostProgress, Status>>;

    async fn apply_firewall(
        &self,
        request: Request<ApplyFirewallRequest>,
    ) -> Result<Response<Self::ApplyFirewallStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::firewall::apply(self.0.clone(), actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn show_firewall(
        &self,
        request: Request<ShowFirewallRequest>,
    ) -> Result<Response<ShowFirewallResponse>, Status> {
        crate::firewall::show(&self.0, &request.into_inner().host).map(Response::new)
    }

    async fn firewall_status(
        &self,
        request: Request<FirewallStatusRequest>,
    ) -> Result<Response<FirewallStatusResponse>, Status> {
        crate::firewall::status(&self.0, request.into_inner()).map(Response::new)
    }

    type StartRolloutStream = ReceiverStream<Result<RolloutEvent, Status>>;

    async fn start_rollout(
        &self,
        request: Request<RolloutRequest>,
    ) -> Result<Response<Self::StartRolloutStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::rollout::start(self.0.clone(), actor, request.into_inner())
            .await
            .map(Response::new)
    }

    type WatchRolloutStream = ReceiverStream<Result<RolloutEvent, Status>>;

    async fn watch_rollout(
        &self,
        request: Request<WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        crate::rollout::watch(&self.0, request.into_inner()).map(Response::new)
    }

    async fn control_rollout(
        &self,
        request: Request<ControlRolloutRequest>,
    ) -> Result<Response<RolloutInfo>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::rollout::control(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    /// Same identity, the CSR's key (the caller proved it holds it by signing the CSR, and
    /// proved who it is with its current certificate), a fresh lifetime.
    async fn renew_identity(
        &self,
        request: Request<RenewIdentityRequest>,
    ) -> Result<Response<RenewIdentityResponse>, Status> {
        let shared = &self.0;
        let caller = Caller::from_request(&request)?.clone();
        let identity = caller
            .identity
            .clone()
            .ok_or_else(|| Status::unauthenticated("renewal needs a client certificate"))?;
        let csr = crate::pki::parse_csr(&request.into_inner().csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let issued = shared
            .ca
            .issue_client(&csr, &identity, shared.settings.admin_cert_lifetime)
            .map_err(|e| {
                tracing::error!(error = %e, "issuing an admin certificate failed");
                Status::internal(format!("cannot issue the certificate: {e}"))
            })?;
        // The old certificate stops working now: a renewed identity whose old key leaked
        // must not stay usable for the rest of the old lifetime.
        if let (Some(serial), Some(not_after)) = (&caller.serial, caller.not_after) {
            shared
                .store
                .revoke(&RevokedRecord {
                    serial: serial.clone(),
                    identity: identity.uri(),
                    revoked_at: now_secs(),
                    not_after,
                })
                .map_err(internal)?;
            shared.revocations.insert(serial.clone());
        }
        if let Some(name) = identity.name() {
            operators::renewed(shared, name.as_str(), &issued.serial, issued.not_after)?;
        }
        shared
            .audit(
                &caller.actor(),
                "identity.renew",
                &identity.uri(),
                &format!(
                    "serial {} replaced (and revoked) by {}; valid until {}",
                    caller.serial.as_deref().unwrap_or("?"),
                    issued.serial,
                    crate::timefmt::rfc3339(issued.not_after)
                ),
            )
            .map_err(internal)?;
        Ok(Response::new(RenewIdentityResponse {
            cert_pem: issued.cert_pem,
            not_after: issued.not_after,
        }))
    }

    async fn upload_agent_package(
        &self,
        request: Request<tonic::Streaming<UploadAgentPackageChunk>>,
    ) -> Result<Response<UploadAgentPackageResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::agentpkg::upload(&self.0, &actor, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_agent_packages(
        &self,
        _request: Request<ListAgentPackagesRequest>,
    ) -> Result<Response<ListAgentPackagesResponse>, Status> {
        crate::agentpkg::list(&self.0).map(Response::new)
    }

    type UpgradeAgentsStream = crate::upgrade::EventStream;

    async fn upgrade_agents(
        &self,
        request: Request<UpgradeAgentsRequest>,
    ) -> Result<Response<Self::UpgradeAgentsStream>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::upgrade::start(self.0.clone(), actor, request.into_inner()).map(Response::new)
    }

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<ListAuditResponse>, Status> {
        let req = request.into_inner();
        let limit = paging::limit(req.limit);
        let after: u64 = match req.page_token.as_str() {
            "" => 0,
            t => t.parse().map_err(|_| paging::bad_token("ListAudit"))?,
        };
        let rows = self
            .0
            .store
            .audit_page(req.since.saturating_mul(1000), after, limit + 1)
            .map_err(internal)?;
        let (entries, more) = paging::fill(
            rows.into_iter().map(|a| AuditEntry {
                seq: a.seq,
                time_ms: a.time_ms,
                actor: a.actor,
                action: a.action,
                target: a.target,
                detail: a.detail,
            }),
            limit,
        );
        let next_page_token = match (more, entries.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListAuditResponse {
            entries,
            next_page_token,
        }))
    }

    async fn get_controllers(
        &self,
        _request: Request<GetControllersRequest>,
    ) -> Result<Response<ControllerAddresses>, Status> {
        crate::controllers::get(&self.0).map(Response::new)
    }

    async fn set_controllers(
        &self,
        request: Request<SetControllersRequest>,
    ) -> Result<Response<ControllerAddresses>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        crate::controllers::set(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn add_admin(
        &self,
        request: Request<AddAdminRequest>,
    ) -> Result<Response<AddAdminResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        operators::add(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn list_admins(
        &self,
        request: Request<ListAdminsRequest>,
    ) -> Result<Response<ListAdminsResponse>, Status> {
        operators::list(&self.0, request.into_inner()).map(Response::new)
    }

    async fn revoke_admin(
        &self,
        request: Request<RevokeAdminRequest>,
    ) -> Result<Response<RevokeAdminResponse>, Status> {
        let actor = Caller::from_request(&request)?.actor();
        operators::revoke(&self.0, &actor, request.into_inner()).map(Response::new)
    }

    async fn revoke_certificate(
        &self,
        request: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        let shared = &self.0;
        let actor = Caller::from_request(&request)?.actor();
        let serial = request.into_inner().serial.trim().to_ascii_lowercase();
        if serial.is_empty() || serial.len() > 64 || !serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Status::invalid_argument(
                "serial must be the certificate's serial number in hex (see `fleetctl identity show`)",
            ));
        }
        let now = now_secs();
        let newly_revoked = shared
            .store
            .revoke(&RevokedRecord {
                serial: serial.clone(),
                identity: String::new(),
                revoked_at: now,
                // Unknown here: kept as long as the longest certificate fleet issues lives.
                not_after: now + 367 * 24 * 3600,
            })
            .map_err(internal)?;
        shared.revocations.insert(serial.clone());
        shared
            .audit(&actor, "certificate.revoke", &serial, "")
            .map_err(internal)?;
        Ok(Response::new(RevokeCertificateResponse { newly_revoked }))
    }
}
