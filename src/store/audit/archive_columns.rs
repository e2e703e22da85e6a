//! The lines of an archive file in format `keytrail-archive-v3`: each line
//! of the zstd NDJSON file is one JSON object holding a block of up to
//! [`BLOCK_EVENTS`] consecutive events of the chain, column by column, and
//! the chain hash after the block's last event.
//!
//! ```text
//! {"first_seq":1,"events":16384,"hash":"<64 hex>","columns":[
//!   {"keys":["timestamp_ms"],"delta":[1793491200576,2592,...]},
//!   {"keys":["request_id"],"uuid7":"<19 hex digits a row>","other":{"17":"abc"}},
//!   {"keys":["consumer_id","key_id",...],"new":[["c1","k1",...]],"ids":[0,0,1,...]},
//!   ...]}
//! ```
//!
//! A column names the event fields (`keys`) it holds and one encoding:
//! - `delta`: integers, each the difference to the row before (the first
//!   row's to 0);
//! - `values`: one JSON value a row;
//! - `ids` with `new`: ids into a dictionary of the column's values (of
//!   arrays of values when it holds several fields) that grows through the
//!   file; `new` lists the entries this block adds, in id order. Fields that
//!   go together (a consumer's id, name and key; a path and its api; an
//!   outcome and its status and error) share one dictionary, so a
//!   combination costs one id;
//! - `derived` (`event_id`): the id the writer derives from tenant, `seq`
//!   and time ([`crate::event::derived_event_id`]);
//! - `uuid7` (`request_id`): every row's id is a UUIDv7 carrying the row's
//!   own timestamp, and the string holds, a row after another, the 19 hex
//!   digits that are not the timestamp, the version or hyphens;
//! - `below` (`upstream_latency_us`): integers, each the difference to the
//!   named field of the row (so the time keytrail itself took).
//!
//! `other` (row index → value) overrides a column's value at the rows its
//! encoding cannot hold; those rows take no place in a `uuid7` string.
//! `seq` is not stored: rows are numbered from `first_seq`. A field absent
//! from every column is null.
//!
//! The hashes are not stored per event: a reader rehashes every event from
//! the manifest's first hash and checks each block's `hash`, which also
//! says which block a changed event is in. Measured on a realistic day
//! (BENCHMARKS.md) this takes ~23 bytes an event against ~128 for one JSON
//! event a line with its two hashes (format v2), and reads and writes
//! faster.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::block::{own_time_uuid, own_time_uuid_tail};
use crate::event::{derived_event_id, Event};
use crate::signing::{from_hex, hex};

/// Most events in one line. Longer lines compress better (each column is
/// a longer run for zstd): at zstd level 3, 16,384 took 23.6 bytes an
/// event where 4,096 took 25.3 (BENCHMARKS.md).
pub const BLOCK_EVENTS: usize = 16_384;

/// Fields that share one dictionary (a combination costs one id).
const GROUPS: &[&[&str]] = &[
    &["actor", "consumer_id", "consumer_name", "key_id", "key_hint"],
    &["api_id", "path"],
    &["outcome", "status_code", "error_code", "error_message"],
    &["client_ip", "country"],
    &["tenant_id", "category", "event_type"],
];
/// Fields with an encoding of their own, and `seq` (not stored).
const SPECIAL: &[&str] = &["seq", "timestamp_ms", "event_id", "request_id", "upstream_latency_us"];
/// A block whose column would add more new dictionary entries than this
/// share of its rows stores the column's values instead (one-off texts).
const MOSTLY_NEW: f64 = 0.5;

type Getter = fn(&Event) -> Value;
type Setter = fn(&mut Event, Value) -> Result<(), String>;
type Copier = fn(&mut Event, &Event);

fn take<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Every field of [`Event`] but `personal_commitment` (which is hex in
/// JSON), by name, with how to read, write and copy it.
macro_rules! fields {
    ($($name:ident),* $(,)?) => {
        const PLAIN: &[(&str, Getter, Setter, Copier)] = &[$((
            stringify!($name),
            |e| serde_json::to_value(&e.$name).unwrap_or(Value::Null),
            |e, v| {
                e.$name = take(v)?;
                Ok(())
            },
            |to, from| to.$name = from.$name.clone(),
        )),*];
    };
}

fields!(
    event_id, seq, timestamp_ms, tenant_id, category, event_type, request_id, actor, target, outcome, consumer_id, consumer_name, api_id,
    key_id, key_hint, method, path, status_code, latency_us, upstream_latency_us, request_size_bytes, response_size_bytes, client_ip,
    user_agent, country, error_code, error_message, details,
);

/// The number of fields, [`PLAIN`] and `personal_commitment` after them.
const FIELDS: usize = PLAIN.len() + 1;

fn field_name(i: usize) -> &'static str {
    PLAIN.get(i).map(|f| f.0).unwrap_or("personal_commitment")
}

fn field_index(name: &str) -> Option<usize> {
    (0..FIELDS).find(|i| field_name(*i) == name)
}

fn get(e: &Event, i: usize) -> Value {
    match PLAIN.get(i) {
        Some(f) => (f.1)(e),
        None => e.personal_commitment.map(|c| Value::from(hex(&c))).unwrap_or(Value::Null),
    }
}

fn set(e: &mut Event, i: usize, value: Value) -> Result<(), String> {
    match PLAIN.get(i) {
        Some(f) => (f.2)(e, value),
        None => {
            e.personal_commitment = match value {
                Value::Null => None,
                Value::String(text) => Some(from_hex::<32>(&text).ok_or("`personal_commitment` must be 64 hexadecimal digits")?),
                _ => return Err("`personal_commitment` must be 64 hexadecimal digits".into()),
            };
            Ok(())
        }
    }
}

fn copy(to: &mut Event, from: &Event, i: usize) {
    match PLAIN.get(i) {
        Some(f) => (f.3)(to, from),
        None => to.personal_commitment = from.personal_commitment,
    }
}

fn index(name: &str) -> usize {
    field_index(name).expect("a field of Event")
}

/// Builds the lines: events are pushed in chain order.
pub struct BlockEncoder {
    rows: usize,
    first_seq: u64,
    hash: [u8; 32],
    timestamps: Vec<i64>,
    event_ids: Map<String, Value>,
    request_ids: String,
    request_other: Map<String, Value>,
    upstream: Vec<Value>,
    upstream_other: Map<String, Value>,
    /// Every other field's values, by field index.
    values: Vec<Vec<Value>>,
    /// Each column's dictionary so far (by its keys joined with `,`), by
    /// the entry's JSON text.
    dictionaries: HashMap<String, HashMap<String, u64>>,
}

impl Default for BlockEncoder {
    fn default() -> Self {
        BlockEncoder {
            rows: 0,
            first_seq: 0,
            hash: [0; 32],
            timestamps: Vec::new(),
            event_ids: Map::new(),
            request_ids: String::new(),
            request_other: Map::new(),
            upstream: Vec::new(),
            upstream_other: Map::new(),
            values: vec![Vec::new(); FIELDS],
            dictionaries: HashMap::new(),
        }
    }
}

impl BlockEncoder {
    /// Adds an event with its chain hash; returns a finished line (without
    /// its newline) when the block is full. Events must follow on by `seq`.
    pub fn push(&mut self, event: &Event, hash: [u8; 32]) -> Result<Option<Vec<u8>>, String> {
        if self.rows == 0 {
            self.first_seq = event.seq;
        } else if event.seq != self.first_seq + self.rows as u64 {
            return Err(format!("archived events must follow on: seq {} after {}", event.seq, self.first_seq + self.rows as u64 - 1));
        }
        // The row's index, an `other` key for the rows that need one.
        let at = self.rows;
        let row = || at.to_string();
        self.timestamps.push(event.timestamp_ms);
        if event.event_id != derived_event_id(&event.tenant_id, event.seq, event.timestamp_ms) {
            self.event_ids.insert(row(), Value::from(event.event_id.clone()));
        }
        match event.request_id.as_deref().map(|id| (id, own_time_uuid_tail(id, event.timestamp_ms))) {
            // The tail's hex digits after the version digit (always 7).
            Some((_, Some(tail))) => self.request_ids.push_str(&hex(&tail)[1..]),
            Some((id, None)) => {
                self.request_other.insert(row(), Value::from(id));
            }
            None => {
                self.request_other.insert(row(), Value::Null);
            }
        }
        let signed = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        match (signed(event.upstream_latency_us), signed(event.latency_us)) {
            (Some(upstream), Some(latency)) => self.upstream.push(Value::from(latency - upstream)),
            _ => {
                if let Some(upstream) = event.upstream_latency_us {
                    self.upstream_other.insert(row(), Value::from(upstream));
                }
                self.upstream.push(Value::Null);
            }
        }
        for (i, values) in self.values.iter_mut().enumerate() {
            if !SPECIAL.contains(&field_name(i)) {
                values.push(get(event, i));
            }
        }
        self.rows += 1;
        self.hash = hash;
        if self.rows == BLOCK_EVENTS {
            return self.finish().map(Some);
        }
        Ok(None)
    }

    /// The line of the events pushed since the last line, if any.
    pub fn finish_block(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.finish().map(Some)
    }

    fn finish(&mut self) -> Result<Vec<u8>, String> {
        let rows = std::mem::take(&mut self.rows);
        let mut columns = Vec::new();
        let mut previous = 0i64;
        let deltas: Vec<Value> = std::mem::take(&mut self.timestamps)
            .into_iter()
            .map(|t| {
                let d = t.wrapping_sub(previous);
                previous = t;
                Value::from(d)
            })
            .collect();
        columns.push(serde_json::json!({ "keys": ["timestamp_ms"], "delta": deltas }));
        columns.push(with_other(serde_json::json!({ "keys": ["event_id"], "derived": true }), std::mem::take(&mut self.event_ids)));
        let request_ids = std::mem::take(&mut self.request_ids);
        let request_other = std::mem::take(&mut self.request_other);
        if request_other.len() < rows || request_other.values().any(|v| !v.is_null()) {
            columns.push(with_other(serde_json::json!({ "keys": ["request_id"], "uuid7": request_ids }), request_other));
        }
        let upstream = std::mem::take(&mut self.upstream);
        let upstream_other = std::mem::take(&mut self.upstream_other);
        if upstream.iter().any(|v| !v.is_null()) || !upstream_other.is_empty() {
            columns.push(with_other(serde_json::json!({ "keys": ["upstream_latency_us"], "below": "latency_us", "values": upstream }), upstream_other));
        }
        let mut fields: Vec<Vec<Value>> = self.values.iter_mut().map(std::mem::take).collect();
        let grouped = |name: &str| GROUPS.iter().any(|g| g.contains(&name));
        let singles: Vec<[&str; 1]> = (0..FIELDS).map(field_name).filter(|n| !SPECIAL.contains(n) && !grouped(n)).map(|n| [n]).collect();
        for keys in GROUPS.iter().copied().chain(singles.iter().map(|k| &k[..])) {
            let values: Vec<Value> = match keys {
                [key] => std::mem::take(&mut fields[index(key)]),
                _ => {
                    let mut parts: Vec<std::vec::IntoIter<Value>> = keys.iter().map(|k| std::mem::take(&mut fields[index(k)]).into_iter()).collect();
                    (0..rows).map(|_| Value::Array(parts.iter_mut().map(|p| p.next().unwrap_or(Value::Null)).collect())).collect()
                }
            };
            let all_null = values.iter().all(|v| match v {
                Value::Array(parts) => parts.iter().all(Value::is_null),
                other => other.is_null(),
            });
            if all_null {
                continue;
            }
            let mut column = Map::new();
            column.insert("keys".into(), keys.iter().map(|k| Value::from(*k)).collect());
            if values.iter().all(|v| v.is_null() || v.is_number()) {
                column.insert("values".into(), Value::Array(values));
            } else {
                dictionary_column(&mut column, self.dictionaries.entry(keys.join(",")).or_default(), values);
            }
            columns.push(Value::Object(column));
        }
        let line = serde_json::json!({
            "first_seq": self.first_seq,
            "events": rows,
            "hash": hex(&self.hash),
            "columns": columns,
        });
        serde_json::to_vec(&line).map_err(|e| e.to_string())
    }
}

/// `ids` + `new` against the file's dictionary, or `values` when most of
/// the block's values would be new entries.
fn dictionary_column(column: &mut Map<String, Value>, dictionary: &mut HashMap<String, u64>, values: Vec<Value>) {
    let texts: Vec<String> = values.iter().map(Value::to_string).collect();
    let mut fresh: HashMap<&str, u64> = HashMap::new();
    let mut new = Vec::new();
    let mut ids = Vec::with_capacity(values.len());
    for (text, value) in texts.iter().zip(&values) {
        let id = match dictionary.get(text.as_str()).or_else(|| fresh.get(text.as_str())) {
            Some(id) => *id,
            None => {
                let id = (dictionary.len() + fresh.len()) as u64;
                fresh.insert(text, id);
                new.push(value.clone());
                id
            }
        };
        ids.push(Value::from(id));
    }
    if values.len() >= 64 && new.len() as f64 > MOSTLY_NEW * values.len() as f64 {
        column.insert("values".into(), Value::Array(values));
        return;
    }
    for (text, id) in fresh {
        dictionary.insert(text.to_string(), id);
    }
    if !new.is_empty() {
        column.insert("new".into(), Value::Array(new));
    }
    column.insert("ids".into(), Value::Array(ids));
}

fn with_other(mut column: Value, other: Map<String, Value>) -> Value {
    if !other.is_empty() {
        column["other"] = Value::Object(other);
    }
    column
}

/// One decoded line.
#[derive(Debug)]
pub struct Block {
    pub first_seq: u64,
    /// The chain hash after the block's last event.
    pub hash: [u8; 32],
    pub events: Vec<Event>,
}

/// A dictionary as read: its entries decoded once into events holding
/// only the column's fields, copied into the rows that name them.
struct Dictionary {
    fields: Vec<usize>,
    entries: Vec<Event>,
}

/// Reads the lines, in file order (the dictionaries grow through the file).
#[derive(Default)]
pub struct BlockDecoder {
    dictionaries: HashMap<String, Dictionary>,
}

impl BlockDecoder {
    pub fn decode(&mut self, line: &str) -> Result<Block, String> {
        let mut line: Map<String, Value> = serde_json::from_str(line).map_err(|e| format!("not a JSON object ({e})"))?;
        let first_seq = line.get("first_seq").and_then(Value::as_u64).ok_or("no `first_seq`")?;
        let count = line
            .get("events")
            .and_then(Value::as_u64)
            .filter(|n| (1..=BLOCK_EVENTS as u64).contains(n))
            .ok_or_else(|| format!("no `events` (1 to {BLOCK_EVENTS})"))? as usize;
        // Sequence numbers are SQLite integers: a block running past i64::MAX is damaged.
        if first_seq == 0 || first_seq.checked_add(count as u64).is_none_or(|end| end > i64::MAX as u64) {
            return Err(format!("`first_seq` {first_seq} is out of range"));
        }
        let hash = line.get("hash").and_then(Value::as_str).and_then(from_hex::<32>).ok_or("`hash` is not 64 hexadecimal digits")?;
        let Some(Value::Array(columns)) = line.remove("columns") else { return Err("no `columns`".into()) };
        let mut rows: Vec<Event> = (0..count).map(|i| Event { seq: first_seq + i as u64, ..Event::default() }).collect();
        // Rows whose event id is derived (not given in the column's `other`).
        let mut derived = vec![false; count];
        let mut below = Vec::new();
        for mut column in columns {
            let keys: Vec<String> = column
                .get("keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .filter(|keys: &Vec<String>| !keys.is_empty())
                .ok_or("a column without `keys`")?;
            let name = keys.join(",");
            let fail = |what: &str| format!("column `{name}`: {what}");
            let fields: Vec<usize> = keys
                .iter()
                .map(|k| field_index(k).filter(|i| field_name(*i) != "seq").ok_or_else(|| fail(&format!("`{k}` is not a field of an event"))))
                .collect::<Result<_, _>>()?;
            let first = fields[0];
            if column.get("delta").is_some() {
                let mut previous = 0i64;
                for (row, d) in rows.iter_mut().zip(rows_of(&mut column, "delta", count).map_err(|e| fail(&e))?) {
                    previous = previous.wrapping_add(d.as_i64().ok_or_else(|| fail("a delta is not an integer"))?);
                    set(row, first, Value::from(previous)).map_err(|e| fail(&e))?;
                }
            } else if column.get("derived").is_some() {
                // Filled in at the end, once the tenant and time are known.
                derived.fill(true);
            } else if let Some(packed) = column.get("uuid7") {
                let packed = packed.as_str().ok_or_else(|| fail("`uuid7` is not a string"))?;
                let other = column.get("other").and_then(Value::as_object);
                let mut at = 0;
                for (i, row) in rows.iter_mut().enumerate() {
                    if other.is_some_and(|o| o.contains_key(&i.to_string())) {
                        continue;
                    }
                    let tail = packed.get(at..at + 19).and_then(|digits| from_hex::<10>(&format!("7{digits}")));
                    let Some(tail) = tail else { return Err(fail("`uuid7` is shorter than its rows or not hex digits")) };
                    at += 19;
                    let id = own_time_uuid(row.timestamp_ms, &tail, &mut [0; 36]).to_string();
                    set(row, first, Value::from(id)).map_err(|e| fail(&e))?;
                }
                if at != packed.len() {
                    return Err(fail("`uuid7` is longer than its rows"));
                }
            } else if let Some(of) = column.get("below") {
                let of = of.as_str().and_then(field_index).ok_or_else(|| fail("`below` is not a field name"))?;
                below.push((first, of, rows_of(&mut column, "values", count).map_err(|e| fail(&e))?));
            } else if column.get("ids").is_some() {
                let ids = rows_of(&mut column, "ids", count).map_err(|e| fail(&e))?;
                let dictionary = self.dictionaries.entry(name.clone()).or_insert_with(|| Dictionary { fields: fields.clone(), entries: Vec::new() });
                if dictionary.fields != fields {
                    return Err(fail("its fields differ from the same dictionary's before"));
                }
                match column.get_mut("new").map(Value::take) {
                    None => {}
                    Some(Value::Array(new)) => {
                        for entry in new {
                            let mut event = Event::default();
                            spread(&mut event, &fields, entry).map_err(|e| fail(&e))?;
                            dictionary.entries.push(event);
                        }
                    }
                    Some(_) => return Err(fail("`new` is not an array")),
                }
                for (row, id) in rows.iter_mut().zip(ids) {
                    let entry = id.as_u64().and_then(|id| dictionary.entries.get(id as usize)).ok_or_else(|| fail("an id is not in the dictionary"))?;
                    for &field in &fields {
                        copy(row, entry, field);
                    }
                }
            } else if column.get("values").is_some() {
                for (row, value) in rows.iter_mut().zip(rows_of(&mut column, "values", count).map_err(|e| fail(&e))?) {
                    spread(row, &fields, value).map_err(|e| fail(&e))?;
                }
            } else {
                return Err(fail("no encoding this version reads"));
            }
            if let Some(other) = column.get_mut("other").map(Value::take) {
                let Value::Object(other) = other else { return Err(fail("`other` is not an object")) };
                for (i, value) in other {
                    let i = i.parse::<usize>().ok().filter(|i| *i < count).ok_or_else(|| fail("`other` names a row the block does not have"))?;
                    set(&mut rows[i], first, value).map_err(|e| fail(&e))?;
                    derived[i] &= first != index("event_id");
                }
            }
        }
        for (field, of, values) in below {
            for (row, value) in rows.iter_mut().zip(values) {
                let Some(difference) = value.as_i64() else {
                    if value.is_null() {
                        continue;
                    }
                    return Err(format!("column `{}`: a difference that is not an integer", field_name(field)));
                };
                let Some(base) = get(row, of).as_i64() else {
                    return Err(format!("column `{}`: a difference to `{}`, which the row does not have", field_name(field), field_name(of)));
                };
                set(row, field, Value::from(base.wrapping_sub(difference))).map_err(|e| format!("column `{}`: {e}", field_name(field)))?;
            }
        }
        for (row, _) in rows.iter_mut().zip(derived).filter(|(_, derived)| *derived) {
            row.event_id = derived_event_id(&row.tenant_id, row.seq, row.timestamp_ms);
        }
        Ok(Block { first_seq, hash, events: rows })
    }
}

/// A column's array under `key`, one value a row, taken out of it.
fn rows_of(column: &mut Value, key: &str, count: usize) -> Result<Vec<Value>, String> {
    match column.get_mut(key).map(Value::take) {
        Some(Value::Array(values)) if values.len() == count => Ok(values),
        _ => Err(format!("`{key}` is not an array of {count} values")),
    }
}

/// Sets a column's fields in one row from its value: the value itself, or
/// an array of one value a field.
fn spread(row: &mut Event, fields: &[usize], value: Value) -> Result<(), String> {
    match (fields, value) {
        ([field], value) => set(row, *field, value),
        (fields, Value::Array(parts)) if parts.len() == fields.len() => {
            for (field, part) in fields.iter().zip(parts) {
                set(row, *field, part)?;
            }
            Ok(())
        }
        _ => Err(format!("a value is not an array of {} fields", fields.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Category;

    fn event(seq: u64, ms: i64) -> Event {
        let mut e = Event::new("t1", Category::Request, "request", "success");
        e.seq = seq;
        e.timestamp_ms = ms;
        e.event_id = derived_event_id("t1", seq, ms);
        e.request_id = Some(crate::event::new_id_at(ms));
        e.consumer_id = Some(format!("c{}", seq % 3).into());
        e.key_id = Some(format!("k{}", seq % 3).into());
        e.path = Some(format!("/p/{}", seq % 5));
        e.status_code = Some(200);
        e.latency_us = Some(1000 + seq);
        e.upstream_latency_us = Some(900 + seq);
        e.client_ip = Some(format!("10.0.0.{}", seq).into());
        e
    }

    fn round_trip(events: &[Event]) -> Vec<Event> {
        let mut encoder = BlockEncoder::default();
        let mut lines = Vec::new();
        for e in events {
            lines.extend(encoder.push(e, [e.seq as u8; 32]).unwrap());
        }
        lines.extend(encoder.finish_block().unwrap());
        let mut decoder = BlockDecoder::default();
        let mut out = Vec::new();
        for line in lines {
            let block = decoder.decode(std::str::from_utf8(&line).unwrap()).unwrap();
            assert_eq!(block.hash, [block.events.last().unwrap().seq as u8; 32]);
            out.extend(block.events);
        }
        out
    }

    #[test]
    fn a_block_running_past_the_largest_seq_is_refused() {
        for first_seq in [0, u64::MAX, i64::MAX as u64] {
            let line = serde_json::json!({"first_seq": first_seq, "events": 2, "hash": "00".repeat(32), "columns": []}).to_string();
            let error = BlockDecoder::default().decode(&line).unwrap_err();
            assert!(error.contains("out of range"), "{first_seq}: {error}");
        }
    }

    /// Client floats in `details` (more digits than the shortest form)
    /// come back hashing the same.
    #[test]
    fn float_details_come_back_hashing_the_same() {
        let mut events: Vec<Event> = (1..=40).map(|s| event(s, 1_793_491_200_000 + s as i64)).collect();
        for (i, e) in events.iter_mut().enumerate() {
            let text = format!("{{\"f\": {}, \"g\": 9.00013289605635609e-8}}", 1.0 / (i as f64 * 3.0 + 7.0));
            e.details = Some(serde_json::from_str(&text).unwrap());
        }
        let back = round_trip(&events);
        for (a, b) in events.iter().zip(&back) {
            assert_eq!(a.canonical_bytes(Some(&[1; 32])).unwrap(), b.canonical_bytes(Some(&[1; 32])).unwrap());
        }
    }

    #[test]
    fn events_come_back_as_they_went_in_across_blocks() {
        let events: Vec<Event> = (1..=BLOCK_EVENTS as u64 + 10).map(|s| event(s, 1_793_491_200_000 + s as i64 * 7)).collect();
        assert_eq!(round_trip(&events), events);
    }

    #[test]
    fn rows_the_compact_encodings_cannot_hold_are_kept_as_they_are() {
        let mut events: Vec<Event> = (1..=6).map(|s| event(s, 1_793_491_200_000 + s as i64)).collect();
        events[0].event_id = "a-client-chosen-id".into();
        events[5].event_id = String::new();
        events[1].request_id = Some("0123456789abcdef012".into());
        events[2].request_id = Some(crate::event::new_id_at(5));
        events[3].request_id = None;
        events[3].upstream_latency_us = None;
        events[4].latency_us = None;
        events[2].latency_us = Some(u64::MAX);
        events[2].upstream_latency_us = Some(5);
        events[4].details = Some(serde_json::json!({"reason": "x", "n": [1, 2.5]}));
        events[5].personal_commitment = Some([7; 32]);
        events[5].client_ip = None;
        assert_eq!(round_trip(&events), events);
    }

    #[test]
    fn the_field_table_names_every_field_of_an_event() {
        let mut e = event(1, 10);
        e.personal_commitment = Some([1; 32]);
        let Value::Object(serialized) = serde_json::to_value(&e).unwrap() else { panic!() };
        let mut names: Vec<&str> = serialized.keys().map(String::as_str).collect();
        let mut table: Vec<&str> = (0..FIELDS).map(field_name).collect();
        names.sort_unstable();
        table.sort_unstable();
        assert_eq!(table, names);
        for (i, name) in (0..FIELDS).map(|i| (i, field_name(i))) {
            assert_eq!(get(&e, i), serialized[name], "{name}");
        }
    }

    #[test]
    fn events_must_follow_on() {
        let mut encoder = BlockEncoder::default();
        encoder.push(&event(1, 10), [0; 32]).unwrap();
        assert!(encoder.push(&event(3, 11), [0; 32]).unwrap_err().contains("follow on"));
    }

    #[test]
    fn damaged_lines_are_refused_with_what_is_wrong() {
        let mut encoder = BlockEncoder::default();
        encoder.push(&event(1, 10), [0; 32]).unwrap();
        let line = String::from_utf8(encoder.finish_block().unwrap().unwrap()).unwrap();
        let short = line.replacen("\"uuid7\":\"", "\"uuid7\":\"0", 1);
        assert!(BlockDecoder::default().decode(&short).unwrap_err().contains("`uuid7` is"));
        let unknown = line.replacen("\"keys\":[\"latency_us\"]", "\"keys\":[\"latency\"]", 1);
        assert!(unknown != line && BlockDecoder::default().decode(&unknown).unwrap_err().contains("`latency` is not a field of an event"));
        let mut value: Value = serde_json::from_str(&line).unwrap();
        value["events"] = Value::from(2);
        assert!(BlockDecoder::default().decode(&value.to_string()).unwrap_err().contains("not an array of 2 values"));
        value["events"] = Value::from(1);
        value["columns"].as_array_mut().unwrap().push(serde_json::json!({"keys": ["path"], "ids": [9]}));
        assert!(BlockDecoder::default().decode(&value.to_string()).unwrap_err().contains("not in the dictionary"));
        assert!(BlockDecoder::default().decode("[1]").unwrap_err().contains("JSON object"));
    }
}
