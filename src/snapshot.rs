//! The gateway's in-memory view of routes and keys.
//!
//! Built from the control store after every change and swapped in atomically
//! (`arc_swap`), so a request reads a consistent snapshot with no lock and no
//! store query. A revoked key is gone from the next snapshot, which is in
//! place before the revoke call answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::keys::SecretHash;
use crate::text::Text;
use crate::policy::Policies;
use crate::protection::Blocklist;
use crate::ratelimit::{CostRule, DailyCap, RateLimit, TierLimits};
use crate::store::control::{RoutingData, Tier};

/// An api as the gateway routes to it.
#[derive(Debug)]
pub struct RouteApi {
    pub tenant_id: Text,
    pub api_id: Text,
    pub path_prefix: String,
    pub upstream_scheme: http::uri::Scheme,
    pub upstream_authority: http::uri::Authority,
    /// The `Host` header sent upstream, made once per snapshot.
    pub host_header: http::HeaderValue,
    pub timeout: Option<Duration>,
    /// The api's own per-minute limit per consumer.
    pub rate_limit: Option<Arc<RateLimit>>,
    pub costs: Vec<CostRule>,
    pub policies: Policies,
}

/// What the gateway knows about a key: enough to decide and to log, never the secret.
#[derive(Debug)]
pub struct KeyEntry {
    pub key_id: Text,
    pub tenant_id: Text,
    pub consumer_id: Text,
    pub consumer_name: Text,
    /// `consumer:{consumer_id}`, the actor of the key's events.
    pub actor: Text,
    /// The `X-Consumer-Id` header sent upstream, made once per snapshot.
    pub consumer_header: http::HeaderValue,
    pub consumer_active: bool,
    pub hint: Text,
    pub scopes: Vec<String>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    /// The consumer's tier limits, if it has a tier.
    pub tier: Option<Arc<TierLimits>>,
    /// When the key last authenticated a call for one of its tenant's apis
    /// (proxied or verified; a call then refused by a policy, a rate limit
    /// or a suspended consumer counts, a blocked key's does not); carried
    /// from snapshot to snapshot and written to the store in batches,
    /// never per request.
    pub usage: Arc<KeyUsage>,
}

/// A key's last use in memory, and the last value written to the store.
#[derive(Debug, Default)]
pub struct KeyUsage {
    last_used_ms: AtomicI64,
    stored_ms: AtomicI64,
}

impl KeyUsage {
    /// Notes a use at `now_ms`; at most one write to the shared value per
    /// second, so a hot key's callers do not fight over the cache line.
    pub fn touch(&self, now_ms: i64) {
        if self.last_used_ms.load(Ordering::Relaxed) / 1000 != now_ms / 1000 {
            self.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    pub fn last_used_ms(&self) -> Option<i64> {
        Some(self.last_used_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// The use to write to the store, if there is a newer one than the last written.
    pub fn unstored(&self) -> Option<i64> {
        let last = self.last_used_ms.load(Ordering::Relaxed);
        (last > self.stored_ms.load(Ordering::Relaxed)).then_some(last)
    }

    pub fn mark_stored(&self, at_ms: i64) {
        self.stored_ms.fetch_max(at_ms, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Snapshot {
    /// Longest prefix first, so the first match is the most specific.
    routes: Vec<Arc<RouteApi>>,
    /// For each of `routes`, the positions of the longer prefixes of the
    /// same tenant that lie under its prefix when letter case is ignored
    /// (`/docs/admin` under `/docs`), most specific first; empty for most.
    nested: Vec<Vec<usize>>,
    /// The same apis by tenant, then api id (api ids are per tenant), for
    /// key verification, which names an api instead of calling a path.
    apis: HashMap<Text, HashMap<Text, Arc<RouteApi>>>,
    /// Hashed with Fx, not SipHash: the map's keys are SHA-256 outputs and
    /// only the operator adds them, so there is nothing to flood, and each
    /// call looks a key up (SipHash cost ~270 instructions of it).
    keys: rustc_hash::FxHashMap<SecretHash, Arc<KeyEntry>>,
    /// By (tenant, tier id).
    tiers: HashMap<(String, String), Arc<TierLimits>>,
    /// The global blocklist, and each tenant's.
    pub global_blocks: Blocklist,
    tenant_blocks: HashMap<String, Blocklist>,
    /// How presented keys are hashed to be looked up (the operator's pepper).
    hasher: crate::keys::KeyHasher,
}

/// A tier's limiters: the previous snapshot's when the tier did not change
/// (so counters survive unrelated changes), otherwise new ones; new ones
/// too for the tier `fresh` names (its limits were just replaced, maybe by
/// the same values: its consumers start afresh).
fn tier_limits(tier: &Tier, previous: &Snapshot, fresh: Option<(&str, &str)>) -> Arc<TierLimits> {
    let key = (tier.tenant_id.clone(), tier.id.clone());
    let replaced = fresh == Some((tier.tenant_id.as_str(), tier.id.as_str()));
    if let Some(old) = previous.tiers.get(&key).filter(|_| !replaced) {
        if old.rate.as_ref().map(|r| r.spec) == tier.rate() && old.daily.as_ref().map(|d| d.limit) == tier.daily_quota {
            return old.clone();
        }
    }
    Arc::new(TierLimits { id: tier.id.clone(), rate: tier.rate().and_then(RateLimit::new), daily: tier.daily_quota.map(DailyCap::new) })
}

/// Whether `path` is under `prefix`, on a segment boundary: `/docs` serves
/// `/docs` and `/docs/x` but not `/docsearch`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) && ends_a_segment(prefix, path)
}

/// [`prefix_matches`] without regard to ASCII letter case.
pub fn prefix_matches_ignoring_case(prefix: &str, path: &str) -> bool {
    path.as_bytes().get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())) && ends_a_segment(prefix, path)
}

/// Whether `prefix`, which `path` starts with, ends on a segment boundary of it.
fn ends_a_segment(prefix: &str, path: &str) -> bool {
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

impl Snapshot {
    /// Builds the snapshot of `data`, keeping `previous`'s limiter state
    /// where the limits did not change.
    pub fn build(data: RoutingData, previous: &Snapshot) -> Snapshot {
        Snapshot::build_with_fresh_tier(data, previous, None)
    }

    /// [`Snapshot::build`], with new limiters for the tier `fresh` names
    /// (tenant, tier id) whatever its limits: they were just replaced.
    pub fn build_with_fresh_tier(data: RoutingData, previous: &Snapshot, fresh: Option<(&str, &str)>) -> Snapshot {
        let old_api_limit = |tenant: &str, api: &str, spec| {
            previous
                .routes
                .iter()
                .find(|r| r.tenant_id == tenant && r.api_id == api)
                .and_then(|r| r.rate_limit.clone())
                .filter(|l| Some(l.spec) == spec)
        };
        let mut routes: Vec<Arc<RouteApi>> = data
            .apis
            .into_iter()
            .filter_map(|api| {
                let uri: http::Uri = match api.upstream.parse() {
                    Ok(uri) => uri,
                    Err(error) => {
                        tracing::error!(api = %api.id, %error, "stored upstream does not parse; api skipped");
                        return None;
                    }
                };
                let parts = uri.into_parts();
                let authority = parts.authority?;
                let host_header = http::HeaderValue::from_str(authority.as_str()).ok()?;
                let rate_limit = old_api_limit(&api.tenant_id, &api.id, api.rate_limit)
                    .or_else(|| api.rate_limit.and_then(RateLimit::new).map(Arc::new));
                Some(Arc::new(RouteApi {
                    rate_limit,
                    costs: api.costs,
                    policies: api.policies,
                    tenant_id: api.tenant_id.into(),
                    api_id: api.id.into(),
                    path_prefix: api.path_prefix,
                    upstream_scheme: parts.scheme?,
                    upstream_authority: authority,
                    host_header,
                    timeout: api.timeout_ms.map(Duration::from_millis),
                }))
            })
            .collect();
        routes.sort_by(|a, b| b.path_prefix.len().cmp(&a.path_prefix.len()).then(a.path_prefix.cmp(&b.path_prefix)));
        // Compared within each tenant only (its apis, in `routes` order).
        let mut by_tenant: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            by_tenant.entry(route.tenant_id.as_str()).or_default().push(i);
        }
        let nested = routes
            .iter()
            .map(|outer| {
                by_tenant[outer.tenant_id.as_str()]
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let inner = &routes[i];
                        inner.path_prefix.len() > outer.path_prefix.len() && prefix_matches_ignoring_case(&outer.path_prefix, &inner.path_prefix)
                    })
                    .collect()
            })
            .collect();
        let mut apis: HashMap<Text, HashMap<Text, Arc<RouteApi>>> = HashMap::new();
        for route in &routes {
            apis.entry(route.tenant_id.clone()).or_default().insert(route.api_id.clone(), route.clone());
        }

        let tiers: HashMap<(String, String), Arc<TierLimits>> =
            data.tiers.iter().map(|t| ((t.tenant_id.clone(), t.id.clone()), tier_limits(t, previous, fresh))).collect();
        let consumers: HashMap<&str, (&str, bool, Option<Arc<TierLimits>>)> = data
            .consumers
            .iter()
            .map(|c| {
                let tier = c.tier.as_ref().and_then(|t| tiers.get(&(c.tenant_id.clone(), t.clone())).cloned());
                (c.id.as_str(), (c.name.as_str(), c.status == "active", tier))
            })
            .collect();
        let keys = data
            .keys
            .into_iter()
            .filter_map(|k| {
                let (name, active, tier) = consumers.get(k.consumer_id.as_str()).cloned()?;
                let consumer_header = http::HeaderValue::from_str(&k.consumer_id).ok()?;
                let usage = previous.keys.get(&k.hash).map(|old| old.usage.clone()).unwrap_or_default();
                Some((
                    k.hash,
                    Arc::new(KeyEntry {
                        consumer_name: name.into(),
                        actor: format!("consumer:{}", k.consumer_id).into(),
                        consumer_header,
                        consumer_active: active,
                        revoked: k.status == "revoked",
                        key_id: k.key_id.into(),
                        tenant_id: k.tenant_id.into(),
                        consumer_id: k.consumer_id.into(),
                        hint: k.hint.into(),
                        scopes: k.scopes,
                        expires_at_ms: k.expires_at,
                        tier,
                        usage,
                    }),
                ))
            })
            .collect();
        let (global, tenant): (Vec<_>, Vec<_>) = data.blocks.into_iter().partition(|e| e.tenant_id.is_none());
        let mut by_tenant: HashMap<String, Vec<_>> = HashMap::new();
        for entry in tenant {
            by_tenant.entry(entry.tenant_id.clone().unwrap_or_default()).or_default().push(entry);
        }
        let tenant_blocks = by_tenant.into_iter().map(|(t, entries)| (t, Blocklist::build(entries))).collect();
        Snapshot { routes, nested, apis, keys, tiers, global_blocks: Blocklist::build(global), tenant_blocks, hasher: previous.hasher.clone() }
    }

    /// A tenant's own blocklist, if it has one.
    pub fn tenant_blocks(&self, tenant: &str) -> Option<&Blocklist> {
        self.tenant_blocks.get(tenant)
    }

    /// The live blocklist entry for `key_id`, global first, then `tenant`'s.
    pub fn key_block(&self, tenant: &str, key_id: &str, now_ms: i64) -> Option<Arc<crate::protection::Entry>> {
        self.global_blocks.match_key(key_id, now_ms).or_else(|| self.tenant_blocks(tenant)?.match_key(key_id, now_ms))
    }

    /// The api serving `path`, most specific prefix first. When an api of
    /// the same tenant is nested inside the one the path names as sent, the
    /// path is also read as an upstream may resolve it (percent-decoded,
    /// `//` and `.` segments and `;` parameters dropped, letter case
    /// ignored, as forbidden paths are): `/docs//admin`, `/docs/%61dmin`,
    /// `/docs/admin;x` and `/docs/ADMIN` are served by an api at
    /// `/docs/admin`, whose key, policies and limits a spelling must not
    /// step around. (Another tenant's api never takes a call this way.)
    pub fn route(&self, path: &str) -> Option<&Arc<RouteApi>> {
        let at = self.routes.iter().position(|r| prefix_matches(&r.path_prefix, path))?;
        let nested = &self.nested[at];
        if nested.is_empty() {
            return Some(&self.routes[at]);
        }
        let resolved = crate::policy::normalized_path(path);
        let resolved = resolved.as_deref().unwrap_or(path);
        let inner = nested.iter().map(|&i| &self.routes[i]).find(|r| prefix_matches_ignoring_case(&r.path_prefix, resolved));
        Some(inner.unwrap_or(&self.routes[at]))
    }

    /// The api `api_id` of `tenant`, if it exists (and its upstream parsed).
    pub fn api(&self, tenant: &str, api_id: &str) -> Option<&Arc<RouteApi>> {
        self.apis.get(tenant)?.get(api_id)
    }

    /// The key with this hash, compared in constant time once found.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<KeyEntry>> {
        self.keys.values()
    }

    pub fn key(&self, hash: &SecretHash) -> Option<&Arc<KeyEntry>> {
        self.keys.get_key_value(hash).filter(|(stored, _)| crate::keys::hashes_equal(stored, hash)).map(|(_, k)| k)
    }

    /// The key a caller presented, by the hashes it may be stored under
    /// (see [`crate::keys::KeyHasher::lookups`]).
    pub fn key_for_secret(&self, secret: &str) -> Option<&Arc<KeyEntry>> {
        // Without a pepper, one plain hash, as before there were peppers.
        if !self.hasher.is_peppered() {
            return self.key(&crate::keys::hash_secret(secret));
        }
        self.hasher.lookups(secret).find_map(|hash| self.key(&hash))
    }

    /// An empty snapshot that hashes presented keys with `hasher`; every
    /// snapshot built after it keeps the hasher.
    pub fn hashing_with(hasher: crate::keys::KeyHasher) -> Snapshot {
        Snapshot { hasher, ..Snapshot::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/docs", "/docs"));
        assert!(prefix_matches("/docs", "/docs/a/b"));
        assert!(!prefix_matches("/docs", "/docsearch"));
        assert!(!prefix_matches("/docs", "/doc"));
        assert!(prefix_matches("/docs/", "/docs/x"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn the_longest_prefix_wins() {
        use crate::store::control::Api;
        let api = |id: &str, prefix: &str| Api {
            tenant_id: "t".into(),
            id: id.into(),
            path_prefix: prefix.into(),
            upstream: "http://127.0.0.1:1".into(),
            timeout_ms: None,
            rate_limit: None,
            costs: vec![],
            policies: Policies::default(),
            created_at: 0,
        };
        let snap = Snapshot::build(
            RoutingData {
                apis: vec![api("root", "/"), api("docs", "/docs"), api("v2", "/docs/v2")],
                keys: vec![],
                consumers: vec![],
                tiers: vec![],
                blocks: vec![],
            },
            &Snapshot::default(),
        );
        assert_eq!(snap.route("/docs/v2/x").unwrap().api_id, "v2");
        for spelling in ["/docs//v2/x", "/docs/V2", "/docs/%76%32/x", "/docs/v2;a=b/x", "/docs/./v2"] {
            assert_eq!(snap.route(spelling).unwrap().api_id, "v2", "{spelling}: as an upstream resolves it");
        }
        assert_eq!(snap.route("/docs/v2x").unwrap().api_id, "docs");
        assert_eq!(snap.route("/DOCS/v2").unwrap().api_id, "v2", "under the same tenant's root api too");
        assert_eq!(snap.route("/docs/v1").unwrap().api_id, "docs");
        assert_eq!(snap.route("/other").unwrap().api_id, "root");
        assert_eq!(snap.api("t", "docs").unwrap().path_prefix, "/docs");
        assert!(snap.api("t", "nope").is_none() && snap.api("other", "docs").is_none(), "api ids are per tenant");
        // Another tenant's api never takes a call by another spelling.
        let mut other = api("other", "/other");
        other.tenant_id = "u".into();
        let snap = Snapshot::build(
            RoutingData { apis: vec![api("root", "/"), other], keys: vec![], consumers: vec![], tiers: vec![], blocks: vec![] },
            &Snapshot::default(),
        );
        assert_eq!(snap.route("/OTHER/x").unwrap().api_id, "root");
        assert_eq!(snap.route("//other/x").unwrap().api_id, "root");
        assert_eq!(snap.route("/other/x").unwrap().api_id, "other");
    }
}
