//! Derived measures and derived KPIs.
//!
//! - Within a KPI (`measures => '…, aov = revenue / orders'`): a measure of kind
//!   [`Kind::Derived`] keeps no state; every read composes its formula from the SQL of the
//!   measures it names, over the same window, dimensions and groups ([`measure_sql`]).
//!   The capture and the fold skip it, so it costs writers nothing.
//! - Across KPIs (`kpi.create_derived`, `kpi.funnel`): see [`across`].

pub(crate) mod across;
pub(crate) mod funnel;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult};
use crate::formula;
use crate::measures::{Kind, Measure};
use pgrx::PgSqlErrorCode;

fn unknown_measure(owner: &str, name: &str, known: &[&str]) -> KpiError {
    KpiError::new(
        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
        format!("derived measure \"{owner}\" reads unknown measure \"{name}\""),
        format!(
            "A derived measure names other measures of the same KPI: {}.",
            known.join(", ")
        ),
    )
}

/// Checks the formulas of a KPI's derived measures: every name they read is a measure
/// of the KPI, none reads across KPIs, and none reads itself through others.
pub(crate) fn check_measures(measures: &[Measure]) -> KpiResult<()> {
    let names: Vec<String> = measures.iter().map(|m| m.name.clone()).collect();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut deps = vec![Vec::new(); measures.len()];
    for (i, m) in measures.iter().enumerate() {
        let Some(text) = m.formula.as_deref().filter(|_| m.kind == Kind::Derived) else {
            continue;
        };
        for r in formula::parse(text)?.refs() {
            if let Some(kpi) = &r.kpi {
                return Err(KpiError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "derived measure \"{}\" reads \"{r}\" of another KPI",
                        m.name
                    ),
                    format!(
                        "A measure reads its own KPI's measures. For a ratio across KPIs use \
                         kpi.create_derived(name, '{kpi}.{} / …').",
                        r.measure
                    ),
                ));
            }
            let j = names
                .iter()
                .position(|n| *n == r.measure)
                .ok_or_else(|| unknown_measure(&m.name, &r.measure, &known))?;
            if measures[j].kind == Kind::Derived {
                deps[i].push(j);
            }
        }
    }
    formula::check_acyclic(&names, &deps)
}

/// The SQL of measure `i` of `k`: `finalize(j)` for a stored measure, and for a derived
/// one its formula over the SQL of the measures it reads (recursively; `check_measures`
/// ruled out cycles when the KPI was created).
pub(crate) fn measure_sql(k: &Kpi, i: usize, finalize: &mut dyn FnMut(usize) -> String) -> String {
    compose(k, i, finalize, 0)
}

fn compose(k: &Kpi, i: usize, finalize: &mut dyn FnMut(usize) -> String, depth: usize) -> String {
    let m = &k.measures[i];
    let parsed = match (&m.kind, &m.formula) {
        (Kind::Derived, Some(text)) if depth <= k.measures.len() => formula::parse(text).ok(),
        (Kind::Derived, _) => None,
        _ => return finalize(i),
    };
    match parsed {
        Some(e) => e.to_sql(
            &mut |r| match k.measures.iter().position(|x| x.name == r.measure) {
                Some(j) => compose(k, j, finalize, depth + 1),
                None => "NULL::numeric".into(),
            },
        ),
        // A stored formula that no longer parses cannot happen (it was parsed when
        // stored); reading NULL beats failing every read of the KPI.
        None => "NULL::numeric".into(),
    }
}
