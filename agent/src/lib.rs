//! fleet-agent: the per-host half of fleet. It enrolls once (`join`: key made here, CSR
//! exchanged for a certificate with a join token, the controller's CA pinned), then holds
//! one long-lived mTLS gRPC stream to the controller (`run`), reconnecting forever with
//! jittered backoff and renewing its certificate over that stream.
//!
//! One module per concern; `main.rs` only parses the command line and maps the result to an
//! exit code, `cli` picks the command, `daemon` is the composition root of `run`.
#![forbid(unsafe_code)]

pub mod apps;
pub mod asgi_worker;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crash;
pub mod daemon;
pub mod enroll;
pub mod facts;
pub mod fetch;
pub mod firewall;
pub mod health;
pub mod hook;
pub mod host_paths;
pub mod journal;
pub mod logging;
pub mod logrotate;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod releases;
pub mod renew;
pub mod requests;
pub mod state;
pub mod systemd;
pub mod units;
pub mod upgrade;
