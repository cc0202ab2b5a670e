//! A KPI's alert rules across a rebuild: they refer to the KPI by id and to its
//! measures by index, so they are re-analysed against the new definition and moved to
//! it. Their state and history stay (the history names the KPI, which keeps its name).

use crate::alerts::condition::{self, Kind};
use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult};
use pgrx::prelude::*;

/// Checks every rule of KPI `old_id` against `new` (with the KPI's real name); with
/// `apply`, points them at it.
pub fn rebind(old_id: i32, new: &Kpi, apply: bool) -> KpiResult<()> {
    let rules: Vec<(i32, String, String, Option<String>)> = Spi::connect_mut(|c| {
        c.update(
            "SELECT id, name, condition, group_by FROM kpi.alert_rules WHERE kpi_id = $1 ORDER BY id",
            None,
            &[old_id.into()],
        )?
        .map(|r| {
            Ok((
                r.get::<i32>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?,
            ))
        })
        .collect::<KpiResult<Vec<_>>>()
    })?;
    for (id, name, text, group_by) in rules {
        let broken = |why: String| {
            KpiError::new(
                PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("alert \"{name}\" on KPI \"{}\" would break: {why}", new.name),
                "Change the alert first (kpi.alter_alert) or drop it (kpi.drop_alert), or keep what it uses in the new definition.",
            )
        };
        if let Some(dim) = &group_by {
            new.dimension_index(dim)
                .map_err(|_| broken(format!("its group_by \"{dim}\" is no longer a dimension")))?;
        }
        let c = condition::analyze(new, &text).map_err(|e| broken(e.message))?;
        if apply {
            let value_sql = match &c.kind {
                Kind::Threshold { value_sql } => Some(value_sql.clone()),
                _ => None,
            };
            Spi::run_with_args(
                "UPDATE kpi.alert_rules SET kpi_id = $2, value_sql = $3, measures = $4 WHERE id = $1",
                &[
                    id.into(),
                    new.id.into(),
                    value_sql.into(),
                    c.measures.clone().into(),
                ],
            )?;
        }
    }
    Ok(())
}
