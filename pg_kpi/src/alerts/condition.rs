//! Alert conditions, parsed and analysed by Postgres as KPI expressions are (see `expr`).
//!
//! Two conditions are calls of our own, recognized before Postgres sees the text:
//! `anomaly(measure, sigmas[, weeks])` and `absent(interval)`.
//!
//! A threshold condition compares an expression over the KPI's measures with a number:
//! `errors / nullif(orders, 0) > 0.05`. Measure names resolve, through a column
//! reference hook, to parameters (measure i is `$i+1`, typed numeric), so the analysed
//! expression reads nothing but the window's measure values. It must be one expression,
//! boolean, free of subqueries, aggregates, window and set-returning functions, and may
//! call immutable functions only: it is evaluated by the fold, as the rule's owner, for
//! every change of its KPI. What is stored is Postgres's deparsed form of the compared
//! value, so the evaluation never re-reads the user's text.

use crate::catalog::Kpi;
use crate::errors::{KpiError, KpiResult};
use crate::expr::{list_len, list_nth, type_name};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::{pg_guard, PgSqlErrorCode, PgTryBuilder};
use std::ffi::{CStr, CString};

/// What a condition compares.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// `value_sql` over the window's measures.
    Threshold { value_sql: String },
    /// The z-score of one measure in the window against the same window in each of the
    /// previous `weeks` weeks (the same hour of the week).
    Anomaly { weeks: i32 },
    /// The rows counted in the window (which the condition sets); crossed at 0.
    Absent { window: String },
}

/// An analysed condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub kind: Kind,
    pub op: &'static str,
    /// The number compared with, as Postgres printed it.
    pub threshold: String,
    /// Indexes of the measures the value reads.
    pub measures: Vec<i32>,
}

impl Condition {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Threshold { .. } => "threshold",
            Kind::Anomaly { .. } => "anomaly",
            Kind::Absent { .. } => "absent",
        }
    }
}

/// Weeks of history an anomaly compares with, unless its condition says.
const DEFAULT_WEEKS: i32 = 4;

const HINT: &str = "A condition compares an expression over the KPI's measures with a number, such as errors / nullif(orders, 0) > 0.05 or orders < 50.";

fn bad(code: PgSqlErrorCode, message: String) -> KpiError {
    KpiError::new(code, message, HINT)
}

/// What the column reference hook resolves names against, and what it found.
struct Scope {
    names: Vec<String>,
    used: Vec<i32>,
}

/// `name( … )` as the whole of `text`: the text between the parentheses.
fn call<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    let t = text.trim();
    let rest = t
        .get(..name.len())?
        .eq_ignore_ascii_case(name)
        .then(|| &t[name.len()..])?;
    let inner = rest.trim_start().strip_prefix('(')?.strip_suffix(')')?;
    (!inner.contains(['(', ')', ';'])).then_some(inner)
}

/// `anomaly(measure, sigmas[, weeks])`.
fn anomaly(kpi: &Kpi, args: &str) -> KpiResult<Condition> {
    let hint = "anomaly(measure, sigmas[, weeks]): for example anomaly(orders, 3), or anomaly(orders, 3, 8) to compare with 8 weeks.";
    let parts: Vec<&str> = args.split(',').map(str::trim).collect();
    let wrong = |m: String| KpiError::invalid(m, hint);
    if !(2..=3).contains(&parts.len()) {
        return Err(wrong(format!(
            "anomaly takes a measure, sigmas and optionally weeks, not \"{args}\""
        )));
    }
    let i = kpi.measure_index(parts[0])?;
    let sigmas: f64 = parts[1]
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            wrong(format!(
                "sigmas must be a positive number, not \"{}\"",
                parts[1]
            ))
        })?;
    let weeks = match parts.get(2) {
        None => DEFAULT_WEEKS,
        Some(w) => w
            .parse::<i32>()
            .ok()
            .filter(|w| (2..=52).contains(w))
            .ok_or_else(|| {
                wrong(format!(
                    "weeks must be a whole number from 2 to 52, not \"{w}\""
                ))
            })?,
    };
    Ok(Condition {
        kind: Kind::Anomaly { weeks },
        op: ">",
        threshold: format!("{sigmas}"),
        measures: vec![i as i32],
    })
}

/// `absent(interval)`, the interval quoted or not.
fn absent(args: &str) -> KpiResult<Condition> {
    let text = args.trim().trim_matches('\'').trim();
    let hint = "absent(interval): for example absent(10 minutes).";
    let us = crate::subxact::isolated(|| {
        crate::prepared::select_one::<i64>(
            "SELECT (extract(epoch FROM $1::interval) * 1000000)::bigint",
            &[text.into()],
        )
    })
    .map_err(|e| KpiError::invalid(format!("absent: {e}"), hint))?;
    if us.unwrap_or(0) <= 0 {
        return Err(KpiError::invalid(
            format!("absent needs a positive interval, not \"{text}\""),
            hint,
        ));
    }
    Ok(Condition {
        kind: Kind::Absent {
            window: text.to_string(),
        },
        op: "<=",
        threshold: "0".into(),
        measures: Vec::new(),
    })
}

/// Parses `text` as a condition over `kpi`'s measures: `anomaly(…)`, `absent(…)`, or a
/// threshold comparison.
pub fn analyze(kpi: &Kpi, text: &str) -> KpiResult<Condition> {
    if let Some(args) = call(text, "anomaly") {
        return anomaly(kpi, args);
    }
    if let Some(args) = call(text, "absent") {
        return absent(args);
    }
    if text.trim().is_empty() {
        return Err(bad(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            "condition is empty".into(),
        ));
    }
    let sql = CString::new(format!("SELECT {text}")).map_err(|_| {
        bad(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            "condition contains a NUL byte".into(),
        )
    })?;
    let mut scope = Scope {
        names: kpi.measures.iter().map(|m| m.name.clone()).collect(),
        used: Vec::new(),
    };
    let measures = scope.names.join(", ");
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| unsafe {
        analyze_unguarded(&sql, &mut scope)
    }))
    .catch_others(|e| {
        let (code, message) = match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                (r.sql_error_code(), r.message().to_string())
            }
            CaughtError::RustPanic { ereport, .. } => {
                (ereport.sql_error_code(), ereport.message().to_string())
            }
        };
        // An unknown name is reported by Postgres as a missing column; say which
        // names there are.
        let hint = if code == PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN {
            format!("The measures of KPI \"{}\" are: {measures}.", kpi.name)
        } else {
            HINT.to_string()
        };
        Err(KpiError::new(
            code,
            format!("invalid condition: {message}"),
            hint,
        ))
    })
    .execute()
}

unsafe fn analyze_unguarded(sql: &CStr, scope: &mut Scope) -> KpiResult<Condition> {
    let raw = unsafe { crate::expr::single_target(sql) }.ok_or_else(|| {
        bad(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            "condition is not a single SQL expression".into(),
        )
    })?;
    unsafe {
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = sql.as_ptr();
        (*pstate).p_pre_columnref_hook = Some(measure_ref);
        (*pstate).p_ref_hook_state = (scope as *mut Scope).cast();
        let node =
            pg_sys::transformExpr(pstate, raw, pg_sys::ParseExprKind::EXPR_KIND_SELECT_TARGET);
        let forbidden = if (*pstate).p_hasSubLinks {
            Some("a subquery")
        } else if (*pstate).p_hasAggs {
            Some("an aggregate function")
        } else if (*pstate).p_hasWindowFuncs {
            Some("a window function")
        } else if (*pstate).p_hasTargetSRFs {
            Some("a set-returning function")
        } else if pg_sys::contain_mutable_functions(node) {
            Some("a function that is not immutable")
        } else {
            None
        };
        if let Some(thing) = forbidden {
            return Err(bad(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("condition cannot contain {thing}"),
            ));
        }
        let type_oid = pg_sys::exprType(node);
        if type_oid != pg_sys::BOOLOID {
            return Err(bad(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("condition must be boolean, not {}", type_name(type_oid)),
            ));
        }
        pg_sys::assign_expr_collations(pstate, node);
        let (value, op, threshold) = comparison(node).ok_or_else(|| {
            bad(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "condition must compare a value with a number using >, >=, < or <=".into(),
            )
        })?;
        let mut measures = std::mem::take(&mut scope.used);
        measures.sort_unstable();
        measures.dedup();
        if measures.is_empty() {
            return Err(bad(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "condition does not read any measure".into(),
            ));
        }
        Ok(Condition {
            kind: Kind::Threshold {
                value_sql: deparse(value),
            },
            op,
            threshold: deparse(threshold),
            measures,
        })
    }
}

/// `value <op> number` at the top of the condition: its value side, operator and
/// number (a non-null constant).
unsafe fn comparison(
    node: *mut pg_sys::Node,
) -> Option<(*mut pg_sys::Node, &'static str, *mut pg_sys::Node)> {
    unsafe {
        if !pgrx::is_a(node, pg_sys::NodeTag::T_OpExpr) {
            return None;
        }
        let op = node as *mut pg_sys::OpExpr;
        if list_len((*op).args) != 2 {
            return None;
        }
        let name = pg_sys::get_opname((*op).opno);
        if name.is_null() {
            return None;
        }
        let op_name = match CStr::from_ptr(name).to_bytes() {
            b">" => ">",
            b">=" => ">=",
            b"<" => "<",
            b"<=" => "<=",
            _ => return None,
        };
        let left = list_nth((*op).args, 0) as *mut pg_sys::Node;
        // `orders > 10` compares with a cast of the integer 10 to numeric: fold it.
        let right = pg_sys::eval_const_expressions(
            std::ptr::null_mut(),
            list_nth((*op).args, 1) as *mut pg_sys::Node,
        );
        if !pgrx::is_a(right, pg_sys::NodeTag::T_Const)
            || (*(right as *mut pg_sys::Const)).constisnull
        {
            return None;
        }
        let mut category: std::ffi::c_char = 0;
        let mut preferred = false;
        pg_sys::get_type_category_preferred(pg_sys::exprType(right), &mut category, &mut preferred);
        (category as u8 == b'N').then_some((left, op_name, right))
    }
}

unsafe fn deparse(node: *mut pg_sys::Node) -> String {
    unsafe {
        let text = pg_sys::deparse_expression(node, std::ptr::null_mut(), false, false);
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// Resolves an unqualified name that is one of the KPI's measures to its parameter;
/// anything else is left to Postgres, which reports it as an unknown column.
#[pg_guard]
unsafe extern "C-unwind" fn measure_ref(
    pstate: *mut pg_sys::ParseState,
    cref: *mut pg_sys::ColumnRef,
) -> *mut pg_sys::Node {
    unsafe {
        let fields = (*cref).fields;
        if list_len(fields) != 1 {
            return std::ptr::null_mut();
        }
        let field = list_nth(fields, 0) as *mut pg_sys::Node;
        if !pgrx::is_a(field, pg_sys::NodeTag::T_String) {
            return std::ptr::null_mut();
        }
        let name = CStr::from_ptr((*(field as *mut pg_sys::String)).sval).to_string_lossy();
        let scope = &mut *((*pstate).p_ref_hook_state as *mut Scope);
        let Some(i) = scope.names.iter().position(|n| *n == name) else {
            return std::ptr::null_mut();
        };
        scope.used.push(i as i32);
        let param = pg_sys::palloc0(std::mem::size_of::<pg_sys::Param>()) as *mut pg_sys::Param;
        (*param).xpr.type_ = pg_sys::NodeTag::T_Param;
        (*param).paramkind = pg_sys::ParamKind::PARAM_EXTERN;
        (*param).paramid = i as i32 + 1;
        (*param).paramtype = pg_sys::NUMERICOID;
        (*param).paramtypmod = -1;
        (*param).paramcollid = pg_sys::InvalidOid;
        (*param).location = (*cref).location;
        param.cast()
    }
}
