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
}

impl Kind {
    fn parse(func: &str) -> Option<Kind> {
        Some(match func {
            "count" => Kind::Count,
            "sum" => Kind::Sum,
            "avg" => Kind::Avg,
            "min" => Kind::Min,
            "max" => Kind::Max,
            _ => return None,
        })
    }

    /// Whether the argument must be numeric (coerced to `numeric`).
    pub fn numeric_arg(self) -> bool {
        matches!(self, Kind::Sum | Kind::Avg | Kind::Min | Kind::Max)
    }
}

/// One measure as stored in `kpi.definitions.measures`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measure {
    pub name: String,
    pub kind: Kind,
    /// The argument, as normalized SQL over the source row (None for `count(*)`).
    pub expr: Option<String>,
}

/// A measure as written by the user, before validation of its expression.
#[derive(Debug, PartialEq)]
pub struct RawMeasure {
    pub name: String,
    pub kind: Kind,
    pub arg: Option<String>,
}

fn measure_syntax_error(item: &str) -> KpiError {
    KpiError::new(
        pgrx::PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
        format!("invalid measure definition \"{}\"", item.trim()),
        "Write measures as a comma-separated list of name = function(expression), for example \
         'revenue = sum(amount * quantity), orders = count(*)'. Functions: count, sum, avg, min, max.",
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
        let open = call.find('(').ok_or_else(|| measure_syntax_error(item))?;
        if !call.ends_with(')') {
            return Err(measure_syntax_error(item));
        }
        let func = call[..open].trim().to_ascii_lowercase();
        let arg = call[open + 1..call.len() - 1].trim();
        let (kind, arg) = match (func.as_str(), arg) {
            ("count", "*") => (Kind::CountStar, None),
            (f, a) => {
                let kind = Kind::parse(f).ok_or_else(|| {
                    KpiError::invalid(
                        format!("unknown measure function \"{f}\" in measure \"{name}\""),
                        "Supported: count(*), count(expr), sum(expr), avg(expr), min(expr), max(expr).",
                    )
                })?;
                if a.is_empty() {
                    return Err(measure_syntax_error(item));
                }
                (kind, Some(a.to_string()))
            }
        };
        if out.iter().any(|m| m.name == name) {
            return Err(KpiError::new(
                pgrx::PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                format!("measure \"{name}\" is defined twice"),
                "Give every measure of a KPI its own name.",
            ));
        }
        out.push(RawMeasure {
            name: name.to_string(),
            kind,
            arg,
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
        }
    }

    /// Dirty flag expression for min/max deltas (a removal happened in the group).
    pub fn dirty_decode_sql(&self, i: usize) -> Option<String> {
        matches!(self.kind, Kind::Min | Kind::Max).then(|| format!("(x->3->{i}->>1)::int = 1"))
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
        }
    }

    /// The aggregate used to recompute a min/max from source rows.
    pub fn rescan_agg(&self) -> Option<&'static str> {
        match self.kind {
            Kind::Min => Some("min"),
            Kind::Max => Some("max"),
            _ => None,
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
        }
    }

    /// The finalized SQL type (for empty results).
    pub fn result_type(&self) -> &'static str {
        match self.kind {
            Kind::CountStar | Kind::Count => "bigint",
            _ => "numeric",
        }
    }

    pub fn has_dirty(&self) -> bool {
        matches!(self.kind, Kind::Min | Kind::Max)
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
    }

    #[pgrx::pg_test]
    fn rejects_bad_lists() {
        assert!(parse("").is_err());
        assert!(parse("a = sum(x), a = count(*)").is_err());
        assert!(parse("a = median(x)").is_err());
        assert!(parse("a sum(x)").is_err());
        assert!(parse("a = sum(x").is_err());
        assert!(parse("A = sum(x)").is_err());
    }
}
