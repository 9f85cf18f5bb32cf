//! `fleet-agent join`: enroll this host once.
//!
//! Everything that can be checked locally is checked before any network traffic. The key is
//! made here and stays here; the controller's CA is pinned in the TLS handshake, so the
//! token is only ever sent to the real controller. Nothing is written until the controller
//! has answered with a certificate that passed our checks, so a failed `--force` leaves
//! the old enrollment working.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use fleet_proto::controllers::{ControllerList, ControllerListError};
use fleet_proto::identity::{InvalidName, Name};
use fleet_proto::peer::{CaPin, InvalidPin};
use fleet_proto::transport::{
    alert_reason, certs_from_pem, classify, connect, pinned_client_config, ConnectError, Failure,
};
use fleet_proto::v1::enrollment_client::EnrollmentClient;
use fleet_proto::v1::JoinRequest;
use rcgen::KeyPair;
use tonic::Code;

use crate::clock::format_time;
use crate::logging::error_chain;
use crate::renew::{check_issued, csr_pem, IssueError};
use crate::state::{Meta, NewEnrollment, StateDir, StateError, DEFAULT_STATE_DIR};

/// `fleet-agent join`.
// No `Debug` derive: the token must not end up in a debug print by accident.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// Controller gRPC address.
    #[arg(long, env = "FLEET_CONTROLLER", value_name = "ADDR:PORT")]
    pub controller: String,

    /// Join token from `fleetctl token create`. Prefer FLEET_JOIN_TOKEN or --token-stdin:
    /// a command line is visible to every user of the host.
    #[arg(
        long,
        env = "FLEET_JOIN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_stdin"
    )]
    pub token: Option<String>,

    /// Read the join token from stdin (one line), e.g. from a configuration tool that
    /// must not put it in a command line or an environment it logs.
    #[arg(long, conflicts_with = "token")]
    pub token_stdin: bool,

    /// Fingerprint of the fleet CA, as printed by `fleet-controller init`.
    #[arg(long, value_name = "sha256:HEX")]
    pub ca_pin: String,

    #[arg(long, env = "FLEET_AGENT_STATE_DIR", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Host name in the fleet (default: this machine's short host name).
    #[arg(long)]
    pub name: Option<String>,

    /// Enroll again even if this state dir already holds an enrollment.
    #[arg(long)]
    pub force: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Pin(#[from] InvalidPin),
    #[error("{0}")]
    Name(InvalidName),
    #[error("this machine's host name {host:?} is not a valid fleet host name ({reason}); pass --name NAME")]
    HostName { host: String, reason: &'static str },
    #[error("cannot determine this machine's host name; pass --name NAME")]
    NoHostName,
    #[error("cannot read the join token from stdin: {0}")]
    TokenInput(String),
    #[error("invalid --controller {0:?}: expected HOST:PORT, e.g. controller.example:7443")]
    Address(String),
    #[error("invalid --controller: {0}")]
    Controllers(ControllerListError),
    #[error("already enrolled as {name} with {controller} (certificate expires {expires}); pass --force to enroll again with a new token")]
    AlreadyEnrolled {
        name: String,
        controller: String,
        expires: String,
    },
    #[error("controller unreachable at {addr}: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("controller's certificate does not match --ca-pin {pin} ({detail}); check the pin printed by `fleet-controller init`")]
    PinMismatch { pin: CaPin, detail: String },
    #[error("refusing the controller at {addr}: its certificate was not accepted ({detail})")]
    Untrusted { addr: String, detail: String },
    #[error("join token refused by the controller: {0}")]
    TokenRefused(String),
    #[error("too many join attempts, retry in a minute ({0})")]
    RateLimited(String),
    #[error("the controller refused the join request: {0}")]
    Rejected(String),
    #[error("the controller did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("the controller's answer is not usable: {0}")]
    BadResponse(String),
    #[error("cannot make a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<IssueError> for JoinError {
    fn from(e: IssueError) -> Self {
        JoinError::BadResponse(e.to_string())
    }
}

/// Validated inputs of a join.
struct Plan {
    controller: ControllerList,
    token: String,
    pin: CaPin,
    name: Name,
    state: StateDir,
    force: bool,
}

/// Longer than any token `fleetctl token create` makes; bounds what stdin may hand us.
const MAX_TOKEN_BYTES: u64 = 1024;

/// The token from the first line of `input`, surrounding whitespace removed.
fn token_from(input: impl std::io::Read) -> Result<String, JoinError> {
    use std::io::Read;
    let mut text = String::new();
    input
        .take(MAX_TOKEN_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| JoinError::TokenInput(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_BYTES {
        return Err(JoinError::TokenInput(format!(
            "more than {MAX_TOKEN_BYTES} bytes: pass only the token"
        )));
    }
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(JoinError::TokenInput(
            "it is empty: pipe the token from `fleetctl token create`".into(),
        ));
    }
    Ok(token)
}

fn plan(args: JoinArgs) -> Result<Plan, JoinError> {
    let token = match (args.token_stdin, args.token) {
        (true, _) => token_from(std::io::stdin().lock())?,
        (false, Some(t)) => t,
        (false, None) => {
            return Err(JoinError::TokenInput(
                "no token: pass --token-stdin, FLEET_JOIN_TOKEN or --token".into(),
            ))
        }
    };
    let pin = CaPin::from_str(&args.ca_pin)?;
    let name = match &args.name {
        Some(n) => Name::from_str(n).map_err(JoinError::Name)?,
        None => default_name(crate::facts::hostname())?,
    };
    // One HOST:PORT, or several comma-separated (controllers sharing a store, docs/ha.md).
    let controller = ControllerList::from_str(&args.controller).map_err(|e| match e {
        ControllerListError::Address(a) => JoinError::Address(a),
        other => JoinError::Controllers(other),
    })?;
    Ok(Plan {
        controller,
        token,
        pin,
        name,
        state: StateDir::new(args.state_dir),
        force: args.force,
    })
}

/// The host name's first label (`web-1.example.com` → `web-1`), as `hostname -s` would.
pub fn default_name(host: Option<String>) -> Result<Name, JoinError> {
    let host = host.ok_or(JoinError::NoHostName)?;
    let short = host.split('.').next().unwrap_or_default();
    Name::from_str(short).map_err(|e| JoinError::HostName {
        host: host.clone(),
        reason: e.reason,
    })
}

/// Refuses to overwrite an enrollment unless forced, saying what is there.
fn check_not_enrolled(state: &StateDir) -> Result<(), JoinError> {
    if !state.is_enrolled()? {
        return Ok(());
    }
    let (name, controller) = match state.load_meta() {
        Ok(m) => (m.name.to_string(), m.controller.to_string()),
        Err(_) => ("an unknown name".into(), "an unknown controller".into()),
    };
    let expires = match state.load_cert() {
        Ok(c) => format_time(c.not_after),
        Err(_) => "unknown: the certificate is unreadable".into(),
    };
    Err(JoinError::AlreadyEnrolled {
        name,
        controller,
        expires,
    })
}

/// Runs the join; returns the success line for stdout.
pub async fn join(args: JoinArgs) -> Result<String, JoinError> {
    let plan = plan(args)?;
    if !plan.force {
        check_not_enrolled(&plan.state)?;
    }

    let key = KeyPair::generate()?;
    let csr = csr_pem(&key, &plan.name)?;
    tracing::info!(controller = %plan.controller, name = %plan.name, "enrolling");

    // The first address that answers: a dead controller refuses the connection.
    let addrs = plan.controller.addrs();
    let mut channel = None;
    for (i, addr) in addrs.iter().enumerate() {
        match connect(addr, pinned_client_config(plan.pin), CONNECT_TIMEOUT).await {
            Ok(c) => {
                channel = Some(c);
                break;
            }
            Err(ConnectError::Address(_)) => return Err(JoinError::Address((*addr).to_owned())),
            Err(ConnectError::Transport(t)) => {
                let err = transport_error(&plan, &t);
                if i + 1 == addrs.len() || !matches!(err, JoinError::Unreachable { .. }) {
                    return Err(err);
                }
                tracing::info!(controller = %addr, "unreachable; trying the next address");
            }
        }
    }
    let channel = channel.ok_or_else(|| JoinError::Address(plan.controller.to_string()))?;
    let mut client = EnrollmentClient::new(channel);
    let request = JoinRequest {
        token: plan.token.clone(),
        csr_pem: csr,
        name: plan.name.to_string(),
    };
    let response = tokio::time::timeout(CALL_TIMEOUT, client.join(request))
        .await
        .map_err(|_| JoinError::Timeout)?
        .map_err(|status| status_error(&plan, &status))?
        .into_inner();

    // The handshake already proved the controller holds a certificate from the pinned CA;
    // the CA we store must be that same one, and nothing else.
    let ca = certs_from_pem(&response.ca_pem, "the CA in the answer")
        .map_err(|e| JoinError::BadResponse(e.to_string()))?;
    if ca.len() != 1 || !plan.pin.matches(&ca[0]) {
        return Err(JoinError::BadResponse(format!(
            "the CA it sent is not the one pinned by --ca-pin {}",
            plan.pin
        )));
    }
    let info = check_issued(&response.cert_pem, &ca[0], &key, &plan.name, None)?;

    let meta = Meta {
        controller: plan.controller.clone(),
        name: plan.name.clone(),
        trust_domain: info.identity.trust_domain().clone(),
    };
    plan.state.write_enrollment(&NewEnrollment {
        meta: &meta,
        key_pem: &key.serialize_pem(),
        cert_pem: &response.cert_pem,
        ca_pem: &response.ca_pem,
    })?;
    tracing::info!(
        identity = %info.identity,
        expires = %format_time(info.not_after),
        state_dir = %plan.state.path().display(),
        "enrolled"
    );
    Ok(format!(
        "enrolled as {}; start the agent: systemctl enable --now fleet-agent",
        info.identity
    ))
}

fn transport_error(plan: &Plan, err: &(dyn std::error::Error + 'static)) -> JoinError {
    let addr = plan.controller.to_string();
    match classify(err) {
        Failure::Unreachable(detail) => JoinError::Unreachable { addr, detail },
        Failure::ControllerUntrusted(detail) if detail.contains("pinned") => {
            JoinError::PinMismatch {
                pin: plan.pin,
                detail,
            }
        }
        Failure::ControllerUntrusted(detail) => JoinError::Untrusted { addr, detail },
        Failure::CertificateRefused(alert) => JoinError::Unreachable {
            addr,
            detail: format!(
                "the controller refused the connection: {}",
                alert_reason(alert)
            ),
        },
        Failure::Other => JoinError::Unreachable {
            addr,
            detail: error_chain(err),
        },
    }
}

/// Maps the controller's answer to operator language. The controller's own message says
/// why (expired, spent, unknown token; name taken ...) and is passed through as is.
fn status_error(plan: &Plan, status: &tonic::Status) -> JoinError {
    let message = status.message().to_owned();
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => JoinError::TokenRefused(message),
        Code::ResourceExhausted => JoinError::RateLimited(message),
        Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
            JoinError::Rejected(message)
        }
        Code::DeadlineExceeded => JoinError::Timeout,
        code => match classify(status) {
            // No TLS or socket failure behind it: a plain gRPC error.
            Failure::Other if matches!(code, Code::Unavailable | Code::Unknown) => {
                JoinError::Unreachable {
                    addr: plan.controller.to_string(),
                    detail: crate::channel::status_text(status),
                }
            }
            Failure::Other => JoinError::Rejected(format!("{code:?}: {message}")),
            _ => transport_error(plan, status),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_for(name: Option<&str>) -> Plan {
        Plan {
            controller: "127.0.0.1:1".parse().unwrap(),
            token: "secret-token".into(),
            pin: CaPin::of_der(b"ca"),
            name: name.unwrap_or("h1").parse().unwrap(),
            state: StateDir::new("/nonexistent"),
            force: false,
        }
    }

    #[test]
    fn default_name_is_the_short_host_name() {
        assert_eq!(
            default_name(Some("web-1.example.com".into()))
                .unwrap()
                .as_str(),
            "web-1"
        );
        let err = default_name(Some("Web_1".into())).unwrap_err().to_string();
        assert!(err.contains("pass --name"), "{err}");
        assert!(default_name(None)
            .unwrap_err()
            .to_string()
            .contains("pass --name"));
    }

    #[test]
    fn statuses_become_operator_messages() {
        let p = plan_for(None);
        let msg = |s: tonic::Status| status_error(&p, &s).to_string();
        assert_eq!(
            msg(tonic::Status::permission_denied("token expired")),
            "join token refused by the controller: token expired"
        );
        assert_eq!(
            msg(tonic::Status::unauthenticated("token already used")),
            "join token refused by the controller: token already used"
        );
        assert!(msg(tonic::Status::resource_exhausted("slow down"))
            .starts_with("too many join attempts, retry in a minute"));
        assert!(msg(tonic::Status::already_exists("name h1 is taken")).contains("name h1 is taken"));
        assert!(msg(tonic::Status::internal("db")).contains("Internal"));
        assert!(msg(tonic::Status::unavailable("down"))
            .starts_with("controller unreachable at 127.0.0.1:1"));
    }

    #[test]
    fn token_never_appears_in_errors() {
        let p = plan_for(None);
        let e = status_error(&p, &tonic::Status::permission_denied("unknown token"));
        assert!(!e.to_string().contains("secret-token"));
    }

    #[test]
    fn a_token_on_stdin_is_one_trimmed_bounded_line() {
        assert_eq!(
            token_from(&b"fleetjoin_abc\n"[..]).unwrap(),
            "fleetjoin_abc"
        );
        assert_eq!(
            token_from(&b"  fleetjoin_abc  "[..]).unwrap(),
            "fleetjoin_abc"
        );
        let empty = token_from(&b"\n"[..]).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        let long = vec![b'a'; 2000];
        let e = token_from(&long[..]).unwrap_err().to_string();
        assert!(
            e.contains("more than 1024 bytes") && !e.contains("aaaa"),
            "{e}"
        );
    }
}
