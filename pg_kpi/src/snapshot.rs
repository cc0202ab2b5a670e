//! Reading what is committed now, after waiting on the fold lock.
//!
//! Reads run read-only in the calling statement's snapshot (see `prepared`). That
//! snapshot was taken when `SELECT kpi.fold()` or `kpi.evaluate_alerts()` began, before
//! it waited for the fold lock, so it misses what the transaction it waited for
//! committed. An alert evaluation in it would see the old value and the old state, and
//! write that old state back over the newer one: a resolved alert firing again.
//! Work done under the lock therefore reads in a snapshot taken after the lock.

use pgrx::pg_sys;

/// Runs `f` with a snapshot taken now as the active one. Under READ COMMITTED that is
/// a new snapshot (it sees this transaction's own earlier commands and every commit so
/// far); under REPEATABLE READ and SERIALIZABLE, the transaction's one snapshot.
pub fn fresh<T>(f: impl FnOnce() -> T) -> T {
    /// Pops the snapshot when `f` returns. When `f` raises, the (sub)transaction's
    /// abort pops every snapshot pushed at its level, this one included, so the guard
    /// must not pop a second one.
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: pushed below in this backend, and `f` pops what it pushes.
                unsafe { pg_sys::PopActiveSnapshot() }
            }
        }
    }
    // SAFETY: called inside a transaction (every caller runs in one); the snapshot is
    // registered on the active stack, which owns it until popped.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let _pop = Pop;
    f()
}
