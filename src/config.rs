//! Configuration: the TOML file, `KEYTRAIL_*` environment variables and
//! command-line flags, merged (file < environment < flags) in a pure function
//! into one validated [`Config`].
//!
//! Every option that is a duration carries its unit in its name. Values are
//! checked while the file is parsed, so an error names the file, the line and
//! the column of the bad value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// What the TOML file may hold. Unknown keys are errors: a typo must not be
/// silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub gateway: GatewayFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub retention: RetentionFile,
    #[serde(default)]
    pub keys: KeysFile,
    #[serde(default)]
    pub alerts: AlertsFile,
}

/// `[alerts]`: how often the alert engine reads the committed trail, and
/// how its webhooks are delivered.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// How often committed events are read and checked against the rules.
    #[serde(default, deserialize_with = "alerts_poll_interval_ms")]
    pub poll_interval_ms: Option<u64>,
    /// Tries of one webhook delivery before it is given up (and recorded
    /// as `alert_delivery_failed`).
    #[serde(default, deserialize_with = "webhook_attempts")]
    pub webhook_attempts: Option<u64>,
    /// The wait before the second try; each later wait is four times the one before.
    #[serde(default, deserialize_with = "webhook_backoff_ms")]
    pub webhook_backoff_ms: Option<u64>,
    /// The longest one try may take: connecting, sending, and the answer's head.
    #[serde(default, deserialize_with = "timeout_ms")]
    pub webhook_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// A file holding the pepper (at least 32 bytes; a final line break is
    /// not part of it) that keys are hashed with: HMAC-SHA-256 instead of
    /// SHA-256. Kept outside the data directory, a copy of the store alone
    /// cannot confirm a guessed key.
    pub pepper_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    pub listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "timeout_ms")]
    pub upstream_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "timeout_ms")]
    pub connect_timeout_ms: Option<u64>,
    /// Time a client connection has to send a request head, the wait for
    /// its first byte (and between calls on a kept connection) included.
    #[serde(default, deserialize_with = "timeout_ms")]
    pub head_timeout_ms: Option<u64>,
    /// Failed authentications from one address, within the window, after
    /// which it is blocked; 0 turns the automatic block off.
    #[serde(default, deserialize_with = "failure_count")]
    pub bruteforce_failures: Option<u64>,
    #[serde(default, deserialize_with = "block_secs")]
    pub bruteforce_window_secs: Option<u64>,
    #[serde(default, deserialize_with = "block_secs")]
    pub bruteforce_block_secs: Option<u64>,
    /// A `cidr,country` file mapping addresses to countries, for country
    /// blocklist entries and the events' `country`.
    pub geo_table: Option<PathBuf>,
    /// A MaxMind (GeoIP2 / GeoLite2 Country or City) database, asked for
    /// addresses the table does not cover.
    pub geo_database: Option<PathBuf>,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` (or
    /// `real_ip_header`) names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies name the client in: `X-Forwarded-For`
    /// (the default), `Forwarded` (RFC 7239) or `X-Real-IP`.
    pub real_ip_header: Option<String>,
    /// Networks (addresses or CIDR ranges) no api's upstream may be in;
    /// unset: [`crate::protection::DEFAULT_UPSTREAM_DENY`]; `[]`: none.
    pub upstream_deny: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<SocketAddr>,
    /// Time an admin connection has to send a request head, the wait for
    /// its first byte (and between calls on a kept connection) included.
    #[serde(default, deserialize_with = "timeout_ms")]
    pub head_timeout_ms: Option<u64>,
    /// Failed sign-ins for one admin name, within the window, after which
    /// the name is locked out; 0 turns the per-name lockout off.
    #[serde(default, deserialize_with = "failure_count")]
    pub login_name_failures: Option<u64>,
    /// The same for one client address (IPv6: its /64); 0 turns it off.
    #[serde(default, deserialize_with = "failure_count")]
    pub login_address_failures: Option<u64>,
    #[serde(default, deserialize_with = "block_secs")]
    pub login_window_secs: Option<u64>,
    #[serde(default, deserialize_with = "block_secs")]
    pub login_lockout_secs: Option<u64>,
    /// Proxies (addresses or CIDR ranges) in front of the admin API whose
    /// `X-Forwarded-For` names the caller: the address sign-in throttling
    /// counts and the admin log records.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// As `gateway.real_ip_header`, for the admin API's proxies.
    pub real_ip_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    #[serde(default, deserialize_with = "flush_interval_ms")]
    pub flush_interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "batch_max_events")]
    pub batch_max_events: Option<u64>,
    #[serde(default, deserialize_with = "queue_capacity")]
    pub queue_capacity: Option<u64>,
    /// What happens to a successful-call event when the queue is full.
    pub queue_full: Option<QueueFullPolicy>,
    /// Whether a gateway response waits for its event's commit.
    #[serde(default, deserialize_with = "durability")]
    pub durability: Option<Durability>,
    /// Whether successful calls (2xx/3xx) are recorded at all: the global
    /// `log_api_calls` setting until an admin changes it over the API.
    pub log_api_calls: Option<bool>,
    /// Seed of the sampler behind `api_call_sample_rate`; random if unset.
    /// Set it to make which calls a rate keeps repeatable (tests, audits).
    pub sample_seed: Option<u64>,
    /// A tenant's chain is signed after this many new events...
    #[serde(default, deserialize_with = "checkpoint_every_events")]
    pub checkpoint_every_events: Option<u64>,
    /// ...or this long after its last checkpoint, whichever comes first.
    #[serde(default, deserialize_with = "checkpoint_interval_s")]
    pub checkpoint_interval_s: Option<u64>,
}

/// The operator's choice for successful-call events when the audit queue is
/// full. Failed, refused and security events are never dropped either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueFullPolicy {
    /// Drop the event and count it (the request is never slowed).
    Drop,
    /// Wait for room in the queue (nothing is lost; the request waits).
    Block,
    /// From half full on, keep each event with a chance that falls from 1
    /// to 0 as the queue fills, and count the rest: an overload leaves a
    /// sample of its calls spread over it in the trail, not a gap where
    /// the queue was full (the request is never slowed).
    Sample,
}

impl QueueFullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueFullPolicy::Drop => "drop",
            QueueFullPolicy::Block => "block",
            QueueFullPolicy::Sample => "sample",
        }
    }
}

/// When a proxied call's event is committed, relative to its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The response goes out at once; its event is committed within the
    /// flush interval (a crash can lose that last interval's events).
    #[default]
    Async,
    /// The end of the response waits until its event (and any security
    /// event recorded with it) is committed: a response the client got in
    /// full is in the trail, whatever happens to the process afterwards.
    /// Events are then never dropped for a full queue.
    Sync,
}

/// `[retention]`: the global retention until an admin changes it over the
/// API, where archives go, and how often the retention task runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    #[serde(default, deserialize_with = "hot_days")]
    pub hot_days: Option<u64>,
    #[serde(default, deserialize_with = "archive_days")]
    pub archive_days: Option<u64>,
    /// Where archives are written; `<data_dir>/archive` by default.
    pub archive_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "retention_interval_s")]
    pub interval_s: Option<u64>,
    /// zstd level of archive files (1–22): higher is smaller and slower.
    #[serde(default, deserialize_with = "archive_zstd_level")]
    pub archive_zstd_level: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// A `tracing` filter such as `info` or `keytrail=debug`.
    #[serde(default, deserialize_with = "log_level")]
    pub level: Option<String>,
}

/// A secret setting (the bootstrap token): its value is never shown by
/// `{:?}`, which a test's assertion or a panic prints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Hidden(pub String);

impl std::fmt::Debug for Hidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"****\"")
    }
}

impl std::ops::Deref for Hidden {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Hidden {
    fn from(text: &str) -> Hidden {
        Hidden(text.to_string())
    }
}

/// Values given on the command line or in `KEYTRAIL_*` variables (clap has
/// already chosen the flag over the variable).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub gateway_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub bootstrap_token: Option<Hidden>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub gateway: GatewayConfig,
    pub admin_listen: SocketAddr,
    /// Time an admin connection has to send a request head (idle time
    /// before it, on a new or kept connection, included); a slower one is
    /// closed unanswered.
    pub admin_head_timeout: Duration,
    /// Proxies in front of the admin API (see `AdminFile::trusted_proxies`).
    pub admin_trusted_proxies: crate::protection::TrustedProxies,
    /// Sign-in throttling of `POST /v1/auth/login`.
    pub login: LoginConfig,
    pub audit: AuditConfig,
    pub retention: RetentionConfig,
    pub log_level: String,
    /// The operator's chosen first admin token; never printed.
    pub bootstrap_token: Option<Hidden>,
    /// How API keys are hashed for the store (`keys.pepper_file`).
    pub key_hasher: crate::keys::KeyHasher,
    pub alerts: AlertsConfig,
}

/// The alert engine's timing (`[alerts]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsConfig {
    pub poll_interval: Duration,
    pub webhook_attempts: u32,
    pub webhook_backoff: Duration,
    pub webhook_timeout: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            poll_interval: Duration::from_millis(1_000),
            webhook_attempts: 5,
            webhook_backoff: Duration::from_millis(1_000),
            webhook_timeout: Duration::from_millis(10_000),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Time allowed for the upstream to send its response headers.
    pub upstream_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time a client connection has to send a request head (idle time
    /// before it included); a slower one is closed.
    pub head_timeout: Duration,
    /// 0: no automatic brute-force blocks.
    pub bruteforce_failures: u32,
    pub bruteforce_window: Duration,
    pub bruteforce_block: Duration,
    pub geo_table: Option<PathBuf>,
    pub geo_database: Option<PathBuf>,
    pub trusted_proxies: crate::protection::TrustedProxies,
    /// Networks no api's upstream may be in (keytrail's own listeners are
    /// refused too, once they are bound: [`crate::protection::UpstreamGuard`]).
    pub upstream_deny: crate::protection::Networks,
}

/// Sign-in throttling: past `name_failures` failed sign-ins for one name (or
/// `address_failures` from one address) within `window`, attempts are
/// refused for `lockout` without checking the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// 0: no per-name lockout.
    pub name_failures: u32,
    /// 0: no per-address lockout.
    pub address_failures: u32,
    pub window: Duration,
    pub lockout: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig { name_failures: 5, address_failures: 20, window: Duration::from_secs(900), lockout: Duration::from_secs(900) }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Longest time an accepted event waits before its batch is committed.
    pub flush_interval: Duration,
    pub batch_max_events: usize,
    pub queue_capacity: usize,
    pub queue_full: QueueFullPolicy,
    pub durability: Durability,
    pub log_api_calls: bool,
    pub sample_seed: Option<u64>,
    pub checkpoint_every_events: u64,
    pub checkpoint_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// The global retention before any admin changes it.
    pub defaults: crate::settings::retention::RetentionSettings,
    pub archive_dir: PathBuf,
    /// How often the retention task runs (it also runs at start).
    pub interval: Duration,
    pub archive_zstd_level: i32,
}

pub const DEFAULT_DATA_DIR: &str = "./keytrail-data";
pub const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9080";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The reason is in the message, not also a `source`: the command line
    /// prints an error's whole chain, which said it twice.
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl Config {
    /// A configuration with every default, for tests and the demo.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        resolve(FileConfig::default(), Overrides { data_dir: Some(data_dir.into()), ..Overrides::default() })
            .expect("defaults are valid")
    }
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read { path: path.to_path_buf(), reason })?;
    parse_file(path, &text)
}

/// Parses config text; `path` is only used in the error.
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: describe_toml_error(text, &e) })
}

/// `line L, column C: what is wrong`, computed from the error's span.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let what = error.message().trim_end_matches('\n');
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what.to_string(),
    }
}

/// Merges the file with the overrides and fills in defaults.
pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<Config, ConfigError> {
    let data_dir = overrides.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::Invalid("data_dir must not be empty".into()));
    }
    let gateway_listen = overrides
        .gateway_listen
        .or(file.gateway.listen)
        .unwrap_or_else(|| DEFAULT_GATEWAY_LISTEN.parse().expect("valid default"));
    let admin_listen = overrides
        .admin_listen
        .or(file.admin.listen)
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default"));
    // One port on one address, or on an address and all of its family's
    // (`0.0.0.0`, `[::]`): the second listener could never bind.
    let covers = |all: SocketAddr, one: SocketAddr| all.ip().is_unspecified() && all.is_ipv4() == one.is_ipv4();
    if gateway_listen.port() == admin_listen.port()
        && gateway_listen.port() != 0
        && (gateway_listen.ip() == admin_listen.ip() || covers(gateway_listen, admin_listen) || covers(admin_listen, gateway_listen))
    {
        let both = if gateway_listen == admin_listen { gateway_listen.to_string() } else { format!("{gateway_listen} and {admin_listen}") };
        return Err(ConfigError::Invalid(format!(
            "the gateway and the admin API cannot both listen on {both}: give one of them another port"
        )));
    }
    if let Some(token) = &overrides.bootstrap_token {
        // Sent in an `Authorization` header, which carries printable ASCII
        // only: any other character makes an owner no call can sign in as
        // (and later starts ignore the variable).
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::Invalid(
                "KEYTRAIL_BOOTSTRAP_TOKEN must be at least 16 printable ASCII characters (letters, digits, punctuation; no white space)".into(),
            ));
        }
    }
    // Said with where it came from: the command line checks its own
    // (`--log-level`, `KEYTRAIL_LOG`) and `load_file` the file's, with the
    // line; these are what a caller of the library put together.
    let from = if overrides.log_level.is_some() { "--log-level (or KEYTRAIL_LOG)" } else { "log.level" };
    let log_level = overrides.log_level.or(file.log.level).unwrap_or_else(|| "info".to_string());
    check_log_level(&log_level).map_err(|why| ConfigError::Invalid(format!("{from}: {why}")))?;
    let retention_defaults = crate::settings::retention::RetentionSettings {
        hot_days: file.retention.hot_days.unwrap_or(90) as u32,
        archive_days: file.retention.archive_days.unwrap_or(365) as u32,
    };
    let archive_dir = file.retention.archive_dir.unwrap_or_else(|| data_dir.join("archive"));
    if archive_dir.as_os_str().is_empty() {
        return Err(ConfigError::Invalid("retention.archive_dir must not be empty".into()));
    }
    Ok(Config {
        data_dir,
        gateway: GatewayConfig {
            listen: gateway_listen,
            upstream_timeout: Duration::from_millis(file.gateway.upstream_timeout_ms.unwrap_or(30_000)),
            connect_timeout: Duration::from_millis(file.gateway.connect_timeout_ms.unwrap_or(5_000)),
            head_timeout: Duration::from_millis(file.gateway.head_timeout_ms.unwrap_or(30_000)),
            bruteforce_failures: file.gateway.bruteforce_failures.unwrap_or(20) as u32,
            bruteforce_window: Duration::from_secs(file.gateway.bruteforce_window_secs.unwrap_or(60)),
            bruteforce_block: Duration::from_secs(file.gateway.bruteforce_block_secs.unwrap_or(900)),
            geo_table: file.gateway.geo_table,
            geo_database: file.gateway.geo_database,
            trusted_proxies: trusted_proxies("gateway", &file.gateway.trusted_proxies, file.gateway.real_ip_header.as_deref())?,
            upstream_deny: {
                let deny = file.gateway.upstream_deny.unwrap_or_else(|| crate::protection::DEFAULT_UPSTREAM_DENY.map(String::from).to_vec());
                crate::protection::Networks::parse(&deny).map_err(|e| ConfigError::Invalid(format!("gateway.upstream_deny: {e}")))?
            },
        },
        admin_listen,
        admin_head_timeout: Duration::from_millis(file.admin.head_timeout_ms.unwrap_or(10_000)),
        admin_trusted_proxies: trusted_proxies("admin", &file.admin.trusted_proxies, file.admin.real_ip_header.as_deref())?,
        login: {
            let default = LoginConfig::default();
            LoginConfig {
                name_failures: file.admin.login_name_failures.map_or(default.name_failures, |n| n as u32),
                address_failures: file.admin.login_address_failures.map_or(default.address_failures, |n| n as u32),
                window: file.admin.login_window_secs.map_or(default.window, Duration::from_secs),
                lockout: file.admin.login_lockout_secs.map_or(default.lockout, Duration::from_secs),
            }
        },
        audit: AuditConfig {
            // 10 ms: on one core, batches of ~500 events are encoded while the
            // events are still in the cache (measured against 50 ms: higher
            // throughput in 19 of 24 interleaved rounds, see BENCHMARKS.md).
            flush_interval: Duration::from_millis(file.audit.flush_interval_ms.unwrap_or(10)),
            batch_max_events: file.audit.batch_max_events.unwrap_or(10_000) as usize,
            queue_capacity: file.audit.queue_capacity.unwrap_or(100_000) as usize,
            queue_full: file.audit.queue_full.unwrap_or(QueueFullPolicy::Drop),
            durability: file.audit.durability.unwrap_or_default(),
            log_api_calls: file.audit.log_api_calls.unwrap_or(true),
            sample_seed: file.audit.sample_seed,
            checkpoint_every_events: file.audit.checkpoint_every_events.unwrap_or(10_000),
            checkpoint_interval: Duration::from_secs(file.audit.checkpoint_interval_s.unwrap_or(60)),
        },
        retention: RetentionConfig {
            defaults: retention_defaults,
            archive_dir,
            interval: Duration::from_secs(file.retention.interval_s.unwrap_or(3_600)),
            archive_zstd_level: file.retention.archive_zstd_level.map_or(crate::store::audit::archive::DEFAULT_ZSTD_LEVEL, |l| l as i32),
        },
        log_level,
        bootstrap_token: overrides.bootstrap_token,
        key_hasher: match &file.keys.pepper_file {
            Some(path) => key_pepper(path)?,
            None => crate::keys::KeyHasher::default(),
        },
        alerts: {
            let default = AlertsConfig::default();
            AlertsConfig {
                poll_interval: file.alerts.poll_interval_ms.map_or(default.poll_interval, Duration::from_millis),
                webhook_attempts: file.alerts.webhook_attempts.map_or(default.webhook_attempts, |n| n as u32),
                webhook_backoff: file.alerts.webhook_backoff_ms.map_or(default.webhook_backoff, Duration::from_millis),
                webhook_timeout: file.alerts.webhook_timeout_ms.map_or(default.webhook_timeout, Duration::from_millis),
            }
        },
    })
}

/// The key hasher of `keys.pepper_file`; an error names the file, never its content.
fn key_pepper(path: &Path) -> Result<crate::keys::KeyHasher, ConfigError> {
    let named = |problem: String| ConfigError::Invalid(format!("keys.pepper_file `{}`: {problem}", path.display()));
    let mut pepper = std::fs::read(path).map_err(|e| named(format!("cannot read it: {e}")))?;
    // A file written by `echo` or an editor ends with a line break that is no part of the pepper.
    while pepper.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        pepper.pop();
    }
    crate::keys::KeyHasher::with_pepper(&pepper).map_err(named)
}

/// That `level` is a log filter keytrail can use (`info`,
/// `keytrail=debug`, …); the error says what is wrong with it.
pub fn check_log_level(level: &str) -> Result<(), String> {
    // Valid to `tracing`, but it keeps no log at all, warnings included.
    if level.split(',').all(|directive| directive.trim().is_empty()) {
        return Err(format!("`{level}` keeps no log at all, not even warnings; give a level such as `info`, `warn` or `keytrail=debug`"));
    }
    // A bare word is a level or, to `tracing`, a target logged at every
    // level: `warning` or `inof` would keep only a module called that, so
    // none of keytrail's logs. Only keytrail's own targets are taken bare.
    for word in level.split(',').map(str::trim).filter(|d| !d.is_empty() && !d.contains(['=', '['])) {
        let own = word == "keytrail" || word.starts_with("keytrail::");
        if !own && word.parse::<tracing_subscriber::filter::LevelFilter>().is_err() {
            return Err(format!(
                "`{word}` is not a level (trace, debug, info, warn, error, off), so it would keep only the logs of a module named `{word}`, none of keytrail's; give a level such as `warn`, or `{word}=trace` for that module"
            ));
        }
    }
    match tracing_subscriber::EnvFilter::try_new(level) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!("`{level}` is not a valid log filter ({error}; try `info`, `debug` or `keytrail=debug`)")),
    }
}

/// `log.level`: checked as it is read, so the error names the file and line.
fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let level = String::deserialize(d)?;
    check_log_level(&level).map_err(serde::de::Error::custom)?;
    Ok(Some(level))
}

fn bounded<'de, D: Deserializer<'de>>(d: D, min: u64, max: u64) -> Result<Option<u64>, D::Error> {
    let value = u64::deserialize(d)?;
    if value < min || value > max {
        return Err(serde::de::Error::custom(format!("must be between {min} and {max}, got {value}")));
    }
    Ok(Some(value))
}

/// A count of failures before a block or lockout (the gateway's automatic
/// block, sign-in throttling); 0 turns it off.
fn failure_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 0, 1_000_000)
}

/// A counting window or a block's length, in seconds (the same two uses).
fn block_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 30 * 86_400)
}

fn timeout_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 3_600_000)
}

/// A section's `trusted_proxies` and `real_ip_header`; an error names the key.
fn trusted_proxies(section: &str, ranges: &[String], header: Option<&str>) -> Result<crate::protection::TrustedProxies, ConfigError> {
    let proxies =
        crate::protection::TrustedProxies::parse(ranges).map_err(|e| ConfigError::Invalid(format!("{section}.trusted_proxies: {e}")))?;
    let header = header.map(crate::protection::RealIpHeader::parse).transpose().map_err(|e| ConfigError::Invalid(format!("{section}.real_ip_header: {e}")))?;
    Ok(proxies.with_header(header.unwrap_or_default()))
}

fn flush_interval_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // The promise is "committed within 100 ms"; allow up to a second
    // for operators who trade latency for bigger batches.
    bounded(d, 1, 1_000)
}

fn durability<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Durability>, D::Error> {
    use serde::de::Error;
    let wanted = "`async` or `sync`";
    match String::deserialize(d).map_err(|e| D::Error::custom(format!("durability is {wanted} ({})", e.to_string().trim())))?.as_str() {
        "async" => Ok(Some(Durability::Async)),
        "sync" => Ok(Some(Durability::Sync)),
        other => Err(D::Error::custom(format!("durability is {wanted}, not `{other}`"))),
    }
}

fn batch_max_events<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 1_000_000)
}

fn checkpoint_every_events<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 100_000_000)
}

fn checkpoint_interval_s<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 86_400)
}

fn hot_days<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, u64::from(crate::settings::retention::MAX_DAYS))
}

fn archive_days<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 0, u64::from(crate::settings::retention::MAX_DAYS))
}

fn archive_zstd_level<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 22)
}

fn retention_interval_s<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 7 * 86_400)
}

fn queue_capacity<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 16, 10_000_000)
}

fn alerts_poll_interval_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 10, 60_000)
}

fn webhook_attempts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 20)
}

fn webhook_backoff_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    bounded(d, 1, 3_600_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        parse_file(Path::new("keytrail.toml"), text)
    }

    #[test]
    fn defaults() {
        let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./keytrail-data"));
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9080");
        assert_eq!(c.audit.flush_interval, Duration::from_millis(10));
        assert_eq!((c.retention.defaults.hot_days, c.retention.defaults.archive_days), (90, 365));
        assert_eq!(c.retention.archive_dir, PathBuf::from("./keytrail-data/archive"));
        assert_eq!(c.retention.interval, Duration::from_secs(3600));
        assert_eq!(c.retention.archive_zstd_level, 1);
        assert_eq!(c.gateway.head_timeout, Duration::from_secs(30));
        assert_eq!(c.admin_head_timeout, Duration::from_secs(10));
        assert_eq!(c.audit.durability, Durability::Async);
        let c = resolve(parse("[audit]\ndurability = \"sync\"\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.audit.durability, Durability::Sync);
    }

    /// A bare word that is not a level is, to `tracing`, a target to log at
    /// every level: `warning` (or a typo, `inof`) kept only the logs of a
    /// module called that, so none of keytrail's, warnings included.
    #[test]
    fn a_bare_word_that_is_no_level_is_refused() {
        for bad in ["warning", "inof", "info,warning", "WARNINGS"] {
            let err = check_log_level(bad).unwrap_err();
            assert!(err.contains("not a level") && err.contains("`warn`") && err.contains("=trace`"), "{bad:?}: {err}");
        }
        let err = parse("[log]\nlevel = \"warning\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("not a level"), "{err}");
        for good in ["warn", "WARN", "Info", "2", "off", "keytrail", "keytrail::gateway", "warning=trace", "info,keytrail=debug,", "keytrail[request]=debug"] {
            assert!(check_log_level(good).is_ok(), "{good:?}: {:?}", check_log_level(good));
        }
    }

    /// An empty filter (or only commas) is valid to `tracing` and keeps no
    /// log at all, warnings included: it was taken silently from
    /// `KEYTRAIL_LOG=`, `--log-level ""` or `level = ""`.
    #[test]
    fn an_empty_log_filter_is_refused() {
        for empty in ["", "  ", ",", " , "] {
            let err = check_log_level(empty).unwrap_err();
            assert!(err.contains("keeps no log") && err.contains("`info`"), "{empty:?}: {err}");
        }
        let err = parse("[log]\nlevel = \"\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("keeps no log"), "{err}");
        let err = resolve(FileConfig::default(), Overrides { log_level: Some(String::new()), ..Overrides::default() }).unwrap_err().to_string();
        assert!(err.contains("--log-level") && err.contains("keeps no log"), "{err}");
        assert!(check_log_level("warn,keytrail=debug").is_ok());
    }

    #[test]
    fn the_head_timeout_is_set_and_checked() {
        let c = resolve(parse("[gateway]\nhead_timeout_ms = 2500\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.gateway.head_timeout, Duration::from_millis(2500));
        for bad in ["0", "3600001"] {
            let err = parse(&format!("[gateway]\nhead_timeout_ms = {bad}\n")).unwrap_err().to_string();
            assert!(err.contains("line 2") && err.contains("between 1 and 3600000"), "{bad}: {err}");
        }
        let err = parse("[gateway]\nhead_timeout_ms = -5\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("-5"), "{err}");
        let err = parse("[gateway]\nhead_timeout_ms = \"30s\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("\"30s\""), "{err}");
        let c = resolve(parse("[admin]\nhead_timeout_ms = 1500\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!((c.admin_head_timeout, c.gateway.head_timeout), (Duration::from_millis(1500), Duration::from_secs(30)));
        for bad in ["0", "3600001"] {
            let err = parse(&format!("[admin]\nhead_timeout_ms = {bad}\n")).unwrap_err().to_string();
            assert!(err.contains("line 2") && err.contains("between 1 and 3600000"), "{bad}: {err}");
        }
    }

    #[test]
    fn retention_settings_are_checked() {
        let c = resolve(parse("data_dir = \"/srv/kt\"\n[retention]\nhot_days = 7\narchive_days = 0\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!((c.retention.defaults.hot_days, c.retention.defaults.archive_days), (7, 0));
        assert_eq!(c.retention.archive_dir, PathBuf::from("/srv/kt/archive"));
        let err = parse("[retention]\nhot_days = 0\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("between 1 and 36500"), "{err}");
        let err = parse("[retention]\narchive_zstd_level = 23\n").unwrap_err().to_string();
        assert!(err.contains("between 1 and 22"), "{err}");
        let err = parse("[retention]\nkeep_days = 3\n").unwrap_err().to_string();
        assert!(err.contains("keep_days"), "{err}");
    }

    #[test]
    fn file_then_overrides() {
        let file = parse("data_dir = \"/srv/kt\"\n[gateway]\nlisten = \"0.0.0.0:8000\"\n[admin]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let c = resolve(
            file,
            Overrides { gateway_listen: Some("127.0.0.1:1234".parse().unwrap()), ..Overrides::default() },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/kt"));
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:1234");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn errors_name_the_file_line_and_problem() {
        let err = parse("data_dir = \"x\"\n[gateway]\nlisten = \"not-an-address\"\n").unwrap_err().to_string();
        assert!(err.contains("keytrail.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("address"), "{err}");

        let err = parse("[gateway]\nlisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("lisen"), "{err}");

        let err = parse("[audit]\nflush_interval_ms = 0\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("between 1 and 1000"), "{err}");

        let err = parse("[audit]\nqueue_full = \"wait\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("drop"), "{err}");

        let err = parse("[audit]\ndurability = \"fsync\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("`async`") && err.contains("`sync`"), "{err}");
        let err = parse("[audit]\ndurability = true\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("`async` or `sync`"), "{err}");

        let err = parse("data_dir = \n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn protection_settings_are_checked() {
        let file = parse("[gateway]\ntrusted_proxies = [\"10.0.0.0/8\", \"not-a-range\"]\n").unwrap();
        let err = resolve(file, Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("gateway.trusted_proxies") && err.contains("`not-a-range`"), "{err}");
        let err = parse("[gateway]\nbruteforce_window_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("between 1 and"), "{err}");
        let c = resolve(parse("[gateway]\nbruteforce_failures = 0\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.gateway.bruteforce_failures, 0, "0 turns the automatic block off");
        // Upstreams: the link-local networks unless set; `[]` for none.
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert!(c.gateway.upstream_deny.contains(ip("169.254.169.254")) && !c.gateway.upstream_deny.contains(ip("10.1.2.3")));
        let c = resolve(parse("[gateway]\nupstream_deny = []\n").unwrap(), Overrides::default()).unwrap();
        assert!(!c.gateway.upstream_deny.contains(ip("169.254.169.254")));
        let c = resolve(parse("[gateway]\nupstream_deny = [\"10.0.0.0/8\"]\n").unwrap(), Overrides::default()).unwrap();
        assert!(c.gateway.upstream_deny.contains(ip("10.1.2.3")) && !c.gateway.upstream_deny.contains(ip("169.254.169.254")));
        let err = resolve(parse("[gateway]\nupstream_deny = [\"metadata\"]\n").unwrap(), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("gateway.upstream_deny") && err.contains("`metadata`"), "{err}");
        assert!(parse("[gateway]\nupstream_deny = \"10.0.0.0/8\"\n").is_err(), "a list, not a string");
    }

    #[test]
    fn sign_in_throttling_is_set_and_checked() {
        let c = resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(c.login, LoginConfig::default());
        assert_eq!((c.login.name_failures, c.login.address_failures, c.login.window.as_secs(), c.login.lockout.as_secs()), (5, 20, 900, 900));
        let text = "[admin]\nlogin_name_failures = 3\nlogin_address_failures = 0\nlogin_window_secs = 60\nlogin_lockout_secs = 30\n";
        let c = resolve(parse(text).unwrap(), Overrides::default()).unwrap();
        assert_eq!((c.login.name_failures, c.login.address_failures, c.login.window.as_secs(), c.login.lockout.as_secs()), (3, 0, 60, 30));
        let err = parse("[admin]\nlogin_lockout_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("between 1 and"), "{err}");
        let err = parse("[admin]\nlogin_name_failures = -1\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse("[admin]\nlogin_failures = 3\n").unwrap_err().to_string();
        assert!(err.contains("login_failures"), "{err}");
    }

    #[test]
    fn admin_trusted_proxies_are_parsed_and_a_bad_one_named() {
        let c = resolve(parse("[admin]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap(), Overrides::default()).unwrap();
        let forwarded = || ["203.0.113.9"].into_iter();
        assert_eq!(c.admin_trusted_proxies.client_ip("10.2.3.4".parse().unwrap(), forwarded), "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(c.admin_trusted_proxies.client_ip("192.0.2.1".parse().unwrap(), forwarded), "192.0.2.1".parse::<std::net::IpAddr>().unwrap());
        let err = resolve(parse("[admin]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").unwrap(), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("admin.trusted_proxies") && err.contains("`10.0.0.0/33`"), "{err}");
        // The gateway's list is its own: the admin API trusts no proxy unless told.
        let c = resolve(parse("[gateway]\ntrusted_proxies = [\"10.0.0.0/8\"]\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.admin_trusted_proxies.client_ip("10.2.3.4".parse().unwrap(), forwarded), "10.2.3.4".parse::<std::net::IpAddr>().unwrap());
    }

    /// `keys.pepper_file` is read at start; its final line break is no part
    /// of the pepper; a missing or short file stops the start, naming the
    /// file, never what it holds.
    #[test]
    fn the_key_pepper_comes_from_its_file_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let with_file = |path: &std::path::Path| {
            let text = format!("[keys]\npepper_file = {:?}\n", path.to_str().unwrap());
            resolve(parse(&text).unwrap(), Overrides::default())
        };
        assert!(!resolve(parse("").unwrap(), Overrides::default()).unwrap().key_hasher.is_peppered(), "no pepper by default");
        let file = dir.path().join("pepper");
        let pepper = "0123456789abcdef0123456789abcdef";
        std::fs::write(&file, format!("{pepper}\n")).unwrap();
        let hasher = with_file(&file).unwrap().key_hasher;
        let key = crate::keys::generate_key(crate::keys::KeyEnvironment::Live).secret;
        assert_eq!(hasher.stored(&key), crate::keys::KeyHasher::with_pepper(pepper.as_bytes()).unwrap().stored(&key), "the line break is not part of it");
        let short = "short-pepper-secret";
        std::fs::write(&file, short).unwrap();
        let err = with_file(&file).unwrap_err().to_string();
        assert!(err.contains("keys.pepper_file") && err.contains(file.to_str().unwrap()) && err.contains("at least 32 bytes"), "{err}");
        assert!(!err.contains(short), "{err}");
        let err = with_file(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("keys.pepper_file") && err.contains("missing") && err.contains("cannot read"), "{err}");
    }

    #[test]
    fn the_real_ip_header_is_chosen_per_section_and_a_bad_one_named() {
        let c = resolve(
            parse("[gateway]\ntrusted_proxies = [\"10.0.0.0/8\"]\nreal_ip_header = \"Forwarded\"\n[admin]\ntrusted_proxies = [\"10.0.0.0/8\"]\nreal_ip_header = \"X-Real-IP\"\n").unwrap(),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.gateway.trusted_proxies.header_name(), "forwarded");
        assert_eq!(c.admin_trusted_proxies.header_name(), "x-real-ip");
        let c = resolve(parse("[gateway]\ntrusted_proxies = [\"10.0.0.0/8\"]\n").unwrap(), Overrides::default()).unwrap();
        assert_eq!(c.gateway.trusted_proxies.header_name(), "x-forwarded-for", "the default");
        let err = resolve(parse("[gateway]\nreal_ip_header = \"True-Client-IP\"\n").unwrap(), Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("gateway.real_ip_header") && err.contains("`True-Client-IP`") && err.contains("X-Real-IP"), "{err}");
    }

    /// An unreadable file says why once: the command line prints an error's
    /// whole chain, and the reason was both in the message and its source
    /// ("…: No such file or directory (os error 2): No such file or directory (os error 2)").
    #[test]
    fn an_unreadable_file_says_why_once() {
        let dir = tempfile::tempdir().unwrap();
        for path in [dir.path().join("missing.toml"), dir.path().to_path_buf()] {
            let error = anyhow::Error::new(load_file(&path).unwrap_err());
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            let text = chain.join(": ");
            assert!(text.starts_with(&format!("cannot read config file {}: ", path.display())), "{text}");
            let reason = std::fs::read_to_string(&path).unwrap_err().to_string();
            assert_eq!(text.matches(&reason).count(), 1, "{text}");
        }
    }

    #[test]
    fn bad_overrides_are_refused() {
        let err = resolve(
            FileConfig::default(),
            Overrides { bootstrap_token: Some("short".into()), ..Overrides::default() },
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least 16"));
        let same: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let err = resolve(
            FileConfig::default(),
            Overrides { gateway_listen: Some(same), admin_listen: Some(same), ..Overrides::default() },
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot both listen"));
    }

    /// One port on an address and on all of them (`0.0.0.0`, `[::]`) is
    /// the same conflict: the admin API's bind failed, its message blaming
    /// "another program, or another keytrail". Different ports, addresses
    /// or families (and port 0, any free one) are not.
    #[test]
    fn listeners_on_one_port_of_overlapping_addresses_are_refused() {
        let both = |gateway: &str, admin: &str| {
            resolve(FileConfig::default(), Overrides { gateway_listen: Some(gateway.parse().unwrap()), admin_listen: Some(admin.parse().unwrap()), ..Overrides::default() })
        };
        for (gateway, admin) in [("0.0.0.0:7000", "127.0.0.1:7000"), ("127.0.0.1:7000", "0.0.0.0:7000"), ("[::]:7000", "[::1]:7000"), ("[::1]:7000", "[::]:7000")] {
            let err = both(gateway, admin).unwrap_err().to_string();
            assert!(err.contains("cannot both listen") && err.contains(gateway) && err.contains(admin), "{gateway} {admin}: {err}");
        }
        for (gateway, admin) in [("0.0.0.0:7000", "0.0.0.0:7001"), ("127.0.0.1:7000", "127.0.0.2:7000"), ("0.0.0.0:7000", "[::1]:7000"), ("0.0.0.0:0", "127.0.0.1:0")] {
            assert!(both(gateway, admin).is_ok(), "{gateway} {admin}");
        }
    }

    /// The bootstrap token is the first owner's only way in, sent in an
    /// `Authorization` header, which carries printable ASCII: a token with
    /// another character (`é`, a control character) made an owner no call
    /// could authenticate as, and later starts ignore the variable, so the
    /// store was locked out for good. Characters are counted, not bytes.
    #[test]
    fn a_bootstrap_token_no_header_can_carry_is_refused() {
        let token = |t: &str| resolve(FileConfig::default(), Overrides { bootstrap_token: Some(t.into()), ..Overrides::default() });
        for bad in ["t\u{f6}k\u{e9}nabcdefghijklmnop", "abcdefgh\u{1}ijklmnopq", "abcdefghijklmnop\u{7f}", "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"] {
            let err = token(bad).unwrap_err().to_string();
            assert!(err.contains("KEYTRAIL_BOOTSTRAP_TOKEN") && err.contains("printable ASCII"), "{bad:?}: {err}");
            assert!(!err.contains(bad), "the token is never shown: {err}");
        }
        assert!(token("abcdefghijklmnop").is_ok());
        assert!(token("kta_A-b.c~d!e#f$g%h&i'j*k+l^m`n|o").is_ok());
    }

    /// `{:?}` of the settings (a test's assertion, a panic) never shows the
    /// bootstrap token.
    #[test]
    fn debug_output_hides_the_bootstrap_token() {
        let secret = "operator-token-never-printed-5512";
        let overrides = Overrides { bootstrap_token: Some(secret.into()), ..Overrides::default() };
        assert!(!format!("{overrides:?}").contains(secret), "{overrides:?}");
        let config = resolve(FileConfig::default(), overrides).unwrap();
        assert_eq!(config.bootstrap_token.as_deref(), Some(secret));
        assert!(!format!("{config:?}").contains(secret) && format!("{config:?}").contains("bootstrap_token"), "{config:?}");
    }
}
