//! Alerts: what fires is decided here, next to the data; who hears it is the notifier's
//! job (it delivers from `kpi.alert_history`).
//!
//! - [`rules`]: `kpi.create_alert`, `alter_alert`, `drop_alert`, and a rule as loaded;
//! - [`condition`]: a condition parsed and analysed by Postgres over the KPI's measures;
//! - [`state`]: the state machine of one instance (inactive → pending → firing);
//! - [`evaluate`]: one evaluation: values, steps, history rows and `NOTIFY kpi_alerts`.
//!
//! The fold evaluates the rules on the KPIs it merged, in its own transaction, right
//! after the merge (at most every `pg_kpi.alert_interval_ms`: under load, the changes
//! of several folds are evaluated together); and every rule about once a second (each
//! fold worker folds at least that often), so `for`, `keep_firing_for` and windows that
//! empty out move without writes. `kpi.evaluate_alerts()` evaluates every rule now. None of it runs on
//! the write path.

mod ack;
pub(crate) mod condition;
mod evaluate;
mod rules;
mod state;

use crate::errors::{KpiResult, OrRaise};
use crate::gucs;
use crate::subxact::isolated;
use crate::workers::health;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How often a fold evaluates every rule, not only those on the KPIs it merged.
const ALL_RULES_EVERY: Duration = Duration::from_secs(1);

/// When this backend's folds last evaluated rules, and the KPIs merged since then whose
/// rules wait for `pg_kpi.alert_interval_ms` to pass.
#[derive(Default)]
struct Schedule {
    last_all: Option<Instant>,
    last_merged: Option<Instant>,
    waiting: BTreeSet<i32>,
}

thread_local! {
    static SCHEDULE: RefCell<Schedule> = RefCell::new(Schedule::default());
}

/// Which rules this fold evaluates: all of them (`None`), those of some KPIs, or none.
fn due(merged: &[i32]) -> Option<Option<Vec<i32>>> {
    let interval = Duration::from_millis(gucs::ALERT_INTERVAL_MS.get().max(0) as u64);
    SCHEDULE.with(|s| {
        let mut s = s.borrow_mut();
        s.waiting.extend(merged);
        let now = Instant::now();
        if s.last_all.is_none_or(|t| now - t >= ALL_RULES_EVERY) {
            s.last_all = Some(now);
            s.last_merged = Some(now);
            s.waiting.clear();
            return Some(None);
        }
        if s.waiting.is_empty() || s.last_merged.is_some_and(|t| now - t < interval) {
            return None;
        }
        s.last_merged = Some(now);
        Some(Some(std::mem::take(&mut s.waiting).into_iter().collect()))
    })
}

/// How soon this backend's fold must run again for the rules of KPIs it merged to be
/// evaluated: `None` when none wait. The fold worker sleeps no longer than this, so a
/// change that came within `pg_kpi.alert_interval_ms` of the last evaluation is
/// evaluated when the interval ends, not at the next idle fold a second later.
pub fn waiting_due_in() -> Option<Duration> {
    let interval = Duration::from_millis(gucs::ALERT_INTERVAL_MS.get().max(0) as u64);
    SCHEDULE.with(|s| {
        let s = s.borrow();
        if s.waiting.is_empty() {
            return None;
        }
        let since = s.last_merged.map_or(interval, |t| t.elapsed());
        Some(interval.saturating_sub(since))
    })
}

/// Called by the fold after its merge, under the fold lock. An error here (a bug, or a
/// rule table someone broke) is recorded in `kpi.status()` and never fails the fold.
pub fn in_fold(merged: &[i32]) -> KpiResult<()> {
    let Some(ids) = due(merged) else {
        return Ok(());
    };
    // The fold's merges and whatever committed while it waited for the lock.
    crate::snapshot::fresh(|| {
        let rules = crate::privileges::as_extension_owner(|| rules::Rule::load(ids.as_deref()))?;
        if rules.is_empty() {
            return Ok(());
        }
        if let Err(message) = isolated(|| evaluate::evaluate(&rules)) {
            health::record_error(&format!("alerts: {message}"));
        }
        Ok(())
    })
}

/// `kpi.evaluate_alerts()`: every rule, now; returns the number of transitions.
#[pg_extern(schema = "kpi", name = "_evaluate_alerts", volatile, parallel_unsafe)]
fn evaluate_alerts() -> i64 {
    (|| -> KpiResult<i64> {
        crate::fold::lock_folds()?;
        // Read after the lock: a fold or evaluation it waited for may have just
        // changed the values and the alerts' states.
        crate::snapshot::fresh(|| {
            let rules = crate::privileges::as_extension_owner(|| rules::Rule::load(None))?;
            Ok(evaluate::evaluate(&rules)? as i64)
        })
    })()
    .or_raise()
}
#[cfg(any(test, feature = "pg_test"))]
mod tests;
