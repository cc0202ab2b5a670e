//! Mergeable sketches behind pg_kpi's `count_distinct` and `percentile` measures.
//!
//! pg_kpi keeps one sketch per time bucket × dimension set, stored as `bytea`; a window's
//! value is the merge of its buckets' sketches, and row triggers update them on INSERT,
//! UPDATE and DELETE. This crate is the pure-Rust core the extension calls: no PostgreSQL
//! types, no allocation beyond the sketches themselves, and a frozen, versioned byte format.
//!
//! | sketch | answers | error | removal | size |
//! |---|---|---|---|---|
//! | [`Hll`] | distinct count | 0.81 % standard error | no | 5 B + ~3 B/value, ≤ 12 KB |
//! | [`DdSketch`] | quantiles | ≤ 0.5 % relative | yes | 8 B + ~2 B/bucket, ≤ ~12 KB |
//!
//! # Example
//! ```
//! use pg_kpi_sketches::{DdSketch, Hll};
//!
//! // One bucket's sketches, as a trigger would build them and the fold would store them.
//! let mut buyers = Hll::new();
//! let mut latency = DdSketch::new();
//! for (user, ms) in [("ann", 12.0), ("bob", 250.0), ("ann", 31.0)] {
//!     buyers.add_bytes(user.as_bytes());
//!     latency.add(ms)?;
//! }
//! let (stored_buyers, stored_latency) = (buyers.to_bytes(), latency.to_bytes());
//!
//! // A later DELETE of bob's row arrives as a delta; the window merges buckets and deltas.
//! let mut delta = DdSketch::new();
//! delta.remove(250.0)?;
//! let mut window = DdSketch::from_bytes(&stored_latency)?;
//! window.merge(&delta);
//! assert_eq!(window.count(), 2);
//! let p95 = window.quantile(0.95).expect("two values");
//! assert!((p95 - 31.0).abs() <= 31.0 * 0.005);
//!
//! assert_eq!(Hll::from_bytes(&stored_buyers)?.cardinality(), 2);
//! # Ok::<(), pg_kpi_sketches::SketchError>(())
//! ```
//!
//! # Module map
//! - [`hll`] — [`Hll`], HyperLogLog distinct counts; `hll/sparse.rs` is the small form for
//!   few values, `hll/dense.rs` the 16,384 registers and Ertl's estimator.
//! - [`hash`] — [`hash_bytes`], the frozen seeded XXH3 hash that feeds the HLL.
//! - [`ddsketch`] — [`DdSketch`], relative-error quantiles with signed counts, so removals
//!   and deltas merge; `ddsketch/store.rs` holds the buckets of one sign and their collapse.
//! - [`mapping`] — DDSketch's value → bucket index, logarithmic and platform-independent.
//! - [`encoding`] — the header shared by both sketches (format version, kind tag), varints,
//!   and the bounds-checked reader that makes decoding untrusted bytes safe.
//! - [`error`] — [`SketchError`].

pub mod ddsketch;
pub mod encoding;
pub mod error;
pub mod hash;
pub mod hll;
pub mod mapping;

pub use ddsketch::DdSketch;
pub use encoding::{sketch_kind, SketchKind};
pub use error::SketchError;
pub use hash::hash_bytes;
pub use hll::Hll;
