//! `GET /sse?kpi=a,b`: the WebSocket protocol's server messages as Server-Sent Events.
//! `&dims={"region":"eu"}` (URL-encoded JSON) filters every KPI of the stream by those
//! dimension values, like `dims` in a WebSocket subscribe.
//!
//! Each event is `id: <version>` + `data: <the same JSON object as on /ws>`. With one
//! KPI the id is its version; with several it is `a:42,b:17`, the version of every KPI
//! the client has at that point, because EventSource sends back only the last id it saw
//! (`Last-Event-ID`) and that id must be enough to resume every KPI. On reconnect,
//! KPIs whose version is not newer than the resumed one get no snapshot.
//!
//! The stream is built lazily: nothing is queued per client; when the client is slow,
//! hyper stops polling the stream and its subscriptions keep only the newest value.

pub mod alerts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamMap;

use super::subscription;
use super::{AppState, ConnectionGuard};
use crate::config::valid_kpi_name;
use crate::error::{truncate, ApiError};
use crate::feed::cursor::{Cursor, Frame};
use crate::feed::filter::Topic;
use crate::feed::hub::Snapshot;
use crate::metrics::Transport;
use crate::protocol::{self, ErrorCode};

#[derive(Debug, Deserialize)]
pub struct SseQuery {
    kpi: Option<String>,
    /// A dimension filter as JSON, applied to every KPI of the stream.
    dims: Option<String>,
    token: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header.
    last_event_id: Option<String>,
}

pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let principal = state.principal(&headers, q.token.as_deref())?;
    let mut names: Vec<String> = Vec::new();
    for name in q.kpi.as_deref().unwrap_or("").split(',').map(str::trim) {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(ApiError::bad_request(
            "bad_request",
            "kpi=name[,name…] is required",
        ));
    }
    let max = state.config.limits.max_subscriptions;
    if names.len() > max {
        return Err(ApiError::bad_request(
            "too_many_subscriptions",
            format!("at most {max} KPIs per stream"),
        ));
    }
    if !state.hub.is_loaded() {
        return Err(ApiError::NotReady(
            "the notifier has not loaded the KPIs from the database yet".into(),
        ));
    }
    let last_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event_id);
    let resume = match last_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => parse_event_id(id, &names).ok_or_else(|| {
            ApiError::bad_request(
                "bad_last_event_id",
                "Last-Event-ID must be a version, or name:version,… for several KPIs",
            )
        })?,
        None => HashMap::new(),
    };

    let dims = subscription::dims_param(q.dims.as_deref())?;

    let mut subs: StreamMap<String, Sub> = StreamMap::new();
    let mut known = HashMap::new();
    let mut initial = Vec::new();
    for name in &names {
        state.authorize(&principal, name)?;
        if !valid_kpi_name(name) {
            return Err(ApiError::UnknownKpi(truncate(name, 64).into()));
        }
        let topic = Topic {
            kpi: name.clone(),
            dims: dims.clone(),
        };
        let rx = subscription::subscribe(&state, &topic)
            .await
            .map_err(|r| r.into_api(name))?;
        let current = rx.borrow().clone();
        let (cursor, send) = Cursor::start(&current, resume.get(name).copied());
        known.insert(name.clone(), cursor);
        if send {
            initial.push((current.snapshot_frame.clone(), name.clone()));
        }
        let s: Sub = WatchStream::from_changes(rx)
            .map(Some)
            .chain(stream::once(async { None }))
            .boxed();
        subs.insert(name.clone(), s);
    }
    let guard = ConnectionGuard::acquire(&state, Transport::Sse)?;
    state.metrics.connection_opened(Transport::Sse);
    tracing::debug!(principal = %principal.name, kpis = ?names, "SSE stream opened");

    let keep_alive = Duration::from_millis(state.config.sse.keep_alive_ms);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive, keep_alive);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let st = EventStream {
        multi: names.len() > 1,
        names,
        known,
        subs,
        ticker,
        shutdown: state.shutdown.clone(),
        expires_at: principal.expires_at,
        _guard: guard,
        state: state.clone(),
    };
    let mut first = vec![Bytes::from(format!(
        "retry: {}\n\n",
        state.config.sse.retry_ms
    ))];
    for (frame, name) in initial {
        first.extend(st.event(&Bytes::from(frame), Some(&name)));
        st.state.metrics.message_sent(Transport::Sse);
    }
    let body = stream::iter([first])
        .chain(stream::unfold(st, |mut st| async move {
            let chunks = st.next_chunks().await?;
            Some((chunks, st))
        }))
        .flat_map(|chunks| stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>)));
    Ok(event_stream(Body::from_stream(body)))
}

/// A `text/event-stream` response around `body`: not cached, and not buffered by nginx.
fn event_stream(body: Body) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Stops nginx from buffering the stream.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `42` (one KPI) or `a:42,b:17`.
fn parse_event_id(id: &str, names: &[String]) -> Option<HashMap<String, i64>> {
    if let Ok(v) = id.parse::<i64>() {
        // A bare version only makes sense for a single-KPI stream.
        return (names.len() == 1 && v >= 0).then(|| HashMap::from([(names[0].clone(), v)]));
    }
    let mut out = HashMap::new();
    for part in id.split(',') {
        let (name, v) = part.split_once(':')?;
        let v: i64 = v.trim().parse().ok().filter(|v| *v >= 0)?;
        out.insert(name.trim().to_string(), v);
    }
    Some(out)
}

/// Not among `http::header`'s constants.
pub const LAST_EVENT_ID: header::HeaderName = header::HeaderName::from_static("last-event-id");

type Sub = BoxStream<'static, Option<Arc<Snapshot>>>;

/// The per-client stream state.
struct EventStream {
    state: AppState,
    names: Vec<String>,
    multi: bool,
    known: HashMap<String, Cursor>,
    subs: StreamMap<String, Sub>,
    ticker: tokio::time::Interval,
    shutdown: crate::shutdown::Shutdown,
    expires_at: Option<i64>,
    _guard: ConnectionGuard,
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.state.metrics.connection_closed(Transport::Sse);
        tracing::debug!("SSE stream closed");
    }
}

impl EventStream {
    /// The next chunks to write, or `None` to end the stream.
    async fn next_chunks(&mut self) -> Option<Vec<Bytes>> {
        let expiry = super::ws::token_expiry(self.expires_at);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                _ = self.shutdown.wait() => return None,
                _ = &mut expiry => {
                    tracing::info!("SSE stream closed: token expired");
                    return None;
                }
                _ = self.ticker.tick() => return Some(vec![Bytes::from_static(b": keep-alive\n\n")]),
                Some((kpi, item)) = self.subs.next() => {
                    if let Some(chunks) = self.on_value(&kpi, item) {
                        return Some(chunks);
                    }
                }
            }
        }
    }

    fn on_value(&mut self, kpi: &str, item: Option<Arc<Snapshot>>) -> Option<Vec<Bytes>> {
        let metrics = self.state.metrics.clone();
        let Some(snap) = item else {
            self.known.remove(kpi);
            metrics.client_errors.inc(ErrorCode::UnknownKpi.as_str());
            let frame = protocol::error_frame(
                ErrorCode::UnknownKpi,
                &format!("KPI {kpi:?} was dropped"),
                Some(kpi),
            );
            return Some(self.event(&Bytes::from(frame), None));
        };
        let advance = self.known.get_mut(kpi)?.advance(&snap)?;
        metrics.updates_dropped(Transport::Sse, advance.skipped);
        let frame = match advance.frame? {
            Frame::Snapshot => snap.snapshot_frame.clone(),
            Frame::Update => snap.update_frame.clone(),
        };
        metrics.publish_to_send.observe(snap.published_at.elapsed());
        if let Some(at) = snap.notified_at {
            metrics.notify_to_send.observe(at.elapsed());
        }
        metrics.message_sent(Transport::Sse);
        Some(self.event(&Bytes::from(frame), Some(kpi)))
    }

    /// `id: …\ndata: <json>\n\n` as chunks; the JSON bytes are shared, not copied.
    fn event(&self, json: &Bytes, kpi: Option<&str>) -> Vec<Bytes> {
        let id = match kpi {
            None => String::new(),
            Some(kpi) if !self.multi => {
                format!("id: {}\n", self.known.get(kpi).map_or(0, Cursor::floor))
            }
            Some(_) => {
                let parts: Vec<String> = self
                    .names
                    .iter()
                    .filter_map(|n| self.known.get(n).map(|k| format!("{n}:{}", k.floor())))
                    .collect();
                format!("id: {}\n", parts.join(","))
            }
        };
        vec![
            Bytes::from(format!("{id}data: ")),
            json.clone(),
            Bytes::from_static(b"\n\n"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids() {
        let one = vec!["a".to_string()];
        let two = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            parse_event_id("42", &one),
            Some(HashMap::from([("a".into(), 42)]))
        );
        assert_eq!(parse_event_id("42", &two), None);
        assert_eq!(parse_event_id("-1", &one), None);
        assert_eq!(
            parse_event_id("a:4,b:7", &two),
            Some(HashMap::from([("a".into(), 4), ("b".into(), 7)]))
        );
        assert_eq!(parse_event_id("a:x", &two), None);
        assert_eq!(parse_event_id("junk", &two), None);
    }
}
