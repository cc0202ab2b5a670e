//! The definition a rebuild builds: the KPI's own, with what `kpi.alter` changes.

use crate::catalog::{Kpi, Tier};
use crate::errors::{KpiError, KpiResult};
use crate::measures::{Kind, Measure};
use pgrx::datum::Interval;
use pgrx::prelude::*;

/// What `kpi.alter` was given; `None` keeps the KPI's current value.
pub struct Changes<'a> {
    pub time_column: Option<&'a str>,
    pub measures: Option<&'a str>,
    pub dimensions: Option<Vec<String>>,
    /// `''` removes the filter.
    pub filter: Option<&'a str>,
    pub bucket: Option<Interval>,
    /// A zero interval keeps buckets forever.
    pub retention: Option<Interval>,
    /// `{}` or JSON null removes the rollups.
    pub rollups: Option<serde_json::Value>,
}

/// The arguments `kpi.create` would take for the new definition.
pub struct Resolved {
    pub time_column: String,
    pub measures: String,
    pub dimensions: Vec<String>,
    pub filter: Option<String>,
    pub bucket: Interval,
    pub retention: Option<Interval>,
    pub rollups: Vec<Tier>,
}

/// A measure as the user would write it: stored expressions are Postgres's normalized
/// SQL, which analyses to the same expression again.
pub fn measure_text(m: &Measure) -> String {
    let e = m.expr.as_deref().unwrap_or_default();
    let call = match m.kind {
        Kind::CountStar => "count(*)".to_string(),
        Kind::Count => format!("count({e})"),
        Kind::Sum => format!("sum({e})"),
        Kind::Avg => format!("avg({e})"),
        Kind::Min => format!("min({e})"),
        Kind::Max => format!("max({e})"),
        Kind::CountDistinct => format!("count_distinct({e})"),
        Kind::Percentile => format!("percentile({e}, {})", m.q.unwrap_or(0.5)),
        Kind::Derived => m.formula.clone().unwrap_or_default(),
    };
    format!("{} = {call}", m.name)
}

pub fn measures_text(k: &Kpi) -> String {
    k.measures
        .iter()
        .map(measure_text)
        .collect::<Vec<_>>()
        .join(", ")
}

fn interval(text: &str) -> KpiResult<Interval> {
    Spi::get_one_with_args::<Interval>("SELECT $1::interval", &[text.into()])?
        .ok_or_else(|| KpiError::internal(format!("interval {text}")))
}

fn is_zero(i: &Interval) -> bool {
    i.months() == 0 && i.days() == 0 && i.micros() == 0
}

/// The stored rollup tiers of `k` in `kpi.create`'s JSON form.
fn rollups_json(k: &Kpi) -> serde_json::Value {
    let stored = k.tiers.iter().skip(1).filter(|t| t.dims);
    serde_json::Value::Object(
        stored
            .map(|t| {
                (
                    t.bucket.clone(),
                    t.retention
                        .clone()
                        .map_or(serde_json::Value::Null, serde_json::Value::String),
                )
            })
            .collect(),
    )
}

pub fn resolve(old: &Kpi, c: Changes<'_>) -> KpiResult<Resolved> {
    let bucket = match c.bucket {
        Some(b) => b,
        None => interval(&old.bucket)?,
    };
    let retention = match c.retention {
        Some(r) if is_zero(&r) => None,
        Some(r) => Some(r),
        None => old.tiers[0]
            .retention
            .as_deref()
            .map(interval)
            .transpose()?,
    };
    let filter = match c.filter {
        Some(f) if f.trim().is_empty() => None,
        Some(f) => Some(f.to_string()),
        None => old.filter.clone(),
    };
    let rollups = c.rollups.unwrap_or_else(|| rollups_json(old));
    let rollups = match &rollups {
        serde_json::Value::Object(o) if o.is_empty() => Vec::new(),
        r => super::super::create::parse_rollups(r, &bucket, retention.as_ref())?,
    };
    Ok(Resolved {
        time_column: c
            .time_column
            .map_or_else(|| old.time_column.clone(), str::to_string),
        measures: c
            .measures
            .map_or_else(|| measures_text(old), str::to_string),
        dimensions: c.dimensions.unwrap_or_else(|| old.dimensions.clone()),
        filter,
        bucket,
        retention,
        rollups,
    })
}
