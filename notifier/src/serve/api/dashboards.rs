//! `GET /api/dashboards` (names and titles) and `GET /api/dashboards/{name}` (one
//! dashboard as the page draws it, see [`resolve`]): what the page at `/` and
//! `/d/{name}` reads first. Authorised like the rest of `/api`; widgets of KPIs outside
//! the token's scope come with a `problem` instead of being hidden, so the layout is
//! the configured one.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{query, QueryResult, TokenQuery};
use crate::dashboard::resolve;
use crate::error::{truncate, ApiError};
use crate::serve::AppState;

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<TokenQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    state.principal(&headers, q.token.as_deref())?;
    let list: Vec<_> = resolve::names(&state.config.dashboards)
        .into_iter()
        .map(|(name, title)| json!({ "name": name, "title": title }))
        .collect();
    Ok(Json(json!({ "dashboards": list })).into_response())
}

pub async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: QueryResult<TokenQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    if !resolve::exists(&state.config.dashboards, &name) {
        return Err(ApiError::NoSuch(format!(
            "no dashboard named {:?}",
            truncate(&name, 64)
        )));
    }
    let client = state.db.client().await?;
    let kpis = resolve::catalog(&client).await?;
    let dashboard = resolve::resolve(&state.config.dashboards, &name, &kpis, &principal.scope)
        .ok_or_else(|| ApiError::NoSuch(format!("no dashboard named {:?}", truncate(&name, 64))))?;
    Ok(Json(dashboard).into_response())
}
