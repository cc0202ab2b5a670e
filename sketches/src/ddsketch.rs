//! DDSketch: mergeable quantiles with relative error, supporting removal, for `percentile`.
//!
//! # How it works
//! Every finite value goes to a bucket: positive values to the positive store at index
//! ⌈ln x / ln γ⌉ (see [`crate::mapping`]), negative values to the negative store by their
//! magnitude, and zeros to a plain counter. A bucket keeps only a signed count, so
//! - merging adds counts bucket by bucket, so it is commutative and associative (exactly,
//!   byte for byte, while no store has collapsed, see below; after a collapse too when no
//!   count is negative), and the sketch of a window is the merge of its buckets' sketches;
//! - [`DdSketch::remove`] subtracts one from the bucket the value maps to. A removal that
//!   arrives before its insertion leaves a count of −1 that the insertion later cancels, so
//!   the same type holds a *delta* (the net change of a transaction, negative in places),
//!   and folding a delta into a base is [`DdSketch::merge`]. Buckets that net to zero are
//!   dropped, so a sketch after removals is identical, byte for byte, to the sketch built
//!   from the remaining values alone.
//!
//! # Error bounds
//! - Every quantile is within α = [`RELATIVE_ACCURACY`] = 0.5 % (relative) of the actual
//!   value of that rank: the ⌈q·n⌉-th smallest value (the first for q = 0), the value
//!   PostgreSQL's `percentile_disc(q)` returns. It is reported as the centre of the value's
//!   bucket. Zeros are exact. The bound holds for normal
//!   floats (|x| ≥ 2.2·10⁻³⁰⁸) up to rounding of a few ulps.
//! - Until a store collapses. Each store spans at most [`MAX_BUCKETS`] = 2,048 buckets, a
//!   ratio of about 8·10^8 between the largest and smallest magnitude of one sign (e.g.
//!   1 µs to 13 minutes for latencies). Beyond that the smallest magnitudes are merged
//!   into one bucket, and only quantiles falling in that bucket lose the guarantee.
//! - A sketch whose counts are not all non-negative (an unmatched removal) has no
//!   meaningful quantiles; [`DdSketch::quantile`] still answers (walking the signed
//!   counts) and [`DdSketch::has_negative_counts`] tells the caller.
//!
//! # NaN and infinities
//! Rejected with [`SketchError::NonFinite`] and not recorded (the sketch is unchanged):
//! they have no bucket and no meaningful rank. An error rather than a silent skip leaves the
//! choice to the caller, who sees the same value on insert and on delete and so skips (or
//! refuses) both alike: skipping them as SQL aggregates skip NULL, or failing the statement.
//!
//! # Cost
//! 8 bytes for an empty sketch; then per non-zero bucket one zigzag count (1 byte up to
//! 63, 2 up to 8,191, 3 up to about a million) plus one gap byte. One bucket covers 1 % of
//! value, so values spread over three decades occupy at most 691 buckets, however many
//! values there are. Measured on 10^6 values: 2.5 KB uniform on [0, 1000), 3.3 KB
//! log-normal (σ = 1.5), 5.1 KB normal with negatives and zeros. The worst case is
//! 2 × 2,048 buckets, about 16 KB with counts below a million. In memory, 8 bytes per
//! index between the lowest and highest bucket of each sign.
//!
//! # Encoding
//! `[format 1][kind 2][mapping 1][zigzag zero count][positive store][negative store]`, a
//! store being `[0 | 1 zigzag floor][varint n]` then n buckets: the first as
//! `zigzag index, zigzag count`, the others as `varint gap to the previous index, zigzag count`.

mod store;

use crate::encoding::{put_header, put_zigzag, Reader, SketchKind};
use crate::error::SketchError;
use crate::mapping;
use store::Store;

pub use crate::mapping::RELATIVE_ACCURACY;
pub use store::MAX_BUCKETS;

/// The only mapping so far: logarithmic, α = 0.005, 2,048 buckets per store. A sketch with
/// other parameters could not be merged with these, so they are one tag, checked on decode.
const MAPPING_LOG_ALPHA_0_005: u8 = 1;

/// A DDSketch quantile sketch with signed counts. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DdSketch {
    positive: Store,
    negative: Store,
    zero: i64,
}

impl DdSketch {
    /// An empty sketch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value. NaN and ±infinity are rejected.
    pub fn add(&mut self, value: f64) -> Result<(), SketchError> {
        self.add_count(value, 1)
    }

    /// Takes one value away again: decrements the bucket `value` maps to. Removing a value
    /// that was never added leaves a negative count for a later add (or merge) to cancel.
    pub fn remove(&mut self, value: f64) -> Result<(), SketchError> {
        self.add_count(value, -1)
    }

    /// Adds `count` occurrences of `value`; a negative count removes them.
    pub fn add_count(&mut self, value: f64, count: i64) -> Result<(), SketchError> {
        if !value.is_finite() {
            return Err(SketchError::NonFinite(value));
        }
        if value > 0.0 {
            self.positive.add(mapping::index(value), count);
        } else if value < 0.0 {
            self.negative.add(mapping::index(-value), count);
        } else {
            self.zero = self.zero.wrapping_add(count);
        }
        Ok(())
    }

    /// Adds the counts of `other` to this sketch: the union of two sets of values, or a
    /// delta folded into a base.
    pub fn merge(&mut self, other: &DdSketch) {
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.zero = self.zero.wrapping_add(other.zero);
    }

    /// The sketch with every count negated: merged into a sketch, it takes this one's
    /// values away again (a rebuild subtracts the deltas its backfill already counted).
    pub fn negated(&self) -> DdSketch {
        let mut out = self.clone();
        out.positive.negate();
        out.negative.negate();
        out.zero = out.zero.wrapping_neg();
        out
    }

    /// Net number of values (insertions minus removals), saturating at the i64 range.
    pub fn count(&self) -> i64 {
        let total = self.positive.total() + self.negative.total() + i128::from(self.zero);
        total.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Whether every bucket is zero (a sketch whose removals all met their insertions is).
    pub fn is_empty(&self) -> bool {
        self.zero == 0 && self.positive.is_empty() && self.negative.is_empty()
    }

    /// Whether some bucket has more removals than insertions: true of a pending delta,
    /// a sign of lost insertions in a base sketch.
    pub fn has_negative_counts(&self) -> bool {
        self.zero < 0 || self.positive.has_negative_counts() || self.negative.has_negative_counts()
    }

    /// The q-quantile: within α relative of the ⌈q·n⌉-th smallest value, which is what
    /// `percentile_disc(q)` returns over the same rows. `None` when the sketch holds no
    /// values (net count ≤ 0) or q is not in [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.positive.total() + self.negative.total() + i128::from(self.zero);
        quantile_walk(
            n,
            self.negative.buckets(),
            self.zero,
            self.positive.buckets(),
            q,
        )
    }

    /// [`DdSketch::quantile`] of an encoded sketch, read without building it: the same
    /// checks as [`DdSketch::from_bytes`], but only the non-zero buckets are kept. A
    /// `kpi.series` of a percentile finalizes one sketch per point, 1,440 for a day.
    pub fn quantile_of_bytes(bytes: &[u8], q: f64) -> Result<Option<f64>, SketchError> {
        let mut reader = Reader::new(bytes);
        reader.header(SketchKind::DdSketch)?;
        if reader.u8()? != MAPPING_LOG_ALPHA_0_005 {
            return Err(SketchError::Corrupt("unknown DDSketch index mapping"));
        }
        let zero = reader.zigzag()?;
        let (_, positive) = store::read_buckets(&mut reader)?;
        let (_, negative) = store::read_buckets(&mut reader)?;
        reader.finish()?;
        let total =
            |buckets: &[(i32, i64)]| buckets.iter().map(|&(_, c)| i128::from(c)).sum::<i128>();
        let n = total(&positive) + total(&negative) + i128::from(zero);
        Ok(quantile_walk(
            n,
            negative.iter().copied(),
            zero,
            positive.iter().copied(),
            q,
        ))
    }

    /// The canonical encoding: equal sketches give equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, SketchKind::DdSketch);
        out.push(MAPPING_LOG_ALPHA_0_005);
        put_zigzag(&mut out, self.zero);
        self.positive.write(&mut out);
        self.negative.write(&mut out);
        out
    }

    /// Decodes [`DdSketch::to_bytes`] output. Any other input, truncated, corrupted or
    /// foreign, is an error; decoding never panics and allocates at most 2 × 2,048 counts.
    pub fn from_bytes(bytes: &[u8]) -> Result<DdSketch, SketchError> {
        let mut reader = Reader::new(bytes);
        reader.header(SketchKind::DdSketch)?;
        if reader.u8()? != MAPPING_LOG_ALPHA_0_005 {
            return Err(SketchError::Corrupt("unknown DDSketch index mapping"));
        }
        let zero = reader.zigzag()?;
        let positive = Store::read(&mut reader)?;
        let negative = Store::read(&mut reader)?;
        reader.finish()?;
        Ok(DdSketch {
            positive,
            negative,
            zero,
        })
    }
}

/// The q-quantile of a sketch given as its net count `n`, its negative and positive
/// non-zero buckets (ascending by index) and its zero count.
fn quantile_walk(
    n: i128,
    negative: impl DoubleEndedIterator<Item = (i32, i64)>,
    zero: i64,
    positive: impl Iterator<Item = (i32, i64)>,
    q: f64,
) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) || n <= 0 {
        return None;
    }
    // 0-based rank of the ⌈q·n⌉-th value, computed in f64 as PostgreSQL does.
    let rank = ((q * n as f64).ceil() as i128 - 1).clamp(0, n - 1);
    // Walk the buckets in ascending order of value: most negative first, then zeros,
    // then positives. Buckets are (sign, index); only the answer's value is computed
    // (an `exp` each, which for hundreds of buckets cost more than the walk).
    let negatives = negative.rev().map(|(i, c)| ((-1, i), c));
    let zeros = std::iter::once(((0, 0), zero));
    let positives = positive.map(|(i, c)| ((1, i), c));
    let value = |(sign, index): (i8, i32)| match sign {
        0 => 0.0,
        s if s < 0 => -mapping::value(index),
        _ => mapping::value(index),
    };
    let mut seen: i128 = 0;
    let mut last = None;
    for (bucket, count) in negatives.chain(zeros).chain(positives) {
        if count == 0 {
            continue;
        }
        seen += i128::from(count);
        if seen > rank {
            return Some(value(bucket));
        }
        last = Some(bucket);
    }
    // Only reachable with negative counts somewhere: answer the largest value present.
    last.map(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_finite_values() {
        let mut sketch = DdSketch::new();
        assert!(matches!(
            sketch.add(f64::NAN),
            Err(SketchError::NonFinite(_))
        ));
        assert!(matches!(
            sketch.add(f64::INFINITY),
            Err(SketchError::NonFinite(_))
        ));
        assert!(matches!(
            sketch.remove(f64::NEG_INFINITY),
            Err(SketchError::NonFinite(_))
        ));
        assert!(sketch.is_empty());
    }

    #[test]
    fn quantile_edge_cases() {
        let mut sketch = DdSketch::new();
        assert_eq!(sketch.quantile(0.5), None);
        sketch.add(-0.0).expect("finite");
        assert_eq!(sketch.quantile(0.5), Some(0.0));
        assert_eq!(sketch.quantile(1.5), None);
        assert_eq!(sketch.quantile(f64::NAN), None);
        sketch.remove(0.0).expect("finite");
        assert!(sketch.is_empty());
        assert_eq!(sketch.quantile(0.0), None);
    }

    #[test]
    fn walks_negatives_zeros_then_positives() {
        let mut sketch = DdSketch::new();
        for value in [-100.0, -1.0, 0.0, 0.0, 1.0, 100.0] {
            sketch.add(value).expect("finite");
        }
        let close = |got: Option<f64>, want: f64| {
            let got = got.expect("non-empty");
            assert!(
                (got - want).abs() <= want.abs() * RELATIVE_ACCURACY * 1.000_001,
                "{got} vs {want}"
            );
        };
        close(sketch.quantile(0.0), -100.0);
        close(sketch.quantile(0.2), -1.0);
        close(sketch.quantile(0.4), 0.0);
        close(sketch.quantile(0.6), 0.0);
        close(sketch.quantile(0.8), 1.0);
        close(sketch.quantile(1.0), 100.0);
    }

    #[test]
    fn a_pending_delta_reports_negative_counts() {
        let mut delta = DdSketch::new();
        delta.remove(3.0).expect("finite");
        assert!(delta.has_negative_counts());
        assert_eq!(delta.count(), -1);
        assert_eq!(delta.quantile(0.5), None);
        let mut base = DdSketch::new();
        base.add(3.0).expect("finite");
        base.add(4.0).expect("finite");
        base.merge(&delta);
        assert!(!base.has_negative_counts());
        assert_eq!(base.count(), 1);
    }
}
