//! DDSketch's mapping from values to bucket indices: logarithmic, relative accuracy α.
//!
//! A positive value x goes to bucket i = ⌈ln x / ln γ⌉ with γ = (1 + α)/(1 − α), so bucket i
//! covers (γ^(i−1), γ^i]. Reporting every value of bucket i as 2γ^i/(1 + γ) = γ^i (1 − α)
//! is then off by at most α relative, at either end of the bucket. With α = 0.005 a bucket
//! spans about 1 % in value, and one decade takes 231 buckets.
//!
//! The index is part of the persisted format: a removal must find the bucket its insertion
//! used, possibly years and platforms later. The platform's `ln` may round differently
//! from one C library to the next, which would move values lying within an ulp of a bucket
//! boundary. So the index uses `libm::log`, a pure-Rust logarithm whose result is the same
//! on every target, multiplied by a fixed constant; the tests pin both.

/// Relative accuracy α of every reported quantile (before any collapse).
pub const RELATIVE_ACCURACY: f64 = 0.005;

/// ln γ for γ = 1.005/0.995, written out so that the mapping never depends on a computation.
const LN_GAMMA: f64 = 0.010_000_083_334_583_356;
const MULTIPLIER: f64 = 1.0 / LN_GAMMA;

/// The index of the smallest positive f64 (5e-324) and of `f64::MAX`: every finite non-zero
/// magnitude maps into this range, and decoding rejects indices outside it.
pub(crate) const MIN_INDEX: i32 = -74_443;
pub(crate) const MAX_INDEX: i32 = 70_978;

/// The bucket of a finite, strictly positive magnitude.
pub(crate) fn index(magnitude: f64) -> i32 {
    debug_assert!(magnitude > 0.0 && magnitude.is_finite());
    // The product lies within ±75,000, so the cast neither saturates nor loses anything.
    (libm::log(magnitude) * MULTIPLIER).ceil() as i32
}

/// The value reported for bucket `index`: γ^i (1 − α), within α of everything in the bucket.
pub(crate) fn value(index: i32) -> f64 {
    // exp may round up past f64::MAX for the last bucket; report the largest finite value.
    (libm::exp(f64::from(index) * LN_GAMMA) * (1.0 - RELATIVE_ACCURACY)).min(f64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_their_definition() {
        let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        // γ itself is rounded (1.005 and 0.995 are not exact binary fractions): a few ulps.
        assert!((libm::log(gamma) - LN_GAMMA).abs() < 1e-15);
        assert_eq!(index(f64::from_bits(1)), MIN_INDEX);
        assert_eq!(index(f64::MAX), MAX_INDEX);
    }

    /// Pins the persisted mapping: changing any of these breaks removal from stored sketches.
    #[test]
    fn mapping_is_frozen() {
        assert_eq!(index(1.0), 0);
        assert_eq!(index(1.01), 1);
        assert_eq!(index(1.0201), 2);
        assert_eq!(index(0.5), -69);
        assert_eq!(index(100.0), 461);
        assert_eq!(index(123_456.789), 1_173);
        assert_eq!(index(1e-9), -2_072);
    }

    #[test]
    fn reported_values_are_within_alpha_of_every_bucket_member() {
        let mut x = 1e-300_f64;
        let mut worst = 0.0_f64;
        while x < 1e300 {
            let reported = value(index(x));
            worst = worst.max((reported - x).abs() / x);
            x *= 1.000_37;
        }
        // Rounding of log/exp adds a few ulps at bucket boundaries.
        assert!(worst <= RELATIVE_ACCURACY * (1.0 + 1e-9), "worst {worst}");
        assert!(
            worst > RELATIVE_ACCURACY * 0.99,
            "the bound is tight: {worst}"
        );
        assert_eq!(value(MAX_INDEX), f64::MAX);
    }
}
