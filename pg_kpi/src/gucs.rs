//! Every configuration setting of the extension, in one place.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Databases that may get a fold worker (comma-separated); empty means every database
/// where the extension is created. Reloadable.
pub static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Whether fold workers run at all. Off stops them (and the launcher starts none) until
/// it is turned on again: for maintenance, or to test what happens without them.
pub static FOLD_WORKERS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `lock_timeout` of the fold worker's transactions. A fold waits for the locks it needs
/// behind long DDL on a source table; with a timeout it reports the wait in
/// `kpi.status()` and retries, instead of stalling silently.
pub static FOLD_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5_000);

/// Minimum time between two folds of one database: batches deltas when writes are busy.
pub static FOLD_MIN_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(20);

/// Minimum time between two folds while writers are busy (see `worker`): fewer, larger
/// folds under load, so that folding does not compete with the writers.
pub static FOLD_BUSY_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(50);

/// Minimum time between two evaluations of the alert rules of the KPIs folds merged:
/// under load a fold runs every few tens of milliseconds, and evaluating every rule on
/// each would take CPU from the writers. Changes merged meanwhile are evaluated by the
/// next fold after the interval.
pub static ALERT_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(100);

/// How often the fold worker wakes without writes (retention, missed wake-ups).
pub static FOLD_IDLE_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Flush the capture accumulator mid-statement once it holds this many groups, so a
/// huge COPY spreading over many buckets keeps bounded memory.
pub static MAX_PENDING_GROUPS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// How often `kpi.rebuild`/`kpi.alter` report their progress (a NOTICE) while they scan.
pub static REBUILD_PROGRESS_MS: GucSetting<i32> = GucSetting::<i32>::new(2_000);

pub fn init(preloading: bool) {
    if preloading {
        GucRegistry::define_string_guc(
            c"pg_kpi.databases",
            c"Databases that may get a pg_kpi fold worker (comma-separated; empty: all).",
            c"Every database where pg_kpi is created gets one background worker that folds deltas into the aggregates; a non-empty list restricts this to the databases it names.",
            &DATABASES,
            GucContext::Sighup,
            GucFlags::default(),
        );
        GucRegistry::define_bool_guc(
            c"pg_kpi.fold_workers",
            c"Whether pg_kpi fold workers run.",
            c"Off stops every fold worker until it is turned on again; kpi.fold() still folds on demand.",
            &FOLD_WORKERS,
            GucContext::Sighup,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"pg_kpi.fold_lock_timeout_ms",
            c"lock_timeout of the fold worker's transactions, in milliseconds (0: none).",
            c"A fold that waits longer for a lock (behind DDL on a source table) fails, is reported by kpi.status(), and is retried.",
            &FOLD_LOCK_TIMEOUT_MS,
            0,
            3_600_000,
            GucContext::Sighup,
            GucFlags::UNIT_MS,
        );
    }
    GucRegistry::define_int_guc(
        c"pg_kpi.fold_min_interval_ms",
        c"Minimum time between two folds, in milliseconds.",
        c"Low values lower latency; higher values batch more deltas per fold when writes are busy.",
        &FOLD_MIN_INTERVAL_MS,
        1,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_kpi.fold_busy_interval_ms",
        c"Minimum time between two folds while writers are busy, in milliseconds.",
        c"Busy means more than 3,200 delta rows a second. Higher values leave more CPU to the writers at the cost of freshness under load.",
        &FOLD_BUSY_INTERVAL_MS,
        1,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_kpi.fold_idle_interval_ms",
        c"How often the fold worker runs without being woken, in milliseconds.",
        c"Applies retention and catches any missed wake-up.",
        &FOLD_IDLE_INTERVAL_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_kpi.alert_interval_ms",
        c"Minimum time between two evaluations of the alert rules of the KPIs a fold merged, in milliseconds.",
        c"0 evaluates them on every fold. Every rule is also evaluated about once a second whatever this is.",
        &ALERT_INTERVAL_MS,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_kpi.max_pending_groups",
        c"Flush captured deltas mid-statement once this many groups are pending.",
        c"Bounds the memory a single large statement uses for KPI capture.",
        &MAX_PENDING_GROUPS,
        100,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_kpi.rebuild_progress_ms",
        c"How often kpi.rebuild and kpi.alter report their progress, in milliseconds.",
        c"A NOTICE with the share of the source scanned so far; one at the start and one at the end whatever this is.",
        &REBUILD_PROGRESS_MS,
        10,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

/// Whether database `db` may get a fold worker (`pg_kpi.databases` empty or naming it).
pub fn database_listed(db: &str) -> bool {
    let listed = databases();
    listed.is_empty() || listed.iter().any(|d| d == db)
}

/// The databases `pg_kpi.databases` names, trimmed, without empties.
fn databases() -> Vec<String> {
    DATABASES
        .get()
        .and_then(|s| s.into_string().ok())
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
