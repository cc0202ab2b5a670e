//! `GET /api/kpis/{name}/top?measure=&dimension=&window=&limit=`: the largest values of
//! a measure by a dimension over a window ending now (`kpi.top`), for the dashboard's
//! top-N tables.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{known_kpi, query, QueryResult};
use crate::error::ApiError;
use crate::serve::AppState;

/// Most rows one request may return.
pub const MAX_LIMIT: i32 = 100;

#[derive(Debug, Deserialize)]
pub struct TopQuery {
    token: Option<String>,
    measure: Option<String>,
    dimension: Option<String>,
    /// A Postgres interval; default `1 hour` (as `kpi.top`).
    window: Option<String>,
    /// Rows; default 10 (as `kpi.top`).
    limit: Option<i32>,
}

/// `{"kpi","measure","dimension","window","limit","rows":[{"dimension_value","value"},…]}`,
/// largest first. The database's own errors about the input (unknown measure or
/// dimension, bad interval) come back as 400 `bad_request` with its message.
pub async fn top(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: QueryResult<TopQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    known_kpi(&state, &headers, q.token.as_deref(), &name)?;
    let required = |v: &Option<String>, what: &str| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("bad_request", format!("{what}= is required")))
    };
    let measure = required(&q.measure, "measure")?;
    let dimension = required(&q.dimension, "dimension")?;
    let window = q
        .window
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "1 hour".into());
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("limit= must be 1 to {MAX_LIMIT}"),
        ));
    }
    let client = state.db.client().await?;
    let row = client
        .query_one(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('dimension_value', t.dimension_value, \
                     'value', t.value) ORDER BY t.value DESC NULLS LAST, t.dimension_value), '[]')::text \
             FROM kpi.top($1, $2, $3, $4::text::interval, $5) AS t",
            &[&name, &measure, &dimension, &window, &limit],
        )
        .await
        .map_err(ApiError::from_db)?;
    let rows: String = row.try_get(0).map_err(ApiError::from_db)?;
    let rows = RawValue::from_string(rows)
        .map_err(|e| ApiError::Internal(format!("kpi.top JSON: {e}")))?;
    Ok(Json(serde_json::json!({
        "kpi": name,
        "measure": measure,
        "dimension": dimension,
        "window": window,
        "limit": limit,
        "rows": rows,
    }))
    .into_response())
}
