//! Pre-authentication protection: blocklists (IP addresses and CIDR ranges,
//! API keys, user-agent patterns) and built-in attack rules (SQL injection
//! and path traversal signatures, malformed requests).
//!
//! Blocklists are compiled into a [`Blocklist`] when the gateway's snapshot
//! is built: IP ranges go into one hash map per prefix length (a lookup
//! costs one masked probe per distinct length, however many entries there
//! are), user-agent patterns into one Aho-Corasick automaton, keys into a
//! map. A refused caller gets a generic 403; the events keep the reason
//! code, the rule id, a fingerprint of the request and a threat score.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use aho_corasick::AhoCorasick;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The reason codes a block can carry.
pub const REASONS: [&str; 8] = [
    "IP_BLOCKLISTED",
    "API_KEY_REVOKED",
    "GEO_BLOCKED",
    "USER_AGENT_BLOCKED",
    "SQL_INJECTION_ATTEMPT",
    "ABUSE_PATTERN_DETECTED",
    "MALFORMED_REQUEST",
    "RATE_LIMIT_EXCEEDED",
];

/// What an entry matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An IPv4 or IPv6 address or CIDR range.
    Ip,
    /// An API key, by its `key_id`.
    Key,
    /// A user-agent substring, matched without regard to case.
    UserAgent,
    /// An ISO 3166 country code, from the operator's address table.
    Country,
}

impl EntryKind {
    fn default_reason(self) -> &'static str {
        match self {
            EntryKind::Ip => "IP_BLOCKLISTED",
            EntryKind::Key => "API_KEY_REVOKED",
            EntryKind::UserAgent => "USER_AGENT_BLOCKED",
            EntryKind::Country => "GEO_BLOCKED",
        }
    }

    /// The threat score a match of this kind starts from.
    fn base_score(self) -> u8 {
        match self {
            EntryKind::Ip => 70,
            EntryKind::Key => 80,
            EntryKind::UserAgent => 50,
            EntryKind::Country => 40,
        }
    }
}

/// One blocklist entry, global (`tenant_id` none) or a tenant's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub id: String,
    pub tenant_id: Option<String>,
    pub rule_id: String,
    pub kind: EntryKind,
    pub value: String,
    pub reason: String,
    #[serde(serialize_with = "crate::store::ser_opt_ts")]
    pub expires_at: Option<i64>,
    pub added_by: String,
    #[serde(serialize_with = "crate::store::ser_ts")]
    pub created_at: i64,
}

impl Entry {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_at.is_none_or(|t| t > now_ms)
    }
}

/// The first of `entries` that has not expired.
fn first_live<'a>(entries: impl IntoIterator<Item = &'a Arc<Entry>>, now_ms: i64) -> Option<&'a Arc<Entry>> {
    entries.into_iter().find(|e| e.live(now_ms))
}

/// Why a range of IPv4-mapped IPv6 addresses shorter than /96 is refused.
const MAPPED_TOO_WIDE: &str =
    "a range of IPv4-mapped addresses (::ffff:…) needs a prefix of /96 or more (::ffff:198.51.100.0/120 is 198.51.100.0/24); give the IPv4 range, or an IPv6 one without ::ffff:";

/// Parses `addr` or `addr/len` into (address bits, family width, prefix).
fn parse_range(text: &str) -> Option<(u128, u8, u8)> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len.parse::<u8>().ok()?)),
        None => (text, None),
    };
    // A v4-mapped address or range (`::ffff:203.0.113.0/120`) is the IPv4
    // one it maps, as a mapped caller is matched as IPv4 ([`ip_bits`]).
    let (bits, width, len) = match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u8, len.unwrap_or(32)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if len.is_none_or(|l| l >= 96) => (u128::from(u32::from(v4)), 32u8, len.map_or(32, |l| l - 96)),
            // Wider, it would reach past the mapped addresses into plain
            // IPv6 ones, while a mapped caller is matched as IPv4: it would
            // match no one (see [`MAPPED_TOO_WIDE`]).
            Some(_) => return None,
            None => (u128::from(v6), 128u8, len.unwrap_or(128)),
        },
    };
    (len <= width).then(|| (mask(bits, width, len), width, len))
}

/// An address as (bits, family width); a v4-mapped IPv6 address counts as IPv4.
fn ip_bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), 32),
            None => (u128::from(v6), 128),
        },
    }
}

fn mask(bits: u128, width: u8, len: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = if width == 32 { u128::from(u32::MAX << (32 - u32::from(len))) } else { u128::MAX << (128 - u32::from(len)) };
    bits & keep
}

/// Checks an entry an admin sent; returns it with its value normalised.
pub fn validate(kind: EntryKind, value: &str, reason: Option<&str>) -> Result<(String, String), ApiError> {
    let value = value.trim();
    let normalised = match kind {
        EntryKind::Ip => {
            let (bits, width, len) = parse_range(value).ok_or_else(|| {
                let mapped = value.split_once('/').and_then(|(addr, _)| addr.parse::<std::net::Ipv6Addr>().ok()).and_then(|v6| v6.to_ipv4_mapped());
                if mapped.is_some() && value.split_once('/').is_some_and(|(_, len)| len.parse::<u8>().is_ok_and(|l| l < 96)) {
                    return ApiError::invalid_body(format!("`value` `{value}`: {MAPPED_TOO_WIDE}"));
                }
                ApiError::invalid_body(format!(
                    "`value` `{value}` is not an IP address or CIDR range such as 203.0.113.7, 198.51.100.0/24 or 2001:db8::/32"
                ))
            })?;
            let addr = if width == 32 { IpAddr::from(std::net::Ipv4Addr::from(bits as u32)) } else { IpAddr::from(std::net::Ipv6Addr::from(bits)) };
            if len == width { addr.to_string() } else { format!("{addr}/{len}") }
        }
        EntryKind::Key => {
            if !value.starts_with("key_") || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ApiError::invalid_body("`value` must be a key id such as key_…, never the key itself"));
            }
            value.to_string()
        }
        EntryKind::Country => {
            if !is_country_code(value) {
                return Err(ApiError::invalid_body("`value` must be a two-letter country code such as DE or US"));
            }
            value.to_ascii_uppercase()
        }
        EntryKind::UserAgent => {
            if !(3..=200).contains(&value.chars().count()) || value.chars().any(char::is_control) {
                return Err(ApiError::invalid_body("`value` must be a user-agent fragment of 3-200 characters"));
            }
            if crate::redact::holds_secret(value) {
                return Err(ApiError::invalid_body("`value` must not contain an API key or token"));
            }
            value.to_string()
        }
    };
    let reason = reason.unwrap_or(kind.default_reason());
    if !REASONS.contains(&reason) {
        return Err(ApiError::invalid_body(format!("`reason` must be one of {}", REASONS.join(", "))));
    }
    Ok((normalised, reason.to_string()))
}

/// Values keyed by address range: one map per (family width, prefix
/// length), longest prefix first, so a lookup costs one masked probe per
/// distinct length however many ranges there are.
#[derive(Debug)]
struct PrefixMap<V> {
    by_len: Vec<(u8, u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap { by_len: Vec::new() }
    }
}

impl<V> PrefixMap<V> {
    /// The map holding ranges of this family and prefix length.
    fn map_for(&mut self, width: u8, len: u8) -> &mut HashMap<u128, V> {
        let at = match self.by_len.iter().position(|(w, l, _)| *w == width && *l == len) {
            Some(at) => at,
            None => {
                self.by_len.push((width, len, HashMap::new()));
                self.by_len.sort_by_key(|(_, len, _)| std::cmp::Reverse(*len));
                self.by_len.iter().position(|(w, l, _)| *w == width && *l == len).expect("just added")
            }
        };
        &mut self.by_len[at].2
    }

    /// The values of the ranges holding `ip`, most specific first.
    fn matches(&self, ip: IpAddr) -> impl Iterator<Item = &V> {
        let (bits, width) = ip_bits(ip);
        self.by_len.iter().filter(move |(w, _, _)| *w == width).filter_map(move |(_, len, map)| map.get(&mask(bits, width, *len)))
    }
}

/// IP blocklist entries by range.
#[derive(Debug, Default)]
struct IpRanges(PrefixMap<Vec<Arc<Entry>>>);

impl IpRanges {
    fn insert(&mut self, entry: Arc<Entry>) {
        let Some((bits, width, len)) = parse_range(&entry.value) else { return };
        self.0.map_for(width, len).entry(bits).or_default().push(entry);
    }

    fn find(&self, ip: IpAddr, now_ms: i64) -> Option<&Arc<Entry>> {
        first_live(self.0.matches(ip).flatten(), now_ms)
    }
}

/// Whether `code` looks like an ISO 3166 alpha-2 country code (any case).
fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic())
}

/// The operator's address → country table: a text file of `cidr,CC`
/// lines (`#` starts a comment), the most specific range winning.
#[derive(Debug, Default)]
pub struct GeoTable {
    ranges: PrefixMap<Arc<str>>,
    count: usize,
}

impl GeoTable {
    /// Reads a table; an error names the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<GeoTable, String> {
        let mut table = GeoTable::default();
        let mut countries: HashMap<String, Arc<str>> = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}: `{line}`", number + 1);
            let (range, country) = line.split_once(',').ok_or_else(|| bad("expected `cidr,country`"))?;
            let (bits, width, len) = parse_range(range.trim()).ok_or_else(|| bad("not an IP address or CIDR range"))?;
            let country = country.trim();
            if !is_country_code(country) {
                return Err(bad("the country must be a two-letter code"));
            }
            let code = countries.entry(country.to_ascii_uppercase()).or_insert_with_key(|c| Arc::from(c.as_str())).clone();
            table.ranges.map_for(width, len).insert(bits, code);
            table.count += 1;
        }
        Ok(table)
    }

    pub fn load(path: &std::path::Path) -> Result<GeoTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        GeoTable::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The country of `ip`, from its most specific range.
    pub fn country(&self, ip: IpAddr) -> Option<&str> {
        self.ranges.matches(ip).next().map(|c| c.as_ref())
    }
}

/// Where a caller's country comes from: the operator's `cidr,CC` table
/// first (so it can correct the database), then a MaxMind database
/// (GeoIP2 / GeoLite2 Country or City, `.mmdb`).
#[derive(Default)]
pub struct Countries {
    table: Option<GeoTable>,
    database: Option<maxminddb::Reader<Vec<u8>>>,
}

impl Countries {
    /// Loads what is configured; an error names the file and what is wrong.
    pub fn load(table: Option<&std::path::Path>, database: Option<&std::path::Path>) -> Result<Countries, String> {
        let table = table.map(|path| GeoTable::load(path).map_err(|e| format!("invalid gateway.geo_table: {e}"))).transpose()?;
        let database = database
            .map(|path| {
                let reader = maxminddb::Reader::open_readfile(path)
                    .map_err(|e| format!("invalid gateway.geo_database: {}: not a MaxMind database ({e})", path.display()))?;
                let kind = &reader.metadata().database_type;
                if !(kind.contains("Country") || kind.contains("City") || kind.contains("Enterprise")) {
                    return Err(format!(
                        "invalid gateway.geo_database: {}: a `{kind}` database has no countries; use a GeoIP2 or GeoLite2 Country or City database",
                        path.display()
                    ));
                }
                Ok(reader)
            })
            .transpose()?;
        Ok(Countries { table, database })
    }

    pub fn is_configured(&self) -> bool {
        self.table.is_some() || self.database.is_some()
    }

    /// Ranges in the table and the database's type, for the start-up log.
    pub fn describe(&self) -> String {
        let table = self.table.as_ref().map(|t| format!("{} table ranges", t.len()));
        let database = self.database.as_ref().map(|d| format!("{} database", d.metadata().database_type));
        table.into_iter().chain(database).collect::<Vec<_>>().join(" + ")
    }

    /// The caller's ISO country code, if the table or the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<&str> {
        if let Some(code) = self.table.as_ref().and_then(|t| t.country(ip)) {
            return Some(code);
        }
        let found = self.database.as_ref()?.lookup(ip).ok()?;
        let code: Option<&str> = found
            .decode_path(&maxminddb::path!["country", "iso_code"])
            .ok()
            .flatten()
            .or_else(|| found.decode_path(&maxminddb::path!["registered_country", "iso_code"]).ok().flatten());
        code.filter(|c| c.len() == 2)
    }
}

/// A list of addresses and CIDR ranges from the configuration (a mapped
/// IPv4 address matches as the IPv4 one).
#[derive(Debug, Default, Clone)]
pub struct Networks {
    ranges: Vec<(u128, u8, u8)>,
}

impl Networks {
    /// Parses CIDR ranges or addresses; an error names the bad one.
    pub fn parse(ranges: &[String]) -> Result<Networks, String> {
        let ranges = ranges
            .iter()
            .map(|r| parse_range(r.trim()).ok_or_else(|| format!("`{r}` is not an IP address or CIDR range")))
            .collect::<Result<_, _>>()?;
        Ok(Networks { ranges })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (bits, width) = ip_bits(ip);
        self.ranges.iter().any(|(net, w, len)| *w == width && mask(bits, width, *len) == *net)
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The networks `gateway.upstream_deny` keeps apis' upstreams out of unless
/// the operator says otherwise: the link-local range and the cloud
/// metadata services in it (`169.254.169.254`, and AWS's IPv6 one), whose
/// answers hold the machine's credentials.
pub const DEFAULT_UPSTREAM_DENY: [&str; 3] = ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254"];

/// Where an api's upstream may not be: the networks of
/// `gateway.upstream_deny`, and keytrail's own listeners (the gateway would
/// call itself in a loop, or hand the admin API to callers its network
/// placement keeps out). An admin of one tenant may set upstreams, so
/// this is checked when an api is made (for an address) and at every new
/// upstream connection (for each address a name resolves to).
#[derive(Debug, Default, Clone)]
pub struct UpstreamGuard {
    deny: Networks,
    own: Vec<std::net::SocketAddr>,
}

impl UpstreamGuard {
    pub fn new(deny: Networks, own: Vec<std::net::SocketAddr>) -> UpstreamGuard {
        UpstreamGuard { deny, own }
    }

    /// Why `addr` may not be an upstream, or `None` when it may.
    pub fn refuses(&self, addr: std::net::SocketAddr) -> Option<String> {
        let ip = addr.ip().to_canonical();
        // `0.0.0.0` and `::` reach this machine too.
        let here = ip.is_loopback() || ip.is_unspecified();
        let own = self.own.iter().any(|l| l.port() == addr.port() && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && here)));
        if own {
            return Some(format!("{addr} is keytrail's own listener"));
        }
        self.deny.contains(ip).then(|| format!("{ip} is in a network `gateway.upstream_deny` refuses"))
    }
}

/// The header a trusted proxy names the client in (`real_ip_header` in
/// the config, as nginx and Kong call it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RealIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`, each proxy appending the
    /// address it got the request from.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:443"`:
    /// the `for` parameter of each element.
    Forwarded,
    /// `X-Real-IP: client`: one address, set by the proxy in front.
    XRealIp,
}

impl RealIpHeader {
    /// Reads the config's spelling (any letter case).
    pub fn parse(text: &str) -> Result<RealIpHeader, String> {
        match text.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(RealIpHeader::XForwardedFor),
            "forwarded" => Ok(RealIpHeader::Forwarded),
            "x-real-ip" => Ok(RealIpHeader::XRealIp),
            _ => Err(format!("`{text}` is not a header keytrail reads client addresses from: use `X-Forwarded-For`, `Forwarded` or `X-Real-IP`")),
        }
    }

    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            RealIpHeader::XForwardedFor => "x-forwarded-for",
            RealIpHeader::Forwarded => "forwarded",
            RealIpHeader::XRealIp => "x-real-ip",
        }
    }

    /// The hops of one header line, farthest first, as address texts
    /// (`None` for a hop that names no address: RFC 7239's `unknown`, an
    /// obfuscated `_name`, an element without `for`).
    fn hops(self, line: &str) -> Vec<Option<&str>> {
        match self {
            RealIpHeader::XForwardedFor | RealIpHeader::XRealIp => line.split(',').map(|hop| Some(hop.trim())).collect(),
            RealIpHeader::Forwarded => forwarded_elements(line).map(forwarded_for_parameter).collect(),
        }
    }
}

/// The elements of an RFC 7239 `Forwarded` line: split at commas outside
/// quoted strings.
fn forwarded_elements(line: &str) -> impl Iterator<Item = &str> {
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    let mut cuts = Vec::new();
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                cuts.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    cuts.push(&line[start..]);
    cuts.into_iter()
}

/// The value of an element's `for` parameter (any case), unquoted.
fn forwarded_for_parameter(element: &str) -> Option<&str> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    })?;
    Some(value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value))
}

/// The proxies in front of keytrail whose forwarding header is believed.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies {
    ranges: Networks,
    header: RealIpHeader,
}

impl TrustedProxies {
    /// Parses CIDR ranges or addresses; an error names the bad one. They
    /// name the client in `X-Forwarded-For` unless [`with_header`](Self::with_header) says otherwise.
    pub fn parse(ranges: &[String]) -> Result<TrustedProxies, String> {
        Ok(TrustedProxies { ranges: Networks::parse(ranges)?, header: RealIpHeader::default() })
    }

    /// The same proxies, naming the client in `header`.
    pub fn with_header(self, header: RealIpHeader) -> TrustedProxies {
        TrustedProxies { header, ..self }
    }

    /// The name of the header the client's address is read from (lower case).
    pub fn header_name(&self) -> &'static str {
        self.header.name()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.contains(ip)
    }

    /// The client's address: the socket peer, or — only when the peer is a
    /// trusted proxy — the nearest address in the forwarding header (see
    /// [`header_name`](Self::header_name)) that is not one. A header from
    /// anyone else is ignored, so nobody can spoof their way out of a
    /// blocklist; so is every other forwarding header, which the trusted
    /// proxies pass on as the caller wrote it.
    /// `forwarded` gives the header's values; it is only called for a
    /// trusted peer, so most calls never look the header up.
    pub fn client_ip<'a, I>(&self, peer: IpAddr, forwarded: impl FnOnce() -> I) -> IpAddr
    where
        I: DoubleEndedIterator<Item = &'a str>,
    {
        if self.ranges.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded().rev().flat_map(|line| self.header.hops(line).into_iter().rev()) {
            match hop.and_then(forwarded_hop) {
                Some(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                // Garbage (or a hidden address) from beyond the last trusted hop: stop there.
                None => break,
            }
        }
        client
    }
}

/// The address of one forwarded hop: `203.0.113.5`, `2001:db8::5`,
/// or with the port some proxies add (`203.0.113.5:41234`,
/// `[2001:db8::5]:41234`, `[2001:db8::5]`).
fn forwarded_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

/// One scope's compiled blocklist.
#[derive(Debug, Default)]
pub struct Blocklist {
    ips: IpRanges,
    keys: HashMap<String, Vec<Arc<Entry>>>,
    agents: Option<AhoCorasick>,
    agent_entries: Vec<Arc<Entry>>,
    countries: HashMap<String, Vec<Arc<Entry>>>,
    len: usize,
}

impl Blocklist {
    pub fn build(entries: impl IntoIterator<Item = Entry>) -> Blocklist {
        let mut list = Blocklist::default();
        for entry in entries {
            let entry = Arc::new(entry);
            list.len += 1;
            match entry.kind {
                EntryKind::Ip => list.ips.insert(entry),
                EntryKind::Key => list.keys.entry(entry.value.clone()).or_default().push(entry),
                EntryKind::UserAgent => list.agent_entries.push(entry),
                EntryKind::Country => list.countries.entry(entry.value.clone()).or_default().push(entry),
            }
        }
        if !list.agent_entries.is_empty() {
            list.agents = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .build(list.agent_entries.iter().map(|e| e.value.as_str()))
                .ok();
        }
        list
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first live entry matching the caller's address, country (from
    /// the operator's table) or user agent.
    pub fn match_caller(&self, ip: IpAddr, country: Option<&str>, user_agent: Option<&str>, now_ms: i64) -> Option<Arc<Entry>> {
        if let Some(entry) = self.ips.find(ip, now_ms) {
            return Some(entry.clone());
        }
        if let Some(entry) = country.and_then(|c| first_live(self.countries.get(c)?, now_ms)) {
            return Some(entry.clone());
        }
        let (agents, ua) = (self.agents.as_ref()?, user_agent?);
        first_live(agents.find_overlapping_iter(ua).map(|m| &self.agent_entries[m.pattern().as_usize()]), now_ms).cloned()
    }

    /// Whether any entry matches user agents: only then is the caller's
    /// whole `User-Agent` (every line of it) worth gathering.
    pub fn blocks_agents(&self) -> bool {
        self.agents.is_some()
    }

    /// The live entry blocking this key, if any.
    pub fn match_key(&self, key_id: &str, now_ms: i64) -> Option<Arc<Entry>> {
        first_live(self.keys.get(key_id)?, now_ms).cloned()
    }
}

/// Why a request was blocked.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub reason: String,
    pub rule_id: String,
    pub base_score: u8,
}

impl Block {
    pub fn from_entry(entry: &Entry) -> Block {
        Block { reason: entry.reason.clone(), rule_id: entry.rule_id.clone(), base_score: entry.kind.base_score() }
    }
}

/// Percent-decodes `text` (and `+` as a space when `plus_is_space`);
/// `None` when an escape is invalid, unless `lenient`, which leaves such an
/// escape as it is. Bytes that are no UTF-8 (a Latin-1 form field's `%E9`)
/// become U+FFFD: the rules still read the rest.
fn percent_decode(text: &str, plus_is_space: bool, lenient: bool) -> Option<String> {
    let out = percent_decode_bytes(text, plus_is_space, lenient)?;
    Some(String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// [`percent_decode`]'s bytes, as decoded (not necessarily UTF-8).
pub(crate) fn percent_decode_bytes(text: &str, plus_is_space: bool, lenient: bool) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits, nothing else (`from_str_radix` would also take `+1`).
                let digit = |at: usize| bytes.get(at).and_then(|&b| (b as char).to_digit(16));
                let hex = digit(i + 1).zip(digit(i + 2)).map(|(high, low)| (high << 4 | low) as u8);
                match hex {
                    Some(value) => {
                        out.push(value);
                        i += 3;
                    }
                    None if lenient => {
                        out.push(b'%');
                        i += 1;
                    }
                    None => return None,
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// SQL fragments that have no business in a URL. Matched on the lowercased,
/// decoded path and query with runs of whitespace and comments squeezed.
const SQL_SIGNATURES: [&str; 14] = [
    "' or '1'='1",
    "' or 1=1",
    "\" or 1=1",
    " or 1=1--",
    "' or ''='",
    "union select",
    "union all select",
    "; drop table",
    "';drop table",
    "information_schema.",
    "sleep(",
    "benchmark(",
    "waitfor delay",
    "xp_cmdshell",
];

const TRAVERSAL_SIGNATURES: [&str; 5] = ["../", "..\\", "/..", "/etc/passwd", "c:\\windows"];

/// The built-in attack rules, checked on every request before anything else.
pub struct AttackRules {
    sql: AhoCorasick,
    traversal: AhoCorasick,
}

impl Default for AttackRules {
    fn default() -> Self {
        let build = |patterns: &[&str]| {
            AhoCorasick::builder().ascii_case_insensitive(true).build(patterns).expect("static patterns")
        };
        AttackRules { sql: build(&SQL_SIGNATURES), traversal: build(&TRAVERSAL_SIGNATURES) }
    }
}

/// Longest path and query the rules look at; longer is malformed.
pub const MAX_TARGET: usize = 8192;

/// `text` decoded (twice where it still holds escapes, for double-encoded
/// payloads such as `%252e`); `None` when an escape is invalid. An escape
/// that is invalid only once decoded (`%25zz`) is left as is by the second
/// decoding, which reads the rest: an upstream that decodes twice does.
pub(crate) fn decoded(text: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    if !(text.contains('%') || plus_is_space && text.contains('+')) {
        return Some(Cow::Borrowed(text));
    }
    let once = percent_decode(text, plus_is_space, false)?;
    let decoded = if once.contains('%') { percent_decode(&once, false, true).unwrap_or(once) } else { once };
    Some(Cow::Owned(decoded))
}

impl AttackRules {
    /// Checks a request target (path and query as sent). Most requests
    /// hold no escapes and are scanned in place, without allocating.
    pub fn check(&self, path: &str, query: Option<&str>) -> Option<Block> {
        let malformed = |what: &str| Some(Block { reason: "MALFORMED_REQUEST".into(), rule_id: format!("builtin:malformed-{what}"), base_score: 60 });
        if path.len() + query.map_or(0, str::len) > MAX_TARGET {
            return malformed("length");
        }
        let Some(path) = decoded(path, false) else { return malformed("encoding") };
        let Some(query) = decoded(query.unwrap_or(""), true) else { return malformed("encoding") };
        if path.contains('\0') || query.contains('\0') {
            return malformed("nul");
        }
        for text in [&path, &query] {
            // Most calls have no query: nothing to scan.
            if text.is_empty() {
                continue;
            }
            if self.traversal.is_match(text.as_ref()) {
                return Some(Block { reason: "ABUSE_PATTERN_DETECTED".into(), rule_id: "builtin:path-traversal".into(), base_score: 80 });
            }
            let sql = if text.contains("/**/") || text.contains(char::is_whitespace) { self.holds_sql(&squeeze(text)) } else { self.holds_sql(text) };
            if sql {
                return Some(Block { reason: "SQL_INJECTION_ATTEMPT".into(), rule_id: "builtin:sql-injection".into(), base_score: 90 });
            }
        }
        None
    }
}

impl AttackRules {
    /// Whether `text` holds a SQL signature as SQL reads it: a signature's
    /// keyword at its start or end is no match inside a longer word (`reunion
    /// select`, `union selection`), which SQL would read as another name.
    /// Only a letter before one makes a longer word (`pg_sleep(`, `0e1union`
    /// are still SQL's).
    fn holds_sql(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        self.sql.find_overlapping_iter(text).any(|m| {
            let signature = SQL_SIGNATURES[m.pattern().as_usize()].as_bytes();
            let starts_a_word = !signature[0].is_ascii_alphabetic() || m.start() == 0 || !bytes[m.start() - 1].is_ascii_alphabetic();
            let ends_a_word = !signature[signature.len() - 1].is_ascii_alphabetic()
                || bytes.get(m.end()).is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'$'));
            starts_a_word && ends_a_word
        })
    }
}

/// Text with SQL comments removed and whitespace runs made one space.
fn squeeze(text: &str) -> String {
    let text = text.replace("/**/", " ");
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

/// A hash of the stable parts of a request — method, path, the query's
/// parameter names, the user agent and the header names — so that the same
/// tool sending the same probe gets the same fingerprint whatever the values.
pub fn fingerprint(method: &str, path: &str, query: Option<&str>, user_agent: Option<&str>, header_names: &mut Vec<&str>) -> String {
    let mut params: Vec<&str> = query.unwrap_or("").split('&').filter_map(|p| p.split('=').next()).filter(|p| !p.is_empty()).collect();
    params.sort_unstable();
    header_names.sort_unstable();
    let mut h = Sha256::new();
    for part in [method, path, &params.join("&"), user_agent.unwrap_or(""), &header_names.join(",")] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Most addresses a counter keeps before it drops those whose window ended.
const COUNTED_ADDRESSES_MAX: usize = 100_000;

/// Events per client address within a fixed window that starts at the
/// address's first event.
#[derive(Debug)]
struct AddressCounts {
    window_ms: i64,
    /// When the map is still full after expired windows are dropped: start
    /// over (bounded memory) rather than keep growing.
    clear_when_full: bool,
    counts: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl AddressCounts {
    fn new(window_ms: i64, clear_when_full: bool) -> AddressCounts {
        AddressCounts { window_ms, clear_when_full, counts: Mutex::new(HashMap::new()) }
    }

    /// Counts one event of `ip`; returns how many it had in the window before.
    fn bump(&self, ip: IpAddr, now_ms: i64) -> u32 {
        self.bump_restarting(ip, now_ms, u32::MAX)
    }

    /// As [`AddressCounts::bump`]; when the count reaches `restart_at`, a
    /// new window starts afresh at `now_ms`.
    fn bump_restarting(&self, ip: IpAddr, now_ms: i64, restart_at: u32) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= COUNTED_ADDRESSES_MAX {
            counts.retain(|_, (since, _)| now_ms - *since < self.window_ms);
            if self.clear_when_full && counts.len() >= COUNTED_ADDRESSES_MAX {
                counts.clear();
            }
        }
        let slot = counts.entry(ip).or_insert((now_ms, 0));
        if now_ms - slot.0 >= self.window_ms {
            *slot = (now_ms, 0);
        }
        slot.1 += 1;
        let earlier = slot.1 - 1;
        if slot.1 >= restart_at {
            *slot = (now_ms, 0);
        }
        earlier
    }
}

/// Recent blocks per client address, which raise the threat score of the
/// next one: +5 per block in the last ten minutes.
#[derive(Debug)]
pub struct History {
    recent: AddressCounts,
}

const HISTORY_WINDOW_MS: i64 = 10 * 60 * 1000;

impl Default for History {
    fn default() -> Self {
        History { recent: AddressCounts::new(HISTORY_WINDOW_MS, true) }
    }
}

impl History {
    /// Records a block of `ip` and returns its threat score.
    pub fn score(&self, ip: IpAddr, base: u8, now_ms: i64) -> u8 {
        let earlier = self.recent.bump(ip, now_ms);
        (u32::from(base) + 5 * earlier).min(100) as u8
    }
}

/// The rule id of automatic brute-force blocks.
pub const BRUTEFORCE_RULE: &str = "auto-bruteforce";

/// Failed authentications per client address, for the automatic
/// brute-force block.
#[derive(Debug)]
pub struct FailureCounter {
    max: u32,
    /// Never cleared wholesale: a flood of addresses must not reset the
    /// counts of the one guessing keys.
    failures: AddressCounts,
}

impl FailureCounter {
    /// `max` failures are tolerated per window; `max` 0 turns counting off.
    pub fn new(max: u32, window: std::time::Duration) -> FailureCounter {
        FailureCounter { max, failures: AddressCounts::new(window.as_millis() as i64, false) }
    }

    pub fn window_secs(&self) -> i64 {
        self.failures.window_ms / 1000
    }

    /// Counts a failure; `Some(count)` when `ip` passes the limit. A new
    /// window starts then, so an address that goes on failing once its
    /// block has ended (a block shorter than the window) passes the limit
    /// again after as many failures, not never within the old window.
    pub fn failed(&self, ip: IpAddr, now_ms: i64) -> Option<u32> {
        if self.max == 0 {
            return None;
        }
        let count = self.failures.bump_restarting(ip, now_ms, self.max + 1) + 1;
        (count == self.max + 1).then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_guard_refuses_its_networks_and_keytraits_own_listeners() {
        let default = Networks::parse(&DEFAULT_UPSTREAM_DENY.map(String::from)).unwrap();
        let listeners = vec!["127.0.0.1:8080".parse().unwrap(), "0.0.0.0:9080".parse().unwrap()];
        let guard = UpstreamGuard::new(default, listeners);
        let refused = |addr: &str| guard.refuses(addr.parse().unwrap());
        for metadata in ["169.254.169.254:80", "[::ffff:169.254.169.254]:80", "[fe80::1]:8080", "[fd00:ec2::254]:80", "169.254.0.1:1"] {
            assert!(refused(metadata).is_some_and(|why| why.contains("gateway.upstream_deny")), "{metadata}");
        }
        // Its own listeners: the exact address, and on a wildcard listener's
        // port every address that reaches this machine's loopback.
        for own in ["127.0.0.1:8080", "[::ffff:127.0.0.1]:8080", "127.0.0.1:9080", "[::1]:9080", "0.0.0.0:9080"] {
            assert!(refused(own).is_some_and(|why| why.contains("own listener")), "{own}");
        }
        for fine in ["127.0.0.1:9000", "127.0.0.2:8080", "10.0.0.5:80", "[2001:db8::1]:80", "169.255.0.1:80", "[fd00:ec2::253]:80"] {
            assert_eq!(refused(fine), None, "{fine}");
        }
        // No list: only the listeners.
        let open = UpstreamGuard::new(Networks::parse(&[]).unwrap(), vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(open.refuses("169.254.169.254:80".parse().unwrap()), None);
        assert!(open.refuses("127.0.0.1:8080".parse().unwrap()).is_some());
    }

    fn entry(kind: EntryKind, value: &str, expires_at: Option<i64>) -> Entry {
        let (value, reason) = validate(kind, value, None).unwrap();
        Entry {
            id: format!("blk_{value}"),
            tenant_id: None,
            rule_id: format!("rule-{value}"),
            kind,
            value,
            reason,
            expires_at,
            added_by: "test".into(),
            created_at: 0,
        }
    }

    /// A v4-mapped IPv6 entry or range (as a dual-stack listener shows a
    /// caller: `::ffff:203.0.113.7`) is the IPv4 one: it matches the
    /// caller however it comes, and is stored as IPv4. So is a trusted proxy.
    #[test]
    fn v4_mapped_entries_and_proxies_are_their_ipv4_addresses() {
        let list = Blocklist::build([entry(EntryKind::Ip, "::ffff:203.0.113.7", None), entry(EntryKind::Ip, "::FFFF:198.51.100.0/120", None)]);
        for caller in ["203.0.113.7", "::ffff:203.0.113.7", "198.51.100.9", "::ffff:198.51.100.250"] {
            assert!(list.match_caller(caller.parse().unwrap(), None, None, 0).is_some(), "{caller}");
        }
        for caller in ["203.0.113.8", "198.51.101.1", "::203.0.113.7"] {
            assert!(list.match_caller(caller.parse().unwrap(), None, None, 0).is_none(), "{caller}");
        }
        assert_eq!(validate(EntryKind::Ip, "::ffff:203.0.113.7", None).unwrap().0, "203.0.113.7");
        assert_eq!(validate(EntryKind::Ip, "::ffff:198.51.100.0/120", None).unwrap().0, "198.51.100.0/24");
        assert!(validate(EntryKind::Ip, "::ffff:198.51.100.0/129", None).is_err());
        // Shorter than /96, a mapped range reaches past the mapped addresses
        // into plain IPv6 ones, while callers in it are matched as IPv4: it
        // would block nobody, so it is refused, saying why.
        for wide in ["::ffff:10.0.0.0/90", "::ffff:10.0.0.0/95", "::ffff:0.0.0.0/80"] {
            let err = validate(EntryKind::Ip, wide, None).unwrap_err();
            assert!(err.message.contains("/96"), "{wide}: {}", err.message);
        }
        assert_eq!(validate(EntryKind::Ip, "::ffff:10.0.0.0/96", None).unwrap().0, "0.0.0.0/0");
        let proxies = TrustedProxies::parse(&["::ffff:10.0.0.1".into()]).unwrap();
        let forwarded = || vec!["198.51.100.9"].into_iter();
        assert_eq!(proxies.client_ip("::ffff:10.0.0.1".parse().unwrap(), forwarded), "198.51.100.9".parse::<IpAddr>().unwrap());
        assert_eq!(proxies.client_ip("10.0.0.1".parse().unwrap(), forwarded), "198.51.100.9".parse::<IpAddr>().unwrap());
    }

    /// A valid escape of a byte that is no UTF-8 (a Latin-1 form field) is
    /// no malformed request; an invalid escape still is.
    #[test]
    fn escapes_of_non_utf8_bytes_are_read_not_refused() {
        let rules = AttackRules::default();
        assert_eq!(rules.check("/docs/search", Some("q=caf%E9")), None);
        assert_eq!(rules.check("/docs/caf%E9", None), None);
        assert!(rules.check("/docs/search", Some("q=%E9%27%20OR%201=1--")).is_some(), "the rest is still read");
        assert_eq!(rules.check("/docs/search", Some("q=%zz")).map(|b| b.rule_id), Some("builtin:malformed-encoding".to_string()));
    }

    #[test]
    fn ip_ranges_match_v4_v6_and_cidr() {
        let list = Blocklist::build([
            entry(EntryKind::Ip, "203.0.113.7", None),
            entry(EntryKind::Ip, "198.51.100.0/24", None),
            entry(EntryKind::Ip, "2001:db8::/32", None),
            entry(EntryKind::Ip, "192.0.2.1", Some(1_000)),
        ]);
        let hit = |ip: &str, now| list.match_caller(ip.parse().unwrap(), None, None, now).map(|e| e.value.clone());
        assert_eq!(hit("203.0.113.7", 0).as_deref(), Some("203.0.113.7"));
        assert_eq!(hit("203.0.113.8", 0), None);
        assert_eq!(hit("198.51.100.200", 0).as_deref(), Some("198.51.100.0/24"));
        assert_eq!(hit("198.51.101.1", 0), None);
        assert_eq!(hit("2001:db8:1::5", 0).as_deref(), Some("2001:db8::/32"));
        assert_eq!(hit("2001:db9::5", 0), None);
        assert_eq!(hit("::ffff:203.0.113.7", 0).as_deref(), Some("203.0.113.7"), "v4-mapped v6");
        assert_eq!(hit("192.0.2.1", 999).as_deref(), Some("192.0.2.1"));
        assert_eq!(hit("192.0.2.1", 1_000), None, "expired");
    }

    #[test]
    fn user_agents_and_keys() {
        let list = Blocklist::build([entry(EntryKind::UserAgent, "sqlmap", None), entry(EntryKind::Key, "key_abc", None)]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(list.match_caller(ip, None, Some("Mozilla/5.0 SQLMap/1.7"), 0).is_some());
        assert!(list.match_caller(ip, None, Some("curl/8"), 0).is_none());
        assert!(list.match_key("key_abc", 0).is_some());
        assert!(list.match_key("key_abd", 0).is_none());
    }

    #[test]
    fn countries_come_from_the_operators_table() {
        let table = GeoTable::parse("# test table\n203.0.113.0/24,de\n203.0.113.128/25, FR\n2001:db8::/32,US\n").unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(table.country("203.0.113.7".parse().unwrap()), Some("DE"));
        assert_eq!(table.country("203.0.113.200".parse().unwrap()), Some("FR"), "the most specific range");
        assert_eq!(table.country("2001:db8::1".parse().unwrap()), Some("US"));
        assert_eq!(table.country("198.51.100.1".parse().unwrap()), None);
        let err = GeoTable::parse("10.0.0.0/8,DE\nnot-a-range,FR\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(GeoTable::parse("10.0.0.0/8,Germany").unwrap_err().contains("two-letter"));
        let list = Blocklist::build([entry(EntryKind::Country, "de", None)]);
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(list.match_caller(ip, table.country(ip), None, 0).unwrap().reason, "GEO_BLOCKED");
        assert!(list.match_caller(ip, Some("FR"), None, 0).is_none());
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let client = |peer: &str, headers: &[&'static str]| trusted.client_ip(ip(peer), || headers.iter().copied());
        assert_eq!(client("203.0.113.5", &["198.51.100.1"]), ip("203.0.113.5"), "an untrusted peer's header is ignored");
        assert_eq!(client("10.0.0.2", &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(client("10.0.0.2", &["1.2.3.4, 198.51.100.1, 10.0.0.9"]), ip("198.51.100.1"), "the nearest untrusted hop");
        assert_eq!(client("10.0.0.2", &["1.2.3.4", "198.51.100.1"]), ip("198.51.100.1"), "several headers, the last nearest");
        assert_eq!(client("10.0.0.2", &["garbage, 10.0.0.7"]), ip("10.0.0.7"));
        assert_eq!(client("10.0.0.2", &[]), ip("10.0.0.2"));
        assert_eq!(client("::1", &["2001:db8::5"]), ip("2001:db8::5"));
        // Hops with the port a proxy added are the caller's address, not garbage
        // (which would make the trusted proxy itself the client, blocked for all).
        assert_eq!(client("10.0.0.2", &["198.51.100.1:41234"]), ip("198.51.100.1"));
        assert_eq!(client("10.0.0.2", &["[2001:db8::5]:443, 10.0.0.7:80"]), ip("2001:db8::5"));
        assert_eq!(client("10.0.0.2", &["[2001:db8::5]"]), ip("2001:db8::5"));
        assert_eq!(client("10.0.0.2", &["198.51.100.1:x"]), ip("10.0.0.2"), "still garbage");
        assert!(TrustedProxies::parse(&["10.0.0.0/99".into()]).is_err());
    }

    /// With `real_ip_header = "Forwarded"`, the `for` parameters of RFC
    /// 7239's elements name the hops (quoted, with ports, among other
    /// parameters); `X-Forwarded-For` is then the caller's own word.
    #[test]
    fn the_forwarded_and_x_real_ip_headers_name_the_client_when_configured() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap().with_header(RealIpHeader::Forwarded);
        assert_eq!(trusted.header_name(), "forwarded");
        let client = |peer: &str, headers: &[&'static str]| trusted.client_ip(ip(peer), || headers.iter().copied());
        assert_eq!(client("10.0.0.2", &["for=198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(client("10.0.0.2", &["For=\"198.51.100.1:4711\";proto=https;by=10.0.0.2"]), ip("198.51.100.1"));
        assert_eq!(client("10.0.0.2", &["for=\"[2001:db8:cafe::17]:4711\""]), ip("2001:db8:cafe::17"));
        assert_eq!(client("10.0.0.2", &["for=1.2.3.4, for=198.51.100.1;proto=http, for=10.0.0.9"]), ip("198.51.100.1"), "the nearest untrusted hop");
        assert_eq!(client("10.0.0.2", &["for=1.2.3.4", "proto=https;for=198.51.100.1"]), ip("198.51.100.1"), "several lines, the last nearest");
        assert_eq!(client("10.0.0.2", &["for=\"_x,y\";by=\"a,b\", for=198.51.100.1"]), ip("198.51.100.1"), "commas inside quotes split nothing");
        // A hidden or unknown address, or an element without `for`, is
        // where the trusted hops end: the last trusted one is the client.
        assert_eq!(client("10.0.0.2", &["for=198.51.100.1, for=unknown"]), ip("10.0.0.2"));
        assert_eq!(client("10.0.0.2", &["for=198.51.100.1, for=_hidden, for=10.0.0.7"]), ip("10.0.0.7"));
        assert_eq!(client("10.0.0.2", &["for=198.51.100.1, proto=https"]), ip("10.0.0.2"));
        assert_eq!(client("203.0.113.5", &["for=198.51.100.1"]), ip("203.0.113.5"), "an untrusted peer's header is ignored");

        let real = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap().with_header(RealIpHeader::XRealIp);
        assert_eq!(real.header_name(), "x-real-ip");
        assert_eq!(real.client_ip(ip("10.0.0.2"), || ["198.51.100.1"].into_iter()), ip("198.51.100.1"));
        assert_eq!(real.client_ip(ip("10.0.0.2"), || ["nonsense"].into_iter()), ip("10.0.0.2"));
        assert_eq!(real.client_ip(ip("192.0.2.1"), || ["198.51.100.1"].into_iter()), ip("192.0.2.1"));

        assert_eq!(TrustedProxies::default().header_name(), "x-forwarded-for", "the default");
        for (text, header) in [("X-Forwarded-For", RealIpHeader::XForwardedFor), ("forwarded", RealIpHeader::Forwarded), ("X-REAL-IP", RealIpHeader::XRealIp)] {
            assert_eq!(RealIpHeader::parse(text), Ok(header), "{text}");
        }
        let err = RealIpHeader::parse("X-Client-IP").unwrap_err();
        assert!(err.contains("`X-Client-IP`") && err.contains("`Forwarded`"), "{err}");
    }

    #[test]
    fn bad_entries_are_refused() {
        for (kind, value) in [
            (EntryKind::Ip, "300.1.1.1"),
            (EntryKind::Ip, "10.0.0.0/33"),
            (EntryKind::Ip, "2001:db8::/129"),
            (EntryKind::Ip, "example.com"),
            (EntryKind::Key, "kt_live_abc"),
            (EntryKind::UserAgent, "ab"),
        ] {
            assert!(validate(kind, value, None).is_err(), "{value}");
        }
        assert!(validate(EntryKind::Ip, "10.0.0.1", Some("NOT_A_REASON")).is_err());
        assert_eq!(validate(EntryKind::Ip, "10.1.2.3/8", None).unwrap().0, "10.0.0.0/8", "host bits cleared");
        // User-agent fragments are counted in characters, as the message says.
        assert!(validate(EntryKind::UserAgent, &"é".repeat(150), None).is_ok(), "150 characters, 300 bytes");
        assert!(validate(EntryKind::UserAgent, &"é".repeat(201), None).is_err());
        assert!(validate(EntryKind::UserAgent, "éé", None).is_err(), "2 characters, 4 bytes");
    }

    #[test]
    fn attack_signatures() {
        let rules = AttackRules::default();
        let reason = |path: &str, query: Option<&str>| rules.check(path, query).map(|b| b.reason);
        assert_eq!(reason("/docs/items", Some("id=42&sort=name")), None);
        assert_eq!(reason("/docs/items", Some("id=1%27%20OR%20%271%27%3D%271")).as_deref(), Some("SQL_INJECTION_ATTEMPT"));
        assert_eq!(reason("/docs/items", Some("q=1+UNION/**/SELECT+password")).as_deref(), Some("SQL_INJECTION_ATTEMPT"));
        assert_eq!(reason("/docs/../../etc/passwd", None).as_deref(), Some("ABUSE_PATTERN_DETECTED"));
        assert_eq!(reason("/docs/%2e%2e/%2e%2e/secret", None).as_deref(), Some("ABUSE_PATTERN_DETECTED"));
        assert_eq!(reason("/docs/%252e%252e/x", None).as_deref(), Some("ABUSE_PATTERN_DETECTED"), "double-encoded");
        assert_eq!(reason("/docs/a%zz", None).as_deref(), Some("MALFORMED_REQUEST"));
        assert_eq!(reason("/docs/a%00b", None).as_deref(), Some("MALFORMED_REQUEST"));
        assert_eq!(reason("/docs/version..2", None), None, "dots alone are fine");
        assert_eq!(reason("/docs/search", Some("q=credit+union+selection")), None, "a keyword inside a word");
        assert_eq!(reason("/docs/search", Some("q=nosleep(1)")), None);
        for query in ["q=1;select+pg_sleep(5)", "q=0e1union+select+1", "q=1+union+select"] {
            assert_eq!(reason("/docs/search", Some(query)).as_deref(), Some("SQL_INJECTION_ATTEMPT"), "{query}");
        }
    }

    /// An escape is `%` and two hex digits, as an upstream reads it: `%+1`
    /// (which a number parser would take as `+1`) is an invalid escape,
    /// never the byte 1.
    #[test]
    fn an_escape_is_a_percent_and_two_hex_digits() {
        let rules = AttackRules::default();
        for path in ["/docs/a%+1b", "/docs/a%+0", "/docs/%+F"] {
            assert_eq!(rules.check(path, None).map(|b| b.rule_id).as_deref(), Some("builtin:malformed-encoding"), "{path}");
        }
        assert_eq!(decoded("/a%25+1b", false).as_deref(), Some("/a%+1b"), "left as is by the second decoding");
        assert_eq!(percent_decode_bytes("%+1%41", false, true).as_deref(), Some(&b"%+1A"[..]));
    }

    #[test]
    fn the_failure_counter_fires_once_past_the_limit() {
        let counter = FailureCounter::new(3, std::time::Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let fired: Vec<Option<u32>> = (0..6).map(|i| counter.failed(ip, i)).collect();
        assert_eq!(fired, vec![None, None, None, Some(4), None, None]);
        assert_eq!((6..8).map(|i| counter.failed(ip, i)).collect::<Vec<_>>(), vec![None, Some(4)], "and again past it");
        assert_eq!(counter.failed(ip, 60_000), None, "a new window starts over");
        assert_eq!(FailureCounter::new(0, std::time::Duration::from_secs(1)).failed(ip, 0), None);
    }

    #[test]
    fn fingerprints_ignore_values_and_scores_grow_with_history() {
        let a = fingerprint("GET", "/x", Some("id=1&b=2"), Some("curl"), &mut vec!["host", "accept"]);
        let b = fingerprint("GET", "/x", Some("b=9&id=7"), Some("curl"), &mut vec!["accept", "host"]);
        let c = fingerprint("POST", "/x", Some("id=1&b=2"), Some("curl"), &mut vec!["host", "accept"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 16);
        let history = History::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(history.score(ip, 70, 0), 70);
        assert_eq!(history.score(ip, 70, 1), 75);
        assert_eq!(history.score(ip, 90, 2), 100);
        assert_eq!(history.score(ip, 70, HISTORY_WINDOW_MS + 10), 70, "the window passed");
    }
}
