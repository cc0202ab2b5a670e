//! Prometheus metrics, rendered by hand in the text exposition format.
//!
//! Counters on the hot path (messages sent, skipped updates, latency) are atomics, and
//! the ones touched for every message sent are striped by thread (see [`Striped`]);
//! rare, labelled events (errors, closes, refusals) go through a small mutex-guarded
//! map. Everything lives in one struct owned by the server state, so two servers in
//! one process (as in tests) never share counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::feed::fold_watch::FoldHealth;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws = 0,
    Sse = 1,
}

impl Transport {
    fn label(i: usize) -> &'static str {
        ["ws", "sse"][i]
    }
}

/// Upper bounds (seconds) of the notify-to-send histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Stripes of each per-message metric.
const STRIPES: usize = 8;

/// One cache line (or more) of its own, so neighbouring stripes never share one.
#[derive(Default)]
#[repr(align(64))]
struct Line<T>(T);

/// A metric split into per-thread stripes that are summed when read. Fanning one value
/// out to 10,000 clients updates the per-message metrics 10,000 times from every
/// worker thread at once; on one shared atomic each update would pull its cache line
/// away from the other cores.
#[derive(Default)]
struct Striped<T>([Line<T>; STRIPES]);

impl<T> Striped<T> {
    /// This thread's stripe.
    fn mine(&self) -> &T {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
        }
        &self.0[STRIPE.with(|s| *s)].0
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|l| &l.0)
    }
}

impl Striped<AtomicU64> {
    fn add(&self, n: u64) {
        self.mine().fetch_add(n, Relaxed);
    }

    fn sum(&self) -> u64 {
        self.iter().map(|a| a.load(Relaxed)).sum()
    }
}

#[derive(Default)]
struct HistogramStripe {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A fixed-bucket histogram of durations.
#[derive(Default)]
pub struct Histogram(Striped<HistogramStripe>);

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let h = self.0.mine();
        let s = d.as_secs_f64();
        // Buckets are cumulative when rendered; store each sample in its first bucket.
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.iter().map(|h| h.count.load(Relaxed)).sum()
    }

    fn bucket(&self, i: usize) -> u64 {
        self.0.iter().map(|h| h.buckets[i].load(Relaxed)).sum()
    }

    fn sum_micros(&self) -> u64 {
        self.0.iter().map(|h| h.sum_micros.load(Relaxed)).sum()
    }
}

/// A counter with one label, for low-rate events.
#[derive(Default)]
pub struct CounterVec(Mutex<BTreeMap<String, u64>>);

impl CounterVec {
    pub fn inc(&self, label: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(label.to_string()).or_default() += 1;
    }

    pub fn get(&self, label: &str) -> u64 {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(label).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<(String, u64)> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Every metric the notifier exports.
#[derive(Default)]
pub struct Metrics {
    connections: [AtomicI64; 2],
    connections_total: [AtomicU64; 2],
    messages_sent: [Striped<AtomicU64>; 2],
    updates_dropped: [AtomicU64; 2],
    pub notify_to_send: Histogram,
    pub publish_to_send: Histogram,
    pub listen_reconnects: AtomicU64,
    pub listen_connected: AtomicI64,
    pub notifications: AtomicU64,
    pub notify_payload_errors: AtomicU64,
    pub full_reloads: AtomicU64,
    pub snapshots_published: AtomicU64,
    pub fold_runs: AtomicU64,
    pub fold_errors: AtomicU64,
    /// `kpi.status()` reads by the fold watch, and the ones that failed.
    pub fold_checks: AtomicU64,
    pub fold_check_errors: AtomicU64,
    /// `kpi.fold()` calls the fold watch made while the fold was stalled.
    pub fallback_folds: AtomicU64,
    pub fallback_fold_errors: AtomicU64,
    /// First reads of a dimension filter's snapshot that failed.
    pub filter_read_errors: AtomicU64,
    /// `{"type":"error"}` messages sent to WebSocket clients, by code.
    pub client_errors: CounterVec,
    /// WebSocket closes initiated by the server, by close code.
    pub ws_closes: CounterVec,
    /// Connections refused before they started streaming, by reason.
    pub rejected: CounterVec,
    /// HTTP error responses, by error code.
    pub http_errors: CounterVec,
    /// Alert notifications delivered, by integration (webhook, slack, pagerduty,
    /// email, alertmanager).
    pub alert_notifications: CounterVec,
    /// Alert notifications given up on after their retries, by integration.
    pub alert_notification_failures: CounterVec,
    /// Attempts to send an alert notification (retries included), by integration.
    pub alert_send_attempts: CounterVec,
    /// The `[[pull]]` jobs' metrics, rendered last.
    pub pull: std::sync::Arc<crate::pull::metrics::PullMetrics>,
}

/// Gauges that are read from elsewhere at render time.
pub struct Gauges {
    pub ready: bool,
    pub kpis: usize,
    /// Dimension filters followed (see `filter`).
    pub dim_filters: usize,
    /// The fold watch's last check.
    pub fold: FoldHealth,
}

impl Metrics {
    pub fn connection_opened(&self, t: Transport) {
        self.connections[t as usize].fetch_add(1, Relaxed);
        self.connections_total[t as usize].fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self, t: Transport) {
        self.connections[t as usize].fetch_sub(1, Relaxed);
    }

    pub fn connections(&self, t: Transport) -> i64 {
        self.connections[t as usize].load(Relaxed)
    }

    pub fn message_sent(&self, t: Transport) {
        self.messages_sent[t as usize].add(1);
    }

    pub fn messages_sent(&self, t: Transport) -> u64 {
        self.messages_sent[t as usize].sum()
    }

    /// Versions a client skipped because it was not ready when they were published.
    pub fn updates_dropped(&self, t: Transport, n: u64) {
        if n > 0 {
            self.updates_dropped[t as usize].fetch_add(n, Relaxed);
        }
    }

    pub fn dropped(&self, t: Transport) -> u64 {
        self.updates_dropped[t as usize].load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let p = "kpi_notifier";
        header(
            &mut out,
            p,
            "connections",
            "gauge",
            "Open streaming connections.",
        );
        for (i, c) in self.connections.iter().enumerate() {
            let _ = writeln!(
                out,
                "{p}_connections{{transport=\"{}\"}} {}",
                Transport::label(i),
                c.load(Relaxed)
            );
        }
        header(
            &mut out,
            p,
            "connections_total",
            "counter",
            "Streaming connections accepted.",
        );
        for (i, c) in self.connections_total.iter().enumerate() {
            let _ = writeln!(
                out,
                "{p}_connections_total{{transport=\"{}\"}} {}",
                Transport::label(i),
                c.load(Relaxed)
            );
        }
        header(
            &mut out,
            p,
            "messages_sent_total",
            "counter",
            "Messages written to clients.",
        );
        for (i, c) in self.messages_sent.iter().enumerate() {
            let _ = writeln!(
                out,
                "{p}_messages_sent_total{{transport=\"{}\"}} {}",
                Transport::label(i),
                c.sum()
            );
        }
        header(
            &mut out,
            p,
            "updates_dropped_total",
            "counter",
            "KPI versions a slow client skipped (it got the latest instead).",
        );
        for (i, c) in self.updates_dropped.iter().enumerate() {
            let _ = writeln!(
                out,
                "{p}_updates_dropped_total{{transport=\"{}\"}} {}",
                Transport::label(i),
                c.load(Relaxed)
            );
        }
        histogram(
            &mut out,
            p,
            "notify_to_send_seconds",
            "Time from receiving a NOTIFY to writing the resulting update to a client.",
            &self.notify_to_send,
        );
        histogram(
            &mut out,
            p,
            "publish_to_send_seconds",
            "Time from publishing a new KPI version to writing it to a client (fan-out only).",
            &self.publish_to_send,
        );

        let simple: [(&str, &str, &str, i64); 16] = [
            (
                "listen_reconnects_total",
                "counter",
                "LISTEN connection losses followed by a reconnect attempt.",
                self.listen_reconnects.load(Relaxed) as i64,
            ),
            (
                "listen_connected",
                "gauge",
                "1 while the LISTEN connection is up.",
                self.listen_connected.load(Relaxed),
            ),
            (
                "ready",
                "gauge",
                "1 when connected and every KPI is loaded.",
                g.ready as i64,
            ),
            (
                "kpis",
                "gauge",
                "KPIs known to the notifier.",
                g.kpis as i64,
            ),
            (
                "dim_filters",
                "gauge",
                "Distinct dimension filters clients follow (each re-read when its KPI changes).",
                g.dim_filters as i64,
            ),
            (
                "filter_read_errors_total",
                "counter",
                "First reads of a dimension filter that failed (the subscribe was refused).",
                self.filter_read_errors.load(Relaxed) as i64,
            ),
            (
                "notifications_total",
                "counter",
                "NOTIFY messages received on kpi_changes.",
                self.notifications.load(Relaxed) as i64,
            ),
            (
                "notify_payload_errors_total",
                "counter",
                "NOTIFY payloads that could not be parsed (a full reload follows).",
                self.notify_payload_errors.load(Relaxed) as i64,
            ),
            (
                "full_reloads_total",
                "counter",
                "Reloads of every KPI (connect, reconnect, overflow).",
                self.full_reloads.load(Relaxed) as i64,
            ),
            (
                "snapshots_published_total",
                "counter",
                "New KPI versions published to subscribers.",
                self.snapshots_published.load(Relaxed) as i64,
            ),
            (
                "fold_runs_total",
                "counter",
                "kpi.fold() calls made by the fold timer.",
                self.fold_runs.load(Relaxed) as i64,
            ),
            (
                "fold_errors_total",
                "counter",
                "kpi.fold() calls that failed.",
                self.fold_errors.load(Relaxed) as i64,
            ),
            (
                "fold_checks_total",
                "counter",
                "kpi.status() reads by the fold watch.",
                self.fold_checks.load(Relaxed) as i64,
            ),
            (
                "fold_check_errors_total",
                "counter",
                "kpi.status() reads that failed (the watch reconnects).",
                self.fold_check_errors.load(Relaxed) as i64,
            ),
            (
                "fallback_folds_total",
                "counter",
                "kpi.fold() calls the notifier made because the fold was stalled.",
                self.fallback_folds.load(Relaxed) as i64,
            ),
            (
                "fallback_fold_errors_total",
                "counter",
                "Fallback kpi.fold() calls that failed.",
                self.fallback_fold_errors.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, v) in simple {
            header(&mut out, p, name, kind, help);
            let _ = writeln!(out, "{p}_{name} {v}");
        }
        fold_gauges(&mut out, p, &g.fold);
        let vecs: [(&str, &str, &str, &CounterVec); 7] = [
            (
                "client_errors_total",
                "code",
                "Protocol errors reported to WebSocket clients.",
                &self.client_errors,
            ),
            (
                "ws_closes_total",
                "code",
                "WebSocket connections closed by the server, by close code.",
                &self.ws_closes,
            ),
            (
                "rejected_total",
                "reason",
                "Connections or requests refused before streaming.",
                &self.rejected,
            ),
            (
                "http_errors_total",
                "code",
                "HTTP error responses.",
                &self.http_errors,
            ),
            (
                "alert_notifications_total",
                "integration",
                "Alert notifications delivered.",
                &self.alert_notifications,
            ),
            (
                "alert_notification_failures_total",
                "integration",
                "Alert notifications that failed after their retries.",
                &self.alert_notification_failures,
            ),
            (
                "alert_send_attempts_total",
                "integration",
                "Attempts to send an alert notification, retries included.",
                &self.alert_send_attempts,
            ),
        ];
        for (name, label, help, vec) in vecs {
            header(&mut out, p, name, "counter", help);
            for (value, n) in vec.snapshot() {
                let _ = writeln!(out, "{p}_{name}{{{label}=\"{}\"}} {n}", escape(&value));
            }
        }
        self.pull.render(&mut out);
        out
    }
}

/// The fold watch's gauges. Before `kpi.status()` has answered they are left out
/// rather than reported as a healthy zero.
fn fold_gauges(out: &mut String, p: &str, f: &FoldHealth) {
    let mut gauge = |name: &str, help: &str, v: Option<f64>| {
        header(out, p, name, "gauge", help);
        if let Some(v) = v {
            let _ = writeln!(out, "{p}_{name} {v}");
        }
    };
    let known = |v: f64| f.known.then_some(v);
    gauge(
        "fold_lag_seconds",
        "Upper bound on the age of the oldest delta not folded yet (kpi.status()).",
        f.lag_seconds.filter(|_| f.known),
    );
    gauge(
        "fold_pending_rows",
        "Delta rows waiting to be folded.",
        known(f.pending_rows as f64),
    );
    gauge(
        "fold_worker_running",
        "1 while the database's fold worker is running.",
        known(f64::from(u8::from(
            f.worker_state.as_deref() == Some("running"),
        ))),
    );
    gauge(
        "fold_failing_kpis",
        "KPIs whose merge fails now (their deltas stay pending).",
        known(f.failing_kpis.len() as f64),
    );
    gauge(
        "fold_stalled",
        "1 while no fold worker runs with deltas pending, or the fold lag is over fold.lag_limit_ms.",
        known(f64::from(u8::from(f.stalled))),
    );
    gauge(
        "fold_fallback_active",
        "1 while the notifier folds itself because the fold is stalled.",
        known(f64::from(u8::from(f.fallback_active))),
    );
}

fn histogram(out: &mut String, p: &str, name: &str, help: &str, h: &Histogram) {
    header(out, p, name, "histogram", help);
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += h.bucket(i);
        let _ = writeln!(out, "{p}_{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    // At least the buckets' total: stripes are read one after the other while
    // sessions keep adding, and a scrape must never show +Inf below a finite bucket.
    let count = h.count().max(cumulative);
    let _ = writeln!(out, "{p}_{name}_bucket{{le=\"+Inf\"}} {count}");
    let sum = h.sum_micros() as f64 / 1e6;
    let _ = writeln!(out, "{p}_{name}_sum {sum}");
    let _ = writeln!(out, "{p}_{name}_count {count}");
}

fn header(out: &mut String, prefix: &str, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {prefix}_{name} {help}");
    let _ = writeln!(out, "# TYPE {prefix}_{name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_metrics_add_up_across_threads() {
        let m = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..STRIPES + 3)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.message_sent(Transport::Ws);
                        m.notify_to_send.observe(Duration::from_millis(3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let n = 1000 * (STRIPES as u64 + 3);
        assert_eq!(m.messages_sent(Transport::Ws), n);
        assert_eq!(m.notify_to_send.count(), n);
        let text = m.render(&Gauges {
            ready: true,
            kpis: 0,
            dim_filters: 0,
            fold: FoldHealth::default(),
        });
        assert!(text.contains(&format!(
            "kpi_notifier_notify_to_send_seconds_bucket{{le=\"0.005\"}} {n}"
        )));
        assert!(text.contains(&format!("kpi_notifier_notify_to_send_seconds_count {n}")));
    }

    #[test]
    fn fold_gauges_are_absent_until_known() {
        let text = Metrics::default().render(&Gauges {
            ready: false,
            kpis: 0,
            dim_filters: 0,
            fold: FoldHealth::default(),
        });
        assert!(text.contains("# TYPE kpi_notifier_fold_stalled gauge"));
        assert!(!text
            .lines()
            .any(|l| l.starts_with("kpi_notifier_fold_stalled ")));
    }

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.connection_opened(Transport::Ws);
        m.message_sent(Transport::Ws);
        m.updates_dropped(Transport::Sse, 3);
        m.notify_to_send.observe(Duration::from_micros(300));
        m.notify_to_send.observe(Duration::from_millis(20));
        m.client_errors.inc("bad_since");
        m.ws_closes.inc("4002");
        let text = m.render(&Gauges {
            ready: true,
            kpis: 2,
            dim_filters: 0,
            fold: FoldHealth {
                known: true,
                worker_state: Some("disabled".into()),
                pending_rows: 7,
                lag_seconds: Some(1.5),
                stalled: true,
                fallback_active: true,
                ..FoldHealth::default()
            },
        });
        for line in [
            "kpi_notifier_connections{transport=\"ws\"} 1",
            "kpi_notifier_messages_sent_total{transport=\"ws\"} 1",
            "kpi_notifier_updates_dropped_total{transport=\"sse\"} 3",
            "kpi_notifier_notify_to_send_seconds_bucket{le=\"0.0005\"} 1",
            "kpi_notifier_notify_to_send_seconds_bucket{le=\"0.01\"} 1",
            "kpi_notifier_notify_to_send_seconds_bucket{le=\"0.025\"} 2",
            "kpi_notifier_notify_to_send_seconds_bucket{le=\"+Inf\"} 2",
            "kpi_notifier_notify_to_send_seconds_count 2",
            "kpi_notifier_ready 1",
            "kpi_notifier_kpis 2",
            "kpi_notifier_client_errors_total{code=\"bad_since\"} 1",
            "kpi_notifier_ws_closes_total{code=\"4002\"} 1",
            "kpi_notifier_fold_lag_seconds 1.5",
            "kpi_notifier_fold_pending_rows 7",
            "kpi_notifier_fold_worker_running 0",
            "kpi_notifier_fold_stalled 1",
            "kpi_notifier_fold_fallback_active 1",
            "kpi_notifier_fallback_folds_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
