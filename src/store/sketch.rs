//! A mergeable latency sketch with a bounded relative error.
//!
//! Values (microseconds) fall into logarithmic buckets: bucket `b >= 1`
//! holds values in `(γ^(b-1), γ^b]` with `γ = 1.02`, bucket 0 holds 0. A
//! quantile is answered with the bucket's representative `2γ^b / (γ + 1)`,
//! which is within `(γ - 1) / (γ + 1) < 1 %` of every value in the bucket —
//! so any quantile is within 1 % of the true value at that rank. Sketches
//! merge by adding counts, so hourly sketches combine into any window.
//!
//! Encoding: pairs of LEB128 varints (bucket delta, count), buckets
//! strictly ascending.
//!
//! This module does no IO.

use super::varint::{push_varint, read_varint};

const GAMMA: f64 = 1.02;

/// The largest relative error of a quantile answer.
pub const RELATIVE_ERROR: f64 = (GAMMA - 1.0) / (GAMMA + 1.0);

/// Kept as (bucket, count) pairs sorted by bucket: a sketch holds a few
/// hundred buckets at most, and a sorted vector decodes, merges and answers
/// quantiles several times faster than a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySketch {
    counts: Vec<(u16, u64)>,
}

fn bucket_of(value: u64) -> u16 {
    if value == 0 {
        return 0;
    }
    let b = ((value as f64).ln() / GAMMA.ln()).ceil().max(1.0);
    // Floating error can put an exact power of γ one bucket high; it stays
    // within the bound either way.
    b.min(u16::MAX as f64) as u16
}

fn representative(bucket: u16) -> f64 {
    if bucket == 0 {
        0.0
    } else {
        2.0 * GAMMA.powi(bucket as i32) / (GAMMA + 1.0)
    }
}

impl LatencySketch {
    pub fn record(&mut self, value_us: u64) {
        let bucket = bucket_of(value_us);
        match self.counts.binary_search_by_key(&bucket, |(b, _)| *b) {
            Ok(i) => self.counts[i].1 += 1,
            Err(i) => self.counts.insert(i, (bucket, 1)),
        }
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            self.counts.clone_from(&other.counts);
            return;
        }
        let mut merged = Vec::with_capacity(self.counts.len() + other.counts.len());
        let (a, b) = (&self.counts, &other.counts);
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            if a[i].0 == b[j].0 {
                merged.push((a[i].0, a[i].1 + b[j].1));
                i += 1;
                j += 1;
            } else if a[i].0 < b[j].0 {
                merged.push(a[i]);
                i += 1;
            } else {
                merged.push(b[j]);
                j += 1;
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.counts = merged;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// The value at quantile `q` (0..=1), within [`RELATIVE_ERROR`]; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the answer, 1-based, as a sorted-array "nearest rank".
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(representative(*bucket));
            }
        }
        self.counts.last().map(|(b, _)| representative(*b))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.counts.len() * 3);
        let mut previous = 0u16;
        for (bucket, count) in &self.counts {
            push_varint(&mut out, u64::from(bucket - previous));
            push_varint(&mut out, *count);
            previous = *bucket;
        }
        out
    }

    /// Decodes an encoded sketch; `None` for bytes that are not one.
    pub fn decode(bytes: &[u8]) -> Option<LatencySketch> {
        let mut counts: Vec<(u16, u64)> = Vec::with_capacity(bytes.len() / 2);
        let mut at = 0;
        let mut bucket = 0u64;
        while at < bytes.len() {
            let delta = read_varint(bytes, &mut at)?;
            bucket += delta;
            let count = read_varint(bytes, &mut at)?;
            let b = u16::try_from(bucket).ok()?;
            // Buckets strictly ascend (a zero delta is only valid first).
            if delta == 0 && !counts.is_empty() {
                return None;
            }
            counts.push((b, count));
        }
        Some(LatencySketch { counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest-rank quantile of sorted values, the exact answer.
    fn exact(sorted: &[u64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1] as f64
    }

    #[test]
    fn quantiles_are_within_the_stated_error() {
        let mut x = 12345u64;
        let mut values = Vec::new();
        let mut sketch = LatencySketch::default();
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = 1 + (x % 1000) * (x % 977) + (x % 7);
            values.push(v);
            sketch.record(v);
        }
        values.sort_unstable();
        for q in [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let got = sketch.quantile(q).unwrap();
            let want = exact(&values, q);
            assert!((got - want).abs() / want <= RELATIVE_ERROR + 1e-9, "q={q}: {got} vs {want}");
        }
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (LatencySketch::default(), LatencySketch::default(), LatencySketch::default());
        for v in 0..5000u64 {
            let value = v * v % 100_003;
            if v % 3 == 0 { a.record(value) } else { b.record(value) }
            all.record(value);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut s = LatencySketch::default();
        for v in [0, 1, 2, 1_000, 1_000_000, 3_600_000_000] {
            s.record(v);
            s.record(v);
        }
        assert_eq!(LatencySketch::decode(&s.encode()).unwrap(), s);
        assert_eq!(LatencySketch::decode(&[]).unwrap(), LatencySketch::default());
        assert!(LatencySketch::decode(&[0x80]).is_none(), "a truncated varint");
        assert!(LatencySketch::decode(&[5, 1, 0, 1]).is_none(), "a repeated bucket");
        assert!(LatencySketch::default().quantile(0.5).is_none());
    }
}
