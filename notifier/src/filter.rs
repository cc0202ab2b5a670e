//! Dimension filters: a subscription to a KPI restricted to the rows whose dimensions
//! equal given values, such as the checkout KPI of region `eu` only.
//!
//! A filtered subscription is a topic of its own in the hub, keyed by the KPI and the
//! filter in a canonical form (keys sorted), so every client asking for the same filter
//! shares one channel and one database read per change. Its values come from
//! `kpi.snapshot(name, dims)`: the first subscriber reads it once; after that the LISTEN
//! task re-reads every live filter of a KPI whenever that KPI changes (see `listen`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde_json::Value;

use crate::error::ApiError;
use crate::http::AppState;
use crate::hub::{FilterSlot, Receiver, Snapshot};
use crate::protocol::{truncate, ErrorCode};

/// Longest dimension value a filter may hold, in bytes. Values are compared with a
/// dimension's text form; nothing that long is a sensible dimension value.
pub const MAX_VALUE_BYTES: usize = 256;

/// A validated dimension filter: a JSON object of dimension name → string, number,
/// boolean or null (null matches rows where the dimension is NULL), kept as canonical
/// JSON text with sorted keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DimFilter {
    json: Arc<str>,
    keys: Arc<[String]>,
}

impl DimFilter {
    /// Parses a client's `dims`. `None`, JSON null and `{}` mean no filter.
    pub fn parse(v: Option<&Value>) -> Result<Option<DimFilter>, String> {
        let obj = match v {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(obj)) => obj,
            Some(_) => {
                return Err(
                    "\"dims\" must be an object of dimension → value, e.g. {\"region\":\"eu\"}"
                        .into(),
                )
            }
        };
        if obj.is_empty() {
            return Ok(None);
        }
        let mut sorted = BTreeMap::new();
        for (key, value) in obj {
            let ok = match value {
                Value::String(s) => s.len() <= MAX_VALUE_BYTES,
                Value::Null | Value::Bool(_) | Value::Number(_) => true,
                Value::Array(_) | Value::Object(_) => false,
            };
            if !ok {
                return Err(format!(
                    "\"dims\".{} must be a string of at most {MAX_VALUE_BYTES} bytes, a number, a boolean or null",
                    truncate(key, 64)
                ));
            }
            sorted.insert(key.clone(), value.clone());
        }
        let keys: Vec<String> = sorted.keys().cloned().collect();
        // A map of strings to scalars always serializes.
        let json = serde_json::to_string(&sorted).map_err(|e| e.to_string())?;
        Ok(Some(DimFilter {
            json: json.into(),
            keys: keys.into(),
        }))
    }

    /// The canonical JSON text, as sent to `kpi.snapshot` and to clients.
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// The first of the filter's dimensions that `dimensions` lacks.
    pub fn unknown_key<'a>(&'a self, dimensions: &[String]) -> Option<&'a str> {
        self.keys
            .iter()
            .find(|k| !dimensions.contains(k))
            .map(String::as_str)
    }
}

/// A `dims=` URL parameter (JSON text): `None` when absent or empty.
pub fn from_param(text: Option<&str>) -> Result<Option<DimFilter>, ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request("bad_dims", format!("dims must be a JSON object: {e}"))
    })?;
    DimFilter::parse(Some(&value)).map_err(|m| ApiError::bad_request("bad_dims", m))
}

/// What a subscription follows: a KPI, whole or filtered by its dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub kpi: String,
    pub dims: Option<DimFilter>,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_are_canonical() {
        let a = DimFilter::parse(Some(&json!({"region": "eu", "channel": "web"})))
            .unwrap()
            .unwrap();
        let b = DimFilter::parse(Some(&json!({"channel": "web", "region": "eu"})))
            .unwrap()
            .unwrap();
        assert_eq!(a, b, "key order does not make another topic");
        assert_eq!(a.as_str(), r#"{"channel":"web","region":"eu"}"#);
        let dims = ["region".to_string(), "channel".to_string()];
        assert_eq!(a.unknown_key(&dims), None);
        assert_eq!(a.unknown_key(&dims[..1]), Some("channel"));
    }

    #[test]
    fn empty_means_unfiltered_and_bad_shapes_are_refused() {
        assert_eq!(DimFilter::parse(None).unwrap(), None);
        assert_eq!(DimFilter::parse(Some(&json!(null))).unwrap(), None);
        assert_eq!(DimFilter::parse(Some(&json!({}))).unwrap(), None);
        assert!(
            DimFilter::parse(Some(&json!({"region": null, "n": 3, "b": true})))
                .unwrap()
                .is_some()
        );
        for bad in [
            json!("eu"),
            json!(["eu"]),
            json!({"region": ["eu"]}),
            json!({"region": {"eq": "eu"}}),
            json!({"region": "x".repeat(MAX_VALUE_BYTES + 1)}),
        ] {
            assert!(DimFilter::parse(Some(&bad)).is_err(), "{bad}");
        }
    }
}
