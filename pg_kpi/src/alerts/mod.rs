//! Alerts: what fires is decided here, next to the data; who hears it is the notifier's
//! job (it delivers from `kpi.alert_history`).
//!
//! - [`rules`]: `kpi.create_alert`, `alter_alert`, `drop_alert`, and a rule as loaded;
//! - [`condition`]: a condition parsed and analysed by Postgres over the KPI's measures;
//! - [`state`]: the state machine of one instance (inactive → pending → firing);
//! - [`evaluate`]: one evaluation: values, steps, history rows and `NOTIFY kpi_alerts`.
//!
//! The fold evaluates the rules on the KPIs it merged, in its own transaction, right
//! after the merge; and every rule at most once a second (each fold worker folds at
//! least that often), so `for`, `keep_firing_for` and windows that empty out move
//! without writes. `kpi.evaluate_alerts()` evaluates every rule now. None of it runs on
//! the write path.

mod condition;
mod evaluate;
mod rules;
mod state;

use crate::errors::{KpiResult, OrRaise};
use crate::subxact::isolated;
use crate::workers::health;
use pgrx::prelude::*;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often a fold evaluates every rule, not only those on the KPIs it merged.
const ALL_RULES_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_ALL: Cell<Option<Instant>> = const { Cell::new(None) };
}

fn all_rules_due() -> bool {
    LAST_ALL.with(|last| {
        let due = last.get().is_none_or(|t| t.elapsed() >= ALL_RULES_EVERY);
        if due {
            last.set(Some(Instant::now()));
        }
        due
    })
}

/// Called by the fold after its merge, under the fold lock. An error here (a bug, or a
/// rule table someone broke) is recorded in `kpi.status()` and never fails the fold.
pub fn in_fold(merged: &[i32]) -> KpiResult<()> {
    let ids = if all_rules_due() {
        None
    } else if merged.is_empty() {
        return Ok(());
    } else {
        Some(merged)
    };
    let rules = crate::privileges::as_extension_owner(|| rules::Rule::load(ids))?;
    if rules.is_empty() {
        return Ok(());
    }
    if let Err(message) = isolated(|| evaluate::evaluate(&rules)) {
        health::record_error(&format!("alerts: {message}"));
    }
    Ok(())
}

/// `kpi.evaluate_alerts()`: every rule, now; returns the number of transitions.
#[pg_extern(schema = "kpi", name = "_evaluate_alerts", volatile, parallel_unsafe)]
fn evaluate_alerts() -> i64 {
    (|| -> KpiResult<i64> {
        crate::fold::lock_folds()?;
        let rules = crate::privileges::as_extension_owner(|| rules::Rule::load(None))?;
        Ok(evaluate::evaluate(&rules)? as i64)
    })()
    .or_raise()
}
#[cfg(any(test, feature = "pg_test"))]
mod tests;
