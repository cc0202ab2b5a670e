//! The correctness oracle: every KPI view equals a GROUP BY recomputation over its source,
//! during and after concurrent writes, before and after folding; sketch measures
//! (count_distinct, percentile) are within their error bounds of the exact values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_kpi_e2e::oracle::{self, assert_exact, SketchStats};
use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::schema::{self, Kind, KpiSpec, Measure, TimeType};
use pg_kpi_e2e::workload::{self, OrderRow};
use pg_kpi_e2e::{describe_error, Cluster, ClusterOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// The KPIs of [`schema::orders_kpis`] and [`schema::sketch_kpis`].
fn all_kpis() -> Vec<KpiSpec> {
    let mut kpis = schema::orders_kpis();
    kpis.extend(schema::sketch_kpis());
    kpis
}

/// Creates the orders tables and [`all_kpis`].
fn setup_all(client: &mut Client) -> Vec<KpiSpec> {
    schema::create_orders_tables(client);
    let kpis = all_kpis();
    for kpi in &kpis {
        kpi.create(client);
    }
    kpis
}

/// Four sessions, 300 transactions each, one TRUNCATE midway; the views are compared
/// with the recomputation while the sessions run (the fold worker folding underneath,
/// never `kpi.fold()`), after they finish, and after an explicit fold. The sketch KPIs
/// go through the same workload: their UPDATEs and DELETEs make groups dirty, whose
/// sketches the reader and the fold must rebuild.
#[test]
fn concurrent_dml_keeps_views_exact() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    schema::create_orders_tables(&mut client);

    // Rows that exist before the KPIs are created: the backfill must count them.
    let mut rng = StdRng::seed_from_u64(42);
    for table in ["orders", "orders_p"] {
        let rows: Vec<OrderRow> = (0..300).map(|_| OrderRow::random(&mut rng)).collect();
        workload::copy_rows(&mut client, table, &rows).expect("seed rows");
    }
    let kpis = all_kpis();
    for kpi in &kpis {
        kpi.create(&mut client);
    }
    assert_exact(&mut client, &kpis, "after backfill");
    let mut sketch_stats = SketchStats::default();
    // Every check below also feeds the sketch statistics printed at the end.
    let mut check = |client: &mut Client| {
        oracle::check_all_with_stats(client, &kpis).map(|s| sketch_stats.merge(&s))
    };

    let configs: Vec<workload::Config> = (0..4)
        .map(|i| workload::Config {
            truncate_at: (i == 0).then_some(150),
            ..workload::Config::new(1000 + i, 300)
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let writers = {
        let url = cluster.url();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let reports = workload::run_concurrently(&url, &configs);
            done.store(true, Ordering::SeqCst);
            reports
        })
    };

    // Mid-run checks: consistent snapshots taken while writes and folds are in flight.
    let mut mid_run_failures = Vec::new();
    let mut mid_run_checks = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !done.load(Ordering::SeqCst) && mid_run_checks < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(700));
        if done.load(Ordering::SeqCst) {
            break;
        }
        mid_run_checks += 1;
        if let Err(diff) = check(&mut client) {
            mid_run_failures.push(format!("mid-run check {mid_run_checks}:\n{diff}"));
        }
    }
    let reports = writers.join().expect("writers");
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "session {i}: {} committed, {} rolled back, {} retried after deadlock/serialization {:?}",
            r.committed, r.rolled_back, r.retried, r.retry_reasons
        );
    }
    eprintln!("{mid_run_checks} mid-run checks");

    // Everything that went wrong, reported together: one failure must not hide another.
    let mut problems = workload::errors(&reports);
    if reports[0].truncated != 1 {
        problems.push("the TRUNCATE midway did not commit".to_string());
    }
    problems.extend(mid_run_failures);
    let pending = oracle::pending_deltas(&mut client).unwrap_or(-1);
    if let Err(diff) = check(&mut client) {
        problems.push(format!(
            "after the workload, before kpi.fold() ({pending} deltas pending):\n{diff}"
        ));
    }
    match oracle::fold(&mut client) {
        Ok(folded) => eprintln!("kpi.fold() folded {folded} delta rows ({pending} were pending)"),
        Err(e) => problems.push(format!("kpi.fold(): {}", describe_error(&e))),
    }
    if let Err(diff) = check(&mut client) {
        problems.push(format!("after kpi.fold():\n{diff}"));
    }
    eprintln!(
        "sketch measures over all checks:\n{}",
        sketch_stats.summary()
    );
    let left = oracle::pending_deltas(&mut client).ok();
    if left != Some(0) {
        problems.push(format!(
            "{left:?} deltas left after kpi.fold() with no writer running"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each view's columns are `bucket, <dimensions>, <measures>` with the contract's types:
/// counts (count_distinct too) bigint; percentile double precision; sum, avg, min and max
/// numeric, whatever the argument's type.
#[test]
fn view_columns_follow_the_contract() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = setup_all(&mut client);
    let errors: Vec<String> = kpis
        .iter()
        .filter_map(|k| oracle::check_columns(&mut client, k).err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The oracle itself: it must see a difference when there is one (here, the view of a
/// KPI compared with the recomputation of a different definition).
#[test]
fn oracle_detects_differences() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    let mut rng = StdRng::seed_from_u64(3);
    let rows: Vec<OrderRow> = (0..50).map(|_| OrderRow::random(&mut rng)).collect();
    workload::copy_rows(&mut client, "orders", &rows).expect("rows");
    assert_exact(&mut client, &kpis[..1], "with the right definition");
    let mut wrong = kpis[0].clone();
    wrong.filter = None;
    let diff = oracle::check(&mut client, &wrong).expect_err("a wrong definition must differ");
    assert!(diff.contains("in view, not in recomputation"), "{diff}");
}

/// The sketch comparison must see a difference too: the `sketches` KPI compared with the
/// recomputation of another quantile, and of a distinct count of another column. The
/// exact measures stay right, so only the sketch comparison can catch these.
#[test]
fn oracle_detects_sketch_differences() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = setup_all(&mut client);
    let sketches = kpis
        .iter()
        .find(|k| k.name == "sketches")
        .expect("sketches KPI");
    // Rows in one bucket and channel, so the group is large enough for p50 and p95 to
    // differ by far more than 1 %, and with distinct amounts but only 9 quantities.
    let mut rng = StdRng::seed_from_u64(4);
    let rows: Vec<OrderRow> = (0..60)
        .map(|_| OrderRow {
            offset_ms: 10_000,
            channel: Some("web"),
            status: Some("paid"),
            ..OrderRow::random(&mut rng)
        })
        .collect();
    workload::copy_rows(&mut client, "orders", &rows).expect("rows");
    assert_exact(
        &mut client,
        std::slice::from_ref(sketches),
        "with the right definition",
    );
    let mut wrong_quantile = sketches.clone();
    let p95 = wrong_quantile
        .measures
        .iter_mut()
        .find(|m| m.name == "p95")
        .expect("p95");
    *p95 = Measure::percentile("p95", "latency_ms", 0.5);
    let diff = oracle::check(&mut client, &wrong_quantile)
        .expect_err("p95 compared with the median must differ");
    assert!(diff.contains("sketch values out of bounds"), "{diff}");
    assert!(!diff.contains("in view, not in recomputation"), "{diff}");

    let mut wrong_column = sketches.clone();
    let amounts = wrong_column
        .measures
        .iter_mut()
        .find(|m| m.name == "amounts")
        .expect("amounts");
    *amounts = Measure::new("amounts", Kind::CountDistinct, "quantity");
    let diff = oracle::check(&mut client, &wrong_column)
        .expect_err("distinct amounts compared with distinct quantities must differ");
    assert!(diff.contains("sketch values out of bounds"), "{diff}");
}

/// One step of a scripted scenario: statements run in order on one session, once per
/// table (with `{t}` replaced) unless `only` names one. A statement starting with `!`
/// must fail; `COPY {t}` streams [`COPY_ROWS`].
struct Step {
    label: &'static str,
    only: Option<&'static str>,
    statements: &'static [&'static str],
}

const fn step(label: &'static str, statements: &'static [&'static str]) -> Step {
    Step {
        label,
        only: None,
        statements,
    }
}

const COLS: &str = "(created_at, region, channel, status, amount, quantity, latency_ms)";

/// Rows for the COPY step, in [`schema::ORDER_COLUMNS`] order.
const COPY_ROWS: &str = "2024-01-01 00:02:05+00\teu\tweb\tpaid\t12.50\t2\t33.5\n\
2024-01-01 00:02:06+00\teu\tweb\tpaid\t7.25\t1\t\\N\n\
2024-01-01 00:02:07+00\t\\N\tapp\tcancelled\t1000.00\t9\t1\n\
2024-01-01 00:44:00+00\tus\tstore\t\\N\t\\N\t\\N\t\\N\n";

/// Runs the steps, checking every KPI after each; returns a failure report per step.
fn run_steps(
    client: &mut Client,
    kpis: &[KpiSpec],
    tables: &[&str],
    steps: &[Step],
) -> Vec<String> {
    let mut failures = Vec::new();
    for step in steps {
        let mut executed = Vec::new();
        let targets: Vec<&str> = match step.only {
            Some(t) => vec![t],
            None => tables.to_vec(),
        };
        for table in targets {
            for statement in step.statements {
                let (must_fail, template) = match statement.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, *statement),
                };
                let sql = template.replace("{t}", table).replace("{cols}", COLS);
                executed.push(sql.clone());
                let result = if sql.starts_with("COPY ") {
                    copy_text(client, &sql)
                } else {
                    client.batch_execute(&sql)
                };
                match (result, must_fail) {
                    (Ok(()), false) | (Err(_), true) => {}
                    (Ok(()), true) => failures.push(format!(
                        "step '{}': statement succeeded but must fail: {sql}",
                        step.label
                    )),
                    (Err(e), false) => {
                        failures.push(format!(
                            "step '{}': {sql}\n  -> {}",
                            step.label,
                            describe_error(&e)
                        ));
                        let _ = client.batch_execute("ROLLBACK");
                    }
                }
            }
        }
        if let Err(diff) = oracle::check_all(client, kpis) {
            failures.push(format!(
                "after step '{}', executed:\n  {}\n{diff}",
                step.label,
                executed.join(";\n  ")
            ));
        }
    }
    failures
}

fn copy_text(client: &mut Client, sql: &str) -> Result<(), pg_kpi_e2e::postgres::Error> {
    use std::io::Write;
    let mut writer = client.copy_in(sql)?;
    let _ = writer.write_all(COPY_ROWS.as_bytes());
    writer.finish().map(|_| ())
}

const BACKFILL: &[&str] = &["INSERT INTO {t} {cols} VALUES
    ('2024-01-01 00:00:10+00', 'eu', 'web', 'paid', 10.00, 1, 100.5),
    ('2024-01-01 00:00:50+00', 'eu', 'web', 'paid', 30.00, 2, 80.25),
    ('2024-01-01 00:01:10+00', 'us', 'app', 'pending', 5.50, 3, NULL),
    ('2024-01-01 00:01:20+00', NULL, 'web', 'cancelled', 99.99, 1, 10),
    ('2024-01-01 00:25:00+00', 'apac', NULL, NULL, NULL, NULL, NULL),
    ('2023-12-31 23:59:59.999+00', 'eu', 'store', 'paid', -3.25, 2, 0.001)"];

const STEPS: &[Step] = &[
    step(
        "single-row insert",
        &["INSERT INTO {t} {cols} VALUES ('2024-01-01 00:00:30+00', 'eu', 'web', 'paid', 20.00, 1, 50)"],
    ),
    step(
        "multi-row insert into one hot bucket",
        &["INSERT INTO {t} {cols} VALUES
            ('2024-01-01 00:00:31+00', 'eu', 'web', 'paid', 1.00, 1, 1),
            ('2024-01-01 00:00:32+00', 'eu', 'web', 'paid', 2.00, 2, 2),
            ('2024-01-01 00:00:33+00', 'eu', 'web', 'refunded', 0.01, 3, 3)"],
    ),
    step("COPY", &["COPY {t} (created_at, region, channel, status, amount, quantity, latency_ms) FROM STDIN"]),
    step(
        "INSERT ... SELECT of 200 rows",
        &["INSERT INTO {t} {cols}
            SELECT '2024-01-01 00:00:00+00'::timestamptz + g * interval '17 seconds',
                   (ARRAY['eu', 'us', NULL])[1 + g % 3], (ARRAY['web', 'app'])[1 + g % 2],
                   (ARRAY['paid', 'cancelled', 'pending'])[1 + g % 3],
                   (g % 100) * 1.25, 1 + g % 4, g * 0.5
              FROM generate_series(1, 200) g"],
    ),
    step(
        "update moving rows between buckets",
        &["UPDATE {t} SET created_at = created_at + interval '90 seconds' WHERE region = 'eu'"],
    ),
    step(
        "update moving rows between partitions",
        &["UPDATE {t} SET created_at = created_at + interval '25 minutes' WHERE region = 'us' AND quantity = 1"],
    ),
    step(
        "update of dimension values",
        &["UPDATE {t} SET region = 'latam', channel = NULL WHERE channel = 'app' AND quantity > 2"],
    ),
    step(
        "update out of the filter",
        &["UPDATE {t} SET status = 'cancelled' WHERE quantity = 2"],
    ),
    step(
        "update into the filter",
        &["UPDATE {t} SET status = 'paid' WHERE status IS NULL OR (status = 'cancelled' AND quantity = 3)"],
    ),
    step(
        "update of measures to NULL",
        &["UPDATE {t} SET amount = NULL, latency_ms = NULL WHERE id % 5 = 0"],
    ),
    step(
        "delete of the rows holding the max (max must be recomputed)",
        &["DELETE FROM {t} WHERE amount = (SELECT max(amount) FROM {t})"],
    ),
    step(
        "update of the rows holding the min upwards (min must be recomputed)",
        &["UPDATE {t} SET amount = amount + 1000
            WHERE amount = (SELECT min(amount) FROM {t} WHERE status <> 'cancelled')"],
    ),
    step(
        "delete of some rows",
        &["DELETE FROM {t} WHERE id % 7 = 3"],
    ),
    step(
        "rolled-back transaction",
        &[
            "BEGIN",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:05:00+00', 'eu', 'web', 'paid', 5, 5, 5)",
            "UPDATE {t} SET amount = 1, region = 'zz' WHERE true",
            "DELETE FROM {t} WHERE id % 3 = 0",
            "ROLLBACK",
        ],
    ),
    step(
        "savepoint rolled back inside a committed transaction",
        &[
            "BEGIN",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:06:00+00', 'eu', 'web', 'paid', 6, 1, 6)",
            "SAVEPOINT s",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:06:10+00', 'us', 'web', 'paid', 7, 1, 7)",
            "UPDATE {t} SET region = 'zz', created_at = created_at + interval '1 hour'",
            "DELETE FROM {t} WHERE id % 2 = 0",
            "SAVEPOINT inner_released",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:06:20+00', 'us', 'web', 'paid', 8, 1, 8)",
            "RELEASE SAVEPOINT inner_released",
            "ROLLBACK TO SAVEPOINT s",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:06:30+00', 'apac', 'app', 'paid', 9, 2, 9)",
            "SAVEPOINT s2",
            "UPDATE {t} SET quantity = quantity + 1 WHERE region = 'us'",
            "RELEASE SAVEPOINT s2",
            "COMMIT",
        ],
    ),
    step(
        "statement failing after some rows fired triggers",
        &["!INSERT INTO {t} {cols} VALUES
            ('2024-01-01 00:07:00+00', 'eu', 'web', 'paid', 1, 1, 1),
            ('2024-01-01 00:07:01+00', 'eu', 'web', 'paid', 2, 1, 1),
            (NULL, 'eu', 'web', 'paid', 3, 1, 1)"],
    ),
    step(
        "failed statement rolled back to a savepoint, transaction committed",
        &[
            "BEGIN",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:08:00+00', 'eu', 'web', 'paid', 11, 1, 1)",
            "SAVEPOINT s",
            "UPDATE {t} SET amount = amount * 2 WHERE region = 'eu'",
            "!INSERT INTO {t} {cols} VALUES
                ('2024-01-01 00:08:01+00', 'eu', 'web', 'paid', 12, 1, 1),
                (NULL, 'eu', 'web', 'paid', 13, 1, 1)",
            "ROLLBACK TO SAVEPOINT s",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:08:02+00', 'eu', 'web', 'paid', 14, 1, 1)",
            "COMMIT",
        ],
    ),
    step(
        "rows with infinite time are not counted",
        &["INSERT INTO {t} {cols} VALUES
            ('infinity', 'eu', 'web', 'paid', 1, 1, 1),
            ('-infinity', 'us', 'app', 'paid', 2, 2, 2)"],
    ),
    step(
        "rows moving between infinite and finite time",
        &[
            "UPDATE {t} SET created_at = '2024-01-01 00:03:00+00' WHERE created_at = 'infinity'",
            "UPDATE {t} SET created_at = 'infinity' WHERE id = (SELECT min(id) FROM {t} WHERE isfinite(created_at))",
        ],
    ),
    Step {
        label: "partition created after the KPI",
        only: Some("orders_p"),
        statements: &[
            "CREATE TABLE orders_p3 PARTITION OF orders_p
                FOR VALUES FROM ('2024-01-01 02:00:00+00') TO ('2024-01-01 03:00:00+00')",
            "INSERT INTO orders_p {cols} VALUES
                ('2024-01-01 02:10:00+00', 'eu', 'web', 'paid', 21, 1, 1),
                ('2024-01-01 02:11:00+00', 'eu', 'web', 'paid', 22, 1, 1)",
            "UPDATE orders_p SET created_at = '2024-01-01 02:30:00+00' WHERE id % 4 = 1",
        ],
    },
    Step {
        label: "TRUNCATE of one partition",
        only: Some("orders_p"),
        statements: &["TRUNCATE orders_p1"],
    },
    step(
        "TRUNCATE rolled back",
        &[
            "BEGIN",
            "TRUNCATE {t}",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:09:00+00', 'eu', 'web', 'paid', 1, 1, 1)",
            "ROLLBACK",
        ],
    ),
    step("kpi.fold()", &["SELECT kpi.fold()"]),
    step(
        "TRUNCATE committed, with inserts before and after it in the transaction",
        &[
            "BEGIN",
            "INSERT INTO {t} {cols} VALUES ('2024-01-01 00:10:00+00', 'eu', 'web', 'paid', 1, 1, 1)",
            "TRUNCATE {t}",
            "INSERT INTO {t} {cols} VALUES
                ('2024-01-01 00:10:00+00', 'eu', 'web', 'paid', 3, 1, 1),
                ('2024-01-01 00:11:00+00', 'us', 'app', 'paid', 4, 2, 2)",
            "COMMIT",
        ],
    ),
    step(
        "writes after the TRUNCATE",
        &[
            "INSERT INTO {t} {cols}
                SELECT '2024-01-01 00:00:00+00'::timestamptz + g * interval '41 seconds',
                       (ARRAY['eu', 'us'])[1 + g % 2], 'web', 'paid', g, 1, g
                  FROM generate_series(1, 100) g",
            "DELETE FROM {t} WHERE amount > 90",
            "UPDATE {t} SET amount = amount - 50 WHERE amount > 60",
        ],
    ),
    step("kpi.fold() again", &["SELECT kpi.fold()"]),
    step("DELETE of every row", &["DELETE FROM {t}"]),
    step("final kpi.fold()", &["SELECT kpi.fold()"]),
];

/// A deterministic scenario, one write path per step, compared after every step: when
/// something is wrong, the failing step names the SQL that breaks it.
#[test]
fn scripted_steps_keep_views_exact() {
    let cluster = Cluster::start();
    scripted_steps(&cluster);
}

/// The same scenario with no fold worker (pg_kpi not preloaded): every check between the
/// explicit `kpi.fold()` steps reads the folded state merged with the pending deltas at
/// read time, and sketch groups dirtied by UPDATE and DELETE are rebuilt by the reader,
/// not by a fold that happened to run first.
#[test]
fn scripted_steps_keep_views_exact_without_the_fold_worker() {
    let cluster = Cluster::start_with(ClusterOptions {
        preload: false,
        ..ClusterOptions::default()
    });
    assert_eq!(cluster.fold_worker_pid(), None, "a fold worker is running");
    scripted_steps(&cluster);
}

fn scripted_steps(cluster: &Cluster) {
    let mut client = cluster.connect();
    schema::create_orders_tables(&mut client);
    let tables = ["orders", "orders_p"];
    for table in tables {
        let sql = BACKFILL[0].replace("{t}", table).replace("{cols}", COLS);
        client.batch_execute(&sql).expect("backfill rows");
    }
    let kpis = all_kpis();
    for kpi in &kpis {
        kpi.create(&mut client);
    }
    let mut failures = Vec::new();
    if let Err(diff) = oracle::check_all(&mut client, &kpis) {
        failures.push(format!("after backfill of:\n  {}\n{diff}", BACKFILL[0]));
    }
    failures.extend(run_steps(&mut client, &kpis, &tables, STEPS));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `timestamp` time columns are read as UTC and `date` ones as midnight UTC; NULL and
/// infinite times are not counted.
#[test]
fn timestamp_and_date_time_columns() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    client
        .batch_execute(
            "CREATE TABLE events (id serial PRIMARY KEY, ts timestamp, d date, kind text, v numeric);
             INSERT INTO events (ts, d, kind, v) VALUES
               ('2024-01-01 00:10', '2024-01-01', 'a', 1),
               ('2024-01-01 00:50', '2024-01-02', 'b', 2.5),
               (NULL, NULL, 'a', 4)",
        )
        .expect("events table");
    let kpis = vec![
        KpiSpec {
            name: "ev_ts".to_string(),
            source: "events".to_string(),
            time_column: "ts".to_string(),
            time_type: TimeType::Timestamp,
            measures: vec![
                Measure::count_star("n"),
                Measure::new("total", Kind::Sum, "v"),
                Measure::new("top", Kind::Max, "v"),
            ],
            dimensions: vec!["kind".to_string()],
            filter: None,
            bucket: "1 hour".to_string(),
        },
        KpiSpec {
            name: "ev_d".to_string(),
            source: "events".to_string(),
            time_column: "d".to_string(),
            time_type: TimeType::Date,
            measures: vec![
                Measure::count_star("n"),
                Measure::new("total", Kind::Sum, "v"),
            ],
            dimensions: vec![],
            filter: Some("v > 0".to_string()),
            bucket: "1 day".to_string(),
        },
    ];
    for kpi in &kpis {
        kpi.create(&mut client);
    }
    let steps = [
        step("backfill", &[]),
        step(
            "inserts",
            &["INSERT INTO events (ts, d, kind, v)
                SELECT '2024-01-01'::timestamp + g * interval '7 minutes', '2024-01-01'::date + g % 3,
                       (ARRAY['a', 'b', NULL])[1 + g % 3], g * 0.5 - 3
                  FROM generate_series(1, 100) g",
              "INSERT INTO events (ts, d, kind, v) VALUES
                ('infinity', 'infinity', 'a', 1), ('-infinity', '-infinity', 'b', 1), (NULL, NULL, 'a', 1)"],
        ),
        step(
            "updates and deletes",
            &[
                "UPDATE events SET ts = ts + interval '45 minutes', d = d + 1 WHERE id % 3 = 0",
                "UPDATE events SET ts = '2024-01-01 05:00', d = '2024-01-05' WHERE ts IS NULL OR NOT isfinite(ts)",
                "UPDATE events SET ts = NULL WHERE id % 10 = 1",
                "DELETE FROM events WHERE id % 4 = 0",
            ],
        ),
        step("kpi.fold()", &["SELECT kpi.fold()"]),
    ];
    let failures = run_steps(&mut client, &kpis, &["events"], &steps);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
