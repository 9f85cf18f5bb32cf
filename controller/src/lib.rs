//! fleet-controller: holds the fleet's desired state, enrolls agents, keeps one stream per
//! agent, and serves the operator API. (The `fleetctl` binary in this package uses only
//! fleet-proto, never this library: see `tests/boundaries.rs`.)
#![forbid(unsafe_code)]

pub mod admin;
pub mod agentpkg;
pub mod app_reports;
pub mod app_states;
pub mod apps;
pub mod auth;
pub mod backup;
pub mod blobs;
pub mod cached;
pub mod catalog;
pub mod channel;
pub mod cli;
pub mod commands;
pub mod config;
pub mod controllers;
pub mod converge;
pub mod datadir;
pub mod desired;
pub mod enroll;
pub mod events;
pub mod exec;
pub mod firewall;
pub mod hosts;
pub mod http;
pub mod http_client;
pub mod init;
pub mod lastseen;
pub mod leader;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod operators;
pub mod paging;
pub mod pki;
pub mod prometheus;
pub mod ratelimit;
pub mod releases;
pub mod replica;
pub mod rollout;
pub mod sd;
pub mod sealing;
pub mod secrets;
pub mod server;
pub mod servercert;
pub mod sessions;
pub mod shared;
pub mod store;
pub mod systemd;
pub mod timefmt;
pub mod tls;
pub mod tokens;
pub mod upgrade;
pub mod webhook;
