//! The shapes events take in audit API answers and exports.
//!
//! These are the shapes STOA-era shell/jq scripts read (`.logs[]` with
//! `timestamp`, `status_code`, `latency_ms`, …; `.events[]` with
//! `event_type`, `type`, `actor`, `target`, `outcome`), so renaming a field
//! here breaks users' scripts.

use serde_json::{json, Map, Value};

use crate::event::{format_timestamp, to_hex};
use crate::store::audit::StoredEvent;

fn ms(us: Option<u64>) -> Value {
    match us {
        Some(us) => json!(us as f64 / 1000.0),
        None => Value::Null,
    }
}

/// A `request` event as one entry of `{"logs": […]}`.
pub fn log_entry(stored: &StoredEvent) -> Value {
    let e = &stored.event;
    json!({
        "event_id": e.event_id,
        "seq": e.seq,
        "timestamp": format_timestamp(e.timestamp_ms),
        "request_id": e.request_id,
        "tenant_id": e.tenant_id,
        "consumer_id": e.consumer_id,
        "consumer_name": e.consumer_name,
        "api_id": e.api_id,
        "key_id": e.key_id,
        "key_hint": e.key_hint,
        "method": e.method,
        "path": e.path,
        "status_code": e.status_code,
        "latency_ms": ms(e.latency_us),
        "upstream_latency_ms": ms(e.upstream_latency_us),
        "request_size_bytes": e.request_size_bytes,
        "response_size_bytes": e.response_size_bytes,
        "client_ip": e.client_ip,
        "user_agent": e.user_agent,
        "country": e.country,
        "outcome": e.outcome,
        "error_code": e.error_code,
        "error_message": e.error_message,
        "hash": to_hex(&stored.hash),
    })
}

/// A security event as one entry of `{"events": […]}`.
pub fn security_entry(stored: &StoredEvent) -> Value {
    let e = &stored.event;
    let mut entry = Map::new();
    let mut put = |k: &str, v: Value| {
        entry.insert(k.to_string(), v);
    };
    put("event_id", json!(e.event_id));
    put("seq", json!(e.seq));
    put("event_type", json!(e.event_type));
    put("type", json!(e.event_type));
    put("timestamp", json!(format_timestamp(e.timestamp_ms)));
    put("tenant_id", json!(e.tenant_id));
    put("actor", json!(e.actor));
    put("target", json!(e.target));
    put("outcome", json!(e.outcome));
    put("request_id", json!(e.request_id));
    put("consumer_id", json!(e.consumer_id));
    put("api_id", json!(e.api_id));
    put("key_id", json!(e.key_id));
    put("key_hint", json!(e.key_hint));
    put("client_ip", json!(e.client_ip));
    put("user_agent", json!(e.user_agent));
    put("error_code", json!(e.error_code));
    put("details", e.details.clone().unwrap_or(Value::Null));
    put("hash", json!(to_hex(&stored.hash)));
    Value::Object(entry)
}

/// Column order of the CSV export.
pub const CSV_COLUMNS: [&str; 22] = [
    "timestamp",
    "event_id",
    "seq",
    "request_id",
    "tenant_id",
    "consumer_id",
    "consumer_name",
    "api_id",
    "key_id",
    "key_hint",
    "method",
    "path",
    "status_code",
    "latency_ms",
    "upstream_latency_ms",
    "request_size_bytes",
    "response_size_bytes",
    "client_ip",
    "user_agent",
    "outcome",
    "error_code",
    "hash",
];

/// Appends one CSV line (RFC 4180 quoting) for a request event.
pub fn csv_line(stored: &StoredEvent, out: &mut String) {
    let e = &stored.event;
    let num = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let fields: [String; 22] = [
        format_timestamp(e.timestamp_ms),
        e.event_id.clone(),
        e.seq.to_string(),
        e.request_id.clone().unwrap_or_default(),
        e.tenant_id.clone(),
        e.consumer_id.clone().unwrap_or_default(),
        e.consumer_name.clone().unwrap_or_default(),
        e.api_id.clone().unwrap_or_default(),
        e.key_id.clone().unwrap_or_default(),
        e.key_hint.clone().unwrap_or_default(),
        e.method.clone().unwrap_or_default(),
        e.path.clone().unwrap_or_default(),
        e.status_code.map(|s| s.to_string()).unwrap_or_default(),
        e.latency_us.map(|us| format!("{:.3}", us as f64 / 1000.0)).unwrap_or_default(),
        e.upstream_latency_us.map(|us| format!("{:.3}", us as f64 / 1000.0)).unwrap_or_default(),
        num(e.request_size_bytes),
        num(e.response_size_bytes),
        e.client_ip.clone().unwrap_or_default(),
        e.user_agent.clone().unwrap_or_default(),
        e.outcome.clone(),
        e.error_code.clone().unwrap_or_default(),
        to_hex(&stored.hash),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_csv_field(field, out);
    }
    out.push_str("\r\n");
}

/// Quotes a field when needed, and defuses spreadsheet formulas: a cell that
/// starts with `=`, `+`, `-` or `@` gets a leading `'` so that opening an
/// export in a spreadsheet never runs attacker-supplied text (user agents and
/// paths come from callers).
fn push_csv_field(field: &str, out: &mut String) {
    let formula = field.starts_with(['=', '+', '-', '@']) && field.parse::<f64>().is_err();
    let needs_quotes = formula || field.contains([',', '"', '\r', '\n']);
    if !needs_quotes {
        out.push_str(field);
        return;
    }
    out.push('"');
    if formula {
        out.push('\'');
    }
    for c in field.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_formula_defusing() {
        let mut out = String::new();
        push_csv_field("plain", &mut out);
        out.push('|');
        push_csv_field("a,b", &mut out);
        out.push('|');
        push_csv_field("say \"hi\"", &mut out);
        out.push('|');
        push_csv_field("=HYPERLINK(\"x\")", &mut out);
        out.push('|');
        push_csv_field("-12.5", &mut out);
        assert_eq!(out, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"'=HYPERLINK(\"\"x\"\")\"|-12.5");
    }
}
