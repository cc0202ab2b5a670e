//! The supervised LISTEN connection: the only way changes enter the notifier.
//!
//! One task owns one connection. On every (re)connect it first runs `LISTEN
//! kpi_changes` and only then reloads every KPI, so a change committed at any moment is
//! either in the reload or announced by a NOTIFY that is already queued; only after the
//! reload does it report ready. After that each NOTIFY names the changed KPIs; they are
//! collected in a pending set (coalescing bursts, and everything that arrives while a read
//! is in flight) and re-read in one batched `kpi.snapshot` query, followed by one for the
//! dimension filters clients follow on those KPIs (see `filter`).
//!
//! When the connection fails for any reason (terminated backend, database restart,
//! network error, a failed query) the task logs it, reports not-ready on `/readyz`,
//! waits with exponential backoff and starts over. It never exits except on shutdown:
//! clients keep their last values meanwhile, and the reload brings them up to date.

use super::AbortOnDrop;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::filter::DimFilter;
use super::hub::{Hub, Published, Snapshot};
use crate::config::{valid_kpi_name, DatabaseConfig};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The NOTIFY channel the extension's fold announces changes on.
pub const CHANNEL: &str = "kpi_changes";

/// Every KPI's current snapshot (or only those named in `$1` when it is not NULL).
const SNAPSHOT_SQL: &str = "SELECT l.name, l.version, kpi.snapshot(l.name)::text \
     FROM kpi.list() AS l WHERE $1::text[] IS NULL OR l.name = ANY($1::text[])";

/// The snapshots of filtered topics (`$1` KPIs, `$2` filters, pairwise), by position in
/// the arrays. NULL when the KPI is gone or no longer has every dimension the filter
/// names, so one stale filter cannot fail the batch (and with it the connection).
const FILTERED_SQL: &str = "SELECT t.i::int4, \
     CASE WHEN l.name IS NULL THEN NULL ELSE kpi.snapshot(t.kpi, t.dims::jsonb)::text END \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(kpi, dims, i) \
     LEFT JOIN kpi.list() AS l ON l.name = t.kpi \
      AND ARRAY(SELECT jsonb_object_keys(t.dims::jsonb)) <@ l.dimensions";

/// What `/readyz` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub ready: bool,
    /// `starting`, `connecting`, `reloading`, `ready`, `retrying` or `stopped`.
    pub state: &'static str,
    /// The last connection error, while not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failed attempts since the last time the notifier was ready.
    pub failures: u32,
    pub since: DateTime<Utc>,
}

impl Status {
    fn new(ready: bool, state: &'static str, error: Option<String>, failures: u32) -> Status {
        Status {
            ready,
            state,
            error,
            failures,
            since: Utc::now(),
        }
    }
}

pub fn status_channel() -> (watch::Sender<Status>, watch::Receiver<Status>) {
    watch::channel(Status::new(false, "starting", None, 0))
}

/// The `kpi_changes` payload: `{"seq":N,"kpis":{"name":version}}` or
/// `{"seq":N,"overflow":true}`.
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    kpis: HashMap<String, i64>,
    #[serde(default)]
    overflow: bool,
}

/// Changes announced but not read yet, filled by the connection task.
#[derive(Default)]
struct Pending {
    /// KPI → (highest announced version, when the first announcement arrived).
    kpis: HashMap<String, (i64, Instant)>,
    reload_all: bool,
    /// Set when the connection ended.
    closed: Option<String>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The LISTEN supervisor.
pub struct Listener {
    pub pg: tokio_postgres::Config,
    pub db: DatabaseConfig,
    pub fold_interval: Option<Duration>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub status: watch::Sender<Status>,
}

impl Listener {
    /// Runs the supervisor ([`Listener::run`]) on a thread and runtime of its own, so
    /// that a new value is read and published as soon as its NOTIFY comes, however busy
    /// the server's runtime is. On a shared one, a delivery round of 10,000 clients
    /// queues some forty tasks ahead of the LISTEN connection's, and tokio looks at the
    /// sockets only between them: a value committed during a long round waited for it
    /// to end before it was even read, and on a slow machine the next round started
    /// late, and the next, each value later than the one before. Rounds still run on
    /// the server's runtime (the hub's registry holds it), so this thread only reads.
    pub fn spawn(self, shutdown: Shutdown) -> std::io::Result<std::thread::JoinHandle<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("kpi-listen".into())
            .spawn(move || runtime.block_on(self.run(shutdown)))
    }

    /// Runs until shutdown, reconnecting forever.
    pub async fn run(self, mut shutdown: Shutdown) {
        let min = Duration::from_millis(self.db.reconnect_min_ms);
        let max = Duration::from_millis(self.db.reconnect_max_ms);
        let mut backoff = min;
        let mut failures = 0u32;
        loop {
            let mut ready_at = None;
            let error = tokio::select! {
                e = self.session(&mut ready_at, failures) => e,
                _ = shutdown.wait() => break,
            };
            self.metrics
                .listen_connected
                .store(0, std::sync::atomic::Ordering::Relaxed);
            // A session that stayed ready for a while was a success: start the backoff
            // over. One that failed at once keeps doubling it.
            if ready_at.is_some_and(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                backoff = min;
                failures = 0;
            }
            failures += 1;
            self.metrics
                .listen_reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let delay = jitter(backoff);
            tracing::warn!(
                error = %error,
                failures,
                retry_in_ms = delay.as_millis() as u64,
                "LISTEN connection lost or failed; clients keep their last values until it is back"
            );
            self.status
                .send_replace(Status::new(false, "retrying", Some(error), failures));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => break,
            }
            backoff = (backoff * 2).min(max);
        }
        self.status
            .send_replace(Status::new(false, "stopped", None, failures));
        tracing::info!("LISTEN task stopped");
    }

    /// One connection's life: connect, LISTEN, reload, then follow notifications until
    /// something fails. Returns the failure.
    async fn session(&self, ready_at: &mut Option<Instant>, failures: u32) -> String {
        self.status
            .send_replace(Status::new(false, "connecting", None, failures));
        let (client, mut connection) = match self.pg.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => return format!("connect: {e}"),
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        });
        let driver = {
            let shared = shared.clone();
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                let reason = loop {
                    match futures::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                            metrics
                                .notifications
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            note_payload(&shared, n.payload(), &metrics);
                        }
                        Some(Ok(AsyncMessage::Notice(n))) => {
                            tracing::debug!(notice = %n.message(), "database notice");
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break format!("connection: {e}"),
                        None => break "connection closed by the server".to_string(),
                    }
                };
                shared.lock().closed = Some(reason);
                shared.wake.notify_one();
            })
        };
        let _driver = AbortOnDrop(driver);
        let client = Arc::new(client);

        // LISTEN before the reload: see the module comment.
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            return format!("LISTEN: {e}");
        }
        self.status
            .send_replace(Status::new(false, "reloading", None, failures));
        // Anything announced so far is covered by the reload.
        std::mem::take(&mut shared.lock().kpis);
        if let Err(e) = self.reload(&client).await {
            return e;
        }
        self.hub.mark_loaded();
        *ready_at = Some(Instant::now());
        self.metrics
            .listen_connected
            .store(1, std::sync::atomic::Ordering::Relaxed);
        self.status
            .send_replace(Status::new(true, "ready", None, 0));
        tracing::info!(
            kpis = self.hub.len(),
            "LISTEN connected and every KPI loaded; ready"
        );

        let mut fold_timer = self.fold_interval.map(|d| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut fold_task: Option<AbortOnDrop<()>> = None;
        loop {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = async { fold_timer.as_mut()?.tick().await; Some(()) }, if fold_timer.is_some() => {
                    // One fold at a time; a slow fold makes the timer skip, not pile up.
                    if fold_task.as_ref().is_none_or(|t| t.0.is_finished()) {
                        fold_task = Some(AbortOnDrop(self.spawn_fold(client.clone())));
                    }
                    continue;
                }
            }
            if self.db.coalesce_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.db.coalesce_ms)).await;
            }
            let (kpis, reload_all, closed) = {
                let mut p = shared.lock();
                (
                    std::mem::take(&mut p.kpis),
                    std::mem::take(&mut p.reload_all),
                    p.closed.take(),
                )
            };
            if let Some(reason) = closed {
                return reason;
            }
            let result = if reload_all {
                self.reload(&client).await
            } else {
                self.read_changed(&client, kpis).await
            };
            if let Err(e) = result {
                return e;
            }
        }
    }

    /// Re-reads the KPIs a NOTIFY named, skipping versions already published.
    async fn read_changed(
        &self,
        client: &Client,
        kpis: HashMap<String, (i64, Instant)>,
    ) -> Result<(), String> {
        let mut names = Vec::with_capacity(kpis.len());
        let mut first_notified = None;
        for (name, (version, at)) in &kpis {
            // A notification can trail a reload that already saw its version. Only an
            // equal version is skipped: a lower one may be a re-created KPI whose versions
            // started over.
            if self
                .hub
                .current(name)
                .is_some_and(|s| s.version == *version)
            {
                continue;
            }
            names.push(name.clone());
            first_notified = Some(first_notified.map_or(*at, |f: Instant| f.min(*at)));
        }
        if names.is_empty() {
            return Ok(());
        }
        let seen = self.read(client, Some(&names), first_notified).await?;
        self.read_filtered(client, Some(names.as_slice()), first_notified)
            .await?;
        // Announced but gone from kpi.list(): dropped since.
        let gone: Vec<&String> = names.iter().filter(|n| !seen.contains(*n)).collect();
        if !gone.is_empty() {
            let keep: HashSet<String> = self
                .hub
                .names()
                .into_iter()
                .filter(|n| !gone.contains(&n))
                .collect();
            self.hub.retain(&keep);
        }
        Ok(())
    }

    /// Reloads every KPI and forgets the ones the database no longer has.
    async fn reload(&self, client: &Client) -> Result<(), String> {
        self.metrics
            .full_reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seen = self.read(client, None, None).await?;
        let gone = self.hub.retain(&seen);
        self.read_filtered(client, None, None).await?;
        if !gone.is_empty() {
            tracing::info!(?gone, "KPIs dropped in the database");
        }
        Ok(())
    }

    /// Reads snapshots and publishes them; returns the names the database returned.
    async fn read(
        &self,
        client: &Client,
        names: Option<&Vec<String>>,
        notified_at: Option<Instant>,
    ) -> Result<HashSet<String>, String> {
        let rows = client
            .query(SNAPSHOT_SQL, &[&names])
            .await
            .map_err(|e| format!("reading kpi.snapshot: {e}"))?;
        let mut seen = HashSet::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(|e| e.to_string())?;
            let list_version: i64 = row.try_get(1).map_err(|e| e.to_string())?;
            let data: Option<String> = row.try_get(2).map_err(|e| e.to_string())?;
            seen.insert(name.clone());
            let Some(data) = data else {
                tracing::warn!(kpi = %name, "kpi.snapshot returned NULL; skipped");
                continue;
            };
            // The snapshot's own version is consistent with its data; kpi.list()'s is the
            // same statement snapshot, kept as a fallback.
            match Snapshot::new(&name, list_version, &data, notified_at) {
                Ok(snap) => {
                    if self.hub.publish(snap) != Published::Unchanged {
                        self.metrics
                            .snapshots_published
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::error!(kpi = %name, error = %e, "kpi.snapshot is not JSON"),
            }
        }
        Ok(seen)
    }

    /// Re-reads the dimension filters followed on `kpis` (all for `None`) and publishes
    /// them; drops those whose KPI or dimensions are gone.
    async fn read_filtered(
        &self,
        client: &Client,
        kpis: Option<&[String]>,
        notified_at: Option<Instant>,
    ) -> Result<(), String> {
        let topics: Vec<(String, DimFilter)> = self.hub.filters_of(kpis);
        if topics.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = topics.iter().map(|(k, _)| k.as_str()).collect();
        let dims: Vec<&str> = topics.iter().map(|(_, d)| d.as_str()).collect();
        let rows = client
            .query(FILTERED_SQL, &[&names, &dims])
            .await
            .map_err(|e| format!("reading filtered kpi.snapshot: {e}"))?;
        for row in rows {
            let i: i32 = row.try_get(0).map_err(|e| e.to_string())?;
            let data: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
            let Some((kpi, filter)) = usize::try_from(i - 1).ok().and_then(|i| topics.get(i))
            else {
                continue;
            };
            let Some(data) = data else {
                tracing::info!(%kpi, dims = filter.as_str(), "filter no longer matches the KPI; dropped");
                self.hub.filtered_remove(kpi, filter);
                continue;
            };
            match Snapshot::from_data(kpi, Some(filter.clone()), &data, notified_at) {
                Ok(snap) => {
                    if self.hub.filtered_publish(snap) != Published::Unchanged {
                        self.metrics
                            .snapshots_published
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::error!(%kpi, error = %e, "kpi.snapshot is not JSON"),
            }
        }
        Ok(())
    }

    fn spawn_fold(&self, client: Arc<Client>) -> JoinHandle<()> {
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics
                .fold_runs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = client.execute("SELECT kpi.fold()", &[]).await {
                metrics
                    .fold_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "SELECT kpi.fold() failed");
            }
        })
    }
}

/// Records one `kpi_changes` payload in the pending set and wakes the session.
fn note_payload(shared: &Shared, payload: &str, metrics: &Metrics) {
    let now = Instant::now();
    let parsed = serde_json::from_str::<Payload>(payload);
    let mut p = shared.lock();
    match parsed {
        Ok(Payload { overflow: true, .. }) => p.reload_all = true,
        Ok(Payload { kpis, .. }) => {
            for (name, version) in kpis {
                if !valid_kpi_name(&name) {
                    continue;
                }
                let e = p.kpis.entry(name).or_insert((version, now));
                e.0 = e.0.max(version);
            }
        }
        Err(e) => {
            // Unknown shape: the safe answer is to reload everything.
            metrics
                .notify_payload_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(error = %e, payload = %crate::error::truncate(payload, 200),
                "unparseable kpi_changes payload; reloading every KPI");
            p.reload_all = true;
        }
    }
    drop(p);
    shared.wake.notify_one();
}

/// Spreads reconnects of many replicas over ±25 % of the delay.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos() as u64)
        .unwrap_or(0);
    let span = d.as_millis() as u64 / 2;
    if span == 0 {
        return d;
    }
    d - Duration::from_millis(span / 2) + Duration::from_millis(nanos % span)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        }
    }

    #[test]
    fn payloads_coalesce_into_the_pending_set() {
        let s = shared();
        let m = Metrics::default();
        note_payload(&s, r#"{"seq":1,"kpis":{"a":3,"b":1}}"#, &m);
        note_payload(&s, r#"{"seq":2,"kpis":{"a":5}}"#, &m);
        note_payload(&s, r#"{"seq":3,"kpis":{"a":4,"Bad Name":9}}"#, &m);
        let p = s.lock();
        assert_eq!(p.kpis.len(), 2);
        assert_eq!(p.kpis["a"].0, 5, "the highest announced version wins");
        assert!(!p.reload_all);
    }

    #[test]
    fn overflow_and_garbage_mean_reload_everything() {
        let s = shared();
        let m = Metrics::default();
        note_payload(&s, r#"{"seq":9,"overflow":true}"#, &m);
        assert!(s.lock().reload_all);
        let s = shared();
        note_payload(&s, "not json", &m);
        assert!(s.lock().reload_all);
        assert_eq!(
            m.notify_payload_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for ms in [1u64, 100, 10_000] {
            let d = jitter(Duration::from_millis(ms));
            assert!(
                d >= Duration::from_millis(ms * 3 / 4)
                    && d <= Duration::from_millis(ms * 5 / 4 + 1)
            );
        }
    }
}
