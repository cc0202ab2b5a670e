//! The fold worker always comes back, and says why when it cannot fold.
//!
//! What a DBA does to a busy background process (`pg_terminate_backend`, `kill -9`,
//! `DROP DATABASE … WITH (FORCE)`), what a user does in a running cluster (a new
//! database, `CREATE EXTENSION`), and what breaks a fold (a lock held behind DDL, one
//! KPI whose merge fails): after each, folds resume by themselves, `kpi_changes` is
//! notified, the values stay exact, and `kpi.status()` tells what happened.

use std::time::{Duration, Instant};

use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::{describe_error, kill, notify, wait_for, Cluster, ClusterOptions};

const SETUP: &str = "CREATE TABLE orders(ts timestamptz NOT NULL DEFAULT now(), v int);
    SELECT kpi.create(name => 'k', source => 'orders', time_column => 'ts',
                      measures => 'n = count(*), total = sum(v)');
    SELECT kpi.create(name => 'k2', source => 'orders', time_column => 'ts',
                      measures => 'n = count(*)');";

/// How soon a fold worker must be back (the bar).
const BACK_WITHIN: Duration = Duration::from_secs(2);

/// `kpi.status()` of the connection's database, as (column, text value) for messages
/// and the few columns the tests check.
#[derive(Debug)]
struct Status {
    worker_pid: Option<i32>,
    worker_state: String,
    folds: i64,
    pending_rows: i64,
    fold_lag_seconds: Option<f64>,
    last_error: Option<String>,
    failing_kpis: Vec<String>,
}

fn status(client: &mut Client) -> Status {
    let row = client
        .query_one(
            "SELECT worker_pid, worker_state, folds, pending_rows, fold_lag_seconds,
                    last_error, failing_kpis FROM kpi.status()",
            &[],
        )
        .unwrap_or_else(|e| panic!("kpi.status(): {}", describe_error(&e)));
    Status {
        worker_pid: row.get(0),
        worker_state: row.get(1),
        folds: row.get(2),
        pending_rows: row.get(3),
        fold_lag_seconds: row.get(4),
        last_error: row.get(5),
        failing_kpis: row.get(6),
    }
}

/// n of KPI `kpi` over the last hour, and the source's count, read in one statement.
fn counts(client: &mut Client, kpi: &str) -> (f64, i64) {
    let row = client
        .query_one(
            "SELECT kpi.value($1, 'n')::float8, (SELECT count(*) FROM orders)",
            &[&kpi],
        )
        .unwrap_or_else(|e| panic!("kpi.value: {}", describe_error(&e)));
    (row.get(0), row.get(1))
}

/// Waits until the worker of `db` has folded everything pending (without kpi.fold()).
fn wait_folded(client: &mut Client, what: &str) {
    wait_for(Duration::from_secs(10), what, || {
        (status(client).pending_rows == 0).then_some(())
    });
}

/// Inserts a row and waits for the `kpi_changes` notification carrying KPI `k`'s next
/// version: proof that a fold worker folded and notified it.
fn insert_and_expect_notify(client: &mut Client, listener: &mut Client, what: &str) {
    let before = notify::versions(client).get("k").copied().unwrap_or(0);
    client
        .batch_execute("INSERT INTO orders(v) VALUES (7)")
        .expect("insert");
    let mut tracker = notify::Tracker::default();
    let notified = tracker.receive_until(listener, Duration::from_secs(10), |t| {
        t.latest.get("k").is_some_and(|&v| v > before)
    });
    assert!(
        notified,
        "{what}: no kpi_changes notification for k after version {before}; got {:?}",
        tracker.changes
    );
    assert!(tracker.violations.is_empty(), "{:?}", tracker.violations);
}

/// Waits for a fold worker of `db` other than `old`; returns its pid and how long it took.
fn wait_new_worker(cluster: &Cluster, db: &str, old: i32, since: Instant) -> (i32, Duration) {
    let pid = wait_for(Duration::from_secs(10), "a new fold worker", || {
        cluster.fold_worker_pid_of(db).filter(|&p| p != old)
    });
    (pid, since.elapsed())
}

#[test]
fn terminated_worker_is_back_and_notifies() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    let mut listener = cluster.connect();
    notify::listen(&mut listener);
    let old = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });

    let killed_at = Instant::now();
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&old])
        .expect("pg_terminate_backend");
    let (new, took) = wait_new_worker(&cluster, "test", old, killed_at);
    eprintln!("fold worker {old} terminated; {new} serves after {took:?}");
    assert!(
        took < BACK_WITHIN,
        "the fold worker came back after {took:?}"
    );
    insert_and_expect_notify(&mut client, &mut listener, "after pg_terminate_backend");
    assert_eq!(status(&mut client).worker_pid, Some(new));
    assert!(
        cluster
            .server_log()
            .contains("the fold worker for database \"test\" is gone; starting it again"),
        "the launcher logs why it starts a worker again"
    );
}

#[test]
fn killed_worker_is_back_and_notifies() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let old = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    let killed_at = Instant::now();
    kill(old, "9");
    // Postgres restarts every backend after a kill -9; the launcher starts the worker.
    let (new, took) = wait_new_worker(&cluster, "test", old, killed_at);
    eprintln!("fold worker {old} killed; {new} serves after {took:?}");
    assert!(
        took < BACK_WITHIN,
        "the fold worker came back after {took:?}"
    );
    let mut client = cluster.connect();
    let mut listener = cluster.connect();
    notify::listen(&mut listener);
    insert_and_expect_notify(&mut client, &mut listener, "after kill -9");
    let (n, rows) = counts(&mut client, "k");
    assert_eq!(n, rows as f64, "k.n equals the rows after the crash");
}

#[test]
fn launcher_restart_starts_no_second_worker() {
    let cluster = Cluster::start();
    let worker = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    let launcher = cluster.launcher_pid().expect("a launcher runs");
    cluster.exec(&format!("SELECT pg_terminate_backend({launcher})"));
    wait_for(Duration::from_secs(10), "a new launcher", || {
        cluster.launcher_pid().filter(|&p| p != launcher)
    });
    // Give the new launcher a few of its scans.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        cluster.backend_pids("pg_kpi fold test"),
        vec![worker],
        "the new launcher must leave the running worker alone, and start no second one"
    );
}

#[test]
fn new_database_gets_a_worker_without_restart() {
    let cluster = Cluster::start();
    cluster.exec_in("postgres", "CREATE DATABASE shop");
    // At once, as a user does: CREATE EXTENSION right after CREATE DATABASE, while the
    // launcher may be looking at the new database.
    cluster.exec_in("shop", &format!("CREATE EXTENSION pg_kpi; {SETUP}"));
    let mut shop = cluster.connect_to("shop");
    let mut listener = cluster.connect_to("shop");
    notify::listen(&mut listener);
    insert_and_expect_notify(&mut shop, &mut listener, "a database created while running");
    let st = status(&mut shop);
    assert_eq!(st.worker_state, "running", "{st:?}");
    assert_eq!(st.worker_pid, cluster.fold_worker_pid_of("shop"), "{st:?}");
    assert!(st.folds > 0, "{st:?}");
    let (n, rows) = counts(&mut shop, "k");
    assert_eq!(n, rows as f64);
}

#[test]
fn dropped_and_recreated_database_folds_again() {
    let cluster = Cluster::start();
    cluster.exec_in("postgres", "CREATE DATABASE shop");
    cluster.exec_in("shop", &format!("CREATE EXTENSION pg_kpi; {SETUP}"));
    let first = wait_for(Duration::from_secs(10), "shop's fold worker", || {
        cluster.fold_worker_pid_of("shop")
    });
    cluster.exec_in("postgres", "DROP DATABASE shop WITH (FORCE)");
    cluster.exec_in("postgres", "CREATE DATABASE shop");
    cluster.exec_in("shop", &format!("CREATE EXTENSION pg_kpi; {SETUP}"));
    let mut shop = cluster.connect_to("shop");
    let mut listener = cluster.connect_to("shop");
    notify::listen(&mut listener);
    insert_and_expect_notify(&mut shop, &mut listener, "a re-created database");
    let second = cluster.fold_worker_pid_of("shop");
    assert!(
        second.is_some_and(|p| p != first),
        "{second:?} after {first}"
    );
    assert_eq!(
        cluster.backend_pids("pg_kpi fold shop").len(),
        1,
        "one worker for the re-created database"
    );
}

#[test]
fn dropped_extension_ends_its_worker_for_good() {
    let cluster = Cluster::start();
    let worker = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    cluster.exec("DROP EXTENSION pg_kpi");
    wait_for(Duration::from_secs(10), "the worker to leave", || {
        cluster.fold_worker_pid().is_none().then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        cluster.fold_worker_pid(),
        None,
        "no worker for a database without the extension (the first was {worker})"
    );
    cluster.exec("CREATE EXTENSION pg_kpi");
    wait_for(
        Duration::from_secs(10),
        "a worker after CREATE EXTENSION",
        || cluster.fold_worker_pid(),
    );
}

#[test]
fn create_extension_warns_only_when_no_worker_will_come() {
    let cluster = Cluster::start_with(ClusterOptions {
        create_extension: false,
        ..ClusterOptions::default()
    });
    let (mut client, notices) = cluster.connect_with_notices();
    client
        .batch_execute("CREATE EXTENSION pg_kpi")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION: {}", describe_error(&e)));
    let seen: Vec<String> = notices
        .lock()
        .expect("notices")
        .iter()
        .map(|n| format!("{}: {}", n.severity(), n.message()))
        .collect();
    assert!(
        seen.is_empty(),
        "a fold worker comes: nothing to warn about; got {seen:?}"
    );
    wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
}

/// `ALTER SYSTEM SET pg_kpi.fold_workers` and a reload (one statement each: ALTER
/// SYSTEM refuses to run in the implicit transaction of a multi-statement batch).
fn set_fold_workers(client: &mut Client, value: &str) {
    client
        .batch_execute(&format!("ALTER SYSTEM SET pg_kpi.fold_workers = {value}"))
        .expect("ALTER SYSTEM");
    client
        .batch_execute("SELECT pg_reload_conf()")
        .expect("reload");
}

#[test]
fn workers_turned_off_stay_off_and_come_back_on() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    set_fold_workers(&mut client, "off");
    wait_for(Duration::from_secs(10), "the worker to stop", || {
        cluster.fold_worker_pid().is_none().then_some(())
    });
    client
        .batch_execute("INSERT INTO orders(v) VALUES (1), (2)")
        .expect("insert");
    std::thread::sleep(Duration::from_millis(1500));
    let st = status(&mut client);
    assert_eq!(st.worker_state, "disabled", "{st:?}");
    assert_eq!(st.worker_pid, None, "{st:?}");
    assert!(st.pending_rows > 0, "nothing folds while off: {st:?}");
    assert!(
        st.fold_lag_seconds.is_some_and(|lag| lag >= 1.0),
        "the lag grows while nothing folds: {st:?}"
    );
    assert_eq!(counts(&mut client, "k"), (2.0, 2), "views stay exact");

    set_fold_workers(&mut client, "on");
    wait_folded(&mut client, "folds after turning workers on");
    let st = status(&mut client);
    assert_eq!(st.worker_state, "running", "{st:?}");
    assert_eq!(st.fold_lag_seconds, Some(0.0), "{st:?}");
}

#[test]
fn one_broken_kpi_does_not_stop_the_others() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    let agg: String = client
        .query_one(
            "SELECT format('kpi._agg_%s', id) FROM kpi.definitions WHERE name = 'k2'",
            &[],
        )
        .expect("k2's aggregate table")
        .get(0);
    // k2's merge fails once a bucket holds 3 rows, as an overflow would.
    client
        .batch_execute(&format!(
            "ALTER TABLE {agg} ADD CONSTRAINT broken CHECK (_n < 3)"
        ))
        .expect("break k2");
    let mut listener = cluster.connect();
    notify::listen(&mut listener);
    for v in 1..=5 {
        insert_and_expect_notify(&mut client, &mut listener, &format!("insert {v}"));
    }
    let st = wait_for(Duration::from_secs(10), "k2 reported broken", || {
        let st = status(&mut client);
        (st.failing_kpis == ["k2"]).then_some(st)
    });
    let error = st.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("k2") && error.contains("broken"),
        "the error names the KPI and the cause: {st:?}"
    );
    assert_eq!(
        st.worker_state, "running",
        "the worker keeps running: {st:?}"
    );
    assert!(st.pending_rows > 0, "k2's deltas stay pending: {st:?}");
    // Both views stay exact: k2 reads its held deltas as pending.
    assert_eq!(counts(&mut client, "k"), (5.0, 5));
    assert_eq!(counts(&mut client, "k2"), (5.0, 5));
    assert!(
        cluster.server_log().contains("pg_kpi: folding KPI \"k2\""),
        "the failure is logged"
    );

    client
        .batch_execute(&format!("ALTER TABLE {agg} DROP CONSTRAINT broken"))
        .expect("repair k2");
    wait_folded(&mut client, "k2 folds again once repaired");
    let st = status(&mut client);
    assert!(st.failing_kpis.is_empty(), "{st:?}");
    assert_eq!(
        counts(&mut client, "k2"),
        (5.0, 5),
        "nothing lost, nothing twice"
    );
    let folded: i64 = client
        .query_one(&format!("SELECT sum(_n)::bigint FROM {agg}"), &[])
        .expect("k2's aggregates")
        .get(0);
    assert_eq!(folded, 5, "k2's aggregate table holds every row once");
}

#[test]
fn failing_fold_retries_and_says_why() {
    let cluster = Cluster::start_with(ClusterOptions {
        settings: vec![("pg_kpi.fold_lock_timeout_ms".into(), "200".into())],
        ..ClusterOptions::default()
    });
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    let worker = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    client
        .batch_execute("INSERT INTO orders(v) VALUES (1)")
        .expect("insert");
    // Long DDL on the source: the fold cannot take its lock.
    let mut ddl = cluster.connect();
    ddl.batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let st = wait_for(Duration::from_secs(10), "the lock timeout reported", || {
        let st = status(&mut client);
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("lock timeout"))
            .then_some(st)
    });
    assert_eq!(
        st.worker_pid,
        Some(worker),
        "the worker retries in place: {st:?}"
    );
    ddl.batch_execute("COMMIT").expect("unlock");
    wait_folded(&mut client, "folds after the lock is released");
    assert_eq!(cluster.fold_worker_pid(), Some(worker));
    assert_eq!(counts(&mut client, "k"), (1.0, 1));
    assert!(
        cluster
            .server_log()
            .contains("fold failed (1 in a row), retrying in 100 ms"),
        "the failure is logged with the retry"
    );
}

#[test]
fn plain_drop_database_is_not_blocked_by_the_worker() {
    let cluster = Cluster::start();
    cluster.exec_in("postgres", "CREATE DATABASE shop");
    cluster.exec_in("shop", &format!("CREATE EXTENSION pg_kpi; {SETUP}"));
    wait_for(Duration::from_secs(10), "shop's fold worker", || {
        cluster.fold_worker_pid_of("shop")
    });
    // What `dropdb` runs: no FORCE. The worker steps aside.
    cluster.exec_in("postgres", "ALTER DATABASE shop RENAME TO shop2");
    cluster.exec_in("postgres", "DROP DATABASE shop2");
    assert!(cluster.fold_worker_pid_of("shop").is_none());
    assert!(cluster.fold_worker_pid_of("shop2").is_none());
}

#[test]
fn drop_database_that_fails_gets_its_worker_back() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let worker = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    // Another session stays connected: DROP DATABASE fails after its 5 s wait.
    let mut user = cluster.connect();
    let mut admin = cluster.connect_to("postgres");
    let err = admin
        .batch_execute("DROP DATABASE test")
        .expect_err("DROP DATABASE with a session connected");
    assert!(
        describe_error(&err).contains("being accessed by other users"),
        "{}",
        describe_error(&err)
    );
    let back = wait_for(Duration::from_secs(15), "the worker back", || {
        cluster.fold_worker_pid().filter(|&p| p != worker)
    });
    eprintln!("worker {worker} made way; {back} serves again");
    let mut listener = cluster.connect();
    notify::listen(&mut listener);
    insert_and_expect_notify(&mut user, &mut listener, "after the failed DROP");
}
