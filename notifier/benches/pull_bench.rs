//! `notifier pull` benchmarks (run by `bench/pull.sh`; printed, never asserted):
//!
//! - throughput: `ROWS` (default 200,000) rows already in the remote table, copied into
//!   a local table with a KPI over it (so the capture triggers' cost is in the figure),
//!   once per batch size in `BATCHES` (default 1000,10000): rows per second from the
//!   pull's start to its watermark reaching the last row.
//! - lag: `RATE` (default 1,000) remote inserts per second for `SECS` (default 20) s
//!   by one writer (a 10-row transaction every 10 ms) while the pull polls every
//!   `POLL_MS` (default 100) ms: for every transaction, the time from its commit
//!   returning to its rows being visible locally (p50/p99/max), and the pull's own
//!   `kpi_notifier_pull_lag_seconds` gauge sampled every 100 ms.
//!
//! Two real throwaway clusters: the "remote" without pg_kpi, the local one with pg_kpi
//! preloaded. The pull runs in this process (`notifier::pull::command`), serving its
//! `/metrics` on a loopback port.
#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::time::{Duration, Instant};

use notifier::config::{Config, Overrides};
use pg_kpi_e2e::{Cluster, ClusterOptions};
use tokio_postgres::{Client, NoTls};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn connect(c: &Cluster) -> Client {
    let (client, conn) = tokio_postgres::connect(&c.url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

const TABLE: &str =
    "(id bigint PRIMARY KEY, ts timestamptz NOT NULL, amount numeric(12,2) NOT NULL, status text)";

/// Starts `notifier pull` for one job in this process; dropping the sender stops it.
fn start_pull(
    local: &Cluster,
    remote: &Cluster,
    table: &str,
    port: u16,
    extra: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
database_url = "{}"
[[pull]]
name = "{table}"
remote_url = "{}"
remote_table = "{table}"
time_column = "ts"
key_columns = ["id"]
target_table = "{table}"
{extra}
"#,
        local.database_url(),
        remote.url()
    );
    let config = Config::from_layers(
        Some(("pull_bench.toml", &text)),
        Vec::<(String, String)>::new(),
        &Overrides::default(),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        notifier::pull::command(config, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (tx, task)
}

async fn watermark_key(local: &Client, job: &str) -> Option<i64> {
    local
        .query_opt(
            "SELECT key[1]::bigint FROM kpi_pull.watermarks WHERE job = $1",
            &[&job],
        )
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get(0))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn throughput(remote: &Cluster, local: &Cluster, rows: i64, batch: usize) {
    let r = connect(remote).await;
    let l = connect(local).await;
    let table = format!("bulk_{batch}");
    r.batch_execute(&format!(
        "CREATE TABLE {table}{TABLE}; CREATE INDEX ON {table}(ts, id);
         INSERT INTO {table} SELECT i, now() - interval '1 hour' + (i / 50) * interval '10 ms',
             (i % 1000) / 10.0, 'new' FROM generate_series(1, {rows}) i;
         ANALYZE {table};"
    ))
    .await
    .unwrap();
    l.batch_execute(&format!(
        "CREATE TABLE {table}{TABLE};
         SELECT kpi.create(name => '{table}', source => '{table}', time_column => 'ts',
                           measures => 'n = count(*), total = sum(amount)');"
    ))
    .await
    .unwrap();
    let start = Instant::now();
    let (stop, task) = start_pull(
        local,
        remote,
        &table,
        pg_kpi_e2e::free_port(),
        &format!("batch_size = {batch}\nlook_back_ms = 10000"),
    );
    let deadline = start + Duration::from_secs(600);
    while watermark_key(&l, &table).await != Some(rows) {
        assert!(Instant::now() < deadline, "the copy did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let n: i64 = l
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, rows);
    println!(
        "throughput  batch_size={batch:<6} {rows} rows in {secs:.2} s = {:.0} rows/s (local table with a 2-measure KPI)",
        rows as f64 / secs
    );
    drop(stop);
    task.await.unwrap();
}

async fn lag(remote: &Cluster, local: &Cluster, rate: u64, secs: u64, poll_ms: u64) {
    let r = connect(remote).await;
    let l = connect(local).await;
    let table = "live";
    r.batch_execute(&format!(
        "CREATE TABLE {table}{TABLE}; CREATE INDEX ON {table}(ts, id);"
    ))
    .await
    .unwrap();
    l.batch_execute(&format!(
        "CREATE TABLE {table}{TABLE};
         SELECT kpi.create(name => '{table}', source => '{table}', time_column => 'ts',
                           measures => 'n = count(*), total = sum(amount)');"
    ))
    .await
    .unwrap();
    let port = pg_kpi_e2e::free_port();
    let (stop, task) = start_pull(
        local,
        remote,
        table,
        port,
        &format!("batch_size = 1000\npoll_interval_ms = {poll_ms}\nlook_back_ms = 5000"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The writer: one transaction of `per_txn` rows every 10 ms, its commit instant
    // recorded against its last id.
    let per_txn = (rate / 100).max(1) as i64;
    let writer = tokio::spawn(async move {
        let mut commits: Vec<(i64, Instant)> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut next_id = 1i64;
        while Instant::now() < end {
            tick.tick().await;
            r.execute(
                "INSERT INTO live SELECT i, clock_timestamp(), (i % 1000) / 10.0, 'new'
                 FROM generate_series($1::bigint, $2::bigint) i",
                &[&next_id, &(next_id + per_txn - 1)],
            )
            .await
            .unwrap();
            next_id += per_txn;
            commits.push((next_id - 1, Instant::now()));
        }
        commits
    });
    // The observer: the newest id visible locally, every 5 ms, and the lag gauge.
    let observer = tokio::spawn(async move {
        let mut seen: Vec<(i64, Instant)> = Vec::new();
        let mut gauge: Vec<f64> = Vec::new();
        let mut last_scrape = Instant::now();
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/metrics");
        let end = Instant::now() + Duration::from_secs(secs + 10);
        while Instant::now() < end {
            let max: Option<i64> = l
                .query_one("SELECT max(id) FROM live", &[])
                .await
                .unwrap()
                .get(0);
            if let Some(m) = max {
                if seen.last().map(|s| s.0) != Some(m) {
                    seen.push((m, Instant::now()));
                }
            }
            if last_scrape.elapsed() >= Duration::from_millis(100) {
                last_scrape = Instant::now();
                if let Ok(resp) = http.get(&url).send().await {
                    let text = resp.text().await.unwrap_or_default();
                    if let Some(v) = text.lines().find_map(|line| {
                        line.strip_prefix("kpi_notifier_pull_lag_seconds{job=\"live\"} ")?
                            .trim()
                            .parse::<f64>()
                            .ok()
                    }) {
                        gauge.push(v);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (seen, gauge)
    });
    let commits = writer.await.unwrap();
    let (seen, mut gauge) = observer.await.unwrap();
    let total_rows = commits.last().map(|c| c.0).unwrap_or(0);
    let mut lags: Vec<f64> = Vec::new();
    let mut missing = 0;
    for (id, at) in &commits {
        match seen.iter().find(|(m, _)| m >= id) {
            Some((_, v)) => lags.push(v.saturating_duration_since(*at).as_secs_f64() * 1e3),
            None => missing += 1,
        }
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    gauge.sort_by(|a, b| a.total_cmp(b));
    println!(
        "lag         {} remote rows in {secs} s = {:.0} inserts/s ({} transactions of {per_txn}), poll_interval_ms={poll_ms}",
        total_rows,
        total_rows as f64 / secs as f64,
        commits.len()
    );
    println!(
        "lag         commit -> visible locally: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} transactions never seen)",
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        missing
    );
    println!(
        "lag         kpi_notifier_pull_lag_seconds sampled every 100 ms: p50 {:.3} s, p99 {:.3} s ({} samples)",
        pct(&gauge, 0.5),
        pct(&gauge, 0.99),
        gauge.len()
    );
    // What the look-back costs the remote: rows read per row copied.
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("kpi_notifier_pull_{name}{{job=\"live\"}} "))?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(f64::NAN)
    };
    let (read, copied, batches) = (
        series("rows_read_total"),
        series("rows_total"),
        series("batches_total"),
    );
    println!(
        "lag         remote reads: {read:.0} rows read for {copied:.0} copied ({:.1}x, the look-back's re-reads), {batches:.0} queries",
        read / copied
    );
    drop(stop);
    task.await.unwrap();
}

fn main() {
    // The /metrics scraper is a reqwest client.
    notifier::tls::install_crypto_provider();
    let rows: i64 = env_or("ROWS", 200_000);
    let batches: String = env_or("BATCHES", "1000,10000".to_string());
    let rate: u64 = env_or("RATE", 1_000);
    let secs: u64 = env_or("SECS", 20);
    let poll_ms: u64 = env_or("POLL_MS", 100);
    let remote = Cluster::start_with(ClusterOptions {
        preload: false,
        create_extension: false,
        ..ClusterOptions::default()
    });
    let local = Cluster::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("notifier pull benchmark (remote without pg_kpi -> local with pg_kpi; one machine, loopback)");
        for b in batches.split(',').filter_map(|b| b.trim().parse().ok()) {
            throughput(&remote, &local, rows, b).await;
        }
        lag(&remote, &local, rate, secs, poll_ms).await;
    });
}
