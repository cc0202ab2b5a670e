//! SQL functions over sketch states (bytea), used by the generated views, the fold and
//! backfill: build, merge and finalize HyperLogLog and DDSketch states.
//!
//! Merges take arrays (`kpi._hll_merge_all(array_agg(col))`) so each group costs one
//! decode/encode per input sketch, not one per row of a transition function.

use crate::errors::{KpiError, OrRaise};
use pg_kpi_sketches::{DdSketch, Hll, SketchError};
use pgrx::datum::Array;
use pgrx::prelude::*;

fn corrupt(e: SketchError) -> KpiError {
    KpiError::new(
        PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        format!("invalid sketch: {e}"),
        "Sketch states are written by pg_kpi only; rebuild the KPI (drop and create it) if its state was altered.",
    )
}

fn hll(bytes: &[u8]) -> Hll {
    Hll::from_bytes(bytes).map_err(corrupt).or_raise()
}

fn dd(bytes: &[u8]) -> DdSketch {
    DdSketch::from_bytes(bytes).map_err(corrupt).or_raise()
}

#[pg_extern(schema = "kpi", name = "_hll_merge", immutable, parallel_safe)]
fn hll_merge(a: Option<&[u8]>, b: Option<&[u8]>) -> Option<Vec<u8>> {
    match (a, b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
        (Some(a), Some(b)) => {
            let mut merged = hll(a);
            merged.merge(&hll(b));
            Some(merged.to_bytes())
        }
    }
}

/// The union of the non-NULL states, `None` when there are none.
fn merged_hll(states: Array<'_, &[u8]>) -> Option<Hll> {
    let mut merged: Option<Hll> = None;
    for bytes in states.iter().flatten() {
        let h = hll(bytes);
        match &mut merged {
            Some(m) => m.merge(&h),
            None => merged = Some(h),
        }
    }
    merged
}

#[pg_extern(schema = "kpi", name = "_hll_merge_all", immutable, parallel_safe)]
fn hll_merge_all(states: Array<'_, &[u8]>) -> Option<Vec<u8>> {
    merged_hll(states).map(|m| m.to_bytes())
}

/// `_hll_count(_hll_merge_all(states))` without encoding and decoding the union: reads
/// finalize one group per output row, 1,440 of them for a day of minutes.
#[pg_extern(schema = "kpi", name = "_hll_count_all", immutable, parallel_safe)]
fn hll_count_all(states: Array<'_, &[u8]>) -> i64 {
    merged_hll(states).map_or(0, |m| m.cardinality() as i64)
}

#[pg_extern(schema = "kpi", name = "_hll_of", immutable, parallel_safe)]
fn hll_of(values: Array<'_, &str>) -> Vec<u8> {
    let mut h = Hll::new();
    for v in values.iter().flatten() {
        h.add_bytes(v.as_bytes());
    }
    h.to_bytes()
}

#[pg_extern(schema = "kpi", name = "_hll_count", immutable, parallel_safe)]
fn hll_count(state: Option<&[u8]>) -> i64 {
    state.map(|b| hll(b).cardinality() as i64).unwrap_or(0)
}

#[pg_extern(schema = "kpi", name = "_dd_merge", immutable, parallel_safe)]
fn dd_merge(a: Option<&[u8]>, b: Option<&[u8]>) -> Option<Vec<u8>> {
    match (a, b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
        (Some(a), Some(b)) => {
            let mut merged = dd(a);
            merged.merge(&dd(b));
            Some(merged.to_bytes())
        }
    }
}

/// The merge of the non-NULL states, `None` when there are none.
fn merged_dd(states: Array<'_, &[u8]>) -> Option<DdSketch> {
    let mut merged: Option<DdSketch> = None;
    for bytes in states.iter().flatten() {
        let s = dd(bytes);
        match &mut merged {
            Some(m) => m.merge(&s),
            None => merged = Some(s),
        }
    }
    merged
}

#[pg_extern(schema = "kpi", name = "_dd_merge_all", immutable, parallel_safe)]
fn dd_merge_all(states: Array<'_, &[u8]>) -> Option<Vec<u8>> {
    merged_dd(states).map(|m| m.to_bytes())
}

/// `_dd_quantile(_dd_merge_all(states), q)` without encoding and decoding the merge.
#[pg_extern(schema = "kpi", name = "_dd_quantile_all", immutable, parallel_safe)]
fn dd_quantile_all(states: Array<'_, &[u8]>, q: f64) -> Option<f64> {
    // A lone state (e.g. a bucket that so far has only pending deltas; folded rows have
    // their quantile cached) is read straight from its bytes, without building the
    // sketch's dense bucket arrays.
    let mut present = states.iter().flatten();
    match (present.next(), present.next()) {
        (None, _) => None,
        (Some(only), None) => DdSketch::quantile_of_bytes(only, q)
            .map_err(corrupt)
            .or_raise(),
        _ => merged_dd(states).and_then(|m| m.quantile(q)),
    }
}

#[pg_extern(schema = "kpi", name = "_dd_of", immutable, parallel_safe)]
fn dd_of(values: Array<'_, f64>) -> Vec<u8> {
    let mut s = DdSketch::new();
    for v in values.iter().flatten() {
        // Non-finite values are skipped, as the capture trigger does.
        let _ = s.add(v);
    }
    s.to_bytes()
}

/// The q-quantile of a sketch state; NULL when it holds no values.
#[pg_extern(schema = "kpi", name = "_dd_quantile", immutable, parallel_safe)]
fn dd_quantile(state: Option<&[u8]>, q: f64) -> Option<f64> {
    state.and_then(|b| dd(b).quantile(q))
}
