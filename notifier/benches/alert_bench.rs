//! Alert delivery benchmarks (run by `bench/alert_delivery.sh`; printed, never
//! asserted):
//!
//! - latency: `CROSSINGS` (default 200) commits that each make a new alert instance
//!   cross its threshold (`for` = 0, `group_wait` = 0), once spaced 200 ms apart and
//!   once back to back (each right after the previous one's evaluation, so it waits out
//!   `pg_kpi.alert_interval_ms`: the worst case). For each, the time from the
//!   commit returning to the webhook receiving the firing notification, and, as the
//!   baseline measured from the same commits, to a WebSocket client receiving the KPI's
//!   new value: p50/p99 of both and their ratio. The alert's path is the KPI's (fold)
//!   plus rule evaluation, the outbox and the HTTP send.
//! - storm: one commit that makes `STORM` (default 1,000) instances of one rule cross
//!   at once, routed to two receivers: one grouping by alert name (few notifications
//!   holding every instance), one by every label (one notification per instance).
//!   Every instance must arrive once at each: lost and duplicated ones are counted,
//!   and the time to the last delivery printed.
//!
//! A real throwaway cluster (pg_kpi preloaded, the fold worker evaluating the rules),
//! the real notifier served in this process, and a real HTTP receiver on loopback.
#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use futures::{SinkExt, StreamExt};
use notifier::config::{Config, Secret};
use pg_kpi_e2e::Cluster;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const SETUP: &str = "
    CREATE TABLE crossings_src(ts timestamptz NOT NULL DEFAULT now(), c int NOT NULL);
    SELECT kpi.create(name => 'crossings', source => 'crossings_src', time_column => 'ts',
                      measures => 'n = count(*)', dimensions => '{c}');
    SELECT kpi.create_alert('crossed', 'crossings', 'n >= 1', '1 hour', group_by => 'c');
    CREATE TABLE storm_src(ts timestamptz NOT NULL DEFAULT now(), region text NOT NULL);
    SELECT kpi.create(name => 'storm', source => 'storm_src', time_column => 'ts',
                      measures => 'n = count(*)', dimensions => '{region}');
    SELECT kpi.create_alert('storm', 'storm', 'n >= 1', '1 hour', group_by => 'region');";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn alerting(hook: &str) -> notifier::alerts::config::AlertingConfig {
    let toml = format!(
        r#"
        poll_interval_ms = 1000
        [[receivers]]
        name = "crossings"
        [[receivers.webhook_configs]]
        url = "{hook}"
        [[receivers]]
        name = "storm_by_name"
        [[receivers.webhook_configs]]
        url = "{hook}"
        [[receivers]]
        name = "storm_each"
        [[receivers.webhook_configs]]
        url = "{hook}"
        [route]
        receiver = "crossings"
        group_by = ["..."]
        group_wait = "0s"
        group_interval = "1s"
        repeat_interval = "1h"
        [[route.routes]]
        matchers = ['alertname="storm"']
        receiver = "storm_by_name"
        group_by = ["alertname"]
        continue = true
        [[route.routes]]
        matchers = ['alertname="storm"']
        receiver = "storm_each"
        "#
    );
    toml::from_str(&toml).unwrap()
}

/// What the receiver got: when, and the body.
type Received = mpsc::UnboundedSender<(Instant, Value)>;

async fn receive(State(tx): State<Received>, Json(body): Json<Value>) -> &'static str {
    let _ = tx.send((Instant::now(), body));
    "ok"
}

/// The storm's receivers.
const STORM_RECEIVERS: [&str; 2] = ["storm_by_name", "storm_each"];

/// What the storm's receivers got: instances (by dedup key), notifications, duplicates,
/// and when the last notification arrived.
#[derive(Default)]
struct Tally {
    seen: HashMap<String, HashSet<String>>,
    notifications: HashMap<String, usize>,
    duplicates: HashMap<String, usize>,
    last: HashMap<String, Duration>,
}

impl Tally {
    fn record(&mut self, body: &Value, after: Duration) {
        let receiver = body["receiver"].as_str().unwrap_or_default().to_string();
        *self.notifications.entry(receiver.clone()).or_default() += 1;
        for a in body["alerts"].as_array().into_iter().flatten() {
            if a["labels"]["alertname"] != "storm" || a["status"] != "firing" {
                continue;
            }
            let key = a["annotations"]["dedup_key"].as_str().unwrap_or_default();
            if !self
                .seen
                .entry(receiver.clone())
                .or_default()
                .insert(key.to_string())
            {
                *self.duplicates.entry(receiver.clone()).or_default() += 1;
            }
        }
        self.last.insert(receiver, after);
    }

    fn has_all(&self, n: usize) -> bool {
        STORM_RECEIVERS
            .iter()
            .all(|r| self.seen.get(*r).map_or(0, HashSet::len) >= n)
    }
}

/// Makes instance `c` of `crossed` cross in one commit; returns the milliseconds from
/// the commit returning to the webhook getting its firing notification, and to the
/// WebSocket client getting the KPI's value with the row.
async fn cross(
    client: &tokio_postgres::Client,
    c: i64,
    hooks: &mut mpsc::UnboundedReceiver<(Instant, Value)>,
    values: &mut mpsc::UnboundedReceiver<(Instant, i64)>,
) -> (f64, f64) {
    client
        .batch_execute(&format!("INSERT INTO crossings_src(c) VALUES ({c})"))
        .await
        .unwrap();
    let committed = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut alert_at, mut kpi_at) = (None, None);
    while alert_at.is_none() || kpi_at.is_none() {
        tokio::select! {
            Some((at, body)) = hooks.recv() => {
                let mine = body["alerts"].as_array().is_some_and(|a| a.iter().any(|a| {
                    a["labels"]["alertname"] == "crossed"
                        && a["labels"]["c"] == c.to_string().as_str()
                        && a["status"] == "firing"
                }));
                if mine {
                    alert_at = Some(at);
                }
            }
            Some((at, n)) = values.recv() => {
                if n > c && kpi_at.is_none() {
                    kpi_at = Some(at);
                }
            }
            _ = tokio::time::sleep_until(deadline) => panic!("crossing {c}: nothing within 30 s"),
        }
    }
    let ms = |at: Option<Instant>| {
        at.map_or(f64::NAN, |a| {
            a.saturating_duration_since(committed).as_secs_f64() * 1e3
        })
    };
    (ms(alert_at), ms(kpi_at))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // cargo bench passes --bench; nothing else is taken from the command line.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    notifier::tls::install_crypto_provider();
    let crossings: usize = env_or("CROSSINGS", 200);
    let storm: usize = env_or("STORM", 1000);
    // The harness's client is synchronous: off the async threads.
    let cluster = tokio::task::spawn_blocking(|| {
        let c = Cluster::start();
        c.exec(SETUP);
        Arc::new(c)
    })
    .await
    .unwrap();

    // The receiver.
    let (tx, mut hooks) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The notifier.
    let mut cfg = Config {
        database_url: Secret(cluster.database_url()),
        ..Config::default()
    };
    cfg.alerting = alerting(&hook);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(notifier::serve(listener, cfg, async move {
        let _ = stopped.await;
    }));
    let ready = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://{addr}/readyz"))
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < ready, "the notifier did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The baseline's client: the KPI's value on a WebSocket.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::Text(
        r#"{"op":"subscribe","kpis":["crossings"]}"#.into(),
    ))
    .await
    .unwrap();
    let (values_tx, mut values) = mpsc::unbounded_channel::<(Instant, i64)>();
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                if let Some(n) = v["data"]["measures"]["n"]["today"].as_i64() {
                    let _ = values_tx.send((Instant::now(), n));
                }
            }
        }
    });

    let db = cluster.database_url();
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);

    // Spaced: a crossing is a rare event, and the first change after a quiet spell is
    // evaluated at once. Back to back: each crossing comes right after the previous
    // one's evaluation, so it waits out pg_kpi.alert_interval_ms (100 ms by default),
    // the rate limit that batches evaluations under load: the worst case.
    let mut next_c = 0;
    for (phase, gap) in [("spaced 200 ms apart", 200u64), ("back to back", 0)] {
        println!(
            "== alert delivery latency: {crossings} crossings {phase} (for = 0, group_wait = 0) =="
        );
        let mut alert_ms = Vec::with_capacity(crossings);
        let mut kpi_ms = Vec::with_capacity(crossings);
        for _ in 0..crossings {
            let c = next_c;
            next_c += 1;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            let (alert, kpi) = cross(&client, c, &mut hooks, &mut values).await;
            alert_ms.push(alert);
            kpi_ms.push(kpi);
        }
        alert_ms.sort_by(|a, b| a.total_cmp(b));
        kpi_ms.sort_by(|a, b| a.total_cmp(b));
        let (a50, a99) = (percentile(&alert_ms, 0.5), percentile(&alert_ms, 0.99));
        let (k50, k99) = (percentile(&kpi_ms, 0.5), percentile(&kpi_ms, 0.99));
        println!("{:<38} {:>9} {:>9}", "", "p50 ms", "p99 ms");
        println!("{:<38} {a50:>9.1} {a99:>9.1}", "commit -> webhook (alert)");
        println!(
            "{:<38} {k50:>9.1} {k99:>9.1}",
            "commit -> WebSocket (KPI, baseline)"
        );
        println!(
            "{:<38} {:>9.2} {:>9.2}",
            "ratio alert / baseline",
            a50 / k50,
            a99 / k99
        );
        println!("target: alert p99 under 250 ms");
        println!();
    }

    // Drain what is left of the crossings (nothing should be).
    while hooks.try_recv().is_ok() {}

    println!();
    println!("== storm: {storm} instances of one rule crossing in one commit ==");
    let values: Vec<String> = (0..storm).map(|i| format!("('r{i}')")).collect();
    let insert = format!("INSERT INTO storm_src(region) VALUES {}", values.join(","));
    client.batch_execute(&insert).await.unwrap();
    let committed = Instant::now();
    let mut tally = Tally::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while !tally.has_all(storm) {
        tokio::select! {
            Some((at, body)) = hooks.recv() => tally.record(&body, at.saturating_duration_since(committed)),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    // Anything late is a duplicate or a stray: wait a moment for it.
    let grace = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some((at, body))) = tokio::time::timeout_at(grace, hooks.recv()).await {
        tally.record(&body, at.saturating_duration_since(committed));
    }
    let Tally {
        seen,
        notifications,
        duplicates,
        last,
    } = tally;
    println!(
        "{:<15} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "receiver", "grouping", "notified", "instances", "duplicates", "last at ms"
    );
    for (receiver, grouping) in [("storm_by_name", "alertname"), ("storm_each", "...")] {
        let got = seen.get(receiver).map_or(0, HashSet::len);
        println!(
            "{receiver:<15} {grouping:>10} {:>10} {:>10} {:>10} {:>14.0}",
            notifications.get(receiver).copied().unwrap_or(0),
            format!("{got}/{storm}"),
            duplicates.get(receiver).copied().unwrap_or(0),
            last.get(receiver)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        );
    }
    let lost: usize = STORM_RECEIVERS
        .iter()
        .map(|r| storm - seen.get(*r).map_or(0, HashSet::len).min(storm))
        .sum();
    println!(
        "lost: {lost} (target 0), duplicates: {} (target 0)",
        duplicates.values().sum::<usize>()
    );

    let _ = stop.send(());
    let _ = server.await;
}
