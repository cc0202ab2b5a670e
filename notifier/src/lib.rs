//! The pg_kpi notifier: pushes KPI changes from Postgres to dashboards.
//!
//! One LISTEN connection learns which KPIs changed, re-reads them, and publishes each new
//! version once to a per-KPI latest-value channel; WebSocket, SSE and REST clients read
//! from those channels. Postgres stays the only stateful component, so replicas are
//! interchangeable.
//!
//! Where to look:
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | the one configuration struct and its layers (defaults < file < env < flags) |
//! | [`dashboard`] | `[[dashboards]]`: the web page's layouts, validated, and resolved against the KPIs |
//! | [`feed`] | the change feed: how values get from Postgres into per-topic channels |
//! | [`feed::listen`] | the supervised LISTEN connection: reconnect, reload, coalesced snapshot reads, fold timer |
//! | [`feed::fold_watch`] | `kpi.status()` polled: stalls reported, and the notifier's fallback fold |
//! | [`feed::hub`] | per-KPI `watch` channels: the latest value of each topic, frames serialized once |
//! | [`feed::cursor`] | what a subscriber has of a topic, and which frame a newer value needs |
//! | [`feed::filter`] | dimension filters and topics: a KPI, whole or restricted to some dimension values |
//! | [`feed::alert_events`] | the `alerts` topic: alert transitions as they commit |
//! | [`alerts`] | alert delivery: routing, grouping, silences, escalation, channels, the outbox's leases |
//! | [`fanout`] | each new value written straight into every subscribed WebSocket |
//! | [`serve`](mod@serve) | serving: the shared state handlers get, and everything clients talk to |
//! | [`serve::http`] | the router (`app`), Origin/CORS, error metrics, health |
//! | [`serve::ws`] | `GET /ws` sessions |
//! | [`serve::sse`] | `GET /sse` event streams |
//! | [`serve::api`] | `GET /api/kpis…` and `GET /api/alerts` JSON endpoints |
//! | [`serve::assets`] | the dashboard page and its assets (`dashboard/dist`), embedded at compile time |
//! | [`serve::auth`] | bearer tokens: static keys and HS256 JWTs, KPI scopes |
//! | [`serve::subscription`] | subscribing a client to a topic, and the first read of a new filter |
//! | [`pull`](mod@pull) | `[[pull]]`: copying tables from databases without pg_kpi, by watermark |
//! | [`protocol`] | client and server messages, error codes, WebSocket close codes |
//! | [`db`] | connection settings and the API's query connection |
//! | [`metrics`] | Prometheus counters, gauges and the latency histogram |
//! | [`error`] | the HTTP error enum (JSON body, logged once), and `truncate` for quoting client text |
//! | [`shutdown`] | SIGTERM/ctrl-c and the shutdown flag every task watches |
//!
//! Layering: `feed` never imports `serve`. The feed publishes values into the
//! [`feed::hub::Hub`] and reports its health on two watch channels
//! ([`feed::listen::Status`], [`feed::fold_watch::FoldHealth`]); `serve` keeps those in
//! [`serve::Shared`] and reads the feed through them alone. Reading a new dimension
//! filter's first value is a request's business, so it is done by `serve`
//! ([`serve::subscription`], on the API connection), not by the feed. `fanout` is the
//! hub's delivery arm: the hub hands it each new value, and `serve::ws` registers its
//! sockets with it. The top-level modules are shared by all of them.
//!
//! [`serve()`] takes an already bound listener and a shutdown future from its caller, so
//! tests bind port 0 and stop the server when they want.

pub mod alerts;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod fanout;
pub mod feed;
pub mod ingest;
pub mod metrics;
pub mod protocol;
pub mod pull;
pub mod serve;
pub mod shutdown;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

pub use config::Config;

/// Why the server could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The tasks that feed the shared state, not yet running.
pub struct Feeds {
    pub listener: feed::listen::Listener,
    pub fold_watch: feed::fold_watch::FoldWatch,
    pub alert_watcher: feed::alert_events::AlertWatcher,
}

/// Builds the shared state and the tasks that feed it.
pub fn state(
    config: Config,
    shutdown: shutdown::Shutdown,
) -> Result<(serve::AppState, Feeds), ServeError> {
    let listen_pg = db::pg_config(&config, db::LISTEN_APP_NAME).map_err(ServeError::Config)?;
    let api_pg = db::pg_config(&config, db::API_APP_NAME).map_err(ServeError::Config)?;
    let watch_pg = db::pg_config(&config, db::FOLD_WATCH_APP_NAME).map_err(ServeError::Config)?;
    let alerts_pg = db::pg_config(&config, db::ALERT_FEED_APP_NAME).map_err(ServeError::Config)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let hub = Arc::new(feed::hub::Hub::with_metrics(metrics.clone()));
    let (status_tx, status_rx) = feed::listen::status_channel();
    let listener = feed::listen::Listener {
        pg: listen_pg,
        db: config.database.clone(),
        fold_interval: (config.fold_interval_ms > 0)
            .then(|| Duration::from_millis(config.fold_interval_ms)),
        hub: hub.clone(),
        metrics: metrics.clone(),
        status: status_tx,
    };
    let (fold_tx, fold_rx) = feed::fold_watch::health_channel();
    let fold_watch = feed::fold_watch::FoldWatch {
        pg: watch_pg,
        db: config.database.clone(),
        cfg: config.fold.clone(),
        metrics: metrics.clone(),
        health: fold_tx,
    };
    let alerts = Arc::new(feed::alert_events::AlertFeed::default());
    let alert_watcher = feed::alert_events::AlertWatcher {
        pg: alerts_pg,
        db: config.database.clone(),
        feed: alerts.clone(),
    };
    let state = Arc::new(serve::Shared {
        alerts,
        auth: serve::auth::Auth::new(&config.auth),
        connections: Arc::new(Semaphore::new(config.limits.max_connections)),
        db: db::ApiDb::new(api_pg),
        hub,
        ingest: Arc::new(ingest::Ingest::new(&config).map_err(ServeError::Config)?),
        metrics,
        status: status_rx,
        fold: fold_rx,
        shutdown,
        config,
    });
    Ok((
        state,
        Feeds {
            listener,
            fold_watch,
            alert_watcher,
        },
    ))
}

/// Turns Nagle's algorithm off on an accepted connection.
///
/// Every frame the notifier pushes is small and must leave at once. With Nagle on, a
/// frame sent while the client has not yet acknowledged the previous one waits for that
/// acknowledgement, and clients delay theirs by up to 40 ms: an update following a
/// snapshot, or a fan-out that reaches a client late and the next value right after,
/// would arrive tens of milliseconds late.
fn no_delay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
    }
}

/// Serves until `shutdown` resolves, then closes every connection gracefully.
///
/// Refuses to start on a non-loopback address when no tokens are configured (checked
/// on the address actually bound, whatever `config.listen` says).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    tls::install_crypto_provider();
    let addr = listener.local_addr()?;
    config::check_bind_allowed(addr, config.auth_enabled()).map_err(ServeError::Config)?;
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let max_connections = config.limits.max_connections;
    let (trigger, flag) = shutdown::channel();
    let (state, feeds) = state(config, flag.clone())?;
    // [[pull]] jobs: a missing local target is a startup error, like a config mistake.
    let pull_jobs = pull::prepare(&state.config, &state.metrics.pull)
        .await
        .map_err(ServeError::Config)?;
    tracing::info!(
        %addr,
        auth = state.auth.enabled(),
        fold_interval_ms = state.config.fold_interval_ms,
        "notifier listening"
    );
    let dispatcher =
        alerts::dispatcher::Dispatcher::new(&state.config, state.metrics.clone(), addr)
            .map_err(ServeError::Config)?;
    let listen_thread = feeds.listener.spawn(flag.clone())?;
    let fold_watch = tokio::spawn(feeds.fold_watch.run(flag.clone()));
    let alert_watcher = tokio::spawn(feeds.alert_watcher.run(flag.clone()));
    let dispatcher = dispatcher.map(|d| tokio::spawn(d.run(flag.clone())));
    // Warns once ready about dashboard widgets naming KPIs or measures that do not exist.
    tokio::spawn(dashboard::resolve::warn_at_start(state.clone()));
    let ingest_check = tokio::spawn(state.ingest.clone().check_all());
    let pull = tokio::spawn(pull::run(pull_jobs, flag.clone()));
    // The caller's future only fires the flag; everything else watches the flag.
    let watcher = tokio::spawn(async move {
        shutdown.await;
        trigger.fire();
        // Keep the sender alive until serve returns, so waiters see `true`, not a drop.
        std::future::pending::<()>().await;
    });
    let mut graceful = flag.clone();
    let result = axum::serve(listener.tap_io(no_delay), serve::http::app(state.clone()))
        .with_graceful_shutdown(async move { graceful.wait().await })
        .await;
    // axum stops waiting for a connection once it is upgraded to a WebSocket; those
    // hold a connection permit until their close handshake is done.
    let open = shutdown::drain(&state.connections, max_connections, grace).await;
    if open > 0 {
        tracing::warn!(
            open,
            "shutdown grace period over; dropping open connections"
        );
    }
    // The LISTEN thread sees the same flag; give it 5 s, then leave it to the exit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !listen_thread.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(d) = dispatcher {
        // It gives its sends in flight the grace period, then returns.
        if tokio::time::timeout(grace + Duration::from_secs(1), d)
            .await
            .is_err()
        {
            tracing::warn!("alert dispatcher did not stop in time");
        }
    }
    watcher.abort();
    fold_watch.abort();
    alert_watcher.abort();
    ingest_check.abort();
    pull.abort();
    tracing::info!("notifier stopped");
    result.map_err(ServeError::Io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::serve::{Listener, ListenerExt};

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = listener.tap_io(super::no_delay);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }
}
