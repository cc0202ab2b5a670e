//! Change notifications on `kpi_changes`: sent by the fold (worker or `kpi.fold()`),
//! never by writers, with increasing `seq` and strictly increasing per-KPI versions.

use std::time::{Duration, Instant};

use pg_kpi_e2e::notify::{self, Tracker};
use pg_kpi_e2e::oracle::{self, assert_exact};
use pg_kpi_e2e::workload::insert_sql;
use pg_kpi_e2e::workload::OrderRow;
use pg_kpi_e2e::{describe_error, schema, Cluster, ClusterOptions};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// How long the fold worker may take to fold and notify after a commit.
const FOLD_LATENCY: Duration = Duration::from_secs(5);

fn rows(rng: &mut StdRng, n: usize) -> Vec<OrderRow> {
    (0..n).map(|_| OrderRow::random(rng)).collect()
}

#[test]
fn fold_worker_notifies_committed_changes() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    let mut listener = cluster.connect();
    notify::listen(&mut listener);
    let before = notify::versions(&mut client);
    let mut rng = StdRng::seed_from_u64(7);

    // Committed inserts into `orders`, one after another, without kpi.fold().
    let first_commit = Instant::now();
    for i in 0..8 {
        let n = if i % 2 == 0 { 1 } else { 5 };
        client
            .batch_execute(&insert_sql("orders", &rows(&mut rng, n)))
            .unwrap_or_else(|e| panic!("insert: {}", describe_error(&e)));
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut tracker = Tracker::default();
    let got_first = tracker.receive_until(&mut listener, FOLD_LATENCY, |t| !t.changes.is_empty());
    assert!(
        got_first,
        "no kpi_changes notification within {FOLD_LATENCY:?} of committed inserts (fold worker pid {:?})",
        cluster.fold_worker_pid()
    );
    eprintln!(
        "first notification {:?} after the first commit",
        first_commit.elapsed()
    );

    // Wait until every delta is folded and the notified versions caught up with kpi.list().
    let caught_up = tracker.receive_until(&mut listener, Duration::from_secs(10), |t| {
        let pending = oracle::pending_deltas(&mut client).unwrap_or(-1);
        let now = notify::versions(&mut client);
        pending == 0
            && ["checkout", "totals"]
                .iter()
                .all(|k| t.latest.get(*k) == now.get(*k))
    });
    let after = notify::versions(&mut client);
    assert!(
        caught_up,
        "notified versions {:?} never caught up with kpi.list() {after:?} (pending deltas: {:?})",
        tracker.latest,
        oracle::pending_deltas(&mut client).ok()
    );
    assert!(tracker.violations.is_empty(), "{:#?}", tracker.violations);
    for kpi in ["checkout", "totals"] {
        assert!(
            after[kpi] > before[kpi],
            "version of {kpi} did not increase: {} -> {}",
            before[kpi],
            after[kpi]
        );
    }
    for change in &tracker.changes {
        for untouched in ["p_checkout", "p_totals"] {
            assert!(
                !change.kpis.contains_key(untouched),
                "{untouched} notified although its source was not written: {change:?}"
            );
        }
    }
    assert_exact(&mut client, &kpis, "after notified folds");

    // A rolled-back transaction, and a committed one whose only writes were in a
    // rolled-back savepoint, leave no deltas: no fold changes anything, nothing notifies.
    let statement = insert_sql("orders", &rows(&mut rng, 3));
    client
        .batch_execute(&format!("BEGIN; {statement}; ROLLBACK"))
        .expect("rolled-back insert");
    client
        .batch_execute(&format!(
            "BEGIN; SAVEPOINT s; {statement}; ROLLBACK TO SAVEPOINT s; COMMIT"
        ))
        .expect("rolled-back savepoint");
    let mut quiet = Tracker::default();
    quiet.receive_until(&mut listener, Duration::from_secs(2), |_| false);
    let unchanged = notify::versions(&mut client);
    assert_eq!(
        unchanged, after,
        "a rolled-back write bumped versions; notifications: {:?}",
        quiet.changes
    );
    assert!(
        quiet
            .changes
            .iter()
            .all(|c| c.kpis.is_empty() && !c.overflow),
        "a rolled-back write was notified: {:?}",
        quiet.changes
    );

    // A write to orders_p notifies its KPIs only, with a larger seq than before.
    let last_seq = tracker.changes.last().map(|c| c.seq).unwrap_or(i64::MIN);
    client
        .batch_execute(&insert_sql("orders_p", &rows(&mut rng, 2)))
        .expect("insert orders_p");
    let got = tracker.receive_until(&mut listener, FOLD_LATENCY, |t| {
        t.changes
            .last()
            .is_some_and(|c| c.kpis.contains_key("p_totals"))
    });
    assert!(
        got,
        "no notification for p_totals; seen {:?}",
        tracker.changes
    );
    let last = tracker.changes.last().expect("a change");
    assert!(
        last.seq > last_seq,
        "seq went from {last_seq} to {}",
        last.seq
    );
    assert!(
        !last.kpis.contains_key("checkout"),
        "checkout notified without a change: {last:?}"
    );
    assert!(tracker.violations.is_empty(), "{:#?}", tracker.violations);
}

#[test]
fn without_preload_create_extension_warns_and_fold_notifies() {
    let cluster = Cluster::start_with(ClusterOptions {
        preload: false,
        create_extension: false,
        ..Default::default()
    });
    let (mut client, notices) = cluster.connect_with_notices();
    client
        .batch_execute("CREATE EXTENSION pg_kpi")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION: {}", describe_error(&e)));
    {
        let notices = notices.lock().expect("notices");
        let warned = notices.iter().any(|n| {
            let text = format!("{} {}", n.message(), n.hint().unwrap_or_default());
            n.severity() == "WARNING" && text.contains("shared_preload_libraries")
        });
        let seen: Vec<String> = notices
            .iter()
            .map(|n| format!("{}: {} (hint: {:?})", n.severity(), n.message(), n.hint()))
            .collect();
        assert!(
            warned,
            "CREATE EXTENSION without shared_preload_libraries must WARN about it; notices: {seen:?}"
        );
    }
    assert_eq!(
        cluster.fold_worker_pid(),
        None,
        "no fold worker without preload"
    );

    let kpis = schema::setup_orders(&mut client);
    let mut listener = cluster.connect();
    notify::listen(&mut listener);
    let before = notify::versions(&mut client);
    let mut rng = StdRng::seed_from_u64(8);
    client
        .batch_execute(&insert_sql("orders", &rows(&mut rng, 20)))
        .expect("insert");
    client
        .batch_execute(&insert_sql("orders_p", &rows(&mut rng, 20)))
        .expect("insert");
    // Exact before any fold: the views add the pending deltas.
    assert_exact(
        &mut client,
        &kpis,
        "before kpi.fold() without a fold worker",
    );

    let folded =
        oracle::fold(&mut client).unwrap_or_else(|e| panic!("kpi.fold(): {}", describe_error(&e)));
    assert!(
        folded > 0,
        "kpi.fold() folded {folded} rows after 40 inserted rows"
    );
    assert_eq!(oracle::pending_deltas(&mut client).ok(), Some(0));
    assert_exact(&mut client, &kpis, "after kpi.fold()");

    let mut tracker = Tracker::default();
    let got = tracker.receive_until(&mut listener, Duration::from_secs(3), |t| {
        kpis.iter().all(|k| t.latest.contains_key(&k.name))
    });
    let after = notify::versions(&mut client);
    assert!(
        got,
        "kpi.fold() must notify every changed KPI; got {:?}, kpi.list() versions {after:?}",
        tracker.changes
    );
    assert!(tracker.violations.is_empty(), "{:#?}", tracker.violations);
    for kpi in &kpis {
        assert!(
            after[&kpi.name] > before[&kpi.name],
            "version of {} unchanged",
            kpi.name
        );
        assert_eq!(
            tracker.latest[&kpi.name], after[&kpi.name],
            "notified version of {}",
            kpi.name
        );
    }

    // A fold with nothing to fold changes nothing and notifies nothing.
    assert_eq!(oracle::fold(&mut client).ok(), Some(0));
    let mut quiet = Tracker::default();
    quiet.receive_until(&mut listener, Duration::from_millis(500), |_| false);
    assert!(
        quiet.changes.is_empty(),
        "empty fold notified: {:?}",
        quiet.changes
    );
}
