//! Rate limits: a per-minute rate with a burst allowance (GCRA) and a daily
//! volume cap, each kept per consumer.
//!
//! A consumer's tier sets both; an api may add its own per-minute limit and
//! a cost per call for expensive paths (an export that counts as 50 calls).
//! The gateway asks [`check`] once per call after authentication. Limiters
//! live in the gateway's snapshot and are carried over to the next snapshot
//! when their settings did not change, so editing one tier does not reset
//! everyone's counters.
//!
//! A call passes every limit that applies or spends none of them: each
//! limit takes its share atomically (the daily count under its lock, a
//! minute limit's cells by one compare-and-swap), and when a later limit
//! refuses the call, what the earlier ones took is given back. Giving back
//! never lets a limit admit more than it allows: a minute limit gets back
//! the cells less what has drained since they were taken (see
//! [`RateLimit::give_back`]). A call that costs more than the whole daily
//! cap is refused before anything is taken (`cost_above_limit`).
//!
//! This in-memory limiter is the single-node version;
//! the shared (Redis) one for several nodes plugs in behind the same
//! [`check`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use dashmap::DashMap;
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

/// The minute limits' clock (quanta's, on the TSC where it is stable; the
/// clock `governor` used): one reading per call serves every limit the call
/// passes.
static CLOCK: LazyLock<(quanta::Clock, quanta::Instant)> = LazyLock::new(|| {
    let clock = quanta::Clock::new();
    let start = clock.now();
    (clock, start)
});

/// Now on [`CLOCK`], in nanoseconds since its first reading.
fn clock_ns() -> u64 {
    let (clock, start) = &*CLOCK;
    u64::try_from(clock.now().duration_since(*start).as_nanos()).unwrap_or(u64::MAX)
}

/// A GCRA limiter with one state per consumer: its theoretical arrival
/// time (TAT) on [`CLOCK`], in nanoseconds (0: no call yet). A call of `n`
/// cells passes when, after it, the TAT lies no further ahead of now than
/// the burst (`tau + t`); it moves the TAT to `max(TAT, now) + n·t`.
pub struct RateLimit {
    pub spec: RateSpec,
    /// A cell's weight: 60 s / rate, in nanoseconds.
    t: u64,
    /// How far past `now + t` the TAT may lie: `(burst - 1)·t`. Wider than
    /// a TAT: a burst of a billion at one a minute is 6·10¹⁹ ns (the
    /// arithmetic is in u128; a TAT beyond 584 years is stored as u64::MAX).
    tau: u128,
    /// Keyed by consumer id (made by keytrail, not by callers), so
    /// Fx-hashed rather than SipHashed (~180 instructions less per call).
    tats: DashMap<Text, AtomicU64, rustc_hash::FxBuildHasher>,
}

/// Why a minute limit refused a call: how long until its cells are there,
/// and where the consumer stands meanwhile (fewer cells left than the call
/// costs).
#[derive(Debug, Clone, Copy)]
struct Refused {
    wait: Duration,
    standing: Standing,
}

/// A consumer's TAT before and after a take (as stored), for giving it back.
#[derive(Debug, Clone, Copy)]
struct Taken {
    before: u64,
    after: u64,
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
    /// The call's cost is above the whole limit (the daily cap): no wait
    /// lets it pass, and `retry_after_secs` is 0.
    pub cost_above_limit: bool,
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimit {
    pub fn new(spec: RateSpec) -> Option<RateLimit> {
        if spec.requests_per_minute == 0 || spec.burst == 0 {
            return None;
        }
        let t = (60_000_000_000 / u64::from(spec.requests_per_minute)).max(1);
        let tau = u128::from(t) * u128::from(spec.burst - 1);
        Some(RateLimit { spec, t, tau, tats: DashMap::with_hasher(rustc_hash::FxBuildHasher) })
    }

    /// The weight of the cells a call of `cost` takes: a cost above the
    /// burst could never pass, so it takes the whole burst.
    fn weight(&self, cost: u32) -> u128 {
        u128::from(cost.clamp(1, self.spec.burst)) * u128::from(self.t)
    }

    /// [`RateLimit::take_tracked`] without what it took (for tests).
    #[cfg(test)]
    fn take(&self, consumer: &Text, cost: u32, now: u64) -> Result<Standing, Duration> {
        self.take_tracked(consumer, cost, now).map(|(standing, _)| standing).map_err(|refused| refused.wait)
    }

    /// The whole cells left at `now` when the consumer's TAT is `at`: at
    /// most the burst, `(tau + t) / t`.
    fn cells_left(&self, at: u128, now: u128) -> u32 {
        let t = u128::from(self.t);
        ((now + self.tau + t).saturating_sub(at.max(now)).min(self.tau + t) / t) as u32
    }

    /// Takes the cells of a call of `cost` for `consumer` at `now` (on
    /// [`CLOCK`]), or says how long until they are there and how many are
    /// left meanwhile; with what the consumer's TAT was before and after,
    /// for [`RateLimit::give_back`].
    fn take_tracked(&self, consumer: &Text, cost: u32, now: u64) -> Result<(Standing, Taken), Refused> {
        let (weight, t, now_wide) = (self.weight(cost), u128::from(self.t), u128::from(now));
        let take = |tat: &AtomicU64| {
            let mut seen = tat.load(Ordering::Acquire);
            loop {
                let at = u128::from(if seen == 0 { now } else { seen });
                // The earliest moment the last of the cells conforms.
                let earliest = (at + weight - t).saturating_sub(self.tau);
                if now_wide < earliest {
                    // Fewer cells than the call costs, but not necessarily none.
                    let standing = self.standing(at, now_wide);
                    return Err(Refused { wait: Duration::from_nanos(u64::try_from(earliest - now_wide).unwrap_or(u64::MAX)), standing });
                }
                let next = at.max(now_wide) + weight;
                let stored = u64::try_from(next).unwrap_or(u64::MAX);
                match tat.compare_exchange_weak(seen, stored, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Ok((next, Taken { before: seen, after: stored })),
                    Err(current) => seen = current,
                }
            }
        };
        let (next, taken) = match self.tats.get(consumer) {
            Some(tat) => take(&tat),
            None => take(&self.tats.entry(consumer.clone()).or_default()),
        }?;
        Ok((self.standing(next, now_wide), taken))
    }

    /// Where a consumer whose TAT is `at` stands at `now`: the burst, the
    /// whole cells left, and the seconds until the burst is whole again
    /// (until the TAT, to the second: cells partly paid off count as such,
    /// not as whole cells).
    fn standing(&self, at: u128, now: u128) -> Standing {
        let whole_in = at.max(now) - now;
        Standing {
            limit: u64::from(self.spec.burst),
            remaining: u64::from(self.cells_left(at, now)),
            reset_secs: ceil_secs(Duration::from_nanos(u64::try_from(whole_in).unwrap_or(u64::MAX))),
        }
    }

    /// Gives back the cells [`RateLimit::take`] took at `taken` for a call
    /// another limit then refused. Less the time since: the TAT is lowered
    /// by the cells' weight minus what has drained since they were taken,
    /// which is never more than the call added to it however other calls
    /// came in between (each moves the TAT by its own weight from
    /// `max(TAT, now)`, and a difference between two TATs shrinks only by
    /// time passing), so no consumer ever gets more than the limit.
    ///
    /// When no other call has moved the TAT since (`taken.after` is still
    /// there), it goes back to what it was exactly, as if the call had
    /// never come: the drained time is no call's, and leaving it spent
    /// would shave a little off the limit at every refusal.
    fn give_back(&self, consumer: &Text, cost: u32, taken_at: u64, taken: Taken) {
        if let Some(tat) = self.tats.get(consumer) {
            if tat.compare_exchange(taken.after, taken.before, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return;
            }
        }
        let drained = u128::from(clock_ns().saturating_sub(taken_at));
        let refund = u64::try_from(self.weight(cost).saturating_sub(drained)).unwrap_or(u64::MAX);
        if refund == 0 {
            return;
        }
        if let Some(tat) = self.tats.get(consumer) {
            let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |seen| Some(seen.saturating_sub(refund)));
        }
    }
}

impl DailyCap {
    pub fn new(limit: u64) -> DailyCap {
        DailyCap { limit, used: Mutex::default() }
    }

    /// Counts `cost` calls for `consumer` today, unless that passes the cap;
    /// with the UTC day it counted them in, for [`DailyCap::give_back`].
    /// Only a later day starts a new count: a call stamped before midnight
    /// that comes after one stamped past it (calls racing over midnight)
    /// counts in the new day rather than setting the count back to the old
    /// day, which would wipe the new day's.
    fn take(&self, consumer: &str, cost: u64, now_ms: i64) -> Result<(Standing, i64), Standing> {
        let (day, reset_secs) = day_and_reset(now_ms);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match used.get_mut(consumer) {
            Some(entry) => entry,
            None => used.entry(consumer.to_string()).or_insert((day, 0)),
        };
        if entry.0 < day {
            *entry = (day, 0);
        }
        if entry.1 + cost > self.limit {
            return Err(Standing { limit: self.limit, remaining: self.limit - entry.1.min(self.limit), reset_secs });
        }
        entry.1 += cost;
        Ok((Standing { limit: self.limit, remaining: self.limit - entry.1, reset_secs }, entry.0))
    }

    /// Where `consumer` stands today, counting nothing (a call stamped
    /// before midnight reads the new day's count, as [`DailyCap::take`]).
    fn standing(&self, consumer: &str, now_ms: i64) -> Standing {
        let (day, reset_secs) = day_and_reset(now_ms);
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let spent = used.get(consumer).filter(|e| e.0 >= day).map_or(0, |e| e.1);
        Standing { limit: self.limit, remaining: self.limit - spent.min(self.limit), reset_secs }
    }

    /// Gives back what [`DailyCap::take`] counted in `day` for a call
    /// another limit then refused (if that day's count is still the one kept).
    fn give_back(&self, consumer: &str, cost: u64, day: i64) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = used.get_mut(consumer).filter(|e| e.0 == day) {
            entry.1 = entry.1.saturating_sub(cost);
        }
    }
}

/// The UTC day of `now_ms`, and the seconds until the next one.
fn day_and_reset(now_ms: i64) -> (i64, u64) {
    let day = now_ms.div_euclid(86_400_000);
    (day, ((day + 1) * 86_400_000 - now_ms + 999) as u64 / 1000)
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
/// headers), or `None` when no limit applies. A refused call spends nothing
/// of any limit: the daily cap is counted first (a call it refuses takes no
/// minute cell), then the api's minute limit, then the tier's, and when one
/// refuses, what the ones before it took is given back.
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
    let daily = match tier.and_then(|t| Some((t, t.daily.as_ref()?))) {
        Some((tier, cap)) => {
            // The scope's text is made only for a refusal: most calls pass.
            let exceeded = |standing: Standing, cost_above_limit: bool| Exceeded {
                scope: format!("tier:{}", tier.id),
                window: "day",
                limit: cap.limit,
                retry_after_secs: if cost_above_limit { 0 } else { standing.reset_secs.max(1) },
                standing,
                cost_above_limit,
            };
            // A call that costs more than the whole day never passes: no
            // wait helps, and nothing is counted.
            if u64::from(cost) > cap.limit {
                return Err(exceeded(cap.standing(consumer, now_ms), true));
            }
            let (standing, day) = cap.take(consumer, u64::from(cost), now_ms).map_err(|standing| exceeded(standing, false))?;
            Some((cap, standing, day))
        }
        None => None,
    };
    let tier_rate = tier.and_then(|t| Some((t, t.rate.as_ref()?)));
    if api.is_none() && tier_rate.is_none() {
        return Ok(daily.map(|(_, standing, _)| standing));
    }
    let now = clock_ns();
    let minute = |limit: &RateLimit, scope: &dyn Fn() -> String| -> Result<(Standing, Taken), Exceeded> {
        limit.take_tracked(consumer, cost, now).map_err(|Refused { wait, standing }| Exceeded {
            scope: scope(),
            window: "minute",
            limit: u64::from(limit.spec.requests_per_minute),
            retry_after_secs: ceil_secs(wait).max(1),
            // What is left and when it is whole again, as a passing call
            // and the daily cap's refusal tell it: a costly call may be
            // refused with cheaper calls' cells still there.
            standing,
            cost_above_limit: false,
        })
    };
    // Gives back what was taken before a refusal.
    let give_back = |api_taken: Option<Taken>| {
        if let (Some((_, limit)), Some(taken)) = (api, api_taken) {
            limit.give_back(consumer, cost, now, taken);
        }
        if let Some((cap, _, day)) = daily {
            cap.give_back(consumer, u64::from(cost), day);
        }
    };
    let mut api_taken = None;
    if let Some((api_id, limit)) = api {
        match minute(limit, &|| format!("api:{api_id}")) {
            Ok((standing, taken)) => {
                note(standing);
                api_taken = Some(taken);
            }
            Err(exceeded) => {
                give_back(None);
                return Err(exceeded);
            }
        }
    }
    if let Some((tier, limit)) = tier_rate {
        match minute(limit, &|| format!("tier:{}", tier.id)) {
            Ok((standing, _)) => note(standing),
            Err(exceeded) => {
                give_back(api_taken);
                return Err(exceeded);
            }
        }
    }
    if let Some((_, standing, _)) = daily {
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
        let used = t.daily.as_ref().unwrap().standing(&c, 0);
        assert_eq!(used.remaining, 9, "only the call that passed counts");
        // The daily cap refuses: the api's and the tier's minutes are untouched.
        let t = tier(Some(RateSpec { requests_per_minute: 60, burst: 2 }), Some(1));
        let api = RateLimit::new(RateSpec { requests_per_minute: 60, burst: 2 }).unwrap();
        assert!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).is_ok());
        assert_eq!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap_err().window, "day");
        assert!(api.take(&c, 1, clock_ns()).is_ok(), "the api's second cell is still there");
        assert!(t.rate.as_ref().unwrap().take(&c, 1, clock_ns()).is_ok(), "so is the tier's");
        // The tier's minute limit refuses: the api's cells and the day's
        // count are given back.
        let t = tier(Some(RateSpec { requests_per_minute: 1, burst: 1 }), Some(100));
        let api = RateLimit::new(RateSpec { requests_per_minute: 1, burst: 5 }).unwrap();
        assert_eq!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap().unwrap().remaining, 0);
        for _ in 0..10 {
            assert_eq!(check(Some(&t), Some(("docs", &api)), &c, 1, 0).unwrap_err().scope, "tier:free");
        }
        assert_eq!(api.take(&c, 1, clock_ns()).unwrap().remaining, 3, "only the call that passed took an api cell");
        assert_eq!(t.daily.as_ref().unwrap().standing(&c, 0).remaining, 99);
        // The api's refuses (at a cost): the tier's are untouched.
        let t = tier(Some(RateSpec { requests_per_minute: 1, burst: 10 }), None);
        let api = RateLimit::new(RateSpec { requests_per_minute: 1, burst: 3 }).unwrap();
        assert!(check(Some(&t), Some(("docs", &api)), &c, 3, 0).is_ok());
        for _ in 0..5 {
            assert_eq!(check(Some(&t), Some(("docs", &api)), &c, 3, 0).unwrap_err().scope, "api:docs");
        }
        assert_eq!(t.rate.as_ref().unwrap().take(&c, 1, clock_ns()).unwrap().remaining, 6);
    }

    /// Cells given back long after they were taken are not given back in
    /// full: what has drained since is not the call's to return.
    #[test]
    fn cells_are_given_back_less_what_has_drained() {
        let c = Text::from("cons_a");
        // One cell every 600 ms.
        let limit = RateLimit::new(RateSpec { requests_per_minute: 100, burst: 2 }).unwrap();
        let now = clock_ns();
        let (_, taken) = limit.take_tracked(&c, 2, now).unwrap();
        limit.give_back(&c, 2, now, taken);
        assert_eq!(limit.take(&c, 1, clock_ns()).unwrap().remaining, 1, "given back at once: whole");
        let c = Text::from("cons_b");
        let taken = clock_ns();
        let (_, first) = limit.take_tracked(&c, 2, taken).unwrap();
        // Both cells drained; a later call takes one, then the first call's
        // cells are "given back": nothing is left to give.
        std::thread::sleep(Duration::from_millis(1_300));
        assert_eq!(limit.take(&c, 1, clock_ns()).unwrap().remaining, 1);
        limit.give_back(&c, 2, taken, first);
        assert_eq!(limit.take(&c, 1, clock_ns()).unwrap().remaining, 0, "the later call's cell is still spent");
        assert!(limit.take(&c, 1, clock_ns()).is_err());
    }

    /// Callers racing on an api limit and a tighter tier limit: no more
    /// calls pass than the tighter one allows, and every refused call gave
    /// back what it took, so the api's limit has spent exactly the calls
    /// that passed.
    #[test]
    fn racing_calls_never_pass_a_limit_and_leave_nothing_taken() {
        let t = std::sync::Arc::new(tier(Some(RateSpec { requests_per_minute: 1, burst: 30 }), Some(1_000)));
        let api = std::sync::Arc::new(RateLimit::new(RateSpec { requests_per_minute: 1, burst: 50 }).unwrap());
        let c = Text::from("cons_a");
        let passed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        if check(Some(&t), Some(("docs", &api)), &c, 1, 0).is_ok() {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 30);
        // The api has spent the 30 calls' cells. A give-back that met
        // another call's take in between keeps back the microseconds since
        // its take (so it can never give more than it took); those add up
        // to less than one cell of 60 s, which may show as one less.
        let remaining = api.take(&c, 1, clock_ns()).unwrap().remaining;
        assert!((50 - 30 - 2..=50 - 30 - 1).contains(&remaining), "{remaining}");
        assert_eq!(t.daily.as_ref().unwrap().standing(&c, 0).remaining, 1_000 - 30);
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

    /// Calls racing over midnight UTC reach the cap out of the order of
    /// their clocks: one stamped a millisecond before midnight, counted after
    /// one stamped after it, must not wipe the new day's count (it set the
    /// count back to the old day, so the next call found a day of its own
    /// and started from zero: the new day's calls so far were free).
    #[test]
    fn a_late_call_from_before_midnight_leaves_the_new_days_count() {
        let t = tier(None, Some(3));
        let c = Text::from("cons_a");
        let midnight = 86_400_000 * 20_000;
        assert_eq!(check(Some(&t), None, &c, 3, midnight + 1).unwrap().unwrap().remaining, 0, "the new day's whole quota");
        let late = check(Some(&t), None, &c, 1, midnight - 1);
        assert!(late.is_err_and(|e| e.window == "day"), "the count it meets is the new day's, spent");
        assert_eq!(check(Some(&t), None, &c, 1, midnight + 2).unwrap_err().window, "day", "the new day's count stands");
        // A late call that another limit refuses gives back only what it took.
        let t = tier(Some(RateSpec { requests_per_minute: 1, burst: 1 }), Some(10));
        let c = Text::from("cons_b");
        assert!(check(Some(&t), None, &c, 1, midnight + 1).is_ok());
        assert_eq!(check(Some(&t), None, &c, 1, midnight - 1).unwrap_err().window, "minute");
        assert_eq!(t.daily.as_ref().unwrap().standing(&c, midnight + 3).remaining, 9, "one call counted today, the refused one given back");
    }

    /// A call that costs more than the whole day is told so, not to wait,
    /// and counts nothing; one that costs the whole day passes.
    #[test]
    fn a_cost_above_the_whole_daily_cap_never_passes_and_counts_nothing() {
        let t = tier(Some(RateSpec { requests_per_minute: 60, burst: 5 }), Some(100));
        let c = Text::from("cons_a");
        let e = check(Some(&t), None, &c, 101, 0).unwrap_err();
        assert!(e.cost_above_limit, "{e:?}");
        assert_eq!((e.window, e.limit, e.retry_after_secs, e.standing.remaining), ("day", 100, 0, 100));
        // It took no minute cell: a call of 50 (the whole burst of 5) passes.
        let e = check(Some(&t), None, &c, 50, 0).unwrap();
        assert_eq!(e.unwrap().remaining, 0, "the minute limit is the closer one");
        assert!(!check(Some(&t), None, &Text::from("cons_b"), 100, 0).is_err_and(|e| e.cost_above_limit));
    }

    /// The largest limits the admin API takes (a burst of a billion at one
    /// call a minute: more nanoseconds than a u64 holds) neither overflow
    /// nor refuse what they allow.
    #[test]
    fn the_largest_limits_do_not_overflow() {
        let t = tier(Some(RateSpec { requests_per_minute: 1, burst: 1_000_000_000 }), None);
        let api = RateLimit::new(RateSpec { requests_per_minute: 1_000_000_000, burst: 1_000_000_000 }).unwrap();
        let c = Text::from("cons_a");
        let s = check(Some(&t), None, &c, 1_000_000, 0).unwrap().unwrap();
        assert_eq!((s.limit, s.remaining), (1_000_000_000, 999_000_000));
        assert!(s.reset_secs >= 1_000_000 * 60, "{s:?}");
        // Half the burst more, past what a u64 of nanoseconds holds.
        for _ in 0..5 {
            assert!(check(Some(&t), Some(("docs", &api)), &c, 100_000_000, 0).is_ok_and(|s| s.is_some()));
        }
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
