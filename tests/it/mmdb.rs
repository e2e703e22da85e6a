//! Writes small MaxMind DB files (format 2.0, 24-bit records, an IPv6 tree
//! with IPv4 under ::/96) so the country tests read a real `.mmdb` through
//! the same reader the gateway uses, without shipping a database.

use std::net::IpAddr;
use std::path::Path;

#[derive(Clone, Copy)]
enum Record {
    Empty,
    Node(usize),
    Data(usize),
}

/// One value in the MaxMind data format (only the types these files need).
enum Value<'a> {
    Str(&'a str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'a str, Value<'a>)>),
    Array(Vec<Value<'a>>),
}

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 29, "these files only need short values");
    if kind <= 7 {
        out.push((kind << 5) | size as u8);
    } else {
        out.push(size as u8);
        out.push(kind - 7);
    }
}

fn encode(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(v) => {
            control(out, 5, 2);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::U32(v) => {
            control(out, 6, 4);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::U64(v) => {
            control(out, 9, 8);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Map(entries) => {
            control(out, 7, entries.len());
            for (key, value) in entries {
                encode(out, &Value::Str(key));
                encode(out, value);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for item in items {
                encode(out, item);
            }
        }
    }
}

/// Writes `ranges` (`cidr` → ISO country code) as a `database_type` database.
/// Less specific ranges must come before the more specific ones inside them.
pub fn write(path: &Path, database_type: &str, ranges: &[(&str, &str)]) {
    let mut data = Vec::new();
    let mut offsets: Vec<(&str, usize)> = Vec::new();
    let mut nodes: Vec<[Record; 2]> = vec![[Record::Empty; 2]];
    for (cidr, code) in ranges {
        let offset = match offsets.iter().find(|(c, _)| c == code) {
            Some((_, offset)) => *offset,
            None => {
                let offset = data.len();
                let country = Value::Map(vec![("iso_code", Value::Str(code))]);
                encode(&mut data, &Value::Map(vec![("country", country)]));
                offsets.push((code, offset));
                offset
            }
        };
        let (addr, len) = cidr.split_once('/').unwrap_or((cidr, ""));
        let (bits, len) = match addr.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => (u32::from(v4) as u128, 96 + len.parse::<u32>().unwrap_or(32)),
            IpAddr::V6(v6) => (u128::from(v6), len.parse::<u32>().unwrap_or(128)),
        };
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                nodes[node][bit] = Record::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Record::Node(next) => next,
                inherited => {
                    // A new node; a range it splits keeps answering on both sides.
                    let fill = if matches!(inherited, Record::Data(_)) { inherited } else { Record::Empty };
                    nodes.push([fill; 2]);
                    nodes[node][bit] = Record::Node(nodes.len() - 1);
                    nodes.len() - 1
                }
            };
        }
    }

    let count = nodes.len();
    let mut file = Vec::new();
    for pair in &nodes {
        for record in pair {
            let value = match *record {
                Record::Empty => count,
                Record::Node(next) => next,
                Record::Data(offset) => count + 16 + offset,
            };
            file.extend_from_slice(&(value as u32).to_be_bytes()[1..]);
        }
    }
    file.extend_from_slice(&[0; 16]);
    file.extend_from_slice(&data);
    file.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let metadata = Value::Map(vec![
        ("binary_format_major_version", Value::U16(2)),
        ("binary_format_minor_version", Value::U16(0)),
        ("build_epoch", Value::U64(1_700_000_000)),
        ("database_type", Value::Str(database_type)),
        ("description", Value::Map(vec![("en", Value::Str("keytrail test data"))])),
        ("ip_version", Value::U16(6)),
        ("languages", Value::Array(vec![Value::Str("en")])),
        ("node_count", Value::U32(count as u32)),
        ("record_size", Value::U16(24)),
    ]);
    encode(&mut file, &metadata);
    std::fs::write(path, file).unwrap();
}
