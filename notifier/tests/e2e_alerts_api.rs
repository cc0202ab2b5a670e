//! The alerts API against a real cluster: `GET /api/alerts` (the alerts of `kpi.alerts`
//! with their state and value, filtered by state, limited to the token's KPI scope),
//! `POST /api/alerts/{id}/ack`, and `GET/POST/DELETE /api/silences`; each with a clear
//! JSON error for bad input, a missing token or a token without the scope.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use notifier::config::{Secret, StaticToken};
use serde_json::{json, Value};

const ALL: &str = "all-kpis-token-0123456789";
const SALES: &str = "sales-only-token-0123456789";

async fn get(n: &Notifier, path: &str, token: Option<&str>) -> (u16, Value) {
    send(n, reqwest::Method::GET, path, token, None).await
}

async fn send(
    n: &Notifier,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, n.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn tokens() -> Vec<StaticToken> {
    vec![
        StaticToken {
            name: "ops".into(),
            token: Secret(ALL.into()),
            kpis: vec!["*".into()],
            ingest: vec![],
        },
        StaticToken {
            name: "sales".into(),
            token: Secret(SALES.into()),
            kpis: vec!["k".into()],
            ingest: vec![],
        },
    ]
}

/// Path, token, body, and the status, error code and words of the answer.
type AckRefusal<'a> = (
    String,
    Option<&'a str>,
    Option<&'a str>,
    u16,
    &'a str,
    &'a str,
);

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn error_says(body: &Value, what: &str) -> bool {
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains(what)
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
            ingest: vec![],
        },
        StaticToken {
            name: "sales".into(),
            token: Secret(SALES.into()),
            kpis: vec!["k".into()],
            ingest: vec![],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_is_recorded_once_and_shows_in_the_alert() {
    use reqwest::Method;
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now());
         SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', measures => 'n = count(*)');
         SELECT kpi.create_alert('orders_seen', 'k', 'n >= 2', '10 minutes', severity => 'critical');
         SELECT kpi.create_alert('t2_seen', 'k2', 'n >= 1', '10 minutes');
         INSERT INTO orders(v) VALUES (1), (2);
         INSERT INTO t2 DEFAULT VALUES;
         SELECT kpi.evaluate_alerts();",
    )
    .await;
    let mut cfg = config(&cluster);
    cfg.auth.tokens = tokens();
    let n = Notifier::start(cfg).await;
    let (_, body) = get(&n, "/api/alerts", Some(ALL)).await;
    let id_of = |name: &str| {
        body["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["alert"] == name)
            .unwrap()["id"]
            .as_i64()
    };
    let firing = id_of("orders_seen").unwrap();
    let other_kpi = id_of("t2_seen").unwrap();

    let path = format!("/api/alerts/{firing}/ack");
    let (code, ack) = send(
        &n,
        Method::POST,
        &path,
        Some(SALES),
        Some(r#"{"by": "alice", "note": "on it"}"#),
    )
    .await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["ack"]["by"], "alice");
    // A second click keeps the first acknowledgement and records no second transition.
    let (code, again) = send(&n, Method::POST, &path, Some(ALL), None).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["ack"]["history_id"], ack["ack"]["history_id"]);
    let (_, body) = get(&n, "/api/alerts?state=firing", Some(ALL)).await;
    let a = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alert"] == "orders_seen")
        .unwrap();
    assert_eq!(a["acked_by"], "alice", "{a}");
    assert_eq!(a["ack_note"], "on it", "{a}");
    let acks: i64 = pg(&cluster)
        .await
        .query_one(
            "SELECT count(*) FROM kpi.alert_history WHERE to_state = 'acknowledged'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acks, 1);

    // Without a "by", the token's name is who.
    let (code, ack) = send(
        &n,
        Method::POST,
        &format!("/api/alerts/{other_kpi}/ack"),
        Some(ALL),
        Some("{}"),
    )
    .await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["ack"]["by"], "ops");

    // Every refusal is a JSON error with its own status and code.
    let cases: Vec<AckRefusal> = vec![
        (
            format!("/api/alerts/{other_kpi}/ack"),
            Some(SALES),
            None,
            403,
            "forbidden",
            "k2",
        ),
        (
            "/api/alerts/999999/ack".into(),
            Some(ALL),
            None,
            404,
            "not_found",
            "999999",
        ),
        (
            "/api/alerts/abc/ack".into(),
            Some(ALL),
            None,
            400,
            "bad_path",
            "abc",
        ),
        (path.clone(), None, None, 401, "unauthorized", ""),
        (
            path.clone(),
            Some(ALL),
            Some("{\"by\": "),
            400,
            "bad_body",
            "",
        ),
        (
            path.clone(),
            Some(ALL),
            Some(r#"{"who": "x"}"#),
            400,
            "bad_body",
            "who",
        ),
    ];
    for (p, token, b, status, code, says) in cases {
        let (got, body) = send(&n, Method::POST, &p, token, b).await;
        assert_eq!(got, status, "{p} {b:?}: {body}");
        assert_eq!(error_code(&body), code, "{p}: {body}");
        assert!(error_says(&body, says), "{p}: {body}");
    }
    // Once resolved, the same instance cannot be acknowledged.
    exec(
        &cluster,
        "DELETE FROM orders; SELECT kpi.evaluate_alerts();",
    )
    .await;
    let (got, body) = send(&n, Method::POST, &path, Some(ALL), None).await;
    assert_eq!(got, 409, "{body}");
    assert_eq!(error_code(&body), "conflict", "{body}");
    assert!(error_says(&body, "not firing"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_are_created_listed_and_expired_and_bad_ones_refused() {
    use reqwest::Method;
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    let mut cfg = config(&cluster);
    cfg.auth.tokens = tokens();
    let n = Notifier::start(cfg).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let earlier = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();

    let new = json!({
        "matchers": [{"name": "team", "value": "sh.*", "isRegex": true, "isEqual": true}, "severity=\"critical\""],
        "endsAt": later,
        "comment": "deploy window",
    })
    .to_string();
    let (code, created) = send(&n, Method::POST, "/api/silences", Some(ALL), Some(&new)).await;
    assert_eq!(code, 201, "{created}");
    let s = &created["silence"];
    assert_eq!(s["state"], "active");
    assert_eq!(s["createdBy"], "ops");
    assert_eq!(s["comment"], "deploy window");
    assert_eq!(
        s["matchers"][1],
        json!({"name": "severity", "value": "critical", "isRegex": false, "isEqual": true})
    );
    let id = s["id"].as_i64().unwrap();

    // In the database, so every replica sees it.
    let stored: i64 = pg(&cluster)
        .await
        .query_one(
            "SELECT count(*) FROM kpi.alert_silences WHERE ends_at > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    let (code, list) = get(&n, "/api/silences", Some(SALES)).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["silences"].as_array().unwrap().len(), 1);

    // Refused, each with a JSON error naming why, and nothing written.
    let cases: Vec<(Option<&str>, String, u16, &str, &str)> = vec![
        (
            Some(ALL),
            json!({"matchers": [], "endsAt": later}).to_string(),
            400,
            "bad_silence",
            "at least one matcher",
        ),
        (
            Some(ALL),
            json!({"matchers": ["team=\"a\""], "endsAt": earlier}).to_string(),
            400,
            "bad_silence",
            "not in the future",
        ),
        (
            Some(ALL),
            json!({"matchers": ["team=~\".*\""], "endsAt": later}).to_string(),
            400,
            "bad_silence",
            "every alert",
        ),
        (
            Some(ALL),
            json!({"matchers": ["team~\"a\""], "endsAt": later}).to_string(),
            400,
            "bad_silence",
            "matchers[0]",
        ),
        (
            Some(ALL),
            json!({"matchers": ["team=\"a\""]}).to_string(),
            400,
            "bad_body",
            "endsAt",
        ),
        (Some(ALL), "not json".into(), 400, "bad_body", ""),
        (Some(SALES), new.clone(), 403, "forbidden", "every KPI"),
        (None, new.clone(), 401, "unauthorized", ""),
    ];
    for (token, b, status, code, says) in cases {
        let (got, body) = send(&n, Method::POST, "/api/silences", token, Some(&b)).await;
        assert_eq!(got, status, "{b}: {body}");
        assert_eq!(error_code(&body), code, "{b}: {body}");
        assert!(error_says(&body, says), "{b}: {body}");
    }
    let all: i64 = pg(&cluster)
        .await
        .query_one("SELECT count(*) FROM kpi.alert_silences", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 1, "a refused silence writes nothing");

    // Expiring: the scope is checked, an unknown id is a 404, and the row stays.
    let path = format!("/api/silences/{id}");
    let (code, body) = send(&n, Method::DELETE, &path, Some(SALES), None).await;
    assert_eq!((code, error_code(&body)), (403, "forbidden"), "{body}");
    let (code, body) = send(&n, Method::DELETE, "/api/silences/424242", Some(ALL), None).await;
    assert_eq!((code, error_code(&body)), (404, "not_found"), "{body}");
    let (code, body) = send(&n, Method::DELETE, &path, Some(ALL), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["silence"]["state"], "expired");
    let (_, list) = get(&n, "/api/silences", Some(ALL)).await;
    assert!(list["silences"].as_array().unwrap().is_empty(), "{list}");
    let (_, list) = get(&n, "/api/silences?expired=true", Some(ALL)).await;
    assert_eq!(list["silences"][0]["id"], json!(id), "{list}");
}
