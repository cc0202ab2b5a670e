//! The launcher: one background worker per cluster that starts a fold worker for every
//! database where pg_kpi is created, and starts it again whenever it goes away.
//!
//! Why a launcher (as pg_cron and TimescaleDB have): fold workers registered once at
//! server start cannot follow databases that are created, dropped or re-created while
//! the server runs, and a worker that exits is gone for good unless it exits with an
//! error. The launcher is the one supervisor instead:
//! - about once a second, and whenever something asks (a fold worker starting or
//!   stopping: it is their `bgw_notify_pid`; a `CREATE EXTENSION` committing), it reads
//!   `pg_database` and starts a worker for every database that has none;
//! - a worker says why it left (`health::Exit`): a database without the extension, or
//!   excluded by `pg_kpi.databases`, or `pg_kpi.fold_workers = off`, is left alone until
//!   that changes; any other exit (a signal, `pg_terminate_backend`, an error, a
//!   `DROP DATABASE … WITH (FORCE)`) is answered by a new worker at once, or a second
//!   after the last start if the worker died young, so a crash loop cannot spin.
//!
//! It connects to no database (shared catalogs only), so it never stands in the way of
//! `DROP DATABASE`. Its own exits are the postmaster's business: it is a static worker
//! restarted a second after any exit, and a new launcher finds running fold workers
//! through `health`, so it does not start a second one for a database.

use super::health::{self, Exit};
use super::wake;
use crate::gucs;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// How often the launcher looks at `pg_database` without being asked.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// A worker is started again at once if it ran at least this long, otherwise this long
/// after its last start (the postmaster's `bgw_restart_time` for static workers).
const RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// Registers the launcher (called from `_PG_init` at preload).
pub fn register() {
    BackgroundWorkerBuilder::new("pg_kpi launcher")
        .set_type("pg_kpi launcher")
        .set_library("pg_kpi")
        .set_function("pg_kpi_launcher_main")
        .enable_spi_access()
        // Folds write: on a standby, nothing to do until it is promoted.
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_INTERVAL))
        .load();
}

/// A fold worker this launcher started.
struct Started {
    handle: DynamicBackgroundWorker,
    at: Instant,
}

/// # Safety
/// Entry point called by the postmaster for the background worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_kpi_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    wake::publish_launcher_latch();
    log!("pg_kpi launcher started");

    let mut started: HashMap<u32, Started> = HashMap::new();
    let mut failed_registration = false;
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let databases = scan_databases();
        let oids: Vec<u32> = databases.iter().map(|(oid, _)| *oid).collect();
        started.retain(|oid, _| oids.contains(oid));
        health::forget_missing(&oids);
        wake::forget_missing(&oids);

        let mut next_wake = SCAN_INTERVAL;
        if gucs::FOLD_WORKERS.get() {
            for (oid, name) in &databases {
                match launch_if_needed(*oid, name, &mut started) {
                    Launch::Later(after) => next_wake = next_wake.min(after),
                    Launch::NoSlot if !failed_registration => {
                        failed_registration = true;
                        warning!(
                            "pg_kpi launcher: cannot start a fold worker for database \"{name}\": no background worker slot is free; it will keep trying"
                        );
                    }
                    Launch::Started => failed_registration = false,
                    _ => {}
                }
            }
        }
        if !BackgroundWorker::wait_latch(Some(next_wake)) {
            break;
        }
    }
    log!("pg_kpi launcher stopping");
    // A non-zero exit: if the postmaster goes on running, it starts a new launcher.
    unsafe { pg_sys::proc_exit(1) };
}

enum Launch {
    /// The database is served, or wants no worker.
    Nothing,
    Started,
    /// Its worker died young: start it again after this long.
    Later(Duration),
    /// No background worker slot was free (`max_worker_processes`).
    NoSlot,
}

/// Starts a fold worker for database `oid` unless it has one or wants none.
fn launch_if_needed(oid: u32, name: &str, started: &mut HashMap<u32, Started>) -> Launch {
    if !gucs::database_listed(name) {
        return Launch::Nothing;
    }
    if let Some(worker) = started.get(&oid) {
        match worker.handle.pid() {
            Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted) => return Launch::Nothing,
            Err(_) => {}
        }
    }
    if health::serving_pid(oid).is_some() {
        return Launch::Nothing;
    }
    if let Some(hold) = health::held_for(oid) {
        return Launch::Later(hold);
    }
    let exit = health::slot_of(oid).map(|s| s.exit).unwrap_or_default();
    match exit {
        Exit::NoExtension | Exit::Duplicate => return Launch::Nothing,
        // Turned back on or listed again since, or a DROP DATABASE that did not happen:
        // serve it.
        Exit::Disabled | Exit::NotListed | Exit::Asked => {}
        Exit::Unexpected => {
            if let Some(worker) = started.get(&oid) {
                let ran = worker.at.elapsed();
                if ran < RESTART_INTERVAL {
                    return Launch::Later(RESTART_INTERVAL - ran);
                }
                log!("pg_kpi launcher: the fold worker for database \"{name}\" is gone; starting it again");
            }
        }
    }
    let type_name = format!("pg_kpi fold {name}");
    let handle = BackgroundWorkerBuilder::new(&type_name)
        .set_type(&type_name)
        .set_library("pg_kpi")
        .set_function("pg_kpi_fold_worker_main")
        .set_argument(Some(pg_sys::Datum::from(oid)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // The launcher restarts it, after having heard why it left.
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    match handle {
        Ok(handle) => {
            started.insert(
                oid,
                Started {
                    handle,
                    at: Instant::now(),
                },
            );
            Launch::Started
        }
        Err(_) => Launch::NoSlot,
    }
}

/// The databases a fold worker could connect to: not templates (a connection to one
/// would make `CREATE DATABASE` from it fail), accepting connections, and not left
/// invalid by an interrupted `DROP DATABASE`. Read with a catalog scan, since the
/// launcher has no database to run SQL in.
fn scan_databases() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let db = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            // -2 is DATCONNLIMIT_INVALID_DB (a DROP DATABASE that did not finish).
            if !(*db).datallowconn || (*db).datistemplate || (*db).datconnlimit == -2 {
                continue;
            }
            let name = CStr::from_ptr((*db).datname.data.as_ptr())
                .to_string_lossy()
                .into_owned();
            out.push(((*db).oid.to_u32(), name));
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    out
}

/// Asks the launcher to serve this database once the calling transaction commits (called
/// by `CREATE EXTENSION`): a worker started before the commit would not see the
/// extension yet, and leave.
#[pg_extern(schema = "kpi", name = "_request_worker", volatile)]
fn request_worker() {
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        health::request(db);
        wake::wake_launcher();
    });
}
