//! The `alerts` topic end to end: a real cluster whose alerts fire, are acknowledged and
//! resolve, and real WebSocket and SSE clients that get the alerts now and then every
//! transition, in order, within their token's scope; that resume after a given id from
//! the database; and that get a clear error for a bad `since` or `Last-Event-ID`.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use notifier::config::{Secret, StaticToken};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(10);
const ALL: &str = "all-kpis-token-0123456789";
const K2: &str = "k2-only-token-0123456789";

async fn setup() -> (Arc<pg_kpi_e2e::Cluster>, Notifier) {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now());
         SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', measures => 'n = count(*)');
         SELECT kpi.create_alert('orders_high', 'k', 'n >= 2', '10 minutes', severity => 'critical');
         SELECT kpi.create_alert('t2_seen', 'k2', 'n >= 1', '10 minutes');",
    )
    .await;
    let mut cfg = config(&cluster);
    cfg.auth.tokens = vec![
        StaticToken {
            name: "ops".into(),
            token: Secret(ALL.into()),
            kpis: vec!["*".into()],
            ingest: vec![],
        },
        StaticToken {
            name: "k2".into(),
            token: Secret(K2.into()),
            kpis: vec!["k2".into()],
            ingest: vec![],
        },
    ];
    let n = Notifier::start(cfg).await;
    (cluster, n)
}

/// Fires, acknowledges and resolves `orders_high`, each in its own transaction.
async fn episode(cluster: &Arc<pg_kpi_e2e::Cluster>) {
    exec(cluster, "INSERT INTO orders(v) VALUES (1), (2)").await;
    exec(cluster, "SELECT kpi.evaluate_alerts()").await;
    exec(
        cluster,
        "SELECT kpi.ack_alert(id, 'alice', 'on it') FROM kpi.alerts WHERE alert = 'orders_high'",
    )
    .await;
    exec(cluster, "DELETE FROM orders").await;
    exec(cluster, "SELECT kpi.evaluate_alerts()").await;
}

/// `(id, to_state)` of every transition in the history.
async fn history(cluster: &pg_kpi_e2e::Cluster) -> Vec<(i64, String)> {
    pg(cluster)
        .await
        .query(
            "SELECT id, to_state FROM kpi.alert_history ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The next `n` `alert` messages of a WebSocket client.
async fn ws_alerts(ws: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = ws.json(T).await;
        assert_eq!(m["type"], "alert", "{m}");
        out.push(m);
    }
    out
}

fn id_state(m: &Value) -> (i64, String) {
    (
        m["id"].as_i64().unwrap(),
        m["state"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_get_every_transition_in_order_within_their_scope() {
    let (cluster, mut n) = setup().await;
    let mut ws = WsClient::connect(&n.ws_url(&format!("/ws?token={ALL}"))).await;
    ws.send(&json!({"op": "subscribe_alerts"})).await;
    let first = ws.json(T).await;
    assert_eq!(first["type"], "alerts", "{first}");
    assert_eq!(first["since"], json!(0));
    assert_eq!(first["alerts"][0]["alert"], "orders_high");
    assert_eq!(first["alerts"][0]["state"], "inactive");
    let mut scoped = WsClient::connect(&n.ws_url(&format!("/ws?token={K2}"))).await;
    scoped.send(&json!({"op": "subscribe_alerts"})).await;
    let list = scoped.json(T).await;
    let kpis: Vec<&str> = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kpi"].as_str().unwrap())
        .collect();
    assert_eq!(
        kpis,
        ["k2"],
        "k's alert is outside the k2 token's scope: {list}"
    );

    episode(&cluster).await;
    let h = history(&cluster).await;
    let got: Vec<(i64, String)> = ws_alerts(&mut ws, h.len())
        .await
        .iter()
        .map(id_state)
        .collect();
    assert_eq!(got, h, "every transition, once, in commit order");
    assert!(got.iter().any(|(_, s)| s == "acknowledged"), "{got:?}");
    // The messages carry what a dashboard shows.
    ws.send(&json!({"op": "subscribe_alerts", "since": h[0].0 - 1}))
        .await;
    let replayed = ws_alerts(&mut ws, h.len()).await;
    let firing = replayed.iter().find(|m| m["state"] == "firing").unwrap();
    assert_eq!(firing["kpi"], "k");
    assert_eq!(firing["alert"], "orders_high");
    assert_eq!(firing["severity"], "critical");
    assert_eq!(firing["value"].as_f64(), Some(2.0));
    assert_eq!(firing["threshold"].as_f64(), Some(2.0));
    let acked = replayed
        .iter()
        .find(|m| m["state"] == "acknowledged")
        .unwrap();
    assert_eq!(
        (acked["by"].as_str(), acked["note"].as_str()),
        (Some("alice"), Some("on it"))
    );

    // The scoped client was sent none of k's transitions: its first alert message is
    // k2's, which committed after all of them.
    exec(&cluster, "INSERT INTO t2 DEFAULT VALUES").await;
    exec(&cluster, "SELECT kpi.evaluate_alerts()").await;
    let m = ws_alerts(&mut scoped, 1).await;
    assert_eq!(
        (m[0]["kpi"].as_str(), m[0]["alert"].as_str()),
        (Some("k2"), Some("t2_seen")),
        "{}",
        m[0]
    );

    // Resuming after the second transition replays the rest from the database.
    let h = history(&cluster).await;
    let mut again = WsClient::connect(&n.ws_url(&format!("/ws?token={ALL}"))).await;
    again
        .send(&json!({"op": "subscribe_alerts", "since": h[1].0}))
        .await;
    let rest: Vec<(i64, String)> = ws_alerts(&mut again, h.len() - 2)
        .await
        .iter()
        .map(id_state)
        .collect();
    assert_eq!(rest, h[2..]);

    // A bad since is refused and the connection stays.
    for bad in [json!(-1), json!("x")] {
        again
            .send(&json!({"op": "subscribe_alerts", "since": bad}))
            .await;
        let e = again.json(T).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_since")),
            "{e}"
        );
    }
    // After unsubscribe_alerts, a transition every subscriber got (ws) is not sent:
    // subscribing again starts with the list.
    again.send(&json!({"op": "unsubscribe_alerts"})).await;
    again.send(&json!({"op": "ping"})).await;
    assert_eq!(again.json(T).await["type"], "pong");
    exec(&cluster, "INSERT INTO orders(v) VALUES (1), (2)").await;
    exec(&cluster, "SELECT kpi.evaluate_alerts()").await;
    let newest = history(&cluster).await.last().unwrap().0;
    let mut heard = false;
    for _ in 0..100 {
        let m = ws.json(T).await;
        if m["type"] == "alert" && m["id"] == json!(newest) {
            heard = true;
            break;
        }
    }
    assert!(heard, "ws never got transition {newest}");
    again.send(&json!({"op": "subscribe_alerts"})).await;
    let next = again.json(T).await;
    assert_eq!(
        next["type"], "alerts",
        "nothing after unsubscribe_alerts: {next}"
    );
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_transitions_and_resumes_from_last_event_id() {
    let (cluster, mut n) = setup().await;
    let mut sse = SseClient::connect(&n.url(&format!("/sse/alerts?token={ALL}")), None).await;
    let first = sse.next(T).await.unwrap();
    assert_eq!(first.data["type"], "alerts", "{:?}", first.data);
    assert_eq!(first.id.as_deref(), Some("0"));

    episode(&cluster).await;
    let h = history(&cluster).await;
    let mut got = Vec::new();
    while got.len() < h.len() {
        let e = sse.next(T).await.unwrap();
        assert_eq!(
            e.id,
            Some(e.data["id"].to_string()),
            "the event id is the transition's"
        );
        got.push(id_state(&e.data));
    }
    assert_eq!(got, h);

    // EventSource reconnects with the last id it saw: the rest, not the list.
    let mut resumed = SseClient::connect(
        &n.url(&format!("/sse/alerts?token={ALL}")),
        Some(&h[0].0.to_string()),
    )
    .await;
    let mut rest = Vec::new();
    while rest.len() < h.len() - 1 {
        rest.push(id_state(&resumed.next(T).await.unwrap().data));
    }
    assert_eq!(rest, h[1..]);

    let r = reqwest::Client::new()
        .get(n.url(&format!("/sse/alerts?token={ALL}")))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_last_event_id", "{body}");
    let r = reqwest::get(n.url("/sse/alerts")).await.unwrap();
    assert_eq!(r.status(), 401);
    n.stop().await;
}
