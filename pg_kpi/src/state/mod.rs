//! Current-state and overdue KPIs (docs/current-state.md).
//!
//! Both are stored exactly like a bucketed KPI, through the same capture, delta buffer,
//! fold and aggregate tables; what differs is the row's "time", an SQL expression kept
//! in `kpi.definition_kinds` instead of a column:
//! - a **current-state** KPI gives every row the same constant time, so the whole table
//!   folds into one bucket per dimension values: INSERT adds, DELETE subtracts, an
//!   UPDATE moving a row between stages is −1 to the old group and +1 to the new one,
//!   TRUNCATE recomputes. Writers still only insert deltas, so 5 hot stage rows never
//!   make writers wait on each other. Its history is sampled by the fold
//!   ([`samples`]);
//! - an **overdue** KPI's time is the row's deadline and its bucket one microsecond, so
//!   its aggregate table, keyed by (due instant, dimensions), is the ordered queue of
//!   open rows' deadlines; its value at T is the count of rows due before T
//!   ([`overdue`] makes the fold worker announce deadlines as they pass).
//!
//! Reads need only one change: their bucket range ([`bounds`]).

pub mod overdue;
pub mod samples;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

use crate::catalog::Kpi;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    State,
    Overdue,
}

/// What `kpi.definition_kinds` says of a KPI.
#[derive(Clone, Debug)]
pub struct Special {
    pub kind: Kind,
    /// The row's time, SQL over the source row's columns (unqualified: every query
    /// using it reads the source alone).
    pub time_expr: String,
    /// Current-state KPIs: the sampling resolution (µs) and how long samples are kept.
    pub resolution_us: i64,
    pub history: Option<String>,
}

impl Special {
    pub fn from_columns(
        kind: Option<String>,
        time_expr: Option<String>,
        resolution_us: Option<i64>,
        history: Option<String>,
    ) -> Option<Special> {
        let kind = match kind.as_deref()? {
            "state" => Kind::State,
            "overdue" => Kind::Overdue,
            _ => return None,
        };
        Some(Special {
            kind,
            time_expr: time_expr?,
            resolution_us: resolution_us.unwrap_or(60_000_000).max(1),
            history,
        })
    }
}

/// The constant time of every row of a current-state KPI: the buckets' origin, so the
/// single bucket is the same whatever the bucket width.
pub const STATE_TIME: &str = "'2000-01-01 00:00:00+00'::timestamp with time zone";

/// The bucket range `[lo, hi)` a read ending at `end` covers, when it is not the
/// window's: all of a current-state KPI (its one bucket), and every deadline before
/// `end` for an overdue KPI (`due < end`, as `count(*) … WHERE due < now()` counts).
pub fn bounds(k: &Kpi, end: &str) -> Option<(String, String)> {
    let lo = "'-infinity'::timestamptz".to_string();
    match k.special.as_ref()?.kind {
        Kind::State => Some((lo, "'infinity'::timestamptz".into())),
        Kind::Overdue => Some((lo, format!("({end})"))),
    }
}

pub fn is_state(k: &Kpi) -> bool {
    k.special.as_ref().is_some_and(|s| s.kind == Kind::State)
}

pub fn is_overdue(k: &Kpi) -> bool {
    k.special.as_ref().is_some_and(|s| s.kind == Kind::Overdue)
}

/// Records a new KPI's kind (by `kpi.create`'s path, right after its catalog row).
pub fn define(id: i32, s: &Special) -> crate::errors::KpiResult<()> {
    let kind = match s.kind {
        Kind::State => "state",
        Kind::Overdue => "overdue",
    };
    let resolution = (s.kind == Kind::State).then(|| format!("{} microseconds", s.resolution_us));
    pgrx::Spi::run_with_args(
        "INSERT INTO kpi.definition_kinds (kpi, kind, time_expr, resolution, history)
         VALUES ($1, $2, $3, $4::interval, $5::interval)",
        &[
            id.into(),
            kind.into(),
            s.time_expr.as_str().into(),
            resolution.into(),
            s.history.clone().into(),
        ],
    )?;
    Ok(())
}

/// After a new KPI's tables and backfill: a current-state KPI's samples table and its
/// first sample.
pub fn created(k: &Kpi) -> crate::errors::KpiResult<()> {
    if is_state(k) {
        samples::create(k)?;
        samples::record_one(k)?;
    }
    Ok(())
}

/// What `kpi.drop` removes beyond the aggregate tables.
pub fn drop_objects(k: &Kpi) -> crate::errors::KpiResult<()> {
    if is_state(k) {
        pgrx::Spi::run(&format!("DROP TABLE IF EXISTS {}", samples::table(k)))?;
    }
    Ok(())
}
