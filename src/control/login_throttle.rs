//! Sign-in throttling for `POST /v1/auth/login`: failed sign-ins are
//! counted per admin name and per client address (an IPv6 address by its
//! /64); past the limit within the window, attempts are refused for the
//! lockout period without their password being checked — a correct one too,
//! or the lockout would tell a guesser when it guessed right.
//!
//! Bearer tokens that fail on the rest of the admin API (an unknown admin
//! token, an unknown or ended session) are counted the same way per client
//! address, with the address limits but apart from sign-ins: past the limit,
//! every bearer from that address is refused unchecked for the lockout, a
//! valid one too (for the same reason), while sign-ins from it, and bearers
//! from elsewhere, go on.
//!
//! A name is counted the same whether or not an admin has it, and only by
//! its SHA-256 (people type passwords into the name field). An attempt is
//! counted against the limit while its password is checked, so attempts
//! sent at once get no more guesses than attempts sent one after another.
//! State lives in memory only: a restart clears it. Each map holds at most
//! [`TRACKED_MAX`] entries; when full, ended windows and lockouts are
//! dropped first, then counts short of a lockout; a lockout or an attempt
//! being checked is never dropped (a name or address that finds no room
//! then is not counted until there is — the other map still counts it).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::LoginConfig;
use crate::keys::{self, SecretHash};

/// Most names, and apart from them most addresses, tracked at once.
pub const TRACKED_MAX: usize = 100_000;

/// After a sweep that found no room, the next one waits this long (a full
/// map of lockouts must not cost a scan per attempt).
const SWEEP_PAUSE_MS: i64 = 1_000;

/// What a lockout is keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Name,
    Address,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Name => "name",
            Scope::Address => "address",
        }
    }
}

/// A lockout a failed attempt started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub scope: Scope,
    /// The failures in the window that started it.
    pub failures: u32,
    pub until_ms: i64,
}

/// What lifting a name's lockout found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifted {
    /// When the lockout would have ended, if the name was locked out.
    pub locked_until_ms: Option<i64>,
    /// Failed sign-ins its window counted toward a lockout, now forgotten
    /// (a lockout starts the count afresh: 0 unless some came after it).
    pub failures: u32,
}

impl Lifted {
    /// `{"was_locked", "lockout_expires_at", "failures"}`, as answers and
    /// events show a lift.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "was_locked": self.locked_until_ms.is_some(),
            "lockout_expires_at": self.locked_until_ms.map(crate::event::format_timestamp),
            "failures": self.failures,
        })
    }
}

/// The counters `GET /v1/status` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ThrottleStatus {
    /// Lockouts started since the process started.
    pub lockouts: u64,
    /// Attempts refused (429) since the process started; they are counted
    /// here, not recorded one by one in the trail.
    pub refused: u64,
    /// Names and addresses locked out now.
    pub locked_names: u64,
    pub locked_addresses: u64,
    /// Addresses whose bearer tokens are refused now.
    pub locked_bearer_addresses: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the counting window began.
    since_ms: i64,
    /// Failed attempts in the window.
    failed: u32,
    /// Attempts whose password is being checked now.
    pending: u32,
    /// When the lockout ends; 0 when there is none.
    locked_until_ms: i64,
}

impl Slot {
    fn new(now_ms: i64) -> Slot {
        Slot { since_ms: now_ms, failed: 0, pending: 0, locked_until_ms: 0 }
    }

    /// Starts a new window when the lockout or the window has ended.
    fn roll(&mut self, now_ms: i64, window_ms: i64) {
        let lock_ended = self.locked_until_ms != 0 && self.locked_until_ms <= now_ms;
        let window_ended = self.locked_until_ms == 0 && now_ms - self.since_ms >= window_ms;
        if lock_ended || window_ended {
            *self = Slot { pending: self.pending, ..Slot::new(now_ms) };
        }
    }

    fn locked(&self, now_ms: i64) -> bool {
        self.locked_until_ms > now_ms
    }
}

/// Failures per key within a window, and the lockouts they started.
struct Counter<K> {
    /// 0: this counter is off.
    max: u32,
    window_ms: i64,
    lockout_ms: i64,
    cap: usize,
    next_sweep_ms: i64,
    slots: HashMap<K, Slot>,
}

impl<K: Hash + Eq + Copy> Counter<K> {
    fn new(max: u32, window_ms: i64, lockout_ms: i64, cap: usize) -> Counter<K> {
        Counter { max, window_ms, lockout_ms, cap, next_sweep_ms: i64::MIN, slots: HashMap::new() }
    }

    /// How long `key` is still refused, if it is.
    fn refused_for(&mut self, key: &K, now_ms: i64) -> Option<i64> {
        if self.max == 0 {
            return None;
        }
        let slot = self.slots.get_mut(key)?;
        slot.roll(now_ms, self.window_ms);
        if slot.locked(now_ms) {
            return Some(slot.locked_until_ms - now_ms);
        }
        // Attempts still being checked could start the lockout: at most its length.
        (slot.failed + slot.pending >= self.max).then_some(self.lockout_ms)
    }

    /// Counts an attempt whose password is about to be checked.
    fn begin(&mut self, key: K, now_ms: i64) {
        if self.max == 0 || (!self.slots.contains_key(&key) && !self.make_room(now_ms)) {
            return;
        }
        self.slots.entry(key).or_insert_with(|| Slot::new(now_ms)).pending += 1;
    }

    /// Makes room for one more key: ended windows and lockouts go first,
    /// then counts short of a lockout. False when there is still none.
    fn make_room(&mut self, now_ms: i64) -> bool {
        if self.slots.len() < self.cap {
            return true;
        }
        if now_ms < self.next_sweep_ms {
            return false;
        }
        let window_ms = self.window_ms;
        self.slots.retain(|_, s| s.pending > 0 || s.locked(now_ms) || (s.locked_until_ms == 0 && s.failed > 0 && now_ms - s.since_ms < window_ms));
        if self.slots.len() >= self.cap {
            self.slots.retain(|_, s| s.pending > 0 || s.locked(now_ms));
        }
        if self.slots.len() >= self.cap {
            self.next_sweep_ms = now_ms + SWEEP_PAUSE_MS;
            return false;
        }
        true
    }

    /// An attempt's password was wrong: `Some` when that starts a lockout.
    fn failed(&mut self, key: &K, now_ms: i64) -> Option<(u32, i64)> {
        if self.max == 0 {
            return None;
        }
        let slot = self.slots.get_mut(key)?;
        slot.pending = slot.pending.saturating_sub(1);
        slot.roll(now_ms, self.window_ms);
        slot.failed += 1;
        if slot.failed < self.max || slot.locked(now_ms) {
            return None;
        }
        let failures = slot.failed;
        *slot = Slot { pending: slot.pending, locked_until_ms: now_ms + self.lockout_ms, ..Slot::new(now_ms) };
        Some((failures, slot.locked_until_ms))
    }

    /// An attempt ended without a failure: it no longer counts.
    fn settled(&mut self, key: &K) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.pending = slot.pending.saturating_sub(1);
        }
    }

    /// An attempt ended without a failure, and the key forgets it
    /// altogether when nothing else is counted for it.
    fn release(&mut self, key: &K) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.pending = slot.pending.saturating_sub(1);
            if slot.pending == 0 && slot.failed == 0 && slot.locked_until_ms == 0 {
                self.slots.remove(key);
            }
        }
    }

    /// A correct password: the key starts afresh (attempts of it still being
    /// checked keep their place).
    fn reset(&mut self, key: &K, now_ms: i64) {
        if let Some(slot) = self.slots.get_mut(key) {
            let pending = slot.pending.saturating_sub(1);
            if pending == 0 {
                self.slots.remove(key);
            } else {
                *slot = Slot { pending, ..Slot::new(now_ms) };
            }
        }
    }

    /// Forgets `key`'s failures and lockout (an owner lifted it): when its
    /// lockout would have ended, if it was locked out, and the failures
    /// its window counted toward a lockout (a lockout counts afresh).
    /// Attempts of it being checked now keep their place.
    fn lift(&mut self, key: &K, now_ms: i64) -> Lifted {
        let Some(slot) = self.slots.get_mut(key) else { return Lifted { locked_until_ms: None, failures: 0 } };
        slot.roll(now_ms, self.window_ms);
        let lifted = Lifted { locked_until_ms: slot.locked(now_ms).then_some(slot.locked_until_ms), failures: slot.failed };
        if slot.pending == 0 {
            self.slots.remove(key);
        } else {
            *slot = Slot { pending: slot.pending, ..Slot::new(now_ms) };
        }
        lifted
    }

    fn locked_now(&self, now_ms: i64) -> u64 {
        self.slots.values().filter(|s| s.locked(now_ms)).count() as u64
    }
}

struct Counters {
    names: Counter<SecretHash>,
    addresses: Counter<IpAddr>,
    /// Failed bearer tokens on the admin API, per address.
    bearers: Counter<IpAddr>,
}

impl Counters {
    /// The address counter an attempt of `kind` counts in.
    fn by_address(&mut self, kind: Kind) -> &mut Counter<IpAddr> {
        match kind {
            Kind::SignIn => &mut self.addresses,
            Kind::Bearer => &mut self.bearers,
        }
    }
}

/// What an attempt presents: a name and password, or a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SignIn,
    Bearer,
}

/// The sign-in throttle of one server.
pub struct LoginThrottle {
    window_secs: u64,
    lockout_secs: u64,
    counters: Mutex<Counters>,
    lockouts: AtomicU64,
    refused: AtomicU64,
}

/// The address an attempt is counted under: an IPv4 address as it is (a
/// v4-mapped IPv6 one as its IPv4 address), an IPv6 address by its /64,
/// which one client usually holds whole.
pub fn address_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// An address bucket as events show it: `203.0.113.7`, `2001:db8::/64`.
pub fn describe_bucket(bucket: IpAddr) -> String {
    match bucket {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

/// A sign-in attempt whose password may be checked, or a bearer token
/// that may be. It counts against the limits until it ends:
/// [`Attempt::failed`], [`Attempt::succeeded`], or dropped (an attempt that
/// ended otherwise, say on a store error, then counts as neither).
pub struct Attempt<'t> {
    throttle: &'t LoginThrottle,
    kind: Kind,
    /// The name signed in with; none for a bearer token.
    name: Option<SecretHash>,
    address: Option<IpAddr>,
    ended: bool,
}

impl LoginThrottle {
    pub fn new(config: &LoginConfig) -> LoginThrottle {
        LoginThrottle::with_capacity(config, TRACKED_MAX)
    }

    /// A throttle that tracks at most `cap` names and `cap` addresses.
    pub fn with_capacity(config: &LoginConfig, cap: usize) -> LoginThrottle {
        let (window_ms, lockout_ms) = (config.window.as_millis() as i64, config.lockout.as_millis() as i64);
        LoginThrottle {
            window_secs: config.window.as_secs(),
            lockout_secs: config.lockout.as_secs(),
            counters: Mutex::new(Counters {
                names: Counter::new(config.name_failures, window_ms, lockout_ms, cap),
                addresses: Counter::new(config.address_failures, window_ms, lockout_ms, cap),
                bearers: Counter::new(config.address_failures, window_ms, lockout_ms, cap),
            }),
            lockouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    pub fn lockout_secs(&self) -> u64 {
        self.lockout_secs
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt for `name` from `address`, or the whole seconds to wait
    /// (at least 1) when the name or the address is locked out.
    pub fn begin(&self, name: &str, address: Option<IpAddr>, now_ms: i64) -> Result<Attempt<'_>, u64> {
        let name = keys::hash_secret(name);
        let address = address.map(address_bucket);
        let mut counters = self.counters();
        let by_name = counters.names.refused_for(&name, now_ms);
        let by_address = address.and_then(|a| counters.addresses.refused_for(&a, now_ms));
        if let Some(wait_ms) = by_name.max(by_address) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err((wait_ms.max(1) as u64).div_ceil(1000));
        }
        counters.names.begin(name, now_ms);
        if let Some(address) = address {
            counters.addresses.begin(address, now_ms);
        }
        Ok(Attempt { throttle: self, kind: Kind::SignIn, name: Some(name), address, ended: false })
    }

    /// A bearer token from `address` about to be checked, or the whole
    /// seconds to wait (at least 1) when the address is locked out of them.
    pub fn begin_bearer(&self, address: IpAddr, now_ms: i64) -> Result<Attempt<'_>, u64> {
        let address = address_bucket(address);
        let mut counters = self.counters();
        if let Some(wait_ms) = counters.bearers.refused_for(&address, now_ms) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err((wait_ms.max(1) as u64).div_ceil(1000));
        }
        counters.bearers.begin(address, now_ms);
        Ok(Attempt { throttle: self, kind: Kind::Bearer, name: None, address: Some(address), ended: false })
    }

    /// Lifts the sign-in lockout of `name` and forgets its failures (an
    /// owner unlocking an admin): whether it was locked out, and the
    /// failures it had in its window. The addresses' counts stay: they
    /// are the guesser's, not the admin's.
    pub fn lift_name(&self, name: &str, now_ms: i64) -> Lifted {
        let name = keys::hash_secret(name);
        self.counters().names.lift(&name, now_ms)
    }

    /// Lifts the lockouts of `address`'s bucket ([`address_bucket`]), of
    /// sign-ins and of bearer tokens, and forgets its failures (an owner
    /// whose office address a broken script locked out): the bucket, and
    /// what each of the two counters held.
    pub fn lift_address(&self, address: IpAddr, now_ms: i64) -> (IpAddr, Lifted, Lifted) {
        let bucket = address_bucket(address);
        let mut counters = self.counters();
        (bucket, counters.addresses.lift(&bucket, now_ms), counters.bearers.lift(&bucket, now_ms))
    }

    pub fn status(&self, now_ms: i64) -> ThrottleStatus {
        let counters = self.counters();
        ThrottleStatus {
            lockouts: self.lockouts.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            locked_names: counters.names.locked_now(now_ms),
            locked_addresses: counters.addresses.locked_now(now_ms),
            locked_bearer_addresses: counters.bearers.locked_now(now_ms),
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        let counters = self.counters();
        (counters.names.slots.len(), counters.addresses.slots.len() + counters.bearers.slots.len())
    }
}

impl Attempt<'_> {
    /// The address bucket the attempt is counted under.
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }

    /// The password was wrong (or the name unknown), or the bearer token
    /// named no admin or live session: the lockouts this starts.
    pub fn failed(mut self, now_ms: i64) -> Vec<Lockout> {
        self.ended = true;
        let mut counters = self.throttle.counters();
        let mut started = Vec::new();
        if let Some((failures, until_ms)) = self.name.and_then(|name| counters.names.failed(&name, now_ms)) {
            started.push(Lockout { scope: Scope::Name, failures, until_ms });
        }
        if let Some((failures, until_ms)) = self.address.and_then(|a| counters.by_address(self.kind).failed(&a, now_ms)) {
            started.push(Lockout { scope: Scope::Address, failures, until_ms });
        }
        self.throttle.lockouts.fetch_add(started.len() as u64, Ordering::Relaxed);
        started
    }

    /// The password (or the bearer token) was right: the name's failures
    /// are forgotten. The address's are not, or signing in to one's own
    /// account (or calling with one's own token) between guesses would
    /// reset the count of a spray of guesses.
    pub fn succeeded(mut self, now_ms: i64) {
        self.ended = true;
        let mut counters = self.throttle.counters();
        if let Some(name) = &self.name {
            counters.names.reset(name, now_ms);
        }
        if let Some(address) = self.address {
            match self.kind {
                Kind::SignIn => counters.addresses.settled(&address),
                // Every admin call is one: an address with nothing against it is not kept.
                Kind::Bearer => counters.bearers.release(&address),
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut counters = self.throttle.counters();
        if let Some(name) = &self.name {
            counters.names.settled(name);
        }
        if let Some(address) = self.address {
            match self.kind {
                Kind::SignIn => counters.addresses.settled(&address),
                Kind::Bearer => counters.bearers.release(&address),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIN: i64 = 60_000;

    fn config(names: u32, addresses: u32) -> LoginConfig {
        LoginConfig { name_failures: names, address_failures: addresses, window: Duration::from_secs(900), lockout: Duration::from_secs(600) }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    fn fail(t: &LoginThrottle, name: &str, from: &str, now: i64) -> Vec<Lockout> {
        t.begin(name, ip(from), now).expect("not locked").failed(now)
    }

    #[test]
    fn a_name_is_locked_after_its_failures_for_the_lockout_then_counts_afresh() {
        let t = LoginThrottle::new(&config(3, 0));
        assert!(fail(&t, "ada", "192.0.2.1", 0).is_empty());
        assert!(fail(&t, "ada", "192.0.2.2", MIN).is_empty());
        let started = fail(&t, "ada", "192.0.2.3", 2 * MIN);
        assert_eq!(started, [Lockout { scope: Scope::Name, failures: 3, until_ms: 12 * MIN }]);
        assert_eq!(t.begin("ada", ip("192.0.2.9"), 2 * MIN).err(), Some(600));
        assert_eq!(t.begin("ada", None, 12 * MIN - 1500).err(), Some(2), "whole seconds, rounded up");
        assert!(t.begin("bob", ip("192.0.2.3"), 3 * MIN).is_ok(), "other names go on");
        assert_eq!(t.status(3 * MIN), ThrottleStatus { lockouts: 1, refused: 2, locked_names: 1, locked_addresses: 0, locked_bearer_addresses: 0 });
        // After the lockout, a fresh window: two more failures lock nothing.
        assert!(fail(&t, "ada", "192.0.2.1", 12 * MIN).is_empty());
        assert!(fail(&t, "ada", "192.0.2.1", 12 * MIN).is_empty());
        assert_eq!(t.status(12 * MIN).locked_names, 0);
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let t = LoginThrottle::new(&config(3, 0));
        fail(&t, "ada", "192.0.2.1", 0);
        fail(&t, "ada", "192.0.2.1", MIN);
        assert!(fail(&t, "ada", "192.0.2.1", 15 * MIN).is_empty(), "a new window began");
        assert!(t.begin("ada", None, 15 * MIN).is_ok());
    }

    #[test]
    fn success_resets_the_name_but_not_the_address() {
        let t = LoginThrottle::new(&config(3, 4));
        fail(&t, "ada", "192.0.2.1", 0);
        fail(&t, "ada", "192.0.2.1", 0);
        t.begin("ada", ip("192.0.2.1"), 0).unwrap().succeeded(0);
        assert!(fail(&t, "ada", "192.0.2.1", 0).is_empty(), "the name starts afresh");
        // The address had three failures and one success: its fourth locks it.
        assert_eq!(fail(&t, "bob", "192.0.2.1", 0), [Lockout { scope: Scope::Address, failures: 4, until_ms: 10 * MIN }]);
        assert_eq!(t.begin("carol", ip("192.0.2.1"), 0).err(), Some(600));
        assert!(t.begin("carol", ip("192.0.2.2"), 0).is_ok());
    }

    #[test]
    fn attempts_being_checked_count_so_concurrency_gets_no_extra_guesses() {
        let t = LoginThrottle::new(&config(3, 0));
        let attempts: Vec<Attempt> = (0..3).map(|_| t.begin("ada", None, 0).unwrap()).collect();
        assert_eq!(t.begin("ada", None, 0).err(), Some(600), "three guesses are under way");
        let mut started = Vec::new();
        for a in attempts {
            started.extend(a.failed(0));
        }
        assert_eq!(started.len(), 1, "one lockout: {started:?}");
        // An attempt that ends on neither (dropped) frees its place.
        let t = LoginThrottle::new(&config(1, 0));
        drop(t.begin("ada", None, 0).unwrap());
        assert!(t.begin("ada", None, 0).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_and_v4_mapped_ones_as_ipv4() {
        let t = LoginThrottle::new(&config(0, 2));
        fail(&t, "a", "2001:db8:1:2::1", 0);
        assert_eq!(fail(&t, "b", "2001:db8:1:2:ffff::9", 0).len(), 1);
        assert!(t.begin("c", ip("2001:db8:1:3::1"), 0).is_ok(), "another /64");
        assert_eq!(describe_bucket(address_bucket("2001:db8:1:2:ffff::9".parse().unwrap())), "2001:db8:1:2::/64");
        fail(&t, "a", "::ffff:192.0.2.7", 0);
        fail(&t, "a", "192.0.2.7", 0);
        assert!(t.begin("a", ip("192.0.2.7"), 0).is_err());
    }

    #[test]
    fn a_lifted_name_signs_in_again_and_its_address_stays_counted() {
        let t = LoginThrottle::new(&config(2, 3));
        fail(&t, "ada", "192.0.2.1", 0);
        assert_eq!(fail(&t, "ada", "192.0.2.1", 0).len(), 1);
        assert!(t.begin("ada", ip("192.0.2.9"), MIN).is_err());
        assert_eq!(t.lift_name("ada", MIN), Lifted { locked_until_ms: Some(10 * MIN), failures: 0 });
        assert_eq!(t.status(MIN).locked_names, 0);
        assert!(fail(&t, "ada", "192.0.2.9", MIN).is_empty(), "a fresh count: one failure locks nothing");
        assert_eq!(t.lift_name("ada", MIN), Lifted { locked_until_ms: None, failures: 1 });
        assert!(fail(&t, "ada", "192.0.2.9", MIN).is_empty(), "forgotten again");
        // The address's three failures lock it: lifting the name did not reset them.
        assert_eq!(fail(&t, "bob", "192.0.2.1", MIN).len(), 1);
        assert_eq!(t.lift_name("carol", MIN), Lifted { locked_until_ms: None, failures: 0 });
        // An attempt being checked keeps its place.
        let attempt = t.begin("eve", None, MIN).unwrap();
        assert_eq!(t.lift_name("eve", MIN), Lifted { locked_until_ms: None, failures: 0 });
        assert_eq!(attempt.failed(MIN), []);
    }

    #[test]
    fn off_counts_nothing() {
        let t = LoginThrottle::new(&config(0, 0));
        for _ in 0..50 {
            assert!(fail(&t, "ada", "192.0.2.1", 0).is_empty());
        }
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn memory_stays_bounded_under_a_spray_and_lockouts_are_kept() {
        let t = LoginThrottle::with_capacity(&config(2, 0), 100);
        // A locked name, then a spray of random names that fills the map.
        fail(&t, "ada", "192.0.2.1", 0);
        fail(&t, "ada", "192.0.2.1", 0);
        for i in 0..10_000 {
            fail(&t, &format!("spray-{i}"), "192.0.2.1", MIN);
            assert!(t.tracked().0 <= 100);
        }
        assert!(t.begin("ada", None, MIN).is_err(), "the lockout survived the spray");
        // When the map is full, names whose window ended go first, and a
        // count still in its window is kept.
        let t = LoginThrottle::with_capacity(&config(3, 0), 10);
        for i in 0..8 {
            fail(&t, &format!("old-{i}"), "192.0.2.1", 0);
        }
        fail(&t, "target", "192.0.2.1", 14 * MIN);
        fail(&t, "target", "192.0.2.1", 14 * MIN);
        fail(&t, "new-0", "192.0.2.1", 16 * MIN);
        assert_eq!(t.tracked().0, 10);
        fail(&t, "new-1", "192.0.2.1", 16 * MIN);
        assert_eq!(t.tracked().0, 3, "the ended windows were dropped");
        assert_eq!(fail(&t, "target", "192.0.2.1", 16 * MIN).len(), 1, "its count survived");
        // A map full of lockouts takes no new name (until one ends) and stays bounded.
        let t = LoginThrottle::with_capacity(&config(1, 0), 10);
        for i in 0..10 {
            fail(&t, &format!("locked-{i}"), "192.0.2.1", 0);
        }
        assert!(fail(&t, "new", "192.0.2.1", 0).is_empty());
        assert_eq!(t.tracked().0, 10);
        assert!(t.begin("locked-3", None, 0).is_err());
    }
}

#[cfg(test)]
mod bearer_tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn failed_bearers_lock_their_address_apart_from_sign_ins_and_valid_ones_leave_nothing() {
        let config = LoginConfig { name_failures: 5, address_failures: 2, window: Duration::from_secs(900), lockout: Duration::from_secs(600) };
        let t = LoginThrottle::new(&config);
        // A valid token, many times: nothing is kept of it.
        for _ in 0..10 {
            t.begin_bearer(ip("192.0.2.1"), 0).unwrap().succeeded(0);
        }
        assert_eq!(t.tracked(), (0, 0));
        assert!(t.begin_bearer(ip("192.0.2.1"), 0).unwrap().failed(0).is_empty());
        t.begin_bearer(ip("192.0.2.1"), 0).unwrap().succeeded(0);
        let started = t.begin_bearer(ip("192.0.2.1"), 0).unwrap().failed(0);
        assert_eq!(started, [Lockout { scope: Scope::Address, failures: 2, until_ms: 600_000 }], "a success between does not reset");
        assert_eq!(t.begin_bearer(ip("192.0.2.1"), 1_000).err(), Some(599));
        assert!(t.begin_bearer(ip("192.0.2.2"), 0).is_ok(), "other addresses go on");
        assert!(t.begin("ada", Some(ip("192.0.2.1")), 0).is_ok(), "sign-ins from it go on");
        let status = t.status(0);
        assert_eq!((status.locked_bearer_addresses, status.locked_addresses, status.lockouts, status.refused), (1, 0, 1, 1));
        assert!(t.begin_bearer(ip("192.0.2.1"), 600_000).is_ok(), "the lockout ends");
    }

    #[test]
    fn a_lifted_address_is_taken_again_for_both_kinds_and_ipv6_by_its_64() {
        let config = LoginConfig { name_failures: 0, address_failures: 2, window: Duration::from_secs(900), lockout: Duration::from_secs(600) };
        let t = LoginThrottle::new(&config);
        for _ in 0..2 {
            t.begin_bearer(ip("2001:db8::1"), 0).unwrap().failed(0);
        }
        t.begin("ada", Some(ip("2001:db8::2")), 0).unwrap().failed(0);
        assert!(t.begin_bearer(ip("2001:db8::3"), 0).is_err(), "the /64 is locked out of bearer tokens");
        let (bucket, sign_in, bearer) = t.lift_address(ip("2001:db8::ffff"), 1_000);
        assert_eq!(bucket, ip("2001:db8::"));
        assert_eq!(sign_in, Lifted { locked_until_ms: None, failures: 1 });
        assert_eq!(bearer, Lifted { locked_until_ms: Some(600_000), failures: 0 });
        assert!(t.begin_bearer(ip("2001:db8::1"), 1_000).unwrap().failed(1_000).is_empty(), "a fresh count: one failure locks nothing");
        assert!(t.begin("ada", Some(ip("2001:db8::2")), 1_000).unwrap().failed(1_000).is_empty(), "the sign-in count is fresh too");
        assert_eq!(t.status(1_000).locked_bearer_addresses, 0);
        // Another address's lockout stays; an address never seen lifts nothing.
        for _ in 0..2 {
            t.begin_bearer(ip("192.0.2.1"), 0).unwrap().failed(0);
        }
        assert_eq!(t.lift_address(ip("192.0.2.2"), 1_000).2, Lifted { locked_until_ms: None, failures: 0 });
        assert!(t.begin_bearer(ip("192.0.2.1"), 1_000).is_err());
        // A v4-mapped IPv6 address lifts its IPv4 address.
        assert_eq!(t.lift_address(ip("::ffff:192.0.2.1"), 1_000).0, ip("192.0.2.1"));
        assert!(t.begin_bearer(ip("192.0.2.1"), 1_000).is_ok());
    }
}
