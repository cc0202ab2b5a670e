//! Why an ingest request was refused, as the API's JSON error with, for a refused
//! event, its `index` in the batch and its `field`:
//! `{"error":{"code":"bad_event","message":…,"index":3,"field":"total"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::{truncate, ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Authentication, scope, or the database being unavailable: as elsewhere in the API.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("no ingest source {0:?}")]
    UnknownSource(String),
    #[error("the body is larger than this source's limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("{got} events in one request; this source takes at most {limit}")]
    TooManyEvents { got: usize, limit: usize },
    #[error("{0}")]
    BadJson(String),
    /// An event that cannot be written: refused by the mapping, or by the database
    /// for its data (a value too long for its column, a malformed uuid).
    #[error("{}", located(.index, .field, .message))]
    BadEvent {
        index: Option<usize>,
        field: Option<String>,
        message: String,
    },
    /// The database refused the batch for a constraint (unique, check, foreign key).
    #[error("{}", located(.index, .field, .message))]
    Rejected {
        index: Option<usize>,
        field: Option<String>,
        message: String,
    },
    /// The source's mapping does not fit its table: the notifier's config is wrong.
    #[error("ingest source is misconfigured: {0}")]
    Misconfigured(String),
}

/// `event 3: total: why`, leaving out what is unknown.
fn located(index: &Option<usize>, field: &Option<String>, message: &str) -> String {
    let mut s = String::new();
    if let Some(i) = index {
        s.push_str(&format!("event {i}: "));
    }
    if let Some(f) = field {
        s.push_str(&format!("{}: ", truncate(f, 100)));
    }
    s.push_str(message);
    s
}

impl IngestError {
    fn status(&self) -> StatusCode {
        match self {
            IngestError::Api(e) => e.status(),
            IngestError::UnknownSource(_) => StatusCode::NOT_FOUND,
            IngestError::BodyTooLarge(_) | IngestError::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngestError::BadJson(_) => StatusCode::BAD_REQUEST,
            IngestError::BadEvent { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngestError::Rejected { .. } => StatusCode::CONFLICT,
            IngestError::Misconfigured(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            IngestError::Api(e) => e.code(),
            IngestError::UnknownSource(_) => "unknown_source",
            IngestError::BodyTooLarge(_) => "body_too_large",
            IngestError::TooManyEvents { .. } => "too_many_events",
            IngestError::BadJson(_) => "bad_json",
            IngestError::BadEvent { .. } => "bad_event",
            IngestError::Rejected { .. } => "rejected",
            IngestError::Misconfigured(_) => "ingest_misconfigured",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (index, field) = match self {
            IngestError::Api(e) => return e.into_response(),
            IngestError::BadEvent {
                index, ref field, ..
            }
            | IngestError::Rejected {
                index, ref field, ..
            } => (Some(index), field.clone()),
            _ => (None, None),
        };
        let status = self.status();
        let code = self.code();
        let message = self.to_string();
        if status.is_server_error() {
            tracing::error!(code, %message, "ingest failed");
        } else {
            tracing::info!(code, status = status.as_u16(), %message, "ingest refused");
        }
        let mut error = json!({ "code": code, "message": message });
        // A refused event's place: null when the database did not say which it was.
        if let Some(index) = index {
            error["index"] = json!(index);
            error["field"] = json!(field);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}
