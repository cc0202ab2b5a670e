//! `POST /api/events/{source}`: one JSON event or an array of them, written into the
//! source's table in one transaction; `200 {"accepted":N}` once it is committed.
//!
//! The checks run cheapest first: the token (401), its ingest scope (403), the source
//! (404), the body's size (413, from `Content-Length` before reading, and while
//! reading), then the events ([`crate::ingest`]).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use futures::StreamExt;
use serde_json::json;

use super::{query, QueryResult, TokenQuery};
use crate::error::{truncate, ApiError};
use crate::ingest::error::IngestError;
use crate::serve::AppState;

pub async fn post(
    State(state): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    q: QueryResult<TokenQuery>,
    body: Body,
) -> Result<Response, IngestError> {
    let q = query(q)?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    if !principal.ingest.allows(&source) {
        state.metrics.rejected.inc("forbidden");
        return Err(ApiError::Forbidden(format!(
            "token may not send events to source {:?}",
            truncate(&source, 64)
        ))
        .into());
    }
    let Some((index, config)) = state.ingest.source(&source) else {
        return Err(IngestError::UnknownSource(truncate(&source, 64).into()));
    };
    let limit = config.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(IngestError::BodyTooLarge(limit));
    }
    let body = read_limited(body, limit, declared).await?;
    let accepted = state.ingest.ingest(index, &body).await?;
    Ok(Json(json!({ "accepted": accepted })).into_response())
}

/// The body, refused as soon as it passes `limit` (a chunked body has no length to
/// check up front).
async fn read_limited(
    body: Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<BytesMut, IngestError> {
    let capacity = declared.map_or(8 * 1024, |n| n as usize).min(limit);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            IngestError::Api(ApiError::bad_request(
                "bad_body",
                format!("could not read the body: {e}"),
            ))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(IngestError::BodyTooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
