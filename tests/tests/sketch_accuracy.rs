//! Accuracy of the sketch measures end to end: 1,000,000 generated rows captured by the
//! trigger, distinct counts within 2 % and p50/p95/p99 within 1 % relative for a 1-minute
//! window, a 1-hour window and a full day — also after 10 % of the rows are deleted and
//! another 10 % updated (and those deltas folded).

use pg_kpi_e2e::{wait_for, Cluster};
use std::time::Duration;

const WINDOWS: [&str; 3] = ["1 minute", "1 hour", "1 day"];

/// (measure, exact SQL aggregate over `hits h`, allowed relative error)
const CHECKS: [(&str, &str, f64); 4] = [
    ("users", "count(DISTINCT h.user_id)::float8", 0.02),
    (
        "p50",
        "percentile_disc(0.5) WITHIN GROUP (ORDER BY h.latency)",
        0.01,
    ),
    (
        "p95",
        "percentile_disc(0.95) WITHIN GROUP (ORDER BY h.latency)",
        0.01,
    ),
    (
        "p99",
        "percentile_disc(0.99) WITHIN GROUP (ORDER BY h.latency)",
        0.01,
    ),
];

fn check_accuracy(client: &mut postgres::Client, when: &str) {
    for window in WINDOWS {
        for (measure, exact, bound) in CHECKS {
            // One statement, so now() is the same for the KPI and the recomputation.
            let sql = format!(
                "SELECT kpi.value('hits', '{measure}', '{window}')::float8,
                        (SELECT {exact} FROM hits h
                          WHERE h.at >= date_bin('1 minute', now() - interval '{window}', '2000-01-01 00:00:00+00'))"
            );
            let row = client.query_one(&sql, &[]).expect("accuracy query");
            let (got, want): (Option<f64>, Option<f64>) = (row.get(0), row.get(1));
            let (got, want) = (got.expect("kpi value"), want.expect("exact value"));
            let err = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
            println!(
                "{when:>8} {window:>9} {measure:>5}: kpi {got:.3} exact {want:.3} error {:.3} %",
                err * 100.0
            );
            assert!(
                err <= bound,
                "{when}, {window}, {measure}: {got} vs {want} ({:.2} % > {:.0} %)",
                err * 100.0,
                bound * 100.0
            );
        }
    }
}

#[test]
fn sketches_are_accurate_on_a_million_rows() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE TABLE hits (id bigserial PRIMARY KEY, at timestamptz NOT NULL, user_id int, latency double precision);
         SELECT kpi.create(name => 'hits', source => 'hits', time_column => 'at', bucket => '1 minute',
                measures => 'n = count(*), users = count_distinct(user_id), p50 = percentile(latency, 0.5),
                             p95 = percentile(latency, 0.95), p99 = percentile(latency, 0.99)');
         SELECT setseed(0.42);
         INSERT INTO hits (at, user_id, latency)
         SELECT now() - random() * interval '23 hours 58 minutes',
                (random() * 300000)::int,
                exp(random() * 4 + random() * 3)   -- long-tailed, like latencies
           FROM generate_series(1, 1000000);",
    )
    .expect("load a million rows");
    check_accuracy(&mut c, "inserted");

    c.batch_execute(
        "DELETE FROM hits WHERE id % 10 = 3;
         UPDATE hits SET latency = latency * 3, user_id = user_id + 1000000 WHERE id % 10 = 7;",
    )
    .expect("delete and update 10 % each");
    check_accuracy(&mut c, "pending");
    wait_for(
        Duration::from_secs(60),
        "the fold worker to drain deltas",
        || {
            let n: i64 = c
                .query_one("SELECT count(*) FROM kpi.deltas", &[])
                .ok()?
                .get(0);
            (n == 0).then_some(())
        },
    );
    check_accuracy(&mut c, "folded");
}
