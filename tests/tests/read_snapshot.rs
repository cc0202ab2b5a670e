//! Reads are exact as of their own statement: `kpi.value`, `kpi.snapshot`, `kpi.series`,
//! `kpi.top` and the KPI views see the same snapshot as the SQL around them, whatever
//! commits and folds happen while they run, and they never make the reading transaction
//! a writing one.
//!
//! A state view merges the aggregate table with the pending deltas. If the two were read
//! in different snapshots, a fold committing between them would count a change twice or
//! not at all; this is how the notifier once sent a value the database never had.

use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::{describe_error, wait_for, Cluster};
use std::time::Duration;

/// The advisory lock folds take (`fold::FOLD_LOCK`, "pg_kpi" in ASCII): holding it keeps
/// a committed change in the delta buffer, so that reads must merge it themselves.
const FOLD_LOCK: i64 = 0x7067_5f6b_7069;

const SETUP: &str = "
    CREATE TABLE sales(ts timestamptz NOT NULL DEFAULT now(), region text, v int);
    INSERT INTO sales(region, v) VALUES ('eu', 1), ('us', 100), (NULL, 1000);
    SELECT kpi.create(name => 'sales', source => 'sales', time_column => 'ts',
                      measures => 'n = count(*), total = sum(v)', dimensions => '{region}');
    CREATE ROLE reader;
    GRANT SELECT ON sales TO reader;
    GRANT SELECT ON kpi.sales TO reader;";

/// Each read, as a count of today's rows (to compare with `count(*)` over the table).
const READS: &[(&str, &str)] = &[
    ("kpi.value", "kpi.value('sales', 'n', '1 day')::bigint"),
    (
        "kpi.snapshot",
        "(kpi.snapshot('sales')->'measures'->'n'->>'today')::bigint",
    ),
    (
        "kpi.snapshot with dims",
        "(kpi.snapshot('sales', '{\"region\": \"eu\"}')->'measures'->'n'->>'today')::bigint",
    ),
    (
        "kpi.series",
        "(SELECT sum(value) FROM kpi.series('sales', 'n', now() - interval '1 day'))::bigint",
    ),
    (
        "kpi.top",
        "(SELECT sum(value) FROM kpi.top('sales', 'n', 'region', '1 day', 10))::bigint",
    ),
    ("the KPI view", "(SELECT sum(n) FROM kpi.sales)::bigint"),
];

/// What each read should equal in the same statement.
fn truth(label: &str) -> &'static str {
    if label.contains("dims") {
        "(SELECT count(*) FROM sales WHERE region = 'eu')"
    } else {
        "(SELECT count(*) FROM sales)"
    }
}

/// Runs `read` and `truth` in one statement: `None` if they agree, else what went wrong.
fn disagreement(c: &mut Client, read: &str, truth: &str) -> Option<String> {
    match c.query_one(&format!("SELECT {read}, {truth}::bigint"), &[]) {
        Ok(row) => {
            let (k, t): (Option<i64>, i64) = (row.get(0), row.get(1));
            (k != Some(t)).then(|| format!("read {k:?}, the table says {t}"))
        }
        Err(e) => Some(describe_error(&e)),
    }
}

fn setup() -> Cluster {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    cluster
}

/// How a reading transaction starts: as the superuser or a granted role, and with or
/// without having written first (which gives it an XID).
#[derive(Clone, Copy, Debug)]
struct Reader {
    role: Option<&'static str>,
    has_written: bool,
}

const READERS: &[Reader] = &[
    Reader {
        role: None,
        has_written: false,
    },
    Reader {
        role: None,
        has_written: true,
    },
    Reader {
        role: Some("reader"),
        has_written: false,
    },
    Reader {
        role: Some("reader"),
        has_written: true,
    },
];

impl Reader {
    fn begin(&self, c: &mut Client) {
        c.batch_execute("BEGIN").expect("BEGIN");
        if self.has_written {
            // A write gives the transaction an XID (temporary tables need no grant).
            c.batch_execute(
                "CREATE TEMP TABLE wrote_first(x int); INSERT INTO wrote_first VALUES (1)",
            )
            .expect("write first");
        }
        if let Some(role) = self.role {
            c.batch_execute(&format!("SET LOCAL ROLE {role}"))
                .expect("SET ROLE");
        }
    }
}

#[test]
fn reads_do_not_make_the_transaction_a_writer() {
    let cluster = setup();
    let mut failures = Vec::new();
    for role in [None, Some("reader")] {
        for (label, read) in READS {
            // A new backend each time: first reads look things up (the extension's
            // owner, plans) that later ones remember.
            let mut c = cluster.connect();
            let reader = Reader {
                role,
                has_written: false,
            };
            reader.begin(&mut c);
            let sql = format!("SELECT {read}, pg_current_xact_id_if_assigned()::text");
            match c.query_one(&sql, &[]) {
                Ok(row) => {
                    if let Some(xid) = row.get::<_, Option<String>>(1) {
                        failures.push(format!("{label} as {role:?} assigned XID {xid}"));
                    }
                }
                Err(e) => failures.push(format!("{label} as {role:?}: {}", describe_error(&e))),
            }
            c.batch_execute("COMMIT").expect("COMMIT");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reads_run_inside_parallel_queries() {
    // Under a parallel plan, any XID assignment fails the whole query.
    let cluster = setup();
    let mut failures = Vec::new();
    for role in [None, Some("reader")] {
        for (label, read) in READS {
            let mut c = cluster.connect();
            c.batch_execute(
                "SET force_parallel_mode = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0",
            )
            .expect("parallel settings");
            if let Some(role) = role {
                c.batch_execute(&format!("SET ROLE {role}"))
                    .expect("SET ROLE");
            }
            if let Some(what) = disagreement(&mut c, read, truth(label)) {
                failures.push(format!("{label} as {role:?}: {what}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_read_sees_its_statement_snapshot_while_others_commit() {
    let cluster = setup();
    // Folds wait, so the change committed below stays pending: a read that looked at the
    // delta buffer in a newer snapshot than its statement's would count it.
    let mut fold_blocker = cluster.connect();
    fold_blocker
        .execute("SELECT pg_advisory_lock($1)", &[&FOLD_LOCK])
        .expect("hold the fold lock");

    // Every read and reader at once, each in one statement that takes its snapshot,
    // sleeps, then reads; the insert commits while they sleep.
    let mut readers = Vec::new();
    for reader in READERS {
        for (label, read) in READS {
            let url = cluster.url();
            let (reader, label, read) = (*reader, *label, *read);
            let sql = format!(
                "SELECT {truth}, (SELECT {read} FROM (SELECT 1 AS x FROM pg_sleep(1.5)) z WHERE z.x = 1)",
                truth = truth(label)
            );
            readers.push(std::thread::spawn(move || {
                let mut c = Client::connect(&url, pg_kpi_e2e::postgres::NoTls).expect("connect");
                reader.begin(&mut c);
                let row = c
                    .query_one(&sql, &[])
                    .unwrap_or_else(|e| panic!("{label} as {reader:?}: {}", describe_error(&e)));
                c.batch_execute("COMMIT").expect("COMMIT");
                let (t, k): (i64, Option<i64>) = (row.get(0), row.get(1));
                (format!("{label} as {reader:?}"), t, k)
            }));
        }
    }
    let expected = READERS.len() * READS.len();
    let mut watcher = cluster.connect();
    wait_for(Duration::from_secs(30), "every read to be asleep", || {
        let sleeping: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
                &[],
            )
            .expect("pg_stat_activity")
            .get(0);
        (sleeping as usize == expected).then_some(())
    });
    cluster.exec("INSERT INTO sales(region, v) VALUES ('eu', 7)");

    let mut failures = Vec::new();
    for r in readers {
        let (what, t, k) = r.join().expect("reader thread");
        if k != Some(t) {
            failures.push(format!(
                "{what}: read {k:?}, the same statement counted {t}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Once folds may run again, the change is folded, and the reads see it.
    fold_blocker
        .execute("SELECT pg_advisory_unlock($1)", &[&FOLD_LOCK])
        .expect("release the fold lock");
    wait_for(Duration::from_secs(30), "the fold", || {
        let pending: i64 = watcher
            .query_one("SELECT count(*) FROM kpi.deltas", &[])
            .expect("kpi.deltas")
            .get(0);
        (pending == 0).then_some(())
    });
    let row = watcher
        .query_one(
            "SELECT kpi.value('sales', 'n', '1 day')::bigint, (SELECT count(*) FROM sales)",
            &[],
        )
        .expect("read after the fold");
    assert_eq!(row.get::<_, i64>(0), row.get::<_, i64>(1));
    assert_eq!(row.get::<_, i64>(1), 4);
}

#[test]
fn reads_work_on_a_hot_standby() {
    // A read that assigned an XID failed on a standby ("cannot assign TransactionIds
    // during recovery"): dashboards pointed at a read replica got errors only.
    let primary = setup();
    let standby = primary.start_standby();
    let mut writer = primary.connect();
    let mut replica = standby.connect();
    let caught_up = |replica: &mut Client, rows: i64| {
        wait_for(Duration::from_secs(30), "the standby to replay", || {
            let n: i64 = replica
                .query_one("SELECT count(*) FROM sales", &[])
                .expect("count on the standby")
                .get(0);
            (n == rows).then_some(())
        })
    };
    let check = |replica: &mut Client, when: &str, failures: &mut Vec<String>| {
        for role in [None, Some("reader")] {
            if let Some(role) = role {
                replica
                    .batch_execute(&format!("SET ROLE {role}"))
                    .expect("SET ROLE");
            }
            for (label, read) in READS {
                if let Some(what) = disagreement(replica, read, truth(label)) {
                    failures.push(format!("{when}, {label} as {role:?}: {what}"));
                }
            }
            replica.batch_execute("RESET ROLE").expect("RESET ROLE");
        }
    };
    let mut failures = Vec::new();

    // Everything folded on the primary.
    writer
        .batch_execute(
            "INSERT INTO sales(region, v) VALUES ('eu', 2), ('us', 3); SELECT kpi.fold()",
        )
        .expect("insert and fold");
    caught_up(&mut replica, 5);
    check(&mut replica, "folded", &mut failures);

    // Changes still in the delta buffer: the standby's reads merge them too.
    writer
        .execute("SELECT pg_advisory_lock($1)", &[&FOLD_LOCK])
        .expect("hold the fold lock");
    primary.exec("INSERT INTO sales(region, v) VALUES ('eu', 4), (NULL, 5)");
    caught_up(&mut replica, 7);
    let pending: i64 = replica
        .query_one("SELECT count(*) FROM kpi.deltas", &[])
        .expect("kpi.deltas on the standby")
        .get(0);
    assert!(
        pending > 0,
        "the change was folded before the standby read it"
    );
    check(&mut replica, "pending", &mut failures);

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let log = standby.server_log();
    assert!(!log.contains("ERROR"), "the standby logged errors:\n{log}");
}

#[test]
fn a_transaction_sees_its_own_changes() {
    // Captured changes stay in the writing backend's memory until its pre-commit; reads
    // in that transaction count them, as its reads of the table do.
    let cluster = setup();
    let mut c = cluster.connect();
    c.batch_execute(
        "BEGIN;
         INSERT INTO sales(region, v) VALUES ('eu', 10), ('us', 20);
         UPDATE sales SET region = 'eu' WHERE region = 'us' AND v = 100;
         DELETE FROM sales WHERE region IS NULL;
         SAVEPOINT s;
         INSERT INTO sales(region, v) VALUES ('eu', 1000), ('eu', 2000);
         ROLLBACK TO SAVEPOINT s;",
    )
    .expect("changes");
    let mut failures = Vec::new();
    for role in [None, Some("reader")] {
        if let Some(role) = role {
            c.batch_execute(&format!("SET LOCAL ROLE {role}"))
                .expect("SET ROLE");
        }
        let sum = (
            "the view's sum",
            "(SELECT sum(total) FROM kpi.sales)::bigint",
            "(SELECT sum(v) FROM sales)",
        );
        let reads = READS
            .iter()
            .map(|&(label, read)| (label, read, truth(label)));
        for (label, read, truth) in reads.chain([sum]) {
            if let Some(what) = disagreement(&mut c, read, truth) {
                failures.push(format!("{label} as {role:?}: {what}"));
            }
        }
    }
    c.batch_execute("ROLLBACK").expect("ROLLBACK");
    // Rolled back: nothing of it is left in the KPI.
    let row = c
        .query_one(
            "SELECT kpi.value('sales', 'n', '1 day')::bigint, (SELECT count(*) FROM sales)",
            &[],
        )
        .expect("read after the rollback");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 3));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
