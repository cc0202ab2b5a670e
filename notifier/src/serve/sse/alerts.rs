//! `GET /sse/alerts`: the `alerts` topic as Server-Sent Events, for dashboards that
//! cannot use a WebSocket.
//!
//! The first event is the alerts now (`{"type":"alerts","since":N,…}`, id N); then
//! one event per transition (`{"type":"alert","id":…,…}`, id the transition's). The id
//! is what EventSource sends back as `Last-Event-ID` on reconnect, and the stream then
//! resumes with the transitions after it instead of the list.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::Deserialize;

use super::LAST_EVENT_ID;
use crate::error::ApiError;
use crate::metrics::Transport;
use crate::protocol::{self, ErrorCode};
use crate::serve::alert_subscription::{AlertSubscription, Frame};
use crate::serve::{AppState, ConnectionGuard};

#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    token: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header.
    last_event_id: Option<String>,
}

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    let last_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event_id);
    let since = match last_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(id) => Some(id.parse::<i64>().ok().filter(|&v| v >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "bad_last_event_id",
                "Last-Event-ID must be the id of the last alert event (a transition id)",
            )
        })?),
    };
    let guard = ConnectionGuard::acquire(&state, Transport::Sse)?;
    let (sub, frames) = AlertSubscription::start(&state, &principal, since).await?;
    state.metrics.connection_opened(Transport::Sse);
    tracing::debug!(principal = %principal.name, ?since, "SSE alert stream opened");

    let mut first = vec![Bytes::from(format!(
        "retry: {}\n\n",
        state.config.sse.retry_ms
    ))];
    first.extend(frames.iter().map(event));
    let keep_alive = Duration::from_millis(state.config.sse.keep_alive_ms);
    let ticker = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    let st = AlertStream {
        sub,
        ticker,
        expires_at: principal.expires_at,
        state: state.clone(),
        ended: false,
        _guard: guard,
    };
    let body = stream::iter([first])
        .chain(stream::unfold(st, |mut st| async move {
            let chunks = st.next_chunks().await?;
            Some((chunks, st))
        }))
        .flat_map(|chunks| stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>)));
    Ok(super::event_stream(Body::from_stream(body)))
}

/// `id: <id>\ndata: <json>\n\n`.
fn event(f: &Frame) -> Bytes {
    Bytes::from(format!("id: {}\ndata: {}\n\n", f.id, f.json))
}

struct AlertStream {
    sub: AlertSubscription,
    ticker: tokio::time::Interval,
    expires_at: Option<i64>,
    state: AppState,
    /// An error was sent: the stream ends after it.
    ended: bool,
    _guard: ConnectionGuard,
}

impl Drop for AlertStream {
    fn drop(&mut self) {
        self.state.metrics.connection_closed(Transport::Sse);
        tracing::debug!("SSE alert stream closed");
    }
}

impl AlertStream {
    /// The next chunks to write, or `None` to end the stream.
    async fn next_chunks(&mut self) -> Option<Vec<Bytes>> {
        if self.ended {
            return None;
        }
        let expiry = crate::serve::ws::token_expiry(self.expires_at);
        tokio::pin!(expiry);
        let mut shutdown = self.state.shutdown.clone();
        tokio::select! {
            _ = shutdown.wait() => None,
            _ = &mut expiry => {
                tracing::info!("SSE alert stream closed: token expired");
                None
            }
            _ = self.ticker.tick() => Some(vec![Bytes::from_static(b": keep-alive\n\n")]),
            frames = self.sub.next(&self.state) => match frames {
                Ok(frames) => {
                    for _ in &frames {
                        self.state.metrics.message_sent(Transport::Sse);
                    }
                    Some(frames.iter().map(event).collect())
                }
                Err(e) => {
                    // The client reconnects with its Last-Event-ID and resumes from there.
                    let frame = protocol::error_frame(
                        ErrorCode::NotReady,
                        &format!("alerts: cannot catch up ({e}); reconnect to resume"),
                        None,
                    );
                    self.ended = true;
                    Some(vec![Bytes::from(format!("data: {frame}\n\n"))])
                }
            },
        }
    }
}
