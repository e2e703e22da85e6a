//! keytrail's one integration-test binary: every test talks to a real
//! keytrail (in-process or the built binary) over real sockets on
//! 127.0.0.1 with ports the OS chose, and to a real upstream server.

mod admin;
mod admin_log;
mod alerts;
mod app_events;
mod audit_api;
mod cli_alerts;
mod cli_checks;
mod cli_manage;
mod demo_token;
mod client_conn;
mod durability;
mod erasure;
mod gateway;
mod hardening;
mod http_semantics;
mod integrity;
mod interrupted;
mod key_races;
mod lifecycle;
mod limit_evasion;
mod login_throttle;
mod mmdb;
mod openapi;
mod pipeline;
mod policy;
mod process;
mod protection;
mod ratelimit;
mod retention;
mod roles;
mod secret_spellings;
mod settings;
mod stats;
mod tenant_isolation;
mod upstream_idle;
mod util;
mod verify;
