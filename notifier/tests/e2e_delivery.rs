//! Delivery: a committed change reaches WebSocket and SSE subscribers with the exact
//! values; clients resume by version; the REST API; graceful shutdown.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_insert_reaches_ws_and_sse_clients() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;

    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    let first = ws.json(T).await;
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["kpi"], "k");
    let v0 = first["version"].as_i64().unwrap();
    assert_eq!(
        measures(&first["data"]),
        measures(&db_snapshot(&cluster, "k").await)
    );
    let mut sse = SseClient::connect(&n.url("/sse?kpi=k"), None).await;
    let e = sse.next(T).await.unwrap();
    assert_eq!(e.data["type"], "snapshot");
    assert_eq!(e.id, Some(v0.to_string()));

    exec(&cluster, "INSERT INTO orders(v) VALUES (10), (20), (12)").await;

    let update = ws.until("k", T, |v| v["version"].as_i64() > Some(v0)).await;
    assert_eq!(update["type"], "update");
    let db = db_snapshot(&cluster, "k").await;
    assert_eq!(update["version"], db["version"]);
    assert_eq!(measures(&update["data"]), measures(&db));
    assert_eq!(update["data"]["measures"]["n"]["today"], json!(3));
    assert_eq!(
        update["data"]["measures"]["total"]["today"].as_f64(),
        Some(42.0)
    );

    let e = sse
        .until("k", T, |v| v["version"].as_i64() > Some(v0))
        .await;
    assert_eq!(e.data["type"], "update");
    assert_eq!(
        e.data, update,
        "SSE carries the same object as the WebSocket"
    );
    assert_eq!(e.id, Some(db["version"].to_string()));

    // The notify-to-send latency was measured for both clients.
    assert!(n.metric("kpi_notifier_notify_to_send_seconds_count").await >= 2.0);
    assert!(
        n.metric("kpi_notifier_messages_sent_total{transport=\"ws\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_by_version() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;

    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    let v1 = ws.json(T).await["version"].as_i64().unwrap();
    drop(ws);

    // Changes while the client is away.
    exec(&cluster, "INSERT INTO orders(v) VALUES (1)").await;
    let mut probe = WsClient::connect(&n.ws_url("/ws")).await;
    probe.send(&subscribe(&["k"])).await;
    probe
        .until("k", T, |v| v["version"].as_i64() > Some(v1))
        .await;
    let db = db_snapshot(&cluster, "k").await;
    let v2 = db["version"].as_i64().unwrap();

    // Resuming from an old version: a snapshot of the current value.
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&json!({"op":"subscribe","kpis":["k"],"since":{"k": v1}}))
        .await;
    let v = ws
        .until("k", T, |v| v["version"].as_i64() == Some(v2))
        .await;
    assert_eq!(v["type"], "snapshot");
    assert_eq!(measures(&v["data"]), measures(&db));

    // Resuming at the current version: nothing until the next change, then an update.
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&json!({"op":"subscribe","kpis":["k"],"since":{"k": v2}}))
        .await;
    ws.send(&json!({"op":"ping"})).await;
    assert_eq!(
        ws.json(T).await["type"],
        "pong",
        "no snapshot before the pong"
    );
    let mut sse = SseClient::connect(&n.url("/sse?kpi=k"), Some(&v2.to_string())).await;
    let mut sse_old = SseClient::connect(&n.url("/sse?kpi=k"), Some(&v1.to_string())).await;
    let e = sse_old.next(T).await.unwrap();
    assert_eq!(
        (e.data["type"].as_str(), e.id),
        (Some("snapshot"), Some(v2.to_string()))
    );

    exec(&cluster, "INSERT INTO orders(v) VALUES (2)").await;
    let v = ws.json(T).await;
    assert_eq!(v["type"], "update");
    assert!(v["version"].as_i64() > Some(v2));
    let e = sse.next(T).await.unwrap();
    assert_eq!(
        e.data["type"], "update",
        "the resumed SSE stream skipped the snapshot"
    );
    assert_eq!(e.data, v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_reads() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (5), (7)").await;
    let n = Notifier::start(config(&cluster)).await;
    let http = reqwest::Client::new();

    let list: serde_json::Value = http
        .get(n.url("/api/kpis"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kpis = list["kpis"].as_array().unwrap();
    assert_eq!(kpis.len(), 1);
    assert_eq!(kpis[0]["name"], "k");
    assert_eq!(kpis[0]["bucket"], "00:01:00");
    assert_eq!(kpis[0]["measures"].as_array().unwrap().len(), 2);

    // Wait for the fold of the inserts to be published.
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    ws.until("k", T, |v| v["data"]["measures"]["n"]["today"] == json!(2))
        .await;
    let one: serde_json::Value = http
        .get(n.url("/api/kpis/k"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["type"], "snapshot");
    assert_eq!(one["data"]["measures"]["n"]["today"], json!(2));

    let r = http
        .get(n.url("/api/kpis/k/series?measure=n&since=2h&step=1%20hour"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let series: serde_json::Value = r.json().await.unwrap();
    let points = series["points"].as_array().unwrap();
    assert!(!points.is_empty(), "{series}");
    let total: f64 = points.iter().filter_map(|p| p["value"].as_f64()).sum();
    assert_eq!(total, 2.0, "{series}");

    for (uri, status, code) in [
        ("/api/kpis/k/series?measure=nope", 400, "bad_request"),
        (
            "/api/kpis/k/series?measure=n&step=fortnight",
            400,
            "bad_request",
        ),
        (
            "/api/kpis/k/series?measure=n&since=30d&step=1%20minute",
            400,
            "too_many_points",
        ),
        ("/api/kpis/zz/series?measure=n", 404, "unknown_kpi"),
        ("/api/kpis/k/series?measure=n&dims=[1]", 400, "bad_request"),
    ] {
        let r = http.get(n.url(uri)).send().await.unwrap();
        let got_status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            (got_status, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{uri}: {body}"
        );
        assert!(body["error"]["message"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_1001() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let mut n = Notifier::start(config(&cluster)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["k"])).await;
    ws.json(T).await;
    let mut sse = SseClient::connect(&n.url("/sse?kpi=k"), None).await;
    sse.next(T).await.unwrap();

    let started = std::time::Instant::now();
    let stop = async { n.stop().await };
    let read = async {
        let code = ws.close_code(T).await;
        let end = sse.next(T).await;
        (code, end)
    };
    let (_, (code, end)) = tokio::join!(stop, read);
    assert_eq!(code, Some(1001));
    assert!(end.is_none(), "the SSE stream ends");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown is prompt"
    );
    // No other connection may start afterwards.
    assert!(reqwest::get(n.url("/healthz")).await.is_err());
}
