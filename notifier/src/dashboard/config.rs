//! `[[dashboards]]`: named dashboards of cards, hourly bars, charts and top lists.
//!
//! What a KPI or measure is cannot be checked here (the KPIs live in the database and
//! change while the notifier runs); that is [`resolve`](super::resolve)'s job. Everything
//! else is: names, formats, limits, intervals. A mistake names its key
//! (`dashboards[0].cards[2].format: …`), and `Config::from_layers` adds the file.

use serde::{Deserialize, Serialize};

/// The name of the dashboard shown when none is configured.
pub const DEFAULT_NAME: &str = "default";

/// Number formats the page knows.
pub const FORMATS: &[&str] = &["number", "integer", "currency", "percent", "ms"];

/// Most top-list rows one widget may ask for.
pub const MAX_TOP_LIMIT: u32 = 100;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dashboard {
    /// Served at `/d/{name}`; the first dashboard is also served at `/`.
    pub name: String,
    /// Shown in the page's header; default the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The top row: one card per headline measure.
    #[serde(default)]
    pub cards: Vec<Widget>,
    /// Bars per hour over the last 24 hours.
    #[serde(default)]
    pub hourly: Vec<Widget>,
    /// Time series with a range picker and last week's overlay.
    #[serde(default)]
    pub charts: Vec<Widget>,
    /// Top-N tables by a dimension.
    #[serde(default)]
    pub tops: Vec<TopWidget>,
}

/// A card, hourly bars or a chart: one measure of one KPI.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Widget {
    pub kpi: String,
    pub measure: String,
    /// Default `"<kpi> · <measure>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// One of [`FORMATS`]; default `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// ISO 4217 code, for `format = "currency"` only; default `USD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// A top-N table: `kpi.top(kpi, measure, dimension, window, limit)`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopWidget {
    pub kpi: String,
    pub measure: String,
    pub dimension: String,
    /// A Postgres interval; default `1 day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Rows shown; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// Checks every dashboard; the error names the key (`dashboards[1].tops[0].limit: …`).
pub fn validate(dashboards: &[Dashboard]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (i, d) in dashboards.iter().enumerate() {
        let at = format!("dashboards[{i}]");
        if !valid_name(&d.name) {
            return Err(format!(
                "{at}.name: {:?} is not a dashboard name (1 to 64 of a-z, A-Z, 0-9, '-', '_')",
                d.name
            ));
        }
        if !names.insert(d.name.as_str()) {
            return Err(format!(
                "{at}.name: dashboard {:?} is defined twice",
                d.name
            ));
        }
        if d.title.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(format!("{at}.title: empty (leave it out to show the name)"));
        }
        if d.cards.is_empty() && d.hourly.is_empty() && d.charts.is_empty() && d.tops.is_empty() {
            return Err(format!(
                "{at}: dashboard {:?} shows nothing (give it cards, hourly, charts or tops)",
                d.name
            ));
        }
        for (kind, widgets) in [
            ("cards", &d.cards),
            ("hourly", &d.hourly),
            ("charts", &d.charts),
        ] {
            for (j, w) in widgets.iter().enumerate() {
                let at = format!("{at}.{kind}[{j}]");
                check_common(&at, &w.kpi, &w.measure, &w.label, &w.format, &w.currency)?;
            }
        }
        for (j, t) in d.tops.iter().enumerate() {
            let at = format!("{at}.tops[{j}]");
            check_common(&at, &t.kpi, &t.measure, &t.label, &t.format, &t.currency)?;
            if t.dimension.trim().is_empty() {
                return Err(format!("{at}.dimension: empty"));
            }
            if let Some(limit) = t.limit {
                if limit == 0 || limit > MAX_TOP_LIMIT {
                    return Err(format!(
                        "{at}.limit: {limit} is out of range (1 to {MAX_TOP_LIMIT})"
                    ));
                }
            }
            if let Some(w) = &t.window {
                if w.trim().is_empty() || w.len() > 64 {
                    return Err(format!(
                        "{at}.window: {w:?} is not an interval (e.g. \"1 day\", \"6 hours\")"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_common(
    at: &str,
    kpi: &str,
    measure: &str,
    label: &Option<String>,
    format: &Option<String>,
    currency: &Option<String>,
) -> Result<(), String> {
    if !crate::config::valid_kpi_name(kpi) {
        return Err(format!("{at}.kpi: {kpi:?} is not a KPI name"));
    }
    if measure.trim().is_empty() {
        return Err(format!("{at}.measure: empty"));
    }
    if label.as_deref().is_some_and(|l| l.trim().is_empty()) {
        return Err(format!("{at}.label: empty (leave it out for the default)"));
    }
    if let Some(f) = format {
        if !FORMATS.contains(&f.as_str()) {
            return Err(format!(
                "{at}.format: unknown format {f:?} (one of {})",
                FORMATS.join(", ")
            ));
        }
    }
    if let Some(c) = currency {
        if format.as_deref() != Some("currency") {
            return Err(format!("{at}.currency: only for format = \"currency\""));
        }
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{at}.currency: {c:?} is not an ISO 4217 code like \"USD\" or \"EUR\""
            ));
        }
    }
    Ok(())
}

/// A name that is safe in a URL path segment as it is.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Vec<Dashboard> {
        #[derive(Deserialize)]
        struct F {
            dashboards: Vec<Dashboard>,
        }
        toml::from_str::<F>(toml).unwrap().dashboards
    }

    const GOOD: &str = r#"
[[dashboards]]
name = "shop"
title = "Shop"
  [[dashboards.cards]]
  kpi = "checkout"
  measure = "revenue"
  format = "currency"
  currency = "EUR"
  [[dashboards.tops]]
  kpi = "order_lines"
  measure = "revenue"
  dimension = "product"
  limit = 5
"#;

    #[test]
    fn a_good_config_passes() {
        validate(&parse(GOOD)).unwrap();
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            (
                "name = \"shop\"",
                "name = \"\"",
                "dashboards[0].name: \"\" is not a dashboard name",
            ),
            (
                "name = \"shop\"",
                "name = \"a b\"",
                "dashboards[0].name: \"a b\"",
            ),
            (
                "format = \"currency\"",
                "format = \"curency\"",
                "dashboards[0].cards[0].format: unknown format \"curency\"",
            ),
            (
                "limit = 5",
                "limit = 0",
                "dashboards[0].tops[0].limit: 0 is out of range",
            ),
            (
                "currency = \"EUR\"",
                "currency = \"euro\"",
                "dashboards[0].cards[0].currency: \"euro\"",
            ),
            (
                "kpi = \"checkout\"",
                "kpi = \"Checkout!\"",
                "dashboards[0].cards[0].kpi",
            ),
            (
                "dimension = \"product\"",
                "dimension = \" \"",
                "dashboards[0].tops[0].dimension: empty",
            ),
            (
                "title = \"Shop\"",
                "title = \"\"",
                "dashboards[0].title: empty",
            ),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replace(from, to);
            let e = validate(&parse(&text)).unwrap_err();
            assert!(e.starts_with(want), "{to}: {e}");
        }
        let twice = format!("{GOOD}{}", GOOD.replace("title = \"Shop\"", ""));
        let e = validate(&parse(&twice)).unwrap_err();
        assert_eq!(e, "dashboards[1].name: dashboard \"shop\" is defined twice");
        let empty = "[[dashboards]]\nname = \"x\"\n";
        let e = validate(&parse(empty)).unwrap_err();
        assert!(e.contains("shows nothing"), "{e}");
        let currency_without = GOOD.replace("format = \"currency\"", "format = \"number\"");
        let e = validate(&parse(&currency_without)).unwrap_err();
        assert!(e.contains("only for format = \"currency\""), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = GOOD.replace(
            "measure = \"revenue\"\n  format",
            "measure = \"revenue\"\n  colour = \"red\"\n  format",
        );
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct F {
            dashboards: Vec<Dashboard>,
        }
        let e = toml::from_str::<F>(&text).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }
}
