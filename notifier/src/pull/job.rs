//! One pull job's loop: connect to both sides, resolve the remote table, then poll —
//! read past the watermark in batches, upsert each batch with its watermark in one
//! local transaction, re-read the look-back window, follow `updated_at` — and on any
//! error log it, count it, back off and start over from the stored watermark.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, NoTls, Row};

use super::config::PullJob;
use super::error::PullError;
use super::metrics::{now_ms, JobMetrics};
use super::plan::{Cursor, LocalPlan, Mark, RemotePlan};
use super::watermark::{self, Watermarks};
use crate::shutdown::Shutdown;

/// `application_name` of the pull's connections, on both sides.
pub const PULL_APP_NAME: &str = "pg_kpi_notifier_pull";

pub struct Job {
    pub cfg: PullJob,
    pub local_plan: LocalPlan,
    pub local_pg: tokio_postgres::Config,
    pub metrics: Arc<JobMetrics>,
}

/// Doubling delays between `min` and `max`, back to `min` after a success.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let min = Duration::from_millis(min_ms);
        Backoff {
            min,
            max: Duration::from_millis(max_ms),
            next: min,
        }
    }
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `max_rows_per_second`: each read books its rows against a budget, and the next
/// read waits until the budget has refilled. Unused budget is not saved up, so the
/// remote never sees more than one batch above the rate.
struct Pacer {
    per_row: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rows_per_second: u64) -> Pacer {
        Pacer {
            per_row: (rows_per_second > 0)
                .then(|| Duration::from_secs_f64(1.0 / rows_per_second as f64)),
            next: Instant::now(),
        }
    }
    async fn wait(&self) {
        tokio::time::sleep_until(self.next).await;
    }
    fn spent(&mut self, rows: usize) {
        if let Some(p) = self.per_row {
            self.next = self.next.max(Instant::now()) + p * rows as u32;
        }
    }
}

/// A batch read from the remote.
struct Batch {
    rows: Vec<Row>,
    /// The last row's position on the cursor read.
    last: Option<Mark>,
}

fn remote_config(job: &PullJob) -> Result<tokio_postgres::Config, PullError> {
    let mut pg: tokio_postgres::Config = job
        .remote_url
        .expose()
        .parse()
        .map_err(|e| PullError::new("connect", format!("remote_url: {e}")))?;
    if pg.get_application_name().is_none() {
        pg.application_name(PULL_APP_NAME);
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    // Read-only whatever the role may do; values rendered the same on every server
    // (UTC, ISO dates, floats exact) so that they parse back unchanged locally.
    let ours = format!(
        "-c default_transaction_read_only=on -c TimeZone=UTC -c DateStyle=ISO \
         -c extra_float_digits=3 -c statement_timeout={}",
        job.statement_timeout_ms
    );
    let options = match pg.get_options() {
        Some(o) if !o.is_empty() => format!("{o} {ours}"),
        _ => ours,
    };
    pg.options(&options);
    Ok(pg)
}

async fn connect(
    pg: &tokio_postgres::Config,
    err: fn(&tokio_postgres::Error) -> PullError,
) -> Result<Client, PullError> {
    let (client, connection) = pg.connect(NoTls).await.map_err(|e| err(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "pull connection closed");
        }
    });
    Ok(client)
}

impl Job {
    /// Runs until `shutdown`; errors are logged, counted and retried.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut backoff = Backoff::new(self.cfg.retry_min_ms, self.cfg.retry_max_ms);
        loop {
            let err = tokio::select! {
                e = self.session(&mut backoff) => e,
                _ = shutdown.wait() => return,
            };
            let delay = backoff.delay();
            self.metrics.error(err.kind);
            tracing::error!(
                job = %self.cfg.name,
                kind = err.kind,
                retry_in_ms = delay.as_millis() as u64,
                "pull failed: {err}"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// One connected stretch: returns only with the error that ended it.
    async fn session(&self, backoff: &mut Backoff) -> PullError {
        match self.session_inner(backoff).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(
        &self,
        backoff: &mut Backoff,
    ) -> Result<std::convert::Infallible, PullError> {
        let cfg = &self.cfg;
        let mut local = connect(&self.local_pg, PullError::local).await?;
        let mut remote = connect(&remote_config(cfg)?, PullError::connect).await?;
        let plan = RemotePlan::resolve(cfg, &self.local_plan, &remote).await?;
        let mut wm = watermark::load(&local, &cfg.name)
            .await
            .map_err(|e| PullError::local(&e))?;
        if let Some(m) = &wm.t {
            self.metrics
                .watermark_ms
                .store((m.epoch * 1e3) as i64, Relaxed);
        }
        if let (Some(u), None, None) = (&plan.updated, &wm.t, &wm.u) {
            // A first start: the copy by time reads every row as it is now, so the
            // updated_at cursor starts at the newest update already made.
            if let Some(m) = self.newest(&mut remote, &plan, u).await? {
                watermark::store(&local, &cfg.name, true, &m)
                    .await
                    .map_err(|e| PullError::local(&e))?;
                wm.u = Some(m);
            }
        }
        tracing::info!(job = %cfg.name, remote_table = %cfg.remote_table, "pull connected");
        let mut pacer = Pacer::new(cfg.max_rows_per_second);
        let look_back_every = Duration::from_millis(cfg.look_back_interval_ms);
        // None: the look-back runs at the first poll of every session.
        let mut looked_back: Option<Instant> = None;
        loop {
            let caught_up_at = self
                .forward(
                    &mut remote,
                    &mut local,
                    &plan,
                    &plan.time,
                    &mut wm,
                    false,
                    &mut pacer,
                )
                .await?;
            let look_back = looked_back.is_none_or(|at| at.elapsed() >= look_back_every);
            if look_back {
                looked_back = Some(Instant::now());
            }
            if let (true, Some(w)) = (look_back, wm.t.clone()) {
                self.look_back(&mut remote, &mut local, &plan, &plan.time, &w, &mut pacer)
                    .await?;
            }
            if let Some(u) = &plan.updated {
                self.forward(&mut remote, &mut local, &plan, u, &mut wm, true, &mut pacer)
                    .await?;
                if let (true, Some(w)) = (look_back, wm.u.clone()) {
                    self.look_back(&mut remote, &mut local, &plan, u, &w, &mut pacer)
                        .await?;
                }
            }
            self.metrics.fresh_as_of_ms.store(caught_up_at, Relaxed);
            self.metrics.last_success_ms.store(now_ms(), Relaxed);
            self.metrics.up.store(1, Relaxed);
            backoff.reset();
            tokio::time::sleep(Duration::from_millis(cfg.poll_interval_ms)).await;
        }
    }

    /// Copies batches past the cursor's watermark until one comes back short; returns
    /// when that last read started (Unix ms).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        remote: &mut Client,
        local: &mut Client,
        plan: &RemotePlan,
        cursor: &Cursor,
        wm: &mut Watermarks,
        updated: bool,
        pacer: &mut Pacer,
    ) -> Result<i64, PullError> {
        loop {
            let started = now_ms();
            let after = if updated { &wm.u } else { &wm.t };
            let batch = self
                .read(remote, plan, cursor, after.as_ref(), None, pacer)
                .await?;
            let full = batch.rows.len() == self.cfg.batch_size;
            if let Some(last) = batch.last.clone() {
                self.write(local, &batch.rows, Some((updated, &last)))
                    .await?;
                if !updated {
                    self.metrics
                        .watermark_ms
                        .store((last.epoch * 1e3) as i64, Relaxed);
                }
                *(if updated { &mut wm.u } else { &mut wm.t }) = Some(last);
            }
            if !full {
                return Ok(started);
            }
        }
    }

    /// Re-reads the rows from `look_back` before the watermark up to it, upserting what
    /// changed: a transaction that committed after a later one, with an older time,
    /// shows up here.
    async fn look_back(
        &self,
        remote: &mut Client,
        local: &mut Client,
        plan: &RemotePlan,
        cursor: &Cursor,
        w: &Mark,
        pacer: &mut Pacer,
    ) -> Result<(), PullError> {
        if self.cfg.look_back_ms == 0 {
            return Ok(());
        }
        let mut after: Option<Mark> = None;
        loop {
            let (sql, params) = plan.batch(
                cursor,
                self.cfg.batch_size,
                after.as_ref(),
                Some(w),
                Some((w, self.cfg.look_back_ms)),
            );
            let batch = self.run_read(remote, cursor, &sql, &params, pacer).await?;
            let full = batch.rows.len() == self.cfg.batch_size;
            if batch.last.is_some() {
                self.write(local, &batch.rows, None).await?;
            }
            if !full {
                return Ok(());
            }
            after = batch.last;
        }
    }

    async fn read(
        &self,
        remote: &mut Client,
        plan: &RemotePlan,
        cursor: &Cursor,
        after: Option<&Mark>,
        upto: Option<&Mark>,
        pacer: &mut Pacer,
    ) -> Result<Batch, PullError> {
        let (sql, params) = plan.batch(cursor, self.cfg.batch_size, after, upto, None);
        self.run_read(remote, cursor, &sql, &params, pacer).await
    }

    /// One remote query in a read-only repeatable-read transaction.
    async fn run_read(
        &self,
        remote: &mut Client,
        cursor: &Cursor,
        sql: &str,
        params: &[String],
        pacer: &mut Pacer,
    ) -> Result<Batch, PullError> {
        pacer.wait().await;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let tx = remote
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| PullError::remote(&e))?;
        let rows = tx
            .query(sql, &refs)
            .await
            .map_err(|e| PullError::remote(&e))?;
        tx.commit().await.map_err(|e| PullError::remote(&e))?;
        pacer.spent(rows.len());
        self.metrics.batches.fetch_add(1, Relaxed);
        self.metrics.rows_read.fetch_add(rows.len() as u64, Relaxed);
        let last = match rows.last() {
            Some(r) => Some(self.mark_of(r, cursor)?),
            None => None,
        };
        Ok(Batch { rows, last })
    }

    fn mark_of(&self, row: &Row, cursor: &Cursor) -> Result<Mark, PullError> {
        let mut vals = Vec::with_capacity(cursor.positions.len());
        for &p in &cursor.positions {
            let v: Option<String> = row.try_get(p).map_err(|e| PullError::remote(&e))?;
            vals.push(v.ok_or_else(|| {
                PullError::new(
                    "remote_schema",
                    format!(
                        "a remote row of {} has a NULL key column {:?}; key columns must be \
                         NOT NULL",
                        self.cfg.remote_table, self.local_plan.columns[p]
                    ),
                )
            })?);
        }
        let epoch: Option<f64> = row
            .try_get(self.local_plan.columns.len())
            .map_err(|e| PullError::remote(&e))?;
        let t = vals.remove(0);
        Ok(Mark {
            t,
            key: vals,
            epoch: epoch.unwrap_or(0.0),
        })
    }

    /// Upserts `rows` and, when given, stores the watermark, in one local transaction.
    async fn write(
        &self,
        local: &mut Client,
        rows: &[Row],
        mark: Option<(bool, &Mark)>,
    ) -> Result<(), PullError> {
        let n = self.local_plan.columns.len();
        let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); n];
        for r in rows {
            for (i, col) in columns.iter_mut().enumerate() {
                col.push(r.try_get(i).map_err(|e| PullError::remote(&e))?);
            }
        }
        let refs: Vec<&(dyn ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
        let tx = local
            .transaction()
            .await
            .map_err(|e| PullError::local(&e))?;
        let changed = tx
            .execute(&self.local_plan.upsert, &refs)
            .await
            .map_err(|e| PullError::local(&e))?;
        if let Some((updated, m)) = mark {
            watermark::store(&tx, &self.cfg.name, updated, m)
                .await
                .map_err(|e| PullError::local(&e))?;
        }
        tx.commit().await.map_err(|e| PullError::local(&e))?;
        self.metrics.rows.fetch_add(changed, Relaxed);
        Ok(())
    }

    /// The newest row on `cursor` now.
    async fn newest(
        &self,
        remote: &mut Client,
        plan: &RemotePlan,
        cursor: &Cursor,
    ) -> Result<Option<Mark>, PullError> {
        let sql = plan.newest(cursor);
        let row = remote
            .query_opt(&sql, &[])
            .await
            .map_err(|e| PullError::remote(&e))?;
        match row {
            Some(r) => Ok(Some(self.mark_of(&r, cursor)?)),
            None => Ok(None),
        }
    }
}
