//! Evaluating alert rules: each rule's value over its window (per group value when it
//! has `group_by`), one step of each instance's state machine, and for every transition
//! a row in `kpi.alert_history` and a `NOTIFY kpi_alerts '{"id":N}'`, all in the
//! calling transaction (the fold's), so a transition commits with the data that caused
//! it, or not at all.

use super::rules::Rule;
use super::state::{self, Instance, Seen, State, Transition};
use crate::api::read::window_measures;
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

fn evaluate_rule(rule: &Rule, k: &Kpi, now: i64) -> KpiResult<usize> {
    let wanted: Vec<usize> = rule.measures.iter().map(|&i| i as usize).collect();
    let groups = window_measures(k, rule.window_us, &wanted, rule.group_by.as_deref())?;
    let mut readings: BTreeMap<String, Reading> = BTreeMap::new();
    for (group, values) in groups {
        readings.insert(group.unwrap_or_default(), read_value(rule, values)?);
    }
    let mut instances = load_instances(rule.id)?;
    // Instances with no data in the window any more see a NULL value: not crossed.
    for group in instances.keys() {
        readings.entry(group.clone()).or_insert(Reading {
            value: None,
            value_text: None,
            seen: Seen {
                crossed: false,
                still_crossed: false,
            },
        });
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
            record_transition(rule, k, &group, prev.state, t, &reading)?;
            transitions += 1;
        }
    }
    Ok(transitions)
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
        value = rule.value_sql,
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
                                            to_state, value, threshold, severity, labels, summary)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::numeric, $10, $11::jsonb, $12)
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
            ],
            |mut rows| {
                rows.next()
                    .and_then(|r| r.get::<i64>(1).ok().flatten())
                    .ok_or_else(|| KpiError::internal("INSERT returned no id"))
            },
        )
    })?;
    prepared::run(
        "SELECT pg_catalog.pg_notify('kpi_alerts', $1)",
        &[format!("{{\"id\":{id}}}").as_str().into()],
        |_| Ok(()),
    )
}
