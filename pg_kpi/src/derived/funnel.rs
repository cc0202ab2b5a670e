//! `kpi.funnel(steps => '{sessions.visitors, carts.adds, checkout.started, checkout.paid}', window)`:
//! each step's value over the window and its conversion from the previous step and from
//! the first. All steps are read in one statement (one snapshot), each exact over the
//! window, with compatible buckets as for a derived KPI.

use super::across::{self, check_buckets};
use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::formula::{self, Expr};
use crate::prepared;
use crate::privileges::as_extension_owner;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{AnyNumeric, JsonB};

type Step = (
    i32,
    String,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
);

fn step_error(step: &str) -> KpiError {
    KpiError::new(
        PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        format!("funnel step \"{step}\" is not kpi_name.measure"),
        "Write each step as kpi_name.measure, e.g. steps => '{sessions.visitors, checkout.paid}'.",
    )
}

#[allow(clippy::type_complexity)]
#[pg_extern(schema = "kpi", name = "_funnel", stable, parallel_restricted)]
pub(crate) fn funnel(
    steps: Vec<String>,
    window: Interval,
    dims: JsonB,
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(name, String),
        name!(value, Option<AnyNumeric>),
        name!(from_previous, Option<AnyNumeric>),
        name!(from_first, Option<AnyNumeric>),
    ),
> {
    let rows = (|| -> KpiResult<Vec<Step>> {
        if steps.len() < 2 {
            return Err(KpiError::invalid(
                format!("a funnel needs at least two steps, got {}", steps.len()),
                "For example: steps => '{sessions.visitors, checkout.paid}'.",
            ));
        }
        let mut kpis: Vec<String> = Vec::new();
        let mut measures: Vec<String> = Vec::new();
        let mut loaded: Vec<Kpi> = Vec::new();
        for step in &steps {
            let Ok(Expr::Ref(r)) = formula::parse(step) else {
                return Err(step_error(step));
            };
            let Some(kpi) = r.kpi else {
                return Err(step_error(step));
            };
            if let Some(d) = across::lookup(&kpi)? {
                return Err(KpiError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("funnel step \"{step}\" is derived KPI \"{}\"", d.name),
                    "A funnel's steps are measures of KPIs; it computes the conversions itself.",
                ));
            }
            if !loaded.iter().any(|k| k.name == kpi) {
                let k = as_extension_owner(|| Kpi::by_name(&kpi))?;
                if k.special.is_some() {
                    return Err(KpiError::new(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!("funnel step \"{step}\" reads a current-state or overdue KPI"),
                        "A funnel's steps are counts over the same window of time-bucketed KPIs.",
                    ));
                }
                loaded.push(k);
            }
            if let Some(k) = loaded.iter().find(|k| k.name == kpi) {
                k.measure_index(&r.measure)?;
            }
            kpis.push(kpi);
            measures.push(r.measure);
        }
        check_buckets("the funnel", &loaded)?;
        // kpi._value checks the caller may read each step's KPI.
        prepared::select(
            "SELECT o::int, k || '.' || m, v,
                    CASE WHEN o > 1 THEN v / NULLIF(lag(v) OVER w, 0) END,
                    v / NULLIF(first_value(v) OVER w, 0)
               FROM (SELECT o, k, m, kpi._value(k, m, $3, $4) AS v
                       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS s(k, m, o)) x
             WINDOW w AS (ORDER BY o)
              ORDER BY o",
            &[kpis.into(), measures.into(), window.into(), dims.into()],
            |rows| {
                rows.map(|r| {
                    Ok((
                        r.get::<i32>(1)?.unwrap_or(0),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<AnyNumeric>(3)?,
                        r.get::<AnyNumeric>(4)?,
                        r.get::<AnyNumeric>(5)?,
                    ))
                })
                .collect::<KpiResult<Vec<_>>>()
            },
        )
    })()
    .or_raise();
    TableIterator::new(rows)
}
