//! The control plane: validated changes to tenants, apis, consumers, keys and
//! admins, each followed by a fresh gateway snapshot and, where the change is
//! security-relevant, an audit event.
//!
//! The admin HTTP API and the demo both go through here; neither touches the
//! control store directly. Inputs are checked here, so every entry point
//! refuses the same bad input with the same message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::access::{Permission, Role};
use crate::audit::AuditPipeline;
use crate::error::{ApiError, ErrorCode};
use crate::event::{now_ms, security_type, Category, Event, Text, SYSTEM_TENANT};
use crate::settings::retention::{RetentionOverrides, RetentionPolicy, RetentionSettings};
use crate::settings::{LoggingOverrides, LoggingPolicy, LoggingSettings};
use crate::keys::{self, KeyEnvironment, SecretHash};
use crate::snapshot::Snapshot;
use crate::policy::Policies;
use crate::protection::{self, Entry, EntryKind};
use crate::ratelimit::{CostRule, RateSpec};
use crate::store::control::{Admin, Api, Consumer, ControlStore, KeyRecord, Tenant, Tier, GLOBAL_SCOPE};
use crate::store::audit::erasure::{ErasureReport, ErasureRequest};
use crate::store::StoreError;

/// Who is making a change: recorded as the actor of the events it causes.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    pub admin_id: String,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The one tenant the admin is bound to; `None` for global admins.
    /// Objects of other tenants are reported as not found.
    pub tenant_scope: Option<String>,
    /// How the admin signed in: `token` or `session:<session id>`.
    pub credential: String,
    /// The admin call's request id, shared by every event it causes.
    pub request_id: Option<String>,
    /// The signed-in admin's role, for the rules the control plane checks
    /// against what a change would do (keeping fewer audit events needs an
    /// owner); `None` (sign-in, the demo) holds none of them.
    pub role: Option<Role>,
}

impl Actor {
    /// A security event this actor caused in `tenant_id`, aimed at `target`.
    pub fn event(&self, tenant_id: &str, event_type: &str, target: String) -> Event {
        self.event_of(tenant_id, Category::Security, event_type, "success", target)
    }

    /// An event of any category this actor caused.
    pub fn event_of(&self, tenant_id: &str, category: Category, event_type: &str, outcome: &str, target: String) -> Event {
        let mut event = Event::new(tenant_id, category, event_type, outcome);
        event.actor = Some(format!("admin:{}", self.admin_id).into());
        event.target = Some(target);
        event.client_ip = self.client_ip.as_ref().map(Text::from);
        event.user_agent = self.user_agent.clone();
        event.request_id = self.request_id.clone();
        event
    }

    /// An admin activity-log event: the credential used goes into its details.
    pub fn admin_event(&self, tenant_id: &str, action: &str, outcome: &str, resource: String, details: serde_json::Value) -> Event {
        let mut event = self.event_of(tenant_id, Category::Admin, action, outcome, resource);
        let mut details = match details {
            serde_json::Value::Object(map) => map,
            serde_json::Value::Null => serde_json::Map::new(),
            other => serde_json::Map::from_iter([("value".to_string(), other)]),
        };
        details.insert("credential".into(), serde_json::json!(self.credential));
        event.details = Some(serde_json::Value::Object(details));
        event
    }

    /// Whether the actor may see objects of `tenant_id`.
    pub fn sees(&self, tenant_id: &str) -> bool {
        self.tenant_scope.as_deref().is_none_or(|own| own == tenant_id)
    }

    /// Refuses a settings change that gives up `reductions` (fewer audit
    /// events kept, or kept for less time) unless the actor's role may:
    /// an admin could otherwise make its own actions leave the trail.
    /// `whose` names the events: the tenant's, or every tenant's that
    /// takes the global settings.
    fn may_reduce_audit_trail(&self, reductions: &[String], whose: &str) -> Result<(), ApiError> {
        if reductions.is_empty() || self.role.is_some_and(|role| role.allows(Permission::ReduceAuditTrail)) {
            return Ok(());
        }
        let caller = match self.role {
            Some(role) => format!("the caller's role is `{}`", role.as_str()),
            None => "the caller holds no role".to_string(),
        };
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this change ({}) needs the `owner` role ({caller}): it would keep fewer of {whose} audit events, or keep them for less time",
                reductions.join(", ")
            ),
        ))
    }
}

pub struct NewApi {
    pub id: String,
    pub path_prefix: String,
    pub upstream: String,
    pub timeout_ms: Option<u64>,
    pub rate_limit: Option<RateSpec>,
    pub costs: Vec<CostRule>,
    pub policies: Policies,
}

pub struct NewBlock {
    pub kind: EntryKind,
    pub value: String,
    pub reason: Option<String>,
    pub rule_id: Option<String>,
    pub expires_at_ms: Option<i64>,
}

pub struct NewTier {
    pub id: String,
    pub rate_limit: Option<RateSpec>,
    pub daily_quota: Option<u64>,
}

const MAX_RATE: u32 = 1_000_000_000;

fn check_rate(field: &str, rate: &RateSpec) -> Result<(), ApiError> {
    if !(1..=MAX_RATE).contains(&rate.requests_per_minute) || !(1..=MAX_RATE).contains(&rate.burst) {
        return Err(ApiError::invalid_body(format!(
            "`{field}.requests_per_minute` and `{field}.burst` must be between 1 and {MAX_RATE}"
        )));
    }
    Ok(())
}

pub struct NewKey {
    pub scopes: Vec<String>,
    pub expires_at_ms: Option<i64>,
    pub environment: KeyEnvironment,
}

/// What [`ControlPlane::bootstrap_admin`] did.
pub enum FirstAdmin {
    AlreadyPresent,
    CreatedWithOperatorToken,
    /// Its token was handed to `bootstrap_admin`'s `save_generated` (written
    /// to a private file) before the owner was made.
    CreatedWithGeneratedToken,
}

/// A created key: the record and, once, its secret.
pub struct CreatedKey {
    pub record: KeyRecord,
    pub secret: String,
}

mod admins;
mod alerts;
pub mod login_throttle;

pub use admins::{BearerRefused, Credential, LoginRefused, NewAdmin, Signed, SESSION_HOURS};
use login_throttle::LoginThrottle;

pub struct ControlPlane {
    store: ControlStore,
    snapshot: ArcSwap<Snapshot>,
    admins: ArcSwap<HashMap<SecretHash, Arc<Admin>>>,
    audit: Arc<AuditPipeline>,
    /// Serialises settings changes (each reads, patches and writes).
    settings_lock: Mutex<()>,
    /// Serialises snapshot rebuilds: a rebuild from an older read swapped
    /// in after a newer one would undo a change that already answered.
    reload_lock: Mutex<()>,
    /// The global retention before any admin changed it (from the config).
    retention_defaults: RetentionSettings,
    /// What rewriting archives during an erasure needs; `None`: erasure is
    /// refused (a control plane without a data directory's signing key).
    erasure: Option<ErasureSettings>,
    upstream_guard: crate::protection::UpstreamGuard,
    /// Failed sign-ins per name and address, and the lockouts they started.
    login_throttle: LoginThrottle,
    /// How new keys are hashed for the store (the operator's pepper).
    key_hasher: keys::KeyHasher,
    /// What webhook secrets are derived from; `None`: rules cannot have a webhook.
    alert_signer: Option<Arc<crate::signing::Signer>>,
    /// What the alert engine did per rule since the start.
    alert_status: crate::alerts::engine::StatusBoard,
}

/// The fields of a consumer that are personal data: the admin activity log
/// records them as [`PERSONAL_MARK`], in requests and in changes alike.
pub const PERSONAL_CONSUMER_FIELDS: [&str; 2] = ["name", "metadata"];
/// What the admin log shows instead of a personal value.
pub const PERSONAL_MARK: &str = "[personal]";
/// An erased consumer's name is this and its id (`erased-cons_…`); no
/// other consumer may take such a name, or the erasure's rename would break
/// the tenant's unique names and the consumer could never be erased.
const ERASED_NAME_PREFIX: &str = "erased-";

/// Where the archives an erasure rewrites are, and how they are written.
pub struct ErasureSettings {
    pub archive_dir: std::path::PathBuf,
    pub archive_level: i32,
    pub signer: Arc<crate::signing::Signer>,
}

/// A scope's retention settings as the API shows them.
pub struct RetentionView {
    pub settings: RetentionSettings,
    /// The settings a tenant takes from the global ones (empty for the global scope).
    pub inherited: Vec<&'static str>,
}

/// A scope's logging settings as the API shows them.
pub struct LoggingView {
    pub settings: LoggingSettings,
    /// The settings a tenant takes from the global ones (empty for the global scope).
    pub inherited: Vec<&'static str>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(message) => ApiError::new(ErrorCode::Conflict, message),
            // Retention, an erasure or a restore holds the audit directory:
            // nothing conflicts, it is worth trying again soon.
            StoreError::Busy(message) => ApiError::unavailable_for_now(message, crate::error::BUSY_RETRY_AFTER_SECS),
            StoreError::NotFound(what) => ApiError::not_found(what),
            other => ApiError::internal(other),
        }
    }
}

/// The answer to a consumer put into a tier that does not exist.
fn no_such_tier(tenant_id: &str, tier: &str) -> ApiError {
    ApiError::invalid_body(format!("tier `{tier}` does not exist in tenant `{tenant_id}`; create it first"))
}

/// Whose audit events a settings scope decides, for messages.
fn audit_owner(tenant: Option<&str>) -> String {
    match tenant {
        Some(tenant) => format!("tenant `{tenant}`'s"),
        None => "every tenant's (those that take the global settings)".to_string(),
    }
}

/// A scope's stored values (none set when it has no row).
fn own_logging(stored: &[(String, LoggingOverrides)], scope: &str) -> LoggingOverrides {
    stored.iter().find(|(s, _)| s == scope).map(|(_, own)| *own).unwrap_or_default()
}

/// Whether `text` is written as the ids of tenants and apis are: 1-63
/// lowercase letters, digits, `-` and `_` (keytrail's own, `_system`,
/// included). What may be asked for, or kept in the trail, as one.
pub fn is_id_text(text: &str) -> bool {
    (1..=63).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Ids chosen by users: lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit (ids starting with `_` are keytrail's own).
pub(crate) fn check_slug(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = is_id_text(value) && value.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_body(format!(
            "`{field}` must be 1-63 characters of a-z, 0-9, `-` and `_`, starting with a letter or digit"
        )))
    }
}

/// A name of 1-200 characters (not bytes: `é` or `名` count one each).
fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > 200 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_body(format!(
            "`{field}` must be 1-200 characters with no control characters"
        )));
    }
    // Characters that make a name display otherwise than it reads (in a
    // console, a listing, the audit trail): bidi embeddings, overrides and
    // isolates, a zero-width space, a byte order mark. Joiners (emoji,
    // scripts that need them) and direction marks stay allowed.
    if value.chars().any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}' | '\u{FEFF}')) {
        return Err(ApiError::invalid_body(format!(
            "`{field}` must not hold characters that change the text's direction or hide in it (U+202A-U+202E, U+2066-U+2069, U+200B, U+FEFF)"
        )));
    }
    check_no_secret(field, value)
}

/// Refuses text that holds something shaped like a key or token: the control
/// store keeps names and metadata as given, so a pasted key would be stored
/// in the clear.
fn check_no_secret(field: &str, value: &str) -> Result<(), ApiError> {
    if crate::redact::holds_secret(value) {
        return Err(ApiError::invalid_body(format!("`{field}` must not contain an API key or token")));
    }
    Ok(())
}

/// Checks a path prefix given as `field`; returns its one spelling.
fn check_path_prefix(field: &str, prefix: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid_body(format!("`{field}` {why}"));
    if !prefix.starts_with('/') {
        return Err(bad("must start with `/`"));
    }
    if prefix.len() > 256 {
        return Err(bad("must be at most 256 characters"));
    }
    check_no_secret(field, prefix)?;
    if prefix.contains(['?', '#', '%']) || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must be a plain path: no query, fragment, escapes or spaces"));
    }
    if prefix.contains("//") || prefix.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(bad("must not contain empty, `.` or `..` segments"));
    }
    // `/docs/` and `/docs` route the same; keep one spelling so duplicates are caught.
    let normalised = if prefix.len() > 1 { prefix.trim_end_matches('/') } else { prefix };
    Ok(normalised.to_string())
}

fn check_upstream(upstream: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid_body(format!("`upstream` {why}"));
    let uri: http::Uri = upstream.parse().map_err(|_| bad("must be a URL such as http://127.0.0.1:9000"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("uses https, which this version does not support yet; use http")),
        _ => return Err(bad("must start with http://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("must name a host"))?;
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(bad("must name a host, without credentials"));
    }
    // A port that is no number from 1 to 65535 (`:99999`, `:`) reads as no
    // port at all, and the gateway would connect to port 80 instead.
    let has_port = authority.as_str().len() > authority.host().len();
    if has_port && authority.port_u16().is_none_or(|port| port == 0) {
        return Err(bad("must have a port from 1 to 65535, or none for 80"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query: request paths are forwarded unchanged"));
    }
    Ok(format!("http://{authority}"))
}

/// The address an upstream URL (as [`check_upstream`] returns it) names,
/// when its host is an address rather than a name.
fn upstream_address(upstream: &str) -> Option<std::net::SocketAddr> {
    let authority = upstream.parse::<http::Uri>().ok()?.authority()?.clone();
    let ip: std::net::IpAddr = authority.host().trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(std::net::SocketAddr::new(ip, authority.port_u16().unwrap_or(80)))
}

fn check_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.len() > 100 {
        return Err(ApiError::invalid_body("`scopes` may hold at most 100 entries"));
    }
    for scope in scopes {
        if !keys::is_valid_scope(scope) {
            return Err(ApiError::invalid_body(
                "each scope must be 1-100 characters of letters, digits and `-_:.*/`, and no key or token",
            ));
        }
    }
    Ok(())
}

impl ControlPlane {
    pub fn open(store: ControlStore, audit: Arc<AuditPipeline>) -> Result<ControlPlane, StoreError> {
        let plane = ControlPlane {
            store,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            admins: ArcSwap::from_pointee(HashMap::new()),
            audit,
            settings_lock: Mutex::new(()),
            reload_lock: Mutex::new(()),
            retention_defaults: RetentionSettings::default(),
            erasure: None,
            upstream_guard: Default::default(),
            login_throttle: LoginThrottle::new(&crate::config::LoginConfig::default()),
            key_hasher: keys::KeyHasher::default(),
            alert_signer: None,
            alert_status: Default::default(),
        };
        plane.reload()?;
        Ok(plane)
    }

    /// Sets the global retention the config gives (before any change over the API).
    pub fn with_retention_defaults(mut self, defaults: RetentionSettings) -> ControlPlane {
        self.retention_defaults = defaults;
        self
    }

    /// Sets the sign-in throttling the config gives.
    pub fn with_login_limits(mut self, limits: &crate::config::LoginConfig) -> ControlPlane {
        self.login_throttle = LoginThrottle::new(limits);
        self
    }

    /// The sign-in throttle's counters, for `GET /v1/status`.
    pub fn login_throttle_status(&self) -> login_throttle::ThrottleStatus {
        self.login_throttle.status(now_ms())
    }

    pub fn with_erasure(mut self, settings: ErasureSettings) -> ControlPlane {
        self.erasure = Some(settings);
        self
    }

    /// Where apis' upstreams may not be (checked as apis are made; the
    /// gateway checks it again at each new upstream connection).
    /// Hashes new keys with `hasher`, and looks presented ones up with it.
    pub fn with_key_hasher(mut self, hasher: keys::KeyHasher) -> Result<ControlPlane, StoreError> {
        self.snapshot.store(Arc::new(Snapshot::hashing_with(hasher.clone())));
        self.key_hasher = hasher;
        self.reload()?;
        Ok(self)
    }

    pub fn with_upstream_guard(mut self, guard: crate::protection::UpstreamGuard) -> ControlPlane {
        self.upstream_guard = guard;
        self
    }

    /// Where retention writes archives (known with the erasure settings).
    pub fn archive_dir(&self) -> Option<&std::path::Path> {
        self.erasure.as_ref().map(|e| e.archive_dir.as_path())
    }

    pub fn upstream_guard(&self) -> &crate::protection::UpstreamGuard {
        &self.upstream_guard
    }

    /// An upstream given as an address in a network the guard refuses is
    /// refused here; one given as a name, at each connection (what it
    /// resolves to may change).
    fn check_upstream_allowed(&self, upstream: &str) -> Result<(), ApiError> {
        match upstream_address(upstream).and_then(|addr| self.upstream_guard.refuses(addr)) {
            Some(why) => Err(ApiError::invalid_body(format!("`upstream` may not be used: {why}"))),
            None => Ok(()),
        }
    }

    /// The current gateway snapshot.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Rebuilds the snapshots from the store, one rebuild at a time, so the
    /// last one swapped in read the store last.
    pub fn reload(&self) -> Result<(), StoreError> {
        self.reload_with_fresh_tier(None)
    }

    /// [`ControlPlane::reload`], starting the counters of the tier `fresh`
    /// names (tenant, tier id) afresh.
    fn reload_with_fresh_tier(&self, fresh: Option<(&str, &str)>) -> Result<(), StoreError> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let next = Snapshot::build_with_fresh_tier(self.store.load_routing()?, &self.snapshot.load(), fresh);
        self.snapshot.store(Arc::new(next));
        let admins = self.store.list_admins()?.into_iter().map(|a| (a.token_hash, Arc::new(a))).collect();
        self.admins.store(Arc::new(admins));
        self.audit.set_policy(self.logging_policy()?);
        Ok(())
    }

    fn logging_policy(&self) -> Result<LoggingPolicy, StoreError> {
        let stored = self.store.load_logging()?;
        let global = self.global_logging(&stored);
        let tenants = stored.iter().filter(|(scope, _)| scope != GLOBAL_SCOPE).map(|(scope, own)| (scope.clone(), own.over(&global))).collect();
        Ok(LoggingPolicy { global, tenants })
    }

    fn reload_after_change(&self) -> Result<(), ApiError> {
        self.reload().map_err(ApiError::internal)
    }

    // --- tenants ---

    pub fn create_tenant(&self, id: &str, name: &str) -> Result<Tenant, ApiError> {
        check_slug("id", id)?;
        check_name("name", name)?;
        let tenant = Tenant { id: id.to_string(), name: name.to_string(), created_at: now_ms() };
        self.store.create_tenant(&tenant)?;
        Ok(tenant)
    }

    pub fn list_tenants(&self) -> Result<Vec<Tenant>, ApiError> {
        Ok(self.store.list_tenants()?)
    }

    /// 404 unless the tenant exists.
    /// A scope is the global one (`None`) or an existing tenant.
    fn require_scope(&self, tenant_id: Option<&str>) -> Result<(), ApiError> {
        tenant_id.map_or(Ok(()), |tenant| self.require_tenant(tenant))
    }

    pub fn require_tenant(&self, tenant_id: &str) -> Result<(), ApiError> {
        if self.store.tenant_exists(tenant_id)? {
            Ok(())
        } else {
            Err(ApiError::not_found(format_args!("tenant `{tenant_id}`")))
        }
    }

    // --- apis ---

    /// Creates an api of `tenant_id`. The root prefix `/` is the catch-all
    /// for every path no other api serves — other tenants' callers'
    /// mistyped paths too (which is why it nests with everything, see
    /// [`ControlStore::create_api`]) — so only an admin bound to no tenant
    /// may route it.
    pub fn create_api(&self, tenant_id: &str, new: NewApi, actor: &Actor) -> Result<Api, ApiError> {
        self.require_tenant(tenant_id)?;
        check_slug("id", &new.id)?;
        let path_prefix = check_path_prefix("path_prefix", &new.path_prefix)?;
        // A call is routed by its path as sent, and clients send anything
        // beyond ASCII percent-escaped (`/caf%C3%A9`), which a prefix may not
        // hold: an api at `/café` would be stored and never called. Only
        // inside an api of its tenant (`/docs/café` in `/docs`) is such a
        // path also read decoded, as an upstream would ([`Snapshot::route`]).
        // (Cost rules match the decoded path too: theirs may be any.)
        if !path_prefix.is_ascii() {
            let around = self.store.list_apis(tenant_id)?.into_iter().any(|outer| {
                outer.path_prefix.is_ascii()
                    && outer.path_prefix.len() < path_prefix.len()
                    && crate::snapshot::prefix_matches_ignoring_case(&outer.path_prefix, &path_prefix)
            });
            if !around {
                return Err(ApiError::invalid_body(
                    "`path_prefix` must be ASCII (clients send other characters percent-escaped, and a prefix holds no escapes), unless it lies inside an api of the tenant, which reads such paths decoded",
                ));
            }
        }
        if path_prefix == "/" && actor.tenant_scope.is_some() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the root prefix `/` catches every path no other api serves, other tenants' too: only admins bound to no tenant may route it",
            ));
        }
        let upstream = check_upstream(&new.upstream)?;
        self.check_upstream_allowed(&upstream)?;
        if let Some(ms) = new.timeout_ms {
            if !(1..=3_600_000).contains(&ms) {
                return Err(ApiError::invalid_body("`timeout_ms` must be between 1 and 3600000"));
            }
        }
        if let Some(rate) = &new.rate_limit {
            check_rate("rate_limit", rate)?;
        }
        if new.costs.len() > 100 {
            return Err(ApiError::invalid_body("`costs` may hold at most 100 rules"));
        }
        let mut costs = Vec::with_capacity(new.costs.len());
        for rule in new.costs {
            let rule_prefix = check_path_prefix("costs[].path_prefix", &rule.path_prefix)?;
            if !crate::snapshot::prefix_matches(&path_prefix, &rule_prefix) {
                return Err(ApiError::invalid_body(format!(
                    "`costs` path `{rule_prefix}` is not under the api's prefix `{path_prefix}`"
                )));
            }
            if !(1..=MAX_RATE).contains(&rule.cost) {
                return Err(ApiError::invalid_body(format!("`costs` cost must be between 1 and {MAX_RATE}")));
            }
            costs.push(CostRule { path_prefix: rule_prefix, cost: rule.cost });
        }
        let policies = new.policies.validated()?;
        policies.check_under(&path_prefix)?;
        let api = Api {
            tenant_id: tenant_id.to_string(),
            id: new.id,
            path_prefix,
            upstream,
            timeout_ms: new.timeout_ms,
            rate_limit: new.rate_limit,
            costs,
            policies,
            created_at: now_ms(),
        };
        self.store.create_api(&api)?;
        self.reload_after_change()?;
        Ok(api)
    }

    pub fn list_apis(&self, tenant_id: &str) -> Result<Vec<Api>, ApiError> {
        self.require_tenant(tenant_id)?;
        Ok(self.store.list_apis(tenant_id)?)
    }

    /// Replaces an api's policies; the gateway applies them from the next call.
    pub fn set_api_policies(&self, tenant_id: &str, api_id: &str, policies: Policies) -> Result<Api, ApiError> {
        self.require_tenant(tenant_id)?;
        let policies = policies.validated()?;
        let api = self.store.get_api(tenant_id, api_id)?.ok_or_else(|| ApiError::not_found(format_args!("api `{api_id}`")))?;
        policies.check_under(&api.path_prefix)?;
        if !self.store.set_api_policies(tenant_id, api_id, &policies)? {
            return Err(ApiError::not_found(format_args!("api `{api_id}`")));
        }
        self.reload_after_change()?;
        self.store.get_api(tenant_id, api_id)?.ok_or_else(|| ApiError::not_found(format_args!("api `{api_id}`")))
    }

    // --- consumers ---

    pub fn create_consumer(
        &self,
        tenant_id: &str,
        name: &str,
        metadata: serde_json::Value,
        tier: Option<String>,
    ) -> Result<Consumer, ApiError> {
        self.require_tenant(tenant_id)?;
        check_name("name", name)?;
        if name.strip_prefix(ERASED_NAME_PREFIX).is_some_and(|rest| rest.starts_with("cons_")) {
            return Err(ApiError::invalid_body(format!(
                "`name` may not start with `{ERASED_NAME_PREFIX}cons_`: an erased consumer is named so"
            )));
        }
        if let Some(tier) = &tier {
            self.require_tier(tenant_id, tier)?;
        }
        if !(metadata.is_object() || metadata.is_null()) {
            return Err(ApiError::invalid_body("`metadata` must be an object"));
        }
        let metadata_text = metadata.to_string();
        if metadata_text.len() > 16 * 1024 {
            return Err(ApiError::invalid_body("`metadata` must be at most 16 KiB of JSON"));
        }
        check_no_secret("metadata", &metadata_text)?;
        let consumer = Consumer {
            id: keys::generate_id("cons"),
            tenant_id: tenant_id.to_string(),
            name: name.to_string(),
            status: "active".into(),
            metadata: if metadata.is_null() { serde_json::json!({}) } else { metadata },
            tier,
            created_at: now_ms(),
        };
        if !self.store.create_consumer(&consumer)? {
            // Its tier was deleted since it was looked up.
            return Err(no_such_tier(tenant_id, consumer.tier.as_deref().unwrap_or_default()));
        }
        self.reload_after_change()?;
        Ok(consumer)
    }

    pub fn list_consumers(&self, tenant_id: &str) -> Result<Vec<Consumer>, ApiError> {
        self.require_tenant(tenant_id)?;
        Ok(self.store.list_consumers(tenant_id)?)
    }

    /// Puts a consumer in a tier (`None`: no tier); its calls are limited
    /// by the new tier from the moment this returns.
    pub fn set_consumer_tier(&self, tenant_id: &str, consumer_id: &str, tier: Option<String>) -> Result<Consumer, ApiError> {
        self.require_consumer(tenant_id, consumer_id)?;
        if let Some(tier) = &tier {
            self.require_tier(tenant_id, tier)?;
        }
        if !self.store.set_consumer_tier(tenant_id, consumer_id, tier.as_deref())? {
            // The consumer or its new tier went away since they were looked up.
            self.require_consumer(tenant_id, consumer_id)?;
            return Err(no_such_tier(tenant_id, tier.as_deref().unwrap_or_default()));
        }
        self.reload_after_change()?;
        self.require_consumer(tenant_id, consumer_id)
    }

    // --- tiers ---

    fn require_tier(&self, tenant_id: &str, tier: &str) -> Result<(), ApiError> {
        if self.store.tier_exists(tenant_id, tier)? {
            Ok(())
        } else {
            Err(no_such_tier(tenant_id, tier))
        }
    }

    fn checked_tier(&self, tenant_id: &str, new: NewTier) -> Result<Tier, ApiError> {
        self.require_tenant(tenant_id)?;
        check_slug("id", &new.id)?;
        if let Some(rate) = &new.rate_limit {
            check_rate("rate_limit", rate)?;
        }
        if let Some(quota) = new.daily_quota {
            if !(1..=1_000_000_000_000).contains(&quota) {
                return Err(ApiError::invalid_body("`daily_quota` must be between 1 and 1000000000000"));
            }
        }
        if new.rate_limit.is_none() && new.daily_quota.is_none() {
            return Err(ApiError::invalid_body("a tier needs a `rate_limit`, a `daily_quota` or both"));
        }
        Ok(Tier {
            tenant_id: tenant_id.to_string(),
            id: new.id,
            requests_per_minute: new.rate_limit.map(|r| r.requests_per_minute),
            burst: new.rate_limit.map(|r| r.burst),
            daily_quota: new.daily_quota,
            created_at: now_ms(),
        })
    }

    pub fn create_tier(&self, tenant_id: &str, new: NewTier) -> Result<Tier, ApiError> {
        let tier = self.checked_tier(tenant_id, new)?;
        self.store.create_tier(&tier)?;
        self.reload_after_change()?;
        Ok(tier)
    }

    /// Replaces a tier's limits; its consumers' counters start afresh under
    /// the new limits from the next call (the same limits again too).
    pub fn update_tier(&self, tenant_id: &str, new: NewTier) -> Result<Tier, ApiError> {
        let id = new.id.clone();
        // The id comes from the path: one no tier could have names none.
        if check_slug("id", &id).is_err() {
            self.require_tenant(tenant_id)?;
            return Err(ApiError::not_found(format_args!("tier `{id}`")));
        }
        let tier = self.checked_tier(tenant_id, new)?;
        if !self.store.update_tier(&tier)? {
            return Err(ApiError::not_found(format_args!("tier `{id}`")));
        }
        self.reload_with_fresh_tier(Some((tenant_id, &id))).map_err(ApiError::internal)?;
        self.store.list_tiers(tenant_id)?.into_iter().find(|t| t.id == id).ok_or_else(|| ApiError::not_found(format_args!("tier `{id}`")))
    }

    /// Deletes a tier no consumer is in (409 otherwise).
    pub fn delete_tier(&self, tenant_id: &str, id: &str) -> Result<(), ApiError> {
        self.require_tenant(tenant_id)?;
        if !self.store.delete_tier(tenant_id, id)? {
            return Err(ApiError::not_found(format_args!("tier `{id}`")));
        }
        self.reload_after_change()
    }

    pub fn list_tiers(&self, tenant_id: &str) -> Result<Vec<Tier>, ApiError> {
        self.require_tenant(tenant_id)?;
        Ok(self.store.list_tiers(tenant_id)?)
    }

    /// Whether the tenant has this consumer (in any status).
    pub fn consumer_exists(&self, tenant_id: &str, consumer_id: &str) -> Result<bool, ApiError> {
        Ok(self.store.get_consumer(tenant_id, consumer_id)?.is_some())
    }

    fn require_consumer(&self, tenant_id: &str, consumer_id: &str) -> Result<Consumer, ApiError> {
        self.require_tenant(tenant_id)?;
        self.store
            .get_consumer(tenant_id, consumer_id)?
            .ok_or_else(|| ApiError::not_found(format_args!("consumer `{consumer_id}`")))
    }

    // --- keys ---

    pub fn create_key(
        &self,
        tenant_id: &str,
        consumer_id: &str,
        new: NewKey,
        actor: &Actor,
    ) -> Result<CreatedKey, ApiError> {
        let consumer = self.require_consumer(tenant_id, consumer_id)?;
        check_scopes(&new.scopes)?;
        let now = now_ms();
        if let Some(at) = new.expires_at_ms {
            if at <= now {
                return Err(ApiError::invalid_body("`expires_at` must be in the future"));
            }
        }
        let (record, secret) = new_key_record(&self.key_hasher, tenant_id, &consumer.id, new.environment, new.scopes, new.expires_at_ms, now);
        self.store.create_key(&record)?;
        self.reload_after_change()?;
        // No consumer name: admin events hold no personal value of the
        // consumer (erasure leaves them as they are).
        let mut event = self.key_event(security_type::KEY_CREATED, &record, actor);
        event.details = Some(serde_json::json!({
            "scopes": record.scopes,
            "expires_at": record.expires_at.map(crate::event::format_timestamp),
            "environment": record.environment,
        }));
        self.audit.record(event);
        Ok(CreatedKey { record, secret })
    }

    /// A consumer's keys, with the last use the gateway has seen even if it
    /// is not written to the store yet.
    pub fn list_keys(&self, tenant_id: &str, consumer_id: &str) -> Result<Vec<KeyRecord>, ApiError> {
        self.require_consumer(tenant_id, consumer_id)?;
        let mut keys = self.store.list_keys(consumer_id)?;
        let snapshot = self.snapshot();
        for key in &mut keys {
            if let Some(seen) = snapshot.key(&key.hash).and_then(|entry| entry.usage.last_used_ms()) {
                key.last_used_at = Some(key.last_used_at.map_or(seen, |stored| stored.max(seen)));
            }
        }
        Ok(keys)
    }

    /// Writes the keys' last uses seen since the previous flush, in one
    /// transaction. Returns how many keys it wrote.
    pub fn flush_key_usage(&self) -> Result<usize, StoreError> {
        let snapshot = self.snapshot();
        let pending: Vec<(&Arc<crate::snapshot::KeyEntry>, i64)> =
            snapshot.keys().filter_map(|entry| Some((entry, entry.usage.unstored()?))).collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let uses: Vec<(String, i64)> = pending.iter().map(|(entry, at)| (entry.key_id.to_string(), *at)).collect();
        self.store.record_key_use(&uses)?;
        for (entry, at) in &pending {
            entry.usage.mark_stored(*at);
        }
        Ok(pending.len())
    }

    /// The key, if it exists in a tenant the actor may see (otherwise the
    /// same 404 as for a key that does not exist).
    /// One key as the actor may see it (never its secret): the same 404 for
    /// a key of a tenant the actor does not see as for one that does not exist.
    pub fn get_key(&self, key_id: &str, actor: &Actor) -> Result<KeyRecord, ApiError> {
        self.require_key(key_id, actor)
    }

    fn require_key(&self, key_id: &str, actor: &Actor) -> Result<KeyRecord, ApiError> {
        self.store
            .get_key(key_id)?
            .filter(|key| actor.sees(&key.tenant_id))
            .ok_or_else(|| ApiError::not_found(format_args!("key `{key_id}`")))
    }

    /// The current state of the object an admin route names, as the
    /// activity log compares it before and after a change: a key, tier,
    /// consumer, api or logging settings. `None` when there is none.
    pub fn object_state(&self, tenant: Option<&str>, kind: &str, id: Option<&str>) -> Option<serde_json::Value> {
        fn json<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
            serde_json::to_value(value).ok()
        }
        match (kind, tenant, id) {
            ("key", _, Some(id)) => {
                let key = self.store.get_key(id).ok()??;
                let mut value = json(&key)?;
                value["status"] = serde_json::json!(key.status_at(now_ms()));
                Some(value)
            }
            ("tier", Some(t), Some(id)) => self.list_tiers(t).ok()?.into_iter().find(|x| x.id == id).and_then(|x| json(&x)),
            // A consumer's name and metadata are personal: the admin log
            // holds no copy of them (it could not be erased).
            ("consumer", Some(t), Some(id)) => self.list_consumers(t).ok()?.into_iter().find(|x| x.id == id).and_then(|x| {
                let mut value = json(&x)?;
                for field in PERSONAL_CONSUMER_FIELDS {
                    value[field] = serde_json::json!(PERSONAL_MARK);
                }
                Some(value)
            }),
            ("api", Some(t), Some(id)) => self.list_apis(t).ok()?.into_iter().find(|x| x.id == id).and_then(|x| json(&x)),
            ("settings", t, _) => Some(serde_json::Value::Object(self.logging_settings(t).ok()?.settings.to_json())),
            ("retention", t, _) => Some(serde_json::Value::Object(self.retention_settings(t).ok()?.settings.to_json())),
            _ => None,
        }
    }

    /// The tenant a key belongs to, for the admin activity log.
    pub fn key_tenant(&self, key_id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.store.get_key(key_id)?.map(|key| key.tenant_id))
    }

    /// Rotates a key: a new key with the same consumer, scopes and expiry,
    /// while the old one keeps working for `grace_ms`, then is refused as
    /// expired. Only an active key can be rotated.
    pub fn rotate_key(&self, key_id: &str, grace_ms: i64, actor: &Actor) -> Result<(CreatedKey, KeyRecord), ApiError> {
        let old = self.require_key(key_id, actor)?;
        let now = now_ms();
        let status = old.status_at(now);
        if status != "active" {
            let hint = match status {
                "rotating" => format!("; rotate its replacement `{}` instead", old.replaced_by.as_deref().unwrap_or("?")),
                _ => String::new(),
            };
            return Err(ApiError::new(ErrorCode::Conflict, format!("key `{key_id}` is {status} and cannot be rotated{hint}")));
        }
        let environment = KeyEnvironment::parse(&old.environment).unwrap_or(KeyEnvironment::Live);
        let (record, secret) = new_key_record(&self.key_hasher, &old.tenant_id, &old.consumer_id, environment, old.scopes.clone(), old.expires_at, now);
        // The grace never outlives the key's own expiry.
        let old_expires_at = old.expires_at.map_or(now + grace_ms, |t| t.min(now + grace_ms));
        if !self.store.rotate_key(key_id, &record, old_expires_at)? {
            return Err(ApiError::new(ErrorCode::Conflict, format!("key `{key_id}` changed while it was being rotated; try again")));
        }
        self.reload_after_change()?;
        let mut event = self.key_event(security_type::KEY_ROTATED, &old, actor);
        // The grace the old key got (its own expiry may cut the one asked
        // for short), in whole seconds rounded up, and the one asked for.
        let granted_ms = (old_expires_at - now).max(0);
        event.details = Some(serde_json::json!({
            "new_key_id": record.key_id,
            "new_key_hint": record.hint,
            "grace_seconds": (granted_ms + 999) / 1000,
            "grace_seconds_asked": grace_ms / 1000,
            "old_key_expires_at": crate::event::format_timestamp(old_expires_at),
        }));
        self.audit.record(event);
        let old = self.require_key(key_id, actor)?;
        Ok((CreatedKey { record, secret }, old))
    }

    /// Replaces a key's scopes; the gateway applies them from the moment
    /// this returns. The same scopes again change nothing and record nothing.
    pub fn set_key_scopes(&self, key_id: &str, scopes: Vec<String>, actor: &Actor) -> Result<KeyRecord, ApiError> {
        let old = self.require_key(key_id, actor)?;
        check_scopes(&scopes)?;
        if old.scopes == scopes {
            return Ok(old);
        }
        self.store.set_key_scopes(key_id, &scopes)?;
        self.reload_after_change()?;
        let mut event = self.key_event(security_type::SCOPE_CHANGED, &old, actor);
        event.details = Some(serde_json::json!({"scopes": {"before": old.scopes, "after": scopes}}));
        self.audit.record(event);
        self.require_key(key_id, actor)
    }

    /// Suspends (`active = false`) or reactivates a consumer: the gateway
    /// answers its keys with `403 consumer_suspended` while it is suspended.
    pub fn set_consumer_active(&self, tenant_id: &str, consumer_id: &str, active: bool, actor: &Actor) -> Result<Consumer, ApiError> {
        let consumer = self.require_consumer(tenant_id, consumer_id)?;
        let status = if active { "active" } else { "suspended" };
        if self.store.set_consumer_status(tenant_id, consumer_id, status)? {
            self.reload_after_change()?;
            let event_type = if active { security_type::CONSUMER_REACTIVATED } else { security_type::CONSUMER_SUSPENDED };
            let mut event = actor.event(tenant_id, event_type, format!("consumer:{consumer_id}"));
            event.consumer_id = Some(consumer.id.as_str().into());
            event.details = Some(serde_json::json!({"status": {"before": consumer.status, "after": status}}));
            self.audit.record(event);
        }
        self.require_consumer(tenant_id, consumer_id)
    }

    /// Erases a consumer's personal values (GDPR): its name and metadata
    /// here, then the client addresses, user agents, names and actors of
    /// its events in the audit trail, hot, restored and archived
    /// ([`crate::store::audit::erasure`]); records the erasure as a
    /// `personal_data_erased` security event that names no personal value.
    /// The consumer and its keys stay; its later calls are logged as usual.
    pub async fn erase_consumer(&self, tenant_id: &str, consumer_id: &str, actor: &Actor) -> Result<ErasureReport, ApiError> {
        self.require_consumer(tenant_id, consumer_id)?;
        let settings = self
            .erasure
            .as_ref()
            .ok_or_else(|| ApiError::new(crate::error::ErrorCode::Unavailable, "erasure is not configured on this server"))?;
        // The new name first, so no call logged from now on carries the old one.
        self.store.anonymize_consumer(tenant_id, consumer_id, &format!("{ERASED_NAME_PREFIX}{consumer_id}"))?;
        self.reload_after_change()?;
        let request = ErasureRequest {
            tenant: tenant_id.to_string(),
            consumer: consumer_id.to_string(),
            archive_dir: settings.archive_dir.clone(),
            archive_level: settings.archive_level,
            signer: settings.signer.clone(),
        };
        let report = match self.audit.erase(request).await {
            Ok(report) => report,
            Err(error) => {
                // Part of the work may be done (the new name, some files):
                // the trail says the erasure was asked for and did not finish.
                tracing::error!(%error, tenant = tenant_id, consumer = consumer_id, "an erasure stopped before it finished");
                let mut event = actor.event_of(tenant_id, Category::Security, security_type::PERSONAL_DATA_ERASED, "failure", format!("consumer:{consumer_id}"));
                event.consumer_id = Some(consumer_id.into());
                event.details = Some(serde_json::json!({"finished": false}));
                self.audit.record(event);
                self.audit.flush().await;
                return Err(ApiError::new(
                    crate::error::ErrorCode::Internal,
                    "the erasure stopped before it finished (the server's log says why): the consumer is renamed, but some of its personal values may still be stored; once the cause is mended, erase it again to finish",
                ));
            }
        };
        let mut event = actor.event(tenant_id, security_type::PERSONAL_DATA_ERASED, format!("consumer:{consumer_id}"));
        event.consumer_id = Some(consumer_id.into());
        event.details = Some(serde_json::json!({
            "events": report.events,
            "blocks": report.blocks,
            "day_files": report.day_files,
            "archives": report.archives,
            "strings": report.strings,
            "salts": report.salts,
        }));
        self.audit.record(event);
        self.audit.flush().await;
        Ok(report)
    }

    /// Revokes a key; the gateway refuses it as soon as this returns.
    /// Revoking a revoked key changes nothing and records nothing.
    pub fn revoke_key(&self, key_id: &str, actor: &Actor) -> Result<KeyRecord, ApiError> {
        let found = self.require_key(key_id, actor)?;
        let now = now_ms();
        if self.store.revoke_key(key_id, now)? {
            self.reload_after_change()?;
            let mut event = self.key_event(security_type::KEY_REVOKED, &found, actor);
            event.details = Some(serde_json::json!({"previous_status": found.status_at(now)}));
            self.audit.record(event);
        }
        Ok(self.store.get_key(key_id)?.unwrap_or(found))
    }

    // --- blocklists ---

    /// Adds an entry to a tenant's blocklist or the global one (`None`); the
    /// gateway applies it from the moment this returns.
    pub fn add_block(&self, tenant_id: Option<&str>, new: NewBlock, added_by: &str) -> Result<Entry, ApiError> {
        self.require_scope(tenant_id)?;
        let (value, reason) = protection::validate(new.kind, &new.value, new.reason.as_deref())?;
        let now = now_ms();
        if new.expires_at_ms.is_some_and(|t| t <= now) {
            return Err(ApiError::invalid_body("`expires_at` must be in the future"));
        }
        if let Some(rule) = &new.rule_id {
            if rule.is_empty() || rule.len() > 63 || !rule.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)) {
                return Err(ApiError::invalid_body("`rule_id` must be 1-63 characters of letters, digits and `-_:.`"));
            }
            check_no_secret("rule_id", rule)?;
        }
        let id = keys::generate_id("blk");
        let entry = Entry {
            rule_id: new.rule_id.unwrap_or_else(|| id.clone()),
            id,
            tenant_id: tenant_id.map(str::to_string),
            kind: new.kind,
            value,
            reason,
            expires_at: new.expires_at_ms,
            added_by: added_by.to_string(),
            created_at: now,
        };
        self.store.add_block(&entry)?;
        self.reload_after_change()?;
        Ok(entry)
    }

    pub fn list_blocks(&self, tenant_id: Option<&str>) -> Result<Vec<Entry>, ApiError> {
        self.require_scope(tenant_id)?;
        Ok(self.store.list_blocks(tenant_id)?)
    }

    pub fn remove_block(&self, tenant_id: Option<&str>, id: &str) -> Result<(), ApiError> {
        self.require_scope(tenant_id)?;
        if !self.store.remove_block(tenant_id, id)? {
            return Err(ApiError::not_found(format_args!("blocklist entry `{id}`")));
        }
        self.reload_after_change()
    }

    // --- logging settings ---

    /// The global settings: the stored values over the config's defaults.
    fn global_logging(&self, stored: &[(String, LoggingOverrides)]) -> LoggingSettings {
        let defaults = self.audit.default_settings();
        own_logging(stored, GLOBAL_SCOPE).over(&defaults)
    }

    /// A scope's settings as the API shows them, from the stored ones.
    fn logging_view(&self, stored: &[(String, LoggingOverrides)], tenant: Option<&str>) -> LoggingView {
        let global = self.global_logging(stored);
        match tenant {
            None => LoggingView { settings: global, inherited: Vec::new() },
            Some(tenant) => {
                let own = own_logging(stored, tenant);
                LoggingView { settings: own.over(&global), inherited: own.inherited() }
            }
        }
    }

    /// The logging settings of a tenant, or the global ones (`None`).
    pub fn logging_settings(&self, tenant: Option<&str>) -> Result<LoggingView, ApiError> {
        self.require_scope(tenant)?;
        Ok(self.logging_view(&self.store.load_logging()?, tenant))
    }

    /// Changes the settings named in `patch` (a JSON object) for a tenant or
    /// globally (`None`); for a tenant, `null` takes the global value again.
    /// The change applies from the next event on and is recorded as a
    /// `settings_changed` event (in `_system` for the global settings).
    pub fn update_logging(&self, tenant: Option<&str>, patch: &serde_json::Value, actor: &Actor) -> Result<LoggingView, ApiError> {
        let _serial = self.settings_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.require_scope(tenant)?;
        let scope = tenant.unwrap_or(GLOBAL_SCOPE);
        let mut stored = self.store.load_logging()?;
        let before = self.logging_view(&stored, tenant).settings;
        let mut own = own_logging(&stored, scope);
        own.apply_patch(patch, tenant.is_some())?;
        stored.retain(|(s, _)| s != scope);
        stored.push((scope.to_string(), own));
        let view = self.logging_view(&stored, tenant);
        // Judged on the values the scope ends up with (a tenant's `null`
        // takes the global one, which may be off), before anything is saved.
        actor.may_reduce_audit_trail(&before.reductions(&view.settings), &audit_owner(tenant))?;
        self.store.save_logging(scope, &own, now_ms())?;
        self.reload_after_change()?;
        let changes = before.changes(&view.settings);
        if !changes.is_empty() {
            let mut event = actor.event(tenant.unwrap_or(SYSTEM_TENANT), security_type::SETTINGS_CHANGED, "settings:logging".into());
            event.details = Some(serde_json::json!({
                "scope": if tenant.is_some() { "tenant" } else { "global" },
                "changes": changes,
            }));
            self.audit.record(event);
        }
        Ok(view)
    }

    // --- retention settings ---

    /// A scope's retention as the API shows it, from the stored settings.
    fn retention_view(&self, stored: &[(String, RetentionOverrides)], tenant: Option<&str>) -> RetentionView {
        let own = |scope: &str| stored.iter().find(|(s, _)| s == scope).map(|(_, o)| *o).unwrap_or_default();
        let global = own(GLOBAL_SCOPE).over(&self.retention_defaults);
        match tenant {
            None => RetentionView { settings: global, inherited: Vec::new() },
            Some(tenant) => {
                let mine = own(tenant);
                RetentionView { settings: mine.over(&global), inherited: mine.inherited() }
            }
        }
    }

    /// The retention of a tenant, or the global one (`None`).
    pub fn retention_settings(&self, tenant: Option<&str>) -> Result<RetentionView, ApiError> {
        self.require_scope(tenant)?;
        Ok(self.retention_view(&self.store.load_retention()?, tenant))
    }

    /// Every tenant's retention, as the retention task applies it.
    pub fn retention_policy(&self) -> Result<RetentionPolicy, StoreError> {
        let stored = self.store.load_retention()?;
        let global = self.retention_view(&stored, None).settings;
        let tenants = stored
            .iter()
            .filter(|(scope, _)| scope != GLOBAL_SCOPE)
            .map(|(scope, own)| (scope.clone(), own.over(&global)))
            .collect();
        Ok(RetentionPolicy { global, tenants, ..RetentionPolicy::default() })
    }

    /// Changes the retention settings named in `patch` for a tenant or
    /// globally (`None`); for a tenant, `null` takes the global value again.
    /// Applies from the retention task's next run; recorded as a
    /// `settings_changed` event (in `_system` for the global settings).
    pub fn update_retention(&self, tenant: Option<&str>, patch: &serde_json::Value, actor: &Actor) -> Result<RetentionView, ApiError> {
        let _serial = self.settings_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.require_scope(tenant)?;
        let scope = tenant.unwrap_or(GLOBAL_SCOPE);
        let mut stored = self.store.load_retention()?;
        let before = self.retention_view(&stored, tenant).settings;
        let mut own = stored.iter().find(|(s, _)| s == scope).map(|(_, o)| *o).unwrap_or_default();
        own.apply_patch(patch, tenant.is_some())?;
        stored.retain(|(s, _)| s != scope);
        stored.push((scope.to_string(), own));
        let view = self.retention_view(&stored, tenant);
        // Judged on the windows the scope ends up with (a tenant's `null`
        // takes the global one, which may be shorter), before anything is saved.
        actor.may_reduce_audit_trail(&before.reductions(&view.settings), &audit_owner(tenant))?;
        self.store.save_retention(scope, &own, now_ms())?;
        let changes = before.changes(&view.settings);
        if !changes.is_empty() {
            let mut event = actor.event(tenant.unwrap_or(SYSTEM_TENANT), security_type::SETTINGS_CHANGED, "settings:retention".into());
            event.details = Some(serde_json::json!({
                "scope": if tenant.is_some() { "tenant" } else { "global" },
                "changes": changes,
            }));
            self.audit.record(event);
        }
        Ok(view)
    }

    fn key_event(&self, event_type: &str, key: &KeyRecord, actor: &Actor) -> Event {
        let mut event = actor.event(&key.tenant_id, event_type, format!("key:{}", key.key_id));
        event.key_id = Some(key.key_id.as_str().into());
        event.key_hint = Some(key.hint.as_str().into());
        event.consumer_id = Some(key.consumer_id.as_str().into());
        event
    }
}

/// A fresh active key for a consumer, and its secret (shown once).
fn new_key_record(
    hasher: &keys::KeyHasher,
    tenant_id: &str,
    consumer_id: &str,
    environment: KeyEnvironment,
    scopes: Vec<String>,
    expires_at: Option<i64>,
    now: i64,
) -> (KeyRecord, String) {
    let generated = keys::generate_key(environment);
    let record = KeyRecord {
        key_id: keys::generate_id("key"),
        tenant_id: tenant_id.to_string(),
        consumer_id: consumer_id.to_string(),
        hint: generated.hint,
        environment: environment.as_str().to_string(),
        scopes,
        status: "active".into(),
        expires_at,
        created_at: now,
        revoked_at: None,
        replaced_by: None,
        last_used_at: None,
        hash: hasher.stored(&generated.secret),
    };
    (record, generated.secret)
}

#[cfg(test)]
mod tests {

    /// A name may not hold the characters that make text display otherwise
    /// than it reads (bidi overrides and isolates, a zero-width space, a byte
    /// order mark): `acme\u{202E}nimda` shows as "acmeadmin" reversed in a
    /// console or a listing.
    #[test]
    fn names_refuse_characters_that_change_how_they_display() {
        for bad in ["acme\u{202E}nimda", "a\u{202D}b", "x\u{2066}y\u{2069}", "zero\u{200B}width", "\u{FEFF}bom", "a\u{202A}b"] {
            let err = check_name("name", bad).unwrap_err();
            assert!(err.message.contains("direction") && err.message.contains("`name`"), "{bad:?}: {}", err.message);
        }
        // Joiners in emoji and scripts that need them, and marks, stay allowed.
        for good in ["\u{1F469}\u{200D}\u{1F4BB} team", "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}", "Café Noir", "名前"] {
            assert!(check_name("name", good).is_ok(), "{good:?}");
        }
    }
    use super::*;

    #[test]
    fn slugs() {
        assert!(check_slug("id", "acme-1_x").is_ok());
        for bad in ["", "Acme", "_sys", "-a", "a b", "a/b", &"a".repeat(64)] {
            assert!(check_slug("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_prefixes() {
        assert_eq!(check_path_prefix("path_prefix", "/docs/").unwrap(), "/docs");
        assert_eq!(check_path_prefix("path_prefix", "/").unwrap(), "/");
        for bad in ["docs", "/a?b", "/a b", "/a//b", "/a/../b", "/%2e"] {
            assert!(check_path_prefix("path_prefix", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams() {
        assert_eq!(check_upstream("http://127.0.0.1:9000").unwrap(), "http://127.0.0.1:9000");
        assert_eq!(check_upstream("http://localhost:9000/").unwrap(), "http://localhost:9000");
        let err = check_upstream("https://x").unwrap_err();
        assert!(err.message.contains("https"));
        for bad in ["ftp://x", "127.0.0.1:9000", "http://x/base", "http://u:p@x", "not a url", ""] {
            assert!(check_upstream(bad).is_err(), "{bad}");
        }
        assert_eq!(check_upstream("http://[::1]:9000").unwrap(), "http://[::1]:9000");
        assert_eq!(check_upstream("http://127.0.0.1:65535").unwrap(), "http://127.0.0.1:65535");
        // A port that is no number from 1 to 65535 reads as none, and the
        // gateway would connect to port 80 instead.
        for bad in ["http://127.0.0.1:99999", "http://127.0.0.1:65536", "http://127.0.0.1:", "http://127.0.0.1:0", "http://[::1]:70000"] {
            let err = check_upstream(bad).unwrap_err();
            assert!(err.message.contains("port"), "{bad}: {}", err.message);
        }
    }
}
