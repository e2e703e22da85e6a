//! Who may do what on the admin API: roles, the permissions they hold, and
//! the one table that names, for every admin route, the permission it needs,
//! whether it is reserved to global admins, and the action name its changes
//! are recorded under in the admin activity log.
//!
//! Architecture invariant: a route missing from [`ROUTES`] is refused for
//! everyone (deny by default), and the table-driven test in
//! `tests/it/roles.rs` calls every route in it with every role.
//!
//! This module does no IO.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including managing admins and keeping fewer audit
    /// events or keeping them for less time.
    Owner,
    /// Every change to tenants' configuration and keys; reads logs.
    Admin,
    /// Reads configuration, logs and exports; changes nothing.
    Auditor,
    /// Reads configuration and aggregates; never raw events.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Auditor, Role::Viewer];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Owner => true,
            // Erasure destroys audit data for good, and shortening retention or
            // switching logging off lets an admin's own actions leave the
            // trail: owners only.
            Role::Admin => matches!(permission, Signed | ReadConfig | ReadEvents | Change | WriteEvents),
            Role::Auditor => matches!(permission, Signed | ReadConfig | ReadEvents),
            Role::Viewer => matches!(permission, Signed | ReadConfig),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Any signed-in admin (who am I, log out).
    Signed,
    /// Configuration and aggregates: tenants, apis, consumers, keys (never
    /// their secrets), tiers, blocklists, settings.
    ReadConfig,
    /// Raw audit events: lists, exports, the admin log, application events.
    ReadEvents,
    /// Any change to configuration or keys.
    Change,
    /// Submitting application audit events.
    WriteEvents,
    /// Creating, listing and removing admins, and lifting their sign-in
    /// lockouts.
    ManageAdmins,
    /// Erasing a data subject's personal values from the audit trail.
    ErasePersonalData,
    /// Changing settings so that fewer audit events are kept, or kept for
    /// less time: lowering `hot_days` or `archive_days`, switching a
    /// logging setting off, lowering the sample rate. Not a route's rule:
    /// the control plane checks it against the values a change would give
    /// (see [`crate::control::Actor::role`]).
    ReduceAuditTrail,
}

/// What a route needs.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    /// The route as the router declares it (`/v1/tenants/{tenant}/apis`).
    pub route: &'static str,
    pub permission: Permission,
    /// Only admins bound to no tenant may call it (it reads or changes
    /// something no single tenant owns).
    pub global_only: bool,
    /// The activity-log action a change through this route is recorded
    /// under; `None` for reads and for routes that record their own events.
    pub action: Option<&'static str>,
}

const fn rule(method: &'static str, route: &'static str, permission: Permission, action: Option<&'static str>) -> Rule {
    Rule { method, route, permission, global_only: false, action }
}

const fn global(method: &'static str, route: &'static str, permission: Permission, action: Option<&'static str>) -> Rule {
    Rule { method, route, permission, global_only: true, action }
}

use Permission::*;

/// Every authenticated admin route. Tenant-scoped routes carry `{tenant}`:
/// an admin bound to another tenant gets the same 404 as for a tenant that
/// does not exist.
pub const ROUTES: &[Rule] = &[
    rule("GET", "/v1/me", Signed, None),
    rule("POST", "/v1/auth/logout", Signed, None),
    rule("GET", "/v1/admins", ManageAdmins, None),
    rule("POST", "/v1/admins", ManageAdmins, Some("ADMIN_CREATED")),
    rule("POST", "/v1/admins/{admin_id}/unlock", ManageAdmins, Some("ADMIN_UNLOCKED")),
    rule("DELETE", "/v1/admins/{admin_id}", ManageAdmins, Some("ADMIN_DELETED")),
    global("POST", "/v1/addresses/{address}/unlock", ManageAdmins, Some("ADDRESS_UNLOCKED")),
    global("GET", "/v1/status", ReadConfig, None),
    rule("GET", "/v1/tenants", ReadConfig, None),
    global("POST", "/v1/tenants", Change, Some("TENANT_CREATED")),
    rule("GET", "/v1/tenants/{tenant}/apis", ReadConfig, None),
    rule("POST", "/v1/tenants/{tenant}/apis", Change, Some("API_CREATED")),
    rule("PUT", "/v1/tenants/{tenant}/apis/{api}/policies", Change, Some("API_POLICIES_CHANGED")),
    rule("GET", "/v1/tenants/{tenant}/consumers", ReadConfig, None),
    rule("POST", "/v1/tenants/{tenant}/consumers", Change, Some("CONSUMER_CREATED")),
    rule("PUT", "/v1/tenants/{tenant}/consumers/{consumer}/tier", Change, Some("CONSUMER_TIER_CHANGED")),
    rule("POST", "/v1/tenants/{tenant}/consumers/{consumer}/suspend", Change, Some("CONSUMER_SUSPENDED")),
    rule("POST", "/v1/tenants/{tenant}/consumers/{consumer}/reactivate", Change, Some("CONSUMER_REACTIVATED")),
    rule("POST", "/v1/tenants/{tenant}/consumers/{consumer}/erase", ErasePersonalData, Some("PERSONAL_DATA_ERASED")),
    rule("GET", "/v1/tenants/{tenant}/consumers/{consumer}/keys", ReadConfig, None),
    rule("POST", "/v1/tenants/{tenant}/consumers/{consumer}/keys", Change, Some("KEY_CREATED")),
    rule("GET", "/v1/keys/{key_id}", ReadConfig, None),
    rule("POST", "/v1/keys/{key_id}/revoke", Change, Some("KEY_REVOKED")),
    rule("POST", "/v1/keys/{key_id}/rotate", Change, Some("KEY_ROTATED")),
    rule("PUT", "/v1/keys/{key_id}/scopes", Change, Some("KEY_SCOPES_CHANGED")),
    rule("GET", "/v1/tenants/{tenant}/tiers", ReadConfig, None),
    rule("POST", "/v1/tenants/{tenant}/tiers", Change, Some("TIER_CREATED")),
    rule("PUT", "/v1/tenants/{tenant}/tiers/{tier}", Change, Some("TIER_CHANGED")),
    rule("DELETE", "/v1/tenants/{tenant}/tiers/{tier}", Change, Some("TIER_DELETED")),
    rule("GET", "/v1/tenants/{tenant}/alerts", ReadConfig, None),
    rule("POST", "/v1/tenants/{tenant}/alerts", Change, Some("ALERT_RULE_CREATED")),
    rule("GET", "/v1/tenants/{tenant}/alerts/{rule}", ReadConfig, None),
    rule("PUT", "/v1/tenants/{tenant}/alerts/{rule}", Change, Some("ALERT_RULE_CHANGED")),
    rule("POST", "/v1/tenants/{tenant}/alerts/{rule}/rotate-secret", Change, Some("ALERT_SECRET_ROTATED")),
    rule("DELETE", "/v1/tenants/{tenant}/alerts/{rule}", Change, Some("ALERT_RULE_DELETED")),
    global("GET", "/v1/blocklist", ReadConfig, None),
    global("POST", "/v1/blocklist", Change, Some("BLOCKLIST_ENTRY_ADDED")),
    global("DELETE", "/v1/blocklist/{id}", Change, Some("BLOCKLIST_ENTRY_REMOVED")),
    rule("GET", "/v1/tenants/{tenant}/blocklist", ReadConfig, None),
    rule("POST", "/v1/tenants/{tenant}/blocklist", Change, Some("BLOCKLIST_ENTRY_ADDED")),
    rule("DELETE", "/v1/tenants/{tenant}/blocklist/{id}", Change, Some("BLOCKLIST_ENTRY_REMOVED")),
    global("GET", "/api/v1/settings/logging", ReadConfig, None),
    global("PUT", "/api/v1/settings/logging", Change, Some("SETTINGS_CHANGED")),
    rule("GET", "/v1/tenants/{tenant}/settings/logging", ReadConfig, None),
    rule("PUT", "/v1/tenants/{tenant}/settings/logging", Change, Some("SETTINGS_CHANGED")),
    global("GET", "/api/v1/settings/retention", ReadConfig, None),
    global("PUT", "/api/v1/settings/retention", Change, Some("SETTINGS_CHANGED")),
    rule("GET", "/v1/tenants/{tenant}/settings/retention", ReadConfig, None),
    rule("PUT", "/v1/tenants/{tenant}/settings/retention", Change, Some("SETTINGS_CHANGED")),
    rule("GET", "/v1/audit/{tenant}", ReadEvents, None),
    rule("GET", "/v1/audit/{tenant}/security", ReadEvents, None),
    rule("GET", "/v1/audit/{tenant}/export/csv", ReadEvents, None),
    rule("GET", "/v1/audit/{tenant}/export/json", ReadEvents, None),
    rule("GET", "/v1/audit/{tenant}/admin", ReadEvents, None),
    rule("GET", "/v1/audit/{tenant}/verify", ReadEvents, None),
    rule("GET", "/v1/audit/{tenant}/events", ReadEvents, None),
    rule("POST", "/v1/audit/{tenant}/events", WriteEvents, None),
    // Aggregates, never raw events: viewers too.
    rule("GET", "/v1/audit/{tenant}/stats", ReadConfig, None),
    rule("GET", "/v1/audit/{tenant}/stats/timeline", ReadConfig, None),
    rule("GET", "/v1/audit/{tenant}/stats/consumers/{consumer}", ReadConfig, None),
];

/// The rule for a request, by method and matched route. `HEAD` is `GET`
/// without the body (the router answers it with the `GET` handler), so it
/// needs what `GET` needs.
pub fn rule_for(method: &str, route: &str) -> Option<&'static Rule> {
    let method = if method == "HEAD" { "GET" } else { method };
    ROUTES.iter().find(|r| r.method == method && r.route == route)
}

/// The value a route's `{name}` segment has in `path`, percent-decoding
/// nothing: ids are slugs, and a segment that needed decoding matches no id.
pub fn path_param<'p>(route: &str, path: &'p str, name: &str) -> Option<&'p str> {
    let wanted = format!("{{{name}}}");
    let index = route.split('/').position(|segment| segment == wanted)?;
    path.split('/').nth(index)
}

/// The first `{name}` segment of `path` whose percent-escapes decode to no
/// UTF-8 text, with the segment as sent: an id no object can have (the
/// router would refuse it in plain text).
pub fn undecodable_param<'r, 'p>(route: &'r str, path: &'p str) -> Option<(&'r str, &'p str)> {
    route.split('/').zip(path.split('/')).find_map(|(pattern, segment)| {
        let name = pattern.strip_prefix('{')?.strip_suffix('}')?;
        // Invalid escapes are left as they are (lenient).
        let decoded = crate::protection::percent_decode_bytes(segment, false, true)?;
        std::str::from_utf8(&decoded).is_err().then_some((name, segment))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest() {
        // Each role holds everything the next one down holds.
        let permissions = [Signed, ReadConfig, ReadEvents, Change, WriteEvents, ManageAdmins, ErasePersonalData, ReduceAuditTrail];
        for pair in Role::ALL.windows(2) {
            for p in permissions {
                assert!(!pair[1].allows(p) || pair[0].allows(p), "{:?} allows {p:?} but {:?} does not", pair[1], pair[0]);
            }
        }
        assert!(!Role::Viewer.allows(ReadEvents));
        assert!(!Role::Auditor.allows(Change));
        assert!(!Role::Admin.allows(ManageAdmins));
        assert!(!Role::Admin.allows(ReduceAuditTrail) && Role::Owner.allows(ReduceAuditTrail));
        assert_eq!(Role::parse("auditor"), Some(Role::Auditor));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn routes_are_unique_and_changes_are_named() {
        for (i, a) in ROUTES.iter().enumerate() {
            assert!(ROUTES[i + 1..].iter().all(|b| (a.method, a.route) != (b.method, b.route)), "{} {} twice", a.method, a.route);
            let changes = a.method != "GET" && !matches!(a.permission, Signed | WriteEvents);
            assert_eq!(changes, a.action.is_some(), "{} {}", a.method, a.route);
        }
    }

    #[test]
    fn path_params_follow_the_route() {
        let route = "/v1/tenants/{tenant}/consumers/{consumer}/keys";
        assert_eq!(path_param(route, "/v1/tenants/acme/consumers/c1/keys", "tenant"), Some("acme"));
        assert_eq!(path_param(route, "/v1/tenants/acme/consumers/c1/keys", "consumer"), Some("c1"));
        assert_eq!(path_param(route, "/v1/tenants/acme/consumers/c1/keys", "key_id"), None);
        assert_eq!(undecodable_param(route, "/v1/tenants/acme/consumers/c%C3%A9/keys"), None);
        assert_eq!(undecodable_param(route, "/v1/tenants/acme/consumers/c%E9/keys"), Some(("consumer", "c%E9")));
        assert_eq!(undecodable_param(route, "/v1/tenants/%FF/consumers/c1/keys"), Some(("tenant", "%FF")));
    }
}
