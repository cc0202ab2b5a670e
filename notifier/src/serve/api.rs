//! The JSON API: `GET /api/kpis`, `/api/kpis/{name}`, `/api/kpis/{name}/series`,
//! `/api/kpis/{name}/top` ([`top`]); `GET /api/dashboards[/{name}]` ([`dashboards`]);
//! `GET /api/alerts` and `POST /api/alerts/{id}/ack` ([`alerts`]); `GET`, `POST` and
//! `DELETE /api/silences` ([`silences`]).
//!
//! Every endpoint takes the same bearer token as the streams (header or `?token=`) and
//! only shows KPIs in the token's scope. The latest snapshot comes from the hub (no
//! database round trip, unless it is of a dimension filter nobody follows); the catalog
//! and series are read from the database.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{subscription, AppState};
use crate::config::valid_kpi_name;
use crate::error::truncate;
use crate::error::ApiError;
use crate::feed::filter::Topic;

/// Most points one series request may return.
pub const MAX_POINTS: i64 = 10_000;

pub(crate) mod alerts;
mod dashboards;
mod events;
mod silences;
mod top;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}/ack", post(alerts::ack))
        .route("/events/{source}", post(events::post))
        .route("/silences", get(silences::list).post(silences::create))
        .route("/silences/{id}", delete(silences::expire))
        .route("/kpis", get(list))
        .route("/kpis/{name}", get(one))
        .route("/kpis/{name}/series", get(series))
        .route("/kpis/{name}/top", get(top::top))
        .route("/dashboards", get(dashboards::list))
        .route("/dashboards/{name}", get(dashboards::one))
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

fn query<T>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
}

type BodyResult<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// A JSON request body, or a 400 saying what is wrong with it (axum's own rejection
/// would answer in plain text).
fn body<T>(b: BodyResult<T>) -> Result<T, ApiError> {
    b.map(|Json(b)| b)
        .map_err(|e| ApiError::bad_request("bad_body", e.body_text()))
}

/// `{"kpis":[<kpi.list() row as JSON>,…]}`, limited to the token's scope.
async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: QueryResult<TokenQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    let client = state.db.client().await?;
    let row = client
        .query_one(
            "SELECT coalesce(jsonb_agg(to_jsonb(l) ORDER BY l.name), '[]')::text FROM ( \
               SELECT name, source::text AS source, time_column, measures, dimensions, \
                      filter, bucket::text AS bucket, retention::text AS retention, \
                      version, created_at \
               FROM kpi.list()) AS l",
            &[],
        )
        .await
        .map_err(ApiError::from_db)?;
    let text: String = row.try_get(0).map_err(ApiError::from_db)?;
    let all: Vec<serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("kpi.list() JSON: {e}")))?;
    let kpis: Vec<serde_json::Value> = all
        .into_iter()
        .filter(|k| {
            k["name"]
                .as_str()
                .is_some_and(|n| principal.scope.allows(n))
        })
        .collect();
    Ok(Json(serde_json::json!({ "kpis": kpis })).into_response())
}

/// Checks scope and existence of a KPI named in a path.
fn known_kpi(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    let principal = state.principal(headers, token)?;
    state.authorize(&principal, name)?;
    if !state.hub.is_loaded() {
        return Err(ApiError::NotReady(
            "the notifier has not loaded the KPIs from the database yet".into(),
        ));
    }
    if !valid_kpi_name(name) || state.hub.current(name).is_none() {
        return Err(ApiError::UnknownKpi(truncate(name, 64).into()));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct OneQuery {
    token: Option<String>,
    /// A dimension filter as JSON, as on `/sse`.
    dims: Option<String>,
}

/// The latest snapshot, the same object a WebSocket subscriber gets first:
/// `{"type":"snapshot","kpi":…,"version":…,"data":<kpi.snapshot>}`, with `"dims"` for a
/// filtered one (from memory when clients follow that filter, else read once).
async fn one(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: QueryResult<OneQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    known_kpi(&state, &headers, q.token.as_deref(), &name)?;
    let dims = subscription::dims_param(q.dims.as_deref())?;
    let snap = match dims {
        None => state.hub.current(&name),
        Some(dims) => {
            let topic = Topic {
                kpi: name.clone(),
                dims: Some(dims),
            };
            let rx = subscription::subscribe(&state, &topic)
                .await
                .map_err(|r| r.into_api(&name))?;
            let snap = rx.borrow().clone();
            Some(snap)
        }
    }
    .ok_or_else(|| ApiError::UnknownKpi(truncate(&name, 64).into()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(bytes::Bytes::from(snap.snapshot_frame.clone())),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct SeriesQuery {
    token: Option<String>,
    measure: Option<String>,
    /// RFC 3339 timestamp, or a duration before now: `90s`, `30m`, `6h`, `7d`, `2w`.
    since: Option<String>,
    /// RFC 3339 timestamp; default now.
    until: Option<String>,
    /// A Postgres interval (`5 minutes`); default the KPI's bucket.
    step: Option<String>,
    /// A JSON object of dimension values, e.g. `{"region":"eu"}`.
    dims: Option<String>,
    /// `true` adds `day_ago` and `week_ago` to each point: the same step one day / one
    /// week earlier (the dashboard's last-week overlay).
    #[serde(default)]
    compare: bool,
}

#[derive(Serialize)]
struct Series<'a> {
    kpi: &'a str,
    measure: &'a str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step: Option<&'a str>,
    points: &'a RawValue,
}

/// `{"kpi","measure","since","until","step","points":[{"bucket":…,"value":…},…]}` from
/// `kpi.series`, gap-filled by the database.
async fn series(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: QueryResult<SeriesQuery>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    known_kpi(&state, &headers, q.token.as_deref(), &name)?;
    let measure = q
        .measure
        .as_deref()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad_request("bad_request", "measure= is required"))?;
    let now = Utc::now();
    let since = match q.since.as_deref() {
        Some(s) => parse_time(s, now).ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                "since= must be RFC 3339 or a duration like 30m, 6h, 7d",
            )
        })?,
        None => now - chrono::Duration::hours(1),
    };
    let until = match q.until.as_deref() {
        Some(s) => parse_time(s, now).ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                "until= must be RFC 3339 or a duration like 30m",
            )
        })?,
        None => now,
    };
    if since > until {
        return Err(ApiError::bad_request(
            "bad_request",
            "since= is after until=",
        ));
    }
    let dims = match q.dims.as_deref() {
        Some(d) => match serde_json::from_str::<serde_json::Value>(d) {
            Ok(v @ serde_json::Value::Object(_)) => v.to_string(),
            _ => {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "dims= must be a JSON object",
                ))
            }
        },
        None => "{}".to_string(),
    };
    let step = q.step.as_deref().filter(|s| !s.is_empty());
    let client = state.db.client().await?;
    let row = client
        .query_one(
            "SELECT coalesce(jsonb_agg(jsonb_build_object('bucket', s.bucket, 'value', s.value) \
                     || CASE WHEN $8 THEN jsonb_build_object('day_ago', s.day_ago, \
                                                             'week_ago', s.week_ago) \
                             ELSE '{}' END \
                     ORDER BY s.bucket), '[]')::text, count(*) \
             FROM (SELECT * FROM kpi.series($1, $2, $3, $4, $5::text::interval, $6::text::jsonb, $8) \
                   LIMIT $7) AS s",
            &[
                &name,
                &measure,
                &since,
                &until,
                &step,
                &dims,
                &(MAX_POINTS + 1),
                &q.compare,
            ],
        )
        .await
        .map_err(ApiError::from_db)?;
    let points: String = row.try_get(0).map_err(ApiError::from_db)?;
    let count: i64 = row.try_get(1).map_err(ApiError::from_db)?;
    if count > MAX_POINTS {
        return Err(ApiError::bad_request(
            "too_many_points",
            format!("more than {MAX_POINTS} points; use a larger step= or a shorter range"),
        ));
    }
    let points: Box<RawValue> = RawValue::from_string(points)
        .map_err(|e| ApiError::Internal(format!("kpi.series JSON: {e}")))?;
    Ok(Json(Series {
        kpi: &name,
        measure,
        since,
        until,
        step,
        points: &points,
    })
    .into_response())
}

/// RFC 3339, or `<n><unit>` before `now` with unit s, m, h, d or w.
fn parse_time(s: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let s = s.trim().trim_start_matches('-');
    let unit = s.chars().last()?;
    let n: i64 = s[..s.len() - unit.len_utf8()]
        .parse()
        .ok()
        .filter(|n| *n >= 0)?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return None,
    };
    // Bounded so the arithmetic cannot overflow (about 1,000 years).
    let secs = n.checked_mul(secs).filter(|s| *s <= 31_536_000_000)?;
    now.checked_sub_signed(chrono::Duration::seconds(secs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time("30m", now).unwrap().to_rfc3339(),
            "2026-01-01T11:30:00+00:00"
        );
        assert_eq!(
            parse_time("-2h", now).unwrap().to_rfc3339(),
            "2026-01-01T10:00:00+00:00"
        );
        assert_eq!(
            parse_time("1w", now).unwrap().to_rfc3339(),
            "2025-12-25T12:00:00+00:00"
        );
        assert_eq!(
            parse_time("2025-12-31T00:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2025-12-30T23:00:00+00:00"
        );
        for bad in ["", "m", "10x", "abc", "99999999999999999w", "é"] {
            assert!(parse_time(bad, now).is_none(), "{bad}");
        }
    }
}
