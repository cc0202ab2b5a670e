//! The history of a current-state KPI: samples of its totals (one value per measure,
//! over all dimension values) in `kpi._samples_<id>`, written by the fold when the value
//! changed, at most one row per resolution slot (a later change in the same slot
//! overwrites it), and kept for the KPI's `history` (plus the last sample before it, the
//! value carried into the window). `kpi.series` over a current-state KPI reads them as a
//! step function: each step shows the last value sampled before its end.

use crate::api::read::window_measures;
use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult};
use crate::prepared;
use crate::privileges::as_extension_owner;
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::AnyNumeric;

const ORIGIN: &str = "'2000-01-01 00:00:00+00'::timestamptz";

pub fn table(k: &Kpi) -> String {
    format!("kpi._samples_{}", k.id)
}

/// Creates the samples table (as the extension owner, like the aggregate tables).
pub fn create(k: &Kpi) -> KpiResult<()> {
    Spi::run(&format!(
        "CREATE TABLE {t} (at timestamptz PRIMARY KEY, vals numeric[] NOT NULL);
         REVOKE ALL ON {t} FROM PUBLIC;
         COMMENT ON TABLE {t} IS {c};",
        t = table(k),
        c = crate::catalog::quote_literal(&format!(
            "pg_kpi: history samples of current-state KPI {}",
            k.name
        )),
    ))?;
    Ok(())
}

/// Whether KPI `k` has a samples table: a current-state KPI, but not a rebuild's hidden
/// definition, which gets one (filled from the old one's) when it is swapped in.
fn sampled(k: &Kpi) -> bool {
    super::is_state(k) && !crate::api::rebuild::is_hidden(&k.name)
}

/// Samples the current totals of each current-state KPI among `kpis` whose id is in
/// `touched`. Called by the fold after its merges (and by create after the backfill).
pub fn record(kpis: &[Kpi], touched: &[i32]) -> KpiResult<()> {
    for k in kpis
        .iter()
        .filter(|k| sampled(k) && touched.contains(&k.id))
    {
        record_one(k)?;
    }
    Ok(())
}

fn record_in_snapshot(k: &Kpi) -> KpiResult<()> {
    let Some(s) = &k.special else { return Ok(()) };
    let all: Vec<usize> = (0..k.measures.len()).collect();
    let values: Vec<Option<AnyNumeric>> = window_measures(k, 1, 0, &all, None)?
        .pop()
        .map(|g| g.values)
        .unwrap_or_default();
    let sql = format!(
        "INSERT INTO {t} AS s (at, vals)
         SELECT date_bin(make_interval(secs => $1::numeric / 1000000), now(), {ORIGIN}), $2
          WHERE $2 IS DISTINCT FROM (SELECT vals FROM {t} ORDER BY at DESC LIMIT 1)
         ON CONFLICT (at) DO UPDATE SET vals = excluded.vals",
        t = table(k)
    );
    as_extension_owner(|| prepared::run(&sql, &[s.resolution_us.into(), values.into()], |_| Ok(())))
}

/// Samples one KPI now. Reads run in the calling statement's snapshot, taken before the
/// fold's merges (or the creation's backfill): read in one taken now instead.
pub fn record_one(k: &Kpi) -> KpiResult<()> {
    crate::snapshot::fresh(|| record_in_snapshot(k))
}

/// Drops samples older than the KPI's history, except the last of them (the value at
/// the start of the window).
pub fn retain(k: &Kpi) -> KpiResult<()> {
    let Some(history) = k.special.as_ref().and_then(|s| s.history.clone()) else {
        return Ok(());
    };
    if !sampled(k) {
        return Ok(());
    }
    Spi::run_with_args(
        &format!(
            "DELETE FROM {t} WHERE at < (SELECT max(at) FROM {t} WHERE at < now() - $1::interval)",
            t = table(k)
        ),
        &[history.as_str().into()],
    )?;
    Ok(())
}

pub type Row = (
    TimestampWithTimeZone,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
    Option<AnyNumeric>,
);

/// `kpi.series` over a current-state KPI: one row per step from `since` to `until`,
/// each the last value sampled before the step's end (NULL before the first sample);
/// with `compare`, the same one day and one week earlier.
pub fn series(
    k: &Kpi,
    i: usize,
    since: TimestampWithTimeZone,
    until: TimestampWithTimeZone,
    step: Option<Interval>,
    dims: &serde_json::Value,
    compare: bool,
) -> KpiResult<Vec<Row>> {
    if dims.as_object().is_some_and(|o| !o.is_empty()) {
        return Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "the history of current-state KPI \"{}\" is kept for its totals only",
                k.name
            ),
            "Call kpi.series without dims; kpi.value and kpi.top give the current value per dimension.",
        ));
    }
    let res_us = k.special.as_ref().map_or(60_000_000, |s| s.resolution_us);
    let step_us = match &step {
        Some(s) => {
            let us = i64::from(s.days()) * 86_400_000_000 + s.micros();
            if s.months() != 0 || us <= 0 {
                return Err(KpiError::invalid(
                    format!("step {s} is not a positive fixed-width interval"),
                    "Use an interval such as '1 minute' or '1 hour' (the KPI samples at its resolution).",
                ));
            }
            us
        }
        None => res_us,
    };
    let step_sql = format!("make_interval(secs => {step_us}::numeric / 1000000)");
    let at = |off: &str| {
        format!(
            "(SELECT s.vals[{n}] FROM {t} s WHERE s.at < g.b + {step_sql} - interval '{off}'
               ORDER BY s.at DESC LIMIT 1)",
            n = i + 1,
            t = table(k)
        )
    };
    let (v1, v2) = if compare {
        (at("1 day"), at("7 days"))
    } else {
        ("NULL::numeric".into(), "NULL::numeric".into())
    };
    let sql = format!(
        "SELECT g.b, {v0}, {v1}, {v2}
           FROM generate_series(date_bin({step_sql}, $1, {ORIGIN}), $2, {step_sql}) g(b)
          ORDER BY g.b",
        v0 = at("0")
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
}
