//! Watching the fold, and folding when nobody else does.
//!
//! Values only move when deltas are folded, and that is the extension's fold worker's
//! job. The worker comes back on its own after a crash, but it can also be switched off
//! (`pg_kpi.fold_workers`), left out (`pg_kpi.databases`, no `shared_preload_libraries`)
//! or stuck behind a lock. Dashboards would then freeze silently on exact but old
//! numbers. So a task of its own polls `kpi.status()` on a connection of its own:
//!
//! - the fold is *stalled* when no worker is running while deltas are pending, or when
//!   the oldest pending delta may be older than `fold.lag_limit_ms`;
//! - a stall is logged once when it starts and once when it ends, and exported on
//!   `/readyz` and `/metrics`;
//! - while it lasts, and unless `fold.fallback` is off, the task runs `SELECT kpi.fold()`
//!   every `fold.fallback_interval_ms` itself (one at a time: the next waits for the
//!   last), so values keep reaching clients through the usual NOTIFY, within about a
//!   check interval of the stall.
//!
//! Folding from two places at once is safe: the extension serializes folds on a lock,
//! and a fold finds the deltas a concurrent one took already gone.
//!
//! Known limit: `kpi.status()` cannot tell whose fold lowered the lag, so a worker that
//! is alive but not folding looks healthy again as soon as the fallback has caught up,
//! and is noticed again one lag limit later.

use super::AbortOnDrop;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::config::{DatabaseConfig, FoldConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The fallback waits for locks no longer than the fold worker does
/// (`pg_kpi.fold_lock_timeout_ms`, unknown without the preloaded library), so a fold
/// stuck behind DDL fails fast, is counted, and is retried.
const SESSION_SQL: &str = "SELECT set_config('lock_timeout', \
     coalesce(nullif(current_setting('pg_kpi.fold_lock_timeout_ms', true), ''), '5s'), false)";

const STATUS_SQL: &str = "SELECT worker_state, worker_pid, pending_rows, fold_lag_seconds, \
     last_error, failing_kpis FROM kpi.status()";

/// One row of `kpi.status()`, the part the watch uses.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldStatus {
    pub worker_state: String,
    pub worker_pid: Option<i32>,
    pub pending_rows: i64,
    /// An upper bound on the age of the oldest pending delta; NULL without a preloaded
    /// extension.
    pub lag_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub failing_kpis: Vec<String>,
}

/// What `/readyz` (`fold`) and `/metrics` (`kpi_notifier_fold_*`) report.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FoldHealth {
    /// `true` once `kpi.status()` has answered.
    pub known: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_pid: Option<i32>,
    pub pending_rows: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    pub stalled: bool,
    /// Why the fold is stalled, while it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The notifier is folding itself.
    pub fallback_active: bool,
    /// The extension's last fold error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// KPIs whose merge fails now; their deltas stay pending.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing_kpis: Vec<String>,
    /// Why the last check could not read `kpi.status()`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<DateTime<Utc>>,
}

pub fn health_channel() -> (watch::Sender<FoldHealth>, watch::Receiver<FoldHealth>) {
    watch::channel(FoldHealth::default())
}

/// Why `status` is a stall, or `None` when the fold keeps up.
pub fn stall_reason(status: &FoldStatus, lag_limit: Duration) -> Option<String> {
    if status.worker_state != "running" && status.pending_rows > 0 {
        return Some(format!(
            "no fold worker is running ({}) and {} delta rows are pending",
            status.worker_state, status.pending_rows
        ));
    }
    match status.lag_seconds {
        Some(lag) if lag > lag_limit.as_secs_f64() => Some(format!(
            "the oldest pending delta may be {lag:.1} s old (limit {} s)",
            lag_limit.as_secs_f64()
        )),
        _ => None,
    }
}

/// The watch task.
pub struct FoldWatch {
    pub pg: tokio_postgres::Config,
    pub db: DatabaseConfig,
    pub cfg: FoldConfig,
    pub metrics: Arc<Metrics>,
    pub health: watch::Sender<FoldHealth>,
}

/// How one check ended.
enum Checked {
    Status(FoldStatus),
    /// The extension predates `kpi.status()`: nothing to watch.
    Unsupported(String),
}

impl FoldWatch {
    /// Runs until shutdown, reconnecting with the LISTEN connection's backoff.
    pub async fn run(self, mut shutdown: Shutdown) {
        let min = Duration::from_millis(self.db.reconnect_min_ms);
        let max = Duration::from_millis(self.db.reconnect_max_ms);
        let mut backoff = min;
        loop {
            let error = tokio::select! {
                e = self.session(&mut backoff, min) => e,
                _ = shutdown.wait() => break,
            };
            tracing::debug!(%error, "fold watch connection lost; reconnecting");
            self.health.send_modify(|h| h.check_error = Some(error));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => break,
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One connection's life; returns why it ended.
    async fn session(&self, backoff: &mut Duration, min: Duration) -> String {
        let (client, connection) = match self.pg.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => return format!("connect: {e}"),
        };
        let driver = tokio::spawn(connection);
        let _abort = AbortOnDrop(driver);
        if let Err(e) = client.execute(SESSION_SQL, &[]).await {
            return format!("setting lock_timeout: {}", describe(&e));
        }
        *backoff = min;

        let mut check = interval(Duration::from_millis(self.cfg.check_interval_ms));
        let mut fold = interval(Duration::from_millis(self.cfg.fallback_interval_ms));
        let lag_limit = Duration::from_millis(self.cfg.lag_limit_ms);
        let mut folding = false;
        let mut fold_failing = false;
        loop {
            tokio::select! {
                _ = check.tick() => {
                    self.metrics.fold_checks.fetch_add(1, Relaxed);
                    let checked = match check_status(&client).await {
                        Ok(c) => c,
                        Err(e) => {
                            self.metrics.fold_check_errors.fetch_add(1, Relaxed);
                            return format!("reading kpi.status(): {}", describe(&e));
                        }
                    };
                    folding = self.record(checked, lag_limit, folding);
                }
                _ = fold.tick(), if folding => {
                    self.metrics.fallback_folds.fetch_add(1, Relaxed);
                    match client.execute("SELECT kpi.fold()", &[]).await {
                        Ok(_) => fold_failing = false,
                        Err(e) => {
                            self.metrics.fallback_fold_errors.fetch_add(1, Relaxed);
                            // Once per run of failures: every 100 ms would flood the log.
                            if !fold_failing {
                                tracing::warn!(error = %describe(&e), "fallback SELECT kpi.fold() failed; retrying");
                            }
                            fold_failing = true;
                            if client.is_closed() {
                                return format!("fallback fold: {}", describe(&e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Publishes a check's result, logs a stall starting or ending; returns whether the
    /// fallback should fold now.
    fn record(&self, checked: Checked, lag_limit: Duration, was_folding: bool) -> bool {
        let before = self.health.borrow().clone();
        let mut h = FoldHealth {
            checked_at: Some(Utc::now()),
            ..FoldHealth::default()
        };
        match checked {
            Checked::Unsupported(why) => {
                if before.check_error.as_deref() != Some(why.as_str()) {
                    tracing::info!(reason = %why, "not watching the fold");
                }
                h.check_error = Some(why);
            }
            Checked::Status(s) => {
                h.known = true;
                h.reason = stall_reason(&s, lag_limit);
                h.stalled = h.reason.is_some();
                h.fallback_active = h.stalled && self.cfg.fallback;
                h.worker_state = Some(s.worker_state);
                h.worker_pid = s.worker_pid;
                h.pending_rows = s.pending_rows;
                h.lag_seconds = s.lag_seconds;
                h.last_error = s.last_error;
                h.failing_kpis = s.failing_kpis;
            }
        }
        match (before.stalled, h.stalled) {
            (false, true) => tracing::warn!(
                reason = h.reason.as_deref().unwrap_or_default(),
                last_error = h.last_error.as_deref().unwrap_or_default(),
                fallback = self.cfg.fallback,
                "KPIs are not being folded; {}",
                if self.cfg.fallback {
                    "the notifier folds them itself until the fold worker is back"
                } else {
                    "dashboards show older values until the fold worker is back (fold.fallback is off)"
                }
            ),
            (true, false) => tracing::info!(
                worker_state = h.worker_state.as_deref().unwrap_or_default(),
                was_folding,
                "the fold keeps up again"
            ),
            _ => {}
        }
        let folding = h.fallback_active;
        self.health.send_replace(h);
        folding
    }
}

async fn check_status(client: &Client) -> Result<Checked, tokio_postgres::Error> {
    let row = match client.query_one(STATUS_SQL, &[]).await {
        Ok(row) => row,
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
            return Ok(Checked::Unsupported(
                "kpi.status() does not exist: the extension is older than this notifier \
                 (ALTER EXTENSION pg_kpi UPDATE)"
                    .into(),
            ))
        }
        Err(e) => return Err(e),
    };
    Ok(Checked::Status(FoldStatus {
        worker_state: row.try_get(0)?,
        worker_pid: row.try_get(1)?,
        pending_rows: row.try_get(2)?,
        lag_seconds: row.try_get(3)?,
        last_error: row.try_get(4)?,
        failing_kpis: row
            .try_get::<_, Option<Vec<String>>>(5)?
            .unwrap_or_default(),
    }))
}

/// The server's message where there is one: tokio-postgres shows only "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A timer that skips missed ticks instead of bursting to catch up.
fn interval(every: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(state: &str, pending: i64, lag: Option<f64>) -> FoldStatus {
        FoldStatus {
            worker_state: state.into(),
            worker_pid: (state == "running").then_some(42),
            pending_rows: pending,
            lag_seconds: lag,
            last_error: None,
            failing_kpis: Vec::new(),
        }
    }

    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_running_worker_within_the_limit_is_no_stall() {
        assert_eq!(stall_reason(&status("running", 10, Some(0.2)), LIMIT), None);
        assert_eq!(stall_reason(&status("running", 0, Some(0.0)), LIMIT), None);
    }

    #[test]
    fn no_worker_with_pending_deltas_is_a_stall_at_once() {
        for state in ["stopped", "disabled", "not_listed", "not_preloaded"] {
            let r = stall_reason(&status(state, 3, Some(0.1)), LIMIT).unwrap();
            assert!(r.contains(state) && r.contains("3 delta rows"), "{r}");
        }
        let lagless = stall_reason(&status("not_preloaded", 1, None), LIMIT);
        assert!(lagless.is_some(), "without a lag bound the state decides");
    }

    #[test]
    fn no_worker_and_nothing_pending_is_no_stall() {
        assert_eq!(stall_reason(&status("disabled", 0, Some(0.0)), LIMIT), None);
    }

    #[test]
    fn lag_over_the_limit_is_a_stall_even_with_a_worker() {
        let r = stall_reason(&status("running", 5, Some(7.25)), LIMIT).unwrap();
        assert!(r.contains("7.2 s") && r.contains("limit 5 s"), "{r}");
        assert_eq!(stall_reason(&status("running", 5, Some(5.0)), LIMIT), None);
    }

    fn watch(fallback: bool) -> (FoldWatch, watch::Receiver<FoldHealth>) {
        let (tx, rx) = health_channel();
        let w = FoldWatch {
            pg: tokio_postgres::Config::new(),
            db: DatabaseConfig::default(),
            cfg: FoldConfig {
                fallback,
                ..FoldConfig::default()
            },
            metrics: Arc::new(Metrics::default()),
            health: tx,
        };
        (w, rx)
    }

    #[test]
    fn a_stall_turns_the_fallback_on_and_off_again() {
        let (w, rx) = watch(true);
        let folding = w.record(
            Checked::Status(status("disabled", 4, Some(1.0))),
            LIMIT,
            false,
        );
        assert!(folding);
        let h = rx.borrow().clone();
        assert!(h.known && h.stalled && h.fallback_active);
        assert_eq!(h.worker_state.as_deref(), Some("disabled"));
        assert_eq!(h.pending_rows, 4);

        let folding = w.record(
            Checked::Status(status("running", 0, Some(0.0))),
            LIMIT,
            true,
        );
        assert!(!folding);
        let h = rx.borrow().clone();
        assert!(!h.stalled && !h.fallback_active && h.reason.is_none());
        assert_eq!(h.worker_pid, Some(42));
    }

    #[test]
    fn without_fallback_a_stall_is_only_reported() {
        let (w, rx) = watch(false);
        assert!(!w.record(Checked::Status(status("stopped", 4, None)), LIMIT, false));
        let h = rx.borrow().clone();
        assert!(h.stalled && !h.fallback_active);
    }

    #[test]
    fn an_extension_without_status_is_unknown_not_stalled() {
        let (w, rx) = watch(true);
        assert!(!w.record(Checked::Unsupported("old".into()), LIMIT, false));
        let h = rx.borrow().clone();
        assert!(!h.known && !h.stalled);
        assert_eq!(h.check_error.as_deref(), Some("old"));
    }

    #[test]
    fn health_serializes_without_empty_fields() {
        let v = serde_json::to_value(FoldHealth::default()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"known": false, "pending_rows": 0, "stalled": false, "fallback_active": false})
        );
    }
}
