//! The old definition's tables outlive the swap until no snapshot can read them.
//!
//! A reader whose snapshot was taken before the swap committed still sees the old
//! definition row, and reads the old id's state views and aggregate tables — which,
//! dropped at the swap (DDL is not MVCC), would fail it with "relation does not exist".
//! So the swap only retires them: deletes the old row, keeps the tables and views, and
//! marks each with the swap's transaction id in its comment. The fold, once a second,
//! drops the retired relations whose swap every running snapshot sees as committed
//! (every backend's xmin is newer than it): from then on no statement can look up the
//! old id again.

use crate::catalog::Kpi;
use crate::errors::KpiResult;
use crate::subxact::isolated;
use crate::workers::health;
use pgrx::prelude::*;

const MARK: &str = "pg_kpi: retired by a rebuild in transaction ";

/// Retires the old definition's state views and aggregate tables (and a current-state
/// KPI's samples table), in the swap's transaction.
pub fn retire(old: &Kpi) -> KpiResult<()> {
    let xid =
        Spi::get_one::<i64>("SELECT pg_catalog.txid_current() % 4294967296")?.unwrap_or_default();
    let mark = crate::catalog::quote_literal(&format!("{MARK}{xid}"));
    for t in 0..old.tiers.len() {
        Spi::run(&format!(
            "COMMENT ON VIEW {} IS {mark}; COMMENT ON TABLE {} IS {mark}",
            old.state_view_of(t),
            old.agg_table_of(t)
        ))?;
    }
    if crate::state::is_state(old) {
        Spi::run(&format!(
            "COMMENT ON TABLE {} IS {mark}",
            crate::state::samples::table(old)
        ))?;
    }
    Ok(())
}

/// Drops the retired relations no snapshot can read any more (views before the tables
/// they read). Called by the fold's once-a-second housekeeping; a relation that cannot
/// be dropped now (locked) is left for the next pass.
pub fn drop_retired() -> KpiResult<()> {
    let gone: Vec<(String, bool)> = crate::prepared::run(
        "SELECT c.oid::regclass::text, c.relkind = 'v'
           FROM pg_catalog.pg_class c
           JOIN pg_catalog.pg_description d
             ON d.objoid = c.oid AND d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
          WHERE c.relnamespace = 'kpi'::regnamespace AND starts_with(d.description, $1)
            AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_stat_activity a
                 WHERE a.backend_xmin IS NOT NULL
                   AND age(a.backend_xmin) >= age(substr(d.description, length($1) + 1)::xid))
          ORDER BY c.relkind = 'v' DESC",
        &[MARK.into()],
        |rows| {
            rows.map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<bool>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<KpiResult<Vec<_>>>()
        },
    )?;
    for (rel, view) in gone {
        let kind = if view { "VIEW" } else { "TABLE" };
        let sql = format!("LOCK TABLE {rel} IN ACCESS EXCLUSIVE MODE NOWAIT; DROP {kind} {rel}");
        if let Err(message) = isolated(|| Ok(Spi::run(&sql)?)) {
            health::record_error(&format!("dropping retired {rel}: {message}"));
        }
    }
    Ok(())
}
