//! Per-backend cache of the KPIs watching each relation, compiled for the executor.
//!
//! Keyed by the relation the trigger fires on (a partition, for partitioned sources),
//! because a partition's column numbers may differ from its parent's. Invalidated by
//! relcache invalidations: `kpi.create`/`kpi.drop` invalidate the source (and its
//! partitions), and any DDL on them does too.

use super::projection::{Projection, Value};
use crate::deltas::State;
use crate::errors::{KpiError, KpiResult};
use crate::expr::Want;
use crate::measures::{Kind, Measure};
use crate::privileges::as_extension_owner;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// A KPI's expressions as positions in its table's projection.
pub struct CompiledKpi {
    pub id: i32,
    pub time: Value,
    pub bucket_us: i64,
    pub dims: Vec<Value>,
    pub filter: Option<Value>,
    pub measures: Vec<(Kind, Option<Value>)>,
    /// A zeroed state per measure, the starting point of a new accumulator entry.
    pub template: Vec<State>,
}

pub struct TableKpis {
    // Declared before `projection`: the compiled expressions live in its memory.
    pub kpis: Vec<CompiledKpi>,
    pub projection: Projection,
}

thread_local! {
    static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<TableKpis>>> = RefCell::new(HashMap::new());
    /// Relations whose invalidation must flush the cache (cached relations and their ancestors).
    static WATCHED: RefCell<HashSet<pg_sys::Oid>> = RefCell::new(HashSet::new());
    static STALE: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Relcache invalidation callback: only flags staleness (it may run in the middle of
/// our own code, while the cache is in use, so it must not free anything).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_inval(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let hit = relid == pg_sys::InvalidOid
        || WATCHED.with(|w| w.try_borrow().map(|w| w.contains(&relid)).unwrap_or(true));
    if hit {
        STALE.with(|s| s.set(true));
    }
}

/// The KPIs watching `relid`, compiled; loads and caches them on first use.
pub fn for_relation(relid: pg_sys::Oid) -> KpiResult<Rc<TableKpis>> {
    if !CALLBACK_REGISTERED.with(|c| c.replace(true)) {
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_inval), pg_sys::Datum::from(0))
        };
    }
    if STALE.with(|s| s.replace(false)) {
        CACHE.with(|c| c.borrow_mut().clear());
        WATCHED.with(|w| w.borrow_mut().clear());
    }
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&relid).cloned()) {
        return Ok(hit);
    }
    let (table, watched) = load(relid)?;
    let table = Rc::new(table);
    CACHE.with(|c| c.borrow_mut().insert(relid, table.clone()));
    WATCHED.with(|w| w.borrow_mut().extend(watched));
    Ok(table)
}

struct Row {
    id: i32,
    time_column: String,
    bucket_us: i64,
    dimensions: Vec<String>,
    filter: Option<String>,
    measures: String,
}

fn load(relid: pg_sys::Oid) -> KpiResult<(TableKpis, Vec<pg_sys::Oid>)> {
    let (rows, ancestors) = as_extension_owner(|| -> KpiResult<_> {
        Spi::connect(|client| {
            let ancestors: Vec<pg_sys::Oid> = client
                .select(
                    "SELECT relid::oid FROM pg_catalog.pg_partition_ancestors($1)",
                    None,
                    &[relid.into()],
                )?
                .map(|r| r.get::<pg_sys::Oid>(1).ok().flatten())
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default();
            let mut rows = Vec::new();
            // The row's time: its column, or a current-state or overdue KPI's
            // expression (`crate::state`); a 0.1.0 catalog has only columns.
            let kinds = if crate::catalog::catalog_0_2() {
                "coalesce(dk.time_expr, quote_ident(d.time_column))
                   FROM kpi.definitions d LEFT JOIN kpi.definition_kinds dk ON dk.kpi = d.id"
            } else {
                "quote_ident(d.time_column) FROM kpi.definitions d"
            };
            let sql = format!(
                "SELECT d.id, (extract(epoch FROM d.bucket) * 1000000)::bigint,
                        d.dimensions, d.filter, d.measures::text, {kinds}
                  WHERE d.source::oid = ANY($1) OR d.source::oid = $2
                  ORDER BY d.id"
            );
            let table = client.select(&sql, None, &[ancestors.clone().into(), relid.into()])?;
            for r in table {
                rows.push(Row {
                    id: r.get(1)?.unwrap_or_default(),
                    bucket_us: r.get(2)?.unwrap_or(1),
                    dimensions: r.get(3)?.unwrap_or_default(),
                    filter: r.get(4)?,
                    measures: r.get(5)?.unwrap_or_default(),
                    time_column: r.get(6)?.unwrap_or_default(),
                });
            }
            Ok((rows, ancestors))
        })
    })?;
    let mut projection = Projection::new();
    let mut kpis = Vec::with_capacity(rows.len());
    for row in rows {
        let measures: Vec<Measure> = serde_json::from_str(&row.measures)
            .map_err(|e| KpiError::internal(format!("corrupt measures of KPI {}: {e}", row.id)))?;
        let time = projection.add(relid, &row.time_column, Want::Time, "time column", None)?;
        let dims = row
            .dimensions
            .iter()
            .map(|d| projection.add(relid, &quote_identifier(d), Want::Any, "dimension", None))
            .collect::<KpiResult<Vec<_>>>()?;
        let filter = row
            .filter
            .as_deref()
            .map(|f| projection.add(relid, f, Want::Boolean, "filter", None))
            .transpose()?;
        let mut compiled = Vec::new();
        let mut template = Vec::new();
        for m in &measures {
            // A percentile sharing another's sketch evaluates nothing itself.
            let expr = match m.shares {
                Some(_) => None,
                None => m
                    .expr
                    .as_deref()
                    .map(|e| projection.add(relid, e, m.kind.want(), "measure", filter.as_ref()))
                    .transpose()?,
            };
            template.push(match m.kind {
                Kind::CountStar => State::Rows,
                Kind::Count => State::Count(0),
                Kind::Sum | Kind::Avg => State::Sum {
                    sum: Default::default(),
                    nn: 0,
                },
                Kind::Min | Kind::Max => State::Extreme {
                    val: None,
                    dirty: false,
                    is_min: m.kind == Kind::Min,
                },
                Kind::CountDistinct => State::Distinct {
                    hll: Default::default(),
                    dirty: false,
                },
                // Nothing to accumulate: a shared sketch, or a formula read later.
                Kind::Percentile if m.shares.is_some() => State::Shared,
                Kind::Derived => State::Shared,
                Kind::Percentile => State::Quantiles(Default::default()),
            });
            compiled.push((m.kind, expr));
        }
        kpis.push(CompiledKpi {
            id: row.id,
            time,
            bucket_us: row.bucket_us.max(1),
            dims,
            filter,
            measures: compiled,
            template,
        });
    }
    projection.finish();
    let mut watched = ancestors;
    watched.push(relid);
    Ok((TableKpis { kpis, projection }, watched))
}
