//! `kpi.status()`: whether this database's KPIs are being folded, and if not, why.
//!
//! Views stay exact whatever happens to the fold worker, but dashboards only move when
//! folds run and notify. This is where a DBA (and the notifier, which exports it on
//! `/metrics` and folds itself when it stalls) sees that they do.

use crate::errors::OrRaise;
use crate::privileges::as_extension_owner;
use crate::workers::{self, health};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

// pgrx needs the row type spelled out here (with `name!`), not behind an alias.
#[allow(clippy::type_complexity)]
#[pg_extern(schema = "kpi", name = "_status", volatile, parallel_restricted)]
fn status() -> TableIterator<
    'static,
    (
        name!(database, String),
        name!(worker_pid, Option<i32>),
        name!(worker_state, String),
        name!(last_fold_at, Option<TimestampWithTimeZone>),
        name!(last_fold_ms, Option<f64>),
        name!(folds, i64),
        name!(pending_rows, i64),
        name!(fold_lag_seconds, Option<f64>),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<TimestampWithTimeZone>),
        name!(failing_kpis, Vec<String>),
    ),
> {
    let pending: i64 =
        as_extension_owner(|| Spi::get_one::<i64>("SELECT count(*) FROM kpi.deltas"))
            .map_err(crate::errors::KpiError::from)
            .or_raise()
            .unwrap_or(0);
    let slot = health::mine();
    let pid = slot
        .as_ref()
        .map(|s| s.pid)
        .filter(|&p| p != 0 && pid_alive(p));
    let state = match (workers::no_worker_reason(), pid) {
        (Some(reason), _) => reason,
        (None, Some(_)) => "running",
        (None, None) => "stopped",
    };
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let folded = slot.as_ref().filter(|s| s.folds > 0);
    // Every delta committed before the last successful fold began was folded by it, so
    // the oldest pending one is at most that old; unless a KPI failed in it, whose
    // deltas stay, so then only the last fold in which none failed bounds them. Without
    // such a fold since the server started, they are at most as old as the server.
    let bound = folded
        .map(|s| {
            if s.failing().is_empty() {
                s.last_fold_start
            } else {
                s.last_clean_fold_start
            }
        })
        .filter(|&start| start != 0);
    let lag = if pending == 0 {
        Some(0.0)
    } else if let Some(start) = bound {
        Some(seconds(now - start))
    } else if workers::preloaded() {
        Some(seconds(now - unsafe { pg_sys::PgStartTime }))
    } else {
        None
    };
    let row = (
        workers::current_database(),
        pid,
        state.to_string(),
        folded.and_then(|s| timestamp(s.last_fold_end)),
        folded.map(|s| s.last_fold_us as f64 / 1000.0),
        slot.as_ref().map_or(0, |s| s.folds),
        pending,
        lag,
        slot.as_ref().and_then(|s| s.error()),
        slot.as_ref()
            .filter(|s| s.error_at != 0)
            .and_then(|s| timestamp(s.error_at)),
        slot.as_ref().map(|s| s.failing()).unwrap_or_default(),
    );
    TableIterator::once(row)
}

fn pid_alive(pid: i32) -> bool {
    !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

fn seconds(us: i64) -> f64 {
    us.max(0) as f64 / 1e6
}

fn timestamp(us: i64) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(us).ok()
}
