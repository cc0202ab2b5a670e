//! What each database's fold worker is doing, in shared memory: who serves it, how its
//! folds go, and why it last failed. `kpi.status()` reads it; the launcher uses it to
//! know which databases are served, and why a worker that is gone went away.
//!
//! One slot per database, under one LWLock: fold workers write a few fields per fold
//! (at most fifty times a second each), readers copy a slot out. Writers of deltas never
//! touch it, so it costs them nothing.
//!
//! Shared memory is made anew when the postmaster restarts after a crash, which is also
//! when every worker is gone: a slot can never outlive the process it names, except by a
//! normal exit, which clears it (`release`).

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

/// Databases that can be served at once (`wake` has as many slots).
pub const SLOTS: usize = 64;
const ERROR_LEN: usize = 512;
const FAILING_LEN: usize = 256;

/// Why a fold worker last left its database. The launcher restarts it unless the
/// reason says it is not wanted there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Exit {
    /// Still running, or gone without saying why (an error, a signal): restart it.
    #[default]
    Unexpected,
    /// The extension is not (or no longer) created in the database.
    NoExtension,
    /// `pg_kpi.fold_workers` is off.
    Disabled,
    /// `pg_kpi.databases` does not name the database.
    NotListed,
    /// Another worker already served the database.
    Duplicate,
    /// Asked to make way for `DROP DATABASE` or `ALTER DATABASE … RENAME` (see
    /// `make_way`); started again once `leave_until` has passed, if the database is
    /// still there.
    Asked,
}

/// One database's state. Plain data: copied out under the lock.
#[derive(Clone, Copy)]
pub struct Slot {
    pub dboid: u32,
    /// The serving worker's pid; 0 when none.
    pub pid: i32,
    pub exit: Exit,
    /// Requests for a worker (`request`) so far: a worker that found no extension leaves
    /// for good only if none came since it looked.
    requested: u32,
    /// Until when no worker may serve the database (µs, as `last_fold_start`); 0: none.
    pub leave_until: i64,
    /// Start of the last successful fold (µs since 2000-01-01, Postgres's timestamptz).
    pub last_fold_start: i64,
    /// Start of the last successful fold in which no KPI failed; 0: none yet. A KPI
    /// that fails keeps its deltas, so only this bounds the age of those.
    pub last_clean_fold_start: i64,
    pub last_fold_end: i64,
    pub last_fold_us: i64,
    pub folds: i64,
    /// When `error` was recorded; 0 when there is none.
    pub error_at: i64,
    error_len: u16,
    error: [u8; ERROR_LEN],
    failing_len: u16,
    failing: [u8; FAILING_LEN],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            dboid: 0,
            pid: 0,
            exit: Exit::Unexpected,
            requested: 0,
            leave_until: 0,
            last_fold_start: 0,
            last_clean_fold_start: 0,
            last_fold_end: 0,
            last_fold_us: 0,
            folds: 0,
            error_at: 0,
            error_len: 0,
            error: [0; ERROR_LEN],
            failing_len: 0,
            failing: [0; FAILING_LEN],
        }
    }
}

impl Slot {
    /// The last fold error (kept after later folds succeed: compare its time with the
    /// last fold's).
    pub fn error(&self) -> Option<String> {
        (self.error_at != 0)
            .then(|| String::from_utf8_lossy(&self.error[..self.error_len as usize]).into_owned())
    }

    /// The KPIs whose merge failed in the last fold.
    pub fn failing(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.failing[..self.failing_len as usize]);
        text.split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

pub struct Health {
    slots: [Slot; SLOTS],
}

impl Default for Health {
    fn default() -> Self {
        Health {
            slots: [Slot::default(); SLOTS],
        }
    }
}

unsafe impl PGRXSharedMemory for Health {}

static HEALTH: PgLwLock<Health> = unsafe { PgLwLock::new(c"pg_kpi_health") };
static mut SHMEM_READY: bool = false;

/// Reserves the shared table; only possible while preloading.
pub fn init_shmem() {
    pg_shmem_init!(HEALTH);
    unsafe { SHMEM_READY = true };
}

fn ready() -> bool {
    // SAFETY: written once in _PG_init, before any backend starts.
    unsafe { SHMEM_READY }
}

fn my_db() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Whether `pid` is a live backend (a slot's pid is cleared on exit, so this only guards
/// against a slot left by a process that could not clear it).
fn alive(pid: i32) -> bool {
    pid != 0 && !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

/// Claims this database for the calling fold worker. False when a live worker serves it
/// already, or every slot is taken.
pub fn claim() -> bool {
    if !ready() {
        return false;
    }
    let db = my_db();
    let me = unsafe { pg_sys::MyProcPid };
    let mut health = HEALTH.exclusive();
    let index = health
        .slots
        .iter()
        .position(|s| s.dboid == db)
        .or_else(|| health.slots.iter().position(|s| s.dboid == 0))
        .or_else(|| health.slots.iter().position(|s| !alive(s.pid)));
    let Some(i) = index else { return false };
    let slot = &mut health.slots[i];
    if slot.dboid == db && slot.pid != me && alive(slot.pid) {
        return false;
    }
    if slot.dboid != db {
        *slot = Slot {
            dboid: db,
            ..Slot::default()
        };
    }
    slot.pid = me;
    slot.exit = Exit::Unexpected;
    REQUESTED.with(|r| r.set(slot.requested));
    true
}

/// Says why the calling worker is about to leave; `release` publishes it.
pub fn set_exit(exit: Exit) {
    EXIT.with(|e| e.set(exit));
}

thread_local! {
    static EXIT: std::cell::Cell<Exit> = const { std::cell::Cell::new(Exit::Unexpected) };
    /// The slot's `requested` when this worker claimed it.
    static REQUESTED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Frees the calling worker's slot (registered to run at process exit, whatever ends it).
pub fn release() {
    if !ready() {
        return;
    }
    let me = unsafe { pg_sys::MyProcPid };
    let mut exit = EXIT.with(|e| e.get());
    let seen = REQUESTED.with(|r| r.get());
    let mut health = HEALTH.exclusive();
    if let Some(slot) = health.slots.iter_mut().find(|s| s.pid == me) {
        if exit == Exit::NoExtension && slot.requested != seen {
            // CREATE EXTENSION committed after this worker looked: come back.
            exit = Exit::Unexpected;
        }
        slot.pid = 0;
        slot.exit = exit;
    }
}

/// Runs `f` on this database's slot, if it has one.
fn update(f: impl FnOnce(&mut Slot)) {
    if !ready() {
        return;
    }
    let db = my_db();
    let mut health = HEALTH.exclusive();
    let index = health
        .slots
        .iter()
        .position(|s| s.dboid == db)
        .or_else(|| health.slots.iter().position(|s| s.dboid == 0));
    if let Some(i) = index {
        let slot = &mut health.slots[i];
        slot.dboid = db;
        f(slot);
    }
}

fn copy_text(dst: &mut [u8], len: &mut u16, text: &str) {
    // Cut at a character boundary, so the copy stays valid UTF-8.
    let mut end = text.len().min(dst.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    dst[..end].copy_from_slice(&text.as_bytes()[..end]);
    *len = end as u16;
}

/// Records a successful fold of this database (by its worker or by `kpi.fold()`), and
/// the KPIs that failed in it.
pub fn record_fold(start: i64, end: i64, failing: &[String]) {
    update(|slot| {
        slot.last_fold_start = start;
        if failing.is_empty() {
            slot.last_clean_fold_start = start;
        }
        slot.last_fold_end = end;
        slot.last_fold_us = end - start;
        slot.folds += 1;
        let joined = failing.join("\n");
        copy_text(&mut slot.failing, &mut slot.failing_len, &joined);
    });
}

/// Records why a fold (or one KPI's part of it) failed.
pub fn record_error(message: &str) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    update(|slot| {
        copy_text(&mut slot.error, &mut slot.error_len, message);
        slot.error_at = now;
    });
}

/// A copy of database `dboid`'s slot.
pub fn slot_of(dboid: u32) -> Option<Slot> {
    if !ready() {
        return None;
    }
    let health = HEALTH.share();
    health.slots.iter().find(|s| s.dboid == dboid).copied()
}

/// This database's slot.
pub fn mine() -> Option<Slot> {
    slot_of(my_db())
}

/// Whether a live fold worker serves `dboid`, and its pid.
pub fn serving_pid(dboid: u32) -> Option<i32> {
    slot_of(dboid).map(|s| s.pid).filter(|&pid| alive(pid))
}

/// Asks for a worker for `dboid` (a committed CREATE EXTENSION): clears the reason its
/// last worker left, so the launcher starts one.
pub fn request(dboid: u32) {
    if !ready() {
        return;
    }
    let mut health = HEALTH.exclusive();
    if let Some(slot) = health.slots.iter_mut().find(|s| s.dboid == dboid) {
        slot.exit = Exit::Unexpected;
        slot.requested = slot.requested.wrapping_add(1);
    }
}

/// Frees the slots of databases that no longer exist (the launcher's scan saw them go).
pub fn forget_missing(existing: &[u32]) {
    if !ready() {
        return;
    }
    let mut health = HEALTH.exclusive();
    for slot in health.slots.iter_mut() {
        if slot.dboid != 0 && !existing.contains(&slot.dboid) && !alive(slot.pid) {
            *slot = Slot::default();
        }
    }
}

/// Asks the worker of `dboid` to leave, and the launcher to start none, for `hold_us`.
pub fn ask_to_leave(dboid: u32, hold_us: i64) {
    if !ready() {
        return;
    }
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let mut health = HEALTH.exclusive();
    if let Some(slot) = health.slots.iter_mut().find(|s| s.dboid == dboid) {
        slot.leave_until = now + hold_us;
    }
}

/// Whether the calling worker has been asked to leave (see `ask_to_leave`).
pub fn asked_to_leave() -> bool {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    mine().is_some_and(|s| s.leave_until > now)
}

/// How long database `dboid` must still go without a worker (`ask_to_leave`).
pub fn held_for(dboid: u32) -> Option<std::time::Duration> {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let until = slot_of(dboid)?.leave_until;
    (until > now).then(|| std::time::Duration::from_micros((until - now) as u64))
}
