//! Notifier benchmarks (run by `bench/notifier_bench.sh`; results are printed, never
//! asserted):
//!
//! - freshness: commit-to-client latency p50/p99 while the database takes single-row
//!   INSERTs at `FRESH_RATE`/s (default 2,000) from 4 connections;
//! - fan-out: `FANOUT_CLIENTS` (default 10,000) WebSocket clients subscribed to a KPI
//!   that changes `FANOUT_HZ` (default 10) times a second: delivery latency p50/p99
//!   and the notifier's RSS.
//!
//! A real throwaway cluster (pg_kpi preloaded, fold worker on) and the real `notifier`
//! binary in its own process, so its RSS and CPU are its own. Latency is measured in
//! this process from the moment the INSERT's commit returned to the moment a client
//! decoded a value that includes that row.
#![allow(clippy::unwrap_used)] // a benchmark fails loudly

mod baseline;
mod clients;
mod rounds;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use pg_kpi_e2e::Cluster;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The freshness KPI (the fan-out phase creates its own, `f`).
const SETUP: &str = "CREATE TABLE orders(ts timestamptz NOT NULL DEFAULT now(), v int);
    SELECT kpi.create(name => 'k', source => 'orders', time_column => 'ts',
                      measures => 'n = count(*), total = sum(v)');";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The parts of a server message the benchmark reads.
#[derive(Deserialize)]
struct Msg {
    #[serde(default)]
    version: i64,
    #[serde(default)]
    data: Option<Data>,
}
#[derive(Deserialize)]
struct Data {
    measures: Measures,
}
#[derive(Deserialize)]
struct Measures {
    n: Window,
}
#[derive(Deserialize)]
struct Window {
    today: i64,
}

fn count_of(text: &str) -> Option<(i64, i64)> {
    let m: Msg = serde_json::from_str(text).ok()?;
    Some((m.version, m.data?.measures.n.today))
}

/// User + system CPU seconds process `pid` has used so far.
fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// The notifier binary in its own process.
struct NotifierProcess {
    child: Child,
    port: u16,
}

impl NotifierProcess {
    fn spawn(cluster: &Cluster) -> NotifierProcess {
        let port = pg_kpi_e2e::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_notifier"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &cluster.database_url()])
            .env("KPI_LIMITS__MAX_CONNECTIONS", "20000")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start the notifier binary");
        NotifierProcess { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// User + system CPU seconds used so far.
    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.pid())
    }

    async fn wait_ready(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        for _ in 0..600 {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("notifier never became ready");
    }

    /// `GET /metrics`, as text.
    async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl NotifierProcess {
    /// The notifier's own view: NOTIFY-to-send and publish-to-send p50 and p99.
    async fn print_send_latency(&self) {
        println!(
            "  notifier-side: NOTIFY-to-send {} ; publish-to-send {}",
            self.histogram_ms("notify_to_send_seconds", &[0.5, 0.99])
                .await
                .join(" "),
            self.histogram_ms("publish_to_send_seconds", &[0.5, 0.99])
                .await
                .join(" ")
        );
    }

    /// Approximate quantiles (bucket upper bounds) of a notifier histogram, in ms.
    async fn histogram_ms(&self, name: &str, qs: &[f64]) -> Vec<String> {
        let text = self.metrics_text().await;
        let prefix = format!("kpi_notifier_{name}_bucket{{le=\"");
        let buckets: Vec<(String, f64)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(&prefix)?;
                let (le, n) = rest.split_once("\"} ")?;
                Some((le.to_string(), n.parse().ok()?))
            })
            .collect();
        let total = buckets.last().map_or(0.0, |b| b.1);
        qs.iter()
            .map(|q| {
                let le = buckets
                    .iter()
                    .find(|(_, n)| *n >= q * total)
                    .map_or("?".to_string(), |(le, _)| le.clone());
                match le.parse::<f64>() {
                    Ok(s) => format!("p{}<={}ms", (q * 100.0) as u32, s * 1e3),
                    Err(_) => format!("p{}>{}", (q * 100.0) as u32, le),
                }
            })
            .collect()
    }
}

impl Drop for NotifierProcess {
    fn drop(&mut self) {
        // SIGTERM (graceful), then make sure it is gone.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn pg(cluster: &Cluster) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(port: u16, kpi: &str) -> Ws {
    // Small buffers, as the notifier uses: 10,000 clients at 128 KiB each add up.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(cfg), false)
        .await
        .unwrap();
    let sub = format!(r#"{{"op":"subscribe","kpis":["{kpi}"]}}"#);
    ws.send(Message::text(sub)).await.unwrap();
    ws
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn print_latencies(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "  {label}: n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        ms.len(),
        percentile(&ms, 0.50),
        percentile(&ms, 0.90),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

/// Current row count of a table.
async fn current_count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn freshness(cluster: &Arc<Cluster>, notifier: &NotifierProcess) {
    let rate: u64 = env_or("FRESH_RATE", 2_000);
    let secs: u64 = env_or("FRESH_SECS", 10);
    let writers: u64 = 4;
    println!("freshness: {rate} single-row INSERTs/s for {secs} s from {writers} connections, one WebSocket client");
    let mut ws = ws_connect(notifier.port, "k").await;
    let base = current_count(&pg(cluster).await, "orders").await;
    let total = (rate * secs) as i64;

    // Reader: (count seen, when), every time the count grows.
    let seen: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let now = Instant::now();
                    if let Some((_, n)) = count_of(t.as_str()) {
                        seen.lock().unwrap().push((n - base, now));
                        if n - base >= total {
                            return;
                        }
                    }
                }
            }
        })
    };

    let commits: Arc<Mutex<Vec<Instant>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (cluster, commits) = (cluster.clone(), commits.clone());
        let per_writer = total / writers as i64;
        let period = Duration::from_secs_f64(writers as f64 / rate as f64);
        tasks.push(tokio::spawn(async move {
            let c = pg(&cluster).await;
            let stmt = c.prepare("INSERT INTO orders(v) VALUES (1)").await.unwrap();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..per_writer {
                tick.tick().await;
                c.execute(&stmt, &[]).await.unwrap();
                commits.lock().unwrap().push(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let write_secs = started.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
    let mut commits = commits.lock().unwrap().clone();
    commits.sort();
    let seen = seen.lock().unwrap().clone();
    // Row i (in commit order) is delivered by the first value whose count is >= i.
    let mut lat = Vec::with_capacity(commits.len());
    let mut j = 0;
    for (i, committed) in commits.iter().enumerate() {
        while j < seen.len() && seen[j].0 < i as i64 + 1 {
            j += 1;
        }
        let Some((_, at)) = seen.get(j) else { break };
        lat.push(at.saturating_duration_since(*committed).as_secs_f64() * 1e3);
    }
    println!(
        "  achieved {:.0} inserts/s ({} rows in {:.1} s); {} updates received; {} of {} rows seen",
        commits.len() as f64 / write_secs,
        commits.len(),
        write_secs,
        seen.len(),
        lat.len(),
        commits.len()
    );
    // Where the tail sits in time: the worst latency of the rows committed each second.
    let worst: Vec<String> = commits
        .iter()
        .zip(&lat)
        .fold(Vec::<f64>::new(), |mut acc, (c, l)| {
            let second = c.saturating_duration_since(started).as_secs() as usize;
            if acc.len() <= second {
                acc.resize(second + 1, 0.0);
            }
            acc[second] = acc[second].max(*l);
            acc
        })
        .iter()
        .map(|w| format!("{w:.0}"))
        .collect();
    print_latencies("commit-to-client", lat);
    println!(
        "  worst commit-to-client by second of the run (ms): {}",
        worst.join(" ")
    );
    notifier.print_send_latency().await;
}

async fn fanout(cluster: &Arc<Cluster>, notifier: &NotifierProcess) {
    let clients: usize = env_or("FANOUT_CLIENTS", 10_000);
    let hz: u64 = env_or("FANOUT_HZ", 10);
    let secs: u64 = env_or("FANOUT_SECS", 10);
    let updates = (hz * secs) as usize;
    println!("fan-out: {clients} WebSocket clients on one KPI updated {hz}x/s for {secs} s");
    let (rss0, _) = notifier.rss_mib();
    let writer = pg(cluster).await;
    // A table and KPI of its own, and a VACUUM, so the freshness run's 20,000 rows in
    // one bucket (and the dead tuples they left) do not slow this phase's reads.
    writer
        .batch_execute(
            "CREATE TABLE ticks(ts timestamptz NOT NULL DEFAULT now());
             SELECT kpi.create(name => 'f', source => 'ticks', time_column => 'ts',
                               measures => 'n = count(*)');",
        )
        .await
        .unwrap();
    // On its own: a multi-statement batch is one transaction, and VACUUM refuses that.
    writer.batch_execute("VACUUM").await.unwrap();
    // Wait for the notifier to know the new KPI (its first fold announces it).
    writer
        .execute("INSERT INTO ticks DEFAULT VALUES", &[])
        .await
        .unwrap();
    for _ in 0..200 {
        let r = reqwest::get(format!("http://127.0.0.1:{}/api/kpis/f", notifier.port)).await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = current_count(&writer, "ticks").await;
    let target = base + updates as i64;
    let frame_len = snapshot_len(notifier.port, "f").await;
    let before =
        tokio::task::spawn_blocking(move || baseline::run(clients, hz, updates, frame_len))
            .await
            .unwrap();
    print_baseline("before", &before);

    let connect_started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let port = notifier.port;
    let (subscribed, frame_bytes) =
        tokio::task::spawn_blocking(move || clients::connect(port, "f", clients, 2 * threads))
            .await
            .unwrap();
    let (rss_idle, _) = notifier.rss_mib();
    println!(
        "  {} clients connected and subscribed in {:.1} s ({frame_bytes}-byte frames); notifier RSS {rss0:.0} MiB before, {rss_idle:.0} MiB with all clients idle",
        subscribed.len(),
        connect_started.elapsed().as_secs_f64(),
    );
    // Stragglers are stopped 60 s after the last commit.
    let stop = Arc::new(AtomicBool::new(false));
    let receivers = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            clients::Receivers::start(subscribed, target, updates + 4, threads, &stop)
        })
        .await
        .unwrap()
    };

    let cpu0 = notifier.cpu_secs();
    // The clients share the notifier's cores: what they take is printed too.
    let own_cpu0 = cpu_secs_of(std::process::id());
    let stmt = writer
        .prepare("INSERT INTO ticks DEFAULT VALUES")
        .await
        .unwrap();
    let mut commit_at: Vec<Instant> = Vec::with_capacity(updates);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / hz as f64));
    let started = Instant::now();
    for _ in 0..updates {
        tick.tick().await;
        writer.execute(&stmt, &[]).await.unwrap();
        commit_at.push(Instant::now());
    }
    let write_secs = started.elapsed().as_secs_f64();
    let (rss_busy, _) = notifier.rss_mib();
    // Give stragglers time to get the final value, then stop the rest.
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    // Closed when this function returns, after the notifier's CPU and RSS are read.
    let received = tokio::task::spawn_blocking(move || receivers.join())
        .await
        .unwrap();
    let rounds = rounds::Rounds::of(&received, base, &commit_at);
    stopper.abort();
    let cpu = notifier.cpu_secs() - cpu0;
    let own_cpu = cpu_secs_of(std::process::id()) - own_cpu0;
    let (rss_end, hwm) = notifier.rss_mib();
    println!(
        "  {updates} commits in {write_secs:.1} s; {}/{clients} clients got the final value; \
         {} deliveries = {:.1}% of {} possible (the rest skipped to a newer value)",
        rounds.complete,
        rounds.delivered,
        100.0 * rounds.delivered as f64 / (clients * updates) as f64,
        clients * updates
    );
    rounds.print("commit");
    notifier.print_send_latency().await;
    println!(
        "  notifier RSS {rss_busy:.0} MiB during updates, {rss_end:.0} MiB at the end, peak {hwm:.0} MiB; \
         {cpu:.1} CPU-s over the run ({:.0}% of one core); the {clients} clients took {own_cpu:.1} CPU-s",
        100.0 * cpu / write_secs.max(0.001)
    );
    println!(
        "  notifier counters: messages_sent={} updates_dropped={}",
        notifier
            .metric("kpi_notifier_messages_sent_total{transport=\"ws\"}")
            .await,
        notifier
            .metric("kpi_notifier_updates_dropped_total{transport=\"ws\"}")
            .await
    );
    drop(received);
    let after = tokio::task::spawn_blocking(move || baseline::run(clients, hz, updates, frame_len))
        .await
        .unwrap();
    print_baseline("after", &after);
    let floor = |f: fn(&rounds::Rounds) -> f64| (f(&before.rounds) + f(&after.rounds)) / 2.0;
    println!(
        "  notifier / baseline (mean of before and after): p99 {:.1} / {:.1} ms = {:.2}; spread p50 {:.1} / {:.1} ms = {:.2}",
        rounds.p99(),
        floor(rounds::Rounds::p99),
        rounds.p99() / floor(rounds::Rounds::p99),
        rounds.spread_p50(),
        floor(rounds::Rounds::spread_p50),
        rounds.spread_p50() / floor(rounds::Rounds::spread_p50),
    );
}

/// The length of a KPI's snapshot message, as a client receives it.
async fn snapshot_len(port: u16, kpi: &str) -> usize {
    let mut ws = ws_connect(port, kpi).await;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            return t.len();
        }
    }
    panic!("no snapshot of {kpi}");
}

fn print_baseline(when: &str, run: &baseline::Run) {
    println!(
        "  baseline {when} (a bare server writing the same frames to the same clients; see baseline.rs): \
         {}/{} deliveries, server {:.1} CPU-s, clients {:.1} CPU-s",
        run.rounds.delivered,
        run.possible,
        run.server_cpu,
        run.clients_cpu
    );
    run.rounds.print("tick");
}

fn nofile_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("Max open files: unknown")
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>()
        .join(" / ")
}

fn main() {
    // Re-run as the fan-out baseline's server (see baseline.rs).
    if let Ok(frame_len) = std::env::var(baseline::SERVER_ENV) {
        baseline::serve(frame_len.parse().unwrap_or(300));
        return;
    }
    // `cargo bench` passes --bench; nothing here takes arguments.
    println!(
        "pg_kpi notifier benchmarks (open files soft/hard limit: {})",
        nofile_limit()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
        {
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.exec(SETUP))
                .await
                .unwrap();
        }
        let interval: String = pg(&cluster)
            .await
            .query_one(
                "SELECT current_setting('pg_kpi.fold_min_interval_ms', true)",
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.get::<_, Option<String>>(0))
            .unwrap_or_else(|| "?".into());
        println!("cluster up (pg_kpi.fold_min_interval_ms = {interval})");
        let notifier = NotifierProcess::spawn(&cluster);
        notifier.wait_ready().await;
        println!(
            "notifier pid {} ready on 127.0.0.1:{}",
            notifier.pid(),
            notifier.port
        );
        if std::env::var("SKIP_FRESHNESS").is_err() {
            freshness(&cluster, &notifier).await;
        }
        if std::env::var("SKIP_FANOUT").is_err() {
            fanout(&cluster, &notifier).await;
        }
        drop(notifier);
    });
}
