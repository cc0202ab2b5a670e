//! Helpers shared by the integration tests: seeded randomness and sample sketches.
// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use pg_kpi_sketches::{hash_bytes, DdSketch, Hll};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A deterministic RNG: every test run sees the same values.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A standard normal deviate (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln is finite
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A log-normal deviate, like request latencies in milliseconds.
pub fn lognormal(rng: &mut StdRng, mu: f64, sigma: f64) -> f64 {
    (mu + sigma * normal(rng)).exp()
}

/// Profit-like values: 15 % exact zeros, otherwise normal around 20 with spread 100,
/// so about 40 % of the values are negative.
pub fn mixed(rng: &mut StdRng) -> f64 {
    if rng.random_bool(0.15) {
        0.0
    } else {
        20.0 + 100.0 * normal(rng)
    }
}

/// `n` distinct-looking hashed values drawn from the RNG.
pub fn hashes(rng: &mut StdRng, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| hash_bytes(&rng.random::<u64>().to_le_bytes()))
        .collect()
}

/// SplitMix64: a well-mixed 64-bit stream far cheaper than the RNG in a debug build, used
/// where millions of hash-like words are needed.
pub struct SplitMix64(pub u64);

impl Iterator for SplitMix64 {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Some(z ^ (z >> 31))
    }
}

pub fn hll_of(hashes: &[u64]) -> Hll {
    let mut hll = Hll::new();
    for &hash in hashes {
        hll.add_hash(hash);
    }
    hll
}

pub fn dd_of(values: &[f64]) -> DdSketch {
    let mut sketch = DdSketch::new();
    for &value in values {
        sketch.add(value).expect("finite test value");
    }
    sketch
}

pub fn relative_error(estimate: f64, actual: f64) -> f64 {
    if actual == 0.0 {
        estimate.abs()
    } else {
        ((estimate - actual) / actual).abs()
    }
}
