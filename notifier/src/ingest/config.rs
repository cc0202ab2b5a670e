//! `[ingest]`: the sources that `POST /api/events/{source}` accepts, each mapping the
//! fields of a JSON event to the columns of one table.
//!
//! ```toml
//! [ingest]
//! max_connections = 4
//!
//! [[ingest.sources]]
//! name = "shop_orders"
//! table = "public.orders"
//! extra_fields = "reject"
//! [ingest.sources.columns]
//! id = { required = true }                       # path defaults to the column's name
//! created_at = { path = "created_at", type = "timestamptz", required = true }
//! total = { path = "total_price", type = "numeric" }
//! country = { path = "shipping_address.country_code" }
//! ```
//!
//! What can be checked without the database is checked here, at load; the table, its
//! columns and their types are checked against the database by
//! [`schema`](super::schema) at start-up and before a source's first write.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::mapping::{FieldPath, DECLARED_TYPES};
use crate::config::valid_kpi_name;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Database connections the notifier opens for ingest; each request holds one for
    /// its transaction, so this bounds the concurrent writes.
    pub max_connections: usize,
    /// How long a request waits for a free connection before a 503 (milliseconds).
    pub acquire_timeout_ms: u64,
    pub sources: Vec<SourceConfig>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_connections: 4,
            acquire_timeout_ms: 5_000,
            sources: Vec::new(),
        }
    }
}

/// One source: `POST /api/events/{name}` writes into `table`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The URL's `{source}`, and what token scopes name (`ingest = ["shop_orders"]`).
    pub name: String,
    /// The target table, schema-qualified or found on the search path.
    pub table: String,
    /// What to do with event fields no column maps: `"reject"` the event, or
    /// `"ignore"` them.
    #[serde(default = "SourceConfig::default_extra_fields")]
    pub extra_fields: String,
    /// Largest request body accepted (bytes); larger gets a 413.
    #[serde(default = "SourceConfig::default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one request; more gets a 413.
    #[serde(default = "SourceConfig::default_max_events")]
    pub max_events: usize,
    /// Column name → where its value comes from in the event.
    pub columns: BTreeMap<String, ColumnSpec>,
}

impl SourceConfig {
    fn default_extra_fields() -> String {
        "reject".into()
    }
    fn default_max_body_bytes() -> usize {
        1024 * 1024
    }
    fn default_max_events() -> usize {
        1_000
    }

    pub fn extra(&self) -> ExtraFields {
        if self.extra_fields == "ignore" {
            ExtraFields::Ignore
        } else {
            ExtraFields::Reject
        }
    }
}

/// What becomes of event fields that no column maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraFields {
    Reject,
    Ignore,
}

/// Where one column's value comes from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// A dotted path into the event (`customer.id`), or `"."` for the whole event (a
    /// `jsonb` column keeping the raw payload). Default: the column's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The column's type as the mapping expects it (`text`, `integer`, `numeric`, …).
    /// Optional: the database's type is used either way, and a declared type that does
    /// not match it is an error.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The event must carry a non-null value; otherwise absent or null is NULL.
    #[serde(default)]
    pub required: bool,
}

impl ColumnSpec {
    /// The path as written, defaulting to the column's name.
    pub fn path_or<'a>(&'a self, column: &'a str) -> &'a str {
        self.path.as_deref().unwrap_or(column)
    }
}

impl IngestConfig {
    /// Checks names, paths, types and limits; errors name the key
    /// (`ingest.sources[0].columns.total.type: …`).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 || self.acquire_timeout_ms == 0 {
            return Err("ingest: max_connections and acquire_timeout_ms must be > 0".into());
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = format!("ingest.sources[{i}]");
            if !valid_kpi_name(&s.name) {
                return Err(format!(
                    "{key}.name: {:?} is not a source name (lowercase letters, digits and _, \
                     starting with a letter or _, at most 48)",
                    s.name
                ));
            }
            if !names.insert(s.name.as_str()) {
                return Err(format!("{key}.name: source {:?} is defined twice", s.name));
            }
            if s.table.trim().is_empty() {
                return Err(format!("{key}.table: empty"));
            }
            if s.extra_fields != "reject" && s.extra_fields != "ignore" {
                return Err(format!(
                    "{key}.extra_fields: {:?} is neither \"reject\" nor \"ignore\"",
                    s.extra_fields
                ));
            }
            if s.max_body_bytes < 2 || s.max_events == 0 {
                return Err(format!(
                    "{key}: max_body_bytes must be >= 2 and max_events > 0"
                ));
            }
            if s.columns.is_empty() {
                return Err(format!("{key}.columns: no columns mapped"));
            }
            for (column, spec) in &s.columns {
                let ckey = format!("{key}.columns.{column}");
                if column.is_empty() {
                    return Err(format!("{key}.columns: a column name is empty"));
                }
                FieldPath::parse(spec.path_or(column))
                    .map_err(|why| format!("{ckey}.path: {why}"))?;
                if let Some(t) = &spec.type_ {
                    if !DECLARED_TYPES.contains(&t.as_str()) {
                        return Err(format!(
                            "{ckey}.type: {t:?} is not a type ingest converts to (one of {}; \
                             or leave it out to take the column's type from the database)",
                            DECLARED_TYPES.join(", ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn source(&self, name: &str) -> Option<(usize, &SourceConfig)> {
        self.sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<IngestConfig, String> {
        let c: IngestConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map(|()| c)
    }

    const GOOD: &str = r#"
        [[sources]]
        name = "shop_orders"
        table = "orders"
        [sources.columns]
        id = { required = true }
        total = { path = "total_price", type = "numeric" }
        raw = { path = ".", type = "jsonb" }
    "#;

    #[test]
    fn a_good_source() {
        let c = parse(GOOD).unwrap();
        let s = &c.sources[0];
        assert_eq!(s.extra(), ExtraFields::Reject);
        assert_eq!(s.max_events, 1_000);
        assert_eq!(s.columns["id"].path_or("id"), "id");
        assert_eq!(s.columns["total"].path_or("total"), "total_price");
        assert!(c.source("shop_orders").is_some() && c.source("nope").is_none());
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, key) in [
            (
                GOOD.replace("shop_orders", "Shop-Orders"),
                "ingest.sources[0].name",
            ),
            (
                GOOD.replace("\"numeric\"", "\"money\""),
                "ingest.sources[0].columns.total.type",
            ),
            (
                GOOD.replace("\"total_price\"", "\"a..b\""),
                "ingest.sources[0].columns.total.path",
            ),
            (
                GOOD.replace(
                    "table = \"orders\"",
                    "table = \"orders\"\nextra_fields = \"drop\"",
                ),
                "ingest.sources[0].extra_fields",
            ),
            (
                GOOD.replace("table = \"orders\"", "table = \"orders\"\nmax_events = 0"),
                "ingest.sources[0]",
            ),
            (format!("{GOOD}\n{GOOD}"), "ingest.sources[1].name"),
            (
                "[[sources]]\nname = \"a\"\ntable = \"t\"\n[sources.columns]\n".to_string(),
                "ingest.sources[0].columns",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.starts_with(key), "{key}: {e}");
        }
    }
}
