//! How a simulated agent comes back after its stream ended. With `agent`, exactly as
//! fleet-agent does: both use `fleet_proto::reconnect`.

/// How a simulated agent comes back after its stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reconnect {
    /// Like fleet-agent: spread first retry, then jittered exponential backoff.
    Agent,
    /// At once, every time: the worst herd a controller can meet.
    Immediate,
}
