//! The correctness oracle: a KPI's view must equal a GROUP BY recomputation over its
//! source, row for row (multiset equality, both `EXCEPT ALL` directions empty), for
//! every exact measure; sketch measures (`count_distinct`, `percentile`) must be within
//! the contract's error bounds of the exact `count(DISTINCT …)` and `percentile_disc`
//! in every view row (bucket × dimension values), see [`SketchBounds`].
//!
//! Each check runs in one REPEATABLE READ transaction, so it is valid while writers and
//! the fold worker are running: the view (aggregates ∪ pending deltas) and the source
//! are read from the same snapshot, and a fold is one transaction, so it is either
//! entirely visible or not at all. (TRUNCATE is the exception, see [`check`].)

use std::collections::BTreeMap;

use postgres::Client;

use crate::describe_error;
use crate::schema::{Kind, KpiSpec, Measure};

/// How many differing rows to print in each direction.
const DIFF_ROWS: i64 = 20;

/// The contract's error bounds for sketch measures.
pub struct SketchBounds;

impl SketchBounds {
    /// count_distinct: within 2 % (HLL at precision 14, measured from 1k to 10M values),
    /// or ±1 for small groups, where 2 % is less than one value. HLL's sparse mode is
    /// usually exact for the few hundred values of a group here, but a collision of two
    /// values' sparse indexes (about n²/2^26 for n values) can lose one, so exactness is
    /// reported, not asserted.
    pub const COUNT_DISTINCT_RELATIVE: f64 = 0.02;
    pub const COUNT_DISTINCT_ABSOLUTE: f64 = 1.0;
    /// percentile: within 1 % relative of `percentile_disc(q)` (DDSketch, α = 0.5 %).
    pub const PERCENTILE_RELATIVE: f64 = 0.01;

    /// The largest error allowed for `measure` when the exact value is `exact`.
    pub fn allowed(measure: &Measure, exact: f64) -> f64 {
        match measure.kind {
            Kind::CountDistinct => {
                (Self::COUNT_DISTINCT_RELATIVE * exact.abs()).max(Self::COUNT_DISTINCT_ABSOLUTE)
            }
            _ => Self::PERCENTILE_RELATIVE * exact.abs(),
        }
    }
}

/// What the sketch comparisons saw for one measure (`kpi.measure`), over every view row
/// of every check.
#[derive(Clone, Debug, Default)]
pub struct MeasureStats {
    /// Values compared (view rows where both sides have a value).
    pub compared: u64,
    /// Of those, how many were exactly the recomputed value.
    pub exact: u64,
    /// Both NULL: a percentile of a group without a counted value.
    pub both_null: u64,
    /// The largest exact value compared: the scale the errors were seen at.
    pub largest: f64,
    pub max_abs_error: f64,
    pub max_rel_error: f64,
    /// The exact value at the largest relative error (when there was an error).
    pub worst_exact_value: Option<f64>,
}

/// Per `kpi.measure`, for every sketch measure checked.
#[derive(Clone, Debug, Default)]
pub struct SketchStats {
    pub measures: BTreeMap<String, MeasureStats>,
}

impl SketchStats {
    pub fn merge(&mut self, other: &SketchStats) {
        for (name, o) in &other.measures {
            let s = self.measures.entry(name.clone()).or_default();
            s.compared += o.compared;
            s.exact += o.exact;
            s.both_null += o.both_null;
            s.largest = s.largest.max(o.largest);
            s.max_abs_error = s.max_abs_error.max(o.max_abs_error);
            if o.max_rel_error > s.max_rel_error {
                s.max_rel_error = o.max_rel_error;
                s.worst_exact_value = o.worst_exact_value;
            }
        }
    }

    /// One line per measure, for the test's output.
    pub fn summary(&self) -> String {
        self.measures
            .iter()
            .map(|(name, s)| {
                let worst = s
                    .worst_exact_value
                    .map_or(String::new(), |v| format!(" at exact value {v}"));
                format!(
                    "  {name}: {} values compared (largest {}), {} exact, {} both NULL; \
                     max error {} abs, {:.4} % rel{worst}",
                    s.compared,
                    s.largest,
                    s.exact,
                    s.both_null,
                    s.max_abs_error,
                    s.max_rel_error * 100.0,
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The window of the totals check: all the test data.
const TOTALS_WINDOW: &str = "100 years";

/// Compares one KPI's view with its recomputation; `Err` holds a readable diff.
pub fn check(client: &mut Client, kpi: &KpiSpec) -> Result<(), String> {
    check_with_stats(client, kpi).map(|_| ())
}

/// [`check`], also returning what the sketch comparisons saw (empty without sketches).
pub fn check_with_stats(client: &mut Client, kpi: &KpiSpec) -> Result<SketchStats, String> {
    let view = kpi.view_sql();
    let oracle = kpi.oracle_sql();
    let sketch_sql = kpi.sketch_check_sql();
    let result = (|| -> Result<(Option<String>, SketchStats), postgres::Error> {
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        // The views' plans are estimated far above their real cost (the delta buffer's
        // set-returning expansion), so JIT compilation kicks in and costs more than the
        // query; the oracle checks correctness, not read speed.
        tx.batch_execute("SET LOCAL jit = off")?;
        // TRUNCATE is not MVCC-safe: a snapshot taken before a concurrent TRUNCATE
        // commits sees the source empty but the KPI's (MVCC) state as it was. Locking the
        // source before the first query makes the snapshot wait for any TRUNCATE.
        tx.batch_execute(&format!("LOCK TABLE {} IN ACCESS SHARE MODE", kpi.source))?;
        let mut report = exact_diff(&mut tx, kpi, &view, &oracle)?.unwrap_or_default();
        // The totals that dashboards read (`kpi.value` without dims), in the same snapshot.
        let totals = kpi.totals_check_sql(TOTALS_WINDOW);
        let row = tx.query_one(totals.as_str(), &[])?;
        if !row.get::<_, bool>(2) {
            report.push_str(&format!(
                "KPI {}: kpi.value over {TOTALS_WINDOW} without dims reads {} but the source gives {}\n  totals query: {totals}\n",
                kpi.name,
                row.get::<_, String>(0),
                row.get::<_, Option<String>>(1).unwrap_or_default(),
            ));
        }
        // In the same snapshot as the exact comparison.
        let mut stats = SketchStats::default();
        if let Some(sql) = &sketch_sql {
            let rows = tx.query(sql.as_str(), &[])?;
            if let Some(diff) = sketch_diff(kpi, &rows, &mut stats) {
                report.push_str(&diff);
                report.push_str(&format!("  sketch query: {sql}\n"));
            }
        }
        tx.commit()?;
        Ok(((!report.is_empty()).then_some(report), stats))
    })();
    match result {
        Ok((None, stats)) => Ok(stats),
        Ok((Some(report), _)) => Err(report),
        Err(e) => Err(format!(
            "KPI {}: comparison query failed: {}\n  view query:   {view}\n  oracle query: {oracle}\n  sketch query: {}",
            kpi.name,
            describe_error(&e),
            sketch_sql.as_deref().unwrap_or("(none)")
        )),
    }
}

/// The exact measures (and the set of view rows): `None` when the view equals the
/// recomputation, otherwise the differing rows in both directions.
fn exact_diff(
    tx: &mut postgres::Transaction<'_>,
    kpi: &KpiSpec,
    view: &str,
    oracle: &str,
) -> Result<Option<String>, postgres::Error> {
    let counts = tx.query_one(
        &format!(
            "SELECT (SELECT count(*) FROM (({view}) EXCEPT ALL ({oracle})) d),
                    (SELECT count(*) FROM (({oracle}) EXCEPT ALL ({view})) d),
                    (SELECT count(*) FROM ({view}) v),
                    (SELECT count(*) FROM ({oracle}) o)"
        ),
        &[],
    )?;
    let (extra, missing, view_rows, oracle_rows): (i64, i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2), counts.get(3));
    if extra == 0 && missing == 0 {
        return Ok(None);
    }
    let mut report = format!(
        "KPI {}: view has {view_rows} rows, recomputation {oracle_rows}; \
         {extra} view rows not in the recomputation, {missing} recomputed rows not in the view\n\
         columns: {}\n",
        kpi.name,
        view.trim_start_matches("SELECT ")
    );
    for (title, a, b) in [
        ("in view, not in recomputation", view, oracle),
        ("in recomputation, not in view", oracle, view),
    ] {
        report.push_str(&format!("  {title}:\n"));
        let rows = tx.query(
            &format!("SELECT d::text FROM (({a}) EXCEPT ALL ({b})) d ORDER BY 1 LIMIT {DIFF_ROWS}"),
            &[],
        )?;
        for row in rows {
            report.push_str(&format!("    {}\n", row.get::<_, String>(0)));
        }
    }
    report.push_str(&format!(
        "  view query:   {view}\n  oracle query: {oracle}\n"
    ));
    Ok(Some(report))
}

/// Checks the rows of [`KpiSpec::sketch_check_sql`] against [`SketchBounds`], adding
/// what it saw to `stats`; `Some` lists the view rows out of bounds.
fn sketch_diff(kpi: &KpiSpec, rows: &[postgres::Row], stats: &mut SketchStats) -> Option<String> {
    let sketches: Vec<&Measure> = kpi.sketch_measures().collect();
    let mut problems = Vec::new();
    for row in rows {
        let key: String = row.get(0);
        let (in_view, in_oracle): (i64, i64) = (row.get(1), row.get(2));
        if in_view != 1 || in_oracle != 1 {
            // The exact comparison reports these rows too, with their exact measures.
            problems.push(format!(
                "{key}: {in_view} view rows, {in_oracle} recomputed rows"
            ));
            continue;
        }
        for (i, m) in sketches.iter().enumerate() {
            let got: Option<f64> = row.get(3 + 2 * i);
            let want: Option<f64> = row.get(4 + 2 * i);
            let s = stats
                .measures
                .entry(format!("{}.{}", kpi.name, m.name))
                .or_default();
            let (got, want) = match (got, want) {
                (Some(g), Some(w)) => (g, w),
                (None, None) if m.kind == Kind::Percentile => {
                    s.both_null += 1;
                    continue;
                }
                _ => {
                    problems.push(format!(
                        "{key}: {} view {got:?}, recomputed {want:?}",
                        m.name
                    ));
                    continue;
                }
            };
            let err = (got - want).abs();
            let rel = if want == 0.0 {
                if err == 0.0 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                err / want.abs()
            };
            s.compared += 1;
            s.exact += u64::from(err == 0.0);
            s.largest = s.largest.max(want.abs());
            s.max_abs_error = s.max_abs_error.max(err);
            if rel > s.max_rel_error {
                s.max_rel_error = rel;
                s.worst_exact_value = Some(want);
            }
            let allowed = SketchBounds::allowed(m, want);
            if err > allowed {
                problems.push(format!(
                    "{key}: {} = {} view {got}, recomputed {want}: error {err} ({:.3} %) > allowed {allowed}",
                    m.name,
                    m.definition(),
                    rel * 100.0
                ));
            }
        }
    }
    if problems.is_empty() {
        return None;
    }
    let mut report = format!(
        "KPI {}: {} sketch values out of bounds (count_distinct ±max(1, 2 %), percentile ±1 %) \
         in {} view rows:\n",
        kpi.name,
        problems.len(),
        rows.len()
    );
    for p in problems.iter().take(DIFF_ROWS as usize) {
        report.push_str(&format!("    {p}\n"));
    }
    if problems.len() > DIFF_ROWS as usize {
        report.push_str(&format!(
            "    … and {} more\n",
            problems.len() - DIFF_ROWS as usize
        ));
    }
    Some(report)
}

/// Checks every KPI; `Err` concatenates the diffs of all that differ.
pub fn check_all(client: &mut Client, kpis: &[KpiSpec]) -> Result<(), String> {
    check_all_with_stats(client, kpis).map(|_| ())
}

/// [`check_all`], also returning what the sketch comparisons saw.
pub fn check_all_with_stats(client: &mut Client, kpis: &[KpiSpec]) -> Result<SketchStats, String> {
    let mut stats = SketchStats::default();
    let mut failures = Vec::new();
    for kpi in kpis {
        match check_with_stats(client, kpi) {
            Ok(s) => stats.merge(&s),
            Err(diff) => failures.push(diff),
        }
    }
    if failures.is_empty() {
        Ok(stats)
    } else {
        Err(failures.join("\n"))
    }
}

/// Panics with the diffs, labelled with `when`, unless every KPI is exact (sketch
/// measures: within their bounds).
pub fn assert_exact(client: &mut Client, kpis: &[KpiSpec], when: &str) {
    if let Err(diff) = check_all(client, kpis) {
        panic!("views are not exact {when}:\n{diff}");
    }
}

/// Checks that the view's columns are `bucket timestamptz, <dimensions>, <measures>` in
/// that order, with the types the contract promises (counts bigint, percentiles double
/// precision, others numeric).
pub fn check_columns(client: &mut Client, kpi: &KpiSpec) -> Result<(), String> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&format!("kpi.{}", kpi.name)],
        )
        .map_err(|e| describe_error(&e))?;
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected = vec![("bucket".to_string(), "timestamp with time zone".to_string())];
    for dim in &kpi.dimensions {
        let ty: String = client
            .query_one(
                "SELECT format_type(atttypid, -1) FROM pg_attribute
                  WHERE attrelid = $1::text::regclass AND attname = $2",
                &[&kpi.source, dim],
            )
            .map_err(|e| describe_error(&e))?
            .get(0);
        expected.push((dim.clone(), ty));
    }
    for m in &kpi.measures {
        expected.push((m.name.clone(), m.view_type().to_string()));
    }
    // A numeric typmod (numeric(p,s)) would still be numeric: compare the base type.
    let normalize = |v: &[(String, String)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(n, t)| (n.clone(), t.split('(').next().unwrap_or(t).to_string()))
            .collect()
    };
    if normalize(&got) == normalize(&expected) {
        Ok(())
    } else {
        Err(format!(
            "view kpi.{} columns:\n  expected {expected:?}\n  got      {got:?}",
            kpi.name
        ))
    }
}

/// Number of delta rows not yet folded (the delta buffer is `kpi.deltas`).
pub fn pending_deltas(client: &mut Client) -> Result<i64, postgres::Error> {
    client
        .query_one("SELECT count(*) FROM kpi.deltas", &[])
        .map(|r| r.get(0))
}

/// `kpi.fold()`, returning how many delta rows it folded.
pub fn fold(client: &mut Client) -> Result<i64, postgres::Error> {
    client
        .query_one("SELECT kpi.fold()::bigint", &[])
        .map(|r| r.get(0))
}
