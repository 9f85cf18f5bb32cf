//! Every message an agent or an admin can send, decoded from arbitrary bytes as tonic's
//! prost codec does on receipt, then passed through the checks the controller applies to it
//! before any state is touched. The first input byte picks the message type.
//!
//! Properties: decoding never panics; a message that decodes re-encodes to exactly
//! `encoded_len()` bytes and decodes back to itself, and that encoding is stable; the
//! receipt checks never panic and accept only values in their documented alphabets.
#![no_main]

use fleet_controller::{pki, tokens};
use fleet_proto::firewall::Policy;
use fleet_proto::identity::Name;
use fleet_proto::spec::{AppName, AppSpec, Version};
use fleet_proto::values::MaxParallel;
use fleet_proto::v1::*;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Decodes `bytes` as `M`; on success checks the round trip and returns the message.
fn roundtrip<M: Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let enc = m.encode_to_vec();
    assert_eq!(enc.len(), m.encoded_len());
    let back = M::decode(enc.as_slice()).expect("re-encoded message must decode");
    assert!(back == m, "round trip changed the message");
    assert_eq!(back.encode_to_vec(), enc, "encoding is not stable");
    Some(m)
}

fn app_name(s: &str) {
    if let Ok(n) = s.parse::<AppName>() {
        assert_eq!(n.as_str(), s);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
}

fn host_name(s: &str) {
    if let Ok(n) = s.parse::<Name>() {
        assert_eq!(n.as_str(), s);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
}

fn version(s: &str) {
    if let Ok(v) = s.parse::<Version>() {
        assert_eq!(v.as_str(), s);
        assert!(!s.contains(['/', '\0', '\n']) && s != "." && s != "..");
    }
}

fn csr(pem: &str) {
    let _ = pki::parse_csr(pem);
}

fn agent_message(m: AgentMessage) {
    use agent_message::Body;
    match m.body {
        Some(Body::Renew(r)) => csr(&r.csr_pem),
        Some(Body::AppState(s)) => app_name(&s.app),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 28 {
        0 => {
            if let Some(r) = roundtrip::<JoinRequest>(bytes) {
                host_name(&r.name);
                let _ = tokens::check_format(&r.token);
                csr(&r.csr_pem);
            }
        }
        1 => {
            if let Some(m) = roundtrip::<AgentMessage>(bytes) {
                agent_message(m);
            }
        }
        2 => {
            roundtrip::<CreateTokenRequest>(bytes);
        }
        3 => {
            roundtrip::<ListHostsRequest>(bytes);
        }
        4 => {
            if let Some(r) = roundtrip::<RemoveHostRequest>(bytes) {
                host_name(&r.name);
            }
        }
        5 => {
            if let Some(r) = roundtrip::<SetHostGroupRequest>(bytes) {
                host_name(&r.name);
            }
        }
        6 => {
            roundtrip::<ListAuditRequest>(bytes);
        }
        7 => {
            if let Some(r) = roundtrip::<ApplyAppRequest>(bytes) {
                if let Ok(spec) = AppSpec::parse(&r.spec_toml) {
                    fleet_fuzz::check_spec_invariants(&spec);
                }
            }
        }
        8 => {
            roundtrip::<ListAppsRequest>(bytes);
        }
        9 => {
            if let Some(r) = roundtrip::<GetAppRequest>(bytes) {
                app_name(&r.app);
            }
        }
        10 => {
            if let Some(r) = roundtrip::<UploadReleaseChunk>(bytes) {
                app_name(&r.app);
                version(&r.version);
            }
        }
        11 => {
            if let Some(r) = roundtrip::<SetSecretRequest>(bytes) {
                app_name(&r.app);
                let _ = fleet_proto::spec::check_env_key("key", &r.key);
                let _ = fleet_proto::spec::check_env_value("value", &r.value);
            }
        }
        12 => {
            if let Some(r) = roundtrip::<DeployRequest>(bytes) {
                app_name(&r.app);
                version(&r.version);
                r.hosts.iter().for_each(|h| host_name(h));
            }
        }
        13 => {
            if let Some(r) = roundtrip::<RestartAppRequest>(bytes) {
                app_name(&r.app);
            }
        }
        14 => {
            roundtrip::<StatusRequest>(bytes);
        }
        15 => {
            roundtrip::<LogsRequest>(bytes);
        }
        16 => {
            if let Some(r) = roundtrip::<ApplyFirewallRequest>(bytes) {
                let _ = Policy::parse(&r.policy_toml);
            }
        }
        17 => {
            roundtrip::<ShowFirewallRequest>(bytes);
        }
        18 => {
            roundtrip::<FirewallStatusRequest>(bytes);
        }
        19 => {
            if let Some(r) = roundtrip::<RolloutRequest>(bytes) {
                app_name(&r.app);
                version(&r.version);
                if let Ok(m) = MaxParallel::parse_wire(&r.max_parallel) {
                    for targets in [0, 1, 7, r.hosts.len()] {
                        let n = m.hosts(targets);
                        assert!(n >= 1, "batch size {n} from {:?}", r.max_parallel);
                    }
                }
            }
        }
        20 => {
            roundtrip::<WatchRolloutRequest>(bytes);
        }
        21 => {
            roundtrip::<ControlRolloutRequest>(bytes);
        }
        22 => {
            if let Some(r) = roundtrip::<RenewIdentityRequest>(bytes) {
                csr(&r.csr_pem);
            }
        }
        // What the agent receives from the controller, and what the admin CLI reads back.
        23 => {
            roundtrip::<ControllerMessage>(bytes);
        }
        24 => {
            roundtrip::<JoinResponse>(bytes);
        }
        25 => {
            roundtrip::<StatusResponse>(bytes);
        }
        26 => {
            roundtrip::<RolloutEvent>(bytes);
        }
        _ => {
            roundtrip::<ListHostsResponse>(bytes);
        }
    }
});
