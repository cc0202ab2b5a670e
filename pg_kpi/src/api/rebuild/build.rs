//! Step 2 of a rebuild: fill the new definition's aggregate tables from the source,
//! exactly once, while writers write and folds merge into the same tables.
//!
//! Everything is read in ONE snapshot S, the snapshot of the statement that calls this
//! (plpgsql's `PERFORM`): each statement runs with `SPI_execute_snapshot(S)`, which
//! reads in S (with the command counter advanced, so later statements see this
//! transaction's own earlier writes) and writes as any statement does (`ON CONFLICT`
//! updates the latest row version, under its row lock). In S, the new tables and the
//! new KPI's pending deltas hold exactly the changes committed between `begin` and S;
//! the source in S holds the rows as of S. So, per group and tier:
//!
//! ```text
//! added = backfill(S) − (new aggregates in S + new pending deltas in S)
//! ```
//!
//! is the content the KPI had when `begin` committed, and adding it relatively
//! (`col = a.col + excluded.col`, the fold's own upsert) leaves, whatever folds commit
//! meanwhile, `added + every delta since begin` = the source now. The subtraction runs
//! first (before this transaction has written anything the advanced snapshot could
//! see), then the source is scanned in chunks of pages (TID range scans), with a NOTICE
//! every `pg_kpi.rebuild_progress_ms`.
//!
//! States that cannot subtract (min/max, HyperLogLog) merge the backfill
//! (least/greatest/union, which counting a value twice does not change) and then every
//! group is marked dirty with one delta batch, so the fold rescans them from the source
//! (and readers rescan until it does): the rescan is what makes them exact after
//! removals, as for any KPI. Percentile sketches carry signed counts and subtract.

use crate::catalog::Kpi;
use crate::ddl;
use crate::deltas::{self, Entry, Group, State};
use crate::errors::{KpiError, KpiResult};
use crate::gucs;
use crate::measures::Kind;
use pgrx::prelude::*;
use std::ffi::CString;
use std::time::{Duration, Instant};

/// Pages per chunk at least: each chunk upserts its groups, so chunks must not be tiny.
const MIN_CHUNK_PAGES: i64 = 1024;
/// At most this many chunks (larger sources get larger chunks).
const MAX_CHUNKS: i64 = 64;
/// Entries per dirty-marking batch.
const DIRTY_BATCH: usize = 10_000;

pub fn build(k: &Kpi) -> KpiResult<i64> {
    // SAFETY: called from SQL, inside a statement that has a snapshot (plpgsql's
    // PERFORM pushes one); it stays valid until that statement ends.
    let snapshot = unsafe { pg_sys::GetActiveSnapshot() };
    if snapshot.is_null() {
        return Err(KpiError::internal(
            "kpi._rebuild_build runs without a snapshot",
        ));
    }
    let started = Instant::now();
    let (pages, estimate) = source_size(k)?;
    notice!(
        "pg_kpi: rebuilding KPI \"{}\": scanning {} ({pages} pages, about {estimate} rows)",
        display_name(k),
        k.source_sql
    );
    for t in 0..k.tiers.len() {
        run_in(snapshot, &subtract_sql(k, t))?;
    }
    let chunk = MIN_CHUNK_PAGES.max(pages / MAX_CHUNKS + 1);
    let every = Duration::from_millis(gucs::REBUILD_PROGRESS_MS.get().max(10) as u64);
    let mut last = Instant::now();
    let mut rows = 0i64;
    let mut lo = 0i64;
    loop {
        // The last chunk is open-ended: nothing visible in S lies beyond the pages
        // counted after S was taken, but an open end costs nothing.
        let hi = (lo + chunk < pages).then_some(lo + chunk);
        for t in 0..k.tiers.len() {
            let counted = run_in(snapshot, &chunk_sql(k, t, lo, hi))?;
            if t == 0 {
                rows += counted;
            }
        }
        pgrx::check_for_interrupts!();
        let Some(next) = hi else { break };
        lo = next;
        if last.elapsed() >= every {
            last = Instant::now();
            notice!(
                "pg_kpi: rebuilding KPI \"{}\": {:.0} % of the source scanned ({lo} of {pages} pages, {rows} rows) in {:.1} s",
                display_name(k),
                100.0 * lo as f64 / pages.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if k.measures.iter().any(|m| m.has_dirty()) {
        mark_dirty(k)?;
    }
    notice!(
        "pg_kpi: rebuilding KPI \"{}\": 100 % of the source scanned ({rows} rows) in {:.1} s",
        display_name(k),
        started.elapsed().as_secs_f64()
    );
    Ok(rows)
}

fn display_name(k: &Kpi) -> &str {
    k.name.split('#').next().unwrap_or(&k.name)
}

/// The largest table of the source tree in pages (chunks are page ranges of each
/// partition) and the planner's estimate of its rows.
fn source_size(k: &Kpi) -> KpiResult<(i64, i64)> {
    Spi::connect(|c| {
        let row = c
            .select(
                "SELECT coalesce(max(pg_catalog.pg_relation_size(c.oid)
                                     / current_setting('block_size')::bigint), 0)::bigint,
                        coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
                   FROM (SELECT $1::regclass AS relid
                         UNION SELECT relid FROM pg_catalog.pg_partition_tree($1)) t
                   JOIN pg_catalog.pg_class c ON c.oid = t.relid
                  WHERE c.relkind = 'r'",
                Some(1),
                &[k.source.into()],
            )?
            .first();
        Ok((
            row.get::<i64>(1)?.unwrap_or(0),
            row.get::<i64>(2)?.unwrap_or(0),
        ))
    })
}

/// Runs `sql` in `snapshot` (see the module docs); returns the first column of its
/// first row as a bigint (0 when it returns none).
fn run_in(snapshot: pg_sys::Snapshot, sql: &str) -> KpiResult<i64> {
    let text = CString::new(sql).map_err(|_| KpiError::internal("NUL in statement"))?;
    Spi::connect_mut(|_client| {
        // SAFETY: inside an SPI connection; the plan is freed before it closes; the
        // snapshot outlives the call (see `build`).
        unsafe {
            let plan = pg_sys::SPI_prepare(text.as_ptr(), 0, std::ptr::null_mut());
            if plan.is_null() {
                return Err(KpiError::internal("SPI_prepare failed"));
            }
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            let status = pg_sys::SPI_execute_snapshot(
                plan,
                std::ptr::null_mut(),
                std::ptr::null(),
                snapshot,
                std::ptr::null_mut(),
                false,
                true,
                0,
            );
            let mut first = 0i64;
            let table = pg_sys::SPI_tuptable;
            if status >= 0 && !table.is_null() && (*table).numvals > 0 {
                let mut isnull = false;
                let d = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut isnull);
                if !isnull {
                    first = i64::from_datum(d, false).unwrap_or(0);
                }
            }
            pg_sys::SPI_freeplan(plan);
            Spi::check_status(status)?;
            Ok(first)
        }
    })
}

/// Column lists of tier `t`'s aggregate table: (key columns, every inserted column).
fn columns(k: &Kpi, t: usize) -> (Vec<String>, Vec<String>) {
    let mut keys = vec!["bucket".to_string()];
    keys.extend(k.tier_dim_cols(t));
    let mut cols = keys.clone();
    cols.push("_n".into());
    for (i, m) in k.measures.iter().enumerate() {
        cols.extend(m.state_columns(i).into_iter().map(|(c, _)| c));
    }
    (keys, cols)
}

/// `ON CONFLICT … DO UPDATE` of tier `t`: the fold's relative upsert.
fn on_conflict(k: &Kpi, t: usize) -> String {
    let mut sets = vec!["_n = a._n + excluded._n".to_string()];
    for (i, m) in k.measures.iter().enumerate() {
        sets.extend(m.upsert_sets(i));
    }
    format!(
        "ON CONFLICT ({}) DO UPDATE SET {}",
        ddl::agg_key(k, t).join(", "),
        sets.join(", ")
    )
}

/// Adds −(aggregates + pending deltas) of tier `t` as seen in S.
fn subtract_sql(k: &Kpi, t: usize) -> String {
    let (keys, cols) = columns(k, t);
    let mut sel = keys.clone();
    sel.push("-sum(_n)::bigint".into());
    for (i, m) in k.measures.iter().enumerate() {
        for (c, _) in m.state_columns(i) {
            sel.push(if c.ends_with("_nn") {
                format!("-sum({c})::bigint")
            } else if c.ends_with("_sum") {
                format!("-sum({c})")
            } else if c.ends_with("_dd") {
                format!("kpi._dd_negate(kpi._dd_merge_all(array_agg({c})))")
            } else if c.ends_with("_hll") {
                // Unions cannot subtract: see the module docs.
                "NULL::bytea".into()
            } else {
                "NULL::numeric".into()
            });
        }
    }
    let group: Vec<String> = (1..=keys.len()).map(|n| n.to_string()).collect();
    format!(
        "INSERT INTO {agg} AS a ({cols}) SELECT {sel} FROM {state} GROUP BY {group} {conflict}",
        agg = k.agg_table_of(t),
        cols = cols.join(", "),
        sel = sel.join(", "),
        state = k.state_view_of(t),
        group = group.join(", "),
        conflict = on_conflict(k, t),
    )
}

/// Adds the source rows on pages `[lo, hi)` to tier `t`; returns the rows counted.
fn chunk_sql(k: &Kpi, t: usize, lo: i64, hi: Option<i64>) -> String {
    let (keys, cols) = columns(k, t);
    let dims = k.tier_dim_cols(t);
    let mut sel = vec![format!("{} AS bucket", k.tier_bucket_of_row_sql("r", t))];
    sel.extend(dims.iter().map(|d| format!("r.{d}")));
    sel.push("count(*) AS _n".into());
    for (i, m) in k.measures.iter().enumerate() {
        for (c, _) in m.state_columns(i) {
            sel.push(format!("{} AS {c}", m.backfill_agg(&c)));
        }
    }
    let group: Vec<String> = (1..=keys.len()).map(|n| n.to_string()).collect();
    let only = if k.partitioned { "" } else { "ONLY " };
    let range = match hi {
        Some(hi) => format!("r.ctid >= '({lo},0)'::tid AND r.ctid < '({hi},0)'::tid"),
        None => format!("r.ctid >= '({lo},0)'::tid"),
    };
    format!(
        "WITH c AS MATERIALIZED (SELECT {sel} FROM {only}{src} r WHERE {counted} AND {range} GROUP BY {group}),
              i AS (INSERT INTO {agg} AS a ({cols}) SELECT {cols} FROM c {conflict})
         SELECT coalesce(sum(_n), 0)::bigint FROM c",
        sel = sel.join(", "),
        group = group.join(", "),
        src = k.source_sql,
        counted = k.counted_rows_sql("r"),
        agg = k.agg_table_of(t),
        cols = cols.join(", "),
        conflict = on_conflict(k, t),
    )
}

/// A zero change of every measure, with min/max/count_distinct marked dirty.
fn dirty_states(k: &Kpi) -> Vec<State> {
    k.measures
        .iter()
        .map(|m| match m.kind {
            Kind::CountStar => State::Rows,
            Kind::Count => State::Count(0),
            Kind::Sum | Kind::Avg => State::Sum {
                sum: Default::default(),
                nn: 0,
            },
            Kind::Min | Kind::Max => State::Extreme {
                val: None,
                dirty: true,
                is_min: m.kind == Kind::Min,
            },
            Kind::CountDistinct => State::Distinct {
                hll: Default::default(),
                dirty: true,
            },
            Kind::Percentile if m.shares.is_some() => State::Shared,
            Kind::Derived => State::Shared,
            Kind::Percentile => State::Quantiles(Default::default()),
        })
        .collect()
}

/// Appends delta batches marking every group of the base tier dirty (see the module
/// docs); committed with the build, so readers rescan those groups until the fold has.
fn mark_dirty(k: &Kpi) -> KpiResult<()> {
    let dims: Vec<String> = k.dim_cols().iter().map(|d| format!("{d}::text")).collect();
    let sql = format!(
        "SELECT (extract(epoch FROM bucket - '2000-01-01 00:00:00+00'::timestamptz) * 1000000)::bigint,
                ARRAY[{}]::text[]
           FROM {}",
        dims.join(", "),
        k.agg_table_of(0)
    );
    let states = dirty_states(k);
    let groups: Vec<Group> = Spi::connect_mut(|c| {
        c.update(&sql, None, &[])?
            .map(|r| {
                Ok(Group {
                    kpi: k.id,
                    bucket_us: r.get::<i64>(1)?.unwrap_or_default(),
                    dims: r.get::<Vec<Option<String>>>(2)?.unwrap_or_default(),
                })
            })
            .collect::<KpiResult<Vec<_>>>()
    })?;
    for part in groups.chunks(DIRTY_BATCH) {
        let entries: Vec<(Group, Entry)> = part
            .iter()
            .map(|g| {
                (
                    g.clone(),
                    Entry {
                        rows: 0,
                        states: states.clone(),
                    },
                )
            })
            .collect();
        deltas::buffer::append(&deltas::encode(&entries))?;
    }
    Ok(())
}
