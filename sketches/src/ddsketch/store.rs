//! The buckets of one sign of a [`DdSketch`](crate::DdSketch): signed net counts over a
//! contiguous range of indices, bounded by collapsing the lowest ones.
//!
//! Counts are i64 and may be negative: a sketch can hold a *delta* (removals not yet
//! matched by their insertions), and since counts add, merging a delta into a base is the
//! ordinary merge. Additions wrap on overflow, which no real count reaches, so that adding
//! stays a group operation: merges commute and associate and every removal cancels exactly.
//!
//! # Canonical form
//! `counts` is trimmed so its first and last entries are non-zero (an empty store has
//! `offset` 0), so two stores with the same net counts and floor compare and encode equal,
//! however they were built. Buckets whose count returns to zero cost nothing.
//!
//! # Collapse
//! The span of non-zero buckets is bounded by [`MAX_BUCKETS`] (2,048 buckets, a factor of
//! about 8·10^8 between smallest and largest magnitude at α = 0.5 %). When a bucket would
//! open beyond that span, every bucket below `max − MAX_BUCKETS + 1` is folded into that
//! index and the index is kept as the store's `floor`: from then on any index below the
//! floor, insertion or removal, counts at the floor. Clamping to a floor composes as a
//! maximum, so a removal still meets its insertion after any number of collapses, and
//! merged stores take the larger floor. What is lost is only the precision of the smallest
//! magnitudes, the end that relative-error quantiles of positive data care least about.
//! (Whether a collapse happens at all can depend on the order in which a value and its
//! cancelling removal arrive, so merge laws hold exactly only while no collapse occurs.)

use crate::encoding::{put_varint, put_zigzag, Reader};
use crate::error::SketchError;
use crate::mapping::{MAX_INDEX, MIN_INDEX};

/// The most buckets a store spans (from its lowest to its highest non-zero index).
pub const MAX_BUCKETS: usize = 2048;
const MAX_SPAN: i32 = MAX_BUCKETS as i32;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Store {
    /// Index of `counts[0]`; 0 when empty.
    offset: i32,
    /// Net counts of indices `offset..offset + len`, first and last non-zero.
    counts: Vec<i64>,
    /// Set by the first collapse: indices below it are counted at it.
    floor: Option<i32>,
}

impl Store {
    pub(super) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Sum of the counts, in i128 so no sum of i64 counts can overflow.
    pub(super) fn total(&self) -> i128 {
        self.counts.iter().map(|&c| i128::from(c)).sum()
    }

    pub(super) fn has_negative_counts(&self) -> bool {
        self.counts.iter().any(|&c| c < 0)
    }

    /// Non-zero buckets as `(index, count)`, ascending by index.
    pub(super) fn buckets(&self) -> impl DoubleEndedIterator<Item = (i32, i64)> + '_ {
        let offset = self.offset;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &count)| count != 0)
            .map(move |(pos, &count)| (offset + pos as i32, count))
    }

    /// Adds `delta` (of either sign) to bucket `index`, collapsing if the span would grow
    /// beyond [`MAX_BUCKETS`].
    pub(super) fn add(&mut self, index: i32, delta: i64) {
        if delta == 0 {
            return;
        }
        let mut index = self.floor.map_or(index, |floor| index.max(floor));
        if let Some(highest) = self.max_index() {
            let lowest_allowed = highest.max(index) - (MAX_SPAN - 1);
            if self.offset < lowest_allowed || index < lowest_allowed {
                self.collapse_to(lowest_allowed);
                index = index.max(lowest_allowed);
            }
        }
        self.add_in_range(index, delta);
    }

    /// Negates every count (canonical form is kept: non-zero counts stay non-zero).
    pub(super) fn negate(&mut self) {
        for c in &mut self.counts {
            *c = c.wrapping_neg();
        }
    }

    /// Adds every bucket of `other`, under the larger of the two floors.
    pub(super) fn merge(&mut self, other: &Store) {
        if let Some(floor) = other.floor {
            self.collapse_to(floor);
        }
        for (index, count) in other.buckets() {
            self.add(index, count);
        }
    }

    fn max_index(&self) -> Option<i32> {
        let len = i32::try_from(self.counts.len()).ok()?;
        (len > 0).then(|| self.offset + len - 1)
    }

    /// Adds without any span check; callers made sure the result spans at most MAX_BUCKETS.
    fn add_in_range(&mut self, index: i32, delta: i64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(delta);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let pos = (index - self.offset) as usize;
        if pos >= self.counts.len() {
            self.counts.resize(pos + 1, 0);
        }
        if let Some(slot) = self.counts.get_mut(pos) {
            *slot = slot.wrapping_add(delta);
            if *slot == 0 {
                self.trim();
            }
        }
    }

    /// Raises the floor to `floor` (never lowers it) and folds the buckets below into it.
    fn collapse_to(&mut self, floor: i32) {
        let floor = self.floor.map_or(floor, |f| f.max(floor));
        self.floor = Some(floor);
        if self.counts.is_empty() || self.offset >= floor {
            return;
        }
        let below = ((floor - self.offset) as usize).min(self.counts.len());
        let folded = self
            .counts
            .drain(..below)
            .fold(0i64, |sum, count| sum.wrapping_add(count));
        match self.counts.first_mut() {
            // The first remaining bucket is exactly `floor` when the floor lay inside the range.
            Some(first) => *first = first.wrapping_add(folded),
            None => self.counts.push(folded),
        }
        self.offset = floor;
        self.trim();
    }

    /// Restores the canonical form: no zero at either end, offset 0 when empty.
    fn trim(&mut self) {
        while self.counts.last() == Some(&0) {
            self.counts.pop();
        }
        let leading = self.counts.iter().take_while(|&&c| c == 0).count();
        if leading > 0 {
            self.counts.drain(..leading);
            self.offset += leading as i32;
        }
        if self.counts.is_empty() {
            self.offset = 0;
        }
    }

    /// `[0 | 1 zigzag floor] varint n [zigzag first index] zigzag count {varint gap, zigzag count}`
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        match self.floor {
            None => out.push(0),
            Some(floor) => {
                out.push(1);
                put_zigzag(out, i64::from(floor));
            }
        }
        let buckets: Vec<(i32, i64)> = self.buckets().collect();
        put_varint(out, buckets.len() as u64);
        let mut previous: Option<i32> = None;
        for (index, count) in buckets {
            match previous {
                None => put_zigzag(out, i64::from(index)),
                Some(prev) => put_varint(out, (index - prev) as u64),
            }
            put_zigzag(out, count);
            previous = Some(index);
        }
    }

    pub(super) fn read(reader: &mut Reader<'_>) -> Result<Self, SketchError> {
        let (floor, buckets) = read_buckets(reader)?;
        // The buckets first, then the counts array in one allocation: growing it bucket by
        // bucket (resize, zero-fill, copy) was most of the cost of a read.
        let mut store = Store {
            offset: 0,
            counts: Vec::new(),
            floor,
        };
        if let (Some(&(first, _)), Some(&(last, _))) = (buckets.first(), buckets.last()) {
            store.offset = first;
            store.counts = vec![0; (last - first) as usize + 1];
            for (index, count) in buckets {
                store.counts[(index - first) as usize] = count;
            }
        }
        Ok(store)
    }
}

/// A store as encoded: its floor and its non-zero `(index, count)` buckets, ascending.
pub(super) type EncodedStore = (Option<i32>, Vec<(i32, i64)>);

/// Reads one encoded store as its floor and its non-zero buckets, ascending, checking
/// everything [`Store::read`] relies on. Reading a quantile needs no more than this: the
/// dense array of a store spanning 2,048 buckets with a few hundred in use is mostly zeros.
pub(super) fn read_buckets(reader: &mut Reader<'_>) -> Result<EncodedStore, SketchError> {
    let floor = match reader.u8()? {
        0 => None,
        1 => Some(read_index(reader.zigzag()?)?),
        _ => return Err(SketchError::Corrupt("unknown DDSketch store flag")),
    };
    let len = reader.length(MAX_BUCKETS, "too many DDSketch buckets")?;
    let mut buckets: Vec<(i32, i64)> = Vec::with_capacity(len);
    let mut previous: Option<i32> = None;
    for _ in 0..len {
        let index = match previous {
            None => read_index(reader.zigzag()?)?,
            Some(prev) => {
                let gap = reader.varint()?;
                // The span cap bounds a dense store built from these to MAX_BUCKETS counts.
                if gap == 0 || gap >= MAX_BUCKETS as u64 {
                    return Err(SketchError::Corrupt("bad DDSketch bucket gap"));
                }
                read_index(i64::from(prev) + gap as i64)?
            }
        };
        if floor.is_some_and(|f| index < f) {
            return Err(SketchError::Corrupt("DDSketch bucket below the floor"));
        }
        let first = buckets.first().map_or(index, |&(i, _)| i);
        if index - first >= MAX_SPAN {
            return Err(SketchError::Corrupt("DDSketch buckets span too wide"));
        }
        let count = reader.zigzag()?;
        if count == 0 {
            return Err(SketchError::Corrupt("DDSketch bucket with zero count"));
        }
        buckets.push((index, count));
        previous = Some(index);
    }
    Ok((floor, buckets))
}

fn read_index(raw: i64) -> Result<i32, SketchError> {
    i32::try_from(raw)
        .ok()
        .filter(|index| (MIN_INDEX..=MAX_INDEX).contains(index))
        .ok_or(SketchError::Corrupt("DDSketch index out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_of(deltas: &[(i32, i64)]) -> Store {
        let mut store = Store::default();
        for &(index, delta) in deltas {
            store.add(index, delta);
        }
        store
    }

    #[test]
    fn zero_buckets_vanish_and_the_form_is_canonical() {
        let store = store_of(&[(5, 1), (9, 2), (1, 3), (1, -3), (9, -2), (5, -1)]);
        assert_eq!(store, Store::default());
        let a = store_of(&[(3, 1), (7, 1), (100, 1), (100, -1)]);
        let b = store_of(&[(7, 1), (3, 1)]);
        assert_eq!(a, b);
        assert_eq!(a.counts, vec![1, 0, 0, 0, 1]);
    }

    #[test]
    fn span_is_bounded_by_collapsing_the_lowest_buckets() {
        let mut store = Store::default();
        for index in 0..5000 {
            store.add(index, 1);
        }
        assert_eq!(store.counts.len(), MAX_BUCKETS);
        assert_eq!(store.floor, Some(5000 - MAX_SPAN));
        assert_eq!(store.total(), 5000);
        assert_eq!(store.buckets().next(), Some((5000 - MAX_SPAN, 5000 - 2047)));
        // A far-away index collapses everything without allocating the distance.
        store.add(70_000, 1);
        assert_eq!(store.floor, Some(70_000 - MAX_SPAN + 1));
        assert_eq!(
            store.buckets().collect::<Vec<_>>(),
            vec![(70_000 - 2047, 5000), (70_000, 1)]
        );
        // Removals below the floor meet their (collapsed) insertions.
        for index in 0..5000 {
            store.add(index, -1);
        }
        store.add(70_000, -1);
        assert!(store.is_empty());
    }

    #[test]
    fn tiny_index_below_a_wide_store_is_clamped_not_allocated() {
        let mut store = store_of(&[(70_000, 1)]);
        store.add(-70_000, 1);
        assert_eq!(store.counts.len(), MAX_BUCKETS);
        assert_eq!(store.total(), 2);
    }

    #[test]
    fn merge_takes_the_larger_floor() {
        let mut collapsed = Store::default();
        collapsed.add(0, 1);
        collapsed.add(3000, 1);
        let mut plain = store_of(&[(10, 4)]);
        plain.merge(&collapsed);
        assert_eq!(plain.floor, collapsed.floor);
        assert_eq!(plain.total(), 6);
        assert_eq!(plain.buckets().count(), 2);
    }
}
