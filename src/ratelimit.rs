//! Rate limits: a per-minute rate with a burst allowance (GCRA, from the
//! `governor` crate) and a daily volume cap, each kept per consumer.
//!
//! A consumer's tier sets both; an api may add its own per-minute limit and
//! a cost per call for expensive paths (an export that counts as 50 calls).
//! The gateway asks [`check`] once per call after authentication. Limiters
//! live in the gateway's snapshot and are carried over to the next snapshot
//! when their settings did not change, so editing one tier does not reset
//! everyone's counters. This in-memory limiter is the single-node version;
//! the shared (Redis) one for several nodes plugs in behind the same
//! [`check`].

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::text::Text;

/// A per-minute rate and the burst it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub requests_per_minute: u32,
    /// The most calls at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// A path under an api whose calls count as `cost` calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostRule {
    pub path_prefix: String,
    pub cost: u32,
}

/// The cost of a call to `path`: the longest matching rule's, else 1.
pub fn cost_of(rules: &[CostRule], path: &str) -> u32 {
    let cost = |path: &str, matches: fn(&str, &str) -> bool| {
        rules.iter().filter(|r| matches(&r.path_prefix, path)).max_by_key(|r| r.path_prefix.len()).map_or(1, |r| r.cost)
    };
    // As sent and as an upstream may resolve it (`/docs//export`,
    // `/docs/%65xport`, `/docs/export;x`, and `/docs/EXPORT` to one that
    // routes without regard to case), the higher: another spelling costs
    // no less.
    if rules.is_empty() {
        return 1;
    }
    let resolved = crate::policy::normalized_path(path);
    let exact = cost(path, crate::snapshot::prefix_matches);
    exact.max(cost(resolved.as_deref().unwrap_or(path), crate::snapshot::prefix_matches_ignoring_case))
}

/// Keyed by consumer id (made by keytrail, not by callers), so Fx-hashed
/// rather than SipHashed (~180 instructions less per call).
type Keyed = RateLimiter<Text, DefaultKeyedStateStore<Text, rustc_hash::FxBuildHasher>, DefaultClock, StateInformationMiddleware>;

/// A GCRA limiter with one state per consumer.
pub struct RateLimit {
    pub spec: RateSpec,
    limiter: Keyed,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("spec", &self.spec).finish()
    }
}

/// A daily volume cap with one count per consumer and UTC day.
#[derive(Debug)]
pub struct DailyCap {
    pub limit: u64,
    /// Per consumer id (made by keytrail, not by callers): Fx-hashed.
    used: Mutex<rustc_hash::FxHashMap<String, (i64, u64)>>,
}

/// Where a call stands against the limit that is closest to refusing it,
/// for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the limit is whole again.
    pub reset_secs: u64,
}

/// Which limit refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// `tier:<id>` or `api:<id>`.
    pub scope: String,
    /// `minute` (the rate and burst) or `day` (the daily cap).
    pub window: &'static str,
    pub limit: u64,
    pub retry_after_secs: u64,
    pub standing: Standing,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimit {
    pub fn new(spec: RateSpec) -> Option<RateLimit> {
        let rate = NonZeroU32::new(spec.requests_per_minute)?;
        let burst = NonZeroU32::new(spec.burst)?;
        let quota = Quota::per_minute(rate).allow_burst(burst);
        let clock = DefaultClock::default();
        let limiter = RateLimiter::dashmap_with_clock_and_hasher(quota, clock.clone(), rustc_hash::FxBuildHasher).with_middleware::<StateInformationMiddleware>();
        Some(RateLimit { spec, limiter, clock })
    }

    /// Takes `cost` cells for `consumer`, or says when they will be there.
    fn take(&self, consumer: &Text, cost: u32) -> Result<Standing, Duration> {
        // A cost above the burst could never pass; it takes the whole burst.
        let n = NonZeroU32::new(cost.clamp(1, self.spec.burst)).expect("at least 1");
        let interval = Duration::from_secs(60) / self.spec.requests_per_minute;
        match self.limiter.check_key_n(consumer, n) {
            Ok(Ok(state)) => {
                let remaining = state.remaining_burst_capacity();
                Ok(Standing {
                    limit: u64::from(self.spec.burst),
                    remaining: u64::from(remaining),
                    reset_secs: ceil_secs(interval * (self.spec.burst - remaining)),
                })
            }
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            Err(_) => Err(interval * self.spec.burst),
        }
    }
}

impl DailyCap {
    pub fn new(limit: u64) -> DailyCap {
        DailyCap { limit, used: Mutex::default() }
    }

    /// Counts `cost` calls for `consumer` today, unless that passes the cap.
    fn take(&self, consumer: &str, cost: u64, now_ms: i64) -> Result<Standing, Standing> {
        let day = now_ms.div_euclid(86_400_000);
        let reset_secs = ((day + 1) * 86_400_000 - now_ms + 999) as u64 / 1000;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match used.get_mut(consumer) {
            Some(entry) => entry,
            None => used.entry(consumer.to_string()).or_insert((day, 0)),
        };
        if entry.0 != day {
            *entry = (day, 0);
        }
        if entry.1 + cost > self.limit {
            return Err(Standing { limit: self.limit, remaining: self.limit - entry.1.min(self.limit), reset_secs });
        }
        entry.1 += cost;
        Ok(Standing { limit: self.limit, remaining: self.limit - entry.1, reset_secs })
    }

    /// Gives back what [`DailyCap::take`] counted for a call another limit
    /// then refused (the same UTC day only).
    fn give_back(&self, consumer: &str, cost: u64, now_ms: i64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = used.get_mut(consumer).filter(|e| e.0 == now_ms.div_euclid(86_400_000)) {
            entry.1 = entry.1.saturating_sub(cost);
        }
    }
}

/// A tier's limits as the gateway applies them.
#[derive(Debug)]
pub struct TierLimits {
    pub id: String,
    pub rate: Option<RateLimit>,
    pub daily: Option<DailyCap>,
}

/// Checks a call of `cost` by `consumer` against its tier's limits and the
/// api's own. On success, the standing closest to its limit (for the
/// headers), or `None` when no limit applies.
pub fn check(
    tier: Option<&TierLimits>,
    api: Option<(&str, &RateLimit)>,
    consumer: &Text,
    cost: u32,
    now_ms: i64,
) -> Result<Option<Standing>, Exceeded> {
    let mut closest: Option<Standing> = None;
    let mut note = |s: Standing| {
        if closest.is_none_or(|c| s.remaining < c.remaining) {
            closest = Some(s);
        }
    };
    // The scope's text is made only for a refusal: most calls pass.
    let minute = |scope: &dyn Fn() -> String, limit: &RateLimit| -> Result<Standing, Exceeded> {
        limit.take(consumer, cost).map_err(|wait| Exceeded {
            scope: scope(),
            window: "minute",
            limit: u64::from(limit.spec.requests_per_minute),
            retry_after_secs: ceil_secs(wait).max(1),
            standing: Standing { limit: u64::from(limit.spec.burst), remaining: 0, reset_secs: ceil_secs(wait).max(1) },
        })
    };
    // The daily cap first: a call it refuses spends no minute budget, and
    // its count is given back when a minute limit refuses the call.
    let daily = match tier.and_then(|t| Some((t, t.daily.as_ref()?))) {
        Some((tier, cap)) => {
            let standing = cap.take(consumer, u64::from(cost), now_ms).map_err(|standing| Exceeded {
                scope: format!("tier:{}", tier.id),
                window: "day",
                limit: cap.limit,
                retry_after_secs: standing.reset_secs.max(1),
                standing,
            })?;
            Some((cap, standing))
        }
        None => None,
    };
    let minutes = (|| {
        if let Some((api_id, limit)) = api {
            note(minute(&|| format!("api:{api_id}"), limit)?);
        }
        if let Some(tier) = tier {
            if let Some(limit) = &tier.rate {
                note(minute(&|| format!("tier:{}", tier.id), limit)?);
            }
        }
        Ok(())
    })();
    if let Err(exceeded) = minutes {
        if let Some((cap, _)) = daily {
            cap.give_back(consumer, u64::from(cost), now_ms);
        }
        return Err(exceeded);
    }
    if let Some((_, standing)) = daily {
        note(standing);
    }
    Ok(closest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path costs what its costliest spelling costs: `/docs//export` and
    /// `/docs/%65xport` are `/docs/export` to many upstreams.
    #[test]
    fn another_spelling_of_a_path_costs_no_less() {
        let rules = vec![CostRule { path_prefix: "/docs/export".into(), cost: 50 }, CostRule { path_prefix: "/docs".into(), cost: 2 }];
        for path in ["/docs/export", "/docs//export", "/docs/%65xport/x", "/docs/./export", "/docs/x/../export", "/docs/%2565xport/x%25zz"] {
            assert_eq!(cost_of(&rules, path), 50, "{path}");
        }
        assert_eq!(cost_of(&rules, "/docs/EXPORT"), 50);
        assert_eq!(cost_of(&rules, "/docs/export;jsessionid=1/x"), 50);
        assert_eq!(cost_of(&rules, "/docs/exports"), 2);
        assert_eq!(cost_of(&rules, "/other"), 1);
        assert_eq!(cost_of(&[], "/docs//export"), 1);
    }

    fn tier(rate: Option<RateSpec>, daily: Option<u64>) -> TierLimits {
        TierLimits { id: "free".into(), rate: rate.and_then(RateLimit::new), daily: daily.map(DailyCap::new) }
    }

    /// A refused call spends nothing of the daily cap, and a call the
    /// daily cap refuses spends nothing of the minute limits.
    #[test]
    fn a_refused_call_spends_no_other_limit() {
        let c = Text::from("cons_a");
        // The minute limit refuses: the day's count is given back.
        let t = tier(Some(RateSpec { requests_per_minute: 60, burst: 1 }), Some(10));
        assert_eq!(check(Some(&t), None, &c, 1, 0).unwrap().unwrap().remaining, 0);
        for _ in 0..5 {
            assert_eq!(check(Some(&t), None, &c, 1, 0).unwrap_err().window, "minute");
        }
        let used = t.daily.as_ref().unwrap().take(&c, 0, 0).unwrap();
        assert_eq!(used.remaining, 9, "only the call that passed counts");
        // The daily cap refuses: the api's and the tier's minutes are untouched.
        let t = tier(Some(RateSpec { requests_per_minute: 60, burst: 2 }), Some(1));
        let api = RateLimit::new(RateSpec { requests_per_minute: 60, burst: 2 }).unwrap();
        assert!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).is_ok());
        assert_eq!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap_err().window, "day");
        assert!(api.take(&c, 1).is_ok(), "the api's second cell is still there");
        assert!(t.rate.as_ref().unwrap().take(&c, 1).is_ok(), "so is the tier's");
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t = tier(Some(RateSpec { requests_per_minute: 60, burst: 5 }), None);
        let c = Text::from("cons_a");
        for i in 0..5 {
            let s = check(Some(&t), None, &c, 1, 0).unwrap().unwrap();
            assert_eq!(s.remaining, 4 - i);
        }
        let e = check(Some(&t), None, &c, 1, 0).unwrap_err();
        assert_eq!((e.window, e.limit, e.scope.as_str()), ("minute", 60, "tier:free"));
        assert!((1..=2).contains(&e.retry_after_secs), "{e:?}");
        // Another consumer has its own allowance.
        assert!(check(Some(&t), None, &Text::from("cons_b"), 1, 0).is_ok());
    }

    #[test]
    fn the_daily_cap_counts_costs_and_resets_at_midnight() {
        let t = tier(None, Some(100));
        let c = Text::from("cons_a");
        let noon = 86_400_000 * 20_000 + 43_200_000;
        assert_eq!(check(Some(&t), None, &c, 60, noon).unwrap().unwrap().remaining, 40);
        let e = check(Some(&t), None, &c, 50, noon).unwrap_err();
        assert_eq!((e.window, e.limit), ("day", 100));
        assert_eq!(e.retry_after_secs, 43_200);
        assert_eq!(check(Some(&t), None, &c, 40, noon).unwrap().unwrap().remaining, 0);
        assert!(check(Some(&t), None, &c, 1, noon + 43_200_000).is_ok(), "a new day");
    }

    #[test]
    fn costs_come_from_the_longest_matching_rule() {
        let rules = vec![
            CostRule { path_prefix: "/docs/export".into(), cost: 50 },
            CostRule { path_prefix: "/docs/export/big".into(), cost: 200 },
        ];
        assert_eq!(cost_of(&rules, "/docs/read"), 1);
        assert_eq!(cost_of(&rules, "/docs/export"), 50);
        assert_eq!(cost_of(&rules, "/docs/export/x"), 50);
        assert_eq!(cost_of(&rules, "/docs/export/big/1"), 200);
        assert_eq!(cost_of(&rules, "/docs/exporter"), 1);
    }

    #[test]
    fn the_api_limit_and_the_tier_both_apply() {
        let t = tier(Some(RateSpec { requests_per_minute: 600, burst: 100 }), None);
        let api = RateLimit::new(RateSpec { requests_per_minute: 60, burst: 2 }).unwrap();
        let c = Text::from("cons_a");
        let s = check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap().unwrap();
        assert_eq!((s.limit, s.remaining), (2, 1), "the closer limit is reported");
        check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap();
        assert_eq!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap_err().scope, "api:docs");
        assert_eq!(check(None, None, &c, 1, 0).unwrap(), None, "no limit, no standing");
    }
}
