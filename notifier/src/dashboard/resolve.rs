//! A dashboard as the page gets it (`GET /api/dashboards/{name}`): defaults filled in,
//! the default dashboard expanded from the KPIs there are, and each widget that names a
//! KPI, measure or dimension that does not exist marked with a `problem` the page shows
//! in its place. The same check runs once at start-up and logs a warning per mistake.

use serde::Serialize;
use tokio_postgres::Client;

use super::config::{Dashboard, TopWidget, Widget, DEFAULT_NAME};
use crate::error::ApiError;
use crate::serve::auth::Scope;
use crate::serve::AppState;

/// What the page needs to know of a KPI, from `kpi.list()`.
#[derive(Debug, Clone)]
pub struct KpiInfo {
    pub name: String,
    /// In declaration order (the default dashboard shows the first one's chart).
    pub measures: Vec<String>,
    /// Each measure's kind (`sum`, `count`, `avg`, `percentile`…), in the same order.
    pub kinds: Vec<String>,
    pub dimensions: Vec<String>,
}

/// Every KPI's measures and dimensions.
pub async fn catalog(client: &Client) -> Result<Vec<KpiInfo>, ApiError> {
    let rows = client
        .query(
            "SELECT name, ARRAY(SELECT m->>'name' FROM jsonb_array_elements(measures) AS m), \
                    dimensions, \
                    ARRAY(SELECT m->>'kind' FROM jsonb_array_elements(measures) AS m) \
               FROM kpi.list() ORDER BY name",
            &[],
        )
        .await
        .map_err(ApiError::from_db)?;
    rows.iter()
        .map(|r| {
            Ok(KpiInfo {
                name: r.try_get(0).map_err(ApiError::from_db)?,
                measures: r.try_get(1).map_err(ApiError::from_db)?,
                dimensions: r.try_get(2).map_err(ApiError::from_db)?,
                kinds: r.try_get(3).map_err(ApiError::from_db)?,
            })
        })
        .collect()
}

/// The names and titles of the dashboards, the one served at `/` first.
pub fn names(dashboards: &[Dashboard]) -> Vec<(String, String)> {
    if dashboards.is_empty() {
        return vec![(DEFAULT_NAME.to_string(), "All KPIs".to_string())];
    }
    dashboards
        .iter()
        .map(|d| (d.name.clone(), title(d)))
        .collect()
}

pub fn exists(dashboards: &[Dashboard], name: &str) -> bool {
    names(dashboards).iter().any(|(n, _)| n == name)
}

fn title(d: &Dashboard) -> String {
    d.title.clone().unwrap_or_else(|| d.name.clone())
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Resolved {
    pub name: String,
    pub title: String,
    pub cards: Vec<Item>,
    pub hourly: Vec<Item>,
    pub charts: Vec<Item>,
    pub tops: Vec<Item>,
}

/// One widget with every default filled in.
#[derive(Debug, Serialize, PartialEq)]
pub struct Item {
    pub kpi: String,
    pub measure: String,
    pub label: String,
    pub format: String,
    /// The measure's kind: the page draws an empty step of a `sum` as 0 and bridges
    /// the gaps of an average or percentile (the series has NULL there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Why this widget cannot show anything (unknown KPI, measure or dimension, or a
    /// KPI outside the token's scope); the page shows it in the widget's place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The dashboard named `name` for a token of `scope`, or `None` when there is none.
pub fn resolve(
    dashboards: &[Dashboard],
    name: &str,
    kpis: &[KpiInfo],
    scope: &Scope,
) -> Option<Resolved> {
    let mut r = if dashboards.is_empty() {
        (name == DEFAULT_NAME).then(|| default_dashboard(kpis, scope))?
    } else {
        configured(dashboards.iter().find(|d| d.name == name)?, kpis, scope)
    };
    for i in r
        .cards
        .iter_mut()
        .chain(&mut r.hourly)
        .chain(&mut r.charts)
        .chain(&mut r.tops)
    {
        i.kind = kpis
            .iter()
            .find(|k| k.name == i.kpi)
            .and_then(|k| {
                k.measures
                    .iter()
                    .position(|m| *m == i.measure)
                    .and_then(|p| k.kinds.get(p))
            })
            .cloned();
    }
    Some(r)
}

fn configured(d: &Dashboard, kpis: &[KpiInfo], scope: &Scope) -> Resolved {
    let item = |w: &Widget| {
        let mut i = widget_item(w);
        i.problem = problem(kpis, scope, &i.kpi, &i.measure, None);
        i
    };
    Resolved {
        name: d.name.clone(),
        title: title(d),
        cards: d.cards.iter().map(item).collect(),
        hourly: d.hourly.iter().map(item).collect(),
        charts: d.charts.iter().map(item).collect(),
        tops: d
            .tops
            .iter()
            .map(|t| {
                let mut i = top_item(t);
                i.problem = problem(kpis, scope, &i.kpi, &i.measure, Some(&t.dimension));
                i
            })
            .collect(),
    }
}

/// Every mistake of every dashboard, as `dashboards[0].cards[1]: no KPI named "x"`.
pub fn mistakes(dashboards: &[Dashboard], kpis: &[KpiInfo]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, d) in dashboards.iter().enumerate() {
        for (kind, ws) in [
            ("cards", &d.cards),
            ("hourly", &d.hourly),
            ("charts", &d.charts),
        ] {
            for (j, w) in ws.iter().enumerate() {
                if let Some(p) = problem(kpis, &Scope::All, &w.kpi, &w.measure, None) {
                    out.push(format!("dashboards[{i}].{kind}[{j}]: {p}"));
                }
            }
        }
        for (j, t) in d.tops.iter().enumerate() {
            if let Some(p) = problem(kpis, &Scope::All, &t.kpi, &t.measure, Some(&t.dimension)) {
                out.push(format!("dashboards[{i}].tops[{j}]: {p}"));
            }
        }
    }
    out
}

fn problem(
    kpis: &[KpiInfo],
    scope: &Scope,
    kpi: &str,
    measure: &str,
    dimension: Option<&str>,
) -> Option<String> {
    // Scope first, so a scoped token cannot probe which KPIs exist (as in the API).
    if !scope.allows(kpi) {
        return Some(format!("this token may not read KPI \"{kpi}\""));
    }
    let Some(k) = kpis.iter().find(|k| k.name == kpi) else {
        return Some(format!("no KPI named \"{kpi}\""));
    };
    if !k.measures.iter().any(|m| m == measure) {
        return Some(format!(
            "KPI \"{kpi}\" has no measure \"{measure}\" (it has {})",
            k.measures.join(", ")
        ));
    }
    match dimension {
        Some(d) if !k.dimensions.iter().any(|x| x == d) => Some(format!(
            "KPI \"{kpi}\" has no dimension \"{d}\"{}",
            if k.dimensions.is_empty() {
                String::new()
            } else {
                format!(" (it has {})", k.dimensions.join(", "))
            }
        )),
        _ => None,
    }
}

fn widget_item(w: &Widget) -> Item {
    let format = w.format.clone().unwrap_or_else(|| "number".into());
    Item {
        label: w
            .label
            .clone()
            .unwrap_or_else(|| format!("{} · {}", w.kpi, w.measure)),
        currency: (format == "currency")
            .then(|| w.currency.clone().unwrap_or_else(|| "USD".into())),
        format,
        kind: None,
        kpi: w.kpi.clone(),
        measure: w.measure.clone(),
        dimension: None,
        window: None,
        limit: None,
        problem: None,
    }
}

fn top_item(t: &TopWidget) -> Item {
    let format = t.format.clone().unwrap_or_else(|| "number".into());
    Item {
        label: t
            .label
            .clone()
            .unwrap_or_else(|| format!("Top {} by {}", t.dimension, t.measure)),
        currency: (format == "currency")
            .then(|| t.currency.clone().unwrap_or_else(|| "USD".into())),
        format,
        kind: None,
        kpi: t.kpi.clone(),
        measure: t.measure.clone(),
        dimension: Some(t.dimension.clone()),
        window: Some(t.window.clone().unwrap_or_else(|| "1 day".into())),
        limit: Some(t.limit.unwrap_or(5)),
        problem: None,
    }
}

/// No `[[dashboards]]`: a card per measure of every KPI, a chart and hourly bars of each
/// KPI's first measure, a top list by each KPI's first dimension.
fn default_dashboard(kpis: &[KpiInfo], scope: &Scope) -> Resolved {
    let mut r = Resolved {
        name: DEFAULT_NAME.into(),
        title: "All KPIs".into(),
        cards: vec![],
        hourly: vec![],
        charts: vec![],
        tops: vec![],
    };
    let w = |kpi: &str, measure: &str| Widget {
        kpi: kpi.into(),
        measure: measure.into(),
        label: None,
        format: None,
        currency: None,
    };
    for k in kpis.iter().filter(|k| scope.allows(&k.name)) {
        for m in &k.measures {
            r.cards.push(widget_item(&w(&k.name, m)));
        }
        if let Some(m) = k.measures.first() {
            r.hourly.push(widget_item(&w(&k.name, m)));
            r.charts.push(widget_item(&w(&k.name, m)));
            if let Some(d) = k.dimensions.first() {
                r.tops.push(top_item(&TopWidget {
                    kpi: k.name.clone(),
                    measure: m.clone(),
                    dimension: d.clone(),
                    window: None,
                    limit: None,
                    label: None,
                    format: None,
                    currency: None,
                }));
            }
        }
    }
    r
}

/// Once the notifier is first ready, warns about every widget naming a KPI, measure or
/// dimension the database does not have (the page says so too, in the widget's place).
pub async fn warn_at_start(state: AppState) {
    if state.config.dashboards.is_empty() {
        return;
    }
    let mut status = state.status.clone();
    let mut shutdown = state.shutdown.clone();
    tokio::select! {
        _ = shutdown.wait() => return,
        r = status.wait_for(|s| s.ready) => if r.is_err() { return },
    }
    let kpis = match state.db.client().await {
        Ok(c) => catalog(&c).await,
        Err(e) => Err(e),
    };
    match kpis {
        Ok(kpis) => {
            for m in mistakes(&state.config.dashboards, &kpis) {
                tracing::warn!("dashboard config: {m}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the dashboards against the KPIs"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kpis() -> Vec<KpiInfo> {
        vec![
            KpiInfo {
                name: "checkout".into(),
                measures: vec!["revenue".into(), "orders".into()],
                kinds: vec!["sum".into(), "count_star".into()],
                dimensions: vec!["region".into()],
            },
            KpiInfo {
                name: "api".into(),
                measures: vec!["p95".into()],
                kinds: vec!["percentile".into()],
                dimensions: vec![],
            },
        ]
    }

    #[test]
    fn the_default_dashboard_shows_every_kpi() {
        let r = resolve(&[], "default", &kpis(), &Scope::All).unwrap();
        let cards: Vec<_> = r
            .cards
            .iter()
            .map(|c| format!("{}.{}", c.kpi, c.measure))
            .collect();
        assert_eq!(cards, ["checkout.revenue", "checkout.orders", "api.p95"]);
        assert_eq!(r.charts.len(), 2);
        assert_eq!(r.hourly[0].measure, "revenue");
        assert_eq!(r.tops.len(), 1);
        assert_eq!(r.tops[0].dimension.as_deref(), Some("region"));
        assert_eq!(r.tops[0].limit, Some(5));
        assert!(resolve(&[], "shop", &kpis(), &Scope::All).is_none());
        let scoped = Scope::Kpis(["api".to_string()].into_iter().collect());
        let r = resolve(&[], "default", &kpis(), &scoped).unwrap();
        assert_eq!(r.cards.len(), 1);
    }

    #[test]
    fn mistakes_are_named_per_widget() {
        let d: Dashboard = toml::from_str(
            r#"name = "shop"
            [[cards]]
            kpi = "checkout"
            measure = "revenue"
            format = "currency"
            [[cards]]
            kpi = "nope"
            measure = "x"
            [[charts]]
            kpi = "api"
            measure = "p99"
            [[tops]]
            kpi = "checkout"
            measure = "revenue"
            dimension = "product""#,
        )
        .unwrap();
        let r = resolve(std::slice::from_ref(&d), "shop", &kpis(), &Scope::All).unwrap();
        assert_eq!(r.cards[0].problem, None);
        assert_eq!(r.cards[0].currency.as_deref(), Some("USD"));
        assert_eq!(r.cards[0].kind.as_deref(), Some("sum"));
        assert_eq!(r.cards[1].kind, None);
        assert_eq!(r.cards[1].problem.as_deref(), Some("no KPI named \"nope\""));
        assert_eq!(
            r.charts[0].problem.as_deref(),
            Some("KPI \"api\" has no measure \"p99\" (it has p95)")
        );
        assert_eq!(
            mistakes(&[d], &kpis()),
            [
                "dashboards[0].cards[1]: no KPI named \"nope\"",
                "dashboards[0].charts[0]: KPI \"api\" has no measure \"p99\" (it has p95)",
                "dashboards[0].tops[0]: KPI \"checkout\" has no dimension \"product\" (it has region)",
            ]
        );
    }
}
