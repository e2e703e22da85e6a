//! SplitMix64: a small, fast generator whose output is the same on every
//! machine. The audit sampler draws from it (so a seed repeats its
//! choices), and so do the tests' and benchmarks' data generators.

/// The generator's increment (2^64 / φ).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The output function: a well-mixed 64-bit value of `state`.
pub fn mix(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator, seeded with its initial state.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform in [0, 1), from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        unit(self.next_u64())
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A 64-bit value as a uniform number in [0, 1).
pub fn unit(v: u64) -> f64 {
    (v >> 11) as f64 / (1u64 << 53) as f64
}
