//! The fold worker's housekeeping of the delta buffer: it vacuums `kpi.deltas` itself
//! while folds drain rows (autovacuum comes by once a minute, far too rarely), without
//! crashing and without disturbing writers or the exactness of the views.

use std::time::{Duration, Instant};

use pg_kpi_e2e::oracle::{self, assert_exact};
use pg_kpi_e2e::workload::{insert_sql, OrderRow};
use pg_kpi_e2e::{describe_error, schema, wait_for, Cluster};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Bounded write load: at most this many single-row transactions per writer…
const MAX_INSERTS: usize = 5_000;
/// …and at most this long.
const WRITE_FOR: Duration = Duration::from_secs(3);

fn vacuum_count(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(vacuum_count, 0) FROM pg_stat_all_tables
              WHERE relid = 'kpi.deltas'::regclass",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("vacuum_count: {}", describe_error(&e)))
}

#[test]
fn fold_worker_vacuums_the_delta_buffer_while_writes_flow() {
    let cluster = Cluster::start();
    let mut client = cluster.connect();
    let kpis = schema::setup_orders(&mut client);
    let worker = wait_for(Duration::from_secs(10), "the fold worker", || {
        cluster.fold_worker_pid()
    });
    let vacuums_before = vacuum_count(&mut client);

    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let mut c = cluster.connect();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(40 + w);
                let start = Instant::now();
                let mut n = 0;
                while n < MAX_INSERTS && start.elapsed() < WRITE_FOR {
                    let row = OrderRow::random(&mut rng);
                    c.batch_execute(&insert_sql("orders", &[row]))
                        .unwrap_or_else(|e| panic!("insert: {}", describe_error(&e)));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let written: usize = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .sum();
    eprintln!("{written} single-row transactions committed");

    wait_for(
        Duration::from_secs(15),
        "the fold to drain every delta",
        || (oracle::pending_deltas(&mut client).ok()? == 0).then_some(()),
    );
    wait_for(
        Duration::from_secs(15),
        "the fold worker to vacuum kpi.deltas",
        || (vacuum_count(&mut client) > vacuums_before).then_some(()),
    );
    assert_eq!(
        cluster.fold_worker_pid(),
        Some(worker),
        "the fold worker restarted (crashed?) while vacuuming:\n{}",
        cluster.server_log()
    );
    assert!(
        !cluster.server_log().contains("terminated by signal"),
        "a server process crashed:\n{}",
        cluster.server_log()
    );
    assert_exact(&mut client, &kpis, "after writes and the worker's vacuums");
}
