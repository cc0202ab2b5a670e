//! TRUNCATE of a source (or of one of its partitions): rebuild its KPIs from what is
//! left in the source.
//!
//! The source tree is locked against writers first, so no delta of another transaction
//! can be in flight; the KPI's pending deltas are then stripped and its aggregates
//! recomputed in one scan (instant when the whole table was truncated).

use crate::catalog::Kpi;
use crate::ddl;
use crate::deltas;
use crate::errors::{KpiError, KpiResult, OrRaise};
use crate::privileges::as_extension_owner;
use pgrx::prelude::*;

#[pg_extern(schema = "kpi", name = "_reset_source", volatile, parallel_unsafe)]
fn reset_source(rel: pg_sys::Oid) {
    as_extension_owner(|| reset(rel)).or_raise()
}

fn reset(rel: pg_sys::Oid) -> KpiResult<()> {
    let ids: Vec<i32> = Spi::connect(|c| {
        c.select(
            "SELECT id FROM kpi.definitions
              WHERE source::oid = $1
                 OR source::oid IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($1))",
            None,
            &[rel.into()],
        )?
        .map(|r| r.get::<i32>(1).map(|v| v.unwrap_or_default()))
        .collect::<Result<Vec<_>, _>>()
    })?;
    if ids.is_empty() {
        return Ok(());
    }
    // Deltas this transaction captured before the TRUNCATE describe rows that are gone.
    crate::capture::flush_pending();
    // Tables first, then the fold lock: the order the fold uses, so no deadlock.
    let kpis = Kpi::by_ids(&ids)?;
    for kpi in &kpis {
        Spi::run(&format!(
            "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
            kpi.source_sql
        ))?;
    }
    crate::fold::lock_folds()?;
    let mut bumped = Vec::new();
    for kpi in kpis {
        Spi::run_with_args(
            "UPDATE kpi.deltas SET batch = kpi._deltas_without(batch, $1)
              WHERE kpi._deltas_mention(batch, $1)",
            &[kpi.id.into()],
        )?;
        for t in 0..kpi.tiers.len() {
            Spi::run(&format!("DELETE FROM {}", kpi.agg_table_of(t)))?;
            Spi::run(&ddl::backfill(&kpi, t))?;
        }
        bumped.push(kpi.id);
    }
    let versions = crate::fold::bump_versions(&bumped)?;
    crate::fold::notify_versions(&versions)
}

/// Whether a delta batch holds entries of KPI `kpi`.
#[pg_extern(
    schema = "kpi",
    name = "_deltas_mention",
    immutable,
    strict,
    parallel_safe
)]
fn deltas_mention(batch: &[u8], kpi: i32) -> bool {
    decode(batch).iter().any(|(g, _)| g.kpi == kpi)
}

/// A delta batch without the entries of KPI `kpi`.
#[pg_extern(
    schema = "kpi",
    name = "_deltas_without",
    immutable,
    strict,
    parallel_safe
)]
fn deltas_without(batch: &[u8], kpi: i32) -> Vec<u8> {
    let mut entries = decode(batch);
    entries.retain(|(g, _)| g.kpi != kpi);
    deltas::encode(&entries)
}

fn decode(batch: &[u8]) -> Vec<(deltas::Group, deltas::Entry)> {
    deltas::decode(batch).map_err(KpiError::internal).or_raise()
}
