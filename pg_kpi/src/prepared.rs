//! Statements run again and again, prepared once per backend and kept: the fold's, and
//! the reads' (`kpi.value`, `kpi.series`, `kpi.top`, `kpi.snapshot`).
//!
//! A busy fold worker runs a dozen statements twenty times a second, and a dashboard's
//! connection runs the same few reads at every change; parsing and planning them each
//! time cost about as much as executing them (a 24-hour `kpi.series` spent 4 of its
//! 5 ms there). Plans are kept by SQL text (the text of a KPI's statements names its own
//! tables, so a dropped KPI's plans are simply never used again) and Postgres's plan
//! cache replans them after DDL. Reads are prepared read-only, so they run in the
//! caller's snapshot as any SQL in a stable function does.

use crate::errors::KpiResult;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// More distinct statements of one mode than this means KPIs come and go (or, for reads,
/// many different `dims` filters, which are part of the text): start that mode over.
/// Bounds the memory a backend spends on kept plans.
fn max_kept(mode: Mode) -> usize {
    match mode {
        Mode::Write => 512,
        Mode::Read => 64,
    }
}

/// Whether a kept statement may modify the database (the fold's) or only reads.
#[derive(Clone, Copy)]
enum Mode {
    Write = 0,
    Read = 1,
}

thread_local! {
    /// Kept plans by SQL text, one map per mode (indexed by `Mode as usize`).
    static KEPT: RefCell<[HashMap<String, Rc<OwnedPreparedStatement>>; 2]> =
        RefCell::new([HashMap::new(), HashMap::new()]);
}

/// The kept plan of `sql` (whose parameters have types `args`), preparing it if needed.
fn statement(
    client: &SpiClient<'_>,
    mode: Mode,
    sql: &str,
    args: &[PgOid],
) -> KpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(hit) = KEPT.with(|k| k.borrow()[mode as usize].get(sql).cloned()) {
        return Ok(hit);
    }
    let prepared = match mode {
        Mode::Write => client.prepare_mut(sql, args)?,
        Mode::Read => client.prepare(sql, args)?,
    };
    let kept = Rc::new(prepared.keep());
    KEPT.with(|k| {
        let kept_of_mode = &mut k.borrow_mut()[mode as usize];
        if kept_of_mode.len() >= max_kept(mode) {
            kept_of_mode.clear();
        }
        kept_of_mode.insert(sql.to_string(), kept.clone());
    });
    Ok(kept)
}

fn types(args: &[DatumWithOid<'_>]) -> Vec<PgOid> {
    args.iter().map(|a| PgOid::from(a.oid())).collect()
}

/// Runs `sql` through its kept plan and hands the result rows to `read`.
pub fn run<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(SpiTupleTable<'_>) -> KpiResult<R>,
) -> KpiResult<R> {
    Spi::connect_mut(|client| {
        let stmt = statement(client, Mode::Write, sql, &types(args))?;
        let rows = client.update(&*stmt, None, args)?;
        read(rows)
    })
}

/// Runs the read-only query `sql` through its kept plan and hands the rows to `read`.
pub fn select<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(SpiTupleTable<'_>) -> KpiResult<R>,
) -> KpiResult<R> {
    Spi::connect(|client| {
        let stmt = statement(client, Mode::Read, sql, &types(args))?;
        let rows = client.select(&*stmt, None, args)?;
        read(rows)
    })
}

/// The first column of the first row of the read-only query `sql` (`None` for no row
/// or NULL).
pub fn select_one<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> KpiResult<Option<T>> {
    select(sql, args, |rows| {
        Ok(match rows.into_iter().next() {
            Some(row) => row.get::<T>(1)?,
            None => None,
        })
    })
}
