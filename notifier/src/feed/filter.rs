//! Dimension filters: a subscription to a KPI restricted to the rows whose dimensions
//! equal given values, such as the checkout KPI of region `eu` only.
//!
//! A filtered subscription is a topic of its own in the hub, keyed by the KPI and the
//! filter in a canonical form (keys sorted), so every client asking for the same filter
//! shares one channel and one database read per change. Its values come from
//! `kpi.snapshot(name, dims)`: the first subscriber reads it once (see
//! `serve::subscription`); after that the LISTEN task re-reads every live filter of a
//! KPI whenever that KPI changes (see `listen`).
//!
//! Only the types live here, so the hub can key its channels by them without this
//! module knowing the hub.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::truncate;

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

/// What a subscription follows: a KPI, whole or filtered by its dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub kpi: String,
    pub dims: Option<DimFilter>,
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
