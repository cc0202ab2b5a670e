//! `kpi.ack_alert`: a person says "I have this one". The acknowledgement belongs to the
//! instance's current firing episode (`acked_at >= firing_since`), stops repeats and
//! escalation in the notifier, and is itself a transition (`acknowledged`) in the
//! history, so the notifier can tell PagerDuty.

use super::evaluate::notify;
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::prepared;
use crate::privileges::as_extension_owner;
use pgrx::prelude::*;

#[pg_extern(schema = "kpi", name = "_ack_alert", volatile, parallel_unsafe)]
fn ack_alert(id: i64, by: Option<&str>, note: Option<&str>) -> i64 {
    acknowledge(id, by, note).or_raise()
}

fn acknowledge(id: i64, by: Option<&str>, note: Option<&str>) -> KpiResult<i64> {
    let by = by.map(str::trim).filter(|b| !b.is_empty()).ok_or_else(|| {
        KpiError::invalid(
            "an acknowledgement needs a \"by\"",
            "Say who takes the alert: kpi.ack_alert(id, \"by\" => 'alice').",
        )
    })?;
    // Visibility is the caller's: kpi.alerts shows the alerts of KPIs they may read.
    let visible =
        prepared::select_one::<i64>("SELECT id FROM kpi.alerts WHERE id = $1", &[id.into()])?;
    if visible.is_none() {
        return Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("alert instance {id} does not exist"),
            "SELECT id, alert, group_value, state FROM kpi.alerts shows the instances and their ids.",
        ));
    }
    as_extension_owner(|| {
        // Locked, so two acknowledgements of one episode record one transition.
        let (state, acked) = prepared::run(
            "SELECT state, coalesce(acked_at >= firing_since, false)
               FROM kpi.alert_state WHERE id = $1 FOR UPDATE",
            &[id.into()],
            |mut rows| {
                let row = rows
                    .next()
                    .ok_or_else(|| KpiError::internal("alert instance vanished"))?;
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<bool>(2)?.unwrap_or(false),
                ))
            },
        )?;
        if state != "firing" {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("alert instance {id} is {state}, not firing"),
                "Only a firing alert can be acknowledged.",
            ));
        }
        if acked {
            // A second click on the same episode: the first acknowledgement stands.
            return prepared::select_one::<i64>(
                "SELECT h.id FROM kpi.alert_history h JOIN kpi.alert_state s
                     ON s.rule_id = h.rule_id AND s.group_value = h.group_value
                  WHERE s.id = $1 AND h.to_state = 'acknowledged' AND h.started_at = s.firing_since
                  ORDER BY h.id DESC LIMIT 1",
                &[id.into()],
            )?
            .ok_or_else(|| KpiError::internal("acknowledgement without its history row"));
        }
        prepared::run(
            "UPDATE kpi.alert_state SET acked_at = now(), acked_by = $2, ack_note = $3 WHERE id = $1",
            &[id.into(), by.into(), note.into()],
            |_| Ok(()),
        )?;
        let history_id = prepared::run(
            "INSERT INTO kpi.alert_history (rule_id, rule, kpi, group_by, group_value, from_state,
                                            to_state, value, threshold, severity, labels, summary,
                                            started_at, actor, note)
             SELECT r.id, r.name, d.name, r.group_by, s.group_value, 'firing', 'acknowledged',
                    s.value, r.threshold, r.severity, r.labels,
                    (SELECT h.summary FROM kpi.alert_history h
                      WHERE h.rule_id = r.id AND h.group_value = s.group_value AND h.to_state = 'firing'
                      ORDER BY h.id DESC LIMIT 1),
                    s.firing_since, $2, $3
               FROM kpi.alert_state s
               JOIN kpi.alert_rules r ON r.id = s.rule_id
               JOIN kpi.definitions d ON d.id = r.kpi_id
              WHERE s.id = $1
             RETURNING id",
            &[id.into(), by.into(), note.into()],
            |mut rows| {
                rows.next()
                    .and_then(|r| r.get::<i64>(1).ok().flatten())
                    .ok_or_else(|| KpiError::internal("INSERT returned no id"))
            },
        )?;
        notify(history_id)?;
        Ok(history_id)
    })
}
