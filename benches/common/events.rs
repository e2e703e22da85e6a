//! The benchmarks' deterministic audit events (shared by `store` and
//! `archive`, included by path): 20 tenants of skewed size, 500 consumers
//! per tenant with a Zipf skew, 300 paths, 5 % 4xx, 0.5 % 5xx, log-normal
//! latencies around 20 ms, 40 user agents, 5,000 client IPs.

use keytrail::event::{Category, Event};
use keytrail::splitmix::SplitMix64;

/// Standard normal (Box–Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = rng.unit().max(1e-12);
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Zipf-like picker over `n` items with exponent `s`.
struct Skewed(Vec<f64>);

impl Skewed {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                acc += 1.0 / (k as f64).powf(s);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Skewed(cumulative.into_iter().map(|c| c / total).collect())
    }
    fn pick(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.unit();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

pub const TENANTS: usize = 20;
pub const CONSUMERS_PER_TENANT: usize = 500;
pub const PATHS: usize = 300;
pub const USER_AGENTS: usize = 40;
pub const IPS: u64 = 5_000;
/// 2026-11-01T00:00:00Z: the data's fixed start, so runs are comparable.
pub const START_MS: i64 = 1_793_491_200_000;

pub struct Generator {
    rng: SplitMix64,
    tenants: Skewed,
    consumers: Skewed,
    paths: Skewed,
    agents: Vec<String>,
    path_names: Vec<String>,
    step_ms: f64,
    n: u64,
}

impl Generator {
    /// `total` events spread evenly over `days` days from [`START_MS`].
    pub fn new(total: u64, days: u64) -> Self {
        let agents = (0..USER_AGENTS)
            .map(|i| match i % 4 {
                0 => format!("python-requests/2.{}.0", 20 + i),
                1 => format!("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/{}.0", 100 + i),
                2 => format!("curl/8.{}.1", i),
                _ => format!("my-saas-client/{}.{} (+https://example.com/bot)", i / 10, i % 10),
            })
            .collect();
        let path_names = (0..PATHS)
            .map(|i| match i % 5 {
                0 => format!("/v1/orders/{}", i),
                1 => format!("/v1/customers/{}/invoices", i),
                2 => format!("/v2/catalog/items/{}", i),
                3 => format!("/v1/reports/{}/export", i),
                _ => format!("/docs/page-{}", i),
            })
            .collect();
        Generator {
            rng: SplitMix64(0x6b65_7974_7261_696c),
            tenants: Skewed::new(TENANTS, 1.0),
            consumers: Skewed::new(CONSUMERS_PER_TENANT, 1.1),
            paths: Skewed::new(PATHS, 1.0),
            agents,
            path_names,
            step_ms: (days * 86_400_000) as f64 / total.max(1) as f64,
            n: 0,
        }
    }

    pub fn event(&mut self) -> Event {
        let r = &mut self.rng;
        let tenant = self.tenants.pick(r);
        let consumer = self.consumers.pick(r);
        let path = &self.path_names[self.paths.pick(r)];
        let roll = r.below(1000);
        let status: u16 = if roll < 5 {
            [500, 502, 503][r.below(3) as usize]
        } else if roll < 55 {
            [400, 401, 403, 404, 429][r.below(5) as usize]
        } else {
            200
        };
        let method = match r.below(20) {
            0..=13 => "GET",
            14..=17 => "POST",
            18 => "PUT",
            _ => "DELETE",
        };
        // Log-normal latency around 20 ms.
        let latency_us = ((20_000f64).ln() + 0.8 * normal(r)).exp() as u64;
        let ip = r.below(IPS);
        let mut e = Event::new(format!("tenant-{tenant:02}"), Category::Request, "request", if status < 400 { "success" } else { "failure" });
        e.timestamp_ms = START_MS + (self.n as f64 * self.step_ms) as i64;
        // A UUIDv7 stamped with the event's time, as the gateway makes them.
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&r.next_u64().to_le_bytes());
        random[8..].copy_from_slice(&r.next_u64().to_le_bytes()[..2]);
        e.request_id = Some(uuid::Builder::from_unix_timestamp_millis(e.timestamp_ms as u64, &random).into_uuid().to_string());
        e.consumer_id = Some(format!("cons_{tenant:02}_{consumer:04}").into());
        e.consumer_name = Some(format!("client-{tenant}-{consumer}").into());
        e.actor = Some(format!("consumer:cons_{tenant:02}_{consumer:04}").into());
        e.api_id = Some(path.split('/').nth(2).unwrap_or("docs").to_string().into());
        e.key_id = Some(format!("key_{tenant:02}_{consumer:04}").into());
        e.key_hint = Some(format!("kt_live****{:04}", consumer).into());
        e.method = Some(method.to_string().into());
        e.path = Some(path.clone());
        e.status_code = Some(status);
        e.latency_us = Some(latency_us);
        e.upstream_latency_us = Some(latency_us.saturating_sub(300));
        e.request_size_bytes = Some(if method == "GET" { 0 } else { 200 + r.below(2000) });
        e.response_size_bytes = Some(100 + r.below(50_000));
        e.client_ip = Some(format!("10.{}.{}.{}", ip / 65536, (ip / 256) % 256, ip % 256).into());
        e.user_agent = Some(self.agents[r.below(USER_AGENTS as u64) as usize].clone());
        if status >= 400 {
            e.error_code = Some(format!("http_{status}").into());
        }
        self.n += 1;
        e
    }
}
