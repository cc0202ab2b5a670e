//! The background workers and what they share.
//!
//! - [`launcher`]: one per cluster; starts a fold worker for every database where
//!   pg_kpi is created, and starts it again whenever it goes away.
//! - [`fold_worker`]: one per database; folds on commit wake-ups and on a timer.
//! - [`wake`]: how committing writers wake their database's fold worker, and
//!   `CREATE EXTENSION` the launcher.
//! - [`health`]: what each database's worker is doing, for `kpi.status()` and the
//!   launcher.
//! - [`vacuum`]: how the fold worker keeps the delta buffer small.
//! - [`make_way`]: workers step aside for `DROP DATABASE` and `ALTER DATABASE … RENAME`.

pub mod fold_worker;
pub mod health;
pub mod launcher;
mod make_way;
pub mod vacuum;
pub mod wake;

pub use fold_worker::caught_message;

use crate::gucs;
use pgrx::prelude::*;

/// Reserves shared memory and registers the launcher (from `_PG_init`, at preload).
pub fn init_at_preload() {
    wake::init_shmem();
    health::init_shmem();
    launcher::register();
    make_way::install();
}

/// Whether this server runs fold workers (pg_kpi was preloaded).
pub fn preloaded() -> bool {
    wake::workers_enabled()
}

/// Why this database has no fold worker, or `None` when it gets one.
pub fn no_worker_reason() -> Option<&'static str> {
    if !preloaded() {
        Some("not_preloaded")
    } else if !gucs::FOLD_WORKERS.get() {
        Some("disabled")
    } else if !gucs::database_listed(&current_database()) {
        Some("not_listed")
    } else {
        None
    }
}

pub fn current_database() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Whether this database gets a fold worker (`CREATE EXTENSION` warns when not).
#[pg_extern(schema = "kpi", name = "_worker_configured", stable)]
fn worker_configured() -> bool {
    no_worker_reason().is_none()
}
