//! The dispatcher: the task that turns `kpi.alert_history` into notifications.
//!
//! It LISTENs on `kpi_alerts`, and on each NOTIFY (or every `poll_interval_ms`
//! without one) routes new transitions ([`outbox::intake`]), escalates what has waited
//! too long ([`outbox::escalate`]), and claims due notification groups with a lease,
//! each flushed by a task of its own ([`flush`]), so a slow receiver holds up nothing
//! but its own group. All of its state is in the database: any number of notifiers
//! share the work, and one that dies loses nothing but its leases, which run out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::channels::Channels;
use super::config::AlertingConfig;
use super::flush::{self, Claimed, Context};
use super::outbox;
use super::routing::RouteTree;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// `application_name` of the dispatcher's connections.
pub const APP_NAME: &str = "pg_kpi_notifier_alerts";
const CHANNEL: &str = "kpi_alerts";

pub struct Dispatcher {
    pg: tokio_postgres::Config,
    cfg: AlertingConfig,
    tree: Arc<RouteTree>,
    channels: Arc<Channels>,
    /// This notifier's name on the leases it holds.
    owner: String,
    external_url: String,
    grace: Duration,
}

impl Dispatcher {
    /// `None` when this notifier does not deliver alerts (disabled, or no route).
    /// `bound` is the address the server listens on, for links when no
    /// `external_url` is set.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        bound: SocketAddr,
    ) -> Result<Option<Dispatcher>, String> {
        let cfg = &config.alerting;
        let Some(route) = cfg.route.as_ref().filter(|_| cfg.enabled) else {
            return Ok(None);
        };
        let external_url = if cfg.external_url.is_empty() {
            format!("http://{bound}")
        } else {
            cfg.external_url.trim_end_matches('/').to_string()
        };
        Ok(Some(Dispatcher {
            pg: crate::db::pg_config(config, APP_NAME)?,
            tree: Arc::new(RouteTree::new(route)?),
            channels: Arc::new(Channels::new(cfg, metrics)?),
            owner: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            external_url,
            grace: Duration::from_millis(config.shutdown_grace_ms),
            cfg: cfg.clone(),
        }))
    }

    /// Runs until shutdown, reconnecting after database errors.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut sends = JoinSet::new();
        let permits = Arc::new(Semaphore::new(self.cfg.max_concurrent_sends));
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_shutting_down() {
            let result = tokio::select! {
                r = self.connected(&mut sends, &permits, &mut backoff) => r,
                _ = shutdown.wait() => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, retry_in = ?backoff, "alert dispatcher lost the database");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        // Sends in flight get the grace period; a group cut off is sent again by the
        // next notifier to take it, once its lease runs out.
        let drained = tokio::time::timeout(self.grace, async {
            while sends.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = sends.len(),
                "alert sends still running at shutdown; their groups will be sent again"
            );
        }
    }

    /// One connected session: returns only with an error.
    async fn connected(
        &self,
        sends: &mut JoinSet<()>,
        permits: &Arc<Semaphore>,
        backoff: &mut Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let wake = Arc::new(Notify::new());
        let mut main = self.connect(Some(wake.clone())).await?;
        let shared = Arc::new(self.connect(None).await?);
        main.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        *backoff = Duration::from_millis(100);
        tracing::info!(owner = %self.owner, "alert dispatcher connected");
        let ctx = Arc::new(Context {
            db: shared,
            channels: self.channels.clone(),
            tree: self.tree.clone(),
            owner: self.owner.clone(),
            lease: Duration::from_millis(self.cfg.lease_ms),
            external_url: self.external_url.clone(),
        });
        let poll = Duration::from_millis(self.cfg.poll_interval_ms);
        let mut last_escalation = tokio::time::Instant::now() - poll;
        loop {
            while outbox::intake(&mut main, &self.tree).await? > 0 {}
            if last_escalation.elapsed() >= poll {
                outbox::escalate(&mut main, &self.tree).await?;
                rearm_forgotten(&main).await?;
                last_escalation = tokio::time::Instant::now();
            }
            while sends.try_join_next().is_some() {}
            let free = permits.available_permits();
            let claimed = if free > 0 {
                claim(&main, &self.owner, ctx.lease, free).await?
            } else {
                Vec::new()
            };
            for group in claimed {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    break;
                };
                let ctx = ctx.clone();
                sends.spawn(async move {
                    if let Err(e) = flush::flush(&ctx, &group).await {
                        tracing::warn!(receiver = %group.receiver, group = %group.group_key, error = %e,
                                       "flushing an alert group failed; it is retried when its lease runs out");
                    }
                    drop(permit);
                });
            }
            let wait = next_due(&main).await?.map_or(poll, |d| d.min(poll));
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = sends.join_next(), if !sends.is_empty() => {}
            }
            if main.is_closed() {
                // The next query reports why.
                main.simple_query("SELECT 1").await?;
            }
        }
    }

    /// A connection whose NOTIFYs wake `wake` (when given).
    async fn connect(&self, wake: Option<Arc<Notify>>) -> Result<Client, tokio_postgres::Error> {
        let (client, mut connection) = self.pg.connect(NoTls).await?;
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        if let Some(w) = &wake {
                            w.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "alert dispatcher connection closed");
                        break;
                    }
                }
            }
        });
        Ok(client)
    }
}

/// Takes the lease of up to `limit` due groups no live notifier holds.
async fn claim(
    db: &Client,
    owner: &str,
    lease: Duration,
    limit: usize,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = db
        .query(
            "UPDATE kpi.alert_groups g SET lease_owner = $1, \
                    lease_until = now() + make_interval(secs => $2) \
              FROM (SELECT receiver, group_key FROM kpi.alert_groups \
                     WHERE next_flush_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
                     ORDER BY next_flush_at LIMIT $3 FOR UPDATE SKIP LOCKED) due \
              WHERE g.receiver = due.receiver AND g.group_key = due.group_key \
              RETURNING g.receiver, g.group_key, g.group_labels::text, g.last_sent_at",
            &[&owner, &lease.as_secs_f64(), &(limit as i64)],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let labels: String = row.try_get(2)?;
        out.push(Claimed {
            receiver: row.try_get(0)?,
            group_key: row.try_get(1)?,
            group_labels: serde_json::from_str(&labels).unwrap_or_default(),
            last_sent_at: row.try_get(3)?,
        });
    }
    Ok(out)
}

/// How long until the next group falls due (or a lease held by a dead notifier runs
/// out), if any is scheduled.
async fn next_due(db: &Client) -> Result<Option<Duration>, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT extract(epoch FROM min(greatest(next_flush_at, coalesce(lease_until, next_flush_at))) \
                                       - now())::float8 \
               FROM kpi.alert_groups WHERE next_flush_at IS NOT NULL",
            &[],
        )
        .await?;
    let secs: Option<f64> = row.try_get(0)?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 86_400.0))))
}

/// A group whose flush finished just as a new delivery was queued for it can be left
/// without a next flush (the flush's snapshot did not see the delivery); schedule it.
async fn rearm_forgotten(db: &Client) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE kpi.alert_groups g SET next_flush_at = now() \
          WHERE next_flush_at IS NULL AND EXISTS (SELECT 1 FROM kpi.alert_deliveries d \
                WHERE d.receiver = g.receiver AND d.group_key = g.group_key AND d.status = 'queued')",
        &[],
    )
    .await?;
    Ok(())
}
