//! Evaluating alert rules: each rule's value over its window (per group value when it
//! has `group_by`), one step of each instance's state machine, and for every transition
//! a row in `kpi.alert_history` and a `NOTIFY kpi_alerts '{"id":N}'`, all in the
//! calling transaction (the fold's), so a transition commits with the data that caused
//! it, or not at all.

use super::rules::Rule;
use super::state::{self, Instance, Seen, State, Transition};
use crate::api::read::{window_measures, GroupValues};
use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult};
use crate::prepared;
use crate::privileges::{as_extension_owner, as_role};
use crate::subxact::isolated;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Evaluates every rule in `rules` at the transaction's start time; returns the
/// number of transitions. A rule that fails (its value divides by zero, say) is
/// rolled back alone and its error recorded on the rule; the others go on.
pub fn evaluate(rules: &[Rule]) -> KpiResult<usize> {
    if rules.is_empty() {
        return Ok(0);
    }
    // Both callers evaluate in one fresh snapshot (`snapshot::fresh`), and evaluating
    // never writes the delta buffer: every window may share one read of it.
    crate::deltas::buffer::read_once_during(|| evaluate_in_snapshot(rules))
}

fn evaluate_in_snapshot(rules: &[Rule]) -> KpiResult<usize> {
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let mut ids: Vec<i32> = rules.iter().map(|r| r.kpi_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let kpis: HashMap<i32, Kpi> = as_extension_owner(|| Kpi::by_ids(&ids))?
        .into_iter()
        .map(|k| (k.id, k))
        .collect();
    // All rules in one subtransaction; only if that fails, each in one of its own, to
    // find the failing ones (as the fold merges KPIs).
    let all = isolated(|| {
        let mut n = 0;
        for rule in rules {
            if let Some(k) = kpis.get(&rule.kpi_id) {
                n += evaluate_rule(rule, k, now)?;
            }
        }
        Ok(n)
    });
    if let Ok(n) = all {
        for rule in rules.iter().filter(|r| r.has_error) {
            record_error(rule, None)?;
        }
        return Ok(n);
    }
    let mut n = 0;
    for rule in rules {
        let Some(k) = kpis.get(&rule.kpi_id) else {
            continue;
        };
        match isolated(|| evaluate_rule(rule, k, now)) {
            Ok(t) => {
                n += t;
                if rule.has_error {
                    record_error(rule, None)?;
                }
            }
            Err(message) => record_error(rule, Some(&message))?,
        }
    }
    Ok(n)
}

fn record_error(rule: &Rule, message: Option<&str>) -> KpiResult<()> {
    as_extension_owner(|| {
        prepared::run(
            "UPDATE kpi.alert_rules SET last_error = $2,
                    last_error_at = CASE WHEN $2 IS NULL THEN NULL ELSE now() END
              WHERE id = $1",
            &[rule.id.into(), message.into()],
            |_| Ok(()),
        )
    })
}

/// One instance's value and what it means for the condition.
struct Reading {
    value: Option<AnyNumeric>,
    value_text: Option<String>,
    seen: Seen,
}

impl Reading {
    /// No value: nothing crosses.
    const NONE: Reading = Reading {
        value: None,
        value_text: None,
        seen: Seen {
            crossed: false,
            still_crossed: false,
        },
    };
}

fn evaluate_rule(rule: &Rule, k: &Kpi, now: i64) -> KpiResult<usize> {
    let (mut readings, reason) = match rule.kind.as_str() {
        "anomaly" => anomaly_readings(rule, k)?,
        "absent" => (absent_readings(rule, k)?, None),
        _ => (threshold_readings(rule, k)?, None),
    };
    if reason != rule.reason {
        as_extension_owner(|| {
            prepared::run(
                "UPDATE kpi.alert_rules SET reason = $2 WHERE id = $1",
                &[rule.id.into(), reason.into()],
                |_| Ok(()),
            )
        })?;
    }
    let mut instances = load_instances(rule.id)?;
    // Instances with no data in the window any more see a NULL value: not crossed.
    for group in instances.keys() {
        readings.entry(group.clone()).or_insert(Reading::NONE);
    }
    let mut transitions = 0;
    for (group, reading) in readings {
        let prev = instances.remove(&group).unwrap_or(Instance::INACTIVE);
        let (next, transition) =
            state::step(prev, reading.seen, now, rule.for_us, rule.keep_firing_us);
        if transition.is_none() && next.state == State::Inactive {
            continue;
        }
        save_instance(rule, &group, &next, &reading, now)?;
        if let Some(t) = transition {
            // The episode a firing or resolved row belongs to began when it fired.
            let started_at = next.firing_since.or(prev.firing_since);
            record_transition(rule, k, &group, prev.state, t, &reading, started_at)?;
            transitions += 1;
        }
    }
    Ok(transitions)
}

type Readings = BTreeMap<String, Reading>;

fn threshold_readings(rule: &Rule, k: &Kpi) -> KpiResult<Readings> {
    let wanted: Vec<usize> = rule.measures.iter().map(|&i| i as usize).collect();
    let mut readings = Readings::new();
    for g in window_measures(k, rule.window_us, 0, &wanted, rule.group_by.as_deref())? {
        readings.insert(g.group.unwrap_or_default(), read_value(rule, g.values)?);
    }
    Ok(readings)
}

/// `absent(interval)`: the rows counted in the window, crossed at none.
fn absent_readings(rule: &Rule, k: &Kpi) -> KpiResult<Readings> {
    let rows = window_measures(k, rule.window_us, 0, &[], None)?
        .first()
        .map_or(0, |g| g.rows);
    let none = rows == 0;
    let reading = Reading {
        value: Some(AnyNumeric::from(rows)),
        value_text: Some(rows.to_string()),
        seen: Seen {
            crossed: none,
            still_crossed: none,
        },
    };
    Ok(Readings::from([(String::new(), reading)]))
}

const WEEK_US: i64 = 7 * 86_400_000_000;

/// `anomaly(measure, sigmas, weeks)`: the z-score of the measure in the window against
/// the same window in each of the previous weeks. A group with a week without data
/// cannot be judged, and does not cross; the reason says how much history is missing.
fn anomaly_readings(rule: &Rule, k: &Kpi) -> KpiResult<(Readings, Option<String>)> {
    let i = rule.measures.first().map_or(0, |&i| i as usize);
    let weeks = rule.weeks.unwrap_or(4).max(1);
    let group_by = rule.group_by.as_deref();
    let sigmas: f64 = rule.threshold.parse().unwrap_or(f64::INFINITY);
    let recover: f64 = rule
        .recover
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(sigmas);
    let value_of = |g: &GroupValues| -> Option<f64> {
        let v = g.values.get(i).cloned().flatten()?;
        f64::try_from(v).ok().filter(|_| g.rows != 0)
    };
    let mut past: Vec<HashMap<String, f64>> = Vec::with_capacity(weeks as usize);
    for w in 1..=i64::from(weeks) {
        let week = window_measures(k, rule.window_us, w * WEEK_US, &[i], group_by)?
            .iter()
            .filter_map(|g| Some((g.group.clone().unwrap_or_default(), value_of(g)?)))
            .collect();
        past.push(week);
    }
    let mut readings = Readings::new();
    let (mut short, mut total, mut fewest) = (0, 0, weeks as usize);
    for g in window_measures(k, rule.window_us, 0, &[i], group_by)? {
        let group = g.group.clone().unwrap_or_default();
        total += 1;
        let history: Vec<f64> = past.iter().filter_map(|w| w.get(&group).copied()).collect();
        let current = g
            .values
            .get(i)
            .cloned()
            .flatten()
            .and_then(|v| f64::try_from(v).ok());
        let (Some(current), true) = (current, history.len() == weeks as usize) else {
            short += 1;
            fewest = fewest.min(history.len());
            readings.insert(group, Reading::NONE);
            continue;
        };
        let z = z_score(current, &history);
        let value = AnyNumeric::try_from((z * 1000.0).round() / 1000.0).ok();
        readings.insert(
            group,
            Reading {
                value_text: value.as_ref().map(|v| v.to_string()),
                value,
                seen: Seen {
                    crossed: z.abs() > sigmas,
                    still_crossed: z.abs() > recover,
                },
            },
        );
    }
    let reason = match (short, group_by) {
        (0, _) => None,
        (_, None) => Some(format!("{fewest} of {weeks} weeks of history needed")),
        (_, Some(_)) => Some(format!(
            "{short} of {total} groups have too little history ({weeks} weeks needed, the fewest has {fewest})"
        )),
    };
    Ok((readings, reason))
}

/// How many (sample) standard deviations `x` lies from the mean of `history`. A flat
/// history makes any change infinitely far: reported as ±1e9.
fn z_score(x: f64, history: &[f64]) -> f64 {
    let n = history.len() as f64;
    let mean = history.iter().sum::<f64>() / n;
    let var = if history.len() > 1 {
        history.iter().map(|h| (h - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    let sd = var.sqrt();
    if sd > 0.0 {
        (x - mean) / sd
    } else if x == mean {
        0.0
    } else {
        1e9_f64.copysign(x - mean)
    }
}

/// The rule's value from one group's measures, compared with its thresholds; computed
/// as the rule's owner (the expression may call their immutable functions).
fn read_value(rule: &Rule, values: Vec<Option<AnyNumeric>>) -> KpiResult<Reading> {
    let recover = rule.recover.as_deref().unwrap_or(&rule.threshold);
    let sql = format!(
        "SELECT v, v::text, coalesce(v {op} ({t})::numeric, false), coalesce(v {op} ({r})::numeric, false)
           FROM (SELECT ({value})::numeric AS v) x",
        op = rule.op,
        t = rule.threshold,
        r = recover,
        value = rule.value_sql.as_deref().unwrap_or("NULL"),
    );
    let args: Vec<DatumWithOid> = values.into_iter().map(DatumWithOid::from).collect();
    as_role(rule.owner, || {
        prepared::select(&sql, &args, |mut rows| {
            let r = rows
                .next()
                .ok_or_else(|| KpiError::internal("alert value query returned nothing"))?;
            Ok(Reading {
                value: r.get::<AnyNumeric>(1)?,
                value_text: r.get::<String>(2)?,
                seen: Seen {
                    crossed: r.get::<bool>(3)?.unwrap_or(false),
                    still_crossed: r.get::<bool>(4)?.unwrap_or(false),
                },
            })
        })
    })
}

const EPOCH_US: &str =
    "(extract(epoch FROM {} - '2000-01-01 00:00:00+00'::timestamptz) * 1000000)::bigint";

fn us_of(col: &str) -> String {
    EPOCH_US.replace("{}", col)
}

fn load_instances(rule_id: i32) -> KpiResult<HashMap<String, Instance>> {
    let sql = format!(
        "SELECT group_value, state, {}, {}, {} FROM kpi.alert_state WHERE rule_id = $1",
        us_of("active_since"),
        us_of("firing_since"),
        us_of("last_active_at"),
    );
    as_extension_owner(|| {
        prepared::select(&sql, &[rule_id.into()], |rows| {
            rows.map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    Instance {
                        state: State::parse(&r.get::<String>(2)?.unwrap_or_default()),
                        active_since: r.get::<i64>(3)?,
                        firing_since: r.get::<i64>(4)?,
                        last_active_at: r.get::<i64>(5)?,
                    },
                ))
            })
            .collect()
        })
    })
}

fn ts(us: Option<i64>) -> Option<pgrx::datum::TimestampWithTimeZone> {
    us.and_then(|u| pgrx::datum::TimestampWithTimeZone::try_from(u).ok())
}

fn save_instance(rule: &Rule, group: &str, i: &Instance, r: &Reading, now: i64) -> KpiResult<()> {
    as_extension_owner(|| {
        prepared::run(
            "INSERT INTO kpi.alert_state AS a (rule_id, group_value, state, value, active_since,
                                               firing_since, last_active_at, evaluated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (rule_id, group_value) DO UPDATE SET state = excluded.state,
                 value = excluded.value, active_since = excluded.active_since,
                 firing_since = excluded.firing_since, last_active_at = excluded.last_active_at,
                 evaluated_at = excluded.evaluated_at",
            &[
                rule.id.into(),
                group.into(),
                i.state.as_str().into(),
                r.value.clone().into(),
                ts(i.active_since).into(),
                ts(i.firing_since).into(),
                ts(i.last_active_at).into(),
                ts(Some(now)).into(),
            ],
            |_| Ok(()),
        )
    })
}

fn record_transition(
    rule: &Rule,
    k: &Kpi,
    group: &str,
    from: State,
    t: Transition,
    r: &Reading,
    started_at: Option<i64>,
) -> KpiResult<()> {
    let summary = rule.summary.as_deref().map(|s| {
        s.replace("{{value}}", r.value_text.as_deref().unwrap_or("NULL"))
            .replace("{{threshold}}", &rule.threshold)
            .replace("{{group}}", group)
            .replace("{{kpi}}", &k.name)
            .replace("{{alert}}", &rule.name)
    });
    let id = as_extension_owner(|| {
        prepared::run(
            "INSERT INTO kpi.alert_history (rule_id, rule, kpi, group_by, group_value, from_state,
                                            to_state, value, threshold, severity, labels, summary,
                                            started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::numeric, $10, $11::jsonb, $12, $13)
             RETURNING id",
            &[
                rule.id.into(),
                rule.name.as_str().into(),
                k.name.as_str().into(),
                rule.group_by.clone().into(),
                group.into(),
                from.as_str().into(),
                t.to_state().into(),
                r.value.clone().into(),
                rule.threshold.as_str().into(),
                rule.severity.as_str().into(),
                rule.labels.as_str().into(),
                summary.into(),
                ts(started_at).into(),
            ],
            |mut rows| {
                rows.next()
                    .and_then(|r| r.get::<i64>(1).ok().flatten())
                    .ok_or_else(|| KpiError::internal("INSERT returned no id"))
            },
        )
    })?;
    notify(id)
}

/// Tells listeners (the notifier) that history row `id` was written; they see it once
/// the transaction commits.
pub(super) fn notify(id: i64) -> KpiResult<()> {
    prepared::run(
        "SELECT pg_catalog.pg_notify('kpi_alerts', $1)",
        &[format!("{{\"id\":{id}}}").as_str().into()],
        |_| Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::z_score;

    #[test]
    fn z_scores() {
        assert_eq!(z_score(10.0, &[10.0, 10.0, 10.0]), 0.0);
        assert_eq!(z_score(11.0, &[10.0, 10.0, 10.0]), 1e9);
        assert_eq!(z_score(9.0, &[10.0, 10.0]), -1e9);
        // mean 10, sample sd 2
        let z = z_score(16.0, &[8.0, 10.0, 12.0]);
        assert!((z - 3.0).abs() < 1e-12, "{z}");
    }
}
