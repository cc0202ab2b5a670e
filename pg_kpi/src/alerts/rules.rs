//! Alert rules: `kpi.create_alert`, `kpi.alter_alert`, `kpi.drop_alert`, and a rule as
//! the evaluation loads it.

use super::condition::{self, Condition, Kind};
use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::prepared;
use crate::privileges::{as_extension_owner, current_user};
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};

const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

/// A rule as the evaluation needs it.
#[derive(Clone, Debug)]
pub struct Rule {
    pub id: i32,
    pub name: String,
    pub kpi_id: i32,
    /// `threshold`, `anomaly` or `absent` (see `condition::Kind`).
    pub kind: String,
    pub value_sql: Option<String>,
    pub weeks: Option<i32>,
    pub op: String,
    pub threshold: String,
    pub recover: Option<String>,
    pub measures: Vec<i32>,
    pub window_us: i64,
    pub for_us: i64,
    pub keep_firing_us: i64,
    pub severity: String,
    pub labels: String,
    pub summary: Option<String>,
    pub group_by: Option<String>,
    pub owner: pg_sys::Oid,
    /// The last evaluation failed (`last_error` is set).
    pub has_error: bool,
    pub reason: Option<String>,
}

const SELECT: &str = "SELECT id, name, kpi_id, value_sql, op, threshold::text, recover::text, measures,
        (extract(epoch FROM \"window\") * 1000000)::bigint, (extract(epoch FROM \"for\") * 1000000)::bigint,
        (extract(epoch FROM keep_firing_for) * 1000000)::bigint, severity, labels::text, summary, group_by, owner::oid,
        last_error IS NOT NULL, kind, weeks, reason
   FROM kpi.alert_rules";

impl Rule {
    /// The rules on the KPIs `ids` (all rules for `None`), by id.
    pub fn load(ids: Option<&[i32]>) -> KpiResult<Vec<Rule>> {
        let sql = format!("{SELECT} WHERE $1::int[] IS NULL OR kpi_id = ANY($1) ORDER BY id");
        let ids: Option<Vec<i32>> = ids.map(<[i32]>::to_vec);
        prepared::select(&sql, &[ids.into()], |rows| {
            rows.map(|r| {
                let text =
                    |i: usize| -> KpiResult<String> { Ok(r.get::<String>(i)?.unwrap_or_default()) };
                Ok(Rule {
                    id: r.get::<i32>(1)?.unwrap_or_default(),
                    name: text(2)?,
                    kpi_id: r.get::<i32>(3)?.unwrap_or_default(),
                    value_sql: r.get::<String>(4)?,
                    op: text(5)?,
                    threshold: text(6)?,
                    recover: r.get::<String>(7)?,
                    measures: r.get::<Vec<i32>>(8)?.unwrap_or_default(),
                    window_us: r.get::<i64>(9)?.unwrap_or_default(),
                    for_us: r.get::<i64>(10)?.unwrap_or_default(),
                    keep_firing_us: r.get::<i64>(11)?.unwrap_or_default(),
                    severity: text(12)?,
                    labels: text(13)?,
                    summary: r.get::<String>(14)?,
                    group_by: r.get::<String>(15)?,
                    owner: r.get::<pg_sys::Oid>(16)?.unwrap_or(pg_sys::InvalidOid),
                    has_error: r.get::<bool>(17)?.unwrap_or(false),
                    kind: text(18)?,
                    weeks: r.get::<i32>(19)?,
                    reason: r.get::<String>(20)?,
                })
            })
            .collect()
        })
    }
}

/// A rule's definition as given, checked and normalized.
struct Definition {
    condition: Condition,
    window: Interval,
    for_: Interval,
    keep_firing_for: Interval,
    severity: String,
    labels: serde_json::Value,
    summary: Option<String>,
    group_by: Option<String>,
    recover: Option<AnyNumeric>,
}

fn interval_us(i: &Interval) -> i64 {
    const DAY: i64 = 86_400_000_000;
    i64::from(i.months()) * 30 * DAY + i64::from(i.days()) * DAY + i.micros()
}

/// Only the KPI's owner, a role that is a member of it, or a superuser may put alerts
/// on a KPI.
fn check_can_alert(kpi: &Kpi) -> KpiResult<()> {
    let ok = unsafe { pg_sys::superuser() || pg_sys::has_privs_of_role(current_user(), kpi.owner) };
    if ok {
        Ok(())
    } else {
        Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "must be the owner of KPI \"{}\" to define alerts on it",
                kpi.name
            ),
            "Ask the KPI's owner to define the alert, or to GRANT their role to yours.",
        ))
    }
}

impl Definition {
    #[allow(clippy::too_many_arguments)]
    fn check(
        kpi: &Kpi,
        condition_text: &str,
        window: Interval,
        for_: Interval,
        keep_firing_for: Interval,
        severity: &str,
        labels: serde_json::Value,
        summary: Option<String>,
        group_by: Option<String>,
        recover: Option<AnyNumeric>,
    ) -> KpiResult<Definition> {
        if interval_us(&window) <= 0 {
            return Err(KpiError::invalid(
                format!("window must be positive, not {window}"),
                "The window is how far back the condition looks, such as '5 minutes'.",
            ));
        }
        for (what, i) in [("for", &for_), ("keep_firing_for", &keep_firing_for)] {
            if interval_us(i) < 0 {
                return Err(KpiError::invalid(
                    format!("{what} must not be negative, not {i}"),
                    format!("{what} is how long to wait, such as '1 minute', or '0' not to wait."),
                ));
            }
        }
        if !SEVERITIES.contains(&severity) {
            return Err(KpiError::invalid(
                format!("unknown severity \"{severity}\""),
                "severity is one of info, warning, critical.",
            ));
        }
        check_labels(&labels)?;
        if let Some(dim) = &group_by {
            kpi.dimension_index(dim).map_err(|_| {
                KpiError::invalid(
                    format!(
                        "group_by \"{dim}\" is not a dimension of KPI \"{}\"",
                        kpi.name
                    ),
                    format!(
                        "group_by names one of the KPI's dimensions: {}.",
                        if kpi.dimensions.is_empty() {
                            "it has none".to_string()
                        } else {
                            kpi.dimensions.join(", ")
                        }
                    ),
                )
            })?;
        }
        let condition = condition::analyze(kpi, condition_text)?;
        let mut window = window;
        if let Kind::Absent { window: w } = &condition.kind {
            if group_by.is_some() || recover.is_some() {
                return Err(KpiError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "an absent() alert takes neither group_by nor recover",
                    "absent(interval) fires when the whole KPI counted no rows for that long; for one dimension value, use a KPI with a filter.",
                ));
            }
            window = prepared::select_one::<Interval>("SELECT $1::interval", &[w.as_str().into()])?
                .ok_or_else(|| KpiError::internal("interval cast returned NULL"))?;
        }
        if let Some(r) = &recover {
            check_recover(&condition, r)?;
        }
        Ok(Definition {
            condition,
            window,
            for_,
            keep_firing_for,
            severity: severity.to_string(),
            labels,
            summary,
            group_by,
            recover,
        })
    }
}

impl Definition {
    fn value_sql(&self) -> Option<String> {
        match &self.condition.kind {
            Kind::Threshold { value_sql } => Some(value_sql.clone()),
            _ => None,
        }
    }

    fn weeks(&self) -> Option<i32> {
        match self.condition.kind {
            Kind::Anomaly { weeks } => Some(weeks),
            _ => None,
        }
    }
}

fn check_labels(labels: &serde_json::Value) -> KpiResult<()> {
    let hint = "labels is a JSON object of strings, such as '{\"team\": \"payments\"}'.";
    let serde_json::Value::Object(map) = labels else {
        return Err(KpiError::invalid("labels must be a JSON object", hint));
    };
    for (k, v) in map {
        let valid_key = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(KpiError::invalid(
                format!("label name \"{k}\" is not valid"),
                "Label names are letters, digits and underscores, not starting with a digit (as in Prometheus).",
            ));
        }
        if !v.is_string() {
            return Err(KpiError::invalid(
                format!("label \"{k}\" must be a string, not {v}"),
                hint,
            ));
        }
    }
    Ok(())
}

/// A recovery threshold lies on the resolved side of the threshold.
fn check_recover(c: &Condition, recover: &AnyNumeric) -> KpiResult<()> {
    let sql = format!(
        "SELECT $1::numeric {} ({})::numeric",
        reverse(c.op),
        c.threshold
    );
    let ok = prepared::select_one::<bool>(&sql, &[recover.clone().into()])?.unwrap_or(false)
        || prepared::select_one::<bool>(
            &format!("SELECT $1::numeric = ({})::numeric", c.threshold),
            &[recover.clone().into()],
        )?
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(KpiError::invalid(
            format!("recover {recover} is on the firing side of the threshold {} {}", c.op, c.threshold),
            "The recovery threshold is where a firing alert resolves: below the threshold for > and >=, above it for < and <=.",
        ))
    }
}

/// The comparison that holds on the other side of the line.
fn reverse(op: &str) -> &'static str {
    match op {
        ">" | ">=" => "<",
        _ => ">",
    }
}

fn load_kpi(name: &str) -> KpiResult<Kpi> {
    let kpi = as_extension_owner(|| Kpi::by_name(name))?;
    check_can_alert(&kpi)?;
    Ok(kpi)
}

fn rule_kpi(rule: &str) -> KpiResult<Kpi> {
    let kpi = as_extension_owner(|| {
        prepared::select_one::<String>(
            "SELECT d.name FROM kpi.alert_rules r JOIN kpi.definitions d ON d.id = r.kpi_id WHERE r.name = $1",
            &[rule.into()],
        )
    })?
    .ok_or_else(|| undefined_alert(rule))?;
    load_kpi(&kpi)
}

fn undefined_alert(name: &str) -> KpiError {
    KpiError::new(
        PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
        format!("alert \"{name}\" does not exist"),
        "SELECT DISTINCT alert FROM kpi.alerts shows the alerts that exist.",
    )
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(schema = "kpi", name = "_create_alert", volatile, parallel_unsafe)]
fn create_alert(
    name: &str,
    kpi: &str,
    condition: &str,
    window: Interval,
    for_: Interval,
    keep_firing_for: Interval,
    severity: &str,
    labels: JsonB,
    summary: Option<String>,
    group_by: Option<String>,
    recover: Option<AnyNumeric>,
) -> i32 {
    (|| -> KpiResult<i32> {
        crate::names::check("alert", name)?;
        let k = load_kpi(kpi)?;
        let d = Definition::check(
            &k, condition, window, for_, keep_firing_for, severity, labels.0, summary, group_by,
            recover,
        )?;
        let exists = as_extension_owner(|| {
            prepared::select_one::<i32>("SELECT id FROM kpi.alert_rules WHERE name = $1", &[name.into()])
        })?;
        if exists.is_some() {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("alert \"{name}\" already exists"),
                "Change it with kpi.alter_alert, or drop it first with kpi.drop_alert.",
            ));
        }
        let owner = current_user();
        let sql = format!(
            "INSERT INTO kpi.alert_rules (name, kpi_id, condition, value_sql, op, threshold, recover,
                 measures, \"window\", \"for\", keep_firing_for, severity, labels, summary, group_by, owner,
                 kind, weeks)
             VALUES ($1, $2, $3, $4, $5, ({threshold})::numeric, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                     $15::oid::regrole, $16, $17)
             RETURNING id",
            threshold = d.condition.threshold,
        );
        let (weeks, value_sql) = (d.weeks(), d.value_sql());
        as_extension_owner(|| {
            prepared::run(
                &sql,
                &[
                    name.into(),
                    k.id.into(),
                    condition.into(),
                    value_sql.into(),
                    d.condition.op.into(),
                    d.recover.into(),
                    d.condition.measures.clone().into(),
                    d.window.into(),
                    d.for_.into(),
                    d.keep_firing_for.into(),
                    d.severity.as_str().into(),
                    JsonB(d.labels).into(),
                    d.summary.into(),
                    d.group_by.into(),
                    owner.into(),
                    d.condition.kind_name().into(),
                    weeks.into(),
                ],
                |mut rows| {
                    rows.next()
                        .and_then(|r| r.get::<i32>(1).ok().flatten())
                        .ok_or_else(|| KpiError::internal("INSERT returned no id"))
                },
            )
        })
    })()
    .or_raise()
}

/// Changes the given parts of a rule (NULL keeps a part). A new condition, window or
/// recovery threshold applies from the next evaluation; instances keep their state.
#[allow(clippy::too_many_arguments)]
#[pg_extern(schema = "kpi", name = "_alter_alert", volatile, parallel_unsafe)]
fn alter_alert(
    name: &str,
    condition: Option<&str>,
    window: Option<Interval>,
    for_: Option<Interval>,
    keep_firing_for: Option<Interval>,
    severity: Option<&str>,
    labels: Option<JsonB>,
    summary: Option<String>,
    recover: Option<AnyNumeric>,
) -> bool {
    (|| -> KpiResult<bool> {
        let k = rule_kpi(name)?;
        type Current = (String, Interval, Interval, Interval, String, JsonB, Option<String>, Option<String>, Option<AnyNumeric>);
        let cur: Current = as_extension_owner(|| {
            prepared::select(
                "SELECT condition, \"window\", \"for\", keep_firing_for, severity, labels, summary, group_by, recover
                   FROM kpi.alert_rules WHERE name = $1",
                &[name.into()],
                |mut rows| {
                    let r = rows.next().ok_or_else(|| undefined_alert(name))?;
                    let missing = || KpiError::internal("alert rule column is NULL");
                    Ok((
                        r.get::<String>(1)?.ok_or_else(missing)?,
                        r.get::<Interval>(2)?.ok_or_else(missing)?,
                        r.get::<Interval>(3)?.ok_or_else(missing)?,
                        r.get::<Interval>(4)?.ok_or_else(missing)?,
                        r.get::<String>(5)?.ok_or_else(missing)?,
                        r.get::<JsonB>(6)?.ok_or_else(missing)?,
                        r.get::<String>(7)?,
                        r.get::<String>(8)?,
                        r.get::<AnyNumeric>(9)?,
                    ))
                },
            )
        })?;
        let condition_text = condition.map(str::to_string).unwrap_or(cur.0);
        let d = Definition::check(
            &k,
            &condition_text,
            window.unwrap_or(cur.1),
            for_.unwrap_or(cur.2),
            keep_firing_for.unwrap_or(cur.3),
            severity.unwrap_or(&cur.4),
            labels.map(|l| l.0).unwrap_or(cur.5 .0),
            summary.or(cur.6),
            cur.7,
            recover.or(cur.8),
        )?;
        let sql = format!(
            "UPDATE kpi.alert_rules SET condition = $2, value_sql = $3, op = $4,
                    threshold = ({threshold})::numeric, recover = $5, measures = $6, \"window\" = $7,
                    \"for\" = $8, keep_firing_for = $9, severity = $10, labels = $11, summary = $12,
                    kind = $13, weeks = $14, reason = NULL
              WHERE name = $1",
            threshold = d.condition.threshold,
        );
        let (weeks, value_sql) = (d.weeks(), d.value_sql());
        as_extension_owner(|| {
            prepared::run(
                &sql,
                &[
                    name.into(),
                    condition_text.as_str().into(),
                    value_sql.into(),
                    d.condition.op.into(),
                    d.recover.into(),
                    d.condition.measures.clone().into(),
                    d.window.into(),
                    d.for_.into(),
                    d.keep_firing_for.into(),
                    d.severity.as_str().into(),
                    JsonB(d.labels).into(),
                    d.summary.into(),
                    d.condition.kind_name().into(),
                    weeks.into(),
                ],
                |_| Ok(()),
            )
        })?;
        Ok(true)
    })()
    .or_raise()
}

#[pg_extern(schema = "kpi", name = "_drop_alert", volatile, parallel_unsafe)]
fn drop_alert(name: &str, if_exists: bool) -> bool {
    (|| -> KpiResult<bool> {
        match rule_kpi(name) {
            Ok(_) => {}
            Err(e) if if_exists && e.code == PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT => {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
        as_extension_owner(|| {
            prepared::run(
                "DELETE FROM kpi.alert_rules WHERE name = $1",
                &[name.into()],
                |_| Ok(()),
            )
        })?;
        Ok(true)
    })()
    .or_raise()
}
