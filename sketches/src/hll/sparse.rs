//! The sparse form of an [`Hll`](crate::Hll): one entry per occupied register, at a finer
//! precision.
//!
//! While a sketch has seen few values nearly all of its 16,384 registers are zero, and a
//! bucket holding three user ids would cost 12 KB. The sparse form keeps only the occupied
//! registers, and keeps them at precision 25 (2^25 virtual registers) rather than 14: with
//! that many registers two values almost never share one, so linear counting over the
//! entries is exact to within rounding up to thousands of values.
//!
//! Each entry also keeps the rank of the hash bits below the 25 index bits. Together with
//! the 11 index bits that the dense form would spend on rank, that is everything the dense
//! register would have taken from the hash, so converting to dense gives exactly the
//! registers that adding the same hashes to a dense sketch would have: the switch loses
//! nothing and does not depend on when it happens.

use super::{dense::Registers, PRECISION};
use crate::encoding::{put_varint, Reader};
use crate::error::SketchError;

/// Index bits of a sparse entry.
const SPARSE_PRECISION: u32 = 25;
/// Index bits that the dense form counts towards the rank instead.
const EXTRA_INDEX_BITS: u32 = SPARSE_PRECISION - PRECISION;
/// An entry is `index << RANK_BITS | rank`, so entries sort by index.
const RANK_BITS: u32 = 6;
/// Rank of the 39 bits below the sparse index: 1 + leading zeros, at most 40.
const MAX_SPARSE_RANK: u32 = 64 - SPARSE_PRECISION + 1;

/// Above this many entries the sparse form is no smaller than the dense one (about 3 bytes
/// per entry encoded, against 12,288 bytes), so the sketch switches to dense.
pub(super) const MAX_ENTRIES: usize = 4096;

/// Occupied registers at precision 25, sorted by index, one entry per index holding the
/// largest rank seen there. Sorted and deduplicated, so equal sets have equal bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SparseSet {
    entries: Vec<u32>,
}

fn entry_of(hash: u64) -> u32 {
    let index = (hash >> (64 - SPARSE_PRECISION)) as u32;
    let rest = hash << SPARSE_PRECISION;
    let rank = rest.leading_zeros().min(64 - SPARSE_PRECISION) + 1;
    (index << RANK_BITS) | rank
}

fn index_of(entry: u32) -> u32 {
    entry >> RANK_BITS
}

fn rank_of(entry: u32) -> u32 {
    entry & ((1 << RANK_BITS) - 1)
}

impl SparseSet {
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the set has outgrown the sparse form.
    pub(super) fn is_full(&self) -> bool {
        self.entries.len() > MAX_ENTRIES
    }

    pub(super) fn add_hash(&mut self, hash: u64) {
        let entry = entry_of(hash);
        // Insertion into a sorted Vec moves at most MAX_ENTRIES words: cheaper at this size
        // than a tree, and the Vec is already the canonical order for encoding.
        match self
            .entries
            .binary_search_by_key(&index_of(entry), |&e| index_of(e))
        {
            Ok(pos) => {
                if let Some(slot) = self.entries.get_mut(pos) {
                    *slot = (*slot).max(entry);
                }
            }
            Err(pos) => self.entries.insert(pos, entry),
        }
    }

    /// The union of two sets, keeping the larger rank where both have an index.
    pub(super) fn merge(&mut self, other: &SparseSet) {
        let mut merged = Vec::with_capacity(self.entries.len() + other.entries.len());
        let (mut ours, mut theirs) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            let next = match (ours.peek(), theirs.peek()) {
                (Some(&&a), Some(&&b)) => match index_of(a).cmp(&index_of(b)) {
                    std::cmp::Ordering::Less => ours.next().copied(),
                    std::cmp::Ordering::Greater => theirs.next().copied(),
                    std::cmp::Ordering::Equal => {
                        theirs.next();
                        ours.next().map(|&a| a.max(b))
                    }
                },
                (Some(_), None) => ours.next().copied(),
                (None, Some(_)) => theirs.next().copied(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.entries = merged;
    }

    /// Linear counting over the 2^25 virtual registers: m · ln(m / empty registers).
    pub(super) fn estimate(&self) -> f64 {
        let registers = (1u64 << SPARSE_PRECISION) as f64;
        let occupied = self.entries.len() as f64;
        // ln_1p keeps full precision when occupied ≪ registers, which is always the case here.
        -registers * (-occupied / registers).ln_1p()
    }

    /// Folds the entries into dense registers, exactly as adding their hashes would have.
    pub(super) fn fold_into(&self, registers: &mut Registers) {
        for &entry in &self.entries {
            let index = index_of(entry);
            let dense_index = (index >> EXTRA_INDEX_BITS) as usize;
            let extra = index & ((1 << EXTRA_INDEX_BITS) - 1);
            let rank = if extra != 0 {
                // The first one-bit lies within the extra index bits.
                extra.leading_zeros() - (32 - EXTRA_INDEX_BITS) + 1
            } else {
                EXTRA_INDEX_BITS + rank_of(entry)
            };
            registers.update(dense_index, rank as u8);
        }
    }

    /// `count, then each entry as a varint delta from the previous one` (entries ascend).
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        put_varint(out, self.entries.len() as u64);
        let mut previous = 0u32;
        for &entry in &self.entries {
            put_varint(out, u64::from(entry - previous));
            previous = entry;
        }
    }

    pub(super) fn read(reader: &mut Reader<'_>) -> Result<Self, SketchError> {
        let len = reader.length(MAX_ENTRIES, "too many sparse HLL entries")?;
        let mut entries = Vec::with_capacity(len);
        let mut previous: Option<u32> = None;
        for _ in 0..len {
            let delta = reader.varint()?;
            let entry = u64::from(previous.unwrap_or(0))
                .checked_add(delta)
                .and_then(|e| u32::try_from(e).ok())
                .filter(|&e| e < 1 << (SPARSE_PRECISION + RANK_BITS))
                .ok_or(SketchError::Corrupt("sparse HLL entry out of range"))?;
            if !(1..=MAX_SPARSE_RANK).contains(&rank_of(entry)) {
                return Err(SketchError::Corrupt("sparse HLL rank out of range"));
            }
            if previous.is_some_and(|p| index_of(p) >= index_of(entry)) {
                return Err(SketchError::Corrupt(
                    "sparse HLL entries not strictly ascending",
                ));
            }
            entries.push(entry);
            previous = Some(entry);
        }
        Ok(Self { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_adding_hashes_to_dense_registers() {
        // Hashes chosen to hit every branch: rank inside the extra index bits, rank below
        // them, and the all-zero tail that gives the maximum rank.
        let mut hashes = vec![
            0u64,
            1,
            u64::MAX,
            1 << 39,
            1 << 38,
            1 << 49,
            1 << 50,
            0x0000_0000_0000_0001,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            // splitmix64: a cheap deterministic stream of well-mixed words.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let z = z ^ (z >> 31);
            // Clear a varying number of low bits so high ranks occur too.
            hashes.push(z & (u64::MAX << (z % 64)));
        }
        let mut sparse = SparseSet::default();
        let mut direct = Registers::new();
        for &hash in &hashes {
            sparse.add_hash(hash);
            direct.add_hash(hash);
        }
        let mut folded = Registers::new();
        sparse.fold_into(&mut folded);
        assert_eq!(folded, direct);
    }

    #[test]
    fn entries_stay_sorted_and_unique_per_index() {
        let mut set = SparseSet::default();
        let index_bits = |i: u64| i << (64 - SPARSE_PRECISION);
        set.add_hash(index_bits(5) | (1 << 38)); // first tail bit set: rank 1
        set.add_hash(index_bits(2) | 1);
        set.add_hash(index_bits(5) | 1); // same index, 38 leading zeros: rank 39
        set.add_hash(index_bits(5) | (1 << 20)); // lower rank again: no change
        assert_eq!(set.entries.len(), 2);
        assert!(set
            .entries
            .windows(2)
            .all(|w| index_of(w[0]) < index_of(w[1])));
        assert_eq!(rank_of(set.entries[1]), 39);
    }
}
