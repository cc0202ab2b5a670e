//! Statements run again and again, prepared once per backend and kept: the fold's, and
//! the reads' (`kpi.value`, `kpi.series`, `kpi.top`, `kpi.snapshot`).
//!
//! A busy fold worker runs a dozen statements twenty times a second, and a dashboard's
//! connection runs the same few reads at every change; parsing and planning them each
//! time cost about as much as executing them (a 24-hour `kpi.series` spent 4 of its
//! 5 ms there). Plans are kept by SQL text (the text of a KPI's statements names its own
//! tables, so a dropped KPI's plans are simply never used again) and Postgres's plan
//! cache replans them after DDL.
//!
//! Reads always run read-only, so they see exactly the calling statement's snapshot, as
//! any SQL in a stable function does. pgrx would run them read-write (a fresh snapshot
//! per statement) once the transaction has an XID, so a `kpi.value` in a transaction
//! that has written would see commits newer than its own statement. Hence reads keep
//! their plans themselves ([`ReadPlan`]) and execute them with `SPI_execute_plan`.

use crate::errors::{KpiError, KpiResult};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiHeapTupleData};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::ptr::NonNull;
use std::rc::Rc;

/// More distinct statements than this means KPIs come and go (or, for reads, many
/// different `dims` filters, which are part of the text): start over. Bounds the memory
/// a backend spends on kept plans.
const MAX_KEPT_WRITES: usize = 512;
const MAX_KEPT_READS: usize = 64;

/// A read's plan, kept for the life of the backend (`SPI_keepplan`) until dropped.
struct ReadPlan(NonNull<pg_sys::_SPI_plan>);

impl Drop for ReadPlan {
    fn drop(&mut self) {
        // SAFETY: the plan was kept by `ReadPlan::prepare` and is freed only here.
        unsafe {
            pg_sys::SPI_freeplan(self.0.as_ptr());
        }
    }
}

impl ReadPlan {
    /// Prepares and keeps `sql` with parameter types `args`. Must run inside SPI.
    fn prepare(sql: &str, args: &[pg_sys::Oid]) -> KpiResult<ReadPlan> {
        let text = CString::new(sql).map_err(|_| KpiError::internal("NUL in statement"))?;
        let mut types = args.to_vec();
        // SAFETY: inside an SPI connection; Postgres raises an ERROR (a Rust panic under
        // pg_guard) rather than returning NULL for a bad statement, but check anyway.
        unsafe {
            let plan = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_mut_ptr());
            let result = pg_sys::SPI_result;
            let plan = NonNull::new(plan)
                .ok_or_else(|| KpiError::internal(format!("SPI_prepare failed ({result})")))?;
            let kept = pg_sys::SPI_keepplan(plan.as_ptr());
            if kept != 0 {
                pg_sys::SPI_freeplan(plan.as_ptr());
                return Err(KpiError::internal(format!("SPI_keepplan failed ({kept})")));
            }
            Ok(ReadPlan(plan))
        }
    }
}

thread_local! {
    static KEPT_WRITES: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
    static KEPT_READS: RefCell<HashMap<String, Rc<ReadPlan>>> = RefCell::new(HashMap::new());
}

/// The kept entry of `sql` in `kept`, made by `make` if there is none.
fn kept<T>(
    kept: &'static std::thread::LocalKey<RefCell<HashMap<String, Rc<T>>>>,
    max: usize,
    sql: &str,
    make: impl FnOnce() -> KpiResult<T>,
) -> KpiResult<Rc<T>> {
    if let Some(hit) = kept.with(|k| k.borrow().get(sql).cloned()) {
        return Ok(hit);
    }
    let made = Rc::new(make()?);
    kept.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= max {
            k.clear();
        }
        k.insert(sql.to_string(), made.clone());
    });
    Ok(made)
}

/// Runs the modifying statement `sql` through its kept plan and hands the result rows
/// to `read`.
pub fn run<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(pgrx::spi::SpiTupleTable<'_>) -> KpiResult<R>,
) -> KpiResult<R> {
    Spi::connect_mut(|client| {
        let stmt = kept(&KEPT_WRITES, MAX_KEPT_WRITES, sql, || {
            let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
            Ok(client.prepare_mut(sql, &types)?.keep())
        })?;
        let rows = client.update(&*stmt, None, args)?;
        read(rows)
    })
}

/// Runs the read-only query `sql` through its kept plan, in the calling statement's
/// snapshot, and hands the rows to `read`.
pub fn select<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(std::vec::IntoIter<SpiHeapTupleData<'_>>) -> KpiResult<R>,
) -> KpiResult<R> {
    Spi::connect(|_client| {
        let plan = kept(&KEPT_READS, MAX_KEPT_READS, sql, || {
            let types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
            ReadPlan::prepare(sql, &types)
        })?;
        let (mut values, nulls): (Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) = args
            .iter()
            .map(|a| match a.datum() {
                Some(d) => (d.sans_lifetime(), b' ' as std::ffi::c_char),
                None => (pg_sys::Datum::from(0usize), b'n' as std::ffi::c_char),
            })
            .unzip();
        // SAFETY: inside the SPI connection; the plan takes exactly `args` (its text and
        // their types are its key); the rows are read before the connection closes.
        let rows = unsafe {
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            let status = pg_sys::SPI_execute_plan(
                plan.0.as_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                true,
                0,
            );
            Spi::check_status(status)?;
            let table = pg_sys::SPI_tuptable;
            if table.is_null() {
                Vec::new()
            } else {
                let n = (*table).numvals as usize;
                let mut rows = Vec::with_capacity(n);
                for i in 0..n {
                    if let Some(row) =
                        SpiHeapTupleData::new((*table).tupdesc, *(*table).vals.add(i))?
                    {
                        rows.push(row);
                    }
                }
                rows
            }
        };
        read(rows.into_iter())
    })
}

/// The first column of the first row of the read-only query `sql` (`None` for no row
/// or NULL).
pub fn select_one<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> KpiResult<Option<T>> {
    select(sql, args, |mut rows| {
        Ok(match rows.next() {
            Some(row) => row.get::<T>(1)?,
            None => None,
        })
    })
}
