//! Measures the sketches' accuracy over many seeds, beyond what the unit tests can afford.
//!
//! `cargo run --release -p pg_kpi_sketches --example accuracy`
//!
//! HLL: for each cardinality, the mean (bias) and RMS of the relative error, and the share
//! of estimates within 1 % and 2 %, over independent hash streams.

use pg_kpi_sketches::Hll;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn main() {
    println!(
        "{:>10} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "n", "trials", "bias %", "rms %", "max %", "≤1 %", "≤2 %"
    );
    // Cardinalities are visited incrementally within each trial, so one stream serves all.
    let checkpoints = [
        10u64, 100, 1_000, 4_000, 5_000, 10_000, 30_000, 100_000, 1_000_000, 10_000_000,
    ];
    let trials = 100;
    let mut errors = vec![Vec::new(); checkpoints.len()];
    for trial in 0..trials {
        let mut stream = SplitMix64(0xdead_beef ^ (trial as u64) << 32);
        let mut hll = Hll::new();
        let mut n = 0u64;
        for (slot, &target) in checkpoints.iter().enumerate() {
            // The 10M point only for a fifth of the trials: it dominates the run time.
            if target == 10_000_000 && trial % 5 != 0 {
                break;
            }
            while n < target {
                hll.add_hash(stream.next());
                n += 1;
            }
            errors[slot].push(hll.estimate() / n as f64 - 1.0);
        }
    }
    for (&n, errs) in checkpoints.iter().zip(&errors) {
        let count = errs.len() as f64;
        let bias = errs.iter().sum::<f64>() / count;
        let rms = (errs.iter().map(|e| e * e).sum::<f64>() / count).sqrt();
        let max = errs.iter().fold(0.0_f64, |m, e| m.max(e.abs()));
        let within =
            |bound: f64| errs.iter().filter(|e| e.abs() <= bound).count() as f64 / count * 100.0;
        println!(
            "{n:>10} {:>6} {:>9.3} {:>8.3} {:>8.3} {:>7.0}% {:>7.0}%",
            errs.len(),
            bias * 100.0,
            rms * 100.0,
            max * 100.0,
            within(0.01),
            within(0.02)
        );
    }
}
