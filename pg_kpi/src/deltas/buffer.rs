//! The delta buffer, `kpi.deltas`: writers append one batch per transaction, the KPI
//! views read every batch their query can see, and the fold drains it (with SQL).
//!
//! Both the append and the read go to the heap directly, without SPI. For the append,
//! the executor would add nothing but cost (the table has no index, trigger, constraint
//! or default) and, at pre-commit, the need for a snapshot. For the read, it is about
//! which snapshot: a state view merges the aggregate table (read by the view's query)
//! with these batches, and the two must come from the same snapshot or a fold that
//! commits in between is counted twice or not at all. SPI cannot promise that: pgrx
//! runs a query read-write, in a fresh snapshot, as soon as the transaction has an XID.
//! A scan in the active snapshot is exactly the calling query's.
//!
//! Being internal, neither is subject to the caller's privileges, which do not include
//! the delta buffer.

use super::{ByKpi, Entry, Group, Merged};
use crate::errors::KpiError;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::rc::Rc;

thread_local! {
    /// The visible entries, merged by KPI, while `read_once_during` holds them.
    static HELD: RefCell<Option<Rc<ByKpi>>> = const { RefCell::new(None) };

    /// The OIDs of `kpi.deltas` and of schema `kpi`, remembered between transactions
    /// (they change only when the extension is recreated, which `open` notices).
    static DELTAS: Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

/// Appends one batch (the encoded entries of one transaction).
pub fn append(batch: &[u8]) -> Result<(), KpiError> {
    unsafe {
        let rel = open(pg_sys::RowExclusiveLock)?;
        let mut values = [batch
            .into_datum()
            .ok_or_else(|| KpiError::internal("bytea"))?];
        let mut nulls = [false];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::simple_heap_insert(rel, tuple);
        pg_sys::heap_freetuple(tuple);
        // The lock is kept until the end of the transaction, as for any insert.
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
    }
    Ok(())
}

/// The visible entries of KPI `kpi`, merged per group: from the batches the running
/// query can see, or from those `read_once_during` read.
pub fn visible_entries_of(kpi: i32) -> Result<Vec<(Group, Entry)>, KpiError> {
    if let Some(held) = HELD.with(|h| h.borrow().clone()) {
        return Ok(held.get(&kpi).cloned().unwrap_or_default());
    }
    let mut merged = Merged::default();
    for batch in &visible_batches()? {
        let entries = super::decode(batch).map_err(KpiError::internal)?;
        merged.extend(entries.into_iter().filter(|(g, _)| g.kpi == kpi).collect());
    }
    Ok(merged.by_kpi().remove(&kpi).unwrap_or_default())
}

/// Runs `f` with the delta buffer read and decoded once, up front, for every read
/// inside it. An alert evaluation reads a dozen windows, each merging the pending
/// deltas; under write load the buffer's heap holds the dead batches of many folds
/// until vacuum, and scanning it for every window cost more than the rest of the
/// evaluation together. Only for work done in one snapshot that does not write to
/// the buffer, so that every read would have seen exactly these batches.
pub fn read_once_during<T>(f: impl FnOnce() -> Result<T, KpiError>) -> Result<T, KpiError> {
    let mut merged = Merged::default();
    for batch in &visible_batches()? {
        merged.extend(super::decode(batch).map_err(KpiError::internal)?);
    }
    let previous = HELD.with(|h| h.replace(Some(Rc::new(merged.by_kpi()))));
    /// Lets go of the entries however `f` ends (a raised error unwinds through here).
    struct Release(Option<Rc<ByKpi>>);
    impl Drop for Release {
        fn drop(&mut self) {
            HELD.with(|h| *h.borrow_mut() = self.0.take());
        }
    }
    let _release = Release(previous);
    f()
}

/// Every batch visible to the running query (the active snapshot).
fn visible_batches() -> Result<Vec<Vec<u8>>, KpiError> {
    let mut batches = Vec::new();
    unsafe {
        let rel = open(pg_sys::AccessShareLock)?;
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        let scan = pg_sys::table_beginscan(rel, snapshot, 0, std::ptr::null_mut());
        let desc = (*rel).rd_att;
        let batch_column = NonZeroUsize::MIN;
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            if let Some(datum) = pgrx::heap_getattr_raw(tuple, batch_column, desc) {
                // Copied (and detoasted) into Rust memory: the tuple is only valid until
                // the next heap_getnext.
                if let Some(bytes) = <Vec<u8> as FromDatum>::from_datum(datum, false) {
                    batches.push(bytes);
                }
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
    }
    Ok(batches)
}

/// Opens `kpi.deltas` with `lock`, looking its OID up only when the remembered one no
/// longer names it.
unsafe fn open(lock: u32) -> Result<pg_sys::Relation, KpiError> {
    let lock = lock as i32;
    unsafe {
        let (relid, namespace) = DELTAS.with(Cell::get);
        if relid != pg_sys::InvalidOid {
            let rel = pg_sys::try_table_open(relid, lock);
            if !rel.is_null() {
                let class = &*(*rel).rd_rel;
                let name = std::ffi::CStr::from_ptr(class.relname.data.as_ptr());
                if name == c"deltas" && class.relnamespace == namespace {
                    return Ok(rel);
                }
                pg_sys::table_close(rel, lock);
            }
        }
        let namespace = pg_sys::get_namespace_oid(c"kpi".as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"deltas".as_ptr(), namespace);
        if relid == pg_sys::InvalidOid {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "kpi.deltas does not exist",
                "The pg_kpi extension was dropped while KPI triggers still existed; recreate it or drop the triggers named pg_kpi_capture.",
            ));
        }
        DELTAS.with(|c| c.set((relid, namespace)));
        Ok(pg_sys::table_open(relid, lock))
    }
}
