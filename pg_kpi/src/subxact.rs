//! Running a piece of a transaction so that its failure does not fail the rest: a
//! subtransaction, as PL/pgSQL's `BEGIN … EXCEPTION` makes one.
//!
//! The fold merges each KPI in one, so that one KPI whose merge fails (an overflow in
//! its aggregate table, a constraint someone added) is rolled back alone while the other
//! KPIs fold and notify.

use crate::errors::KpiResult;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// Runs `f` in a subtransaction: committed into the calling transaction if `f`
/// succeeds, rolled back if it returns an error or raises one, whose message is then
/// returned.
pub fn isolated<T>(f: impl FnOnce() -> KpiResult<T>) -> Result<T, String> {
    // SAFETY: plain reads of the backend's globals, restored below as PL/pgSQL does.
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        // Work in the caller's memory context: what `f` returns must outlive the
        // subtransaction.
        pg_sys::MemoryContextSwitchTo(context);
    }
    let result = PgTryBuilder::new(AssertUnwindSafe(|| {
        f().map_err(|e| match e.detail {
            Some(detail) => format!("{} ({detail})", e.message),
            None => e.message,
        })
    }))
    .catch_others(|e| Err(crate::workers::caught_message(&e)))
    .execute();
    unsafe {
        match result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    result
}
