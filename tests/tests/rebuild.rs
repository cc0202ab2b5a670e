//! `kpi.rebuild` and `kpi.alter` against a real cluster: rebuilt and altered KPIs equal
//! a recomputation of their (new) definition after concurrent INSERT/UPDATE/DELETE from
//! several sessions during the build; bad input is refused with SQLSTATE, message and
//! hint and leaves the KPI as it was; an interrupted rebuild leaves the old KPI exact and
//! what it left is removed by the next rebuild or a drop; progress is reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_kpi_e2e::oracle::{self, assert_exact};
use pg_kpi_e2e::postgres::fallible_iterator::FallibleIterator;
use pg_kpi_e2e::postgres::{self, Client};
use pg_kpi_e2e::schema::{self, Kind, KpiSpec, Measure, TimeType};
use pg_kpi_e2e::workload::{self, OrderRow};
use pg_kpi_e2e::{describe_error, wait_for, Cluster};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Writers on `orders` and `orders_p` until the returned flag is set; join the handle
/// for their reports.
fn start_writers(
    cluster: &Cluster,
    sessions: u64,
) -> (
    Arc<AtomicBool>,
    std::thread::JoinHandle<Vec<workload::Report>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let configs: Vec<workload::Config> = (0..sessions)
        .map(|i| workload::Config {
            stop: Some(Arc::clone(&stop)),
            pause: Duration::from_millis(2),
            ..workload::Config::new(7000 + i, 100_000)
        })
        .collect();
    let url = cluster.url();
    let handle = std::thread::spawn(move || workload::run_concurrently(&url, &configs));
    (stop, handle)
}

fn stop_writers(
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<workload::Report>>,
) -> Vec<workload::Report> {
    stop.store(true, Ordering::SeqCst);
    let reports = handle.join().expect("writers");
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "session {i}: {} committed, {} rolled back, {} retried",
            r.committed, r.rolled_back, r.retried
        );
    }
    workload::assert_no_errors(&reports);
    assert!(
        reports.iter().all(|r| r.committed > 0),
        "every writer committed something during the rebuilds"
    );
    reports
}

fn seed(client: &mut Client, rows_per_table: usize) {
    let mut rng = StdRng::seed_from_u64(16);
    for table in ["orders", "orders_p"] {
        let rows: Vec<OrderRow> = (0..rows_per_table)
            .map(|_| OrderRow::random(&mut rng))
            .collect();
        workload::copy_rows(client, table, &rows).expect("seed rows");
    }
}

/// Indexes the sources on their time column, as docs/architecture.md advises for large
/// sources. With writers deleting and updating, a read of a view rescans the min/max
/// groups that lost rows until the next fold; without the index each of those rescans
/// scans the whole source (minutes per oracle check at 400,000 rows).
fn index_time(client: &mut Client) {
    call(
        client,
        "CREATE INDEX ON orders (created_at); CREATE INDEX ON orders_p (created_at)",
    );
}

fn call(client: &mut Client, sql: &str) {
    if let Err(e) = client.batch_execute(sql) {
        panic!("{sql}\nfailed: {}", describe_error(&e));
    }
}

/// The SQLSTATE, message and hint of the error `sql` must raise.
fn refused(client: &mut Client, sql: &str) -> (String, String, String) {
    match client.batch_execute(sql) {
        Ok(()) => panic!("{sql} succeeded"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a server error: {e}"));
            let hint = db.hint().unwrap_or_default().to_string();
            assert!(!hint.is_empty(), "{sql}: no hint ({})", db.message());
            (db.code().code().to_string(), db.message().to_string(), hint)
        }
    }
}

fn version(client: &mut Client, name: &str) -> i64 {
    client
        .query_one("SELECT version FROM kpi.list() WHERE name = $1", &[&name])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("version of {name}: {}", describe_error(&e)))
}

/// Nothing a rebuild left: no hidden definition, no rebuild row, no stray tables.
fn assert_clean(client: &mut Client, kpis: usize) {
    let hidden: i64 = client
        .query_one(
            "SELECT count(*) FROM kpi.definitions WHERE strpos(name, '#') > 0",
            &[],
        )
        .expect("hidden definitions")
        .get(0);
    assert_eq!(hidden, 0, "hidden definitions left");
    let rebuilds: i64 = client
        .query_one("SELECT count(*) FROM kpi.rebuild_status", &[])
        .expect("rebuild status")
        .get(0);
    assert_eq!(rebuilds, 0, "rebuilds listed in kpi.rebuild_status");
    let listed: i64 = client
        .query_one("SELECT count(*) FROM kpi.list()", &[])
        .expect("list")
        .get(0);
    assert_eq!(listed as usize, kpis, "kpi.list()");
    // Each KPI's tables are named after its id: only the current ids' may remain once
    // the fold worker dropped what the swaps retired (no snapshot reads them now).
    wait_for(Duration::from_secs(30), "retired tables dropped", || {
        (stray_tables(client) == 0).then_some(())
    });
}

/// Aggregate tables, state views and samples tables of no KPI.
fn stray_tables(client: &mut Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'kpi' AND c.relname ~ '^_(agg|state|samples)_[0-9]+'
                AND substring(c.relname FROM '^_[a-z]+_([0-9]+)')::int NOT IN (SELECT id FROM kpi.definitions)",
            &[],
        )
        .expect("stray tables")
        .get(0)
}

/// Every KPI kind (min/max, count_distinct and percentiles included), rebuilt one after
/// the other while four sessions INSERT, UPDATE and DELETE on both sources; each equals
/// the recomputation after, before and after a fold; versions go up; nothing is left.
#[test]
fn rebuild_under_concurrent_writes_matches_the_oracle() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    schema::create_orders_tables(&mut client);
    index_time(&mut client);
    seed(&mut client, 3000);
    let mut kpis = schema::orders_kpis();
    kpis.extend(schema::sketch_kpis());
    for kpi in &kpis {
        kpi.create(&mut client);
    }
    assert_exact(&mut client, &kpis, "after create");
    let before: Vec<i64> = kpis.iter().map(|k| version(&mut client, &k.name)).collect();

    let (stop, writers) = start_writers(&cluster, 4);
    std::thread::sleep(Duration::from_millis(300));
    let mut rebuilder = cluster.connect();
    for round in 0..2 {
        for kpi in &kpis {
            let t = Instant::now();
            call(&mut rebuilder, &format!("CALL kpi.rebuild('{}')", kpi.name));
            eprintln!(
                "round {round}: rebuilt {} in {:.0} ms",
                kpi.name,
                t.elapsed().as_secs_f64() * 1000.0
            );
        }
        // Mid-run: exact while the writers go on.
        if let Err(diff) = oracle::check_all(&mut client, &kpis) {
            panic!("during the writes, after rebuild round {round}:\n{diff}");
        }
    }
    stop_writers(stop, writers);
    assert_exact(&mut client, &kpis, "after the rebuilds, before kpi.fold()");
    oracle::fold(&mut client).expect("fold");
    assert_exact(&mut client, &kpis, "after the rebuilds and kpi.fold()");
    for (kpi, v) in kpis.iter().zip(before) {
        let now = version(&mut client, &kpi.name);
        assert!(now > v, "{}: version {v} -> {now}", kpi.name);
    }
    assert_clean(&mut client, kpis.len());
}

fn checkout_like(
    measures: Vec<Measure>,
    dims: &[&str],
    filter: Option<&str>,
    bucket: &str,
) -> KpiSpec {
    KpiSpec {
        name: "checkout".to_string(),
        source: "orders".to_string(),
        time_column: "created_at".to_string(),
        time_type: TimeType::Timestamptz,
        measures,
        dimensions: dims.iter().map(|d| d.to_string()).collect(),
        filter: filter.map(str::to_string),
        bucket: bucket.to_string(),
    }
}

/// kpi.alter changes the measures, the filter, the bucket and the dimensions while
/// writers write; after each, the KPI equals a recomputation of the new definition.
/// Grants on the view and alert rules are kept; listeners are told to reload.
#[test]
fn alter_changes_the_definition_under_writes() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    schema::create_orders_tables(&mut client);
    index_time(&mut client);
    seed(&mut client, 2000);
    let kpis = schema::orders_kpis();
    for kpi in &kpis {
        kpi.create(&mut client);
    }
    call(
        &mut client,
        "CREATE ROLE dashboard LOGIN;
         GRANT SELECT ON kpi.checkout TO dashboard;
         SELECT kpi.create_alert(name => 'many_orders', kpi => 'checkout', condition => 'orders > 1000000');",
    );
    let mut listener = cluster.connect();
    listener
        .batch_execute("LISTEN kpi_changes")
        .expect("listen");

    let (stop, writers) = start_writers(&cluster, 3);
    std::thread::sleep(Duration::from_millis(300));
    let mut alterer = cluster.connect();
    let steps: Vec<(&str, KpiSpec)> = vec![
        (
            "CALL kpi.alter('checkout', measures => 'orders = count(*), revenue = sum(amount * quantity), slowest = max(latency_ms), paid = count(amount)')",
            checkout_like(
                vec![
                    Measure::count_star("orders"),
                    Measure::new("revenue", Kind::Sum, "amount * quantity"),
                    Measure::new("slowest", Kind::Max, "latency_ms"),
                    Measure::new("paid", Kind::Count, "amount"),
                ],
                &["region", "channel"],
                Some("status <> 'cancelled'"),
                "1 minute",
            ),
        ),
        (
            "CALL kpi.alter('checkout', filter => $$status = 'paid'$$, bucket => '5 minutes')",
            checkout_like(
                vec![
                    Measure::count_star("orders"),
                    Measure::new("revenue", Kind::Sum, "amount * quantity"),
                    Measure::new("slowest", Kind::Max, "latency_ms"),
                    Measure::new("paid", Kind::Count, "amount"),
                ],
                &["region", "channel"],
                Some("status = 'paid'"),
                "5 minutes",
            ),
        ),
        (
            "CALL kpi.alter('checkout', dimensions => '{channel}', filter => '', measures => 'orders = count(*), aov = avg(amount), lo = min(amount)')",
            checkout_like(
                vec![
                    Measure::count_star("orders"),
                    Measure::new("aov", Kind::Avg, "amount"),
                    Measure::new("lo", Kind::Min, "amount"),
                ],
                &["channel"],
                None,
                "5 minutes",
            ),
        ),
    ];
    for (sql, spec) in &steps {
        let v = version(&mut client, "checkout");
        call(&mut alterer, sql);
        assert!(
            version(&mut client, "checkout") > v,
            "{sql}: version not raised"
        );
        if let Err(diff) = oracle::check(&mut client, spec) {
            panic!("during the writes, after {sql}:\n{diff}");
        }
    }
    stop_writers(stop, writers);
    let last = &steps.last().expect("steps").1;
    let mut all: Vec<KpiSpec> = kpis
        .iter()
        .filter(|k| k.name != "checkout")
        .cloned()
        .collect();
    all.push(last.clone());
    assert_exact(&mut client, &all, "after the alters");
    oracle::fold(&mut client).expect("fold");
    assert_exact(&mut client, &all, "after the alters and kpi.fold()");
    let listed: (String, Vec<String>, Option<String>) = client
        .query_one(
            "SELECT bucket::text, dimensions, filter FROM kpi.list() WHERE name = 'checkout'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .expect("list");
    assert_eq!(
        listed,
        ("00:05:00".to_string(), vec!["channel".to_string()], None)
    );

    // The grant survived, as did the alert (on the new definition).
    let granted: bool = client
        .query_one(
            "SELECT has_table_privilege('dashboard', 'kpi.checkout', 'SELECT')",
            &[],
        )
        .expect("grant")
        .get(0);
    assert!(granted, "the dashboard role lost SELECT on kpi.checkout");
    let alert_kpi: String = client
        .query_one(
            "SELECT kpi FROM kpi.alerts WHERE alert = 'many_orders'",
            &[],
        )
        .expect("alert")
        .get(0);
    assert_eq!(alert_kpi, "checkout");
    client
        .batch_execute("SELECT kpi.evaluate_alerts()")
        .expect("the moved alert evaluates");

    // Listeners were told to reload (the definition changed), never about the hidden one.
    let mut reloads = 0;
    // The client reads notifications off the wire only while it runs a statement.
    listener.batch_execute("SELECT 1").expect("poll");
    let received: Vec<_> = listener
        .notifications()
        .iter()
        .collect()
        .expect("notifications");
    for n in received {
        assert!(
            !n.payload().contains('#'),
            "hidden name announced: {}",
            n.payload()
        );
        if n.payload().contains("\"overflow\":true") {
            reloads += 1;
        }
    }
    assert!(reloads >= steps.len(), "{reloads} reload notifications");
    assert_clean(&mut client, kpis.len());
}

/// Bad input: each refused with SQLSTATE, message and hint, the KPI left working with
/// its values and definition unchanged, nothing half-created.
#[test]
fn bad_input_is_refused_and_keeps_the_old_kpi() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    index_time(&mut client);
    seed(&mut client, 500);
    client
        .batch_execute(
            "SELECT kpi.create_alert(name => 'slow', kpi => 'checkout', condition => 'hi > 100')",
        )
        .expect("alert");
    let definition = |c: &mut Client| -> String {
        c.query_one(
            "SELECT row(l.*)::text FROM kpi.list() l WHERE name = 'checkout'",
            &[],
        )
        .expect("list")
        .get(0)
    };
    let before = definition(&mut client);
    let cases: &[(&str, &str)] = &[
        ("CALL kpi.rebuild('nope')", "42704"),
        ("CALL kpi.alter('nope', bucket => '1 hour')", "42704"),
        (
            "CALL kpi.alter('checkout', measures => 'x = sum(no_such_column)')",
            "42703",
        ),
        (
            "CALL kpi.alter('checkout', measures => 'x = median(amount)')",
            "22023",
        ),
        (
            "CALL kpi.alter('checkout', measures => 'x = sum(region)')",
            "42804",
        ),
        ("CALL kpi.alter('checkout', filter => 'amount')", "42804"),
        (
            "CALL kpi.alter('checkout', filter => '(SELECT true)')",
            "0A000",
        ),
        ("CALL kpi.alter('checkout', bucket => '1 month')", "22023"),
        ("CALL kpi.alter('checkout', bucket => '-1 minute')", "22023"),
        (
            "CALL kpi.alter('checkout', retention => '1 second')",
            "22023",
        ),
        (
            "CALL kpi.alter('checkout', dimensions => '{region,region}')",
            "42701",
        ),
        (
            "CALL kpi.alter('checkout', dimensions => '{nowhere}')",
            "42703",
        ),
        (
            "CALL kpi.alter('checkout', rollups => '{\"90 seconds\": null}')",
            "22023",
        ),
        (
            "CALL kpi.alter('checkout', time_column => 'region')",
            "42804",
        ),
        // The alert reads hi: dropping that measure would break it.
        (
            "CALL kpi.alter('checkout', measures => 'orders = count(*)')",
            "2BP01",
        ),
        ("BEGIN; CALL kpi.rebuild('checkout')", "25001"),
    ];
    for (sql, code) in cases {
        let (got, message, hint) = refused(&mut client, sql);
        eprintln!("{sql}: {got} {message} (hint: {hint})");
        assert_eq!(&got, code, "{sql}: {message}");
        let _ = client.batch_execute("ROLLBACK");
        assert_eq!(
            definition(&mut client),
            before,
            "{sql} changed the definition"
        );
        assert_clean(&mut client, kpis.len());
    }
    // Called from a function, CALL runs atomically and cannot commit: refused too.
    call(
        &mut client,
        "CREATE FUNCTION rebuild_in_a_function() RETURNS void LANGUAGE plpgsql AS
         $$ BEGIN CALL kpi.rebuild('checkout'); END $$",
    );
    let (code, message, _) = refused(&mut client, "SELECT rebuild_in_a_function()");
    assert_eq!(code, "2D000", "{message}");
    assert_eq!(definition(&mut client), before);
    assert_clean(&mut client, kpis.len());
    // The old KPI still works: exact, written to, read by every function.
    let rows: Vec<OrderRow> = (0..50)
        .map(|_| OrderRow::random(&mut StdRng::seed_from_u64(3)))
        .collect();
    workload::copy_rows(&mut client, "orders", &rows).expect("more rows");
    assert_exact(&mut client, &kpis, "after the refused alters");
    client
        .batch_execute("SELECT kpi.snapshot('checkout'); SELECT * FROM kpi.top('checkout', 'orders', 'region', '100 years')")
        .expect("reads");
    assert_clean(&mut client, kpis.len());
    // A current-state or overdue KPI has no time column or bucket of its own to change
    // (oracle_state.rs rebuilds and alters them otherwise): refused, and left as it was.
    call(
        &mut client,
        "SELECT kpi.create_state('by_status', 'orders', 'n = count(*)', dimensions => '{status}');
         SELECT kpi.create_overdue('late', 'orders', due => $$created_at + interval '1 hour'$$,
                                   open_filter => $$status <> 'cancelled'$$)",
    );
    let state_exact = |c: &mut Client| -> bool {
        c.query_one(
            "SELECT (SELECT sum(n) FROM kpi.by_status)::bigint = (SELECT count(*) FROM orders)
                AND (SELECT count(*) FROM kpi.definition_kinds) = 2",
            &[],
        )
        .expect("state read")
        .get(0)
    };
    assert!(state_exact(&mut client));
    for sql in [
        "CALL kpi.alter('by_status', bucket => '1 hour')",
        "CALL kpi.alter('late', time_column => 'created_at')",
        "CALL kpi.alter('by_status', retention => '1 day')",
    ] {
        let (code, message, hint) = refused(&mut client, sql);
        assert_eq!(code, "0A000", "{sql}: {message}");
        assert!(hint.contains("drop the KPI"), "{sql}: {hint}");
        assert!(state_exact(&mut client), "{sql} changed the KPIs");
    }
    call(&mut client, "CALL kpi.rebuild('by_status')");
    assert!(state_exact(&mut client), "the rebuild of by_status");
}

/// Fills `orders` with `n` rows over two hours (several per minute and region).
fn fill(client: &mut Client, n: i64) {
    call(
        client,
        &format!(
            "INSERT INTO orders (created_at, region, channel, status, amount, quantity, latency_ms)
             SELECT timestamptz '2024-01-01 00:00:00+00' + (i % 7200) * interval '1 second',
                    (ARRAY['eu','us','apac'])[1 + i % 3], (ARRAY['web','app'])[1 + i % 2],
                    CASE WHEN i % 10 = 0 THEN 'cancelled' ELSE 'paid' END,
                    (i % 1000) / 10.0, 1 + i % 5, (i % 997) * 0.5
               FROM generate_series(1, {n}) i; ANALYZE orders"
        ),
    );
}

/// A rebuild cancelled during its build (pg_cancel_backend) leaves the old KPI exact
/// and a hidden definition shown by kpi.rebuild_status as not running; the next rebuild
/// removes it and succeeds; kpi.drop removes one too. Progress NOTICEs come meanwhile.
#[test]
fn interrupted_rebuild_leaves_the_old_kpi_exact() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    index_time(&mut client);
    fill(&mut client, 400_000);
    assert_exact(&mut client, &kpis, "after the fill");

    let (stop, writers) = start_writers(&cluster, 2);
    for attempt in 0..2 {
        let (mut victim, notices) = cluster.connect_with_notices();
        victim
            .batch_execute("SET pg_kpi.rebuild_progress_ms = 10")
            .expect("set");
        let pid: i32 = victim
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("pid")
            .get(0);
        let call = std::thread::spawn(move || victim.batch_execute("CALL kpi.rebuild('checkout')"));
        // Cancel once the build has started scanning (its first NOTICE).
        wait_for(Duration::from_secs(60), "the build's first notice", || {
            let seen = notices
                .lock()
                .expect("notices")
                .iter()
                .any(|n| n.message().contains("scanning"));
            seen.then_some(())
        });
        client
            .query_one("SELECT pg_cancel_backend($1)", &[&pid])
            .expect("cancel");
        let result = call.join().expect("call thread");
        let err = result.expect_err("the cancelled rebuild failed");
        let code = err.code().map(|c| c.code().to_string());
        // Cancelled in the build: the swap never ran, so the old KPI is in place.
        assert_eq!(code.as_deref(), Some("57014"), "{}", describe_error(&err));
        let status: (String, bool) = client
            .query_one("SELECT kpi, running FROM kpi.rebuild_status", &[])
            .map(|r| (r.get(0), r.get(1)))
            .expect("the interrupted rebuild is listed");
        assert_eq!(status, ("checkout".to_string(), false));
        if let Err(diff) = oracle::check_all(&mut client, &kpis) {
            panic!("after the cancelled rebuild {attempt}:\n{diff}");
        }
        let names: Vec<String> = client
            .query("SELECT name FROM kpi.list()", &[])
            .expect("list")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(names.iter().all(|n| !n.contains('#')), "{names:?}");
        let hidden = client.batch_execute("SELECT kpi.value('checkout#rebuild', 'orders')");
        assert_eq!(
            hidden
                .err()
                .and_then(|e| e.code().map(|c| c.code().to_string()))
                .as_deref(),
            Some("42704"),
            "the hidden definition is nobody's KPI"
        );
        if attempt == 0 {
            // The next rebuild removes what was left and succeeds, with progress.
            let (mut c, notices) = cluster.connect_with_notices();
            call_with_progress(&mut c, &notices);
            assert_clean(&mut client, kpis.len());
        }
    }
    stop_writers(stop, writers);
    assert_exact(&mut client, &kpis, "after the writers");
    // kpi.drop removes the second interrupted rebuild's leftovers with the KPI.
    call(&mut client, "SELECT kpi.drop('checkout')");
    assert_clean(&mut client, kpis.len() - 1);
}

fn call_with_progress(client: &mut Client, notices: &pg_kpi_e2e::Notices) {
    client
        .batch_execute("SET pg_kpi.rebuild_progress_ms = 10")
        .expect("set");
    let t = Instant::now();
    call(client, "CALL kpi.rebuild('checkout')");
    let seen: Vec<String> = notices
        .lock()
        .expect("notices")
        .iter()
        .map(|n: &postgres::error::DbError| n.message().to_string())
        .collect();
    eprintln!(
        "rebuild in {:.2} s, notices:\n{}",
        t.elapsed().as_secs_f64(),
        seen.join("\n")
    );
    assert!(seen.iter().any(|n| n.contains("scanning")), "{seen:?}");
    assert!(
        seen.iter()
            .filter(|n| n.contains("% of the source scanned"))
            .count()
            >= 3,
        "progress notices: {seen:?}"
    );
    assert!(seen.iter().any(|n| n.contains("100 %")), "{seen:?}");
}

/// A transaction whose snapshot predates a swap keeps reading the KPI through it (the
/// old tables are retired, not dropped), and the swap does not wait for it; the retired
/// tables are dropped once that transaction ends, and a new snapshot reads the rebuilt
/// KPI with the rows added meanwhile.
#[test]
fn a_reader_in_an_older_snapshot_reads_through_the_swap() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    fill(&mut client, 2_000);
    let total = |c: &mut postgres::Transaction<'_>| -> i64 {
        c.query_one(
            "SELECT sum(value)::bigint FROM kpi.series('checkout', 'orders',
                    '2024-01-01 00:00:00+00', '2024-01-01 03:00:00+00', '1 hour')",
            &[],
        )
        .unwrap_or_else(|e| panic!("series: {}", describe_error(&e)))
        .get(0)
    };
    let mut reader = cluster.connect();
    let mut tx = reader
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()
        .expect("begin");
    let before = total(&mut tx);
    fill(&mut client, 500);
    let mut rebuilder = cluster.connect();
    call(&mut rebuilder, "CALL kpi.rebuild('checkout')");
    // Its snapshot still sees the old definition, whose tables must still be there.
    assert_eq!(total(&mut tx), before, "the old snapshot's value");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        stray_tables(&mut client) > 0,
        "the retired tables were dropped while a snapshot could still read them"
    );
    tx.commit().expect("commit");
    assert_clean(&mut client, kpis.len());
    let mut tx = reader.transaction().expect("begin");
    let after = total(&mut tx);
    let cancelled = |n: i64| n - n / 10;
    assert_eq!(
        (before, after),
        (cancelled(2_000), cancelled(2_000) + cancelled(500)),
        "paid orders before and after"
    );
    tx.commit().expect("commit");
    assert_exact(&mut client, &kpis, "after the swap");
}
