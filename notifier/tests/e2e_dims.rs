//! Dimension filters end to end: a WebSocket or SSE subscription with `dims` gets the
//! KPI restricted to those dimension values, exactly as `kpi.snapshot(name, dims)` has
//! it, follows its changes (and not the other values' changes), survives the LISTEN
//! connection being killed, and is forgotten once nobody follows it.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

const SETUP_REGIONS: &str =
    "CREATE TABLE sales(ts timestamptz NOT NULL DEFAULT now(), region text, v int);
    INSERT INTO sales(region, v) VALUES ('eu', 1), ('us', 100), (NULL, 1000);
    SELECT kpi.create(name => 'sales', source => 'sales', time_column => 'ts',
                      measures => 'n = count(*), total = sum(v)', dimensions => '{region}');";

/// `kpi.snapshot(name, dims)` as the database has it now.
async fn db_filtered(cluster: &pg_kpi_e2e::Cluster, kpi: &str, dims: &Value) -> Value {
    let c = pg(cluster).await;
    let row = c
        .query_one(
            "SELECT kpi.snapshot($1, $2::text::jsonb)::text",
            &[&kpi, &dims.to_string()],
        )
        .await
        .unwrap();
    serde_json::from_str(&row.get::<_, String>(0)).unwrap()
}

fn today(v: &Value, m: &str) -> Option<f64> {
    v["data"]["measures"][m]["today"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_subscriptions_follow_their_rows_only() {
    let cluster = cluster().await;
    exec(&cluster, SETUP_REGIONS).await;
    let n = Notifier::start(config(&cluster)).await;
    let eu = json!({"region": "eu"});

    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    ws.send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": eu}))
        .await;
    let first = ws.json(T).await;
    assert_eq!(first["type"], "snapshot", "{first}");
    assert_eq!(first["dims"], eu);
    assert_eq!(
        measures(&first["data"]),
        measures(&db_filtered(&cluster, "sales", &eu).await)
    );
    assert_eq!(
        (today(&first, "n"), today(&first, "total")),
        (Some(1.0), Some(1.0))
    );
    // JSON null selects the rows whose dimension is NULL.
    let mut nulls = WsClient::connect(&n.ws_url("/ws")).await;
    nulls
        .send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": {"region": null}}))
        .await;
    assert_eq!(today(&nulls.json(T).await, "total"), Some(1000.0));

    let dims_param = "%7B%22region%22%3A%22eu%22%7D"; // {"region":"eu"}
    let mut sse =
        SseClient::connect(&n.url(&format!("/sse?kpi=sales&dims={dims_param}")), None).await;
    let e = sse.next(T).await.unwrap();
    assert_eq!(e.data, first, "SSE carries the same filtered object");
    assert_eq!(
        n.metric("kpi_notifier_dim_filters").await,
        2.0,
        "clients with the same filter share one topic"
    );

    // Another region's rows change the KPI but not this filter's numbers.
    exec(&cluster, "INSERT INTO sales(region, v) VALUES ('us', 5)").await;
    exec(&cluster, "INSERT INTO sales(region, v) VALUES ('eu', 7)").await;
    let v = ws.until("sales", T, |v| today(v, "n") == Some(2.0)).await;
    assert_eq!(today(&v, "total"), Some(8.0));
    assert_eq!(v["dims"], eu);
    assert_eq!(
        measures(&v["data"]),
        measures(&db_filtered(&cluster, "sales", &eu).await)
    );
    let e = sse.until("sales", T, |v| today(v, "n") == Some(2.0)).await;
    assert_eq!(e.id, Some(v["version"].to_string()));

    // A change made while the LISTEN connection is down arrives after the reconnect.
    let mut unfiltered = WsClient::connect(&n.ws_url("/ws")).await;
    unfiltered.send(&subscribe(&["sales"])).await;
    assert_eq!(today(&unfiltered.json(T).await, "n"), Some(5.0));
    let c = pg(&cluster).await;
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        &[&notifier::db::LISTEN_APP_NAME],
    )
    .await
    .unwrap();
    c.execute("INSERT INTO sales(region, v) VALUES ('eu', 30)", &[])
        .await
        .unwrap();
    let v = ws.until("sales", T, |v| today(v, "n") == Some(3.0)).await;
    assert_eq!(today(&v, "total"), Some(38.0));
    let v = unfiltered
        .until("sales", T, |v| today(v, "n") == Some(6.0))
        .await;
    assert!(v.get("dims").is_none());

    // The REST API serves the same filtered object.
    let r = reqwest::get(n.url(&format!("/api/kpis/sales?dims={dims_param}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rest: Value = r.json().await.unwrap();
    assert_eq!(rest["dims"], eu);
    assert_eq!(
        measures(&rest["data"]),
        measures(&db_filtered(&cluster, "sales", &eu).await)
    );
    let r = reqwest::get(n.url("/api/kpis/sales?dims=%7B%22nope%22%3A1%7D"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_dimension"
    );

    // Nobody follows the filters any more: the next change forgets them.
    drop(ws);
    drop(sse);
    drop(nulls);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        exec(&cluster, "INSERT INTO sales(region, v) VALUES ('us', 1)").await;
        if n.metric("kpi_notifier_dim_filters").await == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "filters were never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_get_defined_errors() {
    let cluster = cluster().await;
    exec(&cluster, SETUP_REGIONS).await;
    exec(&cluster, SETUP).await;
    let n = Notifier::start(config(&cluster)).await;

    let mut ws = WsClient::connect(&n.ws_url("/ws")).await;
    for (dims, code) in [
        (json!("eu"), "bad_dims"),
        (json!({"region": ["eu"]}), "bad_dims"),
        (json!({"channel": "web"}), "unknown_dimension"),
    ] {
        ws.send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": dims}))
            .await;
        let v = ws.json(T).await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some(code)),
            "{dims}"
        );
    }
    // A KPI without dimensions has none to filter by.
    ws.send(&json!({"op": "subscribe", "kpis": ["k"], "dims": {"region": "eu"}}))
        .await;
    assert_eq!(ws.json(T).await["code"], "unknown_dimension");
    // The connection is still good.
    ws.send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": {"region": "us"}}))
        .await;
    assert_eq!(today(&ws.json(T).await, "total"), Some(100.0));

    for (dims, code) in [
        ("not%20json", "bad_dims"),
        ("%5B1%5D", "bad_dims"),                                  // [1]
        ("%7B%22channel%22%3A%22web%22%7D", "unknown_dimension"), // {"channel":"web"}
    ] {
        let r = reqwest::get(n.url(&format!("/sse?kpi=sales&dims={dims}")))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{dims}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{dims}: {body}");
    }
    assert!(
        n.metric("kpi_notifier_client_errors_total{code=\"bad_dims\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_limit_is_enforced_and_frees_up() {
    let cluster = cluster().await;
    exec(&cluster, SETUP_REGIONS).await;
    let mut cfg = config(&cluster);
    cfg.limits.max_dim_filters = 1;
    let n = Notifier::start(cfg).await;

    let mut a = WsClient::connect(&n.ws_url("/ws")).await;
    a.send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": {"region": "eu"}}))
        .await;
    assert_eq!(a.json(T).await["type"], "snapshot");
    let mut b = WsClient::connect(&n.ws_url("/ws")).await;
    b.send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": {"region": "us"}}))
        .await;
    assert_eq!(b.json(T).await["code"], "too_many_filters");
    // Once the first client is gone, its filter makes room.
    drop(a);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        b.send(&json!({"op": "subscribe", "kpis": ["sales"], "dims": {"region": "us"}}))
            .await;
        let v = b.json(T).await;
        if v["type"] == "snapshot" {
            assert_eq!(today(&v, "total"), Some(100.0));
            break;
        }
        assert_eq!(v["code"], "too_many_filters");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the filter was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
