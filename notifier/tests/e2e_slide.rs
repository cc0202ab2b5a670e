//! A quiet KPI's sliding window (src/slide.rs): when rows age out of "the last hour" with
//! no write at all, the KPI's version moves and a WebSocket client receives the lower
//! value, equal to `kpi.snapshot`; a KPI without old rows is not re-announced.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn window(v: &serde_json::Value) -> serde_json::Value {
    v["data"]["measures"]["n"]["window"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_leaving_the_last_hour_are_pushed_without_a_write() {
    let cluster = cluster().await;
    // Three rows that leave the last hour 2, 3 and 4 seconds from now, and one fresh row.
    exec(
        &cluster,
        "CREATE TABLE hits (at timestamptz NOT NULL);
         INSERT INTO hits SELECT now() - interval '1 hour' + g * interval '1 second' + interval '1 second'
           FROM generate_series(1, 3) g;
         INSERT INTO hits VALUES (now());
         SELECT kpi.create('hits', 'hits', 'at', measures => 'n = count(*)', bucket => '1 second');
         CREATE TABLE fresh (at timestamptz NOT NULL);
         INSERT INTO fresh VALUES (now());
         SELECT kpi.create('fresh', 'fresh', 'at', measures => 'n = count(*)', bucket => '1 second');",
    )
    .await;
    let n = Notifier::start(config(&cluster)).await;
    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["hits"])).await;
    let first = ws.until("hits", T, |_| true).await;
    let started = Instant::now();
    let v0 = first["version"].as_i64().unwrap();
    assert!(window(&first).as_i64().unwrap() >= 2, "{first}");

    let last = ws.until("hits", T, |v| window(v) == json!(1)).await;
    println!(
        "the last hour fell from {} to 1 with no write, pushed {:?} after the first snapshot",
        window(&first),
        started.elapsed()
    );
    assert!(last["version"].as_i64() > Some(v0));
    assert_eq!(
        measures(&last["data"]),
        measures(&db_snapshot(&cluster, "hits").await)
    );
    // The fresh KPI's rows are all in its last hour: nothing moved, no new version.
    let fresh: i64 = pg(&cluster)
        .await
        .query_one(
            "SELECT version FROM kpi.definitions WHERE name = 'fresh'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        fresh, 1,
        "a KPI whose windows kept their rows is not re-announced"
    );
}
