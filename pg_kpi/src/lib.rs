//! pg_kpi: real-time, exact, time-bucketed KPIs maintained by row triggers.
//!
//! Module map (see docs/architecture.md for the data flow):
//! - [`api`]: the SQL functions (`kpi.create`, `drop`, `fold`, `value`, `series`, `top`,
//!   `snapshot`); public names and defaults live in `src/sql/api.sql`.
//! - [`catalog`]: a KPI's stored definition and the SQL fragments derived from it.
//! - [`measures`]: measure kinds, their mergeable state and its SQL; [`formula`]: the
//!   formulas of derived measures.
//! - [`expr`]: user expressions, parsed and analysed by Postgres, compiled for the executor.
//! - [`ddl`]: the per-KPI aggregate table, state view and user view.
//! - [`triggers`]: the triggers on source tables.
//! - [`capture`]: the row trigger and transaction hooks that buffer deltas.
//! - [`deltas`]: the delta batches writers append and the fold reads.
//! - [`alerts`]: alert rules, their conditions and state, evaluated by the fold.
//! - [`fold`]: merging deltas into aggregates, versions, NOTIFY; [`prepared`]: the
//!   plans it keeps.
//! - [`workers`]: the launcher and the fold workers it keeps running, how commits wake
//!   them, and their health (`kpi.status()`); [`quarantine`] and [`subxact`]: how one
//!   KPI whose merge fails is held back without stopping the others.
//! - [`slide`]: bucketed KPIs whose windows moved over rows as time passed count as
//!   changed.
//! - [`privileges`], [`gucs`], [`errors`], [`names`]: cross-cutting rules.

use pgrx::prelude::*;

mod alerts;
mod api;
mod capture;
mod catalog;
mod ddl;
mod deltas;
mod derived;
mod errors;
mod expr;
mod fold;
mod formula;
mod gucs;
mod measures;
mod names;
mod prepared;
mod privileges;
mod quarantine;
mod slide;
mod snapshot;
mod state;
mod subxact;
mod triggers;
mod workers;

pgrx::pg_module_magic!();

/// The `kpi` schema. `src/sql/bootstrap.sql` creates it first (so it belongs to the
/// extension); declaring it here lets `#[pg_extern(schema = "kpi")]` name it.
#[pg_schema]
mod kpi {}

extension_sql_file!("sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("sql/alerts.sql", name = "alerts", requires = ["bootstrap"]);
extension_sql_file!(
    "sql/rebuild.sql",
    name = "rebuild",
    requires = ["bootstrap"]
);
extension_sql_file!("sql/state.sql", name = "state", requires = ["bootstrap"]);
extension_sql_file!(
    "sql/state_api.sql",
    name = "state_api",
    requires = [
        "state",
        api::state::create_state,
        api::state::create_overdue
    ]
);
extension_sql_file!(
    "sql/derived.sql",
    name = "derived_catalog",
    requires = ["bootstrap"]
);
extension_sql_file!(
    "sql/derived_api.sql",
    name = "derived_api",
    requires = [
        "derived_catalog",
        derived::across::create_derived,
        derived::funnel::funnel
    ]
);
extension_sql_file!("sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::init(preloading);
    if preloading {
        workers::init_at_preload();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
