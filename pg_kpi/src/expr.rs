//! Expressions over a source row, parsed and analysed by Postgres itself.
//!
//! User text is never spliced into SQL as written. It is parsed as exactly one target
//! of a bare `SELECT` (anything else — a second statement, a FROM clause, a comment that
//! swallows the rest — is rejected), analysed against the source table alone, checked
//! for subqueries, aggregates, window functions and set-returning functions, coerced to
//! the type the measure needs, and then *deparsed* by Postgres. Only that normalized
//! text is stored and used in generated SQL; the capture trigger compiles it, with the
//! table's other KPI expressions, into one executor projection per backend and table
//! (`capture::projection`).

use crate::errors::{KpiError, KpiResult};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{PgSqlErrorCode, PgTryBuilder};
use std::ffi::{CStr, CString};

/// What an expression must evaluate to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Want {
    /// Coerced to `numeric` (sum, avg, min, max).
    Numeric,
    /// Must be boolean (filters).
    Boolean,
    /// timestamptz, timestamp or date (the time column).
    Time,
    /// Any type (count(expr), dimensions).
    Any,
    /// Any type, converted to its text form (count_distinct hashes that text, so the
    /// trigger and SQL rescans must agree on it: both use the `::text` cast).
    Text,
    /// Coerced to double precision (percentile sketches).
    Float,
}

/// An analysed expression: a node tree in the current memory context, its result
/// type, and its normalized SQL.
pub struct Analyzed {
    pub node: *mut pg_sys::Node,
    pub type_oid: pg_sys::Oid,
    pub sql: String,
}

fn hint_for(what: &str, rel: &str) -> String {
    format!("The {what} must be one SQL expression over the columns of {rel}, without subqueries, aggregates or references to other tables.")
}

/// Re-raises a Postgres error caught while parsing, keeping its SQLSTATE and message and
/// adding what was being parsed.
fn convert(e: CaughtError, what: &str, rel: &str) -> KpiError {
    let (code, message) = match &e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
            (r.sql_error_code(), r.message().to_string())
        }
        CaughtError::RustPanic { ereport, .. } => {
            (ereport.sql_error_code(), ereport.message().to_string())
        }
    };
    KpiError::new(
        code,
        format!("invalid {what}: {message}"),
        hint_for(what, rel),
    )
}

/// Parses and analyses `text` as one expression over the columns of `relid`.
///
/// `what` names the argument in error messages ("measure \"revenue\"", "filter", …).
pub fn analyze(relid: pg_sys::Oid, text: &str, want: Want, what: &str) -> KpiResult<Analyzed> {
    let rel_name = relation_name(relid);
    let bad = |msg: String| {
        KpiError::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            msg,
            hint_for(what, &rel_name),
        )
    };
    if text.trim().is_empty() {
        return Err(bad(format!("{what} is empty")));
    }
    let sql = CString::new(format!("SELECT {text}"))
        .map_err(|_| bad(format!("{what} contains a NUL byte")))?;
    PgTryBuilder::new(|| unsafe { analyze_unguarded(relid, &sql, want, what, &rel_name) })
        .catch_others(|e| Err(convert(e, what, &rel_name)))
        .execute()
}

unsafe fn analyze_unguarded(
    relid: pg_sys::Oid,
    sql: &CStr,
    want: Want,
    what: &str,
    rel_name: &str,
) -> KpiResult<Analyzed> {
    let bad = |msg: String| {
        KpiError::new(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            msg,
            hint_for(what, rel_name),
        )
    };
    let raw_expr = unsafe { single_target(sql) }
        .ok_or_else(|| bad(format!("{what} is not a single SQL expression")))?;

    unsafe {
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = sql.as_ptr();
        let lock = pg_sys::AccessShareLock as i32;
        let rel = pg_sys::table_open(relid, lock);
        let nsitem = pg_sys::addRangeTableEntryForRelation(
            pstate,
            rel,
            lock,
            std::ptr::null_mut(),
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, nsitem, false, true, true);
        let mut node = pg_sys::transformExpr(
            pstate,
            raw_expr,
            pg_sys::ParseExprKind::EXPR_KIND_SELECT_TARGET,
        );
        let forbidden = if (*pstate).p_hasSubLinks {
            Some("a subquery")
        } else if (*pstate).p_hasAggs {
            Some("an aggregate function")
        } else if (*pstate).p_hasWindowFuncs {
            Some("a window function")
        } else if (*pstate).p_hasTargetSRFs {
            Some("a set-returning function")
        } else if list_len((*pstate).p_rtable) != 1 {
            Some("another table")
        } else {
            None
        };
        if let Some(thing) = forbidden {
            pg_sys::table_close(rel, lock);
            return Err(KpiError::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("{what} cannot contain {thing}"),
                hint_for(what, rel_name),
            ));
        }
        let mut type_oid = pg_sys::exprType(node);
        match want {
            Want::Any => {}
            Want::Boolean => {
                if type_oid != pg_sys::BOOLOID {
                    pg_sys::table_close(rel, lock);
                    return Err(KpiError::new(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!("{what} must be boolean, not {}", type_name(type_oid)),
                        "A filter is a condition such as status <> 'cancelled'.",
                    ));
                }
            }
            Want::Time => {
                if ![
                    pg_sys::TIMESTAMPTZOID,
                    pg_sys::TIMESTAMPOID,
                    pg_sys::DATEOID,
                ]
                .contains(&type_oid)
                {
                    pg_sys::table_close(rel, lock);
                    return Err(KpiError::new(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!(
                            "{what} must be of type timestamptz, timestamp or date, not {}",
                            type_name(type_oid)
                        ),
                        "Pick the column that records when each row happened.",
                    ));
                }
            }
            Want::Text => {
                node = pg_sys::coerce_to_target_type(
                    pstate,
                    node,
                    type_oid,
                    pg_sys::TEXTOID,
                    -1,
                    pg_sys::CoercionContext::COERCION_EXPLICIT,
                    pg_sys::CoercionForm::COERCE_EXPLICIT_CAST,
                    -1,
                );
                type_oid = pg_sys::TEXTOID;
            }
            Want::Numeric | Want::Float => {
                let target = if want == Want::Float {
                    pg_sys::FLOAT8OID
                } else {
                    pg_sys::NUMERICOID
                };
                let mut category: std::ffi::c_char = 0;
                let mut preferred = false;
                pg_sys::get_type_category_preferred(type_oid, &mut category, &mut preferred);
                let coerced = if category as u8 == b'N' {
                    pg_sys::coerce_to_target_type(
                        pstate,
                        node,
                        type_oid,
                        target,
                        -1,
                        pg_sys::CoercionContext::COERCION_ASSIGNMENT,
                        // Explicit, so the deparsed text keeps the cast and SQL rescans
                        // compute exactly what the trigger computes, in the same type.
                        pg_sys::CoercionForm::COERCE_EXPLICIT_CAST,
                        -1,
                    )
                } else {
                    std::ptr::null_mut()
                };
                if coerced.is_null() {
                    pg_sys::table_close(rel, lock);
                    return Err(KpiError::new(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!("{what} must be numeric, not {}", type_name(type_oid)),
                        "sum, avg, min, max and percentile take numeric expressions; cast explicitly if the column holds numbers as text.",
                    ));
                }
                node = coerced;
                type_oid = target;
            }
        }
        pg_sys::assign_expr_collations(pstate, node);
        let relname = CString::new(rel_name.to_string()).unwrap_or_default();
        let context = pg_sys::deparse_context_for(relname.as_ptr(), relid);
        let deparsed = pg_sys::deparse_expression(node, context, false, false);
        let sql = CStr::from_ptr(deparsed).to_string_lossy().into_owned();
        pg_sys::table_close(rel, lock);
        Ok(Analyzed {
            node,
            type_oid,
            sql,
        })
    }
}

/// The raw expression of `SELECT <expr>` when the text is exactly that: one statement,
/// one unnamed target and no other clause.
pub(crate) unsafe fn single_target(sql: &CStr) -> Option<*mut pg_sys::Node> {
    unsafe {
        let stmts = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if list_len(stmts) != 1 {
            return None;
        }
        let raw = list_nth(stmts, 0) as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if !pgrx::is_a(stmt, pg_sys::NodeTag::T_SelectStmt) {
            return None;
        }
        let s = stmt as *mut pg_sys::SelectStmt;
        let clean = (*s).distinctClause.is_null()
            && (*s).intoClause.is_null()
            && (*s).fromClause.is_null()
            && (*s).whereClause.is_null()
            && (*s).groupClause.is_null()
            && (*s).havingClause.is_null()
            && (*s).windowClause.is_null()
            && (*s).valuesLists.is_null()
            && (*s).sortClause.is_null()
            && (*s).limitOffset.is_null()
            && (*s).limitCount.is_null()
            && (*s).lockingClause.is_null()
            && (*s).withClause.is_null()
            && (*s).op == pg_sys::SetOperation::SETOP_NONE
            && list_len((*s).targetList) == 1;
        if !clean {
            return None;
        }
        let target = list_nth((*s).targetList, 0) as *mut pg_sys::ResTarget;
        if !(*target).name.is_null() || !(*target).indirection.is_null() {
            return None;
        }
        let val = (*target).val;
        // `SELECT *` parses as a ColumnRef with A_Star; it is not an expression.
        if pgrx::is_a(val, pg_sys::NodeTag::T_ColumnRef) {
            let fields = (*(val as *mut pg_sys::ColumnRef)).fields;
            let last = list_nth(fields, list_len(fields) - 1) as *mut pg_sys::Node;
            if pgrx::is_a(last, pg_sys::NodeTag::T_A_Star) {
                return None;
            }
        }
        Some(val)
    }
}

pub(crate) unsafe fn list_len(list: *mut pg_sys::List) -> i32 {
    if list.is_null() {
        0
    } else {
        unsafe { (*list).length }
    }
}

pub(crate) unsafe fn list_nth(list: *mut pg_sys::List, n: i32) -> *mut std::ffi::c_void {
    unsafe { (*(*list).elements.add(n as usize)).ptr_value }
}

pub fn relation_name(relid: pg_sys::Oid) -> String {
    unsafe {
        let name = pg_sys::get_rel_name(relid);
        if name.is_null() {
            format!("relation {}", relid.to_u32())
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

pub fn type_name(type_oid: pg_sys::Oid) -> String {
    unsafe {
        let name = pg_sys::format_type_be(type_oid);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}
