//! `GET /api/alerts` against a real cluster: the alerts of `kpi.alerts` with their state
//! and value, filtered by state, limited to the token's KPI scope, and a clear JSON
//! error for a bad filter or a missing token.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use notifier::config::{Secret, StaticToken};
use serde_json::{json, Value};

const ALL: &str = "all-kpis-token-0123456789";
const SALES: &str = "sales-only-token-0123456789";

async fn get(n: &Notifier, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(n.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn names(body: &Value) -> Vec<(String, String)> {
    body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["alert"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_by_state_within_the_tokens_scope() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now());
         SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', measures => 'n = count(*)');
         SELECT kpi.create_alert('orders_seen', 'k', 'n >= 2', '10 minutes', severity => 'critical',
                                 labels => '{\"team\": \"shop\"}', summary => '{{value}} orders');
         SELECT kpi.create_alert('t2_seen', 'k2', 'n >= 1', '10 minutes');",
    )
    .await;
    exec(&cluster, "INSERT INTO orders(v) VALUES (1), (2)").await;
    exec(&cluster, "SELECT kpi.evaluate_alerts()").await;
    let mut cfg = config(&cluster);
    cfg.auth.tokens = vec![
        StaticToken {
            name: "ops".into(),
            token: Secret(ALL.into()),
            kpis: vec!["*".into()],
        },
        StaticToken {
            name: "sales".into(),
            token: Secret(SALES.into()),
            kpis: vec!["k".into()],
        },
    ];
    let n = Notifier::start(cfg).await;

    let (code, body) = get(&n, "/api/alerts", Some(ALL)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        names(&body),
        [
            ("orders_seen".into(), "firing".into()),
            ("t2_seen".into(), "inactive".into())
        ]
    );
    let a = &body["alerts"][0];
    assert_eq!(a["kpi"], "k");
    assert_eq!(a["value"], json!(2));
    assert_eq!(a["threshold"], json!(2));
    assert_eq!(a["op"], ">=");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["labels"], json!({"team": "shop"}));
    assert!(a["firing_since"].is_string(), "{a}");

    let (_, body) = get(&n, "/api/alerts?state=firing,pending", Some(ALL)).await;
    assert_eq!(names(&body), [("orders_seen".into(), "firing".into())]);
    let (_, body) = get(&n, &format!("/api/alerts?token={SALES}"), None).await;
    assert_eq!(
        names(&body),
        [("orders_seen".into(), "firing".into())],
        "a token scoped to k sees only k's alerts"
    );

    let (code, body) = get(&n, "/api/alerts?state=burning", Some(ALL)).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_query", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("burning"),
        "{body}"
    );
    let (code, body) = get(&n, "/api/alerts", None).await;
    assert_eq!(code, 401, "{body}");
}
