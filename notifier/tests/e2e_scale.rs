//! Scale: 1,000 concurrent WebSocket clients all end on the database's final value.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 1_000;
const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_all_receive_the_final_value() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;
    let url = n.ws_url("/ws");

    let subscribed = Arc::new(AtomicUsize::new(0));
    let (target_tx, target_rx) = watch::channel::<Option<i64>>(None);
    let connect_slots = Arc::new(tokio::sync::Semaphore::new(100));
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (url, subscribed, mut target, slots) = (
            url.clone(),
            subscribed.clone(),
            target_rx.clone(),
            connect_slots.clone(),
        );
        clients.push(tokio::spawn(async move {
            // Connect at most 100 at a time (as a fleet of dashboards would trickle in),
            // then stay connected concurrently.
            let permit = slots.acquire_owned().await.unwrap();
            let mut c = WsClient::connect(&url).await;
            c.send(&subscribe(&["k"])).await;
            let mut latest: Value = c.json(T).await;
            assert_eq!(latest["type"], "snapshot");
            drop(permit);
            subscribed.fetch_add(1, Ordering::SeqCst);
            loop {
                if let Some(t) = *target.borrow_and_update() {
                    if latest["version"].as_i64() == Some(t) {
                        return latest;
                    }
                }
                tokio::select! {
                    m = c.ws.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            assert!(v["version"].as_i64() > latest["version"].as_i64(), "versions only grow");
                            latest = v;
                        }
                        Some(Ok(_)) => {}
                        other => panic!("client lost its connection: {other:?}"),
                    },
                    _ = target.changed() => {}
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + T;
    while subscribed.load(Ordering::SeqCst) < CLIENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not all connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        n.metric("kpi_notifier_connections{transport=\"ws\"}").await,
        CLIENTS as f64
    );

    // Twenty commits spread out, so there are several versions to fan out.
    let c = pg(&cluster).await;
    for i in 1..=20 {
        c.execute("INSERT INTO orders(v) VALUES ($1)", &[&i])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let db = loop {
        let pending: i64 = c
            .query_one("SELECT count(*) FROM kpi.deltas", &[])
            .await
            .unwrap()
            .get(0);
        let db = db_snapshot(&cluster, "k").await;
        if pending == 0 && db["measures"]["n"]["today"] == json!(20) {
            break db;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "fold never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let final_version = db["version"].as_i64().unwrap();
    target_tx.send_replace(Some(final_version));

    let mut done = 0;
    for client in clients {
        let latest = tokio::time::timeout(T, client)
            .await
            .expect("a client never reached the final value")
            .unwrap();
        assert_eq!(latest["version"].as_i64(), Some(final_version));
        assert_eq!(measures(&latest["data"]), measures(&db));
        done += 1;
    }
    assert_eq!(done, CLIENTS);
    assert_eq!(db["measures"]["total"]["today"].as_f64(), Some(210.0));
}
