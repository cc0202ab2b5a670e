//! Serving: everything clients talk to, and the state every handler shares.
//!
//! | module | what lives there |
//! |---|---|
//! | [`http`] | the router (`app`), Origin/CORS, error metrics, health |
//! | [`ws`] | `GET /ws` sessions |
//! | [`sse`] | `GET /sse` event streams |
//! | [`assets`] | the dashboard page (`/`, `/d/{name}`) and `/assets/…`, embedded |
//! | [`api`] | the JSON API: KPIs, alerts and acknowledgements, silences |
//! | [`alert_subscription`] | a client's subscription to the `alerts` topic (WebSocket and SSE) |
//! | [`auth`] | bearer tokens: static keys and HS256 JWTs, KPI scopes |
//! | [`subscription`] | a client's subscription to a topic, checked and (for a new filter) first read |
//!
//! The shared state lives here rather than in `http`, so the handlers and the router
//! that mounts them do not import each other.

pub mod alert_subscription;
pub mod api;
pub mod assets;
pub mod auth;
pub mod http;
pub mod sse;
pub mod subscription;
pub mod ws;

use std::sync::Arc;

use axum::http::HeaderMap;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;
use crate::db::ApiDb;
use crate::error::{truncate, ApiError};
use crate::feed::alert_events::AlertFeed;
use crate::feed::fold_watch::FoldHealth;
use crate::feed::hub::Hub;
use crate::feed::listen::Status;
use crate::metrics::{Metrics, Transport};
use crate::shutdown::Shutdown;
use auth::{Auth, Principal};

/// Everything a request handler may need; cloned per request (one `Arc`).
pub type AppState = Arc<Shared>;

pub struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// The live tail of alert transitions (the `alerts` topic).
    pub alerts: Arc<AlertFeed>,
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    pub status: watch::Receiver<Status>,
    /// Whether the fold keeps up (see `fold_watch`).
    pub fold: watch::Receiver<FoldHealth>,
    pub db: ApiDb,
    /// `POST /api/events`: the ingest sources and their connections.
    pub ingest: Arc<crate::ingest::Ingest>,
    /// One permit per open WebSocket or SSE connection (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    pub shutdown: Shutdown,
}

impl Shared {
    /// Authenticates a request, counting refusals.
    pub fn principal(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Principal, ApiError> {
        self.auth.authenticate(headers, query_token).map_err(|e| {
            self.metrics.rejected.inc(e.reason());
            ApiError::Unauthorized(e.to_string())
        })
    }

    /// Refuses a KPI outside the principal's scope.
    pub fn authorize(&self, p: &Principal, kpi: &str) -> Result<(), ApiError> {
        if p.scope.allows(kpi) {
            Ok(())
        } else {
            self.metrics.rejected.inc("forbidden");
            Err(ApiError::Forbidden(format!(
                "token may not read KPI {:?}",
                truncate(kpi, 64)
            )))
        }
    }
}

/// Holds one connection slot for a streaming client.
pub struct ConnectionGuard(#[allow(dead_code)] OwnedSemaphorePermit);

impl ConnectionGuard {
    pub fn acquire(state: &AppState, t: Transport) -> Result<ConnectionGuard, ApiError> {
        if state.shutdown.is_shutting_down() {
            return Err(ApiError::NotReady("server is shutting down".into()));
        }
        match state.connections.clone().try_acquire_owned() {
            Ok(p) => Ok(ConnectionGuard(p)),
            Err(_) => {
                state.metrics.rejected.inc("too_many_connections");
                tracing::warn!(
                    transport = ?t,
                    limit = state.config.limits.max_connections,
                    "connection refused: limit reached"
                );
                Err(ApiError::TooManyConnections)
            }
        }
    }
}
