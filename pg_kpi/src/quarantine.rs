//! KPIs whose merge failed: held back and retried with backoff, so one broken KPI costs
//! a failed statement every few seconds instead of one per fold, and says why.
//!
//! Kept in the folding process's memory (the fold worker's, or a backend calling
//! `kpi.fold()`): what matters across processes, the failing names and the error, goes
//! to `health` for `kpi.status()`. Held KPIs keep their deltas pending (see `fold`), so
//! their views stay exact and nothing is lost while they wait.

use crate::catalog::Kpi;
use crate::workers::health;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

struct Held {
    name: String,
    failures: u32,
    retry_at: Instant,
}

thread_local! {
    static HELD: RefCell<BTreeMap<i32, Held>> = const { RefCell::new(BTreeMap::new()) };
}

/// Whether KPI `id` should be merged in this fold: it is not held, or its retry is due.
pub fn due(id: i32) -> bool {
    HELD.with(|h| {
        h.borrow()
            .get(&id)
            .is_none_or(|held| held.retry_at <= Instant::now())
    })
}

/// Records a failed merge: holds the KPI back, reports it, logs it (every failure while
/// they are few, then one in ten).
pub fn failed(kpi: &Kpi, message: &str) {
    let failures = HELD.with(|h| {
        let mut held = h.borrow_mut();
        let entry = held.entry(kpi.id).or_insert(Held {
            name: kpi.name.clone(),
            failures: 0,
            retry_at: Instant::now(),
        });
        entry.failures += 1;
        entry.retry_at = Instant::now() + retry_after(entry.failures);
        entry.failures
    });
    let report = format!("KPI \"{}\": {message}", kpi.name);
    health::record_error(&report);
    if failures <= 3 || failures.is_multiple_of(10) {
        warning!(
            "pg_kpi: folding {report} ({failures} in a row; its deltas stay pending, retry in {} ms)",
            retry_after(failures).as_millis()
        );
    }
}

/// Records a successful merge: a held KPI is released.
pub fn succeeded(kpi: &Kpi) {
    if let Some(held) = HELD.with(|h| h.borrow_mut().remove(&kpi.id)) {
        log!(
            "pg_kpi: KPI \"{}\" folds again after {} failed attempts",
            held.name,
            held.failures
        );
    }
}

/// Forgets held KPIs other than `ids` (the KPIs that exist and have deltas: a held KPI
/// always has, so one missing was dropped).
pub fn keep_only(ids: &[i32]) {
    HELD.with(|h| h.borrow_mut().retain(|id, _| ids.contains(id)));
}

/// The names of the KPIs held back now.
pub fn failing() -> Vec<String> {
    HELD.with(|h| h.borrow().values().map(|held| held.name.clone()).collect())
}

fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

#[cfg(test)]
mod backoff {
    use super::retry_after;
    use std::time::Duration;

    #[test]
    fn doubles_to_a_cap() {
        let ms = Duration::from_millis;
        assert_eq!(retry_after(1), ms(200));
        assert_eq!(retry_after(3), ms(800));
        assert_eq!(retry_after(20), ms(30_000));
    }
}
