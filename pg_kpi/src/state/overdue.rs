//! Deadlines passing without a write: the overdue KPIs' tick.
//!
//! An overdue KPI's aggregate table is keyed by (due instant, dimensions), so its
//! primary-key index is the queue of pending deadlines in order. The fold keeps, per
//! overdue KPI, the next deadline still ahead (the smallest due ≥ now with open rows):
//! one index probe when the KPI is first seen, when a fold merged deltas into it, or
//! when that deadline has passed, never a scan. A deadline that passed makes the KPI
//! count as touched by the fold: its version is bumped, it is in the fold's NOTIFY, and
//! its alert rules are evaluated. The fold worker sleeps no longer than until the
//! nearest deadline ([`due_in`]), so the push comes within the fold interval of it.

use crate::errors::KpiResult;
use crate::prepared;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

thread_local! {
    /// Overdue KPI id → its next deadline (µs since 2000-01-01 UTC, Postgres's
    /// timestamp), None when no open row is due in the future.
    static NEXT: RefCell<HashMap<i32, Option<i64>>> = RefCell::new(HashMap::new());
}

const EPOCH_US: &str =
    "(extract(epoch FROM {} - '2000-01-01 00:00:00+00'::timestamptz) * 1000000)::bigint";

/// Called by the fold after its merges, under the fold lock, with the KPIs it merged:
/// the overdue KPIs one of whose deadlines has passed since the last fold.
pub fn passed(merged: &[i32]) -> KpiResult<Vec<i32>> {
    if !crate::catalog::catalog_0_2() {
        return Ok(Vec::new());
    }
    let ids: Vec<i32> = prepared::run(
        "SELECT kpi FROM kpi.definition_kinds WHERE kind = 'overdue' ORDER BY kpi",
        &[],
        |rows| {
            rows.map(|r| r.get::<i32>(1).map(Option::unwrap_or_default))
                .collect::<Result<Vec<_>, _>>()
                .map_err(Into::into)
        },
    )?;
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    NEXT.with(|n| n.borrow_mut().retain(|id, _| ids.contains(id)));
    let mut out = Vec::new();
    for id in ids {
        let cached = NEXT.with(|n| n.borrow().get(&id).copied());
        // `due < now` is overdue (as `count(*) … WHERE due < now()` counts).
        let gone_by = matches!(cached, Some(Some(due)) if due < now);
        if gone_by {
            out.push(id);
        }
        if gone_by || cached.is_none() || merged.contains(&id) {
            let next = probe(id)?;
            NEXT.with(|n| n.borrow_mut().insert(id, next));
        }
    }
    Ok(out)
}

/// The smallest deadline not yet passed with open rows: one probe of the index.
fn probe(id: i32) -> KpiResult<Option<i64>> {
    let sql = format!(
        "SELECT {} FROM (SELECT bucket FROM kpi._agg_{id} WHERE bucket >= now() AND _n <> 0
                          ORDER BY bucket LIMIT 1) q",
        EPOCH_US.replace("{}", "q.bucket")
    );
    prepared::run(&sql, &[], |mut rows| {
        Ok(rows.next().and_then(|r| r.get::<i64>(1).ok().flatten()))
    })
}

/// How long until the nearest known deadline passes (zero if it has), for the fold
/// worker's sleep; None when no overdue KPI has one ahead.
pub fn due_in() -> Option<Duration> {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let next = NEXT.with(|n| n.borrow().values().flatten().copied().min())?;
    // "Passed" is due < now: wake just after it.
    Some(Duration::from_micros((next - now + 1).max(0) as u64))
}
