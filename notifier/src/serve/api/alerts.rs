//! `GET /api/alerts`: the alerts now (`kpi.alerts`), for dashboards and scripts.
//!
//! One row per pending or firing instance and one inactive row for an alert with none,
//! limited to the token's KPI scope (and, in the database, to the KPIs the notifier's
//! role may read). `?state=firing,pending` keeps only those states.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{query, QueryResult};
use crate::error::{truncate, ApiError};
use crate::serve::AppState;

const STATES: [&str; 3] = ["inactive", "pending", "firing"];

const ALERTS_SQL: &str = "SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.alert, a.group_value), '[]')::text \
     FROM (SELECT alert, kpi, group_by, group_value, state, value, op, threshold::float8 AS threshold, \
                  recover::float8 AS recover, severity, labels, summary, condition, \
                  \"window\"::text AS \"window\", \"for\"::text AS \"for\", \
                  keep_firing_for::text AS keep_firing_for, active_since, firing_since, \
                  evaluated_at, reason, last_error, last_error_at \
             FROM kpi.alerts WHERE $1::text[] IS NULL OR state = ANY($1)) AS a";

#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    token: Option<String>,
    /// Comma-separated states to keep.
    state: Option<String>,
}

/// `{"alerts":[…]}`.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<AlertsQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    let states = parse_states(q.state.as_deref())?;
    let client = state.db.client().await?;
    let row = client
        .query_one(ALERTS_SQL, &[&states])
        .await
        .map_err(ApiError::from_db)?;
    let text: String = row.try_get(0).map_err(ApiError::from_db)?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("kpi.alerts JSON: {e}")))?;
    let alerts: Vec<serde_json::Value> = all
        .into_iter()
        .filter(|a| a["kpi"].as_str().is_some_and(|k| principal.scope.allows(k)))
        .collect();
    Ok(Json(serde_json::json!({ "alerts": alerts })).into_response())
}

/// `state=firing,pending` as a list; an unknown state is a 400 naming it.
fn parse_states(param: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(param) = param else {
        return Ok(None);
    };
    let states: Vec<String> = param
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!(
                "unknown state {:?} (one of inactive, pending, firing)",
                truncate(bad, 32)
            ),
        ));
    }
    Ok(Some(states))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse_states;

    #[test]
    fn states_are_checked() {
        assert_eq!(parse_states(None).unwrap(), None);
        assert_eq!(
            parse_states(Some("firing, pending")).unwrap(),
            Some(vec!["firing".to_string(), "pending".to_string()])
        );
        assert!(parse_states(Some("firing,burning")).is_err());
    }
}
