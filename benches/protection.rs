//! Protection benchmark: the cost per request of the pre-auth protection
//! steps (attack rules, then the blocklist by address and user agent, then
//! the key) with no blocklist entries and with 10,000, beside a linear scan
//! over the same 10,000 entries, parsed up front (what a plain list costs).
//!
//!   cargo bench --bench protection            # full run
//!   cargo bench --bench protection -- --smoke # a quick run for CI

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use keytrail::protection::{self, AttackRules, Blocklist, Entry, EntryKind};

fn entry(i: usize, kind: EntryKind, value: String) -> Entry {
    let (value, reason) = protection::validate(kind, &value, None).expect("valid bench entry");
    Entry {
        id: format!("blk_{i}"),
        tenant_id: None,
        rule_id: format!("rule-{i}"),
        kind,
        value,
        reason,
        expires_at: None,
        added_by: "bench".into(),
        created_at: 0,
    }
}

/// 10,000 entries: IPv4 addresses and ranges of several lengths, IPv6
/// ranges, user-agent fragments and key ids — none of which match the
/// benchmark's clean requests.
fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| match i % 20 {
            0..=11 => entry(i, EntryKind::Ip, format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)),
            12..=14 => entry(i, EntryKind::Ip, format!("172.{}.{}.0/{}", 16 + (i % 16), (i >> 4) & 255, 20 + (i % 5))),
            15..=16 => entry(i, EntryKind::Ip, format!("2001:db8:{:x}::/{}", i, 48 + (i % 3) * 8)),
            17..=18 => entry(i, EntryKind::UserAgent, format!("badbot-{i}")),
            _ => entry(i, EntryKind::Key, format!("key_{i:024}")),
        })
        .collect()
}

/// The naive alternative: every entry, parsed once up front, checked in turn.
enum Parsed {
    V4(u32, u32),
    V6(u128, u128),
    Agent(String),
    Key(String),
    Country,
}

fn parse_all(entries: &[Entry]) -> Vec<Parsed> {
    entries
        .iter()
        .map(|e| match e.kind {
            EntryKind::Ip => {
                let (net, len) = e.value.split_once('/').map_or((e.value.as_str(), None), |(n, l)| (n, l.parse::<u32>().ok()));
                match net.parse::<IpAddr>().unwrap() {
                    IpAddr::V4(n) => {
                        let len = len.unwrap_or(32);
                        let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                        Parsed::V4(u32::from(n) & m, m)
                    }
                    IpAddr::V6(n) => {
                        let len = len.unwrap_or(128);
                        let m = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                        Parsed::V6(u128::from(n) & m, m)
                    }
                }
            }
            EntryKind::UserAgent => Parsed::Agent(e.value.to_ascii_lowercase()),
            EntryKind::Key => Parsed::Key(e.value.clone()),
            EntryKind::Country => Parsed::Country,
        })
        .collect()
}

fn linear_match(entries: &[Parsed], ip: IpAddr, user_agent: &str, key_id: &str) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    entries.iter().any(|e| match (e, ip) {
        (Parsed::V4(net, m), IpAddr::V4(a)) => u32::from(a) & m == *net,
        (Parsed::V6(net, m), IpAddr::V6(a)) => u128::from(a) & m == *net,
        (Parsed::Agent(fragment), _) => ua.contains(fragment.as_str()),
        (Parsed::Key(k), _) => k == key_id,
        (Parsed::Country, _) => false,
        _ => false,
    })
}

fn time_ns(iterations: u64, mut f: impl FnMut(u64) -> bool) -> f64 {
    // Warm up, then the median of five timed rounds.
    for i in 0..iterations / 10 {
        black_box(f(i));
    }
    let mut rounds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for i in 0..iterations {
                black_box(f(i));
            }
            t.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rounds[2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let iterations: u64 = if smoke { 20_000 } else { 1_000_000 };
    let rules = AttackRules::default();
    let callers: Vec<IpAddr> = (0..256).map(|i| format!("192.168.{}.{}", i / 16, i % 256).parse().unwrap()).collect();
    let path = "/docs/v1/items/12345";
    let query = Some("fields=name,price&sort=-updated&page=3");
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
    let key_id = "key_0000000000000000000000000001";

    let mut rows = Vec::new();
    for n in [0usize, 10_000] {
        let list = entries(n);
        let parsed = parse_all(&list);
        let compiled = Blocklist::build(list);
        assert_eq!(compiled.len(), n);
        let full = time_ns(iterations, |i| {
            let ip = callers[(i % 256) as usize];
            rules.check(path, query).is_some()
                || compiled.match_caller(ip, None, Some(ua), 0).is_some()
                || compiled.match_key(key_id, 0).is_some()
        });
        let lists_only = time_ns(iterations, |i| {
            let ip = callers[(i % 256) as usize];
            compiled.match_caller(ip, None, Some(ua), 0).is_some() || compiled.match_key(key_id, 0).is_some()
        });
        let linear = if n > 0 {
            let scan_iterations = (iterations / 100).max(1000);
            Some(time_ns(scan_iterations, |i| linear_match(&parsed, callers[(i % 256) as usize], ua, key_id)))
        } else {
            None
        };
        // A hit, to be sure the lists hold what was put in.
        if n > 0 {
            for ip in ["10.0.0.1", "172.28.1.9"] {
                assert!(compiled.match_caller(ip.parse().unwrap(), None, None, 0).is_some(), "{ip}");
            }
            assert!(compiled.match_caller(callers[0], None, Some("x badbot-17 y"), 0).is_some());
            assert!(linear_match(&parsed, "172.28.1.9".parse().unwrap(), "", ""));
        }
        rows.push((n, full, lists_only, linear));
    }
    println!("\n### protection steps per request ({iterations} requests, median of 5 rounds)\n");
    println!("| blocklist entries | attack rules + blocklists ns/request | blocklists alone ns | linear scan of the same entries (parsed once) ns |");
    println!("| --- | --- | --- | --- |");
    for (n, full, lists, linear) in &rows {
        let linear = linear.map_or("-".to_string(), |l| format!("{l:.0}"));
        println!("| {n} | {full:.0} | {lists:.0} | {linear} |");
    }
    let (empty, full) = (rows[0].1, rows[1].1);
    println!("\n10,000 entries add {:.0} ns per request ({:.2}x the cost with none)", full - empty, full / empty);
    println!(
        "\nmachine: {} CPUs, {}; {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
            .unwrap_or_default(),
        chrono::Utc::now().format("%Y-%m-%d")
    );
}
