//! The fold background worker: one per database listed in `pg_kpi.databases`.
//!
//! It sleeps on its latch, is woken by committing writers (see `wake`), folds, and then
//! waits at least `pg_kpi.fold_min_interval_ms` before folding again, so a quiet system
//! gets millisecond freshness and a busy one gets batching. Every
//! `pg_kpi.fold_idle_interval_ms` it folds anyway (retention, missed wake-ups).
//! About once a second while folds drain rows, it vacuums the delta buffer (`vacuum`).
//! A failed fold is logged; the worker exits and the postmaster restarts it.

use crate::gucs;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::time::Duration;

/// Writers committing delta rows faster than this (per second, measured over the last
/// fold period) are busy, and the next fold waits at least
/// `pg_kpi.fold_busy_interval_ms`.
const BUSY_ROWS_PER_SEC: f64 = 3_200.0;

/// How often the worker vacuums `kpi.deltas` while folds drain rows (see `vacuum`).
const VACUUM_INTERVAL: Duration = Duration::from_secs(1);

/// Registers one worker per configured database (called from `_PG_init` at preload).
pub fn register() {
    for db in gucs::databases() {
        let name = format!("pg_kpi fold {db}");
        BackgroundWorkerBuilder::new(&name)
            .set_type(&name)
            .set_library("pg_kpi")
            .set_function("pg_kpi_fold_worker_main")
            .set_extra(&db)
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
}

/// # Safety
/// Entry point called by the postmaster for the background worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_kpi_fold_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    crate::wake::publish_worker_latch();
    // The fold's queries are small but their row estimates are not (jsonb functions):
    // left on, JIT compiles them on every fold and costs more than the fold itself.
    BackgroundWorker::transaction(|| {
        let _ = Spi::run("SET jit = off");
    });
    log!("pg_kpi fold worker started for database \"{db}\"");

    let mut last_fold = std::time::Instant::now() - Duration::from_secs(3600);
    let mut busy = false;
    let mut last_vacuum = std::time::Instant::now();
    let mut drained_since_vacuum = 0i64;
    loop {
        let idle = Duration::from_millis(gucs::FOLD_IDLE_INTERVAL_MS.get().max(1) as u64);
        if !BackgroundWorker::wait_latch(Some(idle)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
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
        // An error aborts the transaction and ends the process; the postmaster restarts
        // the worker a second later and the deltas are still there to fold.
        let drained = BackgroundWorker::transaction(|| {
            if !installed() {
                return 0;
            }
            match crate::fold::fold() {
                Ok(rows) => rows,
                Err(e) => e.raise(),
            }
        });
        busy = is_busy(drained, period);
        drained_since_vacuum += drained;
        if drained_since_vacuum > 0 && last_vacuum.elapsed() >= VACUUM_INTERVAL {
            crate::vacuum::vacuum_deltas();
            last_vacuum = std::time::Instant::now();
            drained_since_vacuum = 0;
        }
    }
    log!("pg_kpi fold worker for database \"{db}\" stopping");
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
    use super::is_busy;
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
}
