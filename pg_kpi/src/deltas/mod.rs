//! Delta batches: what a writing transaction appends to `kpi.deltas`, and how the fold
//! and the KPI views read them back.
//!
//! A batch is the net change of one transaction, one entry per KPI × bucket ×
//! dimension values, in a compact binary form ([`wire`]): writers pay only for a
//! `memcpy` into a `bytea`, where a `jsonb` column made every commit run the JSON
//! parser (the single biggest cost of capture, measured by `bench/write_overhead.sh`).
//! Readers decode the batches, merge entries of the same group ([`Merged`]), and hand
//! SQL the entries as `jsonb` ([`json`]), the form the state views and the fold's
//! upserts decode.

pub mod buffer;
pub mod json;
mod merge;
mod wire;

use pg_kpi_sketches::{DdSketch, Hll};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub use merge::Merged;
pub use wire::{decode, encode};

/// Entries grouped by KPI id.
pub type ByKpi = rustc_hash::FxHashMap<i32, Vec<(Group, Entry)>>;

/// The group an entry belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub kpi: i32,
    /// Bucket start, µs since 2000-01-01 UTC.
    pub bucket_us: i64,
    /// Dimension values in their text form; `None` for NULL.
    pub dims: Vec<Option<String>>,
}

/// The net change of one group: rows counted and each measure's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub rows: i64,
    pub states: Vec<State>,
}

/// The net change of one measure's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum State {
    /// count(*): carried by the entry's row count.
    Rows,
    /// count(expr): net non-null values.
    Count(i64),
    /// sum/avg: net sum of non-null values and their net count.
    Sum {
        #[serde(with = "wire::decimal")]
        sum: Decimal,
        nn: i64,
    },
    /// min/max of added values; `dirty` when a value was removed (the extreme may be gone).
    Extreme {
        #[serde(with = "wire::opt_decimal")]
        val: Option<Decimal>,
        dirty: bool,
        is_min: bool,
    },
    /// count_distinct: values added; `dirty` when one was removed (HLL cannot forget).
    Distinct {
        #[serde(with = "wire::hll")]
        hll: Hll,
        dirty: bool,
    },
    /// percentile: net sketch (negative counts for removals).
    Quantiles(#[serde(with = "wire::ddsketch")] DdSketch),
    /// percentile reading another measure's sketch.
    Shared,
}
