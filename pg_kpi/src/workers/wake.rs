//! Waking the fold worker at commit, and the launcher when a database wants a worker,
//! through shared memory.
//!
//! Each fold worker publishes its latch in a small shared table keyed by database OID.
//! A committing writer sets that latch: the worker folds within a few milliseconds when
//! the system is quiet, and its minimum interval batches deltas when it is busy.
//! A stale pointer (the worker died and its PGPROC was reused) only causes a spurious
//! wake-up, which latch users must tolerate anyway.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const SLOTS: usize = super::health::SLOTS;

pub struct WakeTable {
    dboid: [AtomicU32; SLOTS],
    latch: [AtomicUsize; SLOTS],
    /// The launcher's latch (see `launcher`).
    launcher: AtomicUsize,
}

impl Default for WakeTable {
    fn default() -> Self {
        WakeTable {
            dboid: std::array::from_fn(|_| AtomicU32::new(0)),
            latch: std::array::from_fn(|_| AtomicUsize::new(0)),
            launcher: AtomicUsize::new(0),
        }
    }
}

unsafe impl PGRXSharedMemory for WakeTable {}

static WAKE: PgAtomic<WakeTable> = unsafe { PgAtomic::new(c"pg_kpi_wake") };
static mut SHMEM_READY: bool = false;

/// Reserves the shared table; only possible while preloading.
pub fn init_shmem() {
    pg_shmem_init!(WAKE);
    unsafe { SHMEM_READY = true };
}

fn table() -> Option<&'static WakeTable> {
    // SAFETY: written once in _PG_init, before any backend starts.
    if unsafe { SHMEM_READY } {
        Some(WAKE.get())
    } else {
        None
    }
}

/// Called by a fold worker once connected: publishes its latch for its database.
pub fn publish_worker_latch() {
    let Some(t) = table() else { return };
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let latch = unsafe { pg_sys::MyLatch } as usize;
    for i in 0..SLOTS {
        let cur = t.dboid[i].load(Ordering::Acquire);
        if cur == db
            || (cur == 0
                && t.dboid[i]
                    .compare_exchange(0, db, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
        {
            t.latch[i].store(latch, Ordering::Release);
            return;
        }
    }
}

/// Sets the latch of this database's fold worker, if there is one.
pub fn wake_fold_worker() {
    wake_fold_worker_of(unsafe { pg_sys::MyDatabaseId }.to_u32());
}

/// Sets the latch of database `db`'s fold worker, if there is one.
pub fn wake_fold_worker_of(db: u32) {
    let Some(t) = table() else { return };
    for i in 0..SLOTS {
        if t.dboid[i].load(Ordering::Acquire) == db {
            let latch = t.latch[i].load(Ordering::Acquire);
            if latch != 0 {
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
            return;
        }
    }
}

/// Whether this server runs fold workers (pg_kpi was preloaded).
pub fn workers_enabled() -> bool {
    table().is_some()
}

/// Called by the launcher once started: publishes its latch.
pub fn publish_launcher_latch() {
    let Some(t) = table() else { return };
    t.launcher
        .store(unsafe { pg_sys::MyLatch } as usize, Ordering::Release);
}

/// Sets the launcher's latch, so it looks for databases to serve now.
pub fn wake_launcher() {
    let Some(t) = table() else { return };
    let latch = t.launcher.load(Ordering::Acquire);
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Frees the slots of databases that no longer exist. A writer that read a freed slot's
/// latch a moment before only causes a spurious wake-up.
pub fn forget_missing(existing: &[u32]) {
    let Some(t) = table() else { return };
    for i in 0..SLOTS {
        let db = t.dboid[i].load(Ordering::Acquire);
        if db != 0 && !existing.contains(&db) {
            t.latch[i].store(0, Ordering::Release);
            t.dboid[i].store(0, Ordering::Release);
        }
    }
}
