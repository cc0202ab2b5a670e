//! Every configuration setting of the extension, in one place.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Databases that get a fold worker (comma-separated). Read at server start.
pub static DATABASES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// Minimum time between two folds of one database: batches deltas when writes are busy.
pub static FOLD_MIN_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(20);

/// Minimum time between two folds while writers are busy (see `worker`): fewer, larger
/// folds under load, so that folding does not compete with the writers.
pub static FOLD_BUSY_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(50);

/// How often the fold worker wakes without writes (retention, missed wake-ups).
pub static FOLD_IDLE_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Flush the capture accumulator mid-statement once it holds this many groups, so a
/// huge COPY spreading over many buckets keeps bounded memory.
pub static MAX_PENDING_GROUPS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn init(preloading: bool) {
    if preloading {
        GucRegistry::define_string_guc(
            c"pg_kpi.databases",
            c"Databases that get a pg_kpi fold worker (comma-separated).",
            c"Each listed database that has the pg_kpi extension gets one background worker that folds deltas into the aggregates.",
            &DATABASES,
            GucContext::Postmaster,
            GucFlags::default(),
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
        c"pg_kpi.max_pending_groups",
        c"Flush captured deltas mid-statement once this many groups are pending.",
        c"Bounds the memory a single large statement uses for KPI capture.",
        &MAX_PENDING_GROUPS,
        100,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The configured fold databases, trimmed, without empties.
pub fn databases() -> Vec<String> {
    DATABASES
        .get()
        .and_then(|s| s.into_string().ok())
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
