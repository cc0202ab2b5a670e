//! Bad input over real sockets: each gets its defined answer (error message or close
//! code) and a metric, and a well-behaved client on the same notifier keeps receiving
//! updates throughout.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::{SinkExt, StreamExt};
use notifier::config::Config;
use pg_kpi_e2e::Cluster;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(15);

struct Env {
    cluster: Arc<Cluster>,
    n: Notifier,
    /// The latest `k` value seen by a well-behaved client that reads continuously in
    /// the background (so it also answers pings).
    healthy: watch::Receiver<serde_json::Value>,
}

async fn setup(tweak: impl FnOnce(&mut Config)) -> Env {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let mut cfg = config(&cluster);
    tweak(&mut cfg);
    let n = Notifier::start(cfg).await;
    let mut client = WsClient::connect(&n.ws_url("/ws")).await;
    client.send(&subscribe(&["k"])).await;
    let first = client.json(T).await;
    assert_eq!(first["type"], "snapshot");
    let (tx, healthy) = watch::channel(first);
    tokio::spawn(async move {
        while let Some(Ok(m)) = client.ws.next().await {
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["kpi"], "k", "the healthy client only gets k values: {v}");
                tx.send_replace(v);
            }
        }
    });
    Env {
        cluster,
        n,
        healthy,
    }
}

impl Env {
    async fn client(&self) -> WsClient {
        WsClient::connect(&self.n.ws_url("/ws")).await
    }

    /// The well-behaved client is still connected and gets a fresh update with the
    /// database's exact values, and the notifier is ready.
    async fn still_healthy(mut self) {
        let before = self.healthy.borrow().clone()["version"].as_i64().unwrap();
        exec(&self.cluster, "INSERT INTO orders(v) VALUES (1)").await;
        let v = tokio::time::timeout(
            T,
            self.healthy
                .wait_for(|v| v["version"].as_i64() > Some(before)),
        )
        .await
        .expect("the healthy client got no update")
        .expect("the healthy client was disconnected")
        .clone();
        assert_eq!(v["type"], "update");
        let db = db_snapshot(&self.cluster, "k").await;
        if db["version"] == v["version"] {
            assert_eq!(measures(&v["data"]), measures(&db));
        }
        let (status, _) = self.n.readyz().await;
        assert_eq!(status, 200);
    }

    async fn metric(&self, series: &str) -> f64 {
        self.n.metric(series).await
    }

    /// Polls a metric until it reaches `at_least`.
    async fn metric_reaches(&self, series: &str, at_least: f64) {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let v = self.metric(series).await;
            if v >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} = {v}, wanted >= {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_an_error_then_close_4400() {
    let env = setup(|_| {}).await;
    let mut c = env.client().await;
    c.send_text("{\"op\": \"subscribe\", \"kpis\": [").await;
    let v = c.json(T).await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_message"))
    );
    assert_eq!(c.close_code(T).await, Some(4400));
    assert_eq!(
        env.metric("kpi_notifier_ws_closes_total{code=\"4400\"}")
            .await,
        1.0
    );
    assert_eq!(
        env.metric("kpi_notifier_client_errors_total{code=\"bad_message\"}")
            .await,
        1.0
    );
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_get_an_error_and_the_connection_stays() {
    let env = setup(|_| {}).await;
    let mut c = env.client().await;
    c.send(&json!({"op": "explode"})).await;
    assert_eq!(c.json(T).await["code"], "unknown_op");
    c.send(&json!({"type": "subscribe", "kpis": ["k"]})).await;
    assert_eq!(c.json(T).await["code"], "bad_message");
    c.send(&json!([1, 2, 3])).await;
    assert_eq!(c.json(T).await["code"], "bad_message");
    c.send(&json!({"op": "ping"})).await;
    assert_eq!(c.json(T).await, json!({"type": "pong"}));
    assert_eq!(
        env.metric("kpi_notifier_client_errors_total{code=\"unknown_op\"}")
            .await,
        1.0
    );
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kpis_are_refused_one_by_one() {
    let env = setup(|_| {}).await;
    let mut c = env.client().await;
    c.send(&json!({"op": "subscribe", "kpis": ["nope", "Robert'); DROP TABLE orders;--", "k"]}))
        .await;
    let a = c.json(T).await;
    assert_eq!(
        (a["code"].as_str(), a["kpi"].as_str()),
        (Some("unknown_kpi"), Some("nope"))
    );
    let b = c.json(T).await;
    assert_eq!(b["code"], "unknown_kpi");
    let s = c.json(T).await;
    assert_eq!(
        (s["type"].as_str(), s["kpi"].as_str()),
        (Some("snapshot"), Some("k"))
    );
    assert_eq!(
        env.metric("kpi_notifier_client_errors_total{code=\"unknown_kpi\"}")
            .await,
        2.0
    );
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_frame_closes_1009() {
    let env = setup(|_| {}).await;
    let c = env.client().await;
    let (mut tx, mut rx) = c.ws.split();
    let big = format!(
        "{{\"op\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    // The server refuses the frame from its header, while the client is still writing
    // it; read the close concurrently.
    let sender = tokio::spawn(async move { tx.send(Message::text(big)).await });
    let code = tokio::time::timeout(T, async {
        while let Some(m) = rx.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
            if m.is_err() {
                return None;
            }
        }
        None
    })
    .await
    .expect("the server neither closed nor dropped the connection");
    let _ = sender.await;
    if let Some(code) = code {
        assert_eq!(code, 1009);
    }
    env.metric_reaches("kpi_notifier_ws_closes_total{code=\"1009\"}", 1.0)
        .await;
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribes_a_second_are_rate_limited_then_closed() {
    let env = setup(|_| {}).await;
    let mut c = env.client().await;
    let flood = async {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for _ in 0..1000 {
            tick.tick().await;
            if c.ws
                .send(Message::text(subscribe(&["k"]).to_string()))
                .await
                .is_err()
            {
                break; // closed by the server
            }
        }
    };
    flood.await;
    let (mut snapshots, mut limited) = (0, 0);
    let code = loop {
        match c.next(T).await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                match (v["type"].as_str(), v["code"].as_str()) {
                    (Some("snapshot"), _) => snapshots += 1,
                    (Some("error"), Some("rate_limited")) => limited += 1,
                    other => panic!("unexpected {other:?}: {v}"),
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            // The flood may still be in the server's receive buffer when it closes; the
            // kernel then resets the connection and the close frame can be lost.
            Some(Err(_)) | None => break None,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(matches!(code, Some(4429) | None), "{code:?}");
    assert_eq!(limited, 1, "told once");
    assert!(
        (1..=80).contains(&snapshots),
        "{snapshots} subscribes were served"
    );
    assert_eq!(
        env.metric("kpi_notifier_ws_closes_total{code=\"4429\"}")
            .await,
        1.0
    );
    assert_eq!(
        env.metric("kpi_notifier_client_errors_total{code=\"rate_limited\"}")
            .await,
        1.0
    );
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_as_too_slow() {
    let env = setup(|c| {
        c.ws.ping_interval_ms = 200;
        c.ws.idle_timeout_ms = 1_000;
        c.limits.send_timeout_ms = 1_000;
    })
    .await;
    let mut c = env.client().await;
    c.send(&subscribe(&["k"])).await;
    env.metric_reaches("kpi_notifier_connections{transport=\"ws\"}", 2.0)
        .await;
    // From here on `c` never reads: it neither takes updates nor answers pings.
    for i in 0..20 {
        exec(&env.cluster, &format!("INSERT INTO orders(v) VALUES ({i})")).await;
    }
    env.metric_reaches("kpi_notifier_ws_closes_total{code=\"4002\"}", 1.0)
        .await;
    // Only the healthy client is left once the server has given up on the slow one
    // (after at most a second waiting for its close reply).
    let deadline = tokio::time::Instant::now() + T;
    while env
        .metric("kpi_notifier_connections{transport=\"ws\"}")
        .await
        != 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow client was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // When the slow client finally reads, it finds the close frame 4002 after what was
    // buffered, unless its own queued pong replies hit the closed socket first and
    // surface as a reset: either way the connection is gone.
    let code = c.close_code(T).await;
    assert!(matches!(code, Some(4002) | None), "{code:?}");
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_since_values_are_refused() {
    let env = setup(|_| {}).await;
    let mut c = env.client().await;
    for since in [
        json!("41"),
        json!({"k": -1}),
        json!({"k": "41"}),
        json!({"k": 1.5}),
        json!({"k": 1e300}),
        json!({"other": 1}),
        json!([41]),
    ] {
        c.send(&json!({"op": "subscribe", "kpis": ["k"], "since": since}))
            .await;
        let v = c.json(T).await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some("bad_since")),
            "{since}"
        );
    }
    c.send(&json!({"op": "subscribe", "kpis": ["k"], "since": {"k": 0}}))
        .await;
    assert_eq!(
        c.json(T).await["type"],
        "snapshot",
        "the connection is still usable"
    );
    assert_eq!(
        env.metric("kpi_notifier_client_errors_total{code=\"bad_since\"}")
            .await,
        7.0
    );
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_close_1003() {
    let env = setup(|_| {}).await;
    let mut c = env.client().await;
    c.ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    assert_eq!(c.close_code(T).await, Some(1003));
    env.still_healthy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_subscription_limits() {
    let env = setup(|c| {
        c.limits.max_connections = 3;
        c.limits.max_subscriptions = 1;
    })
    .await;
    let mut c = env.client().await;
    c.send(&subscribe(&["k", "k2"])).await;
    // k2 does not exist, but the limit is checked per new subscription: k takes the
    // only slot, k2 is refused as unknown first. Subscribe to k again (not a new slot).
    assert_eq!(c.json(T).await["type"], "snapshot");
    assert_eq!(c.json(T).await["code"], "unknown_kpi");
    exec(
        &env.cluster,
        "CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now());
         SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', measures => 'n = count(*)');
         INSERT INTO t2 DEFAULT VALUES;",
    )
    .await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        c.send(&subscribe(&["k2"])).await;
        let v = c.json(T).await;
        if v["code"] == "too_many_subscriptions" {
            break;
        }
        assert_eq!(v["code"], "unknown_kpi", "{v}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two connections are open (healthy + c); a third fits, a fourth does not.
    let _third = env.client().await;
    let err = tokio_tungstenite::connect_async(env.n.ws_url("/ws"))
        .await
        .expect_err("the fourth connection must be refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 503),
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    assert_eq!(
        env.metric("kpi_notifier_rejected_total{reason=\"too_many_connections\"}")
            .await,
        1.0
    );
    env.still_healthy().await;
}
