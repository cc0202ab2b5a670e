//! `kpi.rebuild(name)` and `kpi.alter(name, …)`: recompute a KPI from its source beside
//! the old one while writers keep writing, then swap it in. See docs/rebuild.md for the
//! argument that no delta is lost or counted twice.
//!
//! Three steps, each its own transaction, committed in between by the plpgsql
//! procedures in `src/sql/rebuild.sql`:
//! 1. [`begin`]: validate the new definition and create it under a hidden name (its own
//!    id, aggregate tables and share of the capture trigger), empty. Writers are blocked
//!    only while this short transaction waits for the ones in flight (`kpi.create`'s
//!    lock); from its commit on, every write captures deltas for it too, and folds merge
//!    them like any KPI's.
//! 2. [`build`]: in one snapshot, add the source's content minus what the new tables and
//!    pending deltas already hold (relative upserts), chunk by chunk with progress.
//! 3. [`swap`]: under the fold lock, drop the old KPI, give the new one its name, view,
//!    grants, alert rules and the next version, and tell listeners to reload.

mod alerts;
mod build;
mod definition;
mod grants;
mod retire;
mod samples;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::privileges::{as_extension_owner, current_user};
use pgrx::datum::Interval;
use pgrx::prelude::*;

pub use retire::drop_retired;

/// Advisory lock class of a running rebuild (`pg_advisory_xact_lock(REBUILD_LOCK, id)`
/// with the building definition's id): each step holds it, so another rebuild of the
/// same KPI can tell a running build from one that was interrupted.
const REBUILD_LOCK: i32 = 0x6b70_6972; // "kpir"

/// The hidden name of KPI `name`'s definition while it is rebuilt. `#` cannot appear in
/// a KPI's name, so it never collides with one, and no read function finds it.
pub fn hidden_name(name: &str) -> String {
    format!("{name}#rebuild")
}

/// Whether a definition's name is a rebuild's hidden one (not a KPI users can see).
pub fn is_hidden(name: &str) -> bool {
    name.contains('#')
}

fn not_in_transaction_block(what: &str) -> KpiResult<()> {
    if unsafe { pg_sys::IsTransactionBlock() } {
        return Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            format!("{what} cannot run inside a transaction block"),
            format!(
                "Run CALL {what}(…) on its own, outside BEGIN … COMMIT: it commits between its steps so that writers are never blocked for longer than a moment."
            ),
        ));
    }
    // Called from a function (SELECT f(), a trigger…) CALL runs atomically and could
    // not commit between the steps: say so before anything is created.
    if !unsafe { pg_sys::SPI_inside_nonatomic_context() } {
        return Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_TERMINATION,
            format!("{what} must be CALLed at top level"),
            format!(
                "Run CALL {what}(…) as a statement of its own (or from a DO block or procedure called at top level), not from a function: it commits between its steps."
            ),
        ));
    }
    Ok(())
}

/// The in-progress rebuild of KPI `name`, if any: (building id, pid that started it).
fn rebuild_of(name: &str) -> KpiResult<Option<(i32, i32)>> {
    Spi::connect_mut(|c| {
        let mut rows = c.update(
            "SELECT building_id, pid FROM kpi.rebuilds WHERE kpi = $1",
            None,
            &[name.into()],
        )?;
        match rows.next() {
            Some(r) => Ok::<_, KpiError>(Some((
                r.get::<i32>(1)?.unwrap_or_default(),
                r.get::<i32>(2)?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    })
}

fn try_lock_rebuild(id: i32) -> KpiResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, $2)",
        &[REBUILD_LOCK.into(), id.into()],
    )?
    .unwrap_or(false))
}

fn lock_rebuild(id: i32) -> KpiResult<()> {
    Spi::run_with_args(
        "SELECT pg_catalog.pg_advisory_xact_lock($1, $2)",
        &[REBUILD_LOCK.into(), id.into()],
    )?;
    Ok(())
}

/// Drops a KPI's view, state views, aggregate tables and catalog row (not the
/// triggers: the caller decides). Runs as the extension owner, under the fold lock.
fn drop_objects(kpi: &Kpi) -> KpiResult<()> {
    // The view first: it reads the state views.
    drop_definition(kpi)?;
    for t in 0..kpi.tiers.len() {
        Spi::run(&format!("DROP VIEW IF EXISTS {}", kpi.state_view_of(t)))?;
        Spi::run(&format!("DROP TABLE IF EXISTS {}", kpi.agg_table_of(t)))?;
    }
    Ok(())
}

/// Drops a KPI's view and catalog row, leaving its tables (dropped, or retired by a
/// swap).
fn drop_definition(kpi: &Kpi) -> KpiResult<()> {
    Spi::run(&format!("DROP VIEW IF EXISTS {}", kpi.view()))?;
    Spi::run_with_args(
        "DELETE FROM kpi.definitions WHERE id = $1",
        &[kpi.id.into()],
    )?;
    Ok(())
}

/// Removes what an interrupted rebuild of KPI `name` left (its hidden definition and
/// tables). Errors if that rebuild is still running. Runs as the extension owner; takes
/// the source's lock, then the fold lock (the order every fold uses). Returns whether
/// anything was removed.
pub fn drop_leftover(name: &str) -> KpiResult<bool> {
    // A 0.1.0 catalog (before ALTER EXTENSION UPDATE) has no rebuilds.
    if !crate::catalog::catalog_0_2() {
        return Ok(false);
    }
    let Some((id, pid)) = rebuild_of(name)? else {
        return Ok(false);
    };
    if !try_lock_rebuild(id)? {
        return Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("KPI \"{name}\" is being rebuilt (by process {pid})"),
            format!("Wait for that kpi.rebuild/kpi.alter to finish, or stop it with SELECT pg_cancel_backend({pid}); what it leaves is removed by the next rebuild."),
        ));
    }
    let left = Kpi::by_ids(&[id])?.pop();
    if let Some(k) = &left {
        Spi::run(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            k.source_sql
        ))?;
    }
    crate::fold::lock_folds()?;
    if let Some(k) = &left {
        drop_objects(k)?;
        crate::triggers::invalidate_caches(k.source)?;
    }
    Spi::run_with_args(
        "DELETE FROM kpi.rebuilds WHERE building_id = $1",
        &[id.into()],
    )?;
    Ok(true)
}

fn check_can_rebuild(kpi: &Kpi) -> KpiResult<()> {
    let allowed = unsafe { pg_sys::superuser() }
        || unsafe { pg_sys::has_privs_of_role(current_user(), kpi.owner) }
        || unsafe { pg_sys::pg_class_ownercheck(kpi.source, current_user()) };
    if allowed {
        Ok(())
    } else {
        Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "must be the owner of KPI \"{}\" or of its source table to rebuild or alter it",
                kpi.name
            ),
            "Ask the KPI's owner or a superuser to run it.",
        ))
    }
}

/// A current-state or overdue KPI is rebuilt as what it is (its kind, row time and
/// sampling carried over by `create_kpi`), and altered in what it shares with a
/// bucketed KPI: measures, dimensions, filter. Its time is not a column and its bucket
/// is not a choice (one bucket; one microsecond per deadline), so changing those, or
/// adding a retention or rollups, is refused.
fn check_special_changes(kpi: &Kpi, c: &definition::Changes<'_>, what: &str) -> KpiResult<()> {
    let Some(special) = &kpi.special else {
        return Ok(());
    };
    let (kind, create) = match special.kind {
        crate::state::Kind::State => ("a current-state", "kpi.create_state"),
        crate::state::Kind::Overdue => ("an overdue", "kpi.create_overdue"),
    };
    let changed = [
        ("time_column", c.time_column.is_some()),
        ("bucket", c.bucket.is_some()),
        ("retention", c.retention.is_some()),
        ("rollups", c.rollups.is_some()),
    ];
    match changed.iter().find(|(_, given)| *given) {
        None => Ok(()),
        Some((arg, _)) => Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{what} cannot change the {arg} of {kind} KPI (\"{}\")", kpi.name),
            format!("Its measures, dimensions and filter can be altered. For a new deadline or sampling, drop the KPI and create it again with {create}."),
        )),
    }
}

/// Step 1: validates the new definition (the old one where an argument is NULL) and
/// creates it, hidden and empty; returns its id.
#[allow(clippy::too_many_arguments)]
#[pg_extern(schema = "kpi", name = "_rebuild_begin", volatile, parallel_unsafe)]
fn rebuild_begin(
    name: &str,
    what: &str,
    time_column: Option<&str>,
    measures: Option<&str>,
    dimensions: Option<Vec<String>>,
    filter: Option<&str>,
    bucket: Option<Interval>,
    retention: Option<Interval>,
    rollups: Option<pgrx::JsonB>,
) -> i32 {
    begin(
        name,
        what,
        definition::Changes {
            time_column,
            measures,
            dimensions,
            filter,
            bucket,
            retention,
            rollups: rollups.map(|j| j.0),
        },
    )
    .or_raise()
}

fn begin(name: &str, what: &str, changes: definition::Changes<'_>) -> KpiResult<i32> {
    not_in_transaction_block(what)?;
    let old = as_extension_owner(|| Kpi::by_name(name))?;
    check_can_rebuild(&old)?;
    check_special_changes(&old, &changes, what)?;
    // The source first, then (in drop_leftover) the fold lock: the order folds use.
    Spi::run(&format!(
        "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        old.source_sql
    ))?;
    as_extension_owner(|| drop_leftover(name))?;
    let new = definition::resolve(&old, changes)?;
    // Validates everything (as the caller, whose rights the expressions are analysed
    // with) before creating anything; an error rolls this transaction back whole.
    let id = super::create::create_kpi(
        &hidden_name(name),
        old.source,
        &new.time_column,
        &new.measures,
        new.dimensions,
        new.filter.as_deref(),
        new.bucket,
        new.retention,
        false,
        new.rollups,
        true,
        old.special.as_ref(),
    )?;
    as_extension_owner(|| -> KpiResult<()> {
        let built = Kpi::by_ids(&[id])?
            .pop()
            .ok_or_else(|| KpiError::internal("the rebuild's definition is not visible"))?;
        // Alert rules must still make sense on the new definition.
        alerts::rebind(
            old.id,
            &Kpi {
                name: name.to_string(),
                ..built
            },
            false,
        )?;
        Spi::run_with_args(
            "INSERT INTO kpi.rebuilds (kpi, kpi_id, building_id) VALUES ($1, $2, $3)",
            &[name.into(), old.id.into(), id.into()],
        )?;
        lock_rebuild(id)
    })?;
    Ok(id)
}

/// Step 2: fills the hidden definition's aggregates from the source (see `build`).
#[pg_extern(schema = "kpi", name = "_rebuild_build", volatile, parallel_unsafe)]
fn rebuild_build(id: i32) -> i64 {
    as_extension_owner(|| -> KpiResult<i64> {
        lock_rebuild(id)?;
        let kpi = building(id)?;
        build::build(&kpi)
    })
    .or_raise()
}

/// The hidden definition `id` of a rebuild still registered, and begun by this session
/// (whose rights `begin` checked).
fn building(id: i32) -> KpiResult<Kpi> {
    let registered = Spi::get_one_with_args::<String>(
        "SELECT kpi FROM kpi.rebuilds WHERE building_id = $1 AND pid = pg_catalog.pg_backend_pid()",
        &[id.into()],
    )?;
    let gone = || {
        KpiError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "this rebuild was removed while it ran",
            "Another kpi.rebuild, kpi.alter or kpi.drop of the KPI removed it; run the rebuild again if it is still needed.",
        )
    };
    registered.ok_or_else(gone)?;
    Kpi::by_ids(&[id])?.pop().ok_or_else(gone)
}

/// Step 3: puts the rebuilt definition in the old one's place.
#[pg_extern(schema = "kpi", name = "_rebuild_swap", volatile, parallel_unsafe)]
fn rebuild_swap(id: i32) {
    as_extension_owner(|| swap(id)).or_raise()
}

fn swap(id: i32) -> KpiResult<()> {
    lock_rebuild(id)?;
    let (name, old_id) = Spi::connect_mut(|c| {
        let mut rows = c.update(
            "SELECT kpi, kpi_id FROM kpi.rebuilds WHERE building_id = $1 AND pid = pg_catalog.pg_backend_pid()",
            None,
            &[id.into()],
        )?;
        match rows.next() {
            Some(r) => Ok::<_, KpiError>(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i32>(2)?.unwrap_or_default(),
            ))),
            None => Ok(None),
        }
    })?
    .ok_or_else(|| KpiError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "this rebuild was removed while it ran, or was not begun by this session",
        "Run CALL kpi.rebuild(name) again if it is still needed.",
    ))?;
    wait_for_view_readers(&name)?;
    // Sources, then the fold lock (the fold's order), held to the end: no fold merges
    // into tables being retired. Folding first leaves little for the views to decode.
    crate::fold::fold()?;
    let mut found = Kpi::by_ids(&[old_id, id])?;
    let new = found
        .pop()
        .filter(|k| k.id == id)
        .ok_or_else(|| KpiError::internal("the rebuild's definition is gone"))?;
    let old = found.pop().ok_or_else(|| KpiError::undefined_kpi(&name))?;
    let new = Kpi {
        name: name.clone(),
        ..new
    };
    alerts::rebind(old.id, &new, true)?;
    let acl = grants::of(&old.view())?;
    let created_at = old_created_at(old.id)?;
    // The hidden view goes; the new one takes the old one's name.
    Spi::run(&format!(
        "DROP VIEW IF EXISTS kpi.{}",
        pgrx::spi::quote_identifier(hidden_name(&name))
    ))?;
    // Readers whose snapshot predates this swap keep reading the old id's tables, so
    // they are retired rather than dropped (`retire`); the old name's view goes.
    retire::retire(&old)?;
    drop_definition(&old)?;
    if crate::state::is_state(&old) {
        samples::carry(&old, &new)?;
    }
    Spi::run_with_args(
        "UPDATE kpi.definitions SET name = $2, version = $3, owner = $4::oid::regrole, created_at = $5
          WHERE id = $1",
        &[
            id.into(),
            name.as_str().into(),
            (old.version + 1).into(),
            old.owner.into(),
            created_at.into(),
        ],
    )?;
    Spi::run(&crate::ddl::create_view(&new))?;
    Spi::run(&format!("REVOKE ALL ON {} FROM PUBLIC", new.view()))?;
    grants::replay(&new.view(), &acl)?;
    Spi::run_with_args(
        "DELETE FROM kpi.rebuilds WHERE building_id = $1",
        &[id.into()],
    )?;
    crate::triggers::invalidate_caches(new.source)?;
    // The definition changed (measures, dimensions…): listeners reload everything.
    crate::fold::notify_reload()
}

/// The view kpi.<name> is replaced, which waits for transactions that read it: wait for
/// them before taking the fold lock, so that folds (and writers' freshness) do not wait
/// behind such a reader. Polled rather than locked: `LOCK TABLE` on a view also locks
/// the tables it reads, in the same mode, which would invert the fold's lock order
/// (fold lock, then aggregate tables) and deadlock with a fold or a TRUNCATE.
fn wait_for_view_readers(name: &str) -> KpiResult<()> {
    let view = format!("kpi.{}", pgrx::spi::quote_identifier(name));
    loop {
        let busy = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks
                             WHERE locktype = 'relation' AND granted
                               AND relation = pg_catalog.to_regclass($1)
                               AND pid <> pg_catalog.pg_backend_pid())",
            &[view.as_str().into()],
        )?;
        if busy != Some(true) {
            return Ok(());
        }
        // pg_sleep answers cancels and statement_timeout while it waits.
        Spi::run("SELECT pg_catalog.pg_sleep(0.01)")?;
    }
}

fn old_created_at(id: i32) -> KpiResult<Option<pgrx::datum::TimestampWithTimeZone>> {
    Ok(Spi::get_one_with_args(
        "SELECT created_at FROM kpi.definitions WHERE id = $1",
        &[id.into()],
    )?)
}

/// `kpi._dd_negate(state)`: a DDSketch state with every count negated.
#[pg_extern(schema = "kpi", name = "_dd_negate", immutable, strict, parallel_safe)]
fn dd_negate(state: &[u8]) -> Vec<u8> {
    pg_kpi_sketches::DdSketch::from_bytes(state)
        .map(|s| s.negated().to_bytes())
        .map_err(|e| {
            KpiError::new(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("invalid sketch: {e}"),
                "Sketch states are written by pg_kpi only; rebuild the KPI.",
            )
        })
        .or_raise()
}
