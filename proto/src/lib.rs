//! fleet's wire contract: the `fleet.v1` gRPC services, the identities that call them and
//! the rules for who may call what. The agent, fleetctl and the controller all depend on
//! this crate; fleetctl and the agent depend on nothing else of fleet's.
#![forbid(unsafe_code)]

pub mod access;
pub mod codec;
pub mod controllers;
pub mod exposition;
pub mod files;
pub mod firewall;
pub mod identity;
pub mod key_swap;
pub mod package;
pub mod peer;
pub mod reconnect;
pub mod renewal;
pub mod requests;
pub mod spec;
pub mod transport;
pub mod values;

/// Metadata key of the status a controller ends every session with when it shuts down:
/// milliseconds over which its agents should spread their first reconnect (it scales
/// with how many sessions it held, so a large fleet does not come back in one second).
pub const RETRY_AFTER_MS: &str = "fleet-retry-spread-ms";

/// Generated from `proto/fleet/v1/fleet.proto` (see `tests/codegen.rs`).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    include!("gen/fleet.v1.rs");
}
