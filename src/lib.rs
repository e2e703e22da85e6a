//! keytrail: an API-key gateway with a tamper-evident audit trail.
//!
//! Module layout (see ARCHITECTURE.md for the request and event flows):
//! - [`access`], [`keys`], [`redact`], [`event`], [`error`], [`config`], [`settings`]: pure logic, no IO.
//! - [`store`]: the SQLite control and audit stores; the only SQL.
//! - [`audit`]: the pipeline from a recorded event to a committed, chained row.
//! - [`snapshot`], [`control`]: the control plane and the gateway's in-memory view.
//! - [`gateway`]: the proxy and its request phases.
//! - [`admin`]: the admin and audit HTTP API.
//! - [`server`], [`demo`]: wiring; the binary in `main.rs` is only the CLI.
//! - [`cli`]: the commands that talk to a running keytrail's admin API.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod alerts;
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod event;
pub mod gateway;
pub mod keys;
pub mod listen;
pub mod policy;
pub mod protection;
pub mod ratelimit;
pub mod redact;
pub mod server;
pub mod settings;
pub mod signing;
pub mod snapshot;
pub mod splitmix;
pub mod store;
pub mod text;

/// Installs the process log (through the redaction point) and a panic hook
/// that redacts panic messages too.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(redact::RedactingStderr)
        .with_ansi(false)
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string();
        eprintln!("keytrail panicked: {}", redact::redact(&message));
    }));
}
