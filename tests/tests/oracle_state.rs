//! The correctness oracle for current-state and overdue KPIs (docs/current-state.md):
//! under concurrent INSERTs, UPDATEs moving rows between stages, closes, DELETEs,
//! savepoint rollbacks and a TRUNCATE, every KPI equals a recomputation over its source
//! in the same statement (so at the same `now()` for the overdue KPI), while the writes
//! run, after they finish, and after a fold; then deadlines pass with no write at all
//! and the overdue KPI, folded by the worker, still equals `count(*) … WHERE due <
//! now() AND open`, with its version bumped by the deadlines alone. Derived measures
//! (a per-stage average within a current-state KPI, a ratio within a bucketed KPI) and
//! a derived KPI across two KPIs, and a funnel over them, equal the same formula
//! computed over the source in the same statement. A rebuilder session rebuilds each
//! kind of KPI in turn while the writers write (each check must still hold), and after
//! the fold `kpi.alter` changes their measures and dimensions: kinds and a current-state
//! KPI's history are kept, and changes that only a bucketed KPI can take are refused.

use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::{describe_error, wait_for, Cluster};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STAGES: [&str; 5] = ["new", "picking", "packed", "shipped", "done"];

/// Deadlines are 20 s after creation; rows are created from 40 s ago to 10 s ahead,
/// so deadlines keep passing while the test runs.
const DUE: &str = "created_at + interval '20 seconds'";

fn setup(client: &mut Client) {
    client
        .batch_execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, status text NOT NULL, sku text NOT NULL,
                                 warehouse text NOT NULL, quantity int NOT NULL,
                                 created_at timestamptz NOT NULL, closed boolean NOT NULL DEFAULT false);
             INSERT INTO items (status, sku, warehouse, quantity, created_at)
             SELECT (ARRAY['new','picking','packed','shipped','done'])[1 + g % 5], 'sku' || (g % 7),
                    'wh' || (g % 3), g % 11, now() + (g % 50 - 40) * interval '1 second'
               FROM generate_series(1, 300) g;
             SELECT kpi.create_state(name => 'by_status', source => 'items',
                    measures => 'n = count(*), units = sum(quantity), per_item = units / n',
                    dimensions => '{status}', resolution => '1 second');
             SELECT kpi.create_state(name => 'stock', source => 'items',
                    measures => 'units = sum(quantity)', dimensions => '{sku, warehouse}');
             SELECT kpi.create_state(name => 'open_count', source => 'items',
                    measures => 'n = count(*)', filter => $$status <> 'done'$$);
             SELECT kpi.create(name => 'made', source => 'items', time_column => 'created_at',
                    measures => 'n = count(*), units = sum(quantity), per_item = units / n');
             SELECT kpi.create(name => 'made_open', source => 'items', time_column => 'created_at',
                    measures => 'n = count(*)', filter => 'NOT closed');
             SELECT kpi.create_derived('open_share', 'made_open.n / made.n');",
        )
        .unwrap_or_else(|e| panic!("setup: {}", describe_error(&e)));
    client
        .batch_execute(&format!(
            "SELECT kpi.create_overdue(name => 'late', source => 'items', due => $${DUE}$$,
                    open_filter => 'NOT closed', dimensions => '{{warehouse}}')"
        ))
        .unwrap_or_else(|e| panic!("create_overdue: {}", describe_error(&e)));
}

/// Compares every KPI with its recomputation in one statement (one snapshot, one
/// `now()`); returns a description of each difference.
fn check(client: &mut Client) -> Result<(), String> {
    let both_ways = |kpi: &str, truth: &str| {
        format!(
            "(SELECT count(*) FROM ((SELECT * FROM ({kpi}) a EXCEPT ALL SELECT * FROM ({truth}) b)
                                     UNION ALL (SELECT * FROM ({truth}) c EXCEPT ALL SELECT * FROM ({kpi}) d)) x)"
        )
    };
    let open_due = format!("FROM items WHERE {DUE} < now() AND NOT closed");
    // The buckets `kpi.value(…, '1 hour')` reads: from the minute an hour ago to the end
    // of the current one.
    let last_hour = "FROM items WHERE created_at >= date_bin('1 minute', now() - interval '1 hour', '2000-01-01 00:00:00+00')
                       AND created_at < date_bin('1 minute', now(), '2000-01-01 00:00:00+00') + interval '1 minute'";
    // Derived measures and KPIs: the formula over the same rows' merged values.
    let dm = format!(
        "(round(kpi.value('made', 'per_item', '1 hour'), 12)
            IS DISTINCT FROM (SELECT round(sum(quantity)::numeric / nullif(count(*), 0), 12) {last_hour}))::int::bigint"
    );
    let share = format!(
        "(SELECT round(count(*) FILTER (WHERE NOT closed)::numeric / nullif(count(*), 0), 12) {last_hour})"
    );
    let dx = format!(
        "(round(kpi.value('open_share', 'value', '1 hour'), 12) IS DISTINCT FROM {share})::int::bigint"
    );
    let f = format!(
        "(SELECT (round(from_first, 12) IS DISTINCT FROM {share})::int::bigint
            FROM kpi.funnel('{{made.n, made_open.n}}', '1 hour') WHERE step = 2)"
    );
    let sql = format!(
        "SELECT {s}, {k}, {o}::bigint, {l}, {lw}, {v}, {t}, {ds}, {dm}, {dx}, {f}, kpi.value('late', 'overdue')::bigint, (SELECT count(*) {open_due})",
        s = both_ways(
            "SELECT status, n, units FROM kpi.by_status",
            "SELECT status, count(*), sum(quantity)::numeric FROM items GROUP BY status"
        ),
        k = both_ways(
            "SELECT sku, warehouse, units FROM kpi.stock",
            "SELECT sku, warehouse, sum(quantity)::numeric FROM items GROUP BY 1, 2"
        ),
        o = "(kpi.value('open_count', 'n') - (SELECT count(*) FROM items WHERE status <> 'done'))",
        l = "(kpi.value('late', 'overdue') IS DISTINCT FROM (SELECT count(*) FROM items WHERE created_at + interval '20 seconds' < now() AND NOT closed))::int::bigint",
        lw = both_ways(
            "SELECT dimension_value, value::bigint FROM kpi.top('late', 'overdue', 'warehouse', n => 100)",
            &format!("SELECT warehouse, count(*) {open_due} GROUP BY 1")
        ),
        // Current values through kpi.value and kpi.top too.
        v = "(kpi.value('by_status', 'n') IS DISTINCT FROM (SELECT count(*) FROM items))::int::bigint",
        t = both_ways(
            "SELECT dimension_value, value FROM kpi.top('by_status', 'units', 'status')",
            "SELECT status, sum(quantity)::numeric FROM items GROUP BY 1"
        ),
        ds = both_ways(
            "SELECT status, round(per_item, 12) FROM kpi.by_status",
            "SELECT status, round(sum(quantity)::numeric / count(*), 12) FROM items GROUP BY status"
        ),
    );
    let row = client
        .query_one(&sql, &[])
        .map_err(|e| format!("check query: {}", describe_error(&e)))?;
    let names = [
        "by_status view",
        "stock view",
        "open_count value",
        "late value",
        "late by warehouse",
        "by_status value",
        "by_status top",
        "by_status per_item (derived, per stage)",
        "made per_item (derived, last hour)",
        "open_share (derived KPI, last hour)",
        "funnel made.n -> made_open.n",
    ];
    let mut bad = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let d: i64 = row.get(i);
        if d != 0 {
            bad.push(format!("{name}: {d} differences"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        let (kpi, truth): (Option<i64>, i64) = (row.get(11), row.get(12));
        Err(format!(
            "{} (late: kpi {kpi:?}, truth {truth})",
            bad.join("; ")
        ))
    }
}

/// One writer: `n` transactions of 1–3 random changes, some rolled back to a
/// savepoint; with `truncate_at`, a TRUNCATE (and fresh rows) in that transaction.
fn writer(url: &str, seed: u64, n: usize, truncate_at: Option<usize>) -> (usize, Vec<String>) {
    let mut client = pg_kpi_e2e::workload::connect_retrying(url).expect("connect");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut committed = 0;
    let mut errors = Vec::new();
    for t in 0..n {
        let mut sqls = Vec::new();
        if truncate_at == Some(t) {
            sqls.push("TRUNCATE items".to_string());
        }
        for _ in 0..rng.random_range(1..=3) {
            let id = rng.random_range(1..=400);
            let stage = STAGES[rng.random_range(0..STAGES.len())];
            sqls.push(match rng.random_range(0..10) {
                0..=2 => format!(
                    "INSERT INTO items (status, sku, warehouse, quantity, created_at)
                     VALUES ('{stage}', 'sku{}', 'wh{}', {}, now() + interval '{} seconds')",
                    rng.random_range(0..7),
                    rng.random_range(0..3),
                    rng.random_range(0..20),
                    rng.random_range(-40..10)
                ),
                3..=4 => format!("UPDATE items SET status = '{stage}' WHERE id = (SELECT min(id) FROM items WHERE id >= {id})"),
                5 => format!("UPDATE items SET closed = NOT closed WHERE id = (SELECT max(id) FROM items WHERE id <= {id})"),
                6 => format!("UPDATE items SET quantity = quantity + 1, sku = 'sku{}' WHERE id = {id}", rng.random_range(0..7)),
                7 => format!("UPDATE items SET created_at = created_at - interval '15 seconds' WHERE id = {id}"),
                8 => format!("DELETE FROM items WHERE id = {id}"),
                _ => format!(
                    "SAVEPOINT s; UPDATE items SET status = '{stage}', closed = true WHERE id = {id}; ROLLBACK TO SAVEPOINT s"
                ),
            });
        }
        let body = format!("BEGIN; {}; COMMIT", sqls.join("; "));
        match client.batch_execute(&body) {
            Ok(()) => committed += 1,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK");
                // Two writers locking the same rows in opposite orders: Postgres picks one.
                let text = describe_error(&e);
                if !text.contains("deadlock") {
                    errors.push(text);
                }
            }
        }
    }
    (committed, errors)
}

#[test]
fn state_and_overdue_kpis_stay_exact_under_concurrent_dml() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    setup(&mut client);
    check(&mut client).expect("after backfill");

    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let url = cluster.url();
            std::thread::spawn(move || writer(&url, 7 + i, 1500, (i == 0).then_some(700)))
        })
        .collect();
    let watcher = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let results: Vec<_> = writers
                .into_iter()
                .map(|w| w.join().expect("writer"))
                .collect();
            done.store(true, Ordering::SeqCst);
            results
        })
    };
    // Rebuilds of each kind while the writers write (docs/rebuild.md): each must leave
    // its KPI equal to the recomputation, like every check around it.
    let rebuilder = {
        let done = Arc::clone(&done);
        let mut c = cluster.connect();
        std::thread::spawn(move || {
            let mut rebuilt = 0;
            for name in ["by_status", "late", "stock", "open_count"].iter().cycle() {
                if done.load(Ordering::SeqCst) || rebuilt >= 40 {
                    break;
                }
                if let Err(e) = c.batch_execute(&format!("CALL kpi.rebuild('{name}')")) {
                    panic!("rebuild of {name}: {}", describe_error(&e));
                }
                rebuilt += 1;
            }
            rebuilt
        })
    };
    let mut mid_run = Vec::new();
    let mut checks = 0;
    while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(300) {
        if let Err(e) = check(&mut client) {
            mid_run.push(e);
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(30));
    }
    let results = watcher.join().expect("watcher");
    let rebuilt = rebuilder.join().expect("rebuilder");
    let committed: usize = results.iter().map(|r| r.0).sum();
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    println!(
        "{committed} transactions committed in {:?}; {checks} checks and {rebuilt} rebuilds while writing",
        started.elapsed()
    );
    assert!(rebuilt >= 4, "only {rebuilt} rebuilds ran while writing");
    assert!(errors.is_empty(), "writer errors: {errors:?}");
    assert!(committed > 4000, "only {committed} transactions committed");
    assert!(mid_run.is_empty(), "while writing: {mid_run:?}");
    check(&mut client).expect("after the writers");
    client.batch_execute("SELECT kpi.fold()").expect("fold");
    check(&mut client).expect("after kpi.fold()");
    alter_keeps_kind_and_history(&mut client);

    // Deadlines passing, with no write: the worker's tick announces them, and the value
    // stays exact at every moment.
    client
        .batch_execute(
            "INSERT INTO items (status, sku, warehouse, quantity, created_at)
             SELECT 'new', 'sku0', 'wh0', 1, now() - interval '19 seconds' + g * interval '50 milliseconds'
               FROM generate_series(1, 20) g",
        )
        .expect("rows due within a second");
    let version = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT version FROM kpi.definitions WHERE name = 'late'",
            &[],
        )
        .expect("version")
        .get(0)
    };
    // Once the insert is folded, only deadlines can move the version.
    wait_for(Duration::from_secs(10), "the insert folded", || {
        let pending: i64 = client
            .query_one("SELECT pending_rows FROM kpi.status()", &[])
            .expect("status")
            .get(0);
        (pending == 0).then_some(())
    });
    let before = version(&mut client);
    let end = Instant::now() + Duration::from_millis(1500);
    let mut ticks = 0;
    while Instant::now() < end {
        check(&mut client).expect("while deadlines pass");
        ticks += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
    let after = version(&mut client);
    println!("version of 'late' {before} -> {after} over 1.5 s of deadlines, {ticks} checks");
    assert!(after > before, "no version bump while deadlines passed");

    // The history of a current-state KPI ends at its current value once folded.
    let row = client
        .query_one(
            "SELECT (SELECT value FROM kpi.series('by_status', 'n', now() - interval '10 seconds')
                      ORDER BY bucket DESC LIMIT 1)::bigint, (SELECT count(*) FROM items)",
            &[],
        )
        .expect("series");
    let (sampled, now): (Option<i64>, i64) = (row.get(0), row.get(1));
    assert_eq!(sampled, Some(now), "last sample vs count(*)");
}

/// `kpi.alter` of a current-state KPI's measures keeps the history of the measures it
/// keeps (in their new places) and stays exact; an overdue KPI's dimensions can change;
/// what such a KPI does not have (a time column, a bucket choice) is refused and leaves
/// it as it was.
fn alter_keeps_kind_and_history(client: &mut Client) {
    let history = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT count(value) FROM kpi.series('by_status', 'n', now() - interval '1 hour')",
            &[],
        )
        .expect("series")
        .get(0)
    };
    let before = history(client);
    assert!(
        before > 1,
        "by_status has {before} samples before the alter"
    );
    // One statement per call: CALL kpi.alter commits between its steps.
    for sql in [
        "CALL kpi.alter('by_status', measures => 'top = max(quantity), n = count(*), units = sum(quantity), per_item = units / n')",
        "CALL kpi.alter('late', dimensions => '{warehouse, sku}')",
    ] {
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", describe_error(&e)));
    }
    check(client).expect("after kpi.alter");
    let after = history(client);
    assert!(
        after >= before,
        "samples of n: {before} before the alter, {after} after"
    );
    let top: (Option<i32>, Option<i32>) = client
        .query_one(
            "SELECT (SELECT max(value)::int FROM kpi.top('by_status', 'top', 'status')),
                    (SELECT max(quantity) FROM items)",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .expect("the new measure");
    assert_eq!(top.0, top.1, "by_status.top vs max(quantity)");
    let kinds: Vec<(String, String)> = client
        .query(
            "SELECT d.name, k.kind FROM kpi.definition_kinds k JOIN kpi.definitions d ON d.id = k.kpi ORDER BY 1",
            &[],
        )
        .expect("kinds")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want = [
        ("by_status", "state"),
        ("late", "overdue"),
        ("open_count", "state"),
        ("stock", "state"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(kinds, want, "rebuilt KPIs keep their kind");
    for (sql, arg) in [
        (
            "CALL kpi.alter('late', time_column => 'created_at')",
            "time_column",
        ),
        ("CALL kpi.alter('by_status', bucket => '1 hour')", "bucket"),
        ("CALL kpi.alter('stock', retention => '1 day')", "retention"),
    ] {
        let err = client.batch_execute(sql).expect_err(sql);
        let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
        assert_eq!(db.code().code(), "0A000", "{sql}: {}", db.message());
        assert!(db.message().contains(arg), "{sql}: {}", db.message());
        assert!(
            db.hint().is_some_and(|h| h.contains("drop the KPI")),
            "{sql}: {:?}",
            db.hint()
        );
    }
    check(client).expect("after the refused alters");
}
