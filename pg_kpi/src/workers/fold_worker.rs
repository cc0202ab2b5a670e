//! The fold background worker: one per database where pg_kpi is created, started (and
//! started again) by the `launcher`.
//!
//! It sleeps on its latch, is woken by committing writers (see `wake`), folds, and then
//! waits at least `pg_kpi.fold_min_interval_ms` before folding again, so a quiet system
//! gets millisecond freshness and a busy one gets batching. Every
//! `pg_kpi.fold_idle_interval_ms` it folds anyway (retention, missed wake-ups).
//! About once a second while folds drain rows, it vacuums the delta buffer (`vacuum`).
//!
//! A fold that fails (a lock timeout behind DDL, any error) is rolled back, recorded in
//! `health` for `kpi.status()`, logged, and retried with backoff in the same process;
//! one KPI whose merge fails does not stop the others (see `fold`). The worker leaves
//! only when it is not wanted (no extension, `pg_kpi.fold_workers = off`, a database
//! `pg_kpi.databases` does not name), saying why, or on a signal, after which the
//! launcher starts a new one.

use super::health::{self, Exit};
use crate::gucs;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::time::Duration;

/// Writers committing delta rows faster than this (per second, measured over the last
/// fold period) are busy, and the next fold waits at least
/// `pg_kpi.fold_busy_interval_ms`.
const BUSY_ROWS_PER_SEC: f64 = 3_200.0;

/// How often the worker vacuums `kpi.deltas` while folds drain rows (see `vacuum`).
const VACUUM_INTERVAL: Duration = Duration::from_secs(1);

/// Retries of a failed fold wait this long, doubling up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// # Safety
/// Entry point called by the postmaster for the background worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_kpi_fold_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    // By OID, not name: a database dropped and re-created under the same name is a new
    // database, with a worker of its own.
    unsafe { pg_sys::BackgroundWorkerInitializeConnectionByOid(dboid, pg_sys::InvalidOid, 0) };
    // A catalog lookup: it needs a transaction.
    let db = BackgroundWorker::transaction(super::current_database);
    if !health::claim() {
        // Another worker serves it (one started by an earlier launcher).
        health::set_exit(Exit::Duplicate);
        unsafe { pg_sys::proc_exit(0) };
    }
    unsafe { pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(0)) };
    super::wake::publish_worker_latch();
    // The fold's queries are small but their row estimates are not (jsonb functions):
    // left on, JIT compiles them on every fold and costs more than the fold itself.
    BackgroundWorker::transaction(|| {
        let _ = Spi::run("SET jit = off");
    });
    set_lock_timeout();
    if !BackgroundWorker::transaction(installed) {
        leave(Exit::NoExtension);
    }
    log!("pg_kpi fold worker started for database \"{db}\"");

    let mut last_fold = std::time::Instant::now() - Duration::from_secs(3600);
    let mut busy = false;
    let mut last_vacuum = std::time::Instant::now();
    let mut drained_since_vacuum = 0i64;
    let mut failures = 0u32;
    loop {
        let idle = Duration::from_millis(gucs::FOLD_IDLE_INTERVAL_MS.get().max(1) as u64);
        let wait = if failures > 0 {
            backoff(failures)
        } else {
            // Rules held back by pg_kpi.alert_interval_ms are due before the idle fold.
            // So are overdue KPIs' next deadlines (`state::overdue`).
            let due = match (
                crate::alerts::waiting_due_in(),
                crate::state::overdue::due_in(),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            due.map_or(idle, |due| due.clamp(Duration::from_millis(1), idle))
        };
        if !BackgroundWorker::wait_latch(Some(wait)) {
            break;
        }
        if health::asked_to_leave() {
            log!("pg_kpi fold worker for database \"{db}\" stopping to make way for DROP DATABASE or ALTER DATABASE");
            leave(Exit::Asked);
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            if !gucs::FOLD_WORKERS.get() {
                log!(
                    "pg_kpi fold worker for database \"{db}\" stopping: pg_kpi.fold_workers is off"
                );
                leave(Exit::Disabled);
            }
            if !gucs::database_listed(&db) {
                log!("pg_kpi fold worker for database \"{db}\" stopping: pg_kpi.databases does not name it");
                leave(Exit::NotListed);
            }
            set_lock_timeout();
        }
        // Rate limit: batch whatever arrives during the minimum interval, and wait
        // longer after a busy fold so that per-fold costs do not grow with the load.
        let base = Duration::from_millis(gucs::FOLD_MIN_INTERVAL_MS.get().max(1) as u64);
        let min = if busy {
            let busy_ms = gucs::FOLD_BUSY_INTERVAL_MS.get().max(1) as u64;
            base.max(Duration::from_millis(busy_ms))
        } else {
            base
        };
        let since = last_fold.elapsed();
        if since < min {
            // A plain sleep: writers setting the latch meanwhile must not cut it short.
            std::thread::sleep(min - since);
            if BackgroundWorker::sigterm_received() {
                break;
            }
        }
        let period = last_fold.elapsed();
        last_fold = std::time::Instant::now();
        let drained = match fold_once() {
            Ok(Some(rows)) => {
                if failures > 0 {
                    log!("pg_kpi fold worker for database \"{db}\": folding again after {failures} failed attempts");
                }
                failures = 0;
                rows
            }
            Ok(None) => {
                log!(
                    "pg_kpi fold worker for database \"{db}\" stopping: the extension was dropped"
                );
                leave(Exit::NoExtension);
            }
            Err(message) => {
                failures += 1;
                health::record_error(&message);
                // Every failure while they are few, then one line in ten: a fold that
                // fails for minutes must not flood the log.
                if failures <= 3 || failures.is_multiple_of(10) {
                    warning!(
                        "pg_kpi fold worker for database \"{db}\": fold failed ({failures} in a row), retrying in {} ms: {message}",
                        backoff(failures).as_millis()
                    );
                }
                continue;
            }
        };
        busy = is_busy(drained, period);
        drained_since_vacuum += drained;
        if drained_since_vacuum > 0 && last_vacuum.elapsed() >= VACUUM_INTERVAL {
            crate::workers::vacuum::vacuum_deltas();
            last_vacuum = std::time::Instant::now();
            drained_since_vacuum = 0;
        }
    }
    // A signal (pg_terminate_backend, DROP DATABASE … WITH (FORCE), server shutdown):
    // the launcher starts a new worker unless the server is shutting down.
    log!("pg_kpi fold worker for database \"{db}\" stopping on a signal");
    unsafe { pg_sys::proc_exit(1) };
}

/// Leaves for good (until the launcher is told otherwise), saying why.
fn leave(exit: Exit) -> ! {
    health::set_exit(exit);
    unsafe { pg_sys::proc_exit(0) }
}

#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, _arg: pg_sys::Datum) {
    health::release();
}

/// One fold in its own transaction. `Ok(None)`: the extension is gone. An error rolls
/// the transaction back and is returned as its message.
fn fold_once() -> Result<Option<i64>, String> {
    PgTryBuilder::new(|| {
        Ok(BackgroundWorker::transaction(|| {
            if !installed() {
                return None;
            }
            match crate::fold::fold() {
                Ok(rows) => Some(rows),
                Err(e) => e.raise(),
            }
        }))
    })
    .catch_others(|e| {
        // The error left the transaction open and failed: end it, as the main loop of
        // a backend does after an ERROR.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(caught_message(&e))
    })
    .execute()
}

/// The message of an error caught by `PgTryBuilder`.
pub fn caught_message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (MIN_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Applies `pg_kpi.fold_lock_timeout_ms` to the worker's session.
fn set_lock_timeout() {
    let ms = gucs::FOLD_LOCK_TIMEOUT_MS.get().max(0);
    BackgroundWorker::transaction(|| {
        let _ = Spi::run(&format!("SET lock_timeout = {ms}"));
    });
}

/// Whether writers are busy: judged by the rate of delta rows, not by the rows of one
/// fold, because the rows of one fold grow with the interval. (Judged by rows per fold,
/// 2,000 rows/s made 40-row folds every 20 ms or, once a backlog had tipped it over,
/// 100-row folds every 50 ms for good, whichever came first.)
fn is_busy(drained: i64, period: Duration) -> bool {
    drained as f64 >= BUSY_ROWS_PER_SEC * period.as_secs_f64()
}

/// Whether pg_kpi is installed in this database (a catalog lookup, no SQL).
fn installed() -> bool {
    unsafe { pg_sys::get_extension_oid(c"pg_kpi".as_ptr(), true) != pg_sys::InvalidOid }
}

#[cfg(test)]
mod pacing {
    use super::{backoff, is_busy};
    use std::time::Duration;

    #[test]
    fn busy_is_a_rate_whatever_the_fold_interval() {
        let ms = Duration::from_millis;
        // 2,000 rows/s is not busy, judged at 20 ms or at 50 ms…
        assert!(!is_busy(40, ms(20)));
        assert!(!is_busy(100, ms(50)));
        // …nor is one backlog after a long idle spell.
        assert!(!is_busy(1_500, ms(1_000)));
        // 20,000 rows/s is busy at either interval.
        assert!(is_busy(400, ms(20)));
        assert!(is_busy(1_000, ms(50)));
    }

    #[test]
    fn retries_back_off_to_a_cap() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(1), ms(100));
        assert_eq!(backoff(2), ms(200));
        assert_eq!(backoff(5), ms(1_600));
        assert_eq!(backoff(9), ms(10_000));
        assert_eq!(backoff(u32::MAX), ms(10_000));
    }
}
