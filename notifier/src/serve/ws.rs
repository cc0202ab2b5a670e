//! `GET /ws`: the WebSocket protocol (see `protocol` for the messages).
//!
//! One task per connection runs a `select!` over: a backlog in the connection's outbox,
//! client frames, a ping timer, token expiry and shutdown. New values do not go through
//! it: the publisher writes them into the socket (see `fanout`), and the session only
//! drains what the socket did not take at once. Draining and the session's own sends
//! are bounded by a timeout: a client that cannot take a frame within
//! `limits.send_timeout_ms` is closed as too slow (4002), and while it is slow its
//! subscriptions only keep the newest value, so it costs no memory.
//!
//! The session runs over any byte stream (a hyper upgrade, or an in-memory pipe in the
//! unit tests), with tungstenite parsing the client's frames.

mod upgrade;

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::stream::StreamExt;
use futures::{Sink, SinkExt, Stream};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::alert_subscription::{AlertSubscription, Frame as AlertFrame};
use super::auth::Principal;
use super::{subscription, AppState, ConnectionGuard};
use crate::config::{valid_kpi_name, Limits};
use crate::error::{truncate, ApiError};
use crate::fanout::{Dropped, Outbox, SharedIo, Socket};
use crate::feed::filter::{DimFilter, Topic};
use crate::metrics::Transport;
use crate::protocol::{self, close, parse_client, ClientMsg, ErrorCode, ParseError, Which};

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// Upgrades the request. Auth failures still upgrade and then close with 4001, because
/// a browser's WebSocket API cannot see an HTTP status, only a close code.
pub async fn handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let (response, on_upgrade) = upgrade::accept(&mut req)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let guard = ConnectionGuard::acquire(&state, Transport::Ws)?;
    let auth = state.auth.authenticate(&headers, query.token.as_deref());
    tokio::spawn(async move {
        let socket = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        match auth {
            Ok(principal) => Session::new(state, principal).run(socket).await,
            Err(e) => {
                state.metrics.rejected.inc(e.reason());
                tracing::info!(reason = e.reason(), error = %e, "WebSocket refused: unauthorized");
                let config = ws_config(&state.config.limits);
                let mut ws =
                    WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
                close_with(&state, &mut ws, close::UNAUTHORIZED, &e.to_string()).await;
                drain(&mut ws).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut ws)).await;
            }
        }
        drop(guard);
    });
    Ok(response)
}

/// tungstenite's settings for a connection.
fn ws_config(limits: &Limits) -> WebSocketConfig {
    // tungstenite reserves 128 KiB per connection for reads by default; client messages
    // are tiny, and the read buffer is also zeroed up to its size on every read attempt
    // (4 % of the notifier's CPU in the fan-out benchmark at 4 KiB). Writes are never
    // buffered there: they go to the connection's outbox at once.
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes))
}

/// How a session ends.
enum End {
    /// The client closed or vanished: nothing more to send.
    Gone,
    /// The server closes with this code and reason.
    Close(u16, String),
}

/// A token bucket: `rate` messages per second, bursts up to `burst`.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Session {
    state: AppState,
    principal: Principal,
    bucket: Bucket,
    /// Messages dropped by the rate limit in the current one-second window, and when
    /// that window started.
    dropped: u32,
    dropped_since: Instant,
    /// The `alerts` topic, once the client subscribed to it.
    alerts: Option<AlertSubscription>,
}

impl Session {
    pub fn new(state: AppState, principal: Principal) -> Session {
        let limits = &state.config.limits;
        let bucket = Bucket {
            tokens: limits.burst as f64,
            rate: limits.messages_per_second as f64,
            burst: limits.burst as f64,
            at: Instant::now(),
        };
        Session {
            state,
            principal,
            bucket,
            dropped: 0,
            dropped_since: Instant::now(),
            alerts: None,
        }
    }

    /// Runs the session until the client leaves or the server closes it.
    pub async fn run(mut self, socket: impl Socket) {
        let state = self.state.clone();
        state.metrics.connection_opened(Transport::Ws);
        let _open = OpenGuard(state.clone());
        tracing::debug!(principal = %self.principal.name, "WebSocket connected");
        let cfg = &state.config;
        // The session's own frames may queue behind a backlog up to a message's size.
        let outbox = Outbox::new(socket, cfg.limits.max_message_bytes.max(MIN_QUEUE_BYTES));
        let _subscriptions = Subscriptions(state.clone(), outbox.clone());
        let io = SharedIo(outbox.clone());
        let config = ws_config(&cfg.limits);
        let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let ping_every = Duration::from_millis(cfg.ws.ping_interval_ms);
        let idle_timeout = Duration::from_millis(cfg.ws.idle_timeout_ms);
        let send_timeout = Duration::from_millis(cfg.limits.send_timeout_ms);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        let expiry = token_expiry(self.principal.expires_at);
        tokio::pin!(expiry);
        let shutdown = state.shutdown.clone().fired();
        tokio::pin!(shutdown);

        let end = loop {
            // Biased: a backlog first (a client that does not read must not keep the
            // session busy with its frames), then shutdown and expiry before client
            // frames, so a flooding client cannot keep them from being seen.
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| outbox.poll_backlog(cx)) => {
                    let drain = std::future::poll_fn(|cx| outbox.poll_drain(cx));
                    match tokio::time::timeout(send_timeout, drain).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "WebSocket write failed; client gone");
                            break End::Gone;
                        }
                        Err(_) => break too_slow(send_timeout),
                    }
                }
                _ = &mut shutdown => break End::Close(close::GOING_AWAY, "server shutting down".into()),
                _ = &mut expiry => break End::Close(close::UNAUTHORIZED, "token expired".into()),
                frame = socket.next() => {
                    last_heard = Instant::now();
                    match frame {
                        None | Some(Ok(Message::Close(_))) => break End::Gone,
                        Some(Ok(Message::Text(text))) => {
                            if let Err(end) = self.on_text(text.as_str(), &outbox, &mut socket).await {
                                break end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            break End::Close(close::UNSUPPORTED_DATA, "binary frames are not supported; send JSON text".into())
                        }
                        // tungstenite answers pings itself; any frame proves the client reads.
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Err(e)) => break read_error(&e.to_string(), state.config.limits.max_message_bytes),
                    }
                }
                frames = next_alerts(&mut self.alerts, &state) => {
                    if let Err(end) = self.on_alerts(frames, &mut socket).await {
                        break end;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > idle_timeout {
                        break End::Close(close::TOO_SLOW, format!("nothing received for {} ms (ping unanswered)", idle_timeout.as_millis()));
                    }
                    if let Err(end) = self.send(&mut socket, Message::Ping(Default::default())).await {
                        break end;
                    }
                }
            }
        };
        // No value may follow the close frame.
        unsubscribe_all(&state, &outbox);
        match end {
            End::Gone => {
                tracing::debug!(principal = %self.principal.name, "WebSocket closed by client")
            }
            End::Close(code, reason) => {
                let level_info = code != close::GOING_AWAY;
                if level_info {
                    tracing::info!(principal = %self.principal.name, code, %reason, "closing WebSocket");
                }
                close_with(&state, &mut socket, code, &reason).await;
                drain(&mut socket).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::close(&mut socket)).await;
    }

    /// Handles one text frame from the client.
    async fn on_text<S>(
        &mut self,
        text: &str,
        outbox: &Arc<Outbox>,
        sink: &mut S,
    ) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
        S::Error: Display,
    {
        if !self.bucket.take() {
            // Tell the client once per second, and close it when it keeps going: more
            // messages dropped within a second than the rate it is allowed.
            if self.dropped_since.elapsed() >= Duration::from_secs(1) {
                self.dropped = 0;
                self.dropped_since = Instant::now();
            }
            self.dropped += 1;
            if self.dropped == 1 {
                let msg = format!(
                    "more than {} messages per second; messages are dropped until you slow down",
                    self.state.config.limits.messages_per_second
                );
                self.error(sink, ErrorCode::RateLimited, &msg, None).await?;
            }
            if self.dropped > self.state.config.limits.messages_per_second {
                return Err(End::Close(
                    close::RATE_LIMITED,
                    "rate limit exceeded".into(),
                ));
            }
            return Ok(());
        }
        match parse_client(text) {
            Err(ParseError::NotJson(e)) => {
                self.error(sink, ErrorCode::BadMessage, &format!("not JSON: {e}"), None)
                    .await?;
                Err(End::Close(close::BAD_MESSAGE, "message is not JSON".into()))
            }
            Err(ParseError::Refused { code, message }) => {
                self.error(sink, code, &message, None).await
            }
            Ok(ClientMsg::Ping) => self.send(sink, Message::Text(protocol::PONG.into())).await,
            Ok(ClientMsg::Unsubscribe { kpis, dims }) => {
                let ended = outbox.unsubscribe(|t| {
                    kpis.contains(&t.kpi)
                        && match &dims {
                            Which::All => true,
                            Which::Only(d) => &t.dims == d,
                        }
                });
                for (id, topic) in ended {
                    self.state.hub.fanout.remove(&topic, id);
                }
                Ok(())
            }
            Ok(ClientMsg::Subscribe { kpis, since, dims }) => {
                self.subscribe(sink, outbox, kpis, since, dims).await
            }
            Ok(ClientMsg::SubscribeAlerts { since }) => {
                match AlertSubscription::start(&self.state, &self.principal, since).await {
                    Ok((sub, frames)) => {
                        self.alerts = Some(sub);
                        self.on_alerts(Ok(frames), sink).await
                    }
                    Err(e) => {
                        let msg = format!("cannot subscribe to alerts now ({e}); retry shortly");
                        self.error(sink, ErrorCode::NotReady, &msg, None).await
                    }
                }
            }
            Ok(ClientMsg::UnsubscribeAlerts) => {
                self.alerts = None;
                Ok(())
            }
        }
    }

    /// Sends the `alerts` topic's frames; a catch-up that failed ends the subscription,
    /// with an error saying where to resume from.
    async fn on_alerts<S>(
        &mut self,
        frames: Result<Vec<AlertFrame>, ApiError>,
        sink: &mut S,
    ) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
        S::Error: Display,
    {
        match frames {
            Ok(frames) => {
                for f in frames {
                    self.send(sink, Message::Text(f.json.into())).await?;
                }
                Ok(())
            }
            Err(e) => {
                let last = self.alerts.take().map_or(0, |s| s.last_id());
                let msg = format!(
                    "alerts: cannot catch up ({e}); subscribe_alerts again with \"since\": {last}"
                );
                self.error(sink, ErrorCode::NotReady, &msg, None).await
            }
        }
    }

    async fn subscribe<S>(
        &mut self,
        sink: &mut S,
        outbox: &Arc<Outbox>,
        kpis: Vec<String>,
        since: HashMap<String, i64>,
        dims: Option<DimFilter>,
    ) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
        S::Error: Display,
    {
        let hub = self.state.hub.clone();
        if !hub.is_loaded() {
            let msg = "the notifier has not loaded the KPIs from the database yet; retry shortly";
            return self.error(sink, ErrorCode::NotReady, msg, None).await;
        }
        let max = self.state.config.limits.max_subscriptions;
        for kpi in kpis {
            let shown = truncate(&kpi, 64).to_string();
            // Scope first, so a scoped token cannot probe which KPIs exist.
            if !self.principal.scope.allows(&kpi) {
                let msg = format!("token may not read KPI {shown:?}");
                self.error(sink, ErrorCode::Forbidden, &msg, Some(&shown))
                    .await?;
                continue;
            }
            if !valid_kpi_name(&kpi) || hub.current(&kpi).is_none() {
                let msg = format!("unknown KPI {shown:?}");
                self.error(sink, ErrorCode::UnknownKpi, &msg, Some(&shown))
                    .await?;
                continue;
            }
            let topic = Topic {
                kpi: kpi.clone(),
                dims: dims.clone(),
            };
            let (following, count) = outbox.follows(&topic);
            if !following && count >= max {
                let msg = format!("at most {max} subscriptions per connection");
                self.error(sink, ErrorCode::TooManySubscriptions, &msg, Some(&shown))
                    .await?;
                continue;
            }
            let rx = match subscription::subscribe(&self.state, &topic).await {
                Ok(rx) => rx,
                Err(refusal) => {
                    self.error(sink, refusal.code, &refusal.message, Some(&shown))
                        .await?;
                    continue;
                }
            };
            // Registered before it starts, so no value published from here on is missed:
            // until it starts, the fan-out skips it, and its start sends the newest value.
            let fanout = &self.state.hub.fanout;
            let id = fanout.next_id();
            fanout.add(&topic, id, outbox);
            let since = since.get(&kpi).copied();
            match outbox.subscribe(id, topic.clone(), rx, since, &self.state.metrics) {
                Ok(replaced) => {
                    if let Some(old) = replaced {
                        fanout.remove(&topic, old);
                    }
                }
                Err(Dropped) => {
                    fanout.remove(&topic, id);
                    let msg = format!("KPI {shown:?} was dropped");
                    self.error(sink, ErrorCode::UnknownKpi, &msg, Some(&shown))
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn error<S>(
        &mut self,
        sink: &mut S,
        code: ErrorCode,
        message: &str,
        kpi: Option<&str>,
    ) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
        S::Error: Display,
    {
        self.state.metrics.client_errors.inc(code.as_str());
        tracing::info!(principal = %self.principal.name, code = code.as_str(), %message, "WebSocket client error");
        let frame = protocol::error_frame(code, message, kpi);
        self.send(sink, Message::Text(frame.into())).await
    }

    /// Sends one frame, closing the session if the client cannot take it in time.
    async fn send<S>(&mut self, sink: &mut S, msg: Message) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
        S::Error: Display,
    {
        let timeout = Duration::from_millis(self.state.config.limits.send_timeout_ms);
        let counts = !matches!(msg, Message::Ping(_));
        // Nearly every send completes at once (the socket buffer has room), so the timer
        // starts only when it does not: creating and dropping a tokio timer takes the
        // runtime's timer lock, which 10,000 sessions sending one value contend for.
        let mut send = sink.send(msg);
        let sent = match futures::poll!(&mut send) {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout(timeout, send).await,
        };
        match sent {
            Ok(Ok(())) => {
                if counts {
                    self.state.metrics.message_sent(Transport::Ws);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket send failed; client gone");
                Err(End::Gone)
            }
            Err(_) => Err(too_slow(timeout)),
        }
    }
}

/// The end of a client that did not take a frame in time.
/// The next frames of the `alerts` topic; never, without a subscription.
async fn next_alerts(
    sub: &mut Option<AlertSubscription>,
    state: &AppState,
) -> Result<Vec<AlertFrame>, ApiError> {
    match sub {
        Some(s) => s.next(state).await,
        None => std::future::pending().await,
    }
}

fn too_slow(timeout: Duration) -> End {
    End::Close(
        close::TOO_SLOW,
        format!(
            "client did not read a message within {} ms",
            timeout.as_millis()
        ),
    )
}

/// The least a connection's outbox may queue for the session's own frames.
const MIN_QUEUE_BYTES: usize = 64 * 1024;

/// Ends the connection's subscriptions: the fan-out stops writing to it.
fn unsubscribe_all(state: &AppState, outbox: &Outbox) {
    for (id, topic) in outbox.close() {
        state.hub.fanout.remove(&topic, id);
    }
}

/// Ends the subscriptions however the session ends (a panic, or the runtime dropping
/// the task at exit), so the registry never keeps a dead connection's socket.
struct Subscriptions(AppState, Arc<Outbox>);

impl Drop for Subscriptions {
    fn drop(&mut self) {
        unsubscribe_all(&self.0, &self.1);
    }
}

/// Maps a read error to how the session ends.
fn read_error(e: &str, limit: usize) -> End {
    // tungstenite reports an oversized message as a capacity error ("Space limit
    // exceeded: Message too long"); axum only exposes it as text.
    if e.contains("Space limit exceeded") || e.contains("too long") || e.contains("too big") {
        End::Close(close::TOO_BIG, format!("message larger than {limit} bytes"))
    } else {
        tracing::debug!(error = %e, "WebSocket read failed");
        End::Gone
    }
}

/// Sends a close frame, best effort: a client that stopped reading will not take it,
/// so the attempt is bounded (the caller then drains and drops the socket anyway).
async fn close_with<S>(state: &AppState, sink: &mut S, code: u16, reason: &str)
where
    S: Sink<Message> + Unpin,
{
    state.metrics.ws_closes.inc(&code.to_string());
    let frame = CloseFrame {
        code: CloseCode::from(code),
        // Close reasons are limited to 123 bytes by the protocol.
        reason: truncate(reason, 120).into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Completes the close handshake: reads (and discards) what the client still sends
/// until its close reply, for at most a second. Dropping a socket with unread data makes
/// the kernel send a reset, and the client may then lose the close frame and its code.
async fn drain<R, E>(stream: &mut R)
where
    R: Stream<Item = Result<Message, E>> + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// Resolves when the principal's token expires (never for static keys).
pub(crate) async fn token_expiry(expires_at: Option<i64>) {
    match expires_at {
        Some(exp) => {
            let left = exp - chrono::Utc::now().timestamp();
            tokio::time::sleep(Duration::from_secs(left.max(0) as u64)).await
        }
        None => std::future::pending().await,
    }
}

/// Keeps the open-connections gauge right however the session ends.
struct OpenGuard(AppState);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics.connection_closed(Transport::Ws);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
