//! The dense form of an [`Hll`](crate::Hll): 16,384 registers and the estimator over them.
//!
//! The estimator is Otmar Ertl's "improved raw estimator" (New cardinality estimation
//! algorithms for HyperLogLog sketches, 2017). It corrects the classic estimator's bias at
//! both ends of the range from the register histogram alone, without the empirical bias
//! tables of HLL++ and without a switch-over threshold to linear counting, so the error is
//! the HLL standard error 1.04/√m from a handful of values up to billions.

use super::{PRECISION, REGISTERS};
use crate::encoding::Reader;
use crate::error::SketchError;

/// Hash bits below the register index.
const TAIL_BITS: u32 = 64 - PRECISION;
/// A register holds 1 + the leading zeros of the tail bits: at most 51, which fits 6 bits.
const MAX_RANK: u8 = TAIL_BITS as u8 + 1;
/// 6 bits per register, 4 registers per 3 bytes.
pub(super) const PACKED_LEN: usize = REGISTERS * 6 / 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Registers {
    ranks: Vec<u8>,
}

impl Registers {
    pub(super) fn new() -> Self {
        Self {
            ranks: vec![0; REGISTERS],
        }
    }

    pub(super) fn add_hash(&mut self, hash: u64) {
        let index = (hash >> TAIL_BITS) as usize;
        let rank = (hash << PRECISION).leading_zeros().min(TAIL_BITS) + 1;
        self.update(index, rank as u8);
    }

    pub(super) fn update(&mut self, index: usize, rank: u8) {
        if let Some(register) = self.ranks.get_mut(index) {
            *register = (*register).max(rank);
        }
    }

    pub(super) fn merge(&mut self, other: &Registers) {
        for (ours, &theirs) in self.ranks.iter_mut().zip(&other.ranks) {
            *ours = (*ours).max(theirs);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ranks.iter().all(|&r| r == 0)
    }

    /// Ertl's improved raw estimator: α∞·m² / (m·σ(C₀/m) + Σ_k C_k 2^-k + m·τ(1 − C_{q+1}/m) 2^-q),
    /// with C_k the number of registers holding k, evaluated Horner-style from the top.
    pub(super) fn estimate(&self) -> f64 {
        const Q: usize = TAIL_BITS as usize;
        let mut histogram = [0u32; Q + 2];
        for &rank in &self.ranks {
            if let Some(slot) = histogram.get_mut(usize::from(rank)) {
                *slot += 1;
            }
        }
        let m = REGISTERS as f64;
        if histogram[0] as usize == REGISTERS {
            return 0.0;
        }
        let mut z = m * tau(1.0 - f64::from(histogram[Q + 1]) / m);
        for &count in histogram[1..=Q].iter().rev() {
            z = 0.5 * (z + f64::from(count));
        }
        z += m * sigma(f64::from(histogram[0]) / m);
        let alpha_infinity = 0.5 / std::f64::consts::LN_2;
        alpha_infinity * m * m / z
    }

    /// Little-endian 24-bit groups of four 6-bit registers.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.reserve(PACKED_LEN);
        for group in self.ranks.chunks_exact(4) {
            let packed = group
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &r)| acc | u32::from(r) << (6 * i));
            out.extend_from_slice(&packed.to_le_bytes()[..3]);
        }
    }

    pub(super) fn read(reader: &mut Reader<'_>) -> Result<Self, SketchError> {
        let bytes = reader.take(PACKED_LEN)?;
        let mut ranks = Vec::with_capacity(REGISTERS);
        for group in bytes.chunks_exact(3) {
            let packed = group
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (8 * i));
            for i in 0..4 {
                let rank = ((packed >> (6 * i)) & 0x3f) as u8;
                if rank > MAX_RANK {
                    return Err(SketchError::Corrupt("HLL register out of range"));
                }
                ranks.push(rank);
            }
        }
        Ok(Self { ranks })
    }
}

/// σ(x) = x + Σ_{k≥1} x^(2^k) 2^(k−1): corrects for empty registers (the linear-counting end).
fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let (mut power, mut weight, mut sum) = (x, 1.0, x);
    loop {
        power *= power;
        let previous = sum;
        sum += power * weight;
        weight += weight;
        if sum == previous {
            return sum;
        }
    }
}

/// τ(x) = (1 − x − Σ_{k≥1} (1 − x^(2^−k))² 2^−k) / 3: corrects for saturated registers.
fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let (mut root, mut weight, mut sum) = (x, 1.0, 1.0 - x);
    loop {
        root = root.sqrt();
        let previous = sum;
        weight *= 0.5;
        sum -= (1.0 - root) * (1.0 - root) * weight;
        if sum == previous {
            return sum / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_every_rank_in_every_lane() {
        let mut registers = Registers::new();
        for (i, rank) in registers.ranks.iter_mut().enumerate() {
            *rank = (i % (usize::from(MAX_RANK) + 1)) as u8;
        }
        let mut out = Vec::new();
        registers.write(&mut out);
        assert_eq!(out.len(), PACKED_LEN);
        let decoded = Registers::read(&mut Reader::new(&out)).expect("valid registers");
        assert_eq!(decoded, registers);
    }

    #[test]
    fn rank_counts_leading_zeros_of_the_tail() {
        let mut registers = Registers::new();
        registers.add_hash(0); // index 0, tail all zero: the maximum rank
        registers.add_hash((1 << TAIL_BITS) | (1 << (TAIL_BITS - 1))); // index 1, rank 1
        registers.add_hash((2 << TAIL_BITS) | 1); // index 2, rank 50
        assert_eq!(&registers.ranks[..3], &[MAX_RANK, 1, 50]);
    }

    #[test]
    fn empty_registers_estimate_zero() {
        assert_eq!(Registers::new().estimate(), 0.0);
    }
}
