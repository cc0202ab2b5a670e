//! Shared helpers for the notifier's end-to-end tests: a real throwaway cluster (the
//! `pg_kpi_e2e` harness), the real notifier served in-process on 127.0.0.1:0, and real
//! WebSocket (tokio-tungstenite) and SSE (reqwest streaming) clients.
#![allow(dead_code, clippy::unwrap_used)]

pub mod alerting;
pub mod receiver;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use notifier::config::{Config, Secret};
use pg_kpi_e2e::Cluster;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A table and a KPI over it: `n` rows and `total` of `v`.
pub const SETUP: &str = "CREATE TABLE orders(ts timestamptz NOT NULL DEFAULT now(), v int);
    SELECT kpi.create(name => 'k', source => 'orders', time_column => 'ts',
                      measures => 'n = count(*), total = sum(v)');";

pub fn init_tracing() {
    // The tests' own reqwest clients need the process's TLS provider too.
    notifier::tls::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("notifier=info")),
        )
        .with_test_writer()
        .try_init();
}

/// Starts a cluster (blocking work, so off the async threads).
pub async fn cluster() -> Arc<Cluster> {
    init_tracing();
    Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap())
}

pub async fn cluster_with(opts: pg_kpi_e2e::ClusterOptions) -> Arc<Cluster> {
    init_tracing();
    Arc::new(
        tokio::task::spawn_blocking(move || Cluster::start_with(opts))
            .await
            .unwrap(),
    )
}

/// Runs SQL through the harness's synchronous client.
pub async fn exec(cluster: &Arc<Cluster>, sql: &str) {
    let c = cluster.clone();
    let sql = sql.to_string();
    tokio::task::spawn_blocking(move || c.exec(&sql))
        .await
        .unwrap();
}

pub async fn restart(cluster: &Arc<Cluster>) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .unwrap();
}

/// An async connection for writes in a loop.
pub async fn pg(cluster: &Cluster) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// `kpi.snapshot(name)` as the database has it now.
pub async fn db_snapshot(cluster: &Cluster, kpi: &str) -> Value {
    let c = pg(cluster).await;
    let row = c
        .query_one("SELECT kpi.snapshot($1)::text", &[&kpi])
        .await
        .unwrap();
    serde_json::from_str(&row.get::<_, String>(0)).unwrap()
}

/// A config for tests: the cluster's database, quick reconnects and timers.
pub fn config(cluster: &Cluster) -> Config {
    let mut c = Config {
        database_url: Secret(cluster.database_url()),
        ..Config::default()
    };
    c.database.reconnect_min_ms = 50;
    c.database.reconnect_max_ms = 500;
    c.shutdown_grace_ms = 2_000;
    c
}

/// A notifier served in-process.
pub struct Notifier {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), notifier::ServeError>>>,
}

impl Notifier {
    pub async fn start(config: Config) -> Notifier {
        let n = Self::start_unready(config).await;
        n.wait_ready(Duration::from_secs(30)).await;
        n
    }

    pub async fn start_unready(config: Config) -> Notifier {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(notifier::serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Notifier {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn readyz(&self) -> (u16, Value) {
        let r = reqwest::get(self.url("/readyz")).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.readyz().await;
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "notifier not ready: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops the server (as SIGTERM would) and waits for `serve` to return.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("serve did not return")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client.
pub struct WsClient {
    pub ws: Ws,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        WsClient { ws }
    }

    pub async fn send(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).await.unwrap();
    }

    /// The next JSON message (pings are answered by tungstenite and skipped here).
    pub async fn json(&mut self, timeout: Duration) -> Value {
        match self.next(timeout).await {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub async fn next(
        &mut self,
        timeout: Duration,
    ) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for a WebSocket message");
            match m {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other,
            }
        }
    }

    /// Reads until a close frame; returns its code (skipping other messages).
    pub async fn close_code(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                // The server dropped the connection without a (readable) close frame.
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Waits until the KPI's latest value (snapshot or update) satisfies `pred`.
    pub async fn until(
        &mut self,
        kpi: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {kpi} to match");
            let v = self.json(left).await;
            if v["kpi"] == kpi
                && matches!(v["type"].as_str(), Some("snapshot" | "update"))
                && pred(&v)
            {
                return v;
            }
        }
    }
}

pub fn close_code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// An SSE client reading a streaming reqwest response.
pub struct SseClient {
    resp: reqwest::Response,
    buf: String,
}

/// One event: its `id:` and parsed `data:`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub data: Value,
}

impl SseClient {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "SSE connect {url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseClient {
            resp,
            buf: String::new(),
        }
    }

    /// The next event with data, or `None` if the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap());
                    }
                }
                if let Some(data) = data {
                    return Some(Event { id, data });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .expect("timed out waiting for an SSE event")
                .ok()??;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    pub async fn until(
        &mut self,
        kpi: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {kpi} to match");
            let e = self.next(left).await.expect("SSE stream ended");
            if e.data["kpi"] == kpi && pred(&e.data) {
                return e;
            }
        }
    }
}

/// The measure values of a snapshot, ignoring `as_of` and other time-dependent parts.
pub fn measures(snapshot: &Value) -> Value {
    snapshot["measures"].clone()
}

pub fn subscribe(kpis: &[&str]) -> Value {
    serde_json::json!({"op": "subscribe", "kpis": kpis})
}

/// `promtool check metrics` on a `/metrics` scrape; fails if promtool is missing
/// (scripts/setup.sh installs it).
pub async fn promtool_check(text: String) {
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
