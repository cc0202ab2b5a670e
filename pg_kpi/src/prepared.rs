//! Statements the fold runs on every pass, prepared once per backend and kept.
//!
//! A busy fold worker runs a dozen statements twenty times a second; parsing and
//! planning them each time cost about as much as executing them. Plans are kept by
//! SQL text (the text of a KPI's statements names its own tables, so a dropped KPI's
//! plans are simply never used again) and Postgres's plan cache replans them after DDL.

use crate::errors::KpiResult;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// More distinct statements than this means KPIs come and go: start over.
const MAX_KEPT: usize = 512;

thread_local! {
    static KEPT: RefCell<HashMap<String, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan of `sql` (whose parameters have types `args`), preparing it if needed.
fn statement(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[PgOid],
) -> KpiResult<Rc<OwnedPreparedStatement>> {
    if let Some(hit) = KEPT.with(|k| k.borrow().get(sql).cloned()) {
        return Ok(hit);
    }
    let kept = Rc::new(client.prepare_mut(sql, args)?.keep());
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.len() >= MAX_KEPT {
            k.clear();
        }
        k.insert(sql.to_string(), kept.clone());
    });
    Ok(kept)
}

/// Runs `sql` through its kept plan and hands the result rows to `read`.
pub fn run<R>(
    sql: &str,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(SpiTupleTable<'_>) -> KpiResult<R>,
) -> KpiResult<R> {
    let types: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
    Spi::connect_mut(|client| {
        let stmt = statement(client, sql, &types)?;
        let rows = client.update(&*stmt, None, args)?;
        read(rows)
    })
}
