//! Reads for dashboards and SQL users: `kpi.value`, `kpi.series`, `kpi.top`,
//! `kpi.snapshot`. All of them merge per-bucket states from the state view (folded
//! aggregates plus pending deltas), so they are exact at read time, and windows never
//! average averages.

use crate::catalog::{quote_literal, Kpi};
use crate::deltas::{self, Merged};
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::prepared;
use crate::privileges::{as_extension_owner, check_can_read};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use pgrx::{AnyNumeric, JsonB};

const ORIGIN: &str = "'2000-01-01 00:00:00+00'::timestamptz";

/// Loads a KPI the caller may read.
fn readable(name: &str) -> KpiResult<Kpi> {
    let kpi = as_extension_owner(|| Kpi::by_name(name))?;
    let view = prepared::select_one::<pg_sys::Oid>(
        "SELECT to_regclass(format('kpi.%I', $1::text))::oid",
        &[name.into()],
    )?
    .ok_or_else(|| KpiError::undefined_kpi(name))?;
    check_can_read(view, name)?;
    Ok(kpi)
}

/// A name the read functions accept: a KPI, or a derived KPI across KPIs.
enum Readable {
    Kpi(Box<Kpi>),
    Derived(crate::derived::across::Derived),
}

/// Loads `name` for a read: a KPI first (the common case pays no extra lookup), then a
/// derived KPI.
fn readable_any(name: &str) -> KpiResult<Readable> {
    match readable(name) {
        Ok(k) => Ok(Readable::Kpi(Box::new(k))),
        Err(e) if e.code == pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT => {
            match crate::derived::across::lookup(name)? {
                Some(d) => Ok(Readable::Derived(d)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
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

/// `dims` as the snapshot reports it: `{}` for no filter (SQL NULL or JSON null too).
fn canonical_dims(dims: &serde_json::Value) -> serde_json::Value {
    match dims {
        serde_json::Value::Object(_) => dims.clone(),
        _ => serde_json::Value::Object(Default::default()),
    }
}

const USECS_PER_DAY: i64 = 86_400_000_000;

/// The tier to read for `span_us` back from now at `step_us`: without a dimension
/// filter, the dimensionless copy (one row per bucket).
fn read_tier(k: &Kpi, span_us: i64, step_us: Option<i64>, dims: &(String, String)) -> usize {
    let t = k.pick_tier(span_us, step_us);
    if dims.0.is_empty() {
        k.totals_of(t)
    } else {
        t
    }
}

/// An interval's length in microseconds (months counted as 30 days).
fn interval_us(i: &Interval) -> i64 {
    i64::from(i.months()) * 30 * USECS_PER_DAY + i64::from(i.days()) * USECS_PER_DAY + i.micros()
}

/// SQL for finalized measure values over the state rows of one tier in `[lo, hi)`,
/// grouped by `group` (an expression over `s`, exposed as `s._g`). `group_lo`/`group_hi`
/// bound each group's source rows for rescans; `dims_source` restricts them.
struct Query<'a> {
    k: &'a Kpi,
    tier: usize,
    lo: String,
    hi: String,
    group: String,
    group_lo: String,
    group_hi: String,
    dims_state: String,
    dims_source: String,
}

impl<'a> Query<'a> {
    /// One group over `[lo, hi)`.
    fn window(k: &'a Kpi, tier: usize, lo: String, hi: String, dims: &(String, String)) -> Self {
        Query {
            k,
            tier,
            group: "0".into(),
            group_lo: lo.clone(),
            group_hi: hi.clone(),
            lo,
            hi,
            dims_state: dims.0.clone(),
            dims_source: dims.1.clone(),
        }
    }

    /// Measure `i` finalized over the window; a derived measure composed from the
    /// measures it reads over the same window (so a ratio is sum/sum).
    fn measure(&self, i: usize) -> String {
        let sql = crate::derived::measure_sql(self.k, i, &mut |j| {
            let rescan = self
                .k
                .rescan_sql(j, &self.group_lo, &self.group_hi, &self.dims_source);
            format!(
                "({})::numeric",
                self.k.measures[j].finalize_sql(j, rescan.as_deref())
            )
        });
        format!("({sql})")
    }

    fn from(&self) -> String {
        format!(
            "(SELECT {group} AS _g, s.* FROM {state} s
               WHERE s.bucket >= ({lo}) AND s.bucket < ({hi}){dims}) s",
            group = self.group,
            state = self.k.state_view_of(self.tier),
            lo = self.lo,
            hi = self.hi,
            dims = self.dims_state,
        )
    }
}

/// Buckets of tier `t` overlapping `[end - window, end]`.
fn window_bounds(k: &Kpi, t: usize, end: &str, window: &str) -> (String, String) {
    // A current-state KPI is its one bucket; an overdue KPI, every deadline before `end`.
    if let Some(b) = crate::state::bounds(k, end) {
        return b;
    }
    let w = k.width_sql(t);
    (
        format!("date_bin({w}, ({end}) - ({window}), {ORIGIN})"),
        format!("date_bin({w}, {end}, {ORIGIN}) + {w}"),
    )
}

#[pg_extern(schema = "kpi", name = "_value", stable, parallel_restricted)]
fn value(name: &str, measure: &str, window: Interval, dims: JsonB) -> Option<AnyNumeric> {
    (|| -> KpiResult<Option<AnyNumeric>> {
        let k = match readable_any(name)? {
            Readable::Kpi(k) => *k,
            Readable::Derived(d) => {
                d.check_measure(measure)?;
                return d.value(window, dims);
            }
        };
        let i = k.measure_index(measure)?;
        let dims = dims_filter(&k, &dims.0)?;
        let t = read_tier(&k, interval_us(&window), None, &dims);
        let (lo, hi) = window_bounds(&k, t, "now()", "$1");
        let q = Query::window(&k, t, lo, hi, &dims);
        let sql = format!("SELECT {} FROM {}", q.measure(i), q.from());
        as_extension_owner(|| prepared::select_one::<AnyNumeric>(&sql, &[window.into()]))
    })()
    .or_raise()
}

pub(crate) type SeriesRow = (
    TimestampWithTimeZone,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
);

// pgrx needs the result columns spelled out in the signature.
#[allow(clippy::type_complexity)]
#[pg_extern(schema = "kpi", name = "_series", stable, parallel_restricted)]
fn series(
    name: &str,
    measure: &str,
    since: TimestampWithTimeZone,
    until: TimestampWithTimeZone,
    step: Option<Interval>,
    dims: JsonB,
    compare: bool,
) -> TableIterator<
    'static,
    (
        name!(bucket, TimestampWithTimeZone),
        name!(value, Option<AnyNumeric>),
        name!(day_ago, Option<AnyNumeric>),
        name!(week_ago, Option<AnyNumeric>),
    ),
> {
    let rows = (|| -> KpiResult<Vec<SeriesRow>> {
        let k = match readable_any(name)? {
            Readable::Kpi(k) => *k,
            Readable::Derived(d) => {
                d.check_measure(measure)?;
                return d.series(since, until, step, dims, compare);
            }
        };
        let i = k.measure_index(measure)?;
        if crate::state::is_state(&k) {
            dims_filter(&k, &dims.0)?;
            return crate::state::samples::series(&k, i, since, until, step, &dims.0, compare);
        }
        let dims = dims_filter(&k, &dims.0)?;
        let span = prepared::select_one::<i64>(
            "SELECT greatest((extract(epoch FROM now() - $1) * 1000000)::bigint, 0)",
            &[since.into()],
        )?
        .unwrap_or(0);
        let step_us = match &step {
            Some(s) => {
                let us = interval_us(s);
                if s.months() != 0 || us <= 0 || us % k.bucket_us != 0 {
                    return Err(KpiError::invalid(
                        format!("step {s} is not a positive multiple of the KPI's bucket {}", k.bucket),
                        "Use the bucket width or a multiple of it, such as '1 hour' for a 1-minute KPI.",
                    ));
                }
                us
            }
            None => k.tiers[k.pick_tier(span, None)].bucket_us,
        };
        let step_sql = format!("make_interval(secs => {step_us}::numeric / 1000000)");
        // The series itself, then the same steps one day and one week earlier.
        let mut ctes = Vec::new();
        let offsets: &[(usize, &str)] = if compare {
            &[(0, "0"), (1, "1 day"), (2, "7 days")]
        } else {
            &[(0, "0")]
        };
        for &(j, offset) in offsets {
            let off_us = [0, USECS_PER_DAY, 7 * USECS_PER_DAY][j];
            let t = read_tier(&k, span + off_us, Some(step_us), &dims);
            let off = format!("interval '{offset}'");
            let q = Query {
                k: &k,
                tier: t,
                lo: format!("date_bin({step_sql}, $1, {ORIGIN}) - {off}"),
                hi: format!("$2::timestamptz - {off} + {step_sql}"),
                group: format!("date_bin({step_sql}, s.bucket, {ORIGIN}) + {off}"),
                group_lo: format!("s._g - {off}"),
                group_hi: format!("s._g - {off} + {step_sql}"),
                dims_state: dims.0.clone(),
                dims_source: dims.1.clone(),
            };
            ctes.push(format!("v{j} AS (SELECT s._g, {} AS v FROM {} GROUP BY s._g)", q.measure(i), q.from()));
        }
        let zero = if k.measures[i].result_type() == "bigint" { "0" } else { "NULL" };
        let sql = format!(
            "WITH {ctes}
             SELECT g.b, coalesce(v0.v, {zero}), {v1}, {v2}
               FROM generate_series(date_bin({step_sql}, $1, {ORIGIN}), $2, {step_sql}) g(b)
               LEFT JOIN v0 ON v0._g = g.b {joins}
              ORDER BY g.b",
            ctes = ctes.join(", "),
            v1 = if compare { format!("coalesce(v1.v, {zero})") } else { "NULL::numeric".into() },
            v2 = if compare { format!("coalesce(v2.v, {zero})") } else { "NULL::numeric".into() },
            joins = if compare { "LEFT JOIN v1 ON v1._g = g.b LEFT JOIN v2 ON v2._g = g.b" } else { "" },
        );
        as_extension_owner(|| {
            prepared::select(&sql, &[since.into(), until.into()], |rows| {
                rows.map(|r| {
                    Ok((
                        r.get::<TimestampWithTimeZone>(1)?
                            .ok_or_else(|| KpiError::internal("null bucket"))?,
                        r.get::<AnyNumeric>(2)?,
                        r.get::<AnyNumeric>(3)?,
                        r.get::<AnyNumeric>(4)?,
                    ))
                })
                .collect::<KpiResult<Vec<_>>>()
            })
        })
    })()
    .or_raise();
    TableIterator::new(rows)
}

/// One group of [`window_measures`]: the dimension's value (None: NULL, or no
/// grouping), the rows counted, and the measures.
pub(crate) struct GroupValues {
    pub group: Option<String>,
    pub rows: i64,
    pub values: Vec<Option<AnyNumeric>>,
}

/// Measure values over `window_us` ending `ago_us` before now, per value of the
/// dimension `group_by`, or one row for the whole KPI: what alert rules evaluate. Only
/// the measures in `wanted` are computed; the others are NULL. Groups without rows in
/// the window are left out; without `group_by` there is always one row. Runs as the
/// extension owner: callers have checked rights.
pub(crate) fn window_measures(
    k: &Kpi,
    window_us: i64,
    ago_us: i64,
    wanted: &[usize],
    group_by: Option<&str>,
) -> KpiResult<Vec<GroupValues>> {
    let none = (String::new(), String::new());
    let reach = window_us + ago_us;
    let t = match group_by {
        Some(_) => k.pick_tier(reach, None),
        None => read_tier(k, reach, None, &none),
    };
    let window = format!("make_interval(secs => {window_us}::numeric / 1000000)");
    let end = format!("now() - make_interval(secs => {ago_us}::numeric / 1000000)");
    let (lo, hi) = window_bounds(k, t, &end, &window);
    let mut q = Query::window(k, t, lo, hi, &none);
    if let Some(dim) = group_by {
        let col = quote_identifier(dim);
        q.group = format!("s.{col}::text");
        q.dims_source = format!(" AND r.{col}::text IS NOT DISTINCT FROM s._g");
    }
    let cols: Vec<String> = (0..k.measures.len())
        .map(|i| {
            if wanted.contains(&i) {
                q.measure(i)
            } else {
                "NULL::numeric".into()
            }
        })
        .collect();
    // Without groups, one row even for an empty window (a count of 0 is a value).
    let sql = match group_by {
        Some(_) => format!(
            "SELECT s._g::text, sum(s._n)::bigint, {cols} FROM {from} GROUP BY s._g HAVING sum(s._n) <> 0",
            cols = cols.join(", "),
            from = q.from(),
        ),
        None => format!(
            "SELECT NULL::text, coalesce(sum(s._n), 0)::bigint, {cols} FROM {from}",
            cols = cols.join(", "),
            from = q.from()
        ),
    };
    let n = k.measures.len();
    as_extension_owner(|| {
        prepared::select(&sql, &[], |rows| {
            rows.map(|r| {
                Ok(GroupValues {
                    group: if group_by.is_some() {
                        r.get::<String>(1)?
                    } else {
                        None
                    },
                    rows: r.get::<i64>(2)?.unwrap_or(0),
                    values: (0..n)
                        .map(|i| r.get::<AnyNumeric>(i + 3))
                        .collect::<Result<Vec<_>, _>>()?,
                })
            })
            .collect::<KpiResult<Vec<_>>>()
        })
    })
}

#[pg_extern(schema = "kpi", name = "_top", stable, parallel_restricted)]
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
        let k = match readable_any(name)? {
            Readable::Kpi(k) => *k,
            Readable::Derived(d) => {
                return Err(KpiError::new(
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("kpi.top does not rank derived KPI \"{}\"", d.name),
                    "Rank by a derived measure within one KPI instead (measures => '…, rate = a / b'), or rank each side with kpi.top.",
                ))
            }
        };
        let i = k.measure_index(measure)?;
        k.dimension_index(dimension)?;
        let col = quote_identifier(dimension);
        let t = k.pick_tier(interval_us(&window), None);
        let (lo, hi) = window_bounds(&k, t, "now()", "$1");
        let mut q = Query::window(&k, t, lo, hi, &(String::new(), String::new()));
        q.group = format!("s.{col}::text");
        q.dims_source = format!(" AND r.{col}::text IS NOT DISTINCT FROM s._g");
        let sql = format!(
            "SELECT s._g, {m} AS v FROM {from} GROUP BY s._g HAVING sum(s._n) <> 0
              ORDER BY v DESC NULLS LAST, s._g LIMIT $2",
            m = q.measure(i),
            from = q.from(),
        );
        as_extension_owner(|| {
            prepared::select(&sql, &[window.into(), n.max(0).into()], |rows| {
                rows.map(|r| Ok((r.get::<String>(1)?, r.get::<AnyNumeric>(2)?)))
                    .collect::<KpiResult<Vec<_>>>()
            })
        })
    })()
    .or_raise();
    TableIterator::new(rows)
}

/// Everything a dashboard card needs, in one jsonb (see docs/sql-contract.md), over the
/// rows whose dimensions equal `dims` (all rows for `{}`).
#[pg_extern(schema = "kpi", name = "_snapshot", stable, parallel_restricted)]
fn snapshot(name: &str, dims: JsonB) -> JsonB {
    (|| -> KpiResult<JsonB> {
        let k = match readable_any(name)? {
            Readable::Kpi(k) => *k,
            Readable::Derived(d) => return d.snapshot(dims),
        };
        let filter = dims_filter(&k, &dims.0)?;
        let hour = "interval '1 hour'";
        // (label, how far back the range reaches, end of the range, its length)
        let ranges = [
            ("today", USECS_PER_DAY, "now()", "now() - date_trunc('day', now())"),
            ("window", USECS_PER_DAY / 24, "now()", hour),
            ("window_day_ago", USECS_PER_DAY * 25 / 24, "now() - interval '1 day'", hour),
            ("window_week_ago", USECS_PER_DAY * 7 + USECS_PER_DAY / 24, "now() - interval '7 days'", hour),
        ];
        let mut froms = Vec::new();
        let mut per_measure: Vec<Vec<String>> = vec![Vec::new(); k.measures.len()];
        for (j, (label, reach, end, len)) in ranges.iter().enumerate() {
            let t = read_tier(&k, *reach, None, &filter);
            let (lo, hi) = window_bounds(&k, t, end, len);
            let q = Query::window(&k, t, lo, hi, &filter);
            let cols: Vec<String> = (0..k.measures.len())
                .map(|i| format!("{} AS m{i}", q.measure(i)))
                .collect();
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
                    'dims', $5::jsonb, 'measures', jsonb_build_object({measures}))
               FROM {froms}",
            measures = measures.join(", "),
            froms = froms.join(", "),
        );
        let bucket = k.bucket.clone();
        as_extension_owner(|| {
            let version = prepared::select_one::<i64>(
                "SELECT version FROM kpi.definitions WHERE id = $1",
                &[k.id.into()],
            )?
            .unwrap_or(k.version);
            prepared::select_one::<JsonB>(
                &sql,
                &[
                    k.name.as_str().into(),
                    version.into(),
                    bucket.as_str().into(),
                    k.dimensions.clone().into(),
                    JsonB(canonical_dims(&dims.0)).into(),
                ],
            )?
            .ok_or_else(|| KpiError::internal("snapshot query returned nothing"))
        })
    })()
    .or_raise()
}

/// The pending (not yet folded) delta entries of one KPI, for its state view: those in
/// the delta buffer the calling query can see, and those the current transaction holds
/// in memory until its pre-commit. Runs as the reader (function calls inside views do):
/// checks they may read the KPI, then reads the delta buffer with the extension owner's
/// rights.
///
/// The read functions and this are parallel restricted, not safe: a parallel worker
/// would not see the leader's in-memory changes.
#[pg_extern(schema = "kpi", name = "_pending", stable, parallel_restricted)]
fn pending(kpi_id: i32) -> SetOfIterator<'static, JsonB> {
    let rows = (|| -> KpiResult<Vec<JsonB>> {
        // The read functions call this as the extension owner, after their own check;
        // only direct reads of a KPI view need one here.
        if !unsafe { pg_sys::superuser() } {
            let name = as_extension_owner(|| {
                prepared::select_one::<String>(
                    "SELECT name FROM kpi.definitions WHERE id = $1",
                    &[kpi_id.into()],
                )
            })?;
            let Some(name) = name else {
                return Ok(Vec::new());
            };
            readable(&name)?;
        }
        // In the calling query's snapshot, the one its scan of the aggregate table uses.
        // One row per group: entries of many transactions merged, and of this one.
        let mut merged = Merged::default();
        merged.extend(crate::capture::own_pending(kpi_id));
        merged.extend(deltas::buffer::visible_entries_of(kpi_id)?);
        Ok(merged
            .into_entries()
            .iter()
            .map(|(g, e)| JsonB(deltas::json::entry(g, e)))
            .collect())
    })()
    .or_raise();
    SetOfIterator::new(rows)
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
