//! Auth over real sockets: static keys and HS256 JWTs on WebSocket, SSE and the API,
//! scope refusals, expired and forged tokens, the Origin allow-list.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use notifier::config::{Secret, StaticToken};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const T: Duration = Duration::from_secs(15);
const SECRET: &str = "jwt-secret-for-tests-only";
const ALL: &str = "static-all-kpis-0123456789";
const SALES: &str = "static-sales-only-0123456789";

fn jwt(kpis: Value, exp_in_secs: i64, secret: &str) -> String {
    let exp = chrono::Utc::now().timestamp() + exp_in_secs;
    encode(
        &Header::default(),
        &json!({"sub": "tester", "exp": exp, "kpis": kpis}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn setup() -> (std::sync::Arc<pg_kpi_e2e::Cluster>, Notifier) {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(
        &cluster,
        "CREATE TABLE t2(ts timestamptz NOT NULL DEFAULT now());
         SELECT kpi.create(name => 'k2', source => 't2', time_column => 'ts', measures => 'n = count(*)');",
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
            name: "sales".into(),
            token: Secret(SALES.into()),
            kpis: vec!["k".into()],
            ingest: vec![],
        },
    ];
    cfg.auth.jwt_secret = Secret(SECRET.into());
    cfg.auth.jwt_leeway_secs = 0;
    cfg.http.allowed_origins = vec!["https://dash.example".into()];
    let n = Notifier::start(cfg).await;
    (cluster, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tokens_and_scopes() {
    let (_cluster, n) = setup().await;

    // Refused tokens: the upgrade succeeds, then close 4001 (what a browser can see).
    for (what, url) in [
        ("missing", n.ws_url("/ws")),
        ("garbage", n.ws_url("/ws?token=nope")),
        (
            "forged",
            n.ws_url(&format!(
                "/ws?token={}",
                jwt(json!(["*"]), 60, "not-the-secret")
            )),
        ),
        (
            "expired",
            n.ws_url(&format!("/ws?token={}", jwt(json!(["*"]), -60, SECRET))),
        ),
    ] {
        let mut c = WsClient::connect(&url).await;
        assert_eq!(c.close_code(T).await, Some(4001), "{what}");
    }
    assert_eq!(
        n.metric("kpi_notifier_ws_closes_total{code=\"4001\"}")
            .await,
        4.0
    );
    assert_eq!(
        n.metric("kpi_notifier_rejected_total{reason=\"token_missing\"}")
            .await,
        1.0
    );
    assert_eq!(
        n.metric("kpi_notifier_rejected_total{reason=\"token_invalid\"}")
            .await,
        2.0
    );
    assert_eq!(
        n.metric("kpi_notifier_rejected_total{reason=\"token_expired\"}")
            .await,
        1.0
    );

    // A JWT scoped to k, in the query string.
    let token = jwt(json!(["k"]), 600, SECRET);
    let mut c = WsClient::connect(&n.ws_url(&format!("/ws?token={token}"))).await;
    c.send(&subscribe(&["k2", "k"])).await;
    let v = c.json(T).await;
    assert_eq!(
        (v["code"].as_str(), v["kpi"].as_str()),
        (Some("forbidden"), Some("k2"))
    );
    assert_eq!(c.json(T).await["type"], "snapshot");
    // A KPI that does not exist is also "forbidden" for a scoped token: no probing.
    c.send(&subscribe(&["secret_kpi"])).await;
    assert_eq!(c.json(T).await["code"], "forbidden");

    // A static key in the Authorization header.
    let mut req = n.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {ALL}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = WsClient { ws };
    c.send(&subscribe(&["k2"])).await;
    assert_eq!(c.json(T).await["type"], "snapshot");

    // A JWT that expires while connected: closed with 4001 when it does.
    let token = jwt(json!("*"), 2, SECRET);
    let mut c = WsClient::connect(&n.ws_url(&format!("/ws?token={token}"))).await;
    c.send(&subscribe(&["k"])).await;
    assert_eq!(c.json(T).await["type"], "snapshot");
    let started = std::time::Instant::now();
    assert_eq!(c.close_code(T).await, Some(4001));
    assert!(started.elapsed() <= Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_api_tokens_and_scopes() {
    let (_cluster, n) = setup().await;
    let http = reqwest::Client::new();
    let expired = jwt(json!(["*"]), -60, SECRET);
    let forged = jwt(json!(["*"]), 60, "not-the-secret");
    let scoped = jwt(json!(["k"]), 600, SECRET);
    for (uri, bearer, status, code) in [
        ("/sse?kpi=k".to_string(), None, 401, "unauthorized"),
        (
            format!("/sse?kpi=k&token={expired}"),
            None,
            401,
            "unauthorized",
        ),
        (
            format!("/sse?kpi=k&token={forged}"),
            None,
            401,
            "unauthorized",
        ),
        (
            format!("/sse?kpi=k,k2&token={scoped}"),
            None,
            403,
            "forbidden",
        ),
        ("/sse?kpi=k2".to_string(), Some(SALES), 403, "forbidden"),
        ("/api/kpis".to_string(), None, 401, "unauthorized"),
        ("/api/kpis/k2".to_string(), Some(SALES), 403, "forbidden"),
        (
            format!("/api/kpis/k2/series?measure=n&token={scoped}"),
            None,
            403,
            "forbidden",
        ),
        (
            "/api/kpis/k".to_string(),
            Some(forged.as_str()),
            401,
            "unauthorized",
        ),
        (
            "/api/kpis/k".to_string(),
            Some(expired.as_str()),
            401,
            "unauthorized",
        ),
    ] {
        let mut req = http.get(n.url(&uri));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.unwrap();
        let got = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{uri}: {body}"
        );
    }

    // Allowed: scoped reads see only their KPIs.
    let list: Value = http
        .get(n.url("/api/kpis"))
        .bearer_auth(SALES)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["kpis"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, vec!["k"]);
    let all: Value = http
        .get(n.url(&format!("/api/kpis?token={ALL}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["kpis"].as_array().unwrap().len(), 2);
    let mut sse = SseClient::connect(&n.url(&format!("/sse?kpi=k&token={scoped}")), None).await;
    assert_eq!(sse.next(T).await.unwrap().data["type"], "snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list() {
    let (_cluster, n) = setup().await;
    let url = n.ws_url(&format!("/ws?token={ALL}"));
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://dash.example".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = WsClient { ws };
    c.send(&subscribe(&["k"])).await;
    assert_eq!(c.json(T).await["type"], "snapshot");

    let r = reqwest::Client::new()
        .get(n.url(&format!("/sse?kpi=k&token={ALL}")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        n.metric("kpi_notifier_rejected_total{reason=\"origin_not_allowed\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn refuses_a_public_address_without_auth() {
    // The check runs on the bound address before anything else; the refusal needs no
    // database. 0.0.0.0 is bound but never receives traffic.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = notifier::serve(listener, notifier::Config::default(), async {})
        .await
        .expect_err("must refuse");
    assert!(err.to_string().contains("without authentication"), "{err}");
}
