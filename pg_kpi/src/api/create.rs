//! `kpi.create`: validate a definition completely, then create its objects, triggers
//! and backfill in the caller's transaction, so a failure leaves nothing behind.

use crate::catalog::{Kpi, Tier};
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::expr::{analyze, type_name, Want};
use crate::measures::{self, Measure};
use crate::privileges::{as_extension_owner, check_can_define, current_user};
use crate::{ddl, names, triggers};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

const USECS_PER_DAY: i64 = 86_400_000_000;

pub(crate) fn interval_us(i: &Interval) -> (i32, i64) {
    (i.months(), i64::from(i.days()) * USECS_PER_DAY + i.micros())
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(schema = "kpi", name = "_create", volatile, parallel_unsafe)]
fn create(
    name: &str,
    source: pg_sys::Oid,
    time_column: &str,
    measures: &str,
    dimensions: Vec<String>,
    filter: Option<&str>,
    bucket: Interval,
    retention: Option<Interval>,
    backfill: bool,
    rollups: Option<pgrx::JsonB>,
) -> i32 {
    let tiers = rollups
        .map(|r| parse_rollups(&r.0, &bucket, retention.as_ref()))
        .transpose()
        .or_raise()
        .unwrap_or_default();
    create_kpi(
        name,
        source,
        time_column,
        measures,
        dimensions,
        filter,
        bucket,
        retention,
        backfill,
        tiers,
        false,
        None,
    )
    .or_raise()
}

fn rollup_error(message: String) -> KpiError {
    KpiError::invalid(
        message,
        "Declare rollups as a JSON object of bucket width to retention, each width a multiple of the one before, e.g. '{\"1 hour\": \"90 days\", \"1 day\": \"2 years\"}' (null keeps forever).",
    )
}

/// Parses `{"1 hour": "90 days", "1 day": null}` into storage tiers, finest first.
pub(crate) fn parse_rollups(
    json: &serde_json::Value,
    bucket: &Interval,
    retention: Option<&Interval>,
) -> KpiResult<Vec<Tier>> {
    let obj = match json {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Object(o) => o,
        _ => return Err(rollup_error("rollups must be a JSON object".into())),
    };
    let parse = |text: &str| -> KpiResult<Interval> {
        PgTryBuilder::new(|| {
            Spi::get_one_with_args::<Interval>("SELECT $1::interval", &[text.into()])
                .ok()
                .flatten()
        })
        .catch_others(|_| None)
        .execute()
        .ok_or_else(|| rollup_error(format!("invalid interval \"{text}\" in rollups")))
    };
    let mut tiers = Vec::new();
    for (width_text, keep) in obj {
        let width = parse(width_text)?;
        let (months, width_us) = interval_us(&width);
        if months != 0 || width_us <= 0 {
            return Err(rollup_error(format!(
                "rollup bucket {width} is not a positive fixed-width interval"
            )));
        }
        let (keep_text, keep_us) = match keep {
            serde_json::Value::Null => (None, None),
            serde_json::Value::String(k) => {
                let i = parse(k)?;
                let (m, us) = interval_us(&i);
                (
                    Some(i.to_string()),
                    Some(i64::from(m) * 30 * USECS_PER_DAY + us),
                )
            }
            _ => {
                return Err(rollup_error(format!(
                    "retention of rollup {width_text} must be a string or null"
                )))
            }
        };
        if keep_us.is_some_and(|k| k < width_us) {
            return Err(rollup_error(format!(
                "retention of rollup {width} is shorter than its bucket"
            )));
        }
        tiers.push(Tier {
            bucket: width.to_string(),
            bucket_us: width_us,
            retention: keep_text,
            retention_us: keep_us,
            dims: true,
        });
    }
    tiers.sort_by_key(|t| t.bucket_us);
    let (_, base_us) = interval_us(bucket);
    let mut below = (bucket.to_string(), base_us);
    for t in &tiers {
        if below.1 <= 0 || t.bucket_us <= below.1 || t.bucket_us % below.1 != 0 {
            return Err(rollup_error(format!(
                "rollup bucket {} is not a multiple of the tier below it ({})",
                t.bucket, below.0
            )));
        }
        below = (t.bucket.clone(), t.bucket_us);
    }
    // Coarser tiers keep longer: a rollup kept shorter than the base would never be read.
    let base_keep = retention.map(|r| {
        let (m, us) = interval_us(r);
        i64::from(m) * 30 * USECS_PER_DAY + us
    });
    let shorter = base_keep.and_then(|base| {
        tiers
            .iter()
            .find(|t| t.retention_us.is_some_and(|k| k < base))
    });
    if let Some(t) = shorter {
        return Err(rollup_error(format!(
            "rollup {} is kept for less time than the KPI's own buckets",
            t.bucket
        )));
    }
    Ok(tiers)
}

/// Resolves a table name the way `::regclass` does, with a hint when it does not exist.
#[pg_extern(schema = "kpi", name = "_resolve_table", stable, strict)]
fn resolve_table(name: &str) -> pg_sys::Oid {
    let found = PgTryBuilder::new(|| {
        Spi::get_one_with_args::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[name.into()])
            .ok()
            .flatten()
    })
    .catch_others(|_| None)
    .execute();
    found.unwrap_or_else(|| {
        KpiError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("table \"{name}\" does not exist"),
            "Name an existing table, schema-qualified if it is not on the search_path (e.g. 'public.orders').",
        )
        .raise()
    })
}

struct Validated {
    time_type: pg_sys::Oid,
    dimension_types: Vec<String>,
    filter: Option<String>,
    measures: Vec<Measure>,
}

fn validate(
    source: pg_sys::Oid,
    time_column: &str,
    measures_text: &str,
    dimensions: &[String],
    filter: Option<&str>,
    special: Option<&crate::state::Special>,
) -> KpiResult<Validated> {
    // Current-state and overdue KPIs: the row's time is their expression (checked by
    // `api::state`), not a column.
    let time_sql = match special {
        Some(s) => s.time_expr.clone(),
        None => quote_identifier(time_column),
    };
    let time = analyze(source, &time_sql, Want::Time, "time column")?;
    let mut dimension_types = Vec::new();
    for (i, d) in dimensions.iter().enumerate() {
        if d == "bucket"
            || d == "_n"
            || (d.starts_with("_m") && d[2..].starts_with(|c: char| c.is_ascii_digit()))
        {
            return Err(KpiError::invalid(
                format!("\"{d}\" cannot be a dimension"),
                "\"bucket\", \"_n\" and \"_m<digit>…\" are reserved by pg_kpi; rename the column or use another one.",
            ));
        }
        if dimensions[..i].contains(d) {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                format!("dimension \"{d}\" is listed twice"),
                "List each dimension column once.",
            ));
        }
        let a = analyze(
            source,
            &quote_identifier(d),
            Want::Any,
            &format!("dimension \"{d}\""),
        )?;
        dimension_types.push(type_name(a.type_oid));
    }
    let filter = match filter.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => Some(analyze(source, f, Want::Boolean, "filter")?.sql),
        None => None,
    };
    let mut measures = Vec::new();
    for raw in measures::parse(measures_text)? {
        if dimensions.contains(&raw.name) {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                format!("measure \"{}\" has the name of a dimension", raw.name),
                "Measures and dimensions are columns of the same view; give them distinct names.",
            ));
        }
        if raw.kind == measures::Kind::Derived {
            measures.push(Measure {
                name: raw.name,
                kind: raw.kind,
                expr: None,
                q: None,
                shares: None,
                formula: raw.arg,
            });
            continue;
        }
        let expr = match &raw.arg {
            Some(arg) => Some(
                analyze(
                    source,
                    arg,
                    raw.kind.want(),
                    &format!("measure \"{}\"", raw.name),
                )?
                .sql,
            ),
            None => None,
        };
        // Quantiles of one expression read one sketch.
        let shares = (raw.kind == measures::Kind::Percentile)
            .then(|| {
                measures.iter().position(|m: &Measure| {
                    m.kind == measures::Kind::Percentile && m.shares.is_none() && m.expr == expr
                })
            })
            .flatten();
        measures.push(Measure {
            name: raw.name,
            kind: raw.kind,
            expr,
            q: raw.q,
            shares,
            formula: None,
        });
    }
    crate::derived::check_measures(&measures)?;
    Ok(Validated {
        time_type: time.type_oid,
        dimension_types,
        filter,
        measures,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn create_kpi(
    name: &str,
    source: pg_sys::Oid,
    time_column: &str,
    measures_text: &str,
    dimensions: Vec<String>,
    filter: Option<&str>,
    bucket: Interval,
    retention: Option<Interval>,
    backfill: bool,
    rollups: Vec<Tier>,
    // A rebuild's new definition, under its hidden name (see `api::rebuild`): the
    // caller checked the real name; its build fills it, and its swap announces it.
    building: bool,
    // `kpi.create_state` and `kpi.create_overdue` (`api::state`): a KPI whose rows'
    // time is this expression rather than `time_column`.
    special: Option<&crate::state::Special>,
) -> KpiResult<i32> {
    if !building {
        names::check("KPI", name)?;
    }
    let dimensions: Vec<String> = dimensions
        .into_iter()
        .map(|d| d.trim().to_string())
        .collect();
    let (months, bucket_us) = interval_us(&bucket);
    if months != 0 || bucket_us <= 0 {
        return Err(KpiError::invalid(
            format!("invalid bucket width {bucket}"),
            "The bucket must be a positive fixed-width interval such as '1 minute', '1 hour' or '1 day' (months vary in length and are not allowed).",
        ));
    }
    if let Some(r) = &retention {
        let (m, us) = interval_us(r);
        let approx = i64::from(m) * 30 * USECS_PER_DAY + us;
        if approx < bucket_us {
            return Err(KpiError::invalid(
                format!("retention {r} is shorter than the bucket {bucket}"),
                "Keep at least one bucket, or pass retention => NULL to keep everything.",
            ));
        }
    }
    let relkind = Spi::get_one_with_args::<i8>(
        "SELECT relkind::\"char\" FROM pg_catalog.pg_class WHERE oid = $1",
        &[source.into()],
    )?;
    let source_name = crate::expr::relation_name(source);
    match relkind.map(|k| k as u8) {
        Some(b'r') | Some(b'p') => {}
        _ => {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("\"{source_name}\" is not a table"),
                "A KPI's source must be a table or a partitioned table.",
            ))
        }
    }
    check_can_define(source, &source_name)?;
    let v = validate(
        source,
        time_column,
        measures_text,
        &dimensions,
        filter,
        special,
    )?;

    // Block writers for the rest of the transaction: the backfill must see exactly the
    // rows committed before the trigger exists, no more, no less.
    let lock_target = Spi::get_one_with_args::<String>(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[source.into()],
    )?
    .unwrap_or_default();
    Spi::run(&format!(
        "LOCK TABLE {lock_target} IN SHARE ROW EXCLUSIVE MODE"
    ))?;

    let owner = current_user();
    let id = as_extension_owner(|| -> KpiResult<i32> {
        let exists = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM kpi.definitions WHERE name = $1)",
            &[name.into()],
        )?;
        let view_taken = Spi::get_one_with_args::<bool>(
            "SELECT to_regclass(format('kpi.%I', $1::text)) IS NOT NULL",
            &[name.into()],
        )?;
        if exists == Some(true) || view_taken == Some(true) {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("KPI \"{name}\" already exists"),
                "Pick another name, or drop the existing KPI first with kpi.drop(name).",
            ));
        }
        let rollups_json = serde_json::to_string(&rollups)
            .map_err(|e| KpiError::internal(format!("serialize rollups: {e}")))?;
        let measures_json = serde_json::to_string(&v.measures)
            .map_err(|e| KpiError::internal(format!("serialize measures: {e}")))?;
        let id = Spi::get_one_with_args::<i32>(
            "INSERT INTO kpi.definitions
                 (name, source, time_column, time_type, measures, dimensions, dimension_types,
                  filter, bucket, retention, owner, version, rollups)
             VALUES ($1, $2::oid::regclass, $3, $4::oid::regtype, $5::jsonb, $6,
                     $7::text[]::regtype[], $8, $9, $10, $11::oid::regrole, 1, $12::jsonb)
             RETURNING id",
            &[
                name.into(),
                source.into(),
                time_column.into(),
                v.time_type.into(),
                measures_json.as_str().into(),
                dimensions.clone().into(),
                v.dimension_types.clone().into(),
                v.filter.clone().into(),
                bucket.into(),
                retention.into(),
                owner.into(),
                rollups_json.as_str().into(),
            ],
        )?
        .ok_or_else(|| KpiError::internal("INSERT … RETURNING id returned nothing"))?;
        if let Some(s) = special {
            crate::state::define(id, s)?;
        }
        // Read back as the fold does (read-write), which sees the row just inserted; the
        // read functions' lookups see only their statement's snapshot.
        let kpi = Kpi::by_ids(&[id])?
            .pop()
            .ok_or_else(|| KpiError::internal("the new KPI's definition is not visible"))?;
        // Servers built without lz4 list only pglz here.
        let lz4 = Spi::get_one::<bool>(
            "SELECT 'lz4' = ANY (enumvals) FROM pg_catalog.pg_settings
              WHERE name = 'default_toast_compression'",
        )?
        .unwrap_or(false);
        for t in 0..kpi.tiers.len() {
            Spi::run(&ddl::create_agg_table(&kpi, t, lz4))?;
            Spi::run(&ddl::create_state_view(&kpi, t))?;
        }
        Spi::run(&ddl::create_view(&kpi))?;
        let role = Spi::get_one_with_args::<String>(
            "SELECT quote_ident(rolname) FROM pg_catalog.pg_roles WHERE oid = $1",
            &[owner.into()],
        )?
        .unwrap_or_default();
        Spi::run(&format!("REVOKE ALL ON {} FROM PUBLIC", kpi.view()))?;
        Spi::run(&format!(
            "GRANT SELECT ON {} TO {role} WITH GRANT OPTION",
            kpi.view()
        ))?;
        triggers::install(&kpi)?;
        if backfill {
            for t in 0..kpi.tiers.len() {
                Spi::run(&ddl::backfill(&kpi, t))?;
            }
        }
        // A rebuild's definition gets its samples table at the swap, filled from the old one's.
        if special.is_some() && !building {
            crate::state::created(&kpi)?;
        }
        if !building {
            crate::fold::notify_versions(&[(kpi.name.clone(), 1)])?;
        }
        Ok(id)
    })?;
    triggers::invalidate_caches(source)?;
    Ok(id)
}
