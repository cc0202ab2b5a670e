//! A client's subscription to the `alerts` topic, shared by WebSocket and SSE.
//!
//! It starts either from the alerts as they are now (`{"type":"alerts","since":N,…}`,
//! N the newest transition id when read) or, when the client says where it left off,
//! by replaying the transitions after that id from the database. Then it passes on
//! the live tail (`feed::alert_events`), skipping what it already sent and what the
//! token may not see. A client that falls behind the tail catches up from the
//! database, so it misses no transition.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::auth::Principal;
use super::AppState;
use crate::error::ApiError;
use crate::feed::alert_events::{read_after, AlertEvent, BATCH};

/// The most transitions one replay sends; further behind, a client starts over from
/// the alerts as they are now.
const MAX_REPLAY_BATCHES: usize = 20;

/// One message of the topic, with the id a client resumes after (the transition's, or
/// for the list the newest transition it reflects).
#[derive(Debug)]
pub struct Frame {
    pub id: i64,
    pub json: String,
}

pub struct AlertSubscription {
    rx: Receiver<Arc<AlertEvent>>,
    principal: Principal,
    /// The newest transition id the client has (sent or skipped as out of scope).
    last: i64,
    /// The tail overflowed: catch up from the database before reading it again.
    behind: bool,
}

impl AlertSubscription {
    /// Subscribes, and returns the frames to send first: the alerts now, or the
    /// transitions after `since`.
    pub async fn start(
        state: &AppState,
        principal: &Principal,
        since: Option<i64>,
    ) -> Result<(AlertSubscription, Vec<Frame>), ApiError> {
        // The tail first, so nothing committed while the start is read falls between.
        let rx = state.alerts.subscribe();
        let mut sub = AlertSubscription {
            rx,
            principal: principal.clone(),
            last: since.unwrap_or(0),
            behind: false,
        };
        let frames = match since {
            Some(_) => match sub.replay(state).await? {
                Some(frames) => frames,
                None => sub.now(state).await?,
            },
            None => sub.now(state).await?,
        };
        Ok((sub, frames))
    }

    /// The newest transition id the client has.
    pub fn last_id(&self) -> i64 {
        self.last
    }

    /// `{"type":"alerts","since":N,"alerts":[…]}`.
    async fn now(&mut self, state: &AppState) -> Result<Vec<Frame>, ApiError> {
        let client = state.db.client().await?;
        // Read before the list: a transition in between is then both in the list and
        // sent after it, which a client applies twice harmlessly; the other order
        // could lose it.
        let since: i64 = client
            .query_one("SELECT coalesce(max(id), 0) FROM kpi.alert_history", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(ApiError::from_db)?;
        let alerts = super::api::alerts::current(state, &self.principal, None).await?;
        self.last = since;
        self.behind = false;
        let frame = serde_json::json!({ "type": "alerts", "since": since, "alerts": alerts });
        Ok(vec![Frame {
            id: since,
            json: frame.to_string(),
        }])
    }

    /// The transitions after `last` from the database; `None` when there are too
    /// many to replay.
    async fn replay(&mut self, state: &AppState) -> Result<Option<Vec<Frame>>, ApiError> {
        let client = state.db.client().await?;
        let mut frames = Vec::new();
        for _ in 0..MAX_REPLAY_BATCHES {
            let events = read_after(&client, self.last)
                .await
                .map_err(ApiError::from_db)?;
            let full = events.len() as i64 >= BATCH;
            for e in events {
                self.last = e.id;
                if self.principal.scope.allows(&e.kpi) {
                    frames.push(Frame {
                        id: e.id,
                        json: e.frame,
                    });
                }
            }
            if !full {
                self.behind = false;
                return Ok(Some(frames));
            }
        }
        Ok(None)
    }

    /// The next frames to send; waits for them. Cancel-safe: a catch-up cut short is
    /// done again on the next call.
    pub async fn next(&mut self, state: &AppState) -> Result<Vec<Frame>, ApiError> {
        loop {
            if self.behind {
                let frames = match self.replay(state).await? {
                    Some(frames) => frames,
                    None => self.now(state).await?,
                };
                if !frames.is_empty() {
                    return Ok(frames);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(e) if e.id <= self.last => {}
                Ok(e) => {
                    self.last = e.id;
                    if self.principal.scope.allows(&e.kpi) {
                        return Ok(vec![Frame {
                            id: e.id,
                            json: e.frame.clone(),
                        }]);
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    tracing::debug!(
                        skipped,
                        "alert subscriber fell behind the live tail; catching up from the database"
                    );
                    self.behind = true;
                }
                // The feed lives as long as the server: only at shutdown.
                Err(RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}
