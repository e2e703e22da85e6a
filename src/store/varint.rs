//! LEB128 varints, the one encoding of unsigned integers in the audit
//! store's blocks, rollup histograms and latency sketches.

/// Appends `v`, seven bits a byte, low bits first.
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at `*at` and moves past it; `None` if it is truncated or
/// longer than ten bytes.
pub fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_truncation() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            push_varint(&mut out, v);
        }
        let mut at = 0;
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(read_varint(&out, &mut at), Some(v));
        }
        assert_eq!(at, out.len());
        assert_eq!(read_varint(&[0x80], &mut 0), None);
    }
}
