//! Measures: what a KPI aggregates, how each is kept as mergeable state, and the SQL
//! fragments that decode, merge and finalize that state.
//!
//! Every measure keeps state that merges by addition (or least/greatest, or a sketch
//! union), so a window over any set of buckets and dimension values is computed by
//! merging states, never by averaging averages.

use crate::errors::{KpiError, KpiResult};
use crate::names;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `count(*)`: rows in the group (the group's row count itself).
    CountStar,
    /// `count(expr)`: non-null values.
    Count,
    Sum,
    Avg,
    /// min/max are exact under deletes: a removal marks the group dirty and the fold
    /// (or the reader, before the fold) rescans that group in the source.
    Min,
    Max,
    /// HyperLogLog distinct count (±1 % typical). A removal marks the group dirty, like
    /// min/max, and the group's sketch is rebuilt from the source, so deletes do lower it.
    CountDistinct,
    /// DDSketch quantile (≤ 1 % relative error), which supports removal.
    Percentile,
    /// A formula over other measures of the KPI (`aov = revenue / orders`), evaluated
    /// at read time from their merged values (see `formula`): it keeps no state.
    Derived,
}

impl Kind {
    fn parse(func: &str) -> Option<Kind> {
        Some(match func {
            "count" => Kind::Count,
            "sum" => Kind::Sum,
            "avg" => Kind::Avg,
            "min" => Kind::Min,
            "max" => Kind::Max,
            "count_distinct" => Kind::CountDistinct,
            "percentile" => Kind::Percentile,
            _ => return None,
        })
    }

    /// What the argument is coerced to.
    pub fn want(self) -> crate::expr::Want {
        use crate::expr::Want;
        match self {
            Kind::Sum | Kind::Avg | Kind::Min | Kind::Max => Want::Numeric,
            Kind::CountDistinct => Want::Text,
            Kind::Percentile => Want::Float,
            Kind::CountStar | Kind::Count | Kind::Derived => Want::Any,
        }
    }
}

/// One measure as stored in `kpi.definitions.measures`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measure {
    pub name: String,
    pub kind: Kind,
    /// The argument, as normalized SQL over the source row (None for `count(*)`).
    pub expr: Option<String>,
    /// percentile: the quantile, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<f64>,
    /// percentile: index of an earlier measure whose sketch (same expression) this one
    /// reads, so p50/p95/p99 of one expression keep one sketch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<usize>,
    /// derived: the normalized formula over other measures' names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
}

/// A measure as written by the user, before validation of its expression.
#[derive(Debug, PartialEq)]
pub struct RawMeasure {
    pub name: String,
    pub kind: Kind,
    pub arg: Option<String>,
    pub q: Option<f64>,
}

fn measure_syntax_error(item: &str) -> KpiError {
    KpiError::new(
        pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        format!("invalid measure definition \"{}\"", item.trim()),
        "Write measures as a comma-separated list of name = function(expression), for example \
         'revenue = sum(amount * quantity), orders = count(*)'. Functions: count, sum, avg, min, max, count_distinct, percentile.",
    )
}

/// Splits `text` on commas that are outside parentheses, brackets and quotes.
fn split_top_level(text: &str) -> KpiResult<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(measure_syntax_error(text));
        }
    }
    if quote.is_some() || depth != 0 {
        return Err(measure_syntax_error(text));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn duplicate_error(name: &str) -> KpiError {
    KpiError::new(
        pgrx::PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
        format!("measure \"{name}\" is defined twice"),
        "Give every measure of a KPI its own name.",
    )
}

/// Where the parenthesis of `f(…)` opens, when `call` is exactly one call `f(…)` (its
/// name an identifier, the parenthesis closing at the very end, outside quotes).
fn single_call(call: &str) -> Option<usize> {
    let open = call.find('(')?;
    let head = call[..open].trim();
    if head.is_empty() || !head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, c) in call.char_indices().skip_while(|(i, _)| *i < open) {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return (i == call.len() - 1).then_some(open);
                }
            }
            _ => {}
        }
    }
    None
}

fn quantile_error(name: &str, q: &str) -> KpiError {
    KpiError::invalid(
        format!(
            "quantile {} of measure \"{name}\" is not between 0 and 1",
            q.trim()
        ),
        "Write the quantile as a fraction strictly between 0 and 1, e.g. 0.95 for p95.",
    )
}

/// Parses `revenue = sum(amount * quantity), orders = count(*)`. The arguments are only
/// split out here; they are validated as SQL expressions against the table later.
pub fn parse(text: &str) -> KpiResult<Vec<RawMeasure>> {
    if text.trim().is_empty() {
        return Err(KpiError::invalid(
            "a KPI needs at least one measure",
            "For example: measures => 'orders = count(*)'.",
        ));
    }
    let mut out: Vec<RawMeasure> = Vec::new();
    for item in split_top_level(text)? {
        let (name, call) = item
            .split_once('=')
            .ok_or_else(|| measure_syntax_error(item))?;
        let name = name.trim();
        names::check("measure", name)?;
        if name == "bucket" {
            return Err(KpiError::invalid(
                "a measure cannot be named \"bucket\"",
                "\"bucket\" is the time column of every KPI view; pick another name.",
            ));
        }
        let call = call.trim();
        if out.iter().any(|m| m.name == name) {
            return Err(duplicate_error(name));
        }
        // `name = f(arg)` with one call of an aggregate spanning the whole text is an
        // aggregate measure; anything else (`revenue / orders`, `round(rate, 2)`) is a
        // formula over other measures.
        let aggregate = single_call(call).filter(|&open| {
            let func = call[..open].trim().to_ascii_lowercase();
            Kind::parse(&func).is_some() || !crate::formula::is_function(&func)
        });
        let Some(open) = aggregate else {
            out.push(RawMeasure {
                name: name.to_string(),
                kind: Kind::Derived,
                arg: Some(crate::formula::parse(call)?.to_string()),
                q: None,
            });
            continue;
        };
        let func = call[..open].trim().to_ascii_lowercase();
        let arg = call[open + 1..call.len() - 1].trim();
        let (kind, arg) = match (func.as_str(), arg) {
            ("count", "*") => (Kind::CountStar, None),
            (f, a) => {
                let kind = Kind::parse(f).ok_or_else(|| {
                    KpiError::invalid(
                        format!("unknown measure function \"{f}\" in measure \"{name}\""),
                        "Supported: count(*), count(expr), sum(expr), avg(expr), min(expr), max(expr), count_distinct(expr), percentile(expr, q).",
                    )
                })?;
                if a.is_empty() {
                    return Err(measure_syntax_error(item));
                }
                (kind, Some(a.to_string()))
            }
        };
        let (arg, q) = match (kind, arg) {
            (Kind::Percentile, Some(a)) => {
                let parts = split_top_level(&a)?;
                let [expr, q] = parts.as_slice() else {
                    return Err(KpiError::invalid(
                        format!(
                            "percentile in measure \"{name}\" takes an expression and a quantile"
                        ),
                        "For example: p95 = percentile(latency_ms, 0.95).",
                    ));
                };
                let q: f64 = q.trim().parse().map_err(|_| quantile_error(name, q))?;
                if !(q > 0.0 && q < 1.0) {
                    return Err(quantile_error(name, &q.to_string()));
                }
                (Some(expr.trim().to_string()), Some(q))
            }
            (_, arg) => (arg, None),
        };
        out.push(RawMeasure {
            name: name.to_string(),
            kind,
            arg,
            q,
        });
    }
    Ok(out)
}

/// SQL fragments for one measure at position `i` of a KPI. State columns are named
/// `_m{i}_…` so they never collide with user dimension names (which cannot start
/// with `_m` followed by a digit… and the view exposes only finalized values anyway).
impl Measure {
    /// (column name, SQL type) of the state columns in the aggregate table.
    pub fn state_columns(&self, i: usize) -> Vec<(String, &'static str)> {
        match self.kind {
            Kind::CountStar => vec![],
            Kind::Count => vec![(format!("_m{i}_nn"), "bigint")],
            Kind::Sum | Kind::Avg => vec![
                (format!("_m{i}_sum"), "numeric"),
                (format!("_m{i}_nn"), "bigint"),
            ],
            Kind::Min | Kind::Max => vec![(format!("_m{i}_val"), "numeric")],
            Kind::CountDistinct => vec![(format!("_m{i}_hll"), "bytea")],
            Kind::Percentile if self.shares.is_none() => vec![(format!("_m{i}_dd"), "bytea")],
            Kind::Percentile | Kind::Derived => vec![],
        }
    }

    /// Expressions decoding this measure's state from delta entry `x` (a jsonb array
    /// `[bucket, dims, rows, states]`), in `state_columns` order, plus the dirty flag
    /// for min/max.
    pub fn decode_sql(&self, i: usize) -> Vec<String> {
        let s = format!("x->3->{i}");
        match self.kind {
            Kind::CountStar => vec![],
            Kind::Count => vec![format!("({s})::bigint")],
            Kind::Sum | Kind::Avg => {
                vec![format!("({s}->>0)::numeric"), format!("({s}->>1)::bigint")]
            }
            Kind::Min | Kind::Max => vec![format!("({s}->>0)::numeric")],
            Kind::CountDistinct => vec![format!("decode({s}->>0, 'base64')")],
            Kind::Percentile if self.shares.is_none() => vec![format!("decode({s}->>0, 'base64')")],
            Kind::Percentile | Kind::Derived => vec![],
        }
    }

    /// Dirty flag expression for min/max deltas (a removal happened in the group).
    pub fn dirty_decode_sql(&self, i: usize) -> Option<String> {
        self.has_dirty()
            .then(|| format!("(x->3->{i}->>1)::int = 1"))
    }

    /// Aggregates that merge many state rows into one, per state column.
    pub fn merge_aggs(&self, i: usize) -> Vec<String> {
        match self.kind {
            Kind::CountStar => vec![],
            Kind::Count => vec![format!("sum(_m{i}_nn)::bigint")],
            Kind::Sum | Kind::Avg => {
                vec![format!("sum(_m{i}_sum)"), format!("sum(_m{i}_nn)::bigint")]
            }
            Kind::Min => vec![format!("min(_m{i}_val)")],
            Kind::Max => vec![format!("max(_m{i}_val)")],
            Kind::CountDistinct => vec![format!("kpi._hll_merge_all(array_agg(_m{i}_hll))")],
            Kind::Percentile if self.shares.is_none() => {
                vec![format!("kpi._dd_merge_all(array_agg(_m{i}_dd))")]
            }
            Kind::Percentile | Kind::Derived => vec![],
        }
    }

    /// `col = combine(a.col, excluded.col)` for the fold's upsert.
    pub fn upsert_sets(&self, i: usize) -> Vec<String> {
        match self.kind {
            Kind::CountStar => vec![],
            Kind::Count => vec![format!("_m{i}_nn = a._m{i}_nn + excluded._m{i}_nn")],
            Kind::Sum | Kind::Avg => vec![
                format!("_m{i}_sum = a._m{i}_sum + excluded._m{i}_sum"),
                format!("_m{i}_nn = a._m{i}_nn + excluded._m{i}_nn"),
            ],
            Kind::Min => vec![format!(
                "_m{i}_val = least(a._m{i}_val, excluded._m{i}_val)"
            )],
            Kind::Max => vec![format!(
                "_m{i}_val = greatest(a._m{i}_val, excluded._m{i}_val)"
            )],
            Kind::CountDistinct => {
                vec![format!(
                    "_m{i}_hll = kpi._hll_merge(a._m{i}_hll, excluded._m{i}_hll)"
                )]
            }
            Kind::Percentile if self.shares.is_none() => {
                vec![format!(
                    "_m{i}_dd = kpi._dd_merge(a._m{i}_dd, excluded._m{i}_dd)"
                )]
            }
            Kind::Percentile | Kind::Derived => vec![],
        }
    }

    /// How to recompute this measure's state from source rows (`{}` is the expression),
    /// for measures that cannot subtract a removed row.
    pub fn rescan_agg(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Min => Some("min({})"),
            Kind::Max => Some("max({})"),
            Kind::CountDistinct => Some("kpi._hll_of(array_agg({}))"),
            _ => None,
        }
    }

    /// The state column a rescan rewrites.
    pub fn rescan_column(&self, i: usize) -> String {
        match self.kind {
            Kind::CountDistinct => format!("_m{i}_hll"),
            _ => format!("_m{i}_val"),
        }
    }

    /// Backfill aggregate filling state column `column` from source rows.
    pub fn backfill_agg(&self, column: &str) -> String {
        let e = self.expr.clone().unwrap_or_default();
        if column.ends_with("_nn") {
            format!("count({e})")
        } else if column.ends_with("_sum") {
            format!("coalesce(sum({e}), 0)")
        } else if column.ends_with("_dd") {
            format!("kpi._dd_of(array_agg({e}))")
        } else {
            self.rescan_agg().unwrap_or("{}").replace("{}", &e)
        }
    }

    /// The finalized value over grouped state rows `s`. `rescan` is the SQL of a
    /// scalar subquery recomputing this min/max from the source for the same group,
    /// used when a pending removal may have taken away the extreme.
    pub fn finalize_sql(&self, i: usize, rescan: Option<&str>) -> String {
        match self.kind {
            Kind::CountStar => "coalesce(sum(s._n), 0)::bigint".to_string(),
            Kind::Count => format!("coalesce(sum(s._m{i}_nn), 0)::bigint"),
            Kind::Sum => format!("CASE WHEN sum(s._m{i}_nn) <> 0 THEN sum(s._m{i}_sum) END"),
            Kind::Avg => format!("sum(s._m{i}_sum) / NULLIF(sum(s._m{i}_nn), 0)"),
            Kind::Min | Kind::Max => {
                let agg = if self.kind == Kind::Min { "min" } else { "max" };
                match rescan {
                    Some(sub) => format!(
                        "CASE WHEN bool_or(s._m{i}_dirty) THEN ({sub}) ELSE {agg}(s._m{i}_val) END"
                    ),
                    None => format!("{agg}(s._m{i}_val)"),
                }
            }
            Kind::CountDistinct => {
                let merged = format!(
                    "coalesce(CASE WHEN count(*) = 1 THEN min(s._m{i}_est) END, \
                     kpi._hll_count_all(array_agg(s._m{i}_hll)))"
                );
                match rescan {
                    Some(sub) => format!(
                        "CASE WHEN bool_or(s._m{i}_dirty) THEN kpi._hll_count(({sub})) ELSE {merged} END"
                    ),
                    None => merged,
                }
            }
            Kind::Percentile => format!(
                "coalesce(CASE WHEN count(*) = 1 THEN min(s._m{i}_q) END, \
                 kpi._dd_quantile_all(array_agg(s._m{o}_dd), {q}))",
                o = self.shares.unwrap_or(i),
                q = self.q.unwrap_or(0.5)
            ),
            // Composed by the reader from the other measures (`Kpi::measure_sql`).
            Kind::Derived => "NULL::numeric".to_string(),
        }
    }

    /// The finalized value of a sketch measure over one aggregate row, kept next to the
    /// sketch as a generated column: `(column, type, expression)`. A series point that
    /// is a single folded row (the usual case: step = bucket, nothing pending) reads it
    /// instead of decoding the sketch, which was most of the cost of a 1,440-point series.
    /// Being generated, it is right after every write of the sketch, whichever path
    /// (fold, backfill, rebuild) made it.
    pub fn cached_column(&self, i: usize) -> Option<(String, &'static str, String)> {
        match self.kind {
            Kind::CountDistinct => Some((
                format!("_m{i}_est"),
                "bigint",
                format!("kpi._hll_count(_m{i}_hll)"),
            )),
            Kind::Percentile => Some((
                format!("_m{i}_q"),
                "double precision",
                format!(
                    "kpi._dd_quantile(_m{o}_dd, {q})",
                    o = self.shares.unwrap_or(i),
                    q = self.q.unwrap_or(0.5)
                ),
            )),
            _ => None,
        }
    }

    /// The finalized SQL type (for empty results).
    pub fn result_type(&self) -> &'static str {
        match self.kind {
            Kind::CountStar | Kind::Count | Kind::CountDistinct => "bigint",
            Kind::Percentile => "double precision",
            _ => "numeric",
        }
    }

    pub fn has_dirty(&self) -> bool {
        matches!(self.kind, Kind::Min | Kind::Max | Kind::CountDistinct)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;

    #[pgrx::pg_test]
    fn parses_a_measure_list() {
        let m =
            parse("revenue = sum(amount * (quantity + 1)), orders = COUNT(*), x = avg(f(a, b))")
                .expect("parses");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].arg.as_deref(), Some("amount * (quantity + 1)"));
        assert_eq!(m[1].kind, Kind::CountStar);
        assert_eq!(m[2].arg.as_deref(), Some("f(a, b)"));
        let p = parse("p95 = percentile(coalesce(a, b), 0.95), u = count_distinct(user_id)")
            .expect("parses");
        assert_eq!(p[0].arg.as_deref(), Some("coalesce(a, b)"));
        assert_eq!(p[0].q, Some(0.95));
        assert_eq!(p[1].kind, Kind::CountDistinct);
    }

    #[pgrx::pg_test]
    fn rejects_bad_lists() {
        assert!(parse("").is_err());
        assert!(parse("a = sum(x), a = count(*)").is_err());
        assert!(parse("a = median(x)").is_err());
        assert!(parse("a sum(x)").is_err());
        assert!(parse("a = sum(x").is_err());
        assert!(parse("A = sum(x)").is_err());
        assert!(parse("p = percentile(x, 1.5)").is_err());
        assert!(parse("p = percentile(x, 0)").is_err());
        assert!(parse("p = percentile(x)").is_err());
        assert!(parse("p = percentile(x, abc)").is_err());
    }
}
