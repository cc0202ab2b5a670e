//! The correctness oracle: a KPI's view must equal a GROUP BY recomputation over its
//! source, row for row (multiset equality, both `EXCEPT ALL` directions empty).
//!
//! Each check runs in one REPEATABLE READ transaction, so it is valid while writers and
//! the fold worker are running: the view (aggregates ∪ pending deltas) and the source
//! are read from the same snapshot, and a fold is one transaction, so it is either
//! entirely visible or not at all. (TRUNCATE is the exception, see [`check`].)

use postgres::Client;

use crate::describe_error;
use crate::schema::KpiSpec;

/// How many differing rows to print in each direction.
const DIFF_ROWS: i64 = 20;

/// Compares one KPI's view with its recomputation; `Err` holds a readable diff.
pub fn check(client: &mut Client, kpi: &KpiSpec) -> Result<(), String> {
    let view = kpi.view_sql();
    let oracle = kpi.oracle_sql();
    let result = (|| -> Result<Option<String>, postgres::Error> {
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
            tx.commit()?;
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
            ("in view, not in recomputation", &view, &oracle),
            ("in recomputation, not in view", &oracle, &view),
        ] {
            report.push_str(&format!("  {title}:\n"));
            let rows = tx.query(
                &format!(
                    "SELECT d::text FROM (({a}) EXCEPT ALL ({b})) d ORDER BY 1 LIMIT {DIFF_ROWS}"
                ),
                &[],
            )?;
            for row in rows {
                report.push_str(&format!("    {}\n", row.get::<_, String>(0)));
            }
        }
        report.push_str(&format!(
            "  view query:   {view}\n  oracle query: {oracle}\n"
        ));
        tx.commit()?;
        Ok(Some(report))
    })();
    match result {
        Ok(None) => Ok(()),
        Ok(Some(report)) => Err(report),
        Err(e) => Err(format!(
            "KPI {}: comparison query failed: {}\n  view query:   {view}\n  oracle query: {oracle}",
            kpi.name,
            describe_error(&e)
        )),
    }
}

/// Checks every KPI; `Err` concatenates the diffs of all that differ.
pub fn check_all(client: &mut Client, kpis: &[KpiSpec]) -> Result<(), String> {
    let failures: Vec<String> = kpis
        .iter()
        .filter_map(|kpi| check(client, kpi).err())
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Panics with the diffs, labelled with `when`, unless every KPI is exact.
pub fn assert_exact(client: &mut Client, kpis: &[KpiSpec], when: &str) {
    if let Err(diff) = check_all(client, kpis) {
        panic!("views are not exact {when}:\n{diff}");
    }
}

/// Checks that the view's columns are `bucket timestamptz, <dimensions>, <measures>` in
/// that order, with the types the contract promises (counts bigint, others numeric).
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
