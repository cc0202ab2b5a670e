//! Current-state and overdue KPIs through the notifier (docs/current-state.md): a
//! WebSocket client receives a current-state KPI's changes (rows inserted, moved between
//! stages, deleted), and an overdue count rising when deadlines pass, with no write.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

const SETUP_STATE: &str = "
    CREATE TABLE tickets (id serial PRIMARY KEY, status text NOT NULL,
                          due_at timestamptz NOT NULL, closed boolean NOT NULL DEFAULT false);
    SELECT kpi.create_state(name => 'queue', source => 'tickets', measures => 'n = count(*)',
                            dimensions => '{status}', resolution => '1 second');
    SELECT kpi.create_overdue(name => 'late', source => 'tickets', due => 'due_at',
                              open_filter => 'NOT closed');";

fn n_of(v: &serde_json::Value, measure: &str) -> serde_json::Value {
    v["data"]["measures"][measure]["window"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_and_passing_deadlines_are_pushed() {
    let cluster = cluster().await;
    exec(&cluster, SETUP_STATE).await;
    let n = Notifier::start(config(&cluster)).await;

    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["queue"])).await;
    // Its own client, so that waiting for one KPI never skips the other's messages.
    let mut lws = WsClient::connect(&n.ws_url("/ws")).await;
    lws.send(&subscribe(&["late"])).await;
    let q = ws.until("queue", T, |_| true).await;
    assert_eq!(n_of(&q, "n"), json!(0));
    let v0 = q["version"].as_i64().unwrap();

    // A current-state change: two tickets open, then one moves on, then one goes.
    exec(
        &cluster,
        "INSERT INTO tickets (status, due_at) VALUES ('open', now() + interval '1 hour'), ('open', now() + interval '1 hour')",
    )
    .await;
    let u = ws.until("queue", T, |v| n_of(v, "n") == json!(2)).await;
    assert!(u["version"].as_i64() > Some(v0));
    assert_eq!(
        measures(&u["data"]),
        measures(&db_snapshot(&cluster, "queue").await)
    );
    exec(
        &cluster,
        "UPDATE tickets SET status = 'working' WHERE id = 1",
    )
    .await;
    let moved = ws
        .until("queue", T, |v| {
            v["version"].as_i64() > u["version"].as_i64()
        })
        .await;
    assert_eq!(
        n_of(&moved, "n"),
        json!(2),
        "a move between stages keeps the total"
    );
    exec(&cluster, "DELETE FROM tickets WHERE id = 2").await;
    ws.until("queue", T, |v| n_of(v, "n") == json!(1)).await;

    // Three tickets due in 2–3 s, then no write at all: the count rises by itself.
    let late = lws.until("late", T, |_| true).await;
    assert_eq!(n_of(&late, "overdue"), json!(0));
    let inserted = Instant::now();
    exec(
        &cluster,
        "INSERT INTO tickets (status, due_at)
         SELECT 'open', now() + interval '2 seconds' + g * interval '400 milliseconds' FROM generate_series(1, 3) g",
    )
    .await;
    let first = lws
        .until("late", T, |v| n_of(v, "overdue") == json!(1))
        .await;
    let first_at = inserted.elapsed();
    let all = lws
        .until("late", T, |v| n_of(v, "overdue") == json!(3))
        .await;
    let all_at = inserted.elapsed();
    println!(
        "overdue pushes: first at {first_at:?} (due 2.4 s after the insert), all three at {all_at:?} (last due 3.2 s after)"
    );
    assert!(all["version"].as_i64() > first["version"].as_i64());
    // Not before its deadline: the database agrees one ticket was late when it came.
    let c = pg(&cluster).await;
    let due_first: bool = c
        .query_one(
            "SELECT min(due_at) < now() FROM tickets WHERE id > 2 AND NOT closed",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(due_first);
    assert_eq!(
        measures(&all["data"]),
        measures(&db_snapshot(&cluster, "late").await)
    );
    // Closing a late ticket brings the count down.
    exec(&cluster, "UPDATE tickets SET closed = true WHERE id = 3").await;
    lws.until("late", T, |v| n_of(v, "overdue") == json!(2))
        .await;
}
