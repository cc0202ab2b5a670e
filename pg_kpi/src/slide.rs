//! Sliding windows: values that change because time passes, not because rows do.
//!
//! A bucketed KPI's snapshot reads "the last hour", "the same hour a day and a week ago"
//! and "today". When a bucket boundary passes, a bucket with rows may leave one of those
//! ranges (or enter the day-ago and week-ago ones): the values change with no write, so
//! no merge bumps the version, and the notifier — which re-reads on versions — would
//! keep showing a quiet KPI's old "last hour" until its next write. So, like an overdue
//! KPI's deadline, a passed boundary counts as touched when it moved rows in or out of
//! a range: the version is bumped, the fold's NOTIFY announces it, its alert rules run.
//!
//! Cost: per fold, one catalog query; per KPI and passed boundary (at most once per
//! bucket width), one probe of its aggregate table's bucket index over the few buckets
//! that crossed. A KPI whose data is all recent (no history) is never bumped this way
//! until its rows are an hour old.

use crate::errors::KpiResult;
use crate::prepared;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// Bucketed KPI id → the last bucket boundary it was checked at (µs since
    /// 2000-01-01 UTC, the buckets' origin).
    static CHECKED: RefCell<HashMap<i32, i64>> = RefCell::new(HashMap::new());
}

/// The ranges `kpi.snapshot` reads (see `api::read::snapshot`), as they move from `$1`
/// to `$2` for buckets of width `$3`: any row with a bucket between a range's old and
/// new bounds entered or left it.
const CROSSED: &str = "
    WITH b AS (SELECT kpi._bucket_ts($1) AS t0, kpi._bucket_ts($2) AS t1, $3::interval AS w,
                      '2000-01-01 00:00:00+00'::timestamptz AS o)
    SELECT EXISTS (
      SELECT 1 FROM b, unnest(ARRAY[interval '0', interval '1 day', interval '7 days']) AS r(back), {agg} a
       WHERE a._n <> 0 AND (
             -- a range's start (its last hour's first bucket) moved: rows left it
             (a.bucket >= date_bin(b.w, b.t0 - r.back - interval '1 hour', b.o)
              AND a.bucket < date_bin(b.w, b.t1 - r.back - interval '1 hour', b.o))
             -- its end moved: rows entered it (a day or a week ago)
          OR (r.back > interval '0'
              AND a.bucket >= date_bin(b.w, b.t0 - r.back, b.o) + b.w
              AND a.bucket < date_bin(b.w, b.t1 - r.back, b.o) + b.w)
             -- midnight passed: yesterday left \"today\"
          OR (r.back = interval '0'
              AND a.bucket >= date_trunc('day', b.t0) AND a.bucket < date_trunc('day', b.t1))))";

/// Called by the fold after its merges with the KPIs it touched: the bucketed KPIs
/// whose snapshot ranges gained or lost rows since the boundary they were last checked at.
pub fn crossed(touched: &[i32]) -> KpiResult<Vec<i32>> {
    let kinds = if crate::catalog::catalog_0_2() {
        "AND NOT EXISTS (SELECT 1 FROM kpi.definition_kinds k WHERE k.kpi = d.id)"
    } else {
        ""
    };
    let kpis: Vec<(i32, i64, String)> = prepared::run(
        &format!(
            "SELECT d.id, (extract(epoch FROM d.bucket) * 1000000)::bigint, d.bucket::text
               FROM kpi.definitions d
              WHERE pg_catalog.strpos(d.name, '#') = 0 {kinds}
              ORDER BY d.id"
        ),
        &[],
        |rows| {
            rows.map(|r| {
                Ok((
                    r.get::<i32>(1)?.unwrap_or_default(),
                    r.get::<i64>(2)?.unwrap_or(1).max(1),
                    r.get::<String>(3)?.unwrap_or_default(),
                ))
            })
            .collect::<KpiResult<Vec<_>>>()
        },
    )?;
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    CHECKED.with(|c| {
        c.borrow_mut()
            .retain(|id, _| kpis.iter().any(|k| k.0 == *id))
    });
    let mut out = Vec::new();
    for (id, width, bucket) in kpis {
        let boundary = now.div_euclid(width) * width;
        let last = CHECKED.with(|c| c.borrow_mut().insert(id, boundary));
        let Some(last) = last else { continue };
        if boundary <= last || touched.contains(&id) {
            continue;
        }
        let sql = CROSSED.replace("{agg}", &format!("kpi._agg_{id}"));
        let moved = prepared::run(
            &sql,
            &[last.into(), now.into(), bucket.as_str().into()],
            |mut rows| Ok(rows.next().and_then(|r| r.get::<bool>(1).ok().flatten())),
        )?;
        if moved == Some(true) {
            out.push(id);
        }
    }
    Ok(out)
}
