//! Resilience: the LISTEN connection is killed, the database restarts or is down at
//! start, payloads overflow or are garbage; clients always converge to the database.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pg_kpi_e2e::Cluster;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Terminates the notifier's LISTEN backend; returns how many were terminated.
async fn terminate_listen_backend(cluster: &Cluster) -> i64 {
    let c = pg(cluster).await;
    let row = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&notifier::db::LISTEN_APP_NAME],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Waits until the database has folded all `rows` rows into `k` (no pending deltas),
/// then returns its snapshot. `kpi.snapshot` already counts pending deltas (readers see
/// exact values), but its `version` only moves when the fold runs.
async fn folded_snapshot(cluster: &Cluster, rows: i64) -> Value {
    let c = pg(cluster).await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let pending: i64 = c
            .query_one("SELECT count(*) FROM kpi.deltas", &[])
            .await
            .unwrap()
            .get(0);
        let db = db_snapshot(cluster, "k").await;
        if pending == 0 && db["measures"]["n"]["today"] == json!(rows) {
            return db;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fold never caught up: {db}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a WebSocket client until it holds exactly the database's value; asserts
/// versions never go backwards on the way.
async fn ws_converges(ws: &mut WsClient, db: &Value, last: &mut i64) {
    let target = db["version"].as_i64().unwrap();
    loop {
        let v = ws.json(T).await;
        if v["kpi"] != "k" {
            continue;
        }
        let version = v["version"].as_i64().unwrap();
        assert!(
            version >= *last,
            "version went back from {last} to {version}"
        );
        *last = version;
        if version == target {
            assert_eq!(measures(&v["data"]), measures(db));
            return;
        }
        assert!(version < target, "client is past the database: {v}");
    }
}

async fn sse_converges(sse: &mut SseClient, db: &Value) {
    let target = db["version"].as_i64().unwrap();
    let e = sse
        .until("k", T, |v| v["version"].as_i64() == Some(target))
        .await;
    assert_eq!(measures(&e.data["data"]), measures(db));
    assert_eq!(e.id, Some(target.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_update_lost_when_the_listen_backend_is_terminated() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    let mut last = ws.json(T).await["version"].as_i64().unwrap();
    let mut sse = SseClient::connect(&n.url("/sse?kpi=k"), None).await;

    let writer = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let c = pg(&cluster).await;
            let mut killed = 0;
            for i in 1..=300i32 {
                if let Err(e) = c.execute("INSERT INTO orders(v) VALUES ($1)", &[&i]).await {
                    let log = cluster.server_log();
                    let tail = &log[log.len().saturating_sub(3000)..];
                    panic!("insert {i} failed: {e:?}\nserver log tail:\n{tail}");
                }
                if i == 100 || i == 200 {
                    killed += terminate_listen_backend(&cluster).await;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            killed
        })
    };
    // The clients do not read meanwhile: they skip to the latest value afterwards.
    let killed = writer.await.unwrap();
    assert_eq!(killed, 2, "the LISTEN backend was terminated twice");
    let db = folded_snapshot(&cluster, 300).await;
    assert_eq!(db["measures"]["total"]["today"].as_f64(), Some(45150.0));
    ws_converges(&mut ws, &db, &mut last).await;
    sse_converges(&mut sse, &db).await;
    assert!(n.metric("kpi_notifier_listen_reconnects_total").await >= 2.0);
    n.wait_ready(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_missed_while_disconnected_arrive_with_the_reload() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let mut cfg = config(&cluster);
    // A long pause before reconnecting, so the changes below certainly happen while
    // nobody is listening and their NOTIFY is lost.
    cfg.database.reconnect_min_ms = 2_000;
    cfg.database.reconnect_max_ms = 2_000;
    let n = Notifier::start(cfg).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    let mut last = ws.json(T).await["version"].as_i64().unwrap();

    assert_eq!(terminate_listen_backend(&cluster).await, 1);
    exec(&cluster, "INSERT INTO orders(v) VALUES (3), (4)").await;
    let db = folded_snapshot(&cluster, 2).await;
    let (status, body) = n.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["state"], "retrying");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    ws_converges(&mut ws, &db, &mut last).await;
    n.wait_ready(T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_converge_across_a_database_restart() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    let mut last = ws.json(T).await["version"].as_i64().unwrap();
    let mut sse = SseClient::connect(&n.url("/sse?kpi=k"), None).await;

    exec(&cluster, "INSERT INTO orders(v) VALUES (1), (2), (3)").await;
    let db = folded_snapshot(&cluster, 3).await;
    ws_converges(&mut ws, &db, &mut last).await;

    // Watch /readyz while the database goes away and comes back.
    let saw_unready = Arc::new(AtomicBool::new(false));
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poller = {
        let url = n.url("/readyz");
        let (saw, stop) = (saw_unready.clone(), stop_polling.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = reqwest::get(&url).await {
                    if r.status() == 503 {
                        saw.store(true, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    restart(&cluster).await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (10), (20)").await;
    let db = folded_snapshot(&cluster, 5).await;
    ws_converges(&mut ws, &db, &mut last).await;
    sse_converges(&mut sse, &db).await;
    n.wait_ready(T).await;
    stop_polling.store(true, Ordering::Relaxed);
    poller.await.unwrap();
    assert!(
        saw_unready.load(Ordering::Relaxed),
        "/readyz reported the outage"
    );
    assert!(n.metric("kpi_notifier_listen_reconnects_total").await >= 1.0);
    assert_eq!(n.metric("kpi_notifier_ready").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_started_before_its_database_waits_for_it() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    {
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop_mode("fast"))
            .await
            .unwrap();
    }
    let n = Notifier::start_unready(config(&cluster)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = reqwest::get(n.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200, "alive while the database is down");
    let (status, body) = n.readyz().await;
    assert_eq!(status, 503);
    assert!(body["failures"].as_u64() >= Some(1), "{body}");
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    assert_eq!(ws.json(T).await["code"], "not_ready");
    let r = reqwest::get(n.url("/api/kpis")).await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable");

    restart(&cluster).await;
    n.wait_ready(T).await;
    ws.send(&subscribe(&["k"])).await;
    assert_eq!(ws.json(T).await["type"], "snapshot");
    let r = reqwest::get(n.url("/api/kpis")).await.unwrap();
    assert_eq!(r.status(), 200, "the API reconnects on demand");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_and_garbage_payloads_reload_everything() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;
    assert_eq!(n.metric("kpi_notifier_full_reloads_total").await, 1.0);

    // A KPI created after start is picked up from its first notification.
    exec(
        &cluster,
        "CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now());
         SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', measures => 'n = count(*)');
         INSERT INTO t2 DEFAULT VALUES;",
    )
    .await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        ws.send(&subscribe(&["k2"])).await;
        let v = ws.json(T).await;
        if v["type"] == "snapshot" {
            break;
        }
        assert_eq!(v["code"], "unknown_kpi");
        assert!(tokio::time::Instant::now() < deadline, "k2 never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Dropped in the database, then an overflow payload: the reload forgets it and the
    // subscriber is told.
    exec(&cluster, "SELECT kpi.drop('k2')").await;
    exec(
        &cluster,
        r#"SELECT pg_notify('kpi_changes', '{"seq":999999,"overflow":true}')"#,
    )
    .await;
    // An update of k2 from before the drop may still be on its way; skip values.
    let v = loop {
        let v = ws.json(T).await;
        if v["type"] != "snapshot" && v["type"] != "update" {
            break v;
        }
    };
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["kpi"].as_str()),
        (Some("error"), Some("unknown_kpi"), Some("k2"))
    );
    assert!(n.metric("kpi_notifier_full_reloads_total").await >= 2.0);

    exec(
        &cluster,
        "SELECT pg_notify('kpi_changes', 'not json at all')",
    )
    .await;
    let deadline = tokio::time::Instant::now() + T;
    while n.metric("kpi_notifier_notify_payload_errors_total").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.wait_ready(T).await;
    ws.send(&subscribe(&["k"])).await;
    assert_eq!(ws.json(T).await["type"], "snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fold_timer_keeps_kpis_moving_without_the_worker() {
    let cluster = cluster_with(pg_kpi_e2e::ClusterOptions {
        preload: false,
        ..Default::default()
    })
    .await;
    exec(&cluster, SETUP).await;
    let mut cfg = config(&cluster);
    cfg.fold_interval_ms = 50;
    let n = Notifier::start(cfg).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    let v0 = ws.json(T).await["version"].as_i64().unwrap();
    exec(&cluster, "INSERT INTO orders(v) VALUES (8), (9)").await;
    let v = ws.until("k", T, |v| v["version"].as_i64() > Some(v0)).await;
    assert_eq!(v["data"]["measures"]["n"]["today"], json!(2));
    assert_eq!(
        measures(&v["data"]),
        measures(&db_snapshot(&cluster, "k").await)
    );
    assert!(n.metric("kpi_notifier_fold_runs_total").await >= 1.0);
    assert_eq!(n.metric("kpi_notifier_fold_errors_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_and_recreated_kpi_is_followed_from_its_new_versions() {
    let cluster = cluster().await;
    let create = "SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', \
                  measures => 'n = count(*)');";
    exec(
        &cluster,
        &format!("CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now()); {create}"),
    )
    .await;
    let n = Notifier::start(config(&cluster)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k2"])).await;
    let mut version = ws.json(T).await["version"].as_i64().unwrap();
    // Several folds, so the old incarnation's version is well above a new one's.
    for _ in 0..4 {
        exec(&cluster, "INSERT INTO t2 DEFAULT VALUES").await;
        version = ws
            .until("k2", T, |v| v["version"].as_i64() > Some(version))
            .await["version"]
            .as_i64()
            .unwrap();
    }
    exec(
        &cluster,
        &format!("SELECT kpi.drop('k2'); {create} INSERT INTO t2 DEFAULT VALUES;"),
    )
    .await;
    // The new incarnation counts the 5 rows again (backfill); its version starts over,
    // and the client gets it as a fresh snapshot.
    let v = ws
        .until("k2", T, |v| v["version"].as_i64() < Some(version))
        .await;
    assert_eq!(v["type"], "snapshot", "{v}");
    // Then it converges to the database's value of the new incarnation.
    let c = pg(&cluster).await;
    let db = loop {
        let pending: i64 = c
            .query_one("SELECT count(*) FROM kpi.deltas", &[])
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break db_snapshot(&cluster, "k2").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v = if v["version"] == db["version"] {
        v
    } else {
        let target = db["version"].as_i64();
        ws.until("k2", T, |v| v["version"].as_i64() == target).await
    };
    assert_eq!(measures(&v["data"]), measures(&db));
    assert_eq!(db["measures"]["n"]["today"], json!(5));
}

/// A value is read and published as soon as its NOTIFY comes, even while every thread of
/// the server's runtime is busy, as in a delivery round to 10,000 clients: the change
/// feed runs on a thread and runtime of its own.
#[test]
fn values_are_published_while_the_server_runtime_is_busy() {
    // One worker, which the test keeps busy the way a long delivery round would.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cluster = cluster().await;
        exec(&cluster, SETUP).await;
        let (trigger, flag) = notifier::shutdown::channel();
        let (state, feeds) = notifier::state(config(&cluster), flag.clone()).unwrap();
        let feed = feeds.listener.spawn(flag).unwrap();
        let hub = state.hub.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while hub.current("k").is_none() {
            assert!(Instant::now() < deadline, "the feed never loaded KPI k");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = hub.current("k").unwrap().version;
        let busy = tokio::spawn(async move {
            // Blocks the only worker until the value is in the hub (or 20 s pass).
            let c = cluster.clone();
            let writer = std::thread::spawn(move || c.exec("INSERT INTO orders(v) VALUES (5)"));
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut published = None;
            while published.is_none() && Instant::now() < deadline {
                published = hub.current("k").filter(|s| s.version > before);
                std::thread::sleep(Duration::from_millis(10));
            }
            writer.join().unwrap();
            published
        });
        let snap = busy
            .await
            .unwrap()
            .expect("no new value was published while the runtime was busy");
        let frame: Value = serde_json::from_str(snap.update_frame.as_str()).unwrap();
        assert_eq!(frame["data"]["measures"]["n"]["today"], 1, "{frame}");
        assert_eq!(frame["data"]["measures"]["total"]["today"], 5, "{frame}");
        // Shutdown stops the feed's thread.
        trigger.fire();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !feed.is_finished() {
            assert!(Instant::now() < deadline, "the feed did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
