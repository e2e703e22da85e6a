//! The `keytrail` command: parses the command line and hands over to the
//! library. No logic lives here beyond turning errors into exit codes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use keytrail::cli::usage;
use keytrail::config::{self, Overrides};
use keytrail::server::{self, Bootstrap};

/// `println!` that returns the error (a closed pipe: `keytrail … | head`)
/// instead of panicking; for functions returning `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

/// `eprintln!` that ignores a failed write: standard error a pipe whose
/// reader has gone must not turn an exit code into a panic's 101.
macro_rules! errln {
    ($($arg:tt)*) => {
        let _ = std::io::Write::write_fmt(&mut std::io::stderr().lock(), format_args!("{}\n", format_args!($($arg)*)));
    };
}

/// mimalloc instead of the system allocator: the gateway and the audit
/// writer allocate and free many small strings per request, which glibc's
/// allocator handles markedly slower (see ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "keytrail", version, about = "An API-key gateway with a tamper-evident audit trail")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine with a built-in echo upstream, a demo
    /// tenant, consumer and key, and print the commands to try.
    Demo {
        /// Keep the demo's data here instead of a temporary folder.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Gateway address (use 127.0.0.1:0 for any free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway_listen: SocketAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9080")]
        admin_listen: SocketAddr,
        /// Do not delete the temporary data folder on exit.
        #[arg(long)]
        keep: bool,
    },
    /// Run the gateway and the admin API.
    Serve {
        /// TOML config file; values here are overridden by KEYTRAIL_* variables and flags.
        #[arg(long, short = 'c', env = "KEYTRAIL_CONFIG")]
        config: Option<PathBuf>,
        /// Where the stores live [default: ./keytrail-data].
        #[arg(long, env = "KEYTRAIL_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Gateway address [default: 127.0.0.1:8080].
        #[arg(long, env = "KEYTRAIL_GATEWAY_LISTEN")]
        gateway_listen: Option<SocketAddr>,
        /// Admin API address [default: 127.0.0.1:9080].
        #[arg(long, env = "KEYTRAIL_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Log filter, e.g. `info` or `keytrail=debug` [default: info].
        #[arg(long, env = "KEYTRAIL_LOG", value_parser = log_level)]
        log_level: Option<String>,
    },
    /// Check the audit trail: every tenant's hash chain, and every signed
    /// checkpoint against it. Exits 1 naming the first changed, missing,
    /// inserted or reordered events. Safe while keytrail runs.
    Verify {
        /// The data directory [default: ./keytrail-data].
        #[arg(long, env = "KEYTRAIL_DATA_DIR", default_value = "./keytrail-data")]
        data_dir: PathBuf,
        /// Only this tenant.
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
        /// The public key to check signatures with (from `keytrail keys
        /// public`); by default the one of the data directory's own key.
        #[arg(long)]
        public_key: Option<String>,
        /// Verify a JSON export (`/v1/audit/{tenant}/export/json`) instead
        /// of a data directory; needs `--public-key`.
        #[arg(long, conflicts_with = "from")]
        file: Option<PathBuf>,
        /// Only the events from this time on (RFC 3339, or a UTC day as
        /// YYYY-MM-DD): the walk starts at the first stored block holding
        /// an event at or after it, trusting that block's link to the
        /// events before (faster on a big store; the report says where it
        /// started).
        #[arg(long, value_parser = keytrail::event::parse_time_or_day)]
        from: Option<i64>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
        /// The longest wait, in seconds, for a retention run, an erasure or
        /// a restore (in a server or another process) to finish with the
        /// audit trail first.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
    /// The audit trail's archives (written by the retention task): check
    /// them, or bring an archived day back for querying.
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// API keys over the admin API (list, create, rotate, revoke, scopes;
    /// needs an admin token in KEYTRAIL_TOKEN), and the checkpoint signing
    /// key (`public`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Alert rules over the admin API: list them with what they fired,
    /// create one, enable, disable or delete it (needs an admin token in
    /// KEYTRAIL_TOKEN).
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Incident triage from a running keytrail: error rates, top consumers
    /// and paths, security events by type, and with --consumer that
    /// consumer's activity. Needs an admin token in KEYTRAIL_TOKEN.
    Investigate {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this consumer's calls (its id, cons_…, or its name), and
        /// its activity profile.
        #[arg(long)]
        consumer: Option<String>,
        /// How many hours back to look (1 to 8784, a leap year).
        #[arg(long, default_value_t = 24, value_parser = investigate_hours, allow_hyphen_values = true)]
        hours: u32,
    },
    /// Erase a data subject's personal values (GDPR): the consumer's name
    /// and metadata, and the client addresses, user agents, names and
    /// actors of its events, hot and archived. The chain still verifies.
    /// Needs an owner's token in KEYTRAIL_TOKEN.
    Erase {
        #[command(flatten)]
        api: ApiArgs,
        /// The consumer: its id (cons_…) or its name (one consumer's).
        #[arg(long, value_parser = consumer_id)]
        consumer: String,
    },
    /// Reports from a running keytrail. Needs an admin token in KEYTRAIL_TOKEN.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Read the audit trail of a running keytrail: calls, security events,
    /// exports. Needs an admin token in KEYTRAIL_TOKEN.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Calls through the gateway, newest first (one page; `--cursor` for the next).
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        filters: AuditFilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Security events (failed authentications, rate limits, blocks, key
    /// and admin changes, reads of the trail), newest first.
    Security {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this event type, e.g. auth_failed or key_revoked.
        #[arg(long)]
        event_type: Option<String>,
        #[command(flatten)]
        filters: AuditFilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// The admin activity log (who changed what, with the outcome), newest first.
    Admin {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this admin's actions (adm_…).
        #[arg(long)]
        admin_id: Option<String>,
        /// Only this action, e.g. KEY_REVOKED.
        #[arg(long)]
        action: Option<String>,
        #[command(flatten)]
        window: WindowArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Application events (what your own code reported), newest first.
    App {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this action, e.g. invoice.paid.
        #[arg(long)]
        action: Option<String>,
        /// Only events of this actor.
        #[arg(long)]
        actor_id: Option<String>,
        /// Only events on this type of resource.
        #[arg(long)]
        resource_type: Option<String>,
        /// Only events on this resource (with --resource-type).
        #[arg(long)]
        resource_id: Option<String>,
        #[command(flatten)]
        window: WindowArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// The whole matching trail as CSV or JSON (the JSON export carries the
    /// chain hashes and checkpoints `keytrail verify --file` checks),
    /// streamed to --output or standard output.
    Export {
        #[command(flatten)]
        api: ApiArgs,
        /// csv or json.
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// Which events: request (the default), security, admin, app, or all.
        #[arg(long)]
        category: Option<String>,
        #[command(flatten)]
        filters: AuditFilterArgs,
        /// Write here (whole or not at all) instead of standard output (`-`: standard output).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

/// The audit API's filters, passed on as given (the server checks them;
/// values it refuses whatever the data are usage errors first).
#[derive(clap::Args)]
struct AuditFilterArgs {
    /// Only this consumer (its id, cons_…, or its name).
    #[arg(long)]
    consumer: Option<String>,
    /// Only this api (its id).
    #[arg(long)]
    api_id: Option<String>,
    /// Only this HTTP method.
    #[arg(long)]
    method: Option<String>,
    /// Only this path.
    #[arg(long)]
    path: Option<String>,
    /// Only statuses from this one up.
    #[arg(long)]
    status_min: Option<u16>,
    /// Only statuses up to this one.
    #[arg(long)]
    status_max: Option<u16>,
    #[command(flatten)]
    window: WindowArgs,
}

/// The time window of an audit read.
#[derive(clap::Args)]
struct WindowArgs {
    /// Only the last N hours.
    #[arg(long)]
    hours: Option<u32>,
    /// Only the last N days.
    #[arg(long)]
    days: Option<u32>,
    /// From this time on (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Up to this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
}

impl AuditFilterArgs {
    fn filters(self, event_type: Option<String>, category: Option<String>) -> keytrail::cli::manage::AuditFilters {
        keytrail::cli::manage::AuditFilters {
            consumer: self.consumer,
            api: self.api_id,
            method: self.method,
            path: self.path,
            status_min: self.status_min,
            status_max: self.status_max,
            event_type,
            category,
            ..self.window.filters()
        }
    }
}

impl WindowArgs {
    fn filters(self) -> keytrail::cli::manage::AuditFilters {
        keytrail::cli::manage::AuditFilters { hours: self.hours, days: self.days, from: self.from, to: self.to, ..Default::default() }
    }
}

/// One page of a list.
#[derive(clap::Args)]
struct PageArgs {
    /// Most events shown (1 to 10000, what a page holds).
    #[arg(long, default_value_t = keytrail::cli::manage::DEFAULT_LIMIT, value_parser = clap::value_parser!(u32).range(1..=i64::from(keytrail::cli::manage::MAX_LIMIT)))]
    limit: u32,
    /// Where the previous page ended (its `next_cursor`).
    #[arg(long)]
    cursor: Option<String>,
}

/// `investigate --hours`: a usage error (exit code 2) out of range, as
/// any bad flag value is.
fn investigate_hours(text: &str) -> Result<u32, String> {
    let max = keytrail::cli::MAX_HOURS;
    match text.trim().parse::<u32>() {
        Ok(hours) if (1..=max).contains(&hours) => Ok(hours),
        _ => Err(format!("must be a whole number of hours between 1 and {max}")),
    }
}

/// `--tenant` of `verify` and the archive commands: a tenant id (for the
/// archive commands, a folder name in the archive directory); anything
/// else is a usage error (exit code 2).
fn tenant_id(text: &str) -> Result<String, String> {
    keytrail::cli::check_tenant_id(text)?;
    Ok(text.to_string())
}

/// `--day` of `archive cat` and `archive restore`: a day, as archives are
/// named (`2026-11-1` names 2026-11-01), or one archive's name
/// (`2026-11-18-1234`); anything else is a usage error.
fn archived_day(text: &str) -> Result<String, String> {
    keytrail::store::audit::archive::canonical_day(text)
}

/// `erase --consumer`: an id that fits in the request's path (or a name,
/// looked up among the tenant's consumers, with the same characters).
fn consumer_id(text: &str) -> Result<String, String> {
    keytrail::cli::check_consumer_id(text).map(|()| text.to_string())
}

/// `serve --log-level` (or `KEYTRAIL_LOG`): a usage error naming the
/// flag, or the variable when it came from there (`variable_behind`).
fn log_level(text: &str) -> Result<String, String> {
    keytrail::config::check_log_level(text).map(|()| text.to_string())
}

/// `--admin-url` (or `KEYTRAIL_ADMIN_URL`): a usage error naming the
/// flag, or the variable when it came from there (`variable_behind`). One
/// with credentials is left to `AdminClient::new`, which refuses it
/// without showing it (clap's message would).
fn admin_url(text: &str) -> Result<String, String> {
    match keytrail::cli::client::parse_admin_url(text) {
        Err(why) if !text.contains('@') => Err(why),
        _ => Ok(text.to_string()),
    }
}

/// Where the admin API is, and what to show (`investigate`, `report`).
#[derive(clap::Args)]
struct ApiArgs {
    /// The admin API's URL. The token is read from KEYTRAIL_TOKEN only.
    // The variable's value is not shown by `--help`: it may hold
    // credentials, which are refused without being shown.
    #[arg(long, env = "KEYTRAIL_ADMIN_URL", hide_env_values = true, default_value = "http://127.0.0.1:9080", value_parser = admin_url)]
    admin_url: String,
    /// The tenant [default: the token's own, or the only one].
    #[arg(long)]
    tenant: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    fn target(self) -> keytrail::cli::Target {
        keytrail::cli::Target { admin_url: self.admin_url, tenant: self.tenant, json: self.json }
    }
}

#[derive(Subcommand)]
enum ReportCommand {
    /// The last seven UTC days: auth failures, rate-limit hits, key
    /// rotations, admin actions, and the daily error trend.
    Weekly {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Check every archive: its manifest's signature, its file's SHA-256,
    /// every event's hash from the manifest's first hash, the count and the
    /// range; that the archives follow on from each other; and (with the
    /// data directory) that none retention wrote is missing and that the hot
    /// store goes on from the last one. Exits 1 naming each problem.
    Verify {
        /// The data directory [default: ./keytrail-data]; without one, give
        /// --archive-dir and --public-key.
        #[arg(long, env = "KEYTRAIL_DATA_DIR", default_value = "./keytrail-data")]
        data_dir: PathBuf,
        /// The archive directory [default: <data-dir>/archive].
        #[arg(long)]
        archive_dir: Option<PathBuf>,
        /// Only this tenant.
        #[arg(long, value_parser = tenant_id)]
        tenant: Option<String>,
        /// The public key to check signatures with (from `keytrail keys
        /// public`); by default the one of the data directory's own key.
        #[arg(long)]
        public_key: Option<String>,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
        /// The longest wait, in seconds, for a retention run, an erasure or
        /// a restore (in a server or another process) to finish with the
        /// audit trail first.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
    /// Bring a tenant's archived day back, after checking it whole, into
    /// <data-dir>/audit/restored/, where the audit API and `keytrail
    /// verify` read it (delete the files there when done).
    Restore {
        #[command(flatten)]
        day: ArchivedDay,
        /// The longest wait, in seconds, for a retention run, an erasure or
        /// another restore (in this or another process) to finish with the
        /// audit trail first.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
    /// Print a tenant's archived day as NDJSON, one event a line with its
    /// chain hashes (`{"prev_hash", "hash", "event"}`), after checking the
    /// archive whole (needs no data directory with --archive-dir and
    /// --public-key). The archive files themselves hold blocks of events,
    /// column by column.
    Cat {
        #[command(flatten)]
        day: ArchivedDay,
        /// The longest wait, in seconds, for a retention run, an erasure or
        /// a restore (in a server or another process) to finish with the
        /// audit trail first.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
}

/// One tenant's archived day, and where to find and check it.
#[derive(clap::Args)]
struct ArchivedDay {
    /// The data directory [default: ./keytrail-data].
    #[arg(long, env = "KEYTRAIL_DATA_DIR", default_value = "./keytrail-data")]
    data_dir: PathBuf,
    /// The archive directory [default: <data-dir>/archive].
    #[arg(long)]
    archive_dir: Option<PathBuf>,
    #[arg(long, value_parser = tenant_id)]
    tenant: String,
    /// The archived day, YYYY-MM-DD (all its archives), or one archive of
    /// it alone by its first seq, YYYY-MM-DD-<first seq>.
    #[arg(long, value_parser = archived_day)]
    day: String,
    /// The public key to check the archive with [default: the data
    /// directory's own].
    #[arg(long)]
    public_key: Option<String>,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AlertsCommand {
    /// The tenant's rules: what each counts, when it fires, its webhook's
    /// host, and what it did since the server started.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A rule that fires when THRESHOLD matching events fall within
    /// WINDOW_SECS (give at least one of the match flags); with
    /// --webhook-url, its signing secret is printed this once.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The rule's id (1-63 of a-z, 0-9, `-` and `_`).
        id: String,
        /// Count events of this type (auth_failed, rate_limit_exceeded, request_blocked, …).
        #[arg(long)]
        event_type: Option<String>,
        /// Count events of this category.
        #[arg(long, value_parser = ["request", "security", "admin", "app"])]
        category: Option<String>,
        /// Count events with this outcome (success, failure).
        #[arg(long)]
        outcome: Option<String>,
        /// Count calls answered with this status or above.
        #[arg(long)]
        status_min: Option<u16>,
        /// Count calls answered with this status or below.
        #[arg(long)]
        status_max: Option<u16>,
        /// Count events of this api (its id).
        #[arg(long)]
        api_id: Option<String>,
        /// Count events of this consumer (its id, cons_…, or its name).
        #[arg(long)]
        consumer: Option<String>,
        /// Count calls whose path starts with this.
        #[arg(long)]
        path_prefix: Option<String>,
        /// Matching events within the window that fire the rule (1 to 10000).
        #[arg(long)]
        threshold: u32,
        /// The window, in seconds (1 to 86400).
        #[arg(long)]
        window_secs: u32,
        /// Count apart per caller address, consumer or api [default: all together].
        #[arg(long, value_parser = ["client_ip", "consumer", "api"])]
        group_by: Option<String>,
        /// The shortest time between two firings for one group, in seconds [default: the window].
        #[arg(long)]
        cooldown_secs: Option<u32>,
        /// Post each firing here (http://host[:port]/path), signed.
        #[arg(long)]
        webhook_url: Option<String>,
        /// What the rule is for.
        #[arg(long)]
        description: Option<String>,
        /// Make it without firing it yet (`keytrail alerts enable` later).
        #[arg(long)]
        disabled: bool,
    },
    /// Let a rule fire again; it counts afresh from now.
    Enable {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Keep a rule without firing it.
    Disable {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
    /// Give a rule's webhook a new signing secret, printed this once; the
    /// old one signs beside it for the grace, so the receiver can change over.
    RotateSecret {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
        /// How long the old secret keeps signing too, in seconds (at most
        /// 2592000, 30 days; 0: it stops at once) [default: 86400].
        #[arg(long)]
        grace_secs: Option<u64>,
    },
    /// Delete a rule.
    Delete {
        #[command(flatten)]
        api: ApiArgs,
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// A consumer's API keys: status, scopes, expiry, last use (never the key).
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// The consumer: its id (cons_…) or its name.
        #[arg(long)]
        consumer: String,
    },
    /// Issue an API key to a consumer; the key is printed this once.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The consumer: its id (cons_…) or its name.
        #[arg(long)]
        consumer: String,
        /// A scope the key holds (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// When the key stops working (RFC 3339) [default: never].
        #[arg(long)]
        expires_at: Option<String>,
        /// live or test (the key's prefix) [default: live].
        #[arg(long, value_parser = ["live", "test"])]
        environment: Option<String>,
    },
    /// Replace a key: the new one is printed this once; the old one keeps
    /// working for the grace period.
    Rotate {
        #[command(flatten)]
        api: ApiArgs,
        /// The key's id (key_…).
        key_id: String,
        /// How long the old key keeps working, in seconds (at most 2592000,
        /// 30 days) [default: 3600].
        #[arg(long)]
        grace_secs: Option<u64>,
    },
    /// One key's facts: tenant, consumer, status, scopes, expiry, last use
    /// (never the key).
    Show {
        #[command(flatten)]
        api: ApiArgs,
        /// The key's id (key_…).
        key_id: String,
    },
    /// Revoke a key: the gateway refuses it from the moment this answers.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// The key's id (key_…).
        key_id: String,
    },
    /// Replace a key's scopes (none given: it holds none).
    Scopes {
        #[command(flatten)]
        api: ApiArgs,
        /// The key's id (key_…).
        key_id: String,
        /// A scope the key holds (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Print the public half of the checkpoint signing key, for verifiers.
    Public {
        /// The data directory [default: ./keytrail-data].
        #[arg(long, env = "KEYTRAIL_DATA_DIR", default_value = "./keytrail-data")]
        data_dir: PathBuf,
    },
}

/// The data directory's signing key, which must already exist.
fn existing_signer(data_dir: &std::path::Path) -> anyhow::Result<keytrail::signing::Signer> {
    let path = data_dir.join(keytrail::signing::KEY_FILE);
    anyhow::ensure!(path.exists(), "{} does not exist: is {} a keytrail data directory?", path.display(), data_dir.display());
    keytrail::signing::Signer::load_or_create(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// `keytrail verify --file`: true when the export verified.
fn verify_file(file: &std::path::Path, tenant: Option<&str>, public_key: Option<&str>, json: bool) -> anyhow::Result<bool> {
    let text = public_key.ok_or_else(|| usage("--file needs --public-key: the key you trust, from `keytrail keys public` on the server"))?;
    let key = keytrail::signing::parse_public_key(text).map_err(|e| usage(format!("--public-key: {e}")))?;
    // Read as a stream, a row at a time: an export can be larger than memory.
    let report = keytrail::store::audit::integrity::verify_export_file(file, &key).map_err(|e| anyhow::anyhow!("{} {e}", file.display()))?;
    if let Some(wanted) = tenant.filter(|t| *t != report.tenant) {
        anyhow::bail!("{} is an export of tenant `{}`, not of `{wanted}` (--tenant)", file.display(), report.tenant);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let range = match (report.first_seq, report.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "no events".into(),
        };
        outln!("{}: {} events ({range}), {} signed checkpoints verified", report.tenant, report.events, report.checkpoints_verified);
        match (report.complete, report.proven_through) {
            (true, Some(p)) if Some(p) == report.last_seq => outln!("complete and unaltered (signed through the last event)"),
            (true, Some(p)) => outln!("complete and unaltered through seq {p} (signed); the events after it are chained but not yet signed"),
            (true, None) => outln!("complete (no gaps) but no checkpoint in range vouches for it"),
            (false, _) => outln!("not complete: {} gaps (a filtered export); each event is checked on its own", report.gaps.len()),
        }
        for problem in &report.problems {
            outln!("    {problem}");
        }
        outln!("{}", if report.ok { "ok" } else { "FAILED" });
    }
    Ok(report.ok)
}

/// Holds the audit directory `audit` (when there is one) against a
/// server's retention and erasures and `keytrail archive restore` while a
/// command reads it, after waiting up to `wait_secs` for them; other
/// readers hold it at the same time. `nothing` says what was not done when
/// the wait runs out.
fn read_lock(audit: &std::path::Path, wait_secs: u64, nothing: &str) -> anyhow::Result<Option<keytrail::store::audit::erasure::ReadGuard>> {
    use keytrail::store::audit::erasure;
    if !audit.is_dir() {
        return Ok(None);
    }
    match erasure::read_lock(audit, std::time::Duration::from_secs(wait_secs))? {
        Some(held) => Ok(Some(held)),
        None => anyhow::bail!("{nothing}: {} (waited {wait_secs} s; a longer --wait-secs waits longer)", erasure::busy_message(audit)),
    }
}

/// `keytrail verify`: true when everything verified.
fn verify(data_dir: &std::path::Path, tenant: Option<&str>, public_key: Option<&str>, from_ms: Option<i64>, json: bool, wait_secs: u64) -> anyhow::Result<bool> {
    let key = verifying_key(data_dir, public_key)?;
    let audit = data_dir.join("audit");
    anyhow::ensure!(audit.is_dir(), "{} has no audit trail", data_dir.display());
    let _reading = read_lock(&audit, wait_secs, "nothing was checked")?;
    let mut progress = keytrail::cli::progress::Progress::new("verifying", keytrail::cli::progress::wanted()?);
    let reports = keytrail::store::audit::integrity::verify_dir_with(&audit, tenant, &key, from_ms, &mut |tenant, done, total| {
        progress.report(|secs| {
            let percent = (100 * done).checked_div(total).unwrap_or(100);
            format!("verifying tenant {tenant}: {done} of {total} events ({percent} %), {secs:.0} s")
        })
    })?;
    progress.finish();
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let status = if r.ok { "ok" } else { "FAILED" };
            let archived = match (r.from_seq, r.archived_through) {
                (Some(_), _) if r.events == 0 => format!(" from --from on (none stored after seq {})", r.last_seq),
                (Some(from), _) => format!(", from seq {from} (the link to the events before it trusted as stored)"),
                (None, 0) => String::new(),
                (None, through) => format!(" after seq 1..={through} in {} signed archives", r.archives),
            };
            // An empty range reads as none, not as `seq 81..=80`.
            let first = r.from_seq.unwrap_or(r.archived_through + 1);
            let range = if r.events == 0 { String::new() } else { format!(" (seq {first}..={})", r.last_seq) };
            outln!("{:<24} {status:<6} {} events{range}{archived}, {} signed checkpoints", r.tenant, r.events, r.checkpoints);
            for problem in &r.problems {
                outln!("    {problem}");
            }
        }
        if reports.is_empty() {
            outln!("no events to verify");
        }
    }
    Ok(reports.iter().all(|r| r.ok))
}

/// The key to check signatures with: `--public-key`, or the data
/// directory's (`keytrail verify`, `keytrail archive verify/cat/restore`).
fn verifying_key(data_dir: &std::path::Path, public_key: Option<&str>) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    match public_key {
        Some(text) => keytrail::signing::parse_public_key(text).map_err(|e| usage(format!("--public-key: {e}"))),
        None => existing_signer(data_dir).map(|s| s.public_key()).context("give --public-key, or a --data-dir with its signing key"),
    }
}

/// `--archive-dir`, or `<data-dir>/archive`. One given is checked as
/// given, naming it (`nothing`: what was not done): a mistyped one would
/// otherwise say there is nothing to verify, and exit as a pass, and a
/// file was "Not a directory (os error 20)" without its path.
fn archive_dir_of(data_dir: &std::path::Path, given: Option<PathBuf>, nothing: &str) -> anyhow::Result<PathBuf> {
    match given {
        Some(given) => {
            anyhow::ensure!(given.is_dir(), "--archive-dir: {} is not a directory ({nothing})", given.display());
            Ok(given)
        }
        None => Ok(data_dir.join("archive")),
    }
}

/// `keytrail archive verify`: true when every archive verified.
fn archive_verify(data_dir: &std::path::Path, archive_dir: Option<PathBuf>, tenant: Option<&str>, public_key: Option<&str>, json: bool, wait_secs: u64) -> anyhow::Result<bool> {
    let key = verifying_key(data_dir, public_key)?;
    let archive_dir = archive_dir_of(data_dir, archive_dir, "no archives were checked")?;
    let audit = data_dir.join("audit");
    let audit = audit.is_dir().then_some(audit);
    anyhow::ensure!(archive_dir.is_dir() || audit.is_some(), "{} is not an archive directory", archive_dir.display());
    let _reading = match &audit {
        Some(audit) => read_lock(audit, wait_secs, "nothing was checked")?,
        None => None,
    };
    let mut progress = keytrail::cli::progress::Progress::new("verifying", keytrail::cli::progress::wanted()?);
    let reports = keytrail::store::audit::archive::verify_archives_with(&archive_dir, audit.as_deref(), tenant, &key, &mut |tenant, done, all, events| {
        progress.report(|secs| format!("verifying the archives of tenant {tenant}: {done} of {all} ({events} events), {secs:.0} s"))
    })?;
    progress.finish();
    if json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let status = if r.ok { "ok" } else { "FAILED" };
            let range = match (r.first_seq, r.last_seq) {
                (Some(a), Some(b)) => format!("seq {a}..={b}"),
                _ => "nothing archived".into(),
            };
            let hot = match r.hot_links {
                Some(true) => ", the hot store follows on",
                _ => "",
            };
            outln!("{:<24} {status:<6} {} archives, {} events ({range}){hot}", r.tenant, r.archives, r.events);
            for problem in &r.problems {
                outln!("    {problem}");
            }
        }
        if reports.is_empty() {
            outln!("no archives to verify in {}", archive_dir.display());
        }
    }
    Ok(reports.iter().all(|r| r.ok))
}

/// `keytrail archive cat`.
fn archive_cat(a: ArchivedDay, wait_secs: u64) -> anyhow::Result<()> {
    let key = verifying_key(&a.data_dir, a.public_key.as_deref())?;
    let archive_dir = archive_dir_of(&a.data_dir, a.archive_dir, "nothing was printed")?;
    let _reading = read_lock(&a.data_dir.join("audit"), wait_secs, "nothing was printed")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // An error as it came: a closed pipe (`| head -1`) ends the command quietly.
    keytrail::store::audit::archive::cat(&archive_dir, &a.tenant, &a.day, &key, &mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// `keytrail archive restore`.
fn archive_restore(a: ArchivedDay, wait_secs: u64) -> anyhow::Result<()> {
    let key = verifying_key(&a.data_dir, a.public_key.as_deref())?;
    let archive_dir = archive_dir_of(&a.data_dir, a.archive_dir, "nothing was restored")?;
    let audit = a.data_dir.join("audit");
    anyhow::ensure!(audit.is_dir(), "{} has no audit trail to restore into", a.data_dir.display());
    let wait = std::time::Duration::from_secs(wait_secs);
    let r = keytrail::store::audit::archive::restore_waiting(&audit, &archive_dir, &a.tenant, &a.day, &key, wait).map_err(|e| anyhow::anyhow!(e))?;
    outln!(
        "restored {} events of `{}` (seq {}..={}, archive {}) into {}: {}",
        r.events,
        r.tenant,
        r.first_seq,
        r.last_seq,
        r.archives.join(", "),
        r.dir.display(),
        r.files.join(", ")
    );
    outln!("the audit API and `keytrail verify` read them; delete all of these day files when done (one left alone holds part of the archive, which `keytrail verify` reports)");
    Ok(())
}

/// The operator's first admin token. Read only from the environment: a flag
/// would show it in `ps`. Set but empty (`=$(cat a-missing-file)`), or not
/// text, it stops the start as a bad value does (it was taken for unset,
/// and the first owner got a random token the operator did not expect).
fn bootstrap_token_from_env() -> anyhow::Result<Option<String>> {
    const VAR: &str = "KEYTRAIL_BOOTSTRAP_TOKEN";
    match std::env::var(VAR) {
        Ok(token) if token.is_empty() => Err(usage(format!("{VAR} is set but empty: unset it or give it the first admin's token"))),
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(usage(format!("{VAR} is not text: give it at least 16 printable ASCII characters (letters, digits, punctuation; no white space)")))
        }
    }
}

async fn serve(
    config_path: Option<PathBuf>,
    overrides: Overrides,
) -> anyhow::Result<()> {
    // Listened for before the start binds the listeners: a signal while it
    // starts stops it once started, cleanly, rather than killing it.
    let stop = keytrail::cli::stop_signal();
    let file = match &config_path {
        // A file the operator did not name on the command line says where
        // it came from: a KEYTRAIL_CONFIG left set in a profile or unit.
        Some(path) if !typed("config", Some('c')) => config::load_file(path).context("the config file named by KEYTRAIL_CONFIG (no --config was given)")?,
        Some(path) => config::load_file(path)?,
        None => config::FileConfig::default(),
    };
    let config = config::resolve(file, overrides)?;
    keytrail::init_logging(&config.log_level);
    let server = server::start(config).await?;
    // Announced on stdout when someone reads it: a closed stdout (`| head
    // -1`) must not stop a server that is serving (`server::announce`).
    let mut announce = String::new();
    announce.push_str(&format!("keytrail gateway listening on http://{}\n", server.gateway_addr));
    announce.push_str(&format!("keytrail admin API listening on http://{}\n", server.admin_addr));
    match &server.bootstrap {
        Bootstrap::Generated(path) => {
            announce.push_str(&format!("first admin created; its token is in {} (readable by you only)\n", path.display()))
        }
        Bootstrap::FromEnvironment => announce.push_str("first admin created with the token from KEYTRAIL_BOOTSTRAP_TOKEN\n"),
        Bootstrap::Existing => {}
    }
    server::announce(&announce, &format!("serving on {} and {}", server.gateway_addr, server.admin_addr));
    stop.await;
    tracing::info!("shutting down: finishing requests and committing the audit trail");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Whether `--{long}` (or `-{short}`) is on the command line; an
/// argument clap found without it came from its variable.
fn typed(long: &str, short: Option<char>) -> bool {
    let flag = format!("--{long}");
    std::env::args().skip(1).any(|a| a == flag || a.starts_with(&format!("{flag}=")) || short.is_some_and(|c| !a.starts_with("--") && a.starts_with(&format!("-{c}"))))
}

/// The `KEYTRAIL_*` variable a refused value came from, when it came from
/// one: clap names only the flag (`--admin-listen`), which the operator may
/// never have typed.
fn variable_behind(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?.to_string();
    fn find(command: &clap::Command, long: &str) -> Option<String> {
        for arg in command.get_arguments() {
            let (Some(name), Some(var)) = (arg.get_long(), arg.get_env()) else { continue };
            if name != long || std::env::var_os(var).is_none() {
                continue;
            }
            if !typed(name, arg.get_short()) {
                return Some(var.to_string_lossy().into_owned());
            }
        }
        command.get_subcommands().find_map(|sub| find(sub, long))
    }
    find(&<Cli as clap::CommandFactory>::command(), &long)
}

/// `--flag` of a refused value, for the message.
fn error_flag(error: &clap::Error) -> String {
    match error.get(clap::error::ContextKind::InvalidArg) {
        Some(clap::error::ContextValue::String(arg)) => arg.split(' ').next().unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            if let Some(var) = variable_behind(&error) {
                let flag = error_flag(&error);
                let value = std::env::var(&var).unwrap_or_default();
                if value.is_empty() {
                    errln!("keytrail: error: {var} is set but empty: unset it or give it a value (it stands for {flag})");
                } else {
                    let reason = std::error::Error::source(&error).map_or_else(|| error.kind().to_string(), ToString::to_string);
                    errln!("keytrail: error: {var}: `{value}` is not a valid value for {flag}: {reason}; fix or unset it");
                }
                return ExitCode::from(2);
            }
            error.exit();
        }
    };
    // One core (a container limit or `taskset`): tokio's single-threaded
    // scheduler, which skips the work-stealing machinery a lone worker never
    // uses (about 10 % more requests per second on the gateway benchmark).
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if one_core {
        // Callers waiting for a commit (`audit.durability = "sync"`) share
        // one when the runtime runs out of work.
        builder.on_thread_park(keytrail::audit::runtime_parking);
        keytrail::audit::runtime_calls_parking_hook();
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            errln!("keytrail: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo { data_dir, gateway_listen, admin_listen, keep } => match bootstrap_token_from_env() {
                Ok(bootstrap_token) => {
                    keytrail::init_logging("warn");
                    keytrail::demo::run(
                        keytrail::demo::DemoOptions { data_dir, gateway_listen: Some(gateway_listen), admin_listen: Some(admin_listen), keep, bootstrap_token },
                        keytrail::cli::stop_signal(),
                    )
                    .await
                    .context("demo failed")
                }
                Err(e) => Err(e),
            },
            // A data directory's flags with --file (an export is checked on
            // its own): refused, rather than silently ignored. The data
            // directory only when typed: KEYTRAIL_DATA_DIR may be set for
            // other commands.
            // (Without --public-key, that is said first.)
            Command::Verify { file: Some(_), public_key: Some(_), .. } if typed("data-dir", None) || typed("wait-secs", None) => Err(usage(
                "--data-dir and --wait-secs apply to a data directory, not to --file: an export is checked on its own, with --public-key",
            )),
            Command::Verify { file: Some(file), tenant, public_key, json, from: None, .. } => match verify_file(&file, tenant.as_deref(), public_key.as_deref(), json) {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!("the export did not verify (see above)")),
                Err(e) => Err(e),
            },
            Command::Verify { file: Some(_), from: Some(_), .. } => Err(usage("--from applies to a data directory, not to --file")),
            Command::Verify { data_dir, tenant, public_key, json, file: None, from, wait_secs } => match verify(&data_dir, tenant.as_deref(), public_key.as_deref(), from, json, wait_secs) {
                Ok(true) => Ok(()),
                Ok(false) => Err(anyhow::anyhow!("the audit trail did not verify (see above)")),
                Err(e) => Err(e),
            },
            Command::Archive { command: ArchiveCommand::Verify { data_dir, archive_dir, tenant, public_key, json, wait_secs } } => {
                match archive_verify(&data_dir, archive_dir, tenant.as_deref(), public_key.as_deref(), json, wait_secs) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(anyhow::anyhow!("the archives did not verify (see above)")),
                    Err(e) => Err(e),
                }
            }
            Command::Archive { command: ArchiveCommand::Restore { day, wait_secs } } => archive_restore(day, wait_secs),
            Command::Archive { command: ArchiveCommand::Cat { day, wait_secs } } => archive_cat(day, wait_secs),
            Command::Keys { command: KeysCommand::Public { data_dir } } => (|| {
                let signer = existing_signer(&data_dir)?;
                outln!("{}", keytrail::signing::public_key_text(&signer.public_key()));
                Ok(())
            })(),
            Command::Keys { command: KeysCommand::List { api, consumer } } => keytrail::cli::manage::keys_list(&api.target(), &consumer).await,
            Command::Keys { command: KeysCommand::Create { api, consumer, scopes, expires_at, environment } } => {
                let new = keytrail::cli::manage::NewKey { scopes, expires_at, environment };
                keytrail::cli::manage::keys_create(&api.target(), &consumer, new).await
            }
            Command::Keys { command: KeysCommand::Rotate { api, key_id, grace_secs } } => keytrail::cli::manage::keys_rotate(&api.target(), &key_id, grace_secs).await,
            Command::Keys { command: KeysCommand::Show { api, key_id } } => keytrail::cli::manage::keys_show(&api.target(), &key_id).await,
            Command::Keys { command: KeysCommand::Revoke { api, key_id } } => keytrail::cli::manage::keys_revoke(&api.target(), &key_id).await,
            Command::Keys { command: KeysCommand::Scopes { api, key_id, scopes } } => keytrail::cli::manage::keys_scopes(&api.target(), &key_id, scopes).await,
            Command::Alerts { command: AlertsCommand::List { api } } => keytrail::cli::alerts::alerts_list(&api.target()).await,
            Command::Alerts {
                command:
                    AlertsCommand::Create {
                        api, id, event_type, category, outcome, status_min, status_max, api_id, consumer, path_prefix, threshold, window_secs,
                        group_by, cooldown_secs, webhook_url, description, disabled,
                    },
            } => {
                let new = keytrail::cli::alerts::NewRule {
                    id, description, event_type, category, outcome, status_min, status_max, api: api_id, consumer, path_prefix, threshold,
                    window_secs, group_by, cooldown_secs, webhook_url, disabled,
                };
                keytrail::cli::alerts::alerts_create(&api.target(), new).await
            }
            Command::Alerts { command: AlertsCommand::Enable { api, id } } => keytrail::cli::alerts::alerts_set_enabled(&api.target(), &id, true).await,
            Command::Alerts { command: AlertsCommand::Disable { api, id } } => keytrail::cli::alerts::alerts_set_enabled(&api.target(), &id, false).await,
            Command::Alerts { command: AlertsCommand::RotateSecret { api, id, grace_secs } } => {
                keytrail::cli::alerts::alerts_rotate_secret(&api.target(), &id, grace_secs).await
            }
            Command::Alerts { command: AlertsCommand::Delete { api, id } } => keytrail::cli::alerts::alerts_delete(&api.target(), &id).await,
            Command::Audit { command: AuditCommand::List { api, filters, page } } => {
                let filters = filters.filters(None, None);
                keytrail::cli::manage::audit_list(&api.target(), keytrail::cli::manage::AuditList::Calls, &filters, page.limit, page.cursor.as_deref()).await
            }
            Command::Audit { command: AuditCommand::Security { api, event_type, filters, page } } => {
                let filters = filters.filters(event_type, None);
                keytrail::cli::manage::audit_list(&api.target(), keytrail::cli::manage::AuditList::Security, &filters, page.limit, page.cursor.as_deref()).await
            }
            Command::Audit { command: AuditCommand::Admin { api, admin_id, action, window, page } } => {
                let filters = keytrail::cli::manage::AuditFilters { admin_id, action, ..window.filters() };
                keytrail::cli::manage::audit_list(&api.target(), keytrail::cli::manage::AuditList::Admin, &filters, page.limit, page.cursor.as_deref()).await
            }
            Command::Audit { command: AuditCommand::App { api, action, actor_id, resource_type, resource_id, window, page } } => {
                let filters = keytrail::cli::manage::AuditFilters { action, actor_id, resource_type, resource_id, ..window.filters() };
                keytrail::cli::manage::audit_list(&api.target(), keytrail::cli::manage::AuditList::App, &filters, page.limit, page.cursor.as_deref()).await
            }
            Command::Audit { command: AuditCommand::Export { api, format, category, filters, output } } => {
                let filters = filters.filters(None, category);
                keytrail::cli::manage::audit_export(&api.target(), &format, &filters, output.as_deref()).await
            }
            Command::Investigate { api, consumer, hours } => keytrail::cli::investigate(&api.target(), consumer.as_deref(), hours).await,
            Command::Erase { api, consumer } => keytrail::cli::erase(&api.target(), &consumer).await,
            Command::Report { command: ReportCommand::Weekly { api } } => keytrail::cli::report_weekly(&api.target()).await,
            Command::Serve { config, data_dir, gateway_listen, admin_listen, log_level } => match bootstrap_token_from_env() {
                Ok(token) => serve(config, Overrides { data_dir, gateway_listen, admin_listen, log_level, bootstrap_token: token.map(keytrail::config::Hidden) }).await,
                Err(e) => Err(e),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of the output went away (`| head`): end quietly, as
        // a closed pipe ends other tools (128 + SIGPIPE).
        Err(error) if error.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)) => ExitCode::from(141),
        Err(error) => {
            // A cause an error's own message already ends with (thiserror's
            // `#[from]` with `{0}` in the message) is said once, not twice.
            let texts: Vec<String> = error.chain().map(|e| e.to_string()).collect();
            let chain: Vec<String> = texts
                .iter()
                .enumerate()
                .filter(|(i, text)| *i == 0 || !texts[i - 1].ends_with(text.as_str()))
                .map(|(_, text)| keytrail::redact::redact(text).into_owned())
                .collect();
            errln!("keytrail: error: {}", chain.join(": "));
            if let Some(stopped) = error.downcast_ref::<keytrail::cli::Interrupted>() {
                // 130 for Ctrl-C, 143 for SIGTERM, as shells expect.
                ExitCode::from(stopped.signal.exit_code())
            } else if error.downcast_ref::<config::ConfigError>().is_some() || error.downcast_ref::<keytrail::cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
