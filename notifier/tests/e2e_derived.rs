//! Derived measures and derived KPIs through the notifier (docs/derived.md): a WebSocket
//! client subscribed to a derived KPI receives it whenever either side changes, at a
//! version that grows with each, equal to `kpi.snapshot`; a derived measure within a KPI
//! is pushed with the KPI's other measures.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(15);

const SETUP: &str = "
    CREATE TABLE visits (at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE orders (at timestamptz NOT NULL DEFAULT now(), amount numeric NOT NULL);
    SELECT kpi.create('sessions', 'visits', 'at', measures => 'visitors = count(*)');
    SELECT kpi.create('checkout', 'orders', 'at',
                      measures => 'orders = count(*), revenue = sum(amount), aov = revenue / orders');
    SELECT kpi.create_derived('conversion', 'checkout.orders / sessions.visitors');";

fn window(v: &serde_json::Value, measure: &str) -> f64 {
    v["data"]["measures"][measure]["window"]
        .as_f64()
        .or_else(|| {
            v["data"]["measures"][measure]["window"]
                .as_str()?
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derived_kpi_is_pushed_when_either_side_changes() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;

    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&subscribe(&["conversion"])).await;
    let mut cws = WsClient::connect(&n.ws_url("/ws")).await;
    cws.send(&subscribe(&["checkout"])).await;
    let first = ws.until("conversion", T, |_| true).await;
    assert_eq!(
        first["data"]["measures"]["value"]["window"],
        json!(null),
        "0 / 0 has no value"
    );
    let v0 = first["version"].as_i64().unwrap();

    // One side: 20 visits, no order yet.
    exec(
        &cluster,
        "INSERT INTO visits SELECT now() FROM generate_series(1, 20)",
    )
    .await;
    let visits = ws
        .until("conversion", T, |v| v["version"].as_i64() > Some(v0))
        .await;
    assert_eq!(window(&visits, "value"), 0.0);
    // The other side: 5 orders, 250 in all.
    exec(
        &cluster,
        "INSERT INTO orders (amount) SELECT 50 FROM generate_series(1, 5)",
    )
    .await;
    let both = ws
        .until("conversion", T, |v| {
            (window(v, "value") - 0.25).abs() < 1e-9
        })
        .await;
    assert!(both["version"].as_i64() > visits["version"].as_i64());
    assert_eq!(
        measures(&both["data"]),
        measures(&db_snapshot(&cluster, "conversion").await)
    );
    // The derived measure within checkout is pushed with it.
    let c = cws
        .until("checkout", T, |v| (window(v, "aov") - 50.0).abs() < 1e-9)
        .await;
    assert_eq!(window(&c, "orders"), 5.0);
    // kpi.list (and so /api/kpis) lists the derived KPI with its formula.
    let row = pg(&cluster)
        .await
        .query_one(
            "SELECT measures->0->>'formula' FROM kpi.list() WHERE name = 'conversion'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "checkout.orders / sessions.visitors"
    );
}
