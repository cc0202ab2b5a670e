//! Who may do what, and running privileged steps as the extension's owner.
//!
//! The catalog and the delta buffer are not accessible to PUBLIC. Writers' triggers and
//! the SQL API switch to the extension owner only for the steps that touch them, after
//! checking the caller's own rights (table ownership to define a KPI, SELECT on the KPI
//! view to read it).

use crate::errors::{KpiError, KpiResult};
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    static OWNER: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
}

/// The role owning the extension's objects (looked up once per backend).
fn extension_owner() -> pg_sys::Oid {
    if let Some(o) = OWNER.with(|o| o.get()) {
        return o;
    }
    // A read-only select: `Spi::get_one` would run it read-write, which assigns the
    // caller's transaction an XID (see `deltas::buffer` for why reads must not have one).
    let owner = Spi::connect(|c| {
        c.select(
            "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_kpi'",
            Some(1),
            &[],
        )?
        .first()
        .get_one::<pg_sys::Oid>()
    })
    .ok()
    .flatten()
    .unwrap_or(pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID));
    OWNER.with(|o| o.set(Some(owner)));
    owner
}

/// Runs `f` with the extension owner's privileges, restoring the caller's afterwards
/// (Postgres restores them itself if `f` raises an error).
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = extension_owner();
    as_role(owner, f)
}

/// Runs `f` as `role` in a security-restricted operation (no SET ROLE, no temp objects
/// that outlive it) — used to evaluate a KPI owner's expressions on their behalf.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = f();
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

pub fn current_user() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// Only the owner of the source table (or a superuser) may define a KPI on it.
pub fn check_can_define(source: pg_sys::Oid, source_name: &str) -> KpiResult<()> {
    let user = current_user();
    let ok = unsafe { pg_sys::superuser() || pg_sys::pg_class_ownercheck(source, user) };
    if ok {
        Ok(())
    } else {
        Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {source_name} to define a KPI on it"),
            "Ask the table's owner or a superuser to create the KPI, then to GRANT SELECT on its view.",
        ))
    }
}

/// Reading a KPI through the API needs SELECT on its view, like reading the view itself.
pub fn check_can_read(view: pg_sys::Oid, kpi: &str) -> KpiResult<()> {
    let ok = unsafe {
        pg_sys::pg_class_aclcheck(view, current_user(), pg_sys::ACL_SELECT as pg_sys::AclMode)
            == pg_sys::AclResult::ACLCHECK_OK
    };
    if ok {
        Ok(())
    } else {
        Err(KpiError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for KPI {kpi}"),
            format!("GRANT SELECT ON kpi.{kpi} TO the role that reads it."),
        ))
    }
}
