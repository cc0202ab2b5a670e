//! The privileges on a KPI's view, kept across a rebuild. The view is dropped and
//! created again (its columns may change, which `CREATE OR REPLACE VIEW` refuses), so its
//! grants are read first and granted again on the new view, each by the role that had
//! granted it, so the grant-option chain (owner → dashboard role → …) is the same.

use crate::errors::KpiResult;
use crate::privileges::as_role;
use pgrx::prelude::*;

/// One grant: (grantor, grantee (0 = PUBLIC), privilege, with grant option).
pub type Acl = Vec<(pg_sys::Oid, pg_sys::Oid, String, bool)>;

/// The grants on view `view` (other than its owner's own).
pub fn of(view: &str) -> KpiResult<Acl> {
    Spi::connect_mut(|c| {
        c.update(
            "SELECT a.grantor, a.grantee, a.privilege_type, a.is_grantable
               FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = $1::regclass AND a.grantee <> c.relowner",
            None,
            &[view.into()],
        )?
        .map(|r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<bool>(4)?.unwrap_or(false),
            ))
        })
        .collect()
    })
}

/// Grants `acl` on `view`, each as its grantor, in an order where every grantor holds
/// the grant option it needs (the view's owner first).
pub fn replay(view: &str, acl: &Acl) -> KpiResult<()> {
    let owner = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1::regclass",
        &[view.into()],
    )?
    .unwrap_or(pg_sys::InvalidOid);
    let mut can_grant: Vec<(pg_sys::Oid, String)> = Vec::new();
    let mut left: Vec<_> = acl.iter().collect();
    while !left.is_empty() {
        let before = left.len();
        let mut rest = Vec::new();
        for g in left {
            let (grantor, grantee, privilege, grantable) = g;
            if *grantor != owner && !can_grant.contains(&(*grantor, privilege.clone())) {
                rest.push(g);
                continue;
            }
            let to = if *grantee == pg_sys::InvalidOid {
                "PUBLIC".to_string()
            } else {
                Spi::get_one_with_args::<String>(
                    "SELECT quote_ident(rolname) FROM pg_catalog.pg_roles WHERE oid = $1",
                    &[(*grantee).into()],
                )?
                .unwrap_or_default()
            };
            let sql = format!(
                "GRANT {privilege} ON {view} TO {to}{}",
                if *grantable { " WITH GRANT OPTION" } else { "" }
            );
            as_role(*grantor, || Spi::run(&sql))?;
            if *grantable {
                can_grant.push((*grantee, privilege.clone()));
            }
        }
        if rest.len() == before {
            // Grants whose grantor lost its option meanwhile: nothing more can be granted.
            break;
        }
        left = rest;
    }
    Ok(())
}
