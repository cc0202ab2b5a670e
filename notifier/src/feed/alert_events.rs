//! The `alerts` topic: every alert transition (`kpi.alert_history`), as it commits, for
//! dashboards on WebSocket (`{"op":"subscribe_alerts"}`) and SSE (`/sse/alerts`).
//!
//! One task LISTENs on `kpi_alerts` (each transition NOTIFYs it in the transaction that
//! makes it) and reads the rows past the last id it has seen, so a NOTIFY that arrives
//! while it reads, or several folded into one, loses nothing; a reconnect resumes from
//! the same id. Each row is serialized once and broadcast to every alert subscriber;
//! they filter by their token's scope.
//!
//! Unlike a KPI, a transition is an event, not a latest value: a client that falls
//! more than [`BUFFER`] transitions behind is told to resume, and does so from the
//! database by id (`since` on WebSocket, `Last-Event-ID` on SSE): the history is the
//! log, the broadcast only its live tail.

use super::AbortOnDrop;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, Notify};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::config::DatabaseConfig;
use crate::shutdown::Shutdown;

/// The NOTIFY channel the extension announces transitions on.
const CHANNEL: &str = "kpi_alerts";

/// Transitions the live tail holds for a slow subscriber.
pub const BUFFER: usize = 1024;

/// Most rows one read (live or replay) takes.
pub const BATCH: i64 = 500;

/// Without a NOTIFY (one lost with a connection), look anyway this often.
const POLL: Duration = Duration::from_secs(2);

/// One transition, ready to send: `{"type":"alert","id":…,"kpi":…,…}`.
#[derive(Debug)]
pub struct AlertEvent {
    pub id: i64,
    pub kpi: String,
    pub frame: String,
}

/// The rows past `$1`, oldest first, as frames.
pub const EVENTS_SQL: &str = "SELECT id, kpi, jsonb_build_object( \
       'type', 'alert', 'id', id, 'kpi', kpi, 'alert', rule, 'group_by', group_by, \
       'group_value', group_value, 'from', from_state, 'state', to_state, \
       'value', value::float8, 'threshold', threshold::float8, 'severity', severity, \
       'labels', labels, 'summary', summary, 'at', at, 'started_at', started_at, \
       'by', actor, 'note', note)::text \
     FROM kpi.alert_history WHERE id > $1 ORDER BY id LIMIT $2";

/// Reads transitions past `after` (at most [`BATCH`]).
pub async fn read_after(db: &Client, after: i64) -> Result<Vec<AlertEvent>, tokio_postgres::Error> {
    let rows = db.query(EVENTS_SQL, &[&after, &BATCH]).await?;
    rows.iter()
        .map(|r| {
            Ok(AlertEvent {
                id: r.try_get(0)?,
                kpi: r.try_get(1)?,
                frame: r.try_get(2)?,
            })
        })
        .collect()
}

/// The live tail subscribers receive from.
pub struct AlertFeed {
    tx: broadcast::Sender<Arc<AlertEvent>>,
    /// The newest id broadcast (or, before the first, the newest at start-up).
    last: AtomicI64,
}

impl Default for AlertFeed {
    fn default() -> Self {
        AlertFeed {
            tx: broadcast::channel(BUFFER).0,
            last: AtomicI64::new(-1),
        }
    }
}

impl AlertFeed {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AlertEvent>> {
        self.tx.subscribe()
    }

    /// The newest transition id the feed has passed on; -1 before it has connected.
    pub fn last_id(&self) -> i64 {
        self.last.load(Ordering::Acquire)
    }
}

/// The task that feeds [`AlertFeed`].
pub struct AlertWatcher {
    pub pg: tokio_postgres::Config,
    pub db: DatabaseConfig,
    pub feed: Arc<AlertFeed>,
}

impl AlertWatcher {
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
            tracing::debug!(%error, "alert feed connection lost; reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => break,
            }
            backoff = (backoff * 2).min(max);
        }
    }

    async fn session(&self, backoff: &mut Duration, min: Duration) -> String {
        let wake = Arc::new(Notify::new());
        let (client, mut connection) = match self.pg.connect(NoTls).await {
            Ok(c) => c,
            Err(e) => return format!("connect: {e}"),
        };
        let notified = wake.clone();
        // The driver ends with the connection; the session notices on its next query.
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(_) = m {
                    notified.notify_one();
                }
            }
        });
        let _abort = AbortOnDrop(driver);
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            return format!("LISTEN: {e}");
        }
        // The first connection starts at the newest row: subscribers replay older ones
        // from the database themselves.
        if self.feed.last_id() < 0 {
            match client
                .query_one("SELECT coalesce(max(id), 0) FROM kpi.alert_history", &[])
                .await
                .and_then(|r| r.try_get::<_, i64>(0))
            {
                Ok(id) => self.feed.last.store(id, Ordering::Release),
                Err(e) => return format!("reading the newest transition: {e}"),
            }
        }
        *backoff = min;
        loop {
            loop {
                let events = match read_after(&client, self.feed.last_id()).await {
                    Ok(e) => e,
                    Err(e) => return format!("reading transitions: {e}"),
                };
                let full = events.len() as i64 >= BATCH;
                for e in events {
                    self.feed.last.store(e.id, Ordering::Release);
                    // No subscriber is no error: nobody is watching.
                    let _ = self.feed.tx.send(Arc::new(e));
                }
                if !full {
                    break;
                }
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            if client.is_closed() {
                return "connection closed".into();
            }
        }
    }
}
