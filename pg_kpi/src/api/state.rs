//! `kpi.create_state` and `kpi.create_overdue` (docs/current-state.md): validate what is
//! particular to them, then create the KPI through `kpi.create`'s own path, in the
//! caller's transaction, so a failure leaves nothing behind.

use crate::api::create::{create_kpi, interval_us};
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::expr::{analyze, relation_name, Want};
use crate::state::{Kind, Special, STATE_TIME};
use pgrx::datum::Interval;
use pgrx::prelude::*;

const USECS_PER_DAY: i64 = 86_400_000_000;

#[allow(clippy::too_many_arguments)]
#[pg_extern(schema = "kpi", name = "_create_state", volatile, parallel_unsafe)]
pub(crate) fn create_state(
    name: &str,
    source: pg_sys::Oid,
    measures: &str,
    dimensions: Vec<String>,
    filter: Option<&str>,
    resolution: Interval,
    history: Option<Interval>,
    backfill: bool,
) -> i32 {
    (|| -> KpiResult<i32> {
        let (months, res_us) = interval_us(&resolution);
        if months != 0 || res_us <= 0 {
            return Err(KpiError::invalid(
                format!("invalid resolution {resolution}"),
                "The resolution (how often the KPI's history is sampled at most) must be a positive fixed-width interval such as '10 seconds' or '1 minute'.",
            ));
        }
        if let Some(h) = &history {
            let (m, us) = interval_us(h);
            if i64::from(m) * 30 * USECS_PER_DAY + us < res_us {
                return Err(KpiError::invalid(
                    format!("history {h} is shorter than the resolution {resolution}"),
                    "Keep at least one sample (e.g. history => '7 days'), or pass history => NULL to keep every sample.",
                ));
            }
        }
        let special = Special {
            kind: Kind::State,
            time_expr: STATE_TIME.to_string(),
            resolution_us: res_us,
            history: history.map(|h| h.to_string()),
        };
        // The one bucket's width is the resolution: what `kpi.snapshot` reports.
        create_kpi(
            name,
            source,
            STATE_TIME,
            measures,
            dimensions,
            filter,
            resolution,
            None,
            backfill,
            Vec::new(),
            false,
            Some(&special),
        )
    })()
    .or_raise()
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(schema = "kpi", name = "_create_overdue", volatile, parallel_unsafe)]
pub(crate) fn create_overdue(
    name: &str,
    source: pg_sys::Oid,
    due: &str,
    open_filter: Option<&str>,
    dimensions: Vec<String>,
    measures: &str,
    backfill: bool,
) -> i32 {
    (|| -> KpiResult<i32> {
        let due_sql = check_due(source, due)?;
        let open = match open_filter.map(str::trim).filter(|f| !f.is_empty()) {
            Some(f) => Some(analyze(source, f, Want::Boolean, "open_filter")?.sql),
            None => None,
        };
        let special = Special {
            kind: Kind::Overdue,
            time_expr: due_sql.clone(),
            resolution_us: 1,
            history: None,
        };
        // A one-microsecond bucket: the bucket is the due instant itself (timestamps
        // have microsecond precision), so `bucket < T` is exactly `due < T`.
        let bucket = Interval::new(0, 0, 1).map_err(|e| KpiError::internal(e.to_string()))?;
        create_kpi(
            name,
            source,
            &due_sql,
            measures,
            dimensions,
            open.as_deref(),
            bucket,
            None,
            backfill,
            Vec::new(),
            false,
            Some(&special),
        )
    })()
    .or_raise()
}

/// The deadline expression, analysed: a time, computed from the row.
fn check_due(source: pg_sys::Oid, due: &str) -> KpiResult<String> {
    let table = relation_name(source);
    let a = match analyze(source, due, Want::Time, "due expression") {
        Ok(a) => a,
        Err(e) if !has_time_column(source)? => {
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("\"{table}\" has no timestamptz, timestamp or date column to compute deadlines from ({})", e.message),
                "An overdue KPI counts the rows whose deadline has passed: the deadline is computed from a time column of the row, such as created_at + interval '2 hours' or a due_at column. Add one to the table.",
            ))
        }
        Err(e) if e.code == PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH => {
            return Err(KpiError::new(
                e.code,
                e.message,
                "The deadline must be a timestamptz, timestamp or date computed from the row, such as created_at + interval '2 hours' or a due_at column.",
            ))
        }
        Err(e) => return Err(e),
    };
    if !unsafe { pg_sys::contain_var_clause(a.node) } {
        return Err(KpiError::invalid(
            format!("due expression \"{due}\" does not read the row"),
            "A deadline is computed from each row, such as created_at + interval '2 hours' or a due_at column; a constant or now() would make every row due at once.",
        ));
    }
    Ok(a.sql)
}

fn has_time_column(source: pg_sys::Oid) -> KpiResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
                           AND atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype))",
        &[source.into()],
    )?
    .unwrap_or(false))
}
