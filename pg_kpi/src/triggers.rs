//! The triggers pg_kpi puts on a source table: one row trigger that captures every KPI
//! of the table (so three KPIs cost one trigger call per row, not three), and one
//! TRUNCATE trigger per table and partition.

use crate::catalog::Kpi;
use crate::errors::KpiResult;
use pgrx::prelude::*;

/// The source and all its partitions, schema-qualified and quoted.
fn tree(source: pg_sys::Oid) -> KpiResult<Vec<(pg_sys::Oid, String)>> {
    Ok(Spi::connect(|c| {
        c.select(
            // pg_partition_tree() is empty for a plain table, hence the UNION.
            "SELECT c.oid, format('%I.%I', n.nspname, c.relname)
               FROM (SELECT $1::regclass AS relid
                     UNION SELECT relid FROM pg_catalog.pg_partition_tree($1)) t
               JOIN pg_catalog.pg_class c ON c.oid = t.relid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace",
            None,
            &[source.into()],
        )?
        .map(|r| {
            Ok((
                r.get(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get(2)?.unwrap_or_default(),
            ))
        })
        .collect::<Result<Vec<_>, pgrx::spi::SpiError>>()
    })?)
}

fn has_trigger(rel: pg_sys::Oid, name: &str) -> KpiResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2 AND NOT tgisinternal)",
        &[rel.into(), name.into()],
    )?
    .unwrap_or(false))
}

pub fn install(k: &Kpi) -> KpiResult<()> {
    if !has_trigger(k.source, "pg_kpi_capture")? {
        Spi::run(&format!(
            "CREATE TRIGGER pg_kpi_capture AFTER INSERT OR UPDATE OR DELETE ON {}
             FOR EACH ROW EXECUTE FUNCTION kpi._capture()",
            k.source_sql
        ))?;
    }
    for (rel, name) in tree(k.source)? {
        if !has_trigger(rel, "pg_kpi_truncate")? {
            Spi::run(&format!(
                "CREATE TRIGGER pg_kpi_truncate AFTER TRUNCATE ON {name}
                 FOR EACH STATEMENT EXECUTE FUNCTION kpi._truncate()"
            ))?;
        }
    }
    Ok(())
}

pub fn remove_if_unused(k: &Kpi) -> KpiResult<()> {
    let others = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM kpi.definitions WHERE source = $1::oid::regclass)",
        &[k.source.into()],
    )?
    .unwrap_or(false);
    if others {
        return Ok(());
    }
    Spi::run(&format!(
        "DROP TRIGGER IF EXISTS pg_kpi_capture ON {}",
        k.source_sql
    ))?;
    for (_, name) in tree(k.source)? {
        Spi::run(&format!("DROP TRIGGER IF EXISTS pg_kpi_truncate ON {name}"))?;
    }
    Ok(())
}

/// Makes every backend reload its compiled KPIs for the source and its partitions (at
/// commit of this transaction).
pub fn invalidate_caches(source: pg_sys::Oid) -> KpiResult<()> {
    for (rel, _) in tree(source)? {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(rel) };
    }
    Ok(())
}
