//! The shapes events take in audit API answers and exports.
//!
//! These are the shapes STOA-era shell/jq scripts read (`.logs[]` with
//! `timestamp`, `status_code`, `latency_ms`, …; `.events[]` with
//! `event_type`, `type`, `actor`, `target`, `outcome`), so renaming a field
//! here breaks users' scripts.

use serde_json::{json, Map, Value};

use crate::event::{format_timestamp, push_timestamp, to_hex};
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
    let mut entry = json!({
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
    });
    // A blocked call's reason, rule, fingerprint and threat score.
    if let Some(Value::Object(details)) = &e.details {
        for field in BLOCK_FIELDS {
            if let Some(value) = details.get(field) {
                entry[field] = value.clone();
            }
        }
    }
    // Exports carry each event's chain hash; list pages do not compute it.
    if let Some(hash) = &stored.hash {
        entry["hash"] = json!(to_hex(hash));
    }
    entry
}

/// The fields a blocked request event carries (kept in its details).
/// Also the field a validation failure names (`field`), and its policy.
pub const BLOCK_FIELDS: [&str; 6] = ["block_reason", "rule_id", "fingerprint", "threat_score", "policy", "field"];

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
    // Where a refused or failed call was made (gateway and admin API
    // security events keep it; key and admin changes have none).
    put("method", json!(e.method));
    put("path", json!(e.path));
    put("client_ip", json!(e.client_ip));
    put("user_agent", json!(e.user_agent));
    put("country", json!(e.country));
    put("error_code", json!(e.error_code));
    put("details", e.details.clone().unwrap_or(Value::Null));
    if let Some(hash) = &stored.hash {
        put("hash", json!(to_hex(hash)));
    }
    Value::Object(entry)
}

/// Column order of the CSV export: the request columns first (the order
/// scripts read), then what says who did what in events of every category
/// (`category`, `event_type` — an admin or application event's action —
/// `actor`, `target`, and `details` as compact JSON). Columns are only
/// ever appended.
pub const CSV_COLUMNS: [&str; 30] = [
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
    "block_reason",
    "rule_id",
    "fingerprint",
    "threat_score",
    "category",
    "event_type",
    "actor",
    "target",
    "details",
];

/// Appends one CSV line (RFC 4180 quoting) for an event of any category, in
/// [`CSV_COLUMNS`] order, writing each field straight into `out`. CSV is
/// for reading and analysis; the chain hashes that prove an export complete
/// travel in the JSON export.
pub fn csv_line(stored: &StoredEvent, out: &mut String) {
    let e = &stored.event;
    let text = |out: &mut String, v: Option<&str>| {
        out.push(',');
        push_csv_field(v.unwrap_or(""), out);
    };
    let number = |out: &mut String, v: Option<u64>| {
        out.push(',');
        if let Some(v) = v {
            out.push_str(itoa::Buffer::new().format(v));
        }
    };
    let millis = |out: &mut String, us: Option<u64>| {
        out.push(',');
        if let Some(us) = us {
            out.push_str(itoa::Buffer::new().format(us / 1000));
            let frac = (us % 1000) as u32;
            out.push('.');
            out.push((b'0' + (frac / 100) as u8) as char);
            out.push((b'0' + (frac / 10 % 10) as u8) as char);
            out.push((b'0' + (frac % 10) as u8) as char);
        }
    };
    push_timestamp(e.timestamp_ms, out);
    text(out, Some(&e.event_id));
    number(out, Some(e.seq));
    text(out, e.request_id.as_deref());
    text(out, Some(&e.tenant_id));
    text(out, e.consumer_id.as_deref());
    text(out, e.consumer_name.as_deref());
    text(out, e.api_id.as_deref());
    text(out, e.key_id.as_deref());
    text(out, e.key_hint.as_deref());
    text(out, e.method.as_deref());
    text(out, e.path.as_deref());
    number(out, e.status_code.map(u64::from));
    millis(out, e.latency_us);
    millis(out, e.upstream_latency_us);
    number(out, e.request_size_bytes);
    number(out, e.response_size_bytes);
    text(out, e.client_ip.as_deref());
    text(out, e.user_agent.as_deref());
    text(out, Some(&e.outcome));
    text(out, e.error_code.as_deref());
    // What stopped a blocked call (empty for the others).
    for field in &BLOCK_FIELDS[..4] {
        match e.details.as_ref().and_then(|d| d.get(*field)) {
            Some(Value::String(v)) => text(out, Some(v)),
            Some(Value::Number(n)) => number(out, n.as_u64()),
            _ => out.push(','),
        }
    }
    // Who did what: security, admin and application events have no method
    // or path, and their action, actor and target are all they say.
    text(out, e.category.map(crate::event::Category::as_str));
    text(out, Some(&e.event_type));
    text(out, e.actor.as_deref());
    text(out, e.target.as_deref());
    text(out, e.details.as_ref().map(Value::to_string).as_deref());
    out.push_str("\r\n");
}

/// Whether `text` is a plain decimal number as a spreadsheet reads one
/// (`-12.5`, `+7`, `-1e5`): a sign, digits with at most one point, and an
/// exponent. Not what Rust's float parser takes: it also reads `-inf`,
/// `+NaN` and `-infinity`, which a spreadsheet takes for a formula.
fn is_plain_number(text: &str) -> bool {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    let whole = digits(rest);
    let mut rest = &rest[whole..];
    let mut any = whole > 0;
    if let Some(after) = rest.strip_prefix('.') {
        let fraction = digits(after);
        any |= fraction > 0;
        rest = &after[fraction..];
    }
    if !any {
        return false;
    }
    if let Some(after) = rest.strip_prefix(['e', 'E']) {
        let after = after.strip_prefix(['+', '-']).unwrap_or(after);
        let exponent = digits(after);
        return exponent > 0 && exponent == after.len();
    }
    rest.is_empty()
}

/// Quotes a field when needed, and defuses spreadsheet formulas: a cell that
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return (which
/// spreadsheets skip to read what follows) gets a leading `'` so that opening an
/// export in a spreadsheet never runs attacker-supplied text (user agents and
/// paths come from callers). A plain decimal number (`-12.5`) is left as it
/// is; anything else after the sign (`-inf`, `+NaN`, `-1+2`) is defused.
fn push_csv_field(field: &str, out: &mut String) {
    let bytes = field.as_bytes();
    let formula = matches!(bytes.first(), Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')) && !is_plain_number(field);
    let needs_quotes = formula || bytes.iter().any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
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
    fn a_csv_line_has_every_column_in_order() {
        let mut e = crate::event::Event::new("acme", crate::event::Category::Request, "request", "success");
        e.seq = 7;
        e.path = Some("/a,b".into());
        e.status_code = Some(200);
        e.latency_us = Some(1_234);
        e.response_size_bytes = Some(5);
        let mut line = String::new();
        csv_line(&StoredEvent { event: e, hash: Some([0xab; 32]), prev_hash: None }, &mut line);
        assert!(line.ends_with("\r\n"));
        let fields: Vec<&str> = line.trim_end().split(',').collect();
        // The quoted path holds one comma, so one more piece than columns.
        assert_eq!(fields.len(), CSV_COLUMNS.len() + 1, "{line}");
        assert_eq!(fields[2], "7");
        assert!(line.contains(",\"/a,b\","));
        assert!(line.contains(",200,1.234,,,5,"), "{line}");
        assert!(line.trim_end().ends_with(",success,,,,,,request,request,,,"), "{line}");

        // A blocked call names what stopped it in the last four columns.
        let mut blocked = crate::event::Event::new("acme", crate::event::Category::Request, "request", "blocked");
        blocked.details = Some(json!({"block_reason": "IP_BLOCKLISTED", "rule_id": "bl_1", "fingerprint": "ab12", "threat_score": 70}));
        let mut line = String::new();
        csv_line(&StoredEvent { event: blocked, hash: None, prev_hash: None }, &mut line);
        assert!(line.contains(",blocked,,IP_BLOCKLISTED,bl_1,ab12,70,request,request,"), "{line}");

        // A security event says who did what to what, after the request columns.
        let mut created = crate::event::Event::new("acme", crate::event::Category::Security, "key_created", "success");
        created.actor = Some("admin:adm_1".into());
        created.target = Some("key:key_1".into());
        created.details = Some(json!({"scopes": ["a", "b"]}));
        let mut line = String::new();
        csv_line(&StoredEvent { event: created, hash: None, prev_hash: None }, &mut line);
        assert!(line.ends_with(",success,,,,,,security,key_created,admin:adm_1,key:key_1,\"{\"\"scopes\"\":[\"\"a\"\",\"\"b\"\"]}\"\r\n"), "{line}");
    }

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
        out.push('|');
        // A tab or carriage return first: spreadsheets skip it and read the formula behind.
        push_csv_field("\t=1+2", &mut out);
        out.push('|');
        push_csv_field("\r@SUM(A1)", &mut out);
        assert_eq!(out, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"'=HYPERLINK(\"\"x\"\")\"|-12.5|\"'\t=1+2\"|\"'\r@SUM(A1)\"");
    }

    #[test]
    fn only_plain_decimal_numbers_keep_their_sign_unquoted() {
        for number in ["-12.5", "+7", "-1e5", "-1.5E-3", "-.5", "-5.", "+0"] {
            assert!(is_plain_number(number), "{number}");
        }
        for text in ["-inf", "+NaN", "-infinity", "-nan", "+inf", "-", "+.", "-1e", "-1e+", "-1-2", "-1 ", "-0x1", "-1,5", "-e5", "--1"] {
            assert!(!is_plain_number(text), "{text}");
            let mut out = String::new();
            push_csv_field(text, &mut out);
            assert!(out.starts_with("\"'"), "{text}: {out}");
        }
    }
}
