//! Vacuuming the delta buffer from the fold worker.
//!
//! Every fold deletes what writers inserted, thousands of rows a second under load.
//! Until a VACUUM records the freed space in the free space map, writers keep extending
//! `kpi.deltas` and every fold scans all of its pages, so folds slow down as the table
//! grows (26 MB in 15 s at 15,000 commits/s, measured). Autovacuum visits a database at
//! most once per `autovacuum_naptime` (a minute by default), far too rarely, so the worker
//! vacuums the table itself, about once a second.

use pgrx::prelude::*;

/// No truncation: its ACCESS EXCLUSIVE lock would stall every committing writer (the
/// pages are reused at once anyway). SKIP_LOCKED: if autovacuum is on the table already,
/// that is as good.
const VACUUM: &std::ffi::CStr = c"VACUUM (SKIP_LOCKED, TRUNCATE false) kpi.deltas";

/// Runs the VACUUM. Must be called outside any transaction: VACUUM commits its own.
pub fn vacuum_deltas() {
    unsafe {
        // VACUUM keeps state across its own transactions in a child of PortalContext,
        // which only exists while a backend runs a query: give it one, as postgres.c does.
        let context = pg_sys::AllocSetContextCreateExtended(
            pg_sys::TopMemoryContext,
            c"pg_kpi vacuum".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        let saved_portal = pg_sys::PortalContext;
        pg_sys::PortalContext = context;
        // Not BackgroundWorker::transaction: it pushes a snapshot and pops it at the
        // end, but VACUUM pops it itself when it commits the outer transaction.
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        {
            // Parsed by Postgres rather than built by hand, so the statement's options
            // get the defaults of the running server version; in our context, because
            // VACUUM commits the transaction (and frees its memory) while it runs.
            let saved = pg_sys::MemoryContextSwitchTo(context);
            let parsed = pg_sys::pg_parse_query(VACUUM.as_ptr());
            pg_sys::MemoryContextSwitchTo(saved);
            let raw = pg_sys::list_nth(parsed, 0) as *mut pg_sys::RawStmt;
            let stmt = (*raw).stmt as *mut pg_sys::VacuumStmt;
            let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
            // Top level: VACUUM refuses to run inside a transaction block or a
            // function; a worker between folds is neither.
            pg_sys::ExecVacuum(pstate, stmt, true);
        }
        pg_sys::CommitTransactionCommand();
        pg_sys::PortalContext = saved_portal;
        pg_sys::MemoryContextDelete(context);
    }
}
