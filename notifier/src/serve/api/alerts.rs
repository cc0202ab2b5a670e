//! `GET /api/alerts`: the alerts now (`kpi.alerts`), for dashboards and scripts, and
//! `POST /api/alerts/{id}/ack`: a person takes one.
//!
//! One row per pending or firing instance and one inactive row for an alert with none,
//! limited to the token's KPI scope (and, in the database, to the KPIs the notifier's
//! role may read). `?state=firing,pending` keeps only those states. Each row carries
//! its acknowledgement and its latest deliveries (receiver, status, attempts, last
//! error), so a receiver that keeps failing shows where people look.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio_postgres::error::SqlState;

use super::{body, query, BodyResult, QueryResult, TokenQuery};
use crate::error::{truncate, ApiError};
use crate::serve::auth::Principal;
use crate::serve::AppState;

/// Deliveries listed per instance, newest first.
const DELIVERIES_SHOWN: i64 = 10;

const STATES: [&str; 3] = ["inactive", "pending", "firing"];

const ALERTS_SQL: &str =
    "SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.alert, a.group_value), '[]')::text \
     FROM (SELECT v.id, v.alert, v.kpi, v.group_by, v.group_value, v.state, v.value, v.op, \
                  v.threshold::float8 AS threshold, v.recover::float8 AS recover, v.severity, \
                  v.labels, v.summary, v.condition, v.\"window\"::text AS \"window\", \
                  v.\"for\"::text AS \"for\", v.keep_firing_for::text AS keep_firing_for, \
                  v.active_since, v.firing_since, v.evaluated_at, v.reason, v.last_error, \
                  v.last_error_at, v.acked_at, v.acked_by, v.ack_note, \
                  (SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.history_id DESC), '[]') \
                     FROM (SELECT h.id AS history_id, h.to_state AS transition, d.receiver, \
                                  d.status, d.attempts, d.last_error, d.queued_at, d.delivered_at, \
                                  d.escalation \
                             FROM kpi.alert_history h \
                             JOIN kpi.alert_deliveries d ON d.history_id = h.id \
                            WHERE h.rule = v.alert AND h.group_value = v.group_value \
                            ORDER BY h.id DESC, d.receiver LIMIT $2) AS d) AS deliveries \
             FROM kpi.alerts v WHERE $1::text[] IS NULL OR v.state = ANY($1)) AS a";

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
    let alerts = current(&state, &principal, states).await?;
    Ok(Json(serde_json::json!({ "alerts": alerts })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Who takes it; the token's name when left out.
    by: Option<String>,
    note: Option<String>,
}

/// Acknowledges a firing instance (`id` from `GET /api/alerts`) through `kpi.ack_alert`:
/// repeats and escalation stop, PagerDuty hears "acknowledge". 404 for an unknown or
/// invisible instance, 403 outside the token's scope, 409 when it is not firing.
pub async fn ack(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: QueryResult<TokenQuery>,
    b: BodyResult<AckBody>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_path",
            format!("{:?} is not an alert instance id", truncate(&id, 32)),
        )
    })?;
    // An empty body is a plain "I have it".
    let b = match b {
        Err(axum::extract::rejection::JsonRejection::MissingJsonContentType(_))
            if headers
                .get(axum::http::header::CONTENT_LENGTH)
                .is_none_or(|l| l == "0") =>
        {
            AckBody::default()
        }
        b => body(b)?,
    };
    let by =
        b.by.map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| principal.name.clone());
    let client = state.db.client().await?;
    let kpi: Option<String> = client
        .query_opt("SELECT kpi FROM kpi.alerts WHERE id = $1", &[&id])
        .await
        .map_err(ApiError::from_db)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(ApiError::from_db)?;
    let Some(kpi) = kpi else {
        return Err(ApiError::NoSuch(format!(
            "alert instance {id} does not exist (GET /api/alerts lists them)"
        )));
    };
    state.authorize(&principal, &kpi)?;
    let history_id: i64 = client
        .query_one("SELECT kpi.ack_alert($1, $2, $3)", &[&id, &by, &b.note])
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => ApiError::Conflict(
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_string()),
            ),
            Some(c) if *c == SqlState::UNDEFINED_OBJECT => ApiError::NoSuch(format!(
                "alert instance {id} does not exist (GET /api/alerts lists them)"
            )),
            _ => ApiError::from_db(e),
        })?
        .try_get(0)
        .map_err(ApiError::from_db)?;
    // A separate statement: the acknowledgement's row is not visible to the one that
    // wrote it.
    let row = client
        .query_one(
            "SELECT actor, at FROM kpi.alert_history WHERE id = $1",
            &[&history_id],
        )
        .await
        .map_err(ApiError::from_db)?;
    let actor: Option<String> = row.try_get(0).map_err(ApiError::from_db)?;
    let at: chrono::DateTime<chrono::Utc> = row.try_get(1).map_err(ApiError::from_db)?;
    Ok(Json(serde_json::json!({
        "ack": { "id": id, "history_id": history_id, "by": actor, "at": at, "note": b.note }
    }))
    .into_response())
}

/// The alerts now within the principal's scope, in `states` when given: the rows of
/// `GET /api/alerts`, and of the `alerts` topic's first message.
pub async fn current(
    state: &AppState,
    principal: &Principal,
    states: Option<Vec<String>>,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let client = state.db.client().await?;
    let row = client
        .query_one(ALERTS_SQL, &[&states, &DELIVERIES_SHOWN])
        .await
        .map_err(ApiError::from_db)?;
    let text: String = row.try_get(0).map_err(ApiError::from_db)?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("kpi.alerts JSON: {e}")))?;
    Ok(all
        .into_iter()
        .filter(|a| a["kpi"].as_str().is_some_and(|k| principal.scope.allows(k)))
        .collect())
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
