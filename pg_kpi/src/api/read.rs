//! Reads for dashboards and SQL users: `kpi.value`, `kpi.series`, `kpi.top`,
//! `kpi.snapshot`. All of them merge per-bucket states from the state view (folded
//! aggregates plus pending deltas), so they are exact at read time, and windows never
//! average averages.

use crate::catalog::{quote_literal, Kpi};
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::privileges::{as_extension_owner, check_can_read};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::{AnyNumeric, JsonB};

const ORIGIN: &str = "'2000-01-01 00:00:00+00'::timestamptz";

/// Loads a KPI the caller may read.
fn readable(name: &str) -> KpiResult<Kpi> {
    let kpi = as_extension_owner(|| Kpi::by_name(name))?;
    let view = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT to_regclass(format('kpi.%I', $1::text))::oid",
        &[name.into()],
    )?
    .ok_or_else(|| KpiError::undefined_kpi(name))?;
    check_can_read(view, name)?;
    Ok(kpi)
}

/// Predicates restricting state rows `s` and source rows `r` to `dims` (a JSON object of
/// dimension → value; JSON null matches NULL).
fn dims_filter(k: &Kpi, dims: &serde_json::Value) -> KpiResult<(String, String)> {
    let obj = match dims {
        serde_json::Value::Null => return Ok((String::new(), String::new())),
        serde_json::Value::Object(o) => o,
        _ => {
            return Err(KpiError::invalid(
                "dims must be a JSON object",
                "For example: dims => '{\"region\": \"EU\"}'.",
            ))
        }
    };
    let (mut on_state, mut on_source) = (String::new(), String::new());
    for (key, value) in obj {
        k.dimension_index(key)?;
        let col = quote_identifier(key);
        let text = match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        match text {
            None => {
                on_state.push_str(&format!(" AND s.{col} IS NULL"));
                on_source.push_str(&format!(" AND r.{col} IS NULL"));
            }
            Some(t) => {
                let lit = quote_literal(&t);
                on_state.push_str(&format!(" AND s.{col}::text = {lit}"));
                on_source.push_str(&format!(" AND r.{col}::text = {lit}"));
            }
        }
    }
    Ok((on_state, on_source))
}

fn width_sql(k: &Kpi) -> String {
    format!("{}::interval", quote_literal(&k.bucket))
}

/// SQL for finalized measure values over state rows in `[lo, hi)`, grouped by `group`
/// (an expression over `s`, exposed as `s._g`). `group_lo`/`group_hi` bound each
/// group's rows for min/max rescans, `extra_source_pred` restricts rescanned rows.
struct Query<'a> {
    k: &'a Kpi,
    lo: String,
    hi: String,
    group: String,
    group_lo: String,
    group_hi: String,
    dims_state: String,
    dims_source: String,
}

impl Query<'_> {
    fn measure(&self, i: usize) -> String {
        let rescan = self
            .k
            .rescan_sql(i, &self.group_lo, &self.group_hi, &self.dims_source);
        format!(
            "({})::numeric",
            self.k.measures[i].finalize_sql(i, rescan.as_deref())
        )
    }

    fn from(&self) -> String {
        format!(
            "(SELECT {group} AS _g, s.* FROM {state} s
               WHERE s.bucket >= ({lo}) AND s.bucket < ({hi}){dims}) s",
            group = self.group,
            state = self.k.state_view(),
            lo = self.lo,
            hi = self.hi,
            dims = self.dims_state,
        )
    }
}

fn window_bounds(k: &Kpi, end: &str, window: &str) -> (String, String) {
    let w = width_sql(k);
    (
        format!("date_bin({w}, ({end}) - ({window}), {ORIGIN})"),
        format!("date_bin({w}, {end}, {ORIGIN}) + {w}"),
    )
}

#[pg_extern(schema = "kpi", name = "_value", stable, parallel_safe)]
fn value(name: &str, measure: &str, window: Interval, dims: JsonB) -> Option<AnyNumeric> {
    (|| -> KpiResult<Option<AnyNumeric>> {
        let k = readable(name)?;
        let i = k.measure_index(measure)?;
        let (dims_state, dims_source) = dims_filter(&k, &dims.0)?;
        let (lo, hi) = window_bounds(&k, "now()", "$1");
        let q = Query {
            k: &k,
            lo: lo.clone(),
            hi: hi.clone(),
            group: "0".into(),
            group_lo: lo,
            group_hi: hi,
            dims_state,
            dims_source,
        };
        let sql = format!("SELECT {} FROM {}", q.measure(i), q.from());
        as_extension_owner(|| {
            Ok(Spi::get_one_with_args::<AnyNumeric>(
                &sql,
                &[window.into()],
            )?)
        })
    })()
    .or_raise()
}

#[pg_extern(schema = "kpi", name = "_series", stable, parallel_safe)]
fn series(
    name: &str,
    measure: &str,
    since: TimestampWithTimeZone,
    until: TimestampWithTimeZone,
    step: Option<Interval>,
    dims: JsonB,
) -> TableIterator<
    'static,
    (
        name!(bucket, TimestampWithTimeZone),
        name!(value, Option<AnyNumeric>),
    ),
> {
    let rows = (|| -> KpiResult<Vec<(TimestampWithTimeZone, Option<AnyNumeric>)>> {
        let k = readable(name)?;
        let i = k.measure_index(measure)?;
        let (dims_state, dims_source) = dims_filter(&k, &dims.0)?;
        let step_sql = match &step {
            Some(s) => {
                let us = i64::from(s.days()) * 86_400_000_000 + s.micros();
                if s.months() != 0 || us <= 0 || us % k.bucket_us != 0 {
                    return Err(KpiError::invalid(
                        format!("step {s} is not a positive multiple of the KPI's bucket {}", k.bucket),
                        "Use the bucket width or a multiple of it, such as '1 hour' for a 1-minute KPI.",
                    ));
                }
                "$3::interval".to_string()
            }
            None => width_sql(&k),
        };
        let q = Query {
            k: &k,
            lo: format!("date_bin({step_sql}, $1, {ORIGIN})"),
            hi: "$2".into(),
            group: format!("date_bin({step_sql}, s.bucket, {ORIGIN})"),
            group_lo: "s._g".into(),
            group_hi: format!("s._g + {step_sql}"),
            dims_state,
            dims_source,
        };
        let zero = if k.measures[i].result_type() == "bigint" { "0" } else { "NULL" };
        let sql = format!(
            "WITH v AS (SELECT s._g, {m} AS v FROM {from} GROUP BY s._g)
             SELECT g.b, coalesce(v.v, {zero}) FROM generate_series(date_bin({step_sql}, $1, {ORIGIN}), $2, {step_sql}) g(b)
               LEFT JOIN v ON v._g = g.b ORDER BY g.b",
            m = q.measure(i),
            from = q.from(),
        );
        as_extension_owner(|| {
            Spi::connect(|c| {
                c.select(&sql, None, &[since.into(), until.into(), step.into()])?
                    .map(|r| Ok((r.get::<TimestampWithTimeZone>(1)?.ok_or_else(|| KpiError::internal("null bucket"))?, r.get::<AnyNumeric>(2)?)))
                    .collect::<KpiResult<Vec<_>>>()
            })
        })
    })()
    .or_raise();
    TableIterator::new(rows)
}

#[pg_extern(schema = "kpi", name = "_top", stable, parallel_safe)]
fn top(
    name: &str,
    measure: &str,
    dimension: &str,
    window: Interval,
    n: i32,
) -> TableIterator<
    'static,
    (
        name!(dimension_value, Option<String>),
        name!(value, Option<AnyNumeric>),
    ),
> {
    let rows = (|| -> KpiResult<Vec<(Option<String>, Option<AnyNumeric>)>> {
        let k = readable(name)?;
        let i = k.measure_index(measure)?;
        k.dimension_index(dimension)?;
        let col = quote_identifier(dimension);
        let (lo, hi) = window_bounds(&k, "now()", "$1");
        let q = Query {
            k: &k,
            lo: lo.clone(),
            hi: hi.clone(),
            group: format!("s.{col}::text"),
            group_lo: lo,
            group_hi: hi,
            dims_state: String::new(),
            dims_source: format!(" AND r.{col}::text IS NOT DISTINCT FROM s._g"),
        };
        let sql = format!(
            "SELECT s._g, {m} AS v FROM {from} GROUP BY s._g HAVING sum(s._n) <> 0
              ORDER BY v DESC NULLS LAST, s._g LIMIT $2",
            m = q.measure(i),
            from = q.from(),
        );
        as_extension_owner(|| {
            Spi::connect(|c| {
                c.select(&sql, None, &[window.into(), n.max(0).into()])?
                    .map(|r| Ok((r.get::<String>(1)?, r.get::<AnyNumeric>(2)?)))
                    .collect::<KpiResult<Vec<_>>>()
            })
        })
    })()
    .or_raise();
    TableIterator::new(rows)
}

/// Everything a dashboard card needs, in one jsonb (see docs/sql-contract.md).
#[pg_extern(schema = "kpi", name = "_snapshot", stable, parallel_safe)]
fn snapshot(name: &str) -> JsonB {
    (|| -> KpiResult<JsonB> {
        let k = readable(name)?;
        let w = width_sql(&k);
        let ranges = [
            ("today", format!("date_bin({w}, date_trunc('day', now()), {ORIGIN})"), format!("date_bin({w}, now(), {ORIGIN}) + {w}")),
            ("window", window_bounds(&k, "now()", "interval '1 hour'").0, window_bounds(&k, "now()", "interval '1 hour'").1),
            ("window_day_ago", window_bounds(&k, "now() - interval '1 day'", "interval '1 hour'").0, window_bounds(&k, "now() - interval '1 day'", "interval '1 hour'").1),
            ("window_week_ago", window_bounds(&k, "now() - interval '7 days'", "interval '1 hour'").0, window_bounds(&k, "now() - interval '7 days'", "interval '1 hour'").1),
        ];
        let mut froms = Vec::new();
        let mut per_measure: Vec<Vec<String>> = vec![Vec::new(); k.measures.len()];
        for (j, (label, lo, hi)) in ranges.iter().enumerate() {
            let q = Query { k: &k, lo: lo.clone(), hi: hi.clone(), group: "0".into(), group_lo: lo.clone(), group_hi: hi.clone(), dims_state: String::new(), dims_source: String::new() };
            let cols: Vec<String> = (0..k.measures.len()).map(|i| format!("{} AS m{i}", q.measure(i))).collect();
            froms.push(format!("(SELECT {} FROM {}) r{j}", cols.join(", "), q.from()));
            for (i, pm) in per_measure.iter_mut().enumerate() {
                pm.push(format!("'{label}', r{j}.m{i}"));
            }
        }
        let measures: Vec<String> = k
            .measures
            .iter()
            .zip(&per_measure)
            .map(|(m, parts)| format!("{}, jsonb_build_object({})", quote_literal(&m.name), parts.join(", ")))
            .collect();
        let sql = format!(
            "SELECT jsonb_build_object('kpi', $1::text, 'version', $2::bigint, 'as_of', now(),
                    'bucket', $3::interval, 'window', interval '1 hour', 'dimensions', to_jsonb($4::text[]),
                    'measures', jsonb_build_object({measures}))
               FROM {froms}",
            measures = measures.join(", "),
            froms = froms.join(", "),
        );
        let bucket = k.bucket.clone();
        as_extension_owner(|| {
            let version = Spi::get_one_with_args::<i64>("SELECT version FROM kpi.definitions WHERE id = $1", &[k.id.into()])?.unwrap_or(k.version);
            Spi::get_one_with_args::<JsonB>(
                &sql,
                &[k.name.as_str().into(), version.into(), bucket.as_str().into(), k.dimensions.clone().into()],
            )?
            .ok_or_else(|| KpiError::internal("snapshot query returned nothing"))
        })
    })()
    .or_raise()
}

/// Turns the capture trigger's bucket (µs since 2000-01-01 UTC) into a timestamptz.
#[pg_extern(schema = "kpi", name = "_bucket_ts", immutable, strict, parallel_safe)]
fn bucket_ts(us: i64) -> TimestampWithTimeZone {
    // SAFETY: a timestamptz datum is exactly microseconds since 2000-01-01 UTC.
    unsafe {
        TimestampWithTimeZone::from_datum(pg_sys::Datum::from(us), false)
            .unwrap_or_else(|| KpiError::internal("bad bucket").raise())
    }
}
