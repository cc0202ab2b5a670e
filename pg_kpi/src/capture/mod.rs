//! Capture: the row trigger that turns every INSERT, UPDATE and DELETE on a source
//! table into in-memory deltas, and the transaction hooks that flush them.
//!
//! The trigger never touches shared rows and never NOTIFYs. Deltas accumulate in
//! backend memory and are written as a single row of `kpi.deltas` at pre-commit (or
//! earlier when a huge statement exceeds `pg_kpi.max_pending_groups`), then the fold
//! worker is woken at commit.

mod accumulator;
mod cache;
mod numeric;
mod projection;

use crate::errors::{KpiError, OrRaise};
use crate::gucs;
use crate::measures::Kind;
use accumulator::{Accumulator, Contribution, Key};
use pgrx::prelude::*;
use projection::Row;
use rust_decimal::Decimal;
use std::cell::{Cell, RefCell};
use std::str::FromStr;

thread_local! {
    static ACC: RefCell<Accumulator> = RefCell::new(Accumulator::default());
    static FLUSHED: Cell<bool> = const { Cell::new(false) };
    static HOOKS: Cell<bool> = const { Cell::new(false) };
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_pg_kpi_capture() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `kpi._capture()`: AFTER INSERT OR UPDATE OR DELETE … FOR EACH ROW.
///
/// # Safety
/// Called by the Postgres function manager as a trigger.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn pg_kpi_capture(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || !pgrx::is_a(context, pg_sys::NodeTag::T_TriggerData) {
            KpiError::new(
                PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                "kpi._capture() must be called as a trigger",
                "pg_kpi installs this trigger itself; do not call it directly.",
            )
            .raise();
        }
        let td = context as *mut pg_sys::TriggerData;
        register_hooks();
        let relid = (*(*td).tg_relation).rd_id;
        let table = cache::for_relation(relid).or_raise();
        let event = (*td).tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
        match event {
            pg_sys::TRIGGER_EVENT_INSERT => capture_row(&table, (*td).tg_trigslot, 1),
            pg_sys::TRIGGER_EVENT_DELETE => capture_row(&table, (*td).tg_trigslot, -1),
            pg_sys::TRIGGER_EVENT_UPDATE => {
                capture_row(&table, (*td).tg_trigslot, -1);
                capture_row(&table, (*td).tg_newslot, 1);
            }
            _ => {}
        }
        let pending = ACC.with(|a| a.borrow().len());
        if pending >= gucs::MAX_PENDING_GROUPS.get() as usize {
            flush(pg_sys::GetCurrentSubTransactionId());
        }
        pg_sys::Datum::from(0)
    }
}

/// Bucket start, in microseconds since 2000-01-01 UTC, of a time value; `None` for
/// infinite values (they are not counted, like NULL).
fn bucket_of(datum: pg_sys::Datum, type_oid: pg_sys::Oid, width_us: i64) -> Option<i64> {
    let t = if type_oid == pg_sys::DATEOID {
        let days = datum.value() as i32;
        if days == i32::MIN || days == i32::MAX {
            return None;
        }
        i64::from(days) * 86_400_000_000
    } else {
        let us = datum.value() as i64;
        if us == i64::MIN || us == i64::MAX {
            return None;
        }
        us
    };
    Some(t.div_euclid(width_us) * width_us)
}

fn to_decimal(text: &str) -> Result<Decimal, KpiError> {
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_str(text))
        .map_err(|_| {
            KpiError::new(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!("pg_kpi cannot aggregate the value {text}"),
                "Values must be finite numbers with at most 28 significant digits; exclude others with the KPI's filter.",
            )
        })
}

/// Evaluates every KPI of the table against one row and accumulates its deltas.
unsafe fn capture_row(table: &cache::TableKpis, slot: *mut pg_sys::TupleTableSlot, sign: i64) {
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    // One projection computes every value of every KPI; the row's memory is freed when
    // `row` is dropped, after the values have been copied into the accumulator.
    let row = unsafe { table.projection.row(slot) };
    let mut values = Vec::new();
    for kpi in &table.kpis {
        match contributions(kpi, &row, &mut values) {
            Ok(Some((bucket_us, dims))) => {
                let key = Key {
                    kpi: kpi.id,
                    bucket_us,
                    dims,
                    subxact,
                };
                ACC.with(|a| {
                    a.borrow_mut()
                        .apply(key, &kpi.template, sign, &values)
                        .map_err(|m| {
                            KpiError::new(
                                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                                m,
                                "Split the statement into smaller ones.",
                            )
                        })
                        .or_raise()
                })
            }
            Ok(None) => {}
            Err(e) => e.raise(),
        }
    }
}

/// The bucket (µs since 2000-01-01 UTC) and dimension values a row lands in.
type Place = (i64, Vec<Option<String>>);

/// What one row contributes to one KPI: where it lands, with the measures'
/// contributions in `values`; `None` when the KPI does not count the row.
fn contributions(
    kpi: &cache::CompiledKpi,
    row: &Row<'_>,
    values: &mut Vec<Contribution>,
) -> Result<Option<Place>, KpiError> {
    if let Some(filter) = &kpi.filter {
        match row.get(filter) {
            Some(d) if d.value() != 0 => {}
            _ => return Ok(None),
        }
    }
    let Some(t) = row.get(&kpi.time) else {
        return Ok(None);
    };
    let Some(bucket_us) = bucket_of(t, kpi.time.type_oid, kpi.bucket_us) else {
        return Ok(None);
    };
    let dims = kpi
        .dims
        .iter()
        .map(|d| row.get(d).map(|v| row.text(d, v)))
        .collect();
    values.clear();
    for (kind, expr) in &kpi.measures {
        let value = expr.as_ref().and_then(|e| row.get(e));
        values.push(match kind {
            Kind::CountStar => Contribution::Rows,
            Kind::Count => Contribution::Present(value.is_some()),
            Kind::Percentile if expr.is_none() => Contribution::None,
            Kind::Derived => Contribution::None,
            Kind::Percentile => {
                Contribution::Float(value.map(|d| f64::from_bits(d.value() as u64)))
            }
            Kind::CountDistinct => Contribution::Text(match (value, expr) {
                (Some(v), Some(e)) => Some(row.text(e, v)),
                _ => None,
            }),
            _ => match (value, expr) {
                (Some(v), Some(e)) => {
                    // SAFETY: a non-null value of a numeric-typed expression.
                    let fast = (e.type_oid == pg_sys::NUMERICOID)
                        .then(|| unsafe { numeric::to_decimal(v) })
                        .flatten();
                    Contribution::Number(Some(match fast {
                        Some(d) => d,
                        None => to_decimal(&row.text(e, v))?,
                    }))
                }
                _ => Contribution::Number(None),
            },
        });
    }
    Ok(Some((bucket_us, dims)))
}

/// Writes the deltas of subtransactions ≥ `min_subxact` as one row of `kpi.deltas`.
fn flush(min_subxact: u32) {
    let Some(batch) = ACC.with(|a| a.borrow_mut().take_batch(min_subxact)) else {
        return;
    };
    crate::deltas::buffer::append(&batch).or_raise();
    FLUSHED.with(|f| f.set(true));
}

fn register_hooks() {
    if HOOKS.with(|h| h.replace(true)) {
        return;
    }
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE if !ACC.with(|a| a.borrow().is_empty()) => {
            flush(0);
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE if FLUSHED.with(|f| f.replace(false)) => {
            crate::workers::wake::wake_fold_worker();
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            ACC.with(|a| a.borrow_mut().clear());
            FLUSHED.with(|f| f.set(false));
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        ACC.with(|a| a.borrow_mut().abort_subxact(my_subid));
    }
}

/// What this backend's transaction has captured for KPI `kpi` and not yet written to
/// `kpi.deltas` (that happens at pre-commit): reads add it, so a transaction sees its
/// own changes in its KPIs as it does in their tables.
pub fn own_pending(kpi: i32) -> Vec<(crate::deltas::Group, crate::deltas::Entry)> {
    ACC.with(|a| a.borrow().entries_of(kpi))
}

/// Writes everything captured so far into `kpi.deltas` now (used before a TRUNCATE
/// rebuild, which then strips those deltas along with the older ones).
pub fn flush_pending() {
    flush(0);
}

/// Flushes captured deltas immediately. Only for `#[pg_test]`s, whose transactions
/// never reach pre-commit.
#[cfg(any(test, feature = "pg_test"))]
#[pg_extern(schema = "kpi", name = "_flush_for_tests")]
fn flush_for_tests() {
    flush(0);
}
