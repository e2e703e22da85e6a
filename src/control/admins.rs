//! Admins: the first owner, tokens for robots, argon2 passwords and
//! sessions for people, and the tenant binding that hides other tenants.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use super::login_throttle::{self, Lockout, Scope};
use super::{check_no_secret, Actor, ControlPlane, FirstAdmin};
use crate::access::Role;
use crate::error::{ApiError, ErrorCode};
use crate::event::{now_ms, security_type, Event, SYSTEM_TENANT};
use crate::keys;
use crate::store::control::{Admin, AdminRemoval, Session};

/// The actor of `admin_login_locked` events.
pub const LOGIN_THROTTLE_ACTOR: &str = "keytrail:login-throttle";

/// Why a sign-in got no session.
#[derive(Debug)]
pub enum LoginRefused {
    /// Too many failed sign-ins for the name or from the address: refused
    /// without the password being checked, for this many more seconds.
    TooManyAttempts { retry_after_secs: u64 },
    /// A wrong name or password (401), or another error.
    Error(ApiError),
}

impl From<ApiError> for LoginRefused {
    fn from(error: ApiError) -> Self {
        LoginRefused::Error(error)
    }
}

/// Why a bearer token on the admin API was not accepted.
#[derive(Debug)]
pub enum BearerRefused {
    /// Too many failed bearer tokens from the address: refused unchecked,
    /// for this many more seconds.
    TooManyAttempts { retry_after_secs: u64 },
    /// No admin token and no live session (401).
    Unknown,
    /// The store failed.
    Error(ApiError),
}

/// How long a session lasts after sign-in.
pub const SESSION_HOURS: i64 = 12;

const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

/// How an admin proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An admin token, by its display form (`kta****abcd`).
    Token(String),
    Session(String),
}

impl Credential {
    /// The form recorded in events: `token:<hint>` or `session:<id>`.
    pub fn describe(&self) -> String {
        match self {
            Credential::Token(hint) => format!("token:{hint}"),
            Credential::Session(id) => format!("session:{id}"),
        }
    }
}

/// What lifting an address's lockouts found.
#[derive(Debug, Clone)]
pub struct AddressLifted {
    /// The address as lockouts count it: `203.0.113.7`, `2001:db8::/64`.
    pub address: String,
    /// Its sign-in (name and password) lockout and failures.
    pub sign_in: login_throttle::Lifted,
    /// Its bearer-token lockout and failures.
    pub bearer: login_throttle::Lifted,
}

impl AddressLifted {
    /// `{"address", "was_locked", "sign_in", "bearer_tokens"}`: the answer,
    /// and the event's details.
    pub fn details(&self) -> serde_json::Value {
        serde_json::json!({
            "address": self.address,
            "was_locked": self.sign_in.locked_until_ms.is_some() || self.bearer.locked_until_ms.is_some(),
            "sign_in": self.sign_in.to_json(),
            "bearer_tokens": self.bearer.to_json(),
        })
    }
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct Signed {
    pub admin: Arc<Admin>,
    pub role: Role,
    pub credential: Credential,
}

pub struct NewAdmin {
    pub name: String,
    pub role: String,
    pub tenant_id: Option<String>,
    /// Given for people (who then sign in); robots get a token instead.
    pub password: Option<String>,
}

fn check_admin_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !ok {
        return Err(ApiError::invalid_body("`name` must be 1-64 characters of letters, digits and `._@-`"));
    }
    check_no_secret("name", name)
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(ApiError::internal)?;
    Ok(Argon2::default().hash_password(password.as_bytes(), &salt).map_err(ApiError::internal)?.to_string())
}

/// Whether `password` matches the PHC string `stored`. A missing or
/// unreadable hash is checked against a fixed one, so an unknown name takes
/// as long to refuse as a wrong password.
fn password_matches(stored: Option<&str>, password: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not the password of anyone").unwrap_or_default());
    let (text, real) = match stored {
        Some(text) => (text, true),
        None => (dummy.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(text) else { return false };
    Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && real
}

impl ControlPlane {
    /// Creates the first owner when the store has no admin, with the
    /// operator's token if one was given, otherwise a generated one, which
    /// `save_generated` keeps (writes to its file) before the owner is
    /// made: were the owner made first and the saving to fail, the store
    /// would hold an owner nobody has the token of, and every later start
    /// would find it and make no other.
    pub fn bootstrap_admin(&self, operator_token: Option<&str>, save_generated: impl FnOnce(&str) -> anyhow::Result<()>) -> anyhow::Result<FirstAdmin> {
        if self.store.count_admins()? > 0 {
            return Ok(FirstAdmin::AlreadyPresent);
        }
        let token = operator_token.map(str::to_string).unwrap_or_else(keys::generate_admin_token);
        crate::redact::register_secret(&token);
        if operator_token.is_none() {
            save_generated(&token)?;
        }
        self.store.create_admin(&Admin {
            id: "adm_bootstrap".into(),
            name: "bootstrap-owner".into(),
            role: Role::Owner.as_str().into(),
            tenant_id: None,
            token_hash: keys::hash_secret(&token),
            password_hash: None,
            created_at: now_ms(),
        })?;
        self.reload()?;
        Ok(match operator_token {
            Some(_) => FirstAdmin::CreatedWithOperatorToken,
            None => FirstAdmin::CreatedWithGeneratedToken,
        })
    }

    fn signed(admin: Arc<Admin>, credential: Credential) -> Option<Signed> {
        let role = Role::parse(&admin.role)?;
        Some(Signed { admin, role, credential })
    }

    /// The admin a bearer token (an admin token or a live session's token)
    /// belongs to.
    pub fn authenticate_admin(&self, token: &str) -> Result<Option<Signed>, ApiError> {
        let hash = keys::hash_secret(token);
        let admins = self.admins.load();
        if let Some((stored, admin)) = admins.get_key_value(&hash) {
            if keys::hashes_equal(stored, &hash) {
                return Ok(Self::signed(admin.clone(), Credential::Token(keys::hint(token))));
            }
        }
        if !token.starts_with(keys::SESSION_TOKEN_PREFIX) {
            return Ok(None);
        }
        let Some(session) = self.store.live_session(&hash, now_ms())? else { return Ok(None) };
        let admin = admins.values().find(|a| a.id == session.admin_id).cloned();
        Ok(admin.and_then(|admin| Self::signed(admin, Credential::Session(session.id))))
    }

    /// Authenticates the bearer of an admin API call from the caller
    /// `actor` describes (its `client_ip`, `user_agent`, `request_id`),
    /// throttled per address like sign-ins ([`login_throttle`]): while the
    /// address is locked out of bearer tokens, every token is refused
    /// unchecked, a valid one too (or the lockout would tell a guesser which
    /// guess was right). A token that names no admin and no live session is
    /// recorded as `admin_login_failed` in the system tenant — never the
    /// token, nor a hint of it, only what it looked like — and counted; each
    /// lockout the failures start is one `admin_login_locked` event.
    pub fn authenticate_bearer(&self, token: &str, actor: &Actor, method: &str, path: &str) -> Result<Signed, BearerRefused> {
        let address = actor.client_ip.as_deref().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let attempt = match address {
            Some(address) => Some(
                self.login_throttle
                    .begin_bearer(address, now_ms())
                    .map_err(|retry_after_secs| BearerRefused::TooManyAttempts { retry_after_secs })?,
            ),
            None => None,
        };
        let signed = self.authenticate_admin(token).map_err(BearerRefused::Error)?;
        if let Some(signed) = signed {
            if let Some(attempt) = attempt {
                attempt.succeeded(now_ms());
            }
            return Ok(signed);
        }
        let bucket = attempt.as_ref().and_then(|a| a.address());
        let lockouts = attempt.map(|a| a.failed(now_ms())).unwrap_or_default();
        let target = "admin_token:unknown";
        let presented = if token.starts_with(keys::ADMIN_TOKEN_PREFIX) {
            "admin_token"
        } else if token.starts_with(keys::SESSION_TOKEN_PREFIX) {
            "session_token"
        } else if token.starts_with("kt_live_") || token.starts_with("kt_test_") {
            "api_key"
        } else {
            "other"
        };
        let mut failed = actor.event(SYSTEM_TENANT, security_type::ADMIN_LOGIN_FAILED, target.to_string());
        failed.outcome = "failure".into();
        failed.actor = None;
        failed.error_code = Some("unauthorized".into());
        failed.method = Some(method.into());
        failed.path = Some(path.to_string());
        failed.details = Some(serde_json::json!({"credential": "bearer", "presented": presented}));
        self.audit.record(failed);
        for lockout in lockouts {
            let mut event = self.lockout_event(&lockout, SYSTEM_TENANT, target, bucket, actor);
            if let Some(details) = event.details.as_mut() {
                details["credential"] = serde_json::json!("bearer");
            }
            self.audit.record(event);
        }
        Err(BearerRefused::Unknown)
    }

    /// The tenant an admin is bound to (`Some(None)` for a global admin),
    /// or `None` when there is no such admin.
    pub fn admin_binding(&self, admin_id: &str) -> Option<Option<String>> {
        self.admins.load().values().find(|a| a.id == admin_id).map(|a| a.tenant_id.clone())
    }

    /// Creates an admin. People (with a password) sign in for sessions;
    /// robots get a token, returned here once.
    pub fn create_admin(&self, new: NewAdmin, actor: &Actor) -> Result<(Admin, Option<String>), ApiError> {
        check_admin_name(&new.name)?;
        let role = Role::parse(&new.role)
            .ok_or_else(|| ApiError::invalid_body("`role` must be one of `owner`, `admin`, `auditor`, `viewer`"))?;
        match (&actor.tenant_scope, &new.tenant_id) {
            (Some(_), None) => {
                return Err(ApiError::new(ErrorCode::Forbidden, "a tenant-bound admin can only create admins bound to its own tenant"))
            }
            (_, Some(tenant)) if !actor.sees(tenant) => return Err(ApiError::not_found(format_args!("tenant `{tenant}`"))),
            (_, Some(tenant)) => self.require_tenant(tenant)?,
            (None, None) => {}
        }
        if let Some(password) = &new.password {
            if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&password.chars().count()) {
                return Err(ApiError::invalid_body(format!("`password` must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")));
            }
            if password.chars().all(char::is_whitespace) {
                return Err(ApiError::invalid_body("`password` must not be only white space"));
            }
        }
        let token = keys::generate_admin_token();
        let admin = Admin {
            id: keys::generate_id("adm"),
            name: new.name,
            role: role.as_str().into(),
            tenant_id: new.tenant_id,
            token_hash: keys::hash_secret(&token),
            password_hash: new.password.as_deref().map(hash_password).transpose()?,
            created_at: now_ms(),
        };
        self.store.create_admin(&admin)?;
        self.reload_after_change()?;
        // People get no token: the one hashed above is never shown.
        let shown = admin.password_hash.is_none().then_some(token);
        Ok((admin, shown))
    }

    /// The admins the actor may see: all for a global admin, its own
    /// tenant's for a tenant-bound one.
    pub fn list_admins(&self, actor: &Actor) -> Vec<Admin> {
        let mut admins: Vec<Admin> = self
            .admins
            .load()
            .values()
            .filter(|a| a.tenant_id.as_deref().is_some_and(|t| actor.sees(t)) || actor.tenant_scope.is_none())
            .map(|a| (**a).clone())
            .collect();
        admins.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        admins
    }

    /// The admin `admin_id`, if the actor may see it (a tenant-bound
    /// actor sees its tenant's admins only); otherwise the same 404 as
    /// for an id no admin has.
    fn visible_admin(&self, admin_id: &str, actor: &Actor) -> Result<Admin, ApiError> {
        let not_found = || ApiError::not_found(format_args!("admin `{admin_id}`"));
        let admins = self.admins.load();
        let admin = admins.values().find(|a| a.id == admin_id).ok_or_else(not_found)?;
        let visible = match &admin.tenant_id {
            Some(tenant) => actor.sees(tenant),
            None => actor.tenant_scope.is_none(),
        };
        if !visible {
            return Err(not_found());
        }
        Ok((**admin).clone())
    }

    /// Lifts the sign-in lockout of an admin's name before it ends, and
    /// forgets the name's failed sign-ins (an owner unlocking a colleague
    /// who mistyped a password). Recorded as an `admin_login_unlocked`
    /// security event in the admin's tenant (or the system tenant), where
    /// its lockout was recorded. The addresses' counts stay: an address
    /// locked out is a guesser's, whichever names it tried.
    pub fn unlock_admin(&self, admin_id: &str, actor: &Actor) -> Result<(Admin, login_throttle::Lifted), ApiError> {
        let admin = self.visible_admin(admin_id, actor)?;
        let lifted = self.login_throttle.lift_name(&admin.name, now_ms());
        let tenant = admin.tenant_id.clone().unwrap_or_else(|| SYSTEM_TENANT.into());
        let mut event = actor.event(&tenant, security_type::ADMIN_LOGIN_UNLOCKED, format!("admin:{}", admin.id));
        event.details = Some(lifted.to_json());
        self.audit.record(event);
        Ok((admin, lifted))
    }

    /// Lifts the lockouts of a client address (its /64 for IPv6) before
    /// they end — of sign-ins and of bearer tokens — and forgets its
    /// failures: an owner whose own address a misconfigured script locked
    /// out. Global owners only (the route says so): an address's lockout
    /// holds for every tenant. Recorded as an `admin_login_unlocked`
    /// security event in the system tenant, aimed at `ip:<address>`, where
    /// the address's lockouts are recorded.
    pub fn unlock_address(&self, address: &str, actor: &Actor) -> Result<AddressLifted, ApiError> {
        let ip: std::net::IpAddr = address.parse().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidParameter,
                "the address must be one IPv4 or IPv6 address, e.g. 203.0.113.7 or 2001:db8::1 (any address of an IPv6 /64 lifts the /64)",
            )
        })?;
        let (bucket, sign_in, bearer) = self.login_throttle.lift_address(ip, now_ms());
        let lifted = AddressLifted { address: login_throttle::describe_bucket(bucket), sign_in, bearer };
        let mut event = actor.event(SYSTEM_TENANT, security_type::ADMIN_LOGIN_UNLOCKED, format!("ip:{}", lifted.address));
        event.details = Some(lifted.details());
        self.audit.record(event);
        Ok(lifted)
    }

    /// Removes an admin and ends its sessions. The last global owner stays.
    pub fn delete_admin(&self, admin_id: &str, actor: &Actor) -> Result<Admin, ApiError> {
        let not_found = || ApiError::not_found(format_args!("admin `{admin_id}`"));
        let admin = self.visible_admin(admin_id, actor)?;
        // The last-owner rule is the store's, in the removal's transaction:
        // removals at once cannot each see another owner left.
        match self.store.delete_admin(admin_id, now_ms())? {
            AdminRemoval::Removed => {}
            AdminRemoval::Missing => return Err(not_found()),
            AdminRemoval::LastGlobalOwner => return Err(ApiError::new(ErrorCode::Conflict, "the last global owner cannot be removed")),
        }
        self.reload_after_change()?;
        Ok(admin)
    }

    /// Signs a person in: a session token (returned once) for `SESSION_HOURS`.
    /// Every attempt whose password is checked is recorded as `admin_login`
    /// or `admin_login_failed` in the admin's tenant (or the system tenant);
    /// each lockout the failures start as `admin_login_locked`. An attempt
    /// for a name or from an address that is locked out is refused before
    /// its password is checked, and counted, not recorded.
    pub fn login(&self, name: &str, password: &str, actor: &Actor) -> Result<(Signed, Session, String), LoginRefused> {
        let address = actor.client_ip.as_deref().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
        let attempt = self
            .login_throttle
            .begin(name, address, now_ms())
            .map_err(|retry_after_secs| LoginRefused::TooManyAttempts { retry_after_secs })?;
        let admin = self.admins.load().values().find(|a| a.name == name).cloned();
        let matches = password_matches(admin.as_ref().and_then(|a| a.password_hash.as_deref()), password);
        let tenant = admin.as_ref().and_then(|a| a.tenant_id.clone()).unwrap_or_else(|| SYSTEM_TENANT.into());
        let signed = admin.clone().filter(|_| matches).and_then(|a| Self::signed(a, Credential::Session(String::new())));
        let Some(mut signed) = signed else {
            // An unknown name is not recorded: people type passwords into it.
            let target = match &admin {
                Some(admin) => format!("admin:{}", admin.id),
                None => "admin_name:unknown".to_string(),
            };
            let bucket = attempt.address();
            let lockouts = attempt.failed(now_ms());
            let mut failed = actor.event(&tenant, security_type::ADMIN_LOGIN_FAILED, target.clone());
            let mut logged = actor.admin_event(&tenant, "ADMIN_LOGIN_FAILED", "failure", target.clone(), serde_json::Value::Null);
            for event in [&mut failed, &mut logged] {
                event.outcome = "failure".into();
                event.actor = None;
                event.error_code = Some("invalid_credentials".into());
            }
            self.audit.record(failed);
            self.audit.record(logged);
            for lockout in lockouts {
                self.audit.record(self.lockout_event(&lockout, &tenant, &target, bucket, actor));
            }
            return Err(ApiError::new(ErrorCode::Unauthorized, "the name or the password is wrong").into());
        };
        attempt.succeeded(now_ms());
        let token = keys::generate_session_token();
        let now = now_ms();
        let session = Session {
            id: keys::generate_id("ses"),
            admin_id: signed.admin.id.clone(),
            created_at: now,
            expires_at: now + SESSION_HOURS * 3_600_000,
        };
        self.store.create_session(&session, &keys::hash_secret(&token)).map_err(ApiError::from)?;
        signed.credential = Credential::Session(session.id.clone());
        let actor = Actor { admin_id: signed.admin.id.clone(), credential: signed.credential.describe(), ..actor.clone() };
        let target = format!("admin:{}", signed.admin.id);
        let mut event = actor.event(&tenant, security_type::ADMIN_LOGIN, target.clone());
        event.details = Some(serde_json::json!({"session_id": session.id}));
        self.audit.record(event);
        self.audit.record(actor.admin_event(&tenant, "ADMIN_LOGIN", "success", target, serde_json::Value::Null));
        Ok((signed, session, token))
    }

    /// The security event of a lockout's start, made by keytrail itself (as
    /// the gateway's automatic brute-force block is): a name's in the
    /// tenant its failed sign-ins are recorded in, aimed at the same target;
    /// an address's in the system tenant, aimed at `ip:<address>`.
    fn lockout_event(&self, lockout: &Lockout, tenant: &str, target: &str, bucket: Option<std::net::IpAddr>, actor: &Actor) -> Event {
        let (tenant, target) = match (lockout.scope, bucket) {
            (Scope::Address, Some(bucket)) => (SYSTEM_TENANT, format!("ip:{}", login_throttle::describe_bucket(bucket))),
            _ => (tenant, target.to_string()),
        };
        let mut event = actor.event(tenant, security_type::ADMIN_LOGIN_LOCKED, target);
        event.actor = Some(LOGIN_THROTTLE_ACTOR.into());
        event.details = Some(serde_json::json!({
            "scope": lockout.scope.as_str(),
            "failures": lockout.failures,
            "window_secs": self.login_throttle.window_secs(),
            "lockout_secs": self.login_throttle.lockout_secs(),
            "expires_at": crate::event::format_timestamp(lockout.until_ms),
        }));
        event
    }

    /// Ends the session the actor signed in with, and records it.
    pub fn logout(&self, session_id: &str, actor: &Actor) -> Result<(), ApiError> {
        self.store.end_session(session_id, now_ms())?;
        let tenant = actor.tenant_scope.clone().unwrap_or_else(|| SYSTEM_TENANT.into());
        let target = format!("admin:{}", actor.admin_id);
        self.audit.record(actor.admin_event(&tenant, "ADMIN_LOGOUT", "success", target, serde_json::Value::Null));
        Ok(())
    }
}
