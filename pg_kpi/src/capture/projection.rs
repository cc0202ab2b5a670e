//! One executor projection per source table that computes, in a single call per row,
//! every value the table's KPIs need: filters, time columns, dimensions and measure
//! arguments.
//!
//! Why one projection and not an `ExprState` per expression: three KPIs need about a
//! dozen values per row, and each separate evaluation is a guarded call into the
//! executor with its own dispatch and tuple deforming. A projection deforms the row once
//! and runs one interpreted program; identical expressions (the time column shared by
//! every KPI, `amount` read by several measures) are computed once.
//!
//! A measure argument of a KPI with a filter is wrapped as `CASE WHEN <filter> THEN
//! <argument> END`, so it is evaluated only for rows the filter admits, exactly as when
//! each KPI evaluated its own expressions after checking its filter: a filter such as
//! `quantity > 0` keeps guarding `amount / quantity`.

use crate::errors::KpiResult;
use crate::expr::{analyze, Want};
use pgrx::pg_sys;
use std::ffi::CStr;

/// Where one value of the projection lands, with what turns it into text.
pub struct Value {
    index: usize,
    pub type_oid: pg_sys::Oid,
    output: *mut pg_sys::FmgrInfo,
    /// The planned expression, reused as a guard (filters) or deduplicated against.
    node: *mut pg_sys::Expr,
}

/// Builds and runs the projection. Lives in its own executor state under
/// TopMemoryContext (it outlives transactions), freed on drop when the owning cache
/// entry is invalidated.
pub struct Projection {
    estate: *mut pg_sys::EState,
    econtext: *mut pg_sys::ExprContext,
    /// The distinct expressions, in target-list order.
    targets: Vec<*mut pg_sys::Expr>,
    /// Set by `finish`.
    info: *mut pg_sys::ProjectionInfo,
    result: *mut pg_sys::TupleTableSlot,
}

/// One row's values, valid until it is dropped (which frees the row's memory).
pub struct Row<'a> {
    projection: &'a Projection,
    old: pg_sys::MemoryContext,
}

impl Projection {
    pub fn new() -> Projection {
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            let estate = pg_sys::CreateExecutorState();
            pg_sys::MemoryContextSwitchTo(old);
            let econtext = pg_sys::CreateExprContext(estate);
            Projection {
                estate,
                econtext,
                targets: Vec::new(),
                info: std::ptr::null_mut(),
                result: std::ptr::null_mut(),
            }
        }
    }

    /// Analyses `text` against `relid` and adds it to the projection; with `guard`, it
    /// is computed only where the guard (a filter) is true, NULL elsewhere.
    pub fn add(
        &mut self,
        relid: pg_sys::Oid,
        text: &str,
        want: Want,
        what: &str,
        guard: Option<&Value>,
    ) -> KpiResult<Value> {
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
            let result = analyze(relid, text, want, what).map(|a| {
                // What ExecPrepareExpr would do: constant folding, operator function ids.
                let node = pg_sys::expression_planner(a.node as *mut pg_sys::Expr);
                let target = match guard {
                    // A column cannot fail to evaluate: no need to guard it.
                    Some(g) if !pgrx::is_a(node as *mut pg_sys::Node, pg_sys::NodeTag::T_Var) => {
                        guarded(g.node, node)
                    }
                    _ => node,
                };
                let index = self.place(target);
                let output = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>())
                    as *mut pg_sys::FmgrInfo;
                let mut func = pg_sys::InvalidOid;
                let mut is_varlena = false;
                pg_sys::getTypeOutputInfo(a.type_oid, &mut func, &mut is_varlena);
                pg_sys::fmgr_info_cxt(func, output, (*self.estate).es_query_cxt);
                Value {
                    index,
                    type_oid: a.type_oid,
                    output,
                    node,
                }
            });
            pg_sys::MemoryContextSwitchTo(old);
            result
        }
    }

    /// The position of `node` among the targets, adding it unless an equal one is there.
    unsafe fn place(&mut self, node: *mut pg_sys::Expr) -> usize {
        let found = self
            .targets
            .iter()
            .position(|t| unsafe { pg_sys::equal(*t as *const _, node as *const _) });
        found.unwrap_or_else(|| {
            self.targets.push(node);
            self.targets.len() - 1
        })
    }

    /// Compiles the projection once every value has been added.
    pub fn finish(&mut self) {
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo((*self.estate).es_query_cxt);
            let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
            for (i, node) in self.targets.iter().enumerate() {
                let entry =
                    pg_sys::makeTargetEntry(*node, (i + 1) as i16, std::ptr::null_mut(), false);
                tlist = pg_sys::lappend(tlist, entry as *mut std::ffi::c_void);
            }
            let desc = pg_sys::ExecTypeFromTL(tlist);
            self.result = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
            self.info = pg_sys::ExecBuildProjectionInfo(
                tlist,
                self.econtext,
                self.result,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
            pg_sys::MemoryContextSwitchTo(old);
        }
    }

    /// Computes every value for the row in `slot`, in per-row memory.
    ///
    /// # Safety
    /// `slot` must hold a row of the relation the values were added for, and
    /// `finish` must have been called.
    pub unsafe fn row(&self, slot: *mut pg_sys::TupleTableSlot) -> Row<'_> {
        unsafe {
            (*self.econtext).ecxt_scantuple = slot;
            let old = pg_sys::MemoryContextSwitchTo((*self.econtext).ecxt_per_tuple_memory);
            let mut is_null = false;
            // ExecProject without its slot bookkeeping: the values are read straight
            // from the result slot's arrays.
            pg_sys::ExecEvalExprSwitchContext(
                &mut (*self.info).pi_state,
                self.econtext,
                &mut is_null,
            );
            Row {
                projection: self,
                old,
            }
        }
    }
}

/// `CASE WHEN <guard> THEN <node> END`.
unsafe fn guarded(guard: *mut pg_sys::Expr, node: *mut pg_sys::Expr) -> *mut pg_sys::Expr {
    unsafe {
        let node_ptr = node as *mut pg_sys::Node;
        let type_oid = pg_sys::exprType(node_ptr);
        let collation = pg_sys::exprCollation(node_ptr);
        let when = pgrx::PgBox::<pg_sys::CaseWhen>::alloc_node(pg_sys::NodeTag::T_CaseWhen);
        let when = when.into_pg();
        (*when).expr = guard;
        (*when).result = node;
        (*when).location = -1;
        let case = pgrx::PgBox::<pg_sys::CaseExpr>::alloc_node(pg_sys::NodeTag::T_CaseExpr);
        let case = case.into_pg();
        (*case).casetype = type_oid;
        (*case).casecollid = collation;
        (*case).arg = std::ptr::null_mut();
        (*case).args = pg_sys::lappend(std::ptr::null_mut(), when as *mut std::ffi::c_void);
        (*case).defresult = pg_sys::makeNullConst(type_oid, pg_sys::exprTypmod(node_ptr), collation)
            as *mut pg_sys::Expr;
        (*case).location = -1;
        case as *mut pg_sys::Expr
    }
}

impl Row<'_> {
    /// The value, `None` for SQL NULL.
    pub fn get(&self, v: &Value) -> Option<pg_sys::Datum> {
        unsafe {
            let slot = self.projection.result;
            if *(*slot).tts_isnull.add(v.index) {
                None
            } else {
                Some(*(*slot).tts_values.add(v.index))
            }
        }
    }

    /// The text form of a non-null value of `v`.
    pub fn text(&self, v: &Value, datum: pg_sys::Datum) -> String {
        unsafe {
            if v.type_oid == pg_sys::TEXTOID || v.type_oid == pg_sys::VARCHAROID {
                // text and varchar print as their bytes: skip the output function's copy.
                // Short values of a row are inline and uncompressed; only others need
                // detoasting (a call into Postgres).
                let mut raw: *mut pg_sys::varlena = datum.cast_mut_ptr();
                if pgrx::varlena::varatt_is_1b_e(raw) || pgrx::varlena::varatt_is_4b_c(raw) {
                    raw = pg_sys::pg_detoast_datum_packed(raw);
                }
                let bytes = pgrx::varlena::varlena_to_byte_slice(raw);
                String::from_utf8_lossy(bytes).into_owned()
            } else {
                let s = pg_sys::OutputFunctionCall(v.output, datum);
                CStr::from_ptr(s).to_string_lossy().into_owned()
            }
        }
    }
}

impl Drop for Row<'_> {
    fn drop(&mut self) {
        unsafe {
            pg_sys::MemoryContextSwitchTo(self.old);
            pg_sys::MemoryContextReset((*self.projection.econtext).ecxt_per_tuple_memory);
        }
    }
}

impl Drop for Projection {
    fn drop(&mut self) {
        unsafe { pg_sys::FreeExecutorState(self.estate) }
    }
}
