//! `GET/POST/DELETE /api/silences`: mute alerts whose labels match, until an expiry.
//!
//! Silences live in `kpi.alert_silences`, so every notifier replica honours them and a
//! restart forgets none. The body is Alertmanager's (`matchers` as
//! `{name, value, isRegex, isEqual}`, `startsAt`, `endsAt`, `createdBy`, `comment`), and
//! matchers may also be written as in routes (`severity="critical"`). A silence mutes
//! alerts of every KPI, so only a token whose scope is every KPI may create or expire
//! one; any token may list them.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{body, query, BodyResult, QueryResult};
use crate::alerts::matcher::{Matcher, MatcherJson};
use crate::error::{truncate, ApiError};
use crate::serve::auth::{Principal, Scope};
use crate::serve::AppState;

/// Most matchers one silence may have, and the longest comment.
const MAX_MATCHERS: usize = 32;
const MAX_COMMENT: usize = 4096;

const COLUMNS: &str = "id, matchers, starts_at AS \"startsAt\", ends_at AS \"endsAt\", \
     created_by AS \"createdBy\", comment, created_at AS \"createdAt\", \
     CASE WHEN ends_at <= now() THEN 'expired' WHEN starts_at > now() THEN 'pending' \
          ELSE 'active' END AS state";

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    token: Option<String>,
    /// Also list silences that have ended.
    #[serde(default)]
    expired: bool,
}

/// `{"silences":[…]}`, newest first.
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<ListQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    state.principal(&headers, q.token.as_deref())?;
    let client = state.db.client().await?;
    let sql = format!(
        "SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.id DESC), '[]')::text \
           FROM (SELECT {COLUMNS} FROM kpi.alert_silences WHERE $1 OR ends_at > now()) AS s"
    );
    let row = client
        .query_one(&sql, &[&q.expired])
        .await
        .map_err(ApiError::from_db)?;
    let text: String = row.try_get(0).map_err(ApiError::from_db)?;
    let silences: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("kpi.alert_silences JSON: {e}")))?;
    Ok(Json(serde_json::json!({ "silences": silences })).into_response())
}

/// A matcher as Alertmanager's API writes it, or as a route does.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MatcherInput {
    Json(MatcherJson),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSilence {
    matchers: Vec<MatcherInput>,
    starts_at: Option<DateTime<Utc>>,
    ends_at: DateTime<Utc>,
    created_by: Option<String>,
    #[serde(default)]
    comment: String,
}

#[derive(Debug, Deserialize)]
pub struct TokenOnly {
    token: Option<String>,
}

/// Creates a silence: 201 with `{"silence":{…}}`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<TokenOnly>,
    b: BodyResult<NewSilence>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    every_kpi(&state, &principal)?;
    let s = body(b)?;
    let matchers = validate(&s, Utc::now())?;
    let matchers = serde_json::to_value(matchers.iter().map(Matcher::to_json).collect::<Vec<_>>())
        .map_err(|e| ApiError::Internal(format!("matchers JSON: {e}")))?;
    let created_by = s
        .created_by
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| principal.name.clone());
    let starts_at = s.starts_at.unwrap_or_else(Utc::now);
    let client = state.db.client().await?;
    let sql = format!(
        "WITH s AS (INSERT INTO kpi.alert_silences (matchers, starts_at, ends_at, created_by, comment) \
                    VALUES ($1, $2, $3, $4, $5) RETURNING *) \
         SELECT to_jsonb(x)::text FROM (SELECT {COLUMNS} FROM s) AS x"
    );
    let row = client
        .query_one(
            &sql,
            &[&matchers, &starts_at, &s.ends_at, &created_by, &s.comment],
        )
        .await
        .map_err(ApiError::from_db)?;
    let text: String = row.try_get(0).map_err(ApiError::from_db)?;
    let silence: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("silence JSON: {e}")))?;
    tracing::info!(id = %silence["id"], by = %created_by, "silence created");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "silence": silence })),
    )
        .into_response())
}

/// Expires a silence now (as Alertmanager's DELETE does; the row stays, for the
/// record): `{"silence":{…}}`, 404 for an unknown id. Expiring an expired one is a no-op.
pub async fn expire(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: QueryResult<TokenOnly>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    every_kpi(&state, &principal)?;
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_path",
            format!("{:?} is not a silence id", truncate(&id, 32)),
        )
    })?;
    let client = state.db.client().await?;
    // A silence that has not started yet ends where it starts (the table requires
    // ends_at > starts_at), which also means never.
    let sql = format!(
        "WITH s AS (UPDATE kpi.alert_silences \
                       SET starts_at = least(starts_at, now() - interval '1 microsecond'), \
                           ends_at = least(ends_at, now()) \
                     WHERE id = $1 RETURNING *) \
         SELECT to_jsonb(x)::text FROM (SELECT {COLUMNS} FROM s) AS x"
    );
    let row = client
        .query_opt(&sql, &[&id])
        .await
        .map_err(ApiError::from_db)?
        .ok_or_else(|| {
            ApiError::NoSuch(format!(
                "silence {id} does not exist (GET /api/silences?expired=true lists them)"
            ))
        })?;
    let text: String = row.try_get(0).map_err(ApiError::from_db)?;
    let silence: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("silence JSON: {e}")))?;
    tracing::info!(id, by = %principal.name, "silence expired");
    Ok(Json(serde_json::json!({ "silence": silence })).into_response())
}

fn every_kpi(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    if p.scope == Scope::All {
        return Ok(());
    }
    state.metrics.rejected.inc("forbidden");
    Err(ApiError::Forbidden(
        "a silence mutes alerts of every KPI: it takes a token whose scope is every KPI (kpis = [\"*\"])".into(),
    ))
}

/// The silence's matchers, or a 400 naming what is wrong.
fn validate(s: &NewSilence, now: DateTime<Utc>) -> Result<Vec<Matcher>, ApiError> {
    let bad = |m: String| ApiError::bad_request("bad_silence", m);
    if s.matchers.is_empty() {
        return Err(bad(
            "matchers: a silence needs at least one matcher (one that matches everything would mute every alert)".into(),
        ));
    }
    if s.matchers.len() > MAX_MATCHERS {
        return Err(bad(format!("matchers: at most {MAX_MATCHERS}")));
    }
    let matchers = s
        .matchers
        .iter()
        .enumerate()
        .map(|(i, m)| {
            match m {
                MatcherInput::Json(j) => Matcher::from_json(j),
                MatcherInput::Text(t) => Matcher::parse(t),
            }
            .map_err(|e| bad(format!("matchers[{i}]: {}", truncate(&e, 200))))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if matchers.iter().all(|m| m.matches(&Default::default())) {
        return Err(bad(
            "matchers: these match an alert with no labels at all, so they would mute every alert; match a label's value".into(),
        ));
    }
    if s.ends_at <= now {
        return Err(bad(format!(
            "endsAt: {} is not in the future",
            s.ends_at.to_rfc3339()
        )));
    }
    if let Some(start) = s.starts_at {
        if s.ends_at <= start {
            return Err(bad("endsAt: must be after startsAt".into()));
        }
    }
    if s.comment.len() > MAX_COMMENT {
        return Err(bad(format!("comment: at most {MAX_COMMENT} bytes")));
    }
    Ok(matchers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn silence(json: serde_json::Value) -> NewSilence {
        serde_json::from_value(json).unwrap()
    }

    fn message(r: Result<Vec<Matcher>, ApiError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn matchers_in_both_forms() {
        let now = Utc::now();
        let s = silence(serde_json::json!({
            "matchers": [{"name": "team", "value": "sh.*", "isRegex": true}, "severity=\"critical\""],
            "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
        }));
        let m = validate(&s, now).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].is_regex && m[0].is_equal);
        assert_eq!(
            (m[1].name.as_str(), m[1].value.as_str()),
            ("severity", "critical")
        );
    }

    #[test]
    fn each_mistake_is_named() {
        let now = Utc::now();
        let later = (now + chrono::Duration::hours(1)).to_rfc3339();
        let earlier = (now - chrono::Duration::hours(1)).to_rfc3339();
        let cases = [
            (
                serde_json::json!({"matchers": [], "endsAt": later}),
                "at least one matcher",
            ),
            (
                serde_json::json!({"matchers": ["team=~\".*\""], "endsAt": later}),
                "mute every alert",
            ),
            (
                serde_json::json!({"matchers": ["team=\"a\""], "endsAt": earlier}),
                "not in the future",
            ),
            (
                serde_json::json!({"matchers": ["team=\"a\""], "startsAt": later, "endsAt": later}),
                "after startsAt",
            ),
            (
                serde_json::json!({"matchers": ["team=~\"(\""], "endsAt": later}),
                "matchers[0]",
            ),
            (
                serde_json::json!({"matchers": ["1team=\"a\""], "endsAt": later}),
                "label name",
            ),
        ];
        for (json, expect) in cases {
            let m = message(validate(&silence(json.clone()), now));
            assert!(m.contains(expect), "{json}: {m:?} lacks {expect:?}");
        }
    }
}
