//! The notifier watching the fold: with the fold workers switched off
//! (`pg_kpi.fold_workers = off`), `/readyz` and `/metrics` report the stall, the
//! notifier folds itself so a WebSocket client keeps receiving exact values, and all of
//! it clears when the workers are back. With `fold.fallback = false` the stall is only
//! reported. `/metrics` passes `promtool check metrics` while stalled.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use notifier::config::Config;
use pg_kpi_e2e::Cluster;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Quick checks and a short lag limit, so the test does not wait seconds for a stall.
fn watch_config(cluster: &Cluster, fallback: bool) -> Config {
    let mut c = config(cluster);
    c.fold.check_interval_ms = 200;
    c.fold.lag_limit_ms = 1_000;
    c.fold.fallback_interval_ms = 50;
    c.fold.fallback = fallback;
    c
}

/// ALTER SYSTEM refuses to run inside a multi-statement batch: two calls.
async fn set_fold_workers(cluster: &Arc<Cluster>, value: &str) {
    exec(
        cluster,
        &format!("ALTER SYSTEM SET pg_kpi.fold_workers = {value}"),
    )
    .await;
    exec(cluster, "SELECT pg_reload_conf()").await;
}

async fn worker_pid(cluster: &Arc<Cluster>) -> Option<i32> {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.fold_worker_pid())
        .await
        .unwrap()
}

async fn wait_worker(cluster: &Arc<Cluster>, running: bool) {
    let deadline = Instant::now() + T;
    while worker_pid(cluster).await.is_some() != running {
        assert!(
            Instant::now() < deadline,
            "the fold worker never became running={running}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/readyz` until its `fold` object satisfies `pred`; returns the whole body.
async fn readyz_until(n: &Notifier, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (code, body) = n.readyz().await;
        assert_eq!(code, 200, "a stalled fold keeps the notifier ready: {body}");
        if pred(&body["fold"]) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pending_rows(cluster: &Cluster) -> i64 {
    pg(cluster)
        .await
        .query_one("SELECT pending_rows FROM kpi.status()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The value of one metric line (`name{labels}`) in a scrape, 0 when absent.
fn value(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A `/metrics` scrape taken while a stall is reported. With no worker, a stall lasts
/// only while deltas wait: the fallback folds them and the next check (200 ms) ends it,
/// so a row is inserted before each try to keep deltas waiting (bounded tries).
async fn scrape_while_stalled(cluster: &Arc<Cluster>, n: &Notifier) -> String {
    for _ in 0..50 {
        exec(cluster, "INSERT INTO orders(v) VALUES (0)").await;
        let scrape = n.metrics().await;
        if value(&scrape, "kpi_notifier_fold_stalled") == 1.0 {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no scrape showed the stall: {}", n.metrics().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fold_is_reported_and_folded_by_the_notifier_until_the_worker_is_back() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    wait_worker(&cluster, true).await;
    let n = Notifier::start(watch_config(&cluster, true)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    ws.until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(0))
        .await;
    readyz_until(&n, "a healthy fold", |f| {
        f["known"] == json!(true) && f["stalled"] == json!(false) && f["worker_state"] == "running"
    })
    .await;
    assert_eq!(n.metric("kpi_notifier_fold_worker_running").await, 1.0);

    set_fold_workers(&cluster, "off").await;
    wait_worker(&cluster, false).await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (1), (2)").await;

    // The fallback folds: the client gets the value without any fold worker.
    let v = ws
        .until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(2))
        .await;
    assert_eq!(
        measures(&v["data"]),
        measures(&db_snapshot(&cluster, "k").await),
        "the fallback's value is the database's"
    );
    let body = readyz_until(&n, "the stall reported", |f| {
        f["stalled"] == json!(true) && f["fallback_active"] == json!(true)
    })
    .await;
    assert_eq!(body["fold"]["worker_state"], "disabled", "{body}");
    assert!(body["fold"].get("worker_pid").is_none(), "{body}");
    let warning = body["warnings"][0].as_str().unwrap_or_default();
    assert!(warning.contains("no fold worker is running"), "{body}");
    assert!(n.metric("kpi_notifier_fallback_folds_total").await > 0.0);
    let stalled = scrape_while_stalled(&cluster, &n).await;
    assert_eq!(value(&stalled, "kpi_notifier_fold_fallback_active"), 1.0);
    assert_eq!(value(&stalled, "kpi_notifier_fold_worker_running"), 0.0);
    promtool_check(stalled).await;
    // The rows that kept deltas waiting go again (v = 0 left the sums alone).
    exec(&cluster, "DELETE FROM orders WHERE v = 0").await;

    // Every further commit keeps arriving while the workers are off.
    exec(&cluster, "INSERT INTO orders(v) VALUES (3)").await;
    let v = ws
        .until("k", T, |v| {
            v["data"]["measures"]["n"]["today"] == json!(3)
                && v["data"]["measures"]["total"]["today"].as_f64() == Some(6.0)
        })
        .await;
    assert_eq!(
        measures(&v["data"]),
        measures(&db_snapshot(&cluster, "k").await)
    );

    set_fold_workers(&cluster, "on").await;
    wait_worker(&cluster, true).await;
    readyz_until(&n, "the stall cleared", |f| {
        f["stalled"] == json!(false)
            && f["fallback_active"] == json!(false)
            && f["worker_state"] == "running"
    })
    .await;
    // The fallback has stopped: its counter stays put across several checks.
    let folds = n.metric("kpi_notifier_fallback_folds_total").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(n.metric("kpi_notifier_fallback_folds_total").await, folds);
    assert_eq!(n.metric("kpi_notifier_fold_stalled").await, 0.0);

    exec(&cluster, "INSERT INTO orders(v) VALUES (4)").await;
    ws.until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(4))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fallback_a_stall_is_only_reported() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    wait_worker(&cluster, true).await;
    let n = Notifier::start(watch_config(&cluster, false)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    ws.until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(0))
        .await;

    set_fold_workers(&cluster, "off").await;
    wait_worker(&cluster, false).await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (1)").await;
    let body = readyz_until(&n, "the stall reported", |f| f["stalled"] == json!(true)).await;
    assert_eq!(body["fold"]["fallback_active"], json!(false), "{body}");
    assert!(body["fold"]["pending_rows"].as_i64() > Some(0), "{body}");
    assert_eq!(n.metric("kpi_notifier_fold_fallback_active").await, 0.0);

    // Several checks later nothing has been folded.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(n.metric("kpi_notifier_fallback_folds_total").await, 0.0);
    assert!(pending_rows(&cluster).await > 0, "nobody folds");

    // Back on, the worker folds what waited and the client gets it.
    set_fold_workers(&cluster, "on").await;
    ws.until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(1))
        .await;
    readyz_until(&n, "the stall cleared", |f| f["stalled"] == json!(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lag_over_the_limit_is_a_stall_even_with_a_worker_running() {
    // A lock the fold needs, held past the lag limit: the worker runs but cannot fold.
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "ALTER SYSTEM SET pg_kpi.fold_lock_timeout_ms = 200",
    )
    .await;
    exec(&cluster, "SELECT pg_reload_conf()").await;
    wait_worker(&cluster, true).await;
    let n = Notifier::start(watch_config(&cluster, true)).await;
    let agg: String = pg(&cluster)
        .await
        .query_one(
            "SELECT format('kpi._agg_%s', id) FROM kpi.definitions WHERE name = 'k'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let mut locker = pg(&cluster).await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute(&format!("LOCK TABLE {agg} IN ACCESS EXCLUSIVE MODE"))
        .await
        .unwrap();
    exec(&cluster, "INSERT INTO orders(v) VALUES (1)").await;
    let body = readyz_until(&n, "the lag reported", |f| f["stalled"] == json!(true)).await;
    assert_eq!(body["fold"]["worker_state"], "running", "{body}");
    let reason = body["fold"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("limit 1 s"), "{body}");
    assert!(n.metric("kpi_notifier_fold_lag_seconds").await > 1.0);
    // The fallback's folds wait on the same lock and fail; they are counted.
    let deadline = Instant::now() + T;
    while n.metric("kpi_notifier_fallback_fold_errors_total").await == 0.0 {
        assert!(Instant::now() < deadline, "no failed fallback fold counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.rollback().await.unwrap();
    readyz_until(&n, "the stall cleared", |f| f["stalled"] == json!(false)).await;
}
