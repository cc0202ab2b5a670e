//! The fold worker killed under a live dashboard: `pg_terminate_backend` (what a DBA
//! does to a busy background process) and `kill -9`. The launcher starts a new worker
//! within 2 s, and a WebSocket client receives the next committed value from it. The
//! notifier's own fallback fold (see `e2e_fold_watch`) is off here, so it is the new
//! worker that folds.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pg_kpi_e2e::Cluster;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// How soon the worker must be back, and the value at the client after the insert.
const BACK_WITHIN: Duration = Duration::from_secs(2);
const VALUE_WITHIN: Duration = Duration::from_secs(3);

async fn worker_pid(cluster: &Arc<Cluster>) -> Option<i32> {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.fold_worker_pid())
        .await
        .unwrap()
}

/// Waits for a fold worker other than `old`; returns how long it took.
async fn new_worker_after(cluster: &Arc<Cluster>, old: i32, since: Instant) -> Duration {
    loop {
        if worker_pid(cluster).await.is_some_and(|p| p != old) {
            return since.elapsed();
        }
        assert!(since.elapsed() < T, "no new fold worker after {T:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the fold worker with `how`, then checks it is back and feeds the client.
async fn worker_killed_then_client_gets_next_value(how: &str) {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (1)").await;
    let mut cfg = config(&cluster);
    cfg.fold.fallback = false;
    let n = Notifier::start(cfg).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    ws.until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(1))
        .await;

    let old = loop {
        if let Some(pid) = worker_pid(&cluster).await {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed_at = Instant::now();
    match how {
        "terminate" => exec(&cluster, &format!("SELECT pg_terminate_backend({old})")).await,
        _ => pg_kpi_e2e::kill(old, "9"),
    }
    let took = new_worker_after(&cluster, old, killed_at).await;
    eprintln!("{how}: fold worker {old} replaced after {took:?}");
    assert!(
        took < BACK_WITHIN,
        "{how}: the worker came back after {took:?}"
    );

    // After a kill -9 every backend restarts: reconnect until the insert goes through.
    let inserted_at = loop {
        let c = cluster.clone();
        let ok = tokio::task::spawn_blocking(move || {
            c.connect()
                .batch_execute("INSERT INTO orders(v) VALUES (2)")
                .is_ok()
        })
        .await
        .unwrap();
        if ok {
            break Instant::now();
        }
        assert!(killed_at.elapsed() < T, "{how}: inserts keep failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v = ws
        .until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(2))
        .await;
    let arrived = inserted_at.elapsed();
    eprintln!("{how}: the next value reached the client {arrived:?} after its commit");
    assert!(
        arrived < VALUE_WITHIN,
        "{how}: the next value took {arrived:?}"
    );
    assert_eq!(v["data"]["measures"]["total"]["today"].as_f64(), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_fold_worker_is_back_and_feeds_clients() {
    worker_killed_then_client_gets_next_value("terminate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_fold_worker_is_back_and_feeds_clients() {
    worker_killed_then_client_gets_next_value("kill -9").await;
}
