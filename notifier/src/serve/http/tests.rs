//! Router tests through `tower::ServiceExt::oneshot`: no socket, no database.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use futures::StreamExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::config::{Secret, StaticToken};
use crate::feed::hub::Snapshot;
use crate::shutdown;

const ALL: &str = "all-kpis-token-0123456789";
const ONLY_B: &str = "only-b-token-0123456789";

fn config() -> Config {
    let mut c = Config::default();
    c.auth.tokens = vec![
        StaticToken {
            name: "all".into(),
            token: Secret(ALL.into()),
            kpis: vec!["*".into()],
            ingest: vec![],
        },
        StaticToken {
            name: "b".into(),
            token: Secret(ONLY_B.into()),
            kpis: vec!["b".into()],
            ingest: vec![],
        },
    ];
    c.http.allowed_origins = vec!["https://dash.example".into()];
    c
}

fn state_with(config: Config, loaded: bool) -> (AppState, shutdown::Trigger) {
    let (trigger, flag) = shutdown::channel();
    let (state, _feeds) = crate::state(config, flag).unwrap();
    if loaded {
        for (k, v) in [("a", 3), ("b", 9)] {
            let data = json!({"kpi": k, "version": v}).to_string();
            state.hub.publish(Snapshot::new(k, v, &data, None).unwrap());
        }
        state.hub.mark_loaded();
    }
    (state, trigger)
}

async fn get(
    state: &AppState,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = app(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn health_ready_metrics_and_404() {
    let (state, _t) = state_with(config(), false);
    let (s, _, b) = get(&state, "/healthz", &[]).await;
    assert_eq!(
        (
            s,
            serde_json::from_slice::<Value>(&b).unwrap()["status"].clone()
        ),
        (StatusCode::OK, json!("ok"))
    );
    let (s, _, b) = get(&state, "/readyz", &[]).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(serde_json::from_slice::<Value>(&b).unwrap()["ready"], false);
    let (s, _, b) = get(&state, "/nope", &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let (s, h, b) = get(&state, "/metrics", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains("kpi_notifier_http_errors_total{code=\"not_found\"} 1"),
        "{text}"
    );
    let (s, _, b) = get(&state, "/", &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(b).unwrap().contains("pg_kpi notifier"));
}

#[tokio::test]
async fn api_auth_and_scope() {
    let (state, _t) = state_with(config(), true);
    let (s, _, b) = get(&state, "/api/kpis/a", &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let (s, _, b) = get(&state, "/api/kpis/a?token=forged", &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let (s, _, b) = get(
        &state,
        "/api/kpis/a",
        &[("authorization", &format!("Bearer {ONLY_B}"))],
    )
    .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let (s, h, b) = get(&state, &format!("/api/kpis/b?token={ONLY_B}"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["kpi"].as_str(), v["version"].as_i64()),
        (Some("snapshot"), Some("b"), Some(9))
    );
    let (s, _, b) = get(&state, &format!("/api/kpis/zzz?token={ALL}"), &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::NOT_FOUND, "unknown_kpi".into())
    );
    let (s, _, b) = get(&state, &format!("/api/kpis/a/series?token={ALL}"), &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let (s, _, b) = get(
        &state,
        &format!("/api/kpis/a/series?token={ALL}&measure=n&since=yesterday"),
        &[],
    )
    .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let (_, _, b) = get(&state, "/metrics", &[]).await;
    let text = String::from_utf8(b).unwrap();
    assert!(
        text.contains("kpi_notifier_rejected_total{reason=\"token_missing\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kpi_notifier_rejected_total{reason=\"token_invalid\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kpi_notifier_rejected_total{reason=\"forbidden\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn not_ready_answers_503_for_kpi_reads() {
    let (state, _t) = state_with(config(), false);
    let (s, _, b) = get(&state, &format!("/api/kpis/a?token={ALL}"), &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready".into())
    );
    let (s, _, b) = get(&state, &format!("/sse?kpi=a&token={ALL}"), &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready".into())
    );
}

#[tokio::test]
async fn origin_allow_list_and_cors() {
    let (state, _t) = state_with(config(), true);
    let uri = format!("/api/kpis/a?token={ALL}");
    let (s, _, b) = get(&state, &uri, &[("origin", "https://evil.example")]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::FORBIDDEN, "origin_not_allowed".into())
    );
    let (s, h, _) = get(&state, &uri, &[("origin", "https://dash.example")]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://dash.example"
    );
    // Same origin: a page served by the notifier itself.
    let (s, _, _) = get(
        &state,
        &uri,
        &[
            ("origin", "http://kpi.internal:8080"),
            ("host", "kpi.internal:8080"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = get(&state, &uri, &[("origin", "null")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn ws_endpoint_needs_an_upgrade() {
    let (state, _t) = state_with(config(), true);
    let (s, _, b) = get(&state, "/ws", &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "not_websocket".into())
    );
}

#[tokio::test]
async fn sse_refusals() {
    let (state, _t) = state_with(config(), true);
    for (uri, status, code) in [
        (
            format!("/sse?token={ALL}"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/sse?kpi=a".to_string(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            format!("/sse?kpi=zzz&token={ALL}"),
            StatusCode::NOT_FOUND,
            "unknown_kpi",
        ),
        (
            format!("/sse?kpi=a,b&token={ONLY_B}"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            format!("/sse?kpi=a&token={ALL}&last_event_id=x"),
            StatusCode::BAD_REQUEST,
            "bad_last_event_id",
        ),
    ] {
        let (s, _, b) = get(&state, &uri, &[]).await;
        assert_eq!((s, error_code(&b)), (status, code.to_string()), "{uri}");
    }
}

/// Reads SSE body chunks until `n` `data:` events have arrived.
async fn sse_events(body: Body, n: usize) -> Vec<(Option<String>, Value)> {
    let mut stream = body.into_data_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(3), stream.next())
            .await
            .expect("timed out")
            .expect("stream ended")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).unwrap());
                }
            }
            if let Some(d) = data {
                out.push((id, d));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_streams_snapshots_updates_and_resumes() {
    let (state, trigger) = state_with(config(), true);
    let req = Request::get(format!("/sse?kpi=a,b&token={ALL}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let body = resp.into_body();
    let publisher = state.clone();
    let events = tokio::spawn(async move { sse_events(body, 3).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let data = json!({"kpi":"a","version":4}).to_string();
    publisher
        .hub
        .publish(Snapshot::new("a", 4, &data, None).unwrap());
    let events = events.await.unwrap();
    assert_eq!(events[0].1["type"], "snapshot");
    assert_eq!(events[1].1["type"], "snapshot");
    assert_eq!(events[2].1["type"], "update");
    assert_eq!(events[2].1["version"], 4);
    assert_eq!(events[2].0.as_deref(), Some("a:4,b:9"));

    // Resume: the client has a:4 and b:8, so only b gets a snapshot.
    let req = Request::get(format!("/sse?kpi=a,b&token={ALL}"))
        .header("last-event-id", "a:4,b:8")
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let events = sse_events(resp.into_body(), 1).await;
    assert_eq!(
        (events[0].1["kpi"].as_str(), events[0].1["version"].as_i64()),
        (Some("b"), Some(9))
    );

    // Single KPI: the id is the bare version.
    let req = Request::get(format!("/sse?kpi=b&token={ALL}"))
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let events = sse_events(resp.into_body(), 1).await;
    assert_eq!(events[0].0.as_deref(), Some("9"));
    trigger.fire();
}

#[tokio::test]
async fn connection_limit() {
    let mut c = config();
    c.limits.max_connections = 1;
    let (state, _t) = state_with(c, true);
    let req = Request::get(format!("/sse?kpi=a&token={ALL}"))
        .body(Body::empty())
        .unwrap();
    let held = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let (s, _, b) = get(&state, &format!("/sse?kpi=a&token={ALL}"), &[]).await;
    assert_eq!(
        (s, error_code(&b)),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections".into()
        )
    );
    drop(held);
    let req = Request::get(format!("/sse?kpi=b&token={ALL}"))
        .body(Body::empty())
        .unwrap();
    let again = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the slot was released");
}
