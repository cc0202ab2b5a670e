//! Alert rules evaluated by the fold worker in a real cluster: committed rows make a
//! rule pending, time alone (no further writes) makes it fire after `for` and resolve
//! after `keep_firing_for`, every transition is one `kpi.alert_history` row announced by
//! `NOTIFY kpi_alerts '{"id":N}'`, and a rule per region fires per region.

use std::time::{Duration, Instant};

use pg_kpi_e2e::postgres::fallible_iterator::FallibleIterator;
use pg_kpi_e2e::postgres::Client;
use pg_kpi_e2e::{describe_error, wait_for, Cluster};

const SETUP: &str =
    "CREATE TABLE orders(ts timestamptz NOT NULL DEFAULT now(), region text, v int);
    SELECT kpi.create(name => 'k', source => 'orders', time_column => 'ts',
                      measures => 'n = count(*), total = sum(v)', dimensions => '{region}');";

const T: Duration = Duration::from_secs(30);

/// The `id`s announced on `kpi_alerts` until `want` have arrived (or `T` passes).
fn alert_ids(listener: &mut Client, want: usize) -> Vec<i64> {
    let deadline = Instant::now() + T;
    let mut ids = Vec::new();
    while ids.len() < want && Instant::now() < deadline {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        while let Some(note) = it
            .next()
            .unwrap_or_else(|e| panic!("{}", describe_error(&e)))
        {
            assert_eq!(note.channel(), "kpi_alerts");
            let v: serde_json::Value = serde_json::from_str(note.payload())
                .unwrap_or_else(|e| panic!("payload {:?} is not JSON: {e}", note.payload()));
            let id = v["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("payload without an id: {v}"));
            ids.push(id);
        }
    }
    ids
}

/// `(id, group_value, to_state)` of the rule's history, in order.
fn history(client: &mut Client, rule: &str) -> Vec<(i64, String, String)> {
    client
        .query(
            "SELECT id, group_value, to_state FROM kpi.alert_history WHERE rule = $1 ORDER BY id",
            &[&rule],
        )
        .unwrap_or_else(|e| panic!("history: {}", describe_error(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn state(client: &mut Client, rule: &str) -> String {
    client
        .query_one(
            "SELECT string_agg(state, ',' ORDER BY group_value) FROM kpi.alerts WHERE alert = $1",
            &[&rule],
        )
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .unwrap_or_else(|e| panic!("kpi.alerts: {}", describe_error(&e)))
}

#[test]
fn time_alone_moves_an_alert_from_pending_to_firing_to_resolved() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    wait_for(T, "the fold worker", || cluster.fold_worker_pid());
    client
        .batch_execute(
            "SELECT kpi.create_alert(name => 'busy', kpi => 'k', condition => 'n >= 3',
                     \"window\" => '10 minutes', \"for\" => '1 second',
                     keep_firing_for => '1 second', severity => 'critical',
                     summary => '{{value}} orders')",
        )
        .unwrap_or_else(|e| panic!("create_alert: {}", describe_error(&e)));
    let mut listener = cluster.connect();
    listener.batch_execute("LISTEN kpi_alerts").expect("LISTEN");

    // One commit crosses the threshold; nothing is written after it.
    client
        .batch_execute("INSERT INTO orders(region, v) VALUES ('eu', 1), ('eu', 2), ('us', 3)")
        .expect("insert");
    let ids = alert_ids(&mut listener, 2);
    let h = history(&mut client, "busy");
    let states: Vec<&str> = h.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(states, ["pending", "firing"], "{h:?}");
    assert_eq!(
        ids,
        h.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(),
        "each transition is announced once, in order"
    );
    assert_eq!(state(&mut client, "busy"), "firing");
    let summary: Option<String> = client
        .query_one(
            "SELECT summary FROM kpi.alert_history WHERE rule = 'busy' AND to_state = 'firing'",
            &[],
        )
        .expect("summary")
        .get(0);
    assert_eq!(summary.as_deref(), Some("3 orders"));

    // Deleting drops the count; keep_firing_for, then time alone, resolves it.
    client.batch_execute("DELETE FROM orders").expect("delete");
    let ids = alert_ids(&mut listener, 1);
    let h = history(&mut client, "busy");
    assert_eq!(
        h.last().map(|(_, _, s)| s.as_str()),
        Some("resolved"),
        "{h:?}"
    );
    assert_eq!(ids, [h[2].0]);
    assert_eq!(state(&mut client, "busy"), "inactive");
}

#[test]
fn a_rule_grouped_by_region_fires_per_region_from_commits() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    wait_for(T, "the fold worker", || cluster.fold_worker_pid());
    client
        .batch_execute(
            "SELECT kpi.create_alert(name => 'big', kpi => 'k', condition => 'total > 10',
                     \"window\" => '10 minutes', group_by => 'region')",
        )
        .unwrap_or_else(|e| panic!("create_alert: {}", describe_error(&e)));
    let mut listener = cluster.connect();
    listener.batch_execute("LISTEN kpi_alerts").expect("LISTEN");
    client
        .batch_execute("INSERT INTO orders(region, v) VALUES ('eu', 11), ('us', 5), ('apac', 20)")
        .expect("insert");
    let ids = alert_ids(&mut listener, 2);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let h = history(&mut client, "big");
    let fired: Vec<(&str, &str)> = h.iter().map(|(_, g, s)| (g.as_str(), s.as_str())).collect();
    assert_eq!(fired, [("apac", "firing"), ("eu", "firing")]);
    // Exactly the regions over 10, by the source itself.
    let truth: Vec<String> = client
        .query(
            "SELECT region FROM orders GROUP BY region HAVING sum(v) > 10 ORDER BY region",
            &[],
        )
        .expect("truth")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(truth, ["apac", "eu"]);

    client
        .batch_execute("INSERT INTO orders(region, v) VALUES ('us', 6)")
        .expect("insert us");
    alert_ids(&mut listener, 1);
    assert_eq!(state(&mut client, "big"), "firing,firing,firing");
}

#[test]
fn absence_fires_with_no_writes_at_all_and_resolves_on_the_first_row() {
    let cluster = Cluster::start();
    cluster.exec(SETUP);
    let mut client = cluster.connect();
    wait_for(T, "the fold worker", || cluster.fold_worker_pid());
    let mut listener = cluster.connect();
    listener.batch_execute("LISTEN kpi_alerts").expect("LISTEN");
    // Nothing is ever written before it fires: the worker's once-a-second evaluation.
    client
        .batch_execute(
            "SELECT kpi.create_alert(name => 'silent', kpi => 'k', condition => 'absent(1 minute)')",
        )
        .unwrap_or_else(|e| panic!("create_alert: {}", describe_error(&e)));
    assert_eq!(alert_ids(&mut listener, 1).len(), 1);
    assert_eq!(state(&mut client, "silent"), "firing");
    client
        .batch_execute("INSERT INTO orders(region, v) VALUES ('eu', 1)")
        .expect("insert");
    assert_eq!(alert_ids(&mut listener, 1).len(), 1);
    let h = history(&mut client, "silent");
    let states: Vec<&str> = h.iter().map(|(_, _, s)| s.as_str()).collect();
    assert_eq!(states, ["firing", "resolved"]);
}

/// An evaluation that waited for the fold lock reads what the transaction it waited for
/// committed. It used to read in the snapshot its statement took before the wait, see
/// the alert still firing at the old value and write that back over the resolve
/// committed meanwhile, leaving an alert firing on a KPI with no rows.
#[test]
fn an_evaluation_that_waited_for_the_lock_does_not_undo_a_resolve() {
    let cluster = Cluster::start_with(pg_kpi_e2e::ClusterOptions {
        preload: false,
        ..Default::default()
    });
    cluster.exec(SETUP);
    cluster.exec(
        "SELECT kpi.create_alert('seen', 'k', 'n >= 2', '10 minutes');
         INSERT INTO orders(v) VALUES (1), (2);",
    );
    cluster.exec("SELECT kpi.evaluate_alerts()");
    let mut client = cluster.connect();
    assert_eq!(state(&mut client, "seen"), "firing");

    // A resolves the alert and holds the fold lock until it commits.
    let mut a = cluster.connect();
    a.batch_execute("BEGIN; DELETE FROM orders; SELECT kpi.evaluate_alerts();")
        .unwrap_or_else(|e| panic!("A: {}", describe_error(&e)));
    // B's statement starts (and takes its snapshot) while A still holds the lock.
    let url = cluster.url();
    let b = std::thread::spawn(move || {
        let mut b = Client::connect(&url, pg_kpi_e2e::postgres::NoTls).expect("connect B");
        b.batch_execute("SELECT kpi.evaluate_alerts()")
            .map_err(|e| describe_error(&e))
    });
    wait_for(T, "B to wait for the fold lock", || {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'
                    AND query LIKE '%evaluate_alerts%'",
                &[],
            )
            .expect("pg_stat_activity")
            .get(0);
        (waiting == 1).then_some(())
    });
    a.batch_execute("COMMIT")
        .unwrap_or_else(|e| panic!("A commit: {}", describe_error(&e)));
    b.join().expect("B's thread").expect("B's evaluation");

    // B saw the resolve and moved on from it; it did not fire again.
    assert_eq!(state(&mut client, "seen"), "inactive");
    let states: Vec<String> = history(&mut client, "seen")
        .into_iter()
        .map(|(_, _, to)| to)
        .collect();
    assert_eq!(states, ["firing", "resolved"]);
}
