//! A client's subscription to a topic, the same for WebSocket, SSE and the REST API:
//! the `dims=` URL parameter, the checks against the KPI, and the first database read of
//! a dimension filter nobody follows yet.
//!
//! It is here, next to its callers, rather than in `feed::filter`, because it needs the
//! serving state (the API connection, the limits); the feed stays unaware of serving.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::Value;

use super::AppState;
use crate::error::{truncate, ApiError};
use crate::feed::filter::{DimFilter, Topic};
use crate::feed::hub::{FilterSlot, Receiver, Snapshot};
use crate::protocol::ErrorCode;

/// A `dims=` URL parameter (JSON text): `None` when absent or empty.
pub fn dims_param(text: Option<&str>) -> Result<Option<DimFilter>, ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request("bad_dims", format!("dims must be a JSON object: {e}"))
    })?;
    DimFilter::parse(Some(&value)).map_err(|m| ApiError::bad_request("bad_dims", m))
}

/// Why a subscription was refused.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    /// The refusal as an HTTP error, for SSE and the REST API.
    pub fn into_api(self, kpi: &str) -> ApiError {
        match self.code {
            ErrorCode::UnknownKpi => ApiError::UnknownKpi(truncate(kpi, 64).into()),
            ErrorCode::NotReady => ApiError::NotReady(self.message),
            other => ApiError::bad_request(other.as_str(), self.message),
        }
    }
}

fn refusal(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message }
}

/// A receiver for `topic`. The caller has checked the token's scope and the KPI name.
/// For a filtered topic nobody follows yet, this reads its first value from the
/// database.
pub async fn subscribe(state: &AppState, topic: &Topic) -> Result<Receiver, Refusal> {
    let unknown = || {
        refusal(
            ErrorCode::UnknownKpi,
            format!("unknown KPI {:?}", truncate(&topic.kpi, 64)),
        )
    };
    let hub = &state.hub;
    let Some(filter) = &topic.dims else {
        return hub.subscribe(&topic.kpi).ok_or_else(unknown);
    };
    let base = hub.current(&topic.kpi).ok_or_else(unknown)?;
    if let Some(key) = filter.unknown_key(&base.dimensions) {
        let known = if base.dimensions.is_empty() {
            "it has none".to_string()
        } else {
            format!("its dimensions are {}", base.dimensions.join(", "))
        };
        return Err(refusal(
            ErrorCode::UnknownDimension,
            format!(
                "KPI {:?} has no dimension {:?}; {known}",
                topic.kpi,
                truncate(key, 64)
            ),
        ));
    }
    let max = state.config.limits.max_dim_filters;
    match hub.filtered_subscribe(&topic.kpi, filter, max) {
        FilterSlot::Live(rx) => Ok(rx),
        FilterSlot::TooMany => Err(refusal(
            ErrorCode::TooManyFilters,
            format!("the notifier follows at most {max} distinct dimension filters"),
        )),
        FilterSlot::Read => {
            // Unregisters the filter if the read fails or this future is dropped midway
            // (the client went away), so no registration is left behind for nobody.
            let _abandon = Abandon(state, topic, filter);
            match read_first(state, &topic.kpi, filter).await {
                Ok(snap) => hub.filtered_install(snap).ok_or_else(unknown),
                Err(e) => {
                    state.metrics.filter_read_errors.fetch_add(1, Relaxed);
                    tracing::warn!(kpi = %topic.kpi, dims = filter.as_str(), error = %e,
                        "could not read a filtered snapshot");
                    Err(refusal(
                        ErrorCode::NotReady,
                        "could not read the filtered KPI from the database; retry shortly".into(),
                    ))
                }
            }
        }
    }
}

/// See [`subscribe`]. Abandoning an installed filter does nothing.
struct Abandon<'a>(&'a AppState, &'a Topic, &'a DimFilter);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.hub.filtered_abandon(&self.1.kpi, self.2);
    }
}

/// The first value of a filtered topic, read on the API connection.
async fn read_first(state: &AppState, kpi: &str, filter: &DimFilter) -> Result<Snapshot, String> {
    let client = state.db.client().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT kpi.snapshot($1, $2::text::jsonb)::text",
            &[&kpi, &filter.as_str()],
        )
        .await
        .map_err(|e| e.to_string())?;
    let data: String = row.try_get(0).map_err(|e| e.to_string())?;
    Snapshot::from_data(kpi, Some(filter.clone()), &data, None).map_err(|e| e.to_string())
}
