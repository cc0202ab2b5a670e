//! The pull jobs' metrics (`kpi_notifier_pull_*`), rendered after the notifier's own by
//! `notifier serve`, and alone by `notifier pull`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Every job's metrics, by job name.
#[derive(Default)]
pub struct PullMetrics(Mutex<BTreeMap<String, Arc<JobMetrics>>>);

pub struct JobMetrics {
    /// Rows inserted or changed locally (a re-read row left unchanged is not counted).
    pub rows: AtomicU64,
    /// Rows read from the remote, look-back re-reads included.
    pub rows_read: AtomicU64,
    /// Queries on the remote table.
    pub batches: AtomicU64,
    /// Unix time (ms) of the start of the last remote read that found nothing left to
    /// copy, committed locally: every row committed remotely before it is copied (late
    /// rows within the look-back aside). 0 = not yet.
    pub fresh_as_of_ms: AtomicI64,
    /// Unix time (ms) of the time-column watermark; 0 = none yet.
    pub watermark_ms: AtomicI64,
    /// Unix time (ms) of the last poll that caught up; 0 = never.
    pub last_success_ms: AtomicI64,
    /// 1 while the job copies without errors, 0 after an error until the next success.
    pub up: AtomicI64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            rows: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            fresh_as_of_ms: AtomicI64::new(0),
            watermark_ms: AtomicI64::new(0),
            last_success_ms: AtomicI64::new(0),
            up: AtomicI64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl JobMetrics {
    pub fn error(&self, kind: &'static str) {
        self.up.store(0, Relaxed);
        let mut m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(kind).or_default() += 1;
    }

    pub fn errors(&self, kind: &str) -> u64 {
        let m = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        m.get(kind).copied().unwrap_or(0)
    }

    /// Seconds the local copy may be behind: since the last read that found the remote
    /// copied up to then, or before the first one, since the watermark's time.
    pub fn lag_seconds(&self, now_ms: i64) -> Option<f64> {
        let fresh = self.fresh_as_of_ms.load(Relaxed);
        let mark = self.watermark_ms.load(Relaxed);
        let since = if fresh > 0 { fresh } else { mark };
        (since > 0).then(|| (now_ms - since).max(0) as f64 / 1e3)
    }
}

impl PullMetrics {
    /// The metrics of `job`, created on first use.
    pub fn job(&self, job: &str) -> Arc<JobMetrics> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(job.to_string()).or_default().clone()
    }

    /// Appends the text exposition; nothing when no job runs.
    pub fn render(&self, out: &mut String) {
        let jobs: Vec<(String, Arc<JobMetrics>)> = {
            let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        if jobs.is_empty() {
            return;
        }
        let now = now_ms();
        let p = "kpi_notifier_pull";
        type Get = fn(&JobMetrics, i64) -> Option<f64>;
        let simple: [(&str, &str, &str, Get); 6] = [
            (
                "rows_total",
                "counter",
                "Rows inserted or changed in the local table.",
                |j, _| Some(j.rows.load(Relaxed) as f64),
            ),
            (
                "rows_read_total",
                "counter",
                "Rows read from the remote, look-back re-reads included.",
                |j, _| Some(j.rows_read.load(Relaxed) as f64),
            ),
            (
                "batches_total",
                "counter",
                "Queries on the remote table.",
                |j, _| Some(j.batches.load(Relaxed) as f64),
            ),
            (
                "lag_seconds",
                "gauge",
                "How far the local copy may be behind the remote.",
                |j, now| j.lag_seconds(now),
            ),
            (
                "last_success_timestamp_seconds",
                "gauge",
                "When the job last caught up with the remote (Unix time).",
                |j, _| {
                    let v = j.last_success_ms.load(Relaxed);
                    (v > 0).then_some(v as f64 / 1e3)
                },
            ),
            (
                "up",
                "gauge",
                "1 while the job copies without errors.",
                |j, _| Some(j.up.load(Relaxed) as f64),
            ),
        ];
        for (name, kind, help, get) in simple {
            let _ = writeln!(out, "# HELP {p}_{name} {help}\n# TYPE {p}_{name} {kind}");
            for (job, m) in &jobs {
                if let Some(v) = get(m, now) {
                    let _ = writeln!(out, "{p}_{name}{{job=\"{job}\"}} {v}");
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP {p}_errors_total Pull errors by kind; each is retried.\n# TYPE {p}_errors_total counter"
        );
        for (job, m) in &jobs {
            let errors = m.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (kind, n) in errors {
                let _ = writeln!(out, "{p}_errors_total{{job=\"{job}\",kind=\"{kind}\"}} {n}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_job_series() {
        let m = PullMetrics::default();
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.is_empty());
        let j = m.job("orders");
        j.rows.fetch_add(3, Relaxed);
        j.error("auth");
        j.watermark_ms.store(now_ms() - 2_000, Relaxed);
        m.render(&mut out);
        assert!(out.contains("kpi_notifier_pull_rows_total{job=\"orders\"} 3"));
        assert!(out.contains("kpi_notifier_pull_errors_total{job=\"orders\",kind=\"auth\"} 1"));
        assert!(out.contains("kpi_notifier_pull_lag_seconds{job=\"orders\"} "));
        assert!(!out.contains("last_success_timestamp_seconds{"));
    }
}
