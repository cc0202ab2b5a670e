//! HTTP errors: one enum, rendered as `{"error":{"code":…,"message":…}}` with a proper
//! status, and logged exactly once, here, when it becomes a response.
//!
//! Internal details (database errors, bugs) are logged but never sent to the client;
//! the client gets a stable `code` it can branch on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Attached to every error response so the metrics middleware can count it by code
/// without parsing the body.
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or a token that is malformed, forged or expired.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token whose scope does not include the KPI.
    #[error("{0}")]
    Forbidden(String),
    /// A browser page from an origin not on `http.allowed_origins`.
    #[error("origin {0} is not allowed")]
    OriginNotAllowed(String),
    #[error("unknown KPI {0:?}")]
    UnknownKpi(String),
    #[error("no such endpoint")]
    NotFound,
    /// A resource named in the path that does not exist (an alert instance, a silence).
    #[error("{0}")]
    NoSuch(String),
    /// The request is valid but the resource's state refuses it (acknowledging an
    /// alert that is not firing).
    #[error("{0}")]
    Conflict(String),
    /// A request parameter that cannot be used as given.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("too many connections")]
    TooManyConnections,
    /// The notifier has not loaded the KPIs yet (or lost the database and is retrying).
    #[error("{0}")]
    NotReady(String),
    /// The database could not be reached for a query the request needs.
    #[error("database unavailable")]
    DatabaseUnavailable(String),
    /// A bug or an unexpected database error; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownKpi(_) | ApiError::NotFound | ApiError::NoSuch(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::TooManyConnections | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::UnknownKpi(_) => "unknown_kpi",
            ApiError::NotFound | ApiError::NoSuch(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadRequest { code, .. } => code,
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::NotReady(_) => "not_ready",
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// Maps a database error from a request's query. Errors the extension raises about
    /// the caller's input (data exceptions, undefined objects, raised exceptions) are the
    /// caller's to fix and are passed on; the rest is internal.
    pub fn from_db(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return if e.is_closed() {
                ApiError::DatabaseUnavailable(e.to_string())
            } else {
                ApiError::Internal(format!("database: {e}"))
            };
        };
        let class = &db.code().code()[..2];
        match class {
            // 22 data exception, 42 syntax/undefined object, P0 raised by the extension
            "22" | "42" | "P0" => {
                let mut message = db.message().to_string();
                if let Some(hint) = db.hint() {
                    message.push_str(" (");
                    message.push_str(hint);
                    message.push(')');
                }
                ApiError::bad_request("bad_request", message)
            }
            // 57 operator intervention (shutdown, statement timeout), 08 connection
            "57" | "08" | "53" => ApiError::DatabaseUnavailable(db.message().to_string()),
            _ => ApiError::Internal(format!(
                "database error {}: {}",
                db.code().code(),
                db.message()
            )),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        // Internal details go to the log only; clients get the public message.
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(code, detail = %detail, "request failed");
                "internal error".to_string()
            }
            ApiError::DatabaseUnavailable(detail) => {
                tracing::warn!(code, detail = %detail, "request failed");
                "database unavailable, retry later".to_string()
            }
            other => {
                tracing::info!(code, status = status.as_u16(), message = %other, "request refused");
                other.to_string()
            }
        };
        let mut response = (
            status,
            Json(json!({ "error": { "code": code, "message": message } })),
        )
            .into_response();
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

/// Cuts client-provided text that is echoed back or logged. Here because it is a leaf:
/// every layer quotes client input in its errors.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_json_body_and_hides_internals() {
        let r = ApiError::Internal("secret detail".into()).into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.extensions().get::<ErrorCode>().unwrap().0, "internal");
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "internal");
        assert!(!body.windows(6).any(|w| w == b"secret"));

        let r = ApiError::UnknownKpi("nope".into()).into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unknown_kpi");
        assert_eq!(v["error"]["message"], "unknown KPI \"nope\"");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
