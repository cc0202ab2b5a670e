//! Crashes: `kill -9` of a writing backend mid-transaction and mid-COPY, and of the fold
//! worker while it folds. Postgres answers a killed backend by restarting every backend
//! and replaying WAL; afterwards the views must be exact (deltas are written in the
//! writer's transaction, the fold is one transaction) and folding must resume by itself.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use pg_kpi_e2e::oracle::{self, assert_exact};
use pg_kpi_e2e::schema::{self, KpiSpec};
use pg_kpi_e2e::workload::{self, copy_sql, insert_sql, OrderRow};
use pg_kpi_e2e::{describe_error, kill, notify, wait_for, Cluster};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Orders tables with KPIs and some rows, plus `n` background writer sessions that
/// survive crashes and run until `stop` is set.
fn setup_with_writers(
    cluster: &Cluster,
    n: u64,
    stop: &Arc<AtomicBool>,
) -> (Vec<KpiSpec>, JoinHandle<Vec<workload::Report>>) {
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    let mut rng = StdRng::seed_from_u64(5);
    for table in ["orders", "orders_p"] {
        let rows: Vec<OrderRow> = (0..200).map(|_| OrderRow::random(&mut rng)).collect();
        workload::copy_rows(&mut client, table, &rows).expect("seed rows");
    }
    let configs: Vec<workload::Config> = (0..n)
        .map(|i| workload::Config {
            survive_crashes: true,
            pause: Duration::from_millis(5),
            stop: Some(Arc::clone(stop)),
            ..workload::Config::new(2000 + i, 100_000)
        })
        .collect();
    let url = cluster.url();
    let writers = std::thread::spawn(move || workload::run_concurrently(&url, &configs));
    (kpis, writers)
}

/// Stops the background writers and checks they saw no unexpected error.
fn stop_writers(stop: &Arc<AtomicBool>, writers: JoinHandle<Vec<workload::Report>>) {
    stop.store(true, Ordering::SeqCst);
    let reports = writers.join().expect("writers");
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "writer {i}: {} committed, {} rolled back, {} reconnects",
            r.committed, r.rolled_back, r.reconnects
        );
    }
    workload::assert_no_errors(&reports);
}

/// Waits until the fold worker has folded every delta, without calling kpi.fold().
fn wait_for_drain(cluster: &Cluster, what: &str) {
    let mut client = cluster.connect();
    wait_for(Duration::from_secs(30), what, || {
        (oracle::pending_deltas(&mut client).ok() == Some(0)).then_some(())
    });
}

/// Counts the backend crashes the postmaster logged.
fn crashes_logged(cluster: &Cluster) -> usize {
    cluster
        .server_log()
        .matches("was terminated by signal 9")
        .count()
}

/// Kills a writer mid-transaction and then a writer mid-COPY, each killed after it
/// wrote thousands of rows, while other sessions write too.
#[test]
fn backend_killed_mid_transaction_and_mid_copy() {
    let cluster = Cluster::start();
    let stop = Arc::new(AtomicBool::new(false));
    let (kpis, writers) = setup_with_writers(&cluster, 2, &stop);

    // A long transaction of multi-row INSERTs into both tables, killed midway.
    let (ready_tx, ready) = mpsc::channel();
    let url = cluster.url();
    let long_tx = std::thread::spawn(move || -> Result<(), String> {
        let mut c = workload::connect_retrying(&url).map_err(|e| describe_error(&e))?;
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .map_err(|e| describe_error(&e))?
            .get(0);
        let mut rng = StdRng::seed_from_u64(11);
        c.batch_execute("BEGIN").map_err(|e| describe_error(&e))?;
        for i in 0..2000 {
            let table = if i % 2 == 0 { "orders" } else { "orders_p" };
            let rows: Vec<OrderRow> = (0..20).map(|_| OrderRow::random(&mut rng)).collect();
            c.batch_execute(&insert_sql(table, &rows))
                .map_err(|e| describe_error(&e))?;
            if i == 100 {
                let _ = ready_tx.send(pid);
            }
            if i > 100 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    });
    let pid = ready
        .recv_timeout(Duration::from_secs(60))
        .expect("writer ready");
    kill(pid, "9");
    let result = long_tx.join().expect("long transaction thread");
    assert!(
        result.is_err(),
        "the killed transaction went on to completion"
    );
    eprintln!("long transaction ended with: {result:?}");

    // Recovery: every backend restarts; reconnect and compare.
    let mut client = cluster.connect();
    assert_exact(
        &mut client,
        &kpis,
        "after kill -9 of a backend mid-transaction",
    );

    // A COPY streaming rows in chunks, killed after it sent 20,000 of them.
    let (ready_tx, ready) = mpsc::channel();
    let url = cluster.url();
    let copy = std::thread::spawn(move || -> Result<u64, String> {
        let mut c = workload::connect_retrying(&url).map_err(|e| describe_error(&e))?;
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .map_err(|e| describe_error(&e))?
            .get(0);
        let mut rng = StdRng::seed_from_u64(12);
        let mut writer = c
            .copy_in(&copy_sql("orders"))
            .map_err(|e| describe_error(&e))?;
        for chunk in 0..500 {
            let mut data = String::new();
            for _ in 0..1000 {
                data.push_str(&OrderRow::random(&mut rng).copy_line());
            }
            if let Err(e) = writer
                .write_all(data.as_bytes())
                .and_then(|_| writer.flush())
            {
                return Err(format!("write: {e}"));
            }
            if chunk == 20 {
                let _ = ready_tx.send(pid);
            }
            if chunk > 20 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        writer.finish().map_err(|e| describe_error(&e))
    });
    let pid = ready
        .recv_timeout(Duration::from_secs(60))
        .expect("COPY ready");
    kill(pid, "9");
    let result = copy.join().expect("COPY thread");
    assert!(
        result.is_err(),
        "the killed COPY went on to completion: {result:?}"
    );
    eprintln!("COPY ended with: {result:?}");

    let mut client = cluster.connect();
    assert_exact(&mut client, &kpis, "after kill -9 of a backend mid-COPY");

    // Let the surviving writers go on after the crashes for a moment, then stop them.
    std::thread::sleep(Duration::from_secs(2));
    stop_writers(&stop, writers);
    assert!(
        crashes_logged(&cluster) >= 2,
        "expected two backend crashes in the server log"
    );
    let mut client = cluster.connect();
    assert_exact(&mut client, &kpis, "after the writers stopped");
    wait_for_drain(
        &cluster,
        "the fold worker to fold every delta after the crashes",
    );
    assert_exact(
        &mut client,
        &kpis,
        "after the fold worker drained the deltas",
    );
}

/// Kills the fold worker while writers write and folds happen; the postmaster restarts
/// it (after restarting every backend: a killed worker counts as a crash), and it must
/// fold what was pending and what comes next.
#[test]
fn fold_worker_killed_during_writes() {
    let cluster = Cluster::start();
    let old_pid = wait_for(Duration::from_secs(30), "the fold worker to start", || {
        cluster.fold_worker_pid()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (kpis, writers) = setup_with_writers(&cluster, 3, &stop);

    // Kill only once folds are happening: versions move.
    let mut client = cluster.connect();
    let initial = notify::versions(&mut client);
    wait_for(Duration::from_secs(15), "a fold (a version bump)", || {
        let now = notify::versions(&mut client);
        (now.iter()
            .any(|(k, v)| initial.get(k).is_some_and(|i| v > i)))
        .then_some(())
    });
    // Three kills at different moments, so that at least one likely lands mid-fold
    // (folds run every few tens of milliseconds while the writers write).
    let mut pid = old_pid;
    for delay_ms in [300, 550, 800] {
        std::thread::sleep(Duration::from_millis(delay_ms));
        kill(pid, "9");
        let killed = pid;
        pid = wait_for(
            Duration::from_secs(60),
            "the fold worker to restart",
            || cluster.fold_worker_pid().filter(|p| *p != killed),
        );
        eprintln!("fold worker {killed} killed, restarted as {pid}");
    }

    // Writes go on with the new worker; the views stay exact meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    let mut client = cluster.connect();
    assert_exact(
        &mut client,
        &kpis,
        "while writing, after the fold worker restarted",
    );
    stop_writers(&stop, writers);

    let mut client = cluster.connect();
    assert_exact(&mut client, &kpis, "after the writers stopped");
    wait_for_drain(&cluster, "the restarted fold worker to fold every delta");
    assert_exact(
        &mut client,
        &kpis,
        "after the restarted worker drained the deltas",
    );

    // And it keeps folding new writes.
    let before = notify::versions(&mut client);
    let mut rng = StdRng::seed_from_u64(13);
    let rows: Vec<OrderRow> = (0..10).map(|_| OrderRow::random(&mut rng)).collect();
    client
        .batch_execute(&insert_sql("orders", &rows))
        .expect("insert after restart");
    wait_for_drain(&cluster, "the restarted fold worker to fold a new insert");
    let after = notify::versions(&mut client);
    assert!(
        after["totals"] > before["totals"],
        "no version bump after a new insert: {before:?} -> {after:?}"
    );
    assert_exact(&mut client, &kpis, "after the final fold");
}
