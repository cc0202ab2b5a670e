//! Making way for `DROP DATABASE` and `ALTER DATABASE … RENAME`.
//!
//! Both refuse to run while anyone else is connected to the database ("database is
//! being accessed by other users"), and a fold worker always is. `DROP DATABASE … WITH
//! (FORCE)` terminates it, but a plain `DROP DATABASE` or `dropdb` is what people type.
//! So a utility hook sees these statements first and, for the database's owner, asks
//! the worker to leave and the launcher to start none for a few seconds (`HOLD`):
//! Postgres itself waits up to 5 s for other sessions to go. If the statement fails
//! anyway (someone else was connected), the launcher serves the database again once
//! the hold is over.

use super::{health, wake};
use pgrx::prelude::*;
use std::ffi::CStr;

/// Longer than the 5 s Postgres waits for other sessions to leave a database.
const HOLD_US: i64 = 6_000_000;

static mut PREV_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook (from `_PG_init`, at preload).
pub fn install() {
    // SAFETY: _PG_init runs once per process, before any statement.
    unsafe {
        PREV_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The hook itself is not `#[pg_guard]`ed, and calls the next hook (or
/// `standard_ProcessUtility`) directly rather than through pgrx's FFI guard: a guard
/// would catch every error raised by every utility statement and raise it again as a
/// new one, without its CONTEXT (COPY's "line 3, column total") and with a Rust
/// backtrace as DETAIL. Postgres's error may longjmp straight through this frame, which
/// holds nothing to drop; only the Rust work before it runs under a guard.
#[allow(clippy::too_many_arguments)] // Postgres's hook signature.
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        before_utility(pstmt);
        let next = PREV_HOOK.unwrap_or(unguarded::standard_ProcessUtility);
        next(pstmt, query, read_only_tree, context, params, env, dest, qc)
    }
}

/// pg_kpi's own work before a utility statement, under pgrx's guard (a panic becomes
/// an ERROR).
#[pg_guard]
unsafe extern "C-unwind" fn before_utility(pstmt: *mut pg_sys::PlannedStmt) {
    unsafe {
        if let Some(name) = database_needing_no_sessions((*pstmt).utilityStmt) {
            make_way(&name);
        }
    }
}

/// Postgres's own `standard_ProcessUtility`, declared here so that calling it is a
/// plain call (pgrx's binding of it runs inside its error-catching guard).
mod unguarded {
    use pgrx::pg_sys;
    unsafe extern "C-unwind" {
        pub fn standard_ProcessUtility(
            pstmt: *mut pg_sys::PlannedStmt,
            query: *const std::ffi::c_char,
            read_only_tree: bool,
            context: pg_sys::ProcessUtilityContext::Type,
            params: pg_sys::ParamListInfo,
            env: *mut pg_sys::QueryEnvironment,
            dest: *mut pg_sys::DestReceiver,
            qc: *mut pg_sys::QueryCompletion,
        );
    }
}

/// The database a statement drops or renames, if it is one of those.
unsafe fn database_needing_no_sessions(stmt: *mut pg_sys::Node) -> Option<String> {
    unsafe {
        if stmt.is_null() {
            return None;
        }
        let name = match (*stmt).type_ {
            pg_sys::NodeTag::T_DropdbStmt => (*(stmt as *mut pg_sys::DropdbStmt)).dbname,
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = stmt as *mut pg_sys::RenameStmt;
                if (*rename).renameType != pg_sys::ObjectType::OBJECT_DATABASE {
                    return None;
                }
                (*rename).subname
            }
            _ => return None,
        };
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// Asks the fold worker of database `name` to leave, if the caller owns the database
/// (anyone else's statement fails on privileges anyway, and must not stop the worker).
fn make_way(name: &str) {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return;
    };
    unsafe {
        let oid = pg_sys::get_database_oid(cname.as_ptr(), true);
        if oid == pg_sys::InvalidOid || !pg_sys::pg_database_ownercheck(oid, pg_sys::GetUserId()) {
            return;
        }
        health::ask_to_leave(oid.to_u32(), HOLD_US);
        wake::wake_fold_worker_of(oid.to_u32());
    }
}
