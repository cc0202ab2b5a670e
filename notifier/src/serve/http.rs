//! The router and the cross-cutting HTTP concerns: Origin allow-list, CORS, error
//! metrics and the health endpoints. The state it hands to every handler, and the
//! connection limit, are in [`serve`](mod@crate::serve).
//!
//! `app(state)` builds the whole `Router`, so tests drive it in-process with
//! `tower::ServiceExt::oneshot` and `serve` mounts the same thing on a socket. The
//! dashboard's page and assets are [`assets`](super::assets)' routes, merged in here.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use super::{api, sse, ws, AppState};
use crate::config::Config;
use crate::error::{truncate, ApiError, ErrorCode};
use crate::metrics::Gauges;

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let cors = cors_layer(&state.config);
    Router::new()
        .merge(super::assets::router())
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::handler))
        .route("/sse/alerts", get(sse::alerts::handler))
        .nest("/api", api::router())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(state.clone(), check_origin))
        .layer(cors)
        .layer(middleware::from_fn_with_state(state.clone(), count_errors))
        // Spans carry the path only: the query string may hold a token.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}

/// Liveness: the process is up and serving HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: connected to the database with every KPI loaded.
///
/// A stalled fold is reported (`fold`, `warnings`) but keeps the answer 200: it stalls
/// every replica alike, so taking this one out of a load balancer would only cut its
/// clients off from the values they have (and, with the fallback on, from new ones).
async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.status.borrow().clone();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let fold = state.fold.borrow().clone();
    let mut body = json!(status);
    body["kpis"] = json!(state.hub.len());
    if let Some(reason) = &fold.reason {
        body["warnings"] = json!([format!("fold stalled: {reason}")]);
    }
    body["fold"] = json!(fold);
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&Gauges {
        ready: state.status.borrow().ready,
        kpis: state.hub.len(),
        dim_filters: state.hub.filter_count(),
        fold: state.fold.borrow().clone(),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Refuses browser requests from origins that are not allowed. Requests without an
/// `Origin` (curl, servers) and same-origin requests pass: the allow-list exists to
/// stop other web pages from using a visitor's browser (and its token) against us.
async fn check_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if !origin_allowed(&state.config.http.allowed_origins, origin, host) {
            state.metrics.rejected.inc("origin_not_allowed");
            let shown = String::from_utf8_lossy(origin.as_bytes());
            return ApiError::OriginNotAllowed(truncate(&shown, 100).into()).into_response();
        }
    }
    next.run(req).await
}

pub fn origin_allowed(allowed: &[String], origin: &HeaderValue, host: Option<&str>) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the page was served by this notifier (the dashboard).
    match (origin.split_once("://"), host) {
        (Some((_, origin_host)), Some(host)) => origin_host.eq_ignore_ascii_case(host),
        _ => false,
    }
}

fn cors_layer(config: &Config) -> CorsLayer {
    let allowed = config.http.allowed_origins.clone();
    CorsLayer::new()
        .allow_methods([Method::GET])
        .allow_headers([header::AUTHORIZATION, sse::LAST_EVENT_ID])
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin_allowed(&allowed, origin, None)
        }))
}

/// Counts error responses by their code (see `error::ErrorCode`).
async fn count_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        state.metrics.http_errors.inc(code);
    }
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
