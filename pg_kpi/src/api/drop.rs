//! `kpi.drop`: removes a KPI's view, state, catalog row, and the source's triggers
//! when no other KPI watches it.

use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::privileges::{as_extension_owner, current_user};
use crate::triggers;
use pgrx::prelude::*;

#[pg_extern(schema = "kpi", name = "_drop", volatile, parallel_unsafe)]
fn drop_kpi(name: &str, if_exists: bool) -> bool {
    drop_by_name(name, if_exists).or_raise()
}

fn drop_by_name(name: &str, if_exists: bool) -> KpiResult<bool> {
    let kpi = match as_extension_owner(|| Kpi::by_name(name)) {
        Ok(k) => k,
        Err(_) if crate::derived::across::drop(name)? => return Ok(true),
        Err(_) if if_exists => return Ok(false),
        Err(e) => return Err(e),
    };
    crate::derived::across::check_not_read(name)?;
    let allowed = unsafe { pg_sys::superuser() }
        || kpi.owner == current_user()
        || unsafe { pg_sys::pg_class_ownercheck(kpi.source, current_user()) };
    if !allowed {
        return Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be the owner of KPI \"{name}\" or of its source table to drop it"),
            "Ask the KPI's owner or a superuser to drop it.",
        ));
    }
    as_extension_owner(|| -> KpiResult<()> {
        // What an interrupted rebuild left goes too.
        crate::api::rebuild::drop_leftover(name)?;
        Spi::run(&format!("DROP VIEW IF EXISTS {}", kpi.view()))?;
        crate::state::drop_objects(&kpi)?;
        for t in 0..kpi.tiers.len() {
            Spi::run(&format!("DROP VIEW IF EXISTS {}", kpi.state_view_of(t)))?;
            Spi::run(&format!("DROP TABLE IF EXISTS {}", kpi.agg_table_of(t)))?;
        }
        Spi::run_with_args(
            "DELETE FROM kpi.definitions WHERE id = $1",
            &[kpi.id.into()],
        )?;
        triggers::remove_if_unused(&kpi)?;
        crate::fold::notify_reload()
    })?;
    triggers::invalidate_caches(kpi.source)?;
    Ok(true)
}
