//! Derived KPIs across KPIs: `kpi.create_derived('conversion', 'checkout.orders / sessions.visitors')`.
//!
//! A derived KPI stores only its formula (`kpi.derived`). Its one measure, `value`, is
//! read by evaluating the formula over the components' own reads (`kpi._value`,
//! `kpi._series`, `kpi._snapshot`) of the same window in one statement, so each side is
//! exact over the whole window and they share one snapshot. Its version is the sum of its
//! components' versions: every NOTIFY announcing a component announces it too
//! ([`with_derived`]), so the notifier re-reads and pushes it like any KPI.
//!
//! Compatible buckets: every component has the same bucket width, so "the last 30
//! minutes" covers the same buckets on both sides of the ratio. Current-state and overdue
//! KPIs have no time buckets and are refused (a ratio within one such KPI is a derived
//! measure).

use crate::catalog::{catalog_0_3, quote_literal, Kpi};
use crate::errors::{KpiError, KpiResult};
use crate::formula::{self, Expr, Ref};
use crate::prepared;
use crate::privileges::{as_extension_owner, check_can_read, current_user};
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

/// The one measure of a derived KPI.
pub(crate) const MEASURE: &str = "value";

/// A derived KPI as stored.
pub(crate) struct Derived {
    pub name: String,
    pub formula: Expr,
    /// The components, loaded now (their buckets checked again: a component may have
    /// been altered since).
    pub components: Vec<Kpi>,
}

fn undefined_kpi_of(owner: &str, kpi: &str) -> KpiError {
    KpiError::new(
        pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("derived KPI \"{owner}\" reads KPI \"{kpi}\", which does not exist"),
        "SELECT name FROM kpi.list() shows the KPIs that exist; write each side as kpi_name.measure.",
    )
}

/// Loads the components a formula reads and checks they can be combined.
fn components(owner: &str, formula: &Expr) -> KpiResult<Vec<Kpi>> {
    let refs = formula.refs();
    let mut kpis: Vec<Kpi> = Vec::new();
    for r in &refs {
        let Some(name) = &r.kpi else {
            return Err(KpiError::new(
                pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                format!("\"{}\" in derived KPI \"{owner}\" does not name its KPI", r.measure),
                "Write each measure as kpi_name.measure, for example 'checkout.orders / sessions.visitors'.",
            ));
        };
        if name == owner {
            return Err(KpiError::new(
                pgrx::PgSqlErrorCode::ERRCODE_INVALID_RECURSION,
                format!("derived KPI \"{owner}\" reads itself"),
                "A derived KPI combines measures of other KPIs.",
            ));
        }
        if kpis.iter().any(|k| &k.name == name) {
            continue;
        }
        let kpi = match as_extension_owner(|| Kpi::by_name(name)) {
            Ok(k) => k,
            Err(_) if lookup_row(name)?.is_some() => {
                return Err(KpiError::new(
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("derived KPI \"{owner}\" reads derived KPI \"{name}\""),
                    "Write the other derived KPI's formula out over the KPIs it reads.",
                ))
            }
            Err(_) => return Err(undefined_kpi_of(owner, name)),
        };
        if kpi.special.is_some() {
            return Err(KpiError::new(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("derived KPI \"{owner}\" reads \"{name}\", a current-state or overdue KPI"),
                "Those have no time buckets to line up with another KPI; a ratio of their own measures is a derived measure, e.g. measures => 'open = count(*), late = …, share = late / open'.",
            ));
        }
        kpis.push(kpi);
    }
    for r in &refs {
        let k = kpis
            .iter()
            .find(|k| Some(&k.name) == r.kpi.as_ref())
            .ok_or_else(|| KpiError::internal("component not loaded"))?;
        k.measure_index(&r.measure)?;
    }
    check_buckets(owner, &kpis)?;
    Ok(kpis)
}

/// Every component has the same bucket width.
pub(crate) fn check_buckets(owner: &str, kpis: &[Kpi]) -> KpiResult<()> {
    let Some(first) = kpis.first() else {
        return Ok(());
    };
    if let Some(other) = kpis.iter().find(|k| k.bucket_us != first.bucket_us) {
        return Err(KpiError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "\"{owner}\" combines KPIs with incompatible buckets: \"{}\" has {}, \"{}\" has {}",
                first.name, first.bucket, other.name, other.bucket
            ),
            "A ratio across KPIs reads the same buckets of each: give them the same bucket width (CALL kpi.alter(name, bucket => …)).",
        ));
    }
    Ok(())
}

/// The stored row of a derived KPI: (formula).
fn lookup_row(name: &str) -> KpiResult<Option<String>> {
    if !catalog_0_3() {
        return Ok(None);
    }
    as_extension_owner(|| {
        prepared::select_one::<String>(
            "SELECT formula FROM kpi.derived WHERE name = $1",
            &[name.into()],
        )
    })
}

/// The derived KPI `name`, if there is one; checks the caller may read it.
pub(crate) fn lookup(name: &str) -> KpiResult<Option<Derived>> {
    let Some(text) = lookup_row(name)? else {
        return Ok(None);
    };
    let view = prepared::select_one::<pg_sys::Oid>(
        "SELECT to_regclass(format('kpi.%I', $1::text))::oid",
        &[name.into()],
    )?
    .ok_or_else(|| KpiError::undefined_kpi(name))?;
    check_can_read(view, name)?;
    let formula = formula::parse(&text)?;
    let components = components(name, &formula)?;
    Ok(Some(Derived {
        name: name.to_string(),
        formula,
        components,
    }))
}

fn measure_error(d: &str, measure: &str) -> KpiError {
    KpiError::new(
        pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
        format!("derived KPI \"{d}\" has no measure \"{measure}\""),
        format!("A derived KPI has one measure, \"{MEASURE}\"."),
    )
}

impl Derived {
    pub(crate) fn check_measure(&self, measure: &str) -> KpiResult<()> {
        if measure == MEASURE {
            Ok(())
        } else {
            Err(measure_error(&self.name, measure))
        }
    }

    /// The formula over `read(kpi, measure)`: SQL of each side's value.
    fn sql(&self, read: &dyn Fn(&Ref) -> String) -> String {
        self.formula.to_sql(&mut |r| read(r))
    }

    fn version(&self) -> KpiResult<i64> {
        let names: Vec<String> = self.components.iter().map(|k| k.name.clone()).collect();
        as_extension_owner(|| version_of(names))
    }

    /// The dimensions every component has (a dims filter must apply to each side).
    fn dimensions(&self) -> Vec<String> {
        let mut dims = self
            .components
            .first()
            .map(|k| k.dimensions.clone())
            .unwrap_or_default();
        dims.retain(|d| self.components.iter().all(|k| k.dimensions.contains(d)));
        dims
    }

    pub(crate) fn value(
        &self,
        window: pgrx::datum::Interval,
        dims: pgrx::JsonB,
    ) -> KpiResult<Option<pgrx::AnyNumeric>> {
        let sql = format!(
            "SELECT {}",
            self.sql(&|r| format!(
                "kpi._value({}, {}, $1, $2)",
                quote_literal(r.kpi.as_deref().unwrap_or_default()),
                quote_literal(&r.measure)
            ))
        );
        prepared::select_one::<pgrx::AnyNumeric>(&sql, &[window.into(), dims.into()])
    }

    /// `kpi.series` of the formula: each side's series at the same steps, joined by bucket.
    #[allow(clippy::type_complexity)]
    pub(crate) fn series(
        &self,
        since: pgrx::datum::TimestampWithTimeZone,
        until: pgrx::datum::TimestampWithTimeZone,
        step: Option<pgrx::datum::Interval>,
        dims: pgrx::JsonB,
        compare: bool,
    ) -> KpiResult<Vec<crate::api::read::SeriesRow>> {
        let refs = self.formula.refs();
        let alias = |r: &Ref| refs.iter().position(|x| x == r).unwrap_or(0);
        let step = match step {
            Some(s) => s,
            None => pgrx::datum::Interval::new(0, 0, self.components[0].bucket_us)
                .map_err(|e| KpiError::internal(e.to_string()))?,
        };
        let froms: Vec<String> = refs
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let call = format!(
                    "kpi._series({}, {}, $1, $2, $3, $4, $5) c{j}",
                    quote_literal(r.kpi.as_deref().unwrap_or_default()),
                    quote_literal(&r.measure)
                );
                if j == 0 {
                    call
                } else {
                    format!("JOIN {call} USING (bucket)")
                }
            })
            .collect();
        let col = |c: &'static str| self.sql(&|r| format!("c{}.{c}", alias(r)));
        let sql = format!(
            "SELECT bucket, {}, {}, {} FROM {} ORDER BY bucket",
            col("value"),
            col("day_ago"),
            col("week_ago"),
            froms.join(" ")
        );
        prepared::select(
            &sql,
            &[
                since.into(),
                until.into(),
                step.into(),
                dims.into(),
                compare.into(),
            ],
            |rows| {
                rows.map(|r| {
                    Ok((
                        r.get::<pgrx::datum::TimestampWithTimeZone>(1)?
                            .ok_or_else(|| KpiError::internal("null bucket"))?,
                        r.get::<pgrx::AnyNumeric>(2)?,
                        if compare {
                            r.get::<pgrx::AnyNumeric>(3)?
                        } else {
                            None
                        },
                        if compare {
                            r.get::<pgrx::AnyNumeric>(4)?
                        } else {
                            None
                        },
                    ))
                })
                .collect::<KpiResult<Vec<_>>>()
            },
        )
    }

    /// `kpi.snapshot` of the formula: each range of the card is the formula over the
    /// components' same range, from their snapshots read in one statement.
    pub(crate) fn snapshot(&self, dims: pgrx::JsonB) -> KpiResult<pgrx::JsonB> {
        let names: Vec<String> = self.components.iter().map(|k| k.name.clone()).collect();
        let at = |r: &Ref| {
            names
                .iter()
                .position(|n| Some(n) == r.kpi.as_ref())
                .unwrap_or(0)
        };
        let ranges: Vec<String> = ["today", "window", "window_day_ago", "window_week_ago"]
            .iter()
            .map(|range| {
                let v = self.sql(&|r| {
                    format!(
                        "(c{}.s->'measures'->{}->>{})::numeric",
                        at(r),
                        quote_literal(&r.measure),
                        quote_literal(range)
                    )
                });
                format!("{}, {v}", quote_literal(range))
            })
            .collect();
        let froms: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(j, n)| format!("(SELECT kpi._snapshot({}, $2) AS s) c{j}", quote_literal(n)))
            .collect();
        let sql = format!(
            "SELECT jsonb_build_object('kpi', $1::text, 'version', $3::bigint, 'as_of', now(),
                    'bucket', $4::interval, 'window', interval '1 hour', 'dimensions', to_jsonb($5::text[]),
                    'dims', $2, 'derived', jsonb_build_object('formula', $6::text, 'kpis', to_jsonb($7::text[])),
                    'measures', jsonb_build_object('{MEASURE}', jsonb_build_object({ranges})))
               FROM {froms}",
            ranges = ranges.join(", "),
            froms = froms.join(", "),
        );
        let dims = match dims.0 {
            serde_json::Value::Object(_) => dims,
            _ => pgrx::JsonB(serde_json::json!({})),
        };
        prepared::select_one::<pgrx::JsonB>(
            &sql,
            &[
                self.name.as_str().into(),
                dims.into(),
                self.version()?.into(),
                self.components[0].bucket.as_str().into(),
                self.dimensions().into(),
                self.formula.to_string().into(),
                names.into(),
            ],
        )?
        .ok_or_else(|| KpiError::internal("derived snapshot returned nothing"))
    }
}

#[pg_extern(schema = "kpi", name = "_create_derived", volatile, parallel_unsafe)]
pub(crate) fn create_derived(name: &str, expression: &str) -> i32 {
    use crate::errors::OrRaise;
    create(name, expression).or_raise()
}

fn create(name: &str, expression: &str) -> KpiResult<i32> {
    crate::names::check("KPI", name)?;
    let formula = formula::parse(expression)?;
    let components = components(name, &formula)?;
    for k in &components {
        let view = prepared::select_one::<pg_sys::Oid>(
            "SELECT to_regclass(format('kpi.%I', $1::text))::oid",
            &[k.name.as_str().into()],
        )?
        .ok_or_else(|| KpiError::undefined_kpi(&k.name))?;
        check_can_read(view, &k.name)?;
    }
    let owner = current_user();
    let names: Vec<String> = components.iter().map(|k| k.name.clone()).collect();
    as_extension_owner(|| -> KpiResult<i32> {
        Spi::run("LOCK TABLE kpi.derived IN SHARE ROW EXCLUSIVE MODE")?;
        let taken = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM kpi.definitions WHERE name = $1)
                 OR EXISTS (SELECT 1 FROM kpi.derived WHERE name = $1)
                 OR to_regclass(format('kpi.%I', $1)) IS NOT NULL",
            &[name.into()],
        )?;
        if taken == Some(true) {
            return Err(KpiError::new(
                pgrx::PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("KPI \"{name}\" already exists"),
                "Pick another name, or kpi.drop the existing KPI first.",
            ));
        }
        let id = Spi::get_one_with_args::<i32>(
            "INSERT INTO kpi.derived (name, formula, kpis, owner)
             VALUES ($1, $2, $3, $4::oid::regrole) RETURNING id",
            &[
                name.into(),
                formula.to_string().into(),
                names.clone().into(),
                owner.into(),
            ],
        )?
        .ok_or_else(|| KpiError::internal("INSERT … RETURNING id returned nothing"))?;
        // The view: the last day, one row per bucket, for SQL users; its privileges are
        // the KPI's (reading it needs SELECT on it, like a KPI's view).
        let view = format!("kpi.{}", quote_identifier(name));
        Spi::run(&format!(
            "CREATE VIEW {view} AS SELECT bucket, value FROM kpi.series({}, '{MEASURE}', now() - interval '1 day');
             COMMENT ON VIEW {view} IS {};
             REVOKE ALL ON {view} FROM PUBLIC",
            quote_literal(name),
            quote_literal(&format!("pg_kpi derived KPI {name} = {formula} (the last day)"))
        ))?;
        let role = Spi::get_one_with_args::<String>(
            "SELECT quote_ident(rolname) FROM pg_catalog.pg_roles WHERE oid = $1",
            &[owner.into()],
        )?
        .unwrap_or_default();
        Spi::run(&format!(
            "GRANT SELECT ON {view} TO {role} WITH GRANT OPTION"
        ))?;
        crate::fold::notify_versions(&[(name.to_string(), version_of(names)?)])?;
        Ok(id)
    })
}

/// A derived KPI's version: the sum of its components' versions.
fn version_of(components: Vec<String>) -> KpiResult<i64> {
    prepared::select_one::<i64>(
        "SELECT coalesce(sum(version), 0)::bigint FROM kpi.definitions WHERE name = ANY($1)",
        &[components.into()],
    )
    .map(|v| v.unwrap_or(0))
}

/// `kpi.drop` of a derived KPI: its view and row. `Ok(false)` if `name` is not one.
pub(crate) fn drop(name: &str) -> KpiResult<bool> {
    if !catalog_0_3() {
        return Ok(false);
    }
    let owner = as_extension_owner(|| {
        prepared::select_one::<pg_sys::Oid>(
            "SELECT owner::oid FROM kpi.derived WHERE name = $1",
            &[name.into()],
        )
    })?;
    let Some(owner) = owner else {
        return Ok(false);
    };
    if !(unsafe { pg_sys::superuser() } || owner == current_user()) {
        return Err(KpiError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be the owner of derived KPI \"{name}\" to drop it"),
            "Ask its owner or a superuser to drop it.",
        ));
    }
    as_extension_owner(|| -> KpiResult<()> {
        Spi::run(&format!(
            "DROP VIEW IF EXISTS kpi.{}",
            quote_identifier(name)
        ))?;
        Spi::run_with_args("DELETE FROM kpi.derived WHERE name = $1", &[name.into()])?;
        crate::fold::notify_reload()
    })?;
    Ok(true)
}

/// Refuses to drop a KPI a derived KPI reads.
pub(crate) fn check_not_read(kpi: &str) -> KpiResult<()> {
    if !catalog_0_3() {
        return Ok(());
    }
    let readers = as_extension_owner(|| {
        prepared::select_one::<String>(
            "SELECT string_agg(name, ', ' ORDER BY name) FROM kpi.derived WHERE $1 = ANY(kpis)",
            &[kpi.into()],
        )
    })?;
    match readers {
        Some(r) => Err(KpiError::new(
            pgrx::PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("KPI \"{kpi}\" is read by derived KPI {r}"),
            format!("Drop {r} first (SELECT kpi.drop(name)); nothing was dropped."),
        )),
        None => Ok(()),
    }
}

/// `versions` (KPI name, new version) and the derived KPIs reading any of them, at the
/// sum of their components' versions: what a NOTIFY announces.
pub(crate) fn with_derived(versions: &[(String, i64)]) -> KpiResult<Vec<(String, i64)>> {
    let mut out = versions.to_vec();
    if versions.is_empty() || !catalog_0_3() {
        return Ok(out);
    }
    let names: Vec<String> = versions.iter().map(|(n, _)| n.clone()).collect();
    let numbers: Vec<i64> = versions.iter().map(|(_, v)| *v).collect();
    // The new versions as given: this read-only query may not see the caller's own
    // just-written bumps (the fold's UPDATE of kpi.definitions).
    let derived = as_extension_owner(|| {
        prepared::select(
            "SELECT d.name, (SELECT coalesce(sum(greatest(x.version, v.version)), 0)::bigint
                               FROM kpi.definitions x
                               LEFT JOIN unnest($1::text[], $2::bigint[]) AS v(name, version)
                                      ON v.name = x.name
                              WHERE x.name = ANY(d.kpis))
               FROM kpi.derived d WHERE d.kpis && $1::text[]",
            &[names.into(), numbers.into()],
            |rows| {
                rows.map(|r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<i64>(2)?.unwrap_or(0),
                    ))
                })
                .collect::<KpiResult<Vec<_>>>()
            },
        )
    })?;
    out.extend(derived);
    Ok(out)
}
