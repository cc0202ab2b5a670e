//! `#[pg_test]`s of alert rules. Each test is one transaction, so `now()` stands still:
//! these cover definitions, conditions, values, groups and transitions that need no
//! time to pass; `for` and `keep_firing_for` are covered by `state`'s unit tests and
//! the end-to-end tests in tests/.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::tests::{create_checkout, setup, try_sql};
    use pgrx::prelude::*;

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn evaluate() -> i64 {
        one::<i64>("SELECT kpi.evaluate_alerts()").unwrap_or(-1)
    }

    fn states(alert: &str) -> Vec<(String, String)> {
        Spi::connect(|c| {
            c.select(
                "SELECT group_value, state FROM kpi.alerts WHERE alert = $1 ORDER BY group_value",
                None,
                &[alert.into()],
            )
            .expect("kpi.alerts")
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<String>(2).ok().flatten().unwrap_or_default(),
                )
            })
            .collect()
        })
    }

    fn history(alert: &str) -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                "SELECT to_state || coalesce(':' || nullif(group_value, ''), '') FROM kpi.alert_history WHERE rule = $1 ORDER BY id",
                None,
                &[alert.into()],
            )
            .expect("history")
            .map(|r| r.get::<String>(1).ok().flatten().unwrap_or_default())
            .collect()
        })
    }

    #[pg_test]
    fn an_acknowledgement_is_recorded_once_and_errors_name_the_problem() {
        setup();
        create_checkout();
        Spi::run(
            "SELECT kpi.create_alert(name => 'busy', kpi => 'checkout', condition => 'orders > 5',
                    \"window\" => '10 minutes', severity => 'critical')",
        )
        .expect("create_alert");
        let id = one::<i64>("SELECT id FROM kpi.alerts WHERE alert = 'busy'");
        // Not firing yet: nothing to acknowledge.
        let early = try_sql(&format!(
            "SELECT kpi.ack_alert({}, 'alice', 'x')",
            id.unwrap_or(0)
        ));
        assert!(
            matches!(&early, Err((c, _, Some(_))) if c.contains("OBJECT_NOT_IN_PREREQUISITE_STATE") || c.contains("UNDEFINED_OBJECT")),
            "{early:?}"
        );
        assert_eq!(evaluate(), 1);
        let id = one::<i64>("SELECT id FROM kpi.alerts WHERE alert = 'busy'").unwrap_or(0);
        for (sql, code) in [
            (
                format!("SELECT kpi.ack_alert({id}, '  ', 'x')"),
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "SELECT kpi.ack_alert(987654, 'alice', 'x')".to_string(),
                "UNDEFINED_OBJECT",
            ),
        ] {
            let r = try_sql(&sql);
            assert!(
                matches!(&r, Err((c, _, Some(h))) if c.contains(code) && !h.is_empty()),
                "{sql}: {r:?}"
            );
        }
        let first = one::<i64>(&format!("SELECT kpi.ack_alert({id}, 'alice', 'on it')"));
        let again = one::<i64>(&format!("SELECT kpi.ack_alert({id}, 'bob', 'me too')"));
        assert!(first.is_some());
        assert_eq!(first, again, "a repeated ack returns the first one");
        let (by, note) = Spi::get_two::<String, String>(
            "SELECT acked_by, ack_note FROM kpi.alerts WHERE alert = 'busy'",
        )
        .expect("ack shown");
        assert_eq!(
            (by.as_deref(), note.as_deref()),
            (Some("alice"), Some("on it"))
        );
        assert_eq!(history("busy"), ["firing", "acknowledged"]);
        let started = one::<bool>(
            "SELECT bool_and(started_at IS NOT NULL) FROM kpi.alert_history WHERE rule = 'busy'",
        );
        assert_eq!(started, Some(true), "firing and ack name their episode");
        // The resolve ends the episode, and the acknowledgement with it.
        Spi::run("DELETE FROM orders WHERE created_at > now() - interval '1 hour'; SELECT kpi._flush_for_tests();")
            .expect("delete");
        assert_eq!(evaluate(), 1);
        assert_eq!(history("busy"), ["firing", "acknowledged", "resolved"]);
        assert_eq!(
            one::<String>("SELECT acked_by FROM kpi.alerts WHERE alert = 'busy'"),
            None
        );
    }

    #[pg_test]
    fn a_threshold_alert_fires_and_resolves() {
        setup();
        create_checkout();
        Spi::run(
            "SELECT kpi.create_alert(name => 'busy', kpi => 'checkout', condition => 'orders > 5',
                    \"window\" => '10 minutes', severity => 'critical', labels => '{\"team\": \"shop\"}',
                    summary => '{{value}} orders in {{kpi}} (over {{threshold}})')",
        )
        .expect("create_alert");
        assert_eq!(states("busy"), [(String::new(), "inactive".into())]);
        assert_eq!(evaluate(), 1);
        assert_eq!(states("busy"), [(String::new(), "firing".into())]);
        let (value, expected) = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT value, kpi.value('checkout', 'orders', '10 minutes') FROM kpi.alerts WHERE alert = 'busy'",
        )
        .expect("value");
        assert_eq!(value, expected, "the alert's value is the KPI's");
        let summary = one::<String>("SELECT summary FROM kpi.alert_history WHERE rule = 'busy'")
            .unwrap_or_default();
        assert_eq!(
            summary,
            format!(
                "{} orders in checkout (over 5)",
                expected.unwrap_or_default()
            )
        );
        assert_eq!(evaluate(), 0, "still firing: no new transition");

        Spi::run("DELETE FROM orders WHERE created_at > now() - interval '1 hour'; SELECT kpi._flush_for_tests();")
            .expect("delete");
        assert_eq!(evaluate(), 1);
        assert_eq!(states("busy"), [(String::new(), "inactive".into())]);
        assert_eq!(history("busy"), ["firing", "resolved"]);
        let labels = one::<String>(
            "SELECT labels->>'team' FROM kpi.alert_history WHERE rule = 'busy' AND to_state = 'resolved'",
        );
        assert_eq!(labels.as_deref(), Some("shop"));
    }

    #[pg_test]
    fn the_fold_evaluates_the_rules_of_what_it_merged() {
        setup();
        create_checkout();
        Spi::run(
            "SELECT kpi.create_alert(name => 'big', kpi => 'checkout', condition => 'revenue >= 100000',
                    \"window\" => '10 minutes')",
        )
        .expect("create_alert");
        // Evaluate on every fold, not at most every 100 ms: the two folds follow at once.
        Spi::run("SET pg_kpi.alert_interval_ms = 0").expect("set");
        Spi::run("SELECT kpi.fold()").expect("fold");
        assert_eq!(states("big"), [(String::new(), "inactive".into())]);
        Spi::run(
            "INSERT INTO orders (created_at, region, channel, status, amount, quantity)
             VALUES (now(), 'eu', 'web', 'paid', 9999.99, 20);
             SELECT kpi._flush_for_tests(); SELECT kpi.fold();",
        )
        .expect("insert and fold");
        assert_eq!(states("big"), [(String::new(), "firing".into())]);
    }

    #[pg_test]
    fn group_by_makes_one_instance_per_value() {
        setup();
        create_checkout();
        Spi::run(
            "SELECT kpi.create_alert(name => 'sales', kpi => 'checkout', condition => 'orders >= 1',
                    \"window\" => '1 hour', group_by => 'region', summary => '{{group}}')",
        )
        .expect("create_alert");
        assert_eq!(evaluate(), 2);
        assert_eq!(
            states("sales"),
            [
                ("eu".into(), "firing".into()),
                ("us".into(), "firing".into())
            ]
        );
        Spi::run("DELETE FROM orders WHERE region = 'eu'; SELECT kpi._flush_for_tests();")
            .expect("delete eu");
        assert_eq!(evaluate(), 1);
        assert_eq!(states("sales"), [("us".into(), "firing".into())]);
        assert_eq!(history("sales"), ["firing:eu", "firing:us", "resolved:eu"]);
    }

    #[pg_test]
    fn a_failing_rule_is_reported_and_does_not_stop_the_others() {
        setup();
        create_checkout();
        Spi::run(
            "CREATE TABLE ev (at timestamptz NOT NULL, v int);
             SELECT kpi.create(name => 'ev', source => 'ev', time_column => 'at',
                               measures => 'n = count(*), total = sum(v)');
             SELECT kpi.create_alert(name => 'broken', kpi => 'ev', condition => 'n / n > 1');
             SELECT kpi.create_alert(name => 'fine', kpi => 'checkout', condition => 'orders > 0');",
        )
        .expect("rules");
        assert_eq!(evaluate(), 1, "the good rule fires");
        assert_eq!(states("fine"), [(String::new(), "firing".into())]);
        let error = one::<String>("SELECT last_error FROM kpi.alerts WHERE alert = 'broken'")
            .unwrap_or_default();
        assert!(error.contains("division by zero"), "{error}");
        // Fixed, the error clears.
        Spi::run("SELECT kpi.alter_alert('broken', condition => 'n / nullif(n, 0) > 1')")
            .expect("alter");
        evaluate();
        assert_eq!(
            one::<String>("SELECT last_error FROM kpi.alerts WHERE alert = 'broken'"),
            None
        );
    }

    #[pg_test]
    fn a_recovery_threshold_keeps_it_firing_and_alter_and_drop_work() {
        setup();
        create_checkout();
        let orders = one::<i64>("SELECT kpi.value('checkout', 'orders', '1 hour')::bigint")
            .unwrap_or_default();
        Spi::run(&format!(
            "SELECT kpi.create_alert(name => 'o', kpi => 'checkout', condition => 'orders > {}',
                    \"window\" => '1 hour', recover => {})",
            orders - 1,
            orders - 10
        ))
        .expect("create_alert");
        assert_eq!(evaluate(), 1);
        // Over the recovery line but under the threshold now: stays firing.
        Spi::run(&format!(
            "SELECT kpi.alter_alert('o', condition => 'orders > {}')",
            orders + 1
        ))
        .expect("raise the threshold");
        assert_eq!(evaluate(), 0);
        assert_eq!(states("o"), [(String::new(), "firing".into())]);
        Spi::run(&format!(
            "SELECT kpi.alter_alert('o', recover => {})",
            orders
        ))
        .expect("raise the recovery line");
        assert_eq!(evaluate(), 1);
        assert_eq!(history("o"), ["firing", "resolved"]);
        assert_eq!(one::<bool>("SELECT kpi.drop_alert('o')"), Some(true));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM kpi.alerts WHERE alert = 'o'"),
            Some(0)
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM kpi.alert_history WHERE rule = 'o'"),
            Some(2),
            "history outlives the rule"
        );
        assert_eq!(
            one::<bool>("SELECT kpi.drop_alert('o', if_exists => true)"),
            Some(false)
        );
    }

    /// Every bad rule fails with a SQLSTATE, a message and a hint, and creates nothing.
    #[pg_test]
    fn bad_alerts_are_rejected_cleanly() {
        setup();
        create_checkout();
        let base = "SELECT kpi.create_alert(name => 'a', kpi => 'checkout'";
        let cases: &[(&str, &str)] = &[
            ("condition => 'refunds > 1'", "UNDEFINED_COLUMN"),
            ("condition => 'orders + 1'", "DATATYPE_MISMATCH"),
            (
                "condition => 'random() * orders > 1'",
                "FEATURE_NOT_SUPPORTED",
            ),
            (
                "condition => 'orders > 1; DROP TABLE orders'",
                "SYNTAX_ERROR",
            ),
            (
                "condition => 'orders > (SELECT 1)'",
                "FEATURE_NOT_SUPPORTED",
            ),
            (
                "condition => '(SELECT count(*) FROM orders) > orders'",
                "FEATURE_NOT_SUPPORTED",
            ),
            ("condition => 'orders = 5'", "FEATURE_NOT_SUPPORTED"),
            ("condition => 'orders > revenue'", "FEATURE_NOT_SUPPORTED"),
            ("condition => '1 > 0'", "INVALID_PARAMETER_VALUE"),
            ("condition => ''", "SYNTAX_ERROR"),
            (
                "condition => 'orders > 1', severity => 'urgent'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 1', \"for\" => '-1 minute'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 1', \"window\" => '0'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 1', group_by => 'status'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 1', labels => '[1]'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 1', labels => '{\"bad-name\": \"x\"}'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 1', labels => '{\"team\": 3}'",
                "INVALID_PARAMETER_VALUE",
            ),
            (
                "condition => 'orders > 10', recover => 20",
                "INVALID_PARAMETER_VALUE",
            ),
        ];
        for (args, code) in cases {
            let sql = format!("{base}, {args})");
            let r = try_sql(&sql);
            assert!(
                matches!(&r, Err((c, _, Some(h))) if c.contains(code) && !h.is_empty()),
                "{sql}: {r:?}"
            );
        }
        let unknown_measure = try_sql(&format!("{base}, condition => 'refunds > 1')"));
        assert!(
            matches!(&unknown_measure, Err((_, _, Some(h))) if h.contains("revenue, orders")),
            "the hint lists the measures: {unknown_measure:?}"
        );
        for (sql, code) in [
            ("SELECT kpi.create_alert(name => 'a', kpi => 'nope', condition => 'n > 1')", "UNDEFINED_OBJECT"),
            ("SELECT kpi.create_alert(name => 'Bad Name', kpi => 'checkout', condition => 'orders > 1')", "INVALID_NAME"),
            ("SELECT kpi.alter_alert('nope', condition => 'orders > 1')", "UNDEFINED_OBJECT"),
            ("SELECT kpi.drop_alert('nope')", "UNDEFINED_OBJECT"),
        ] {
            let r = try_sql(sql);
            assert!(matches!(&r, Err((c, _, Some(_))) if c.contains(code)), "{sql}: {r:?}");
        }
        assert_eq!(one::<i64>("SELECT count(*) FROM kpi.alert_rules"), Some(0));

        Spi::run(
            "SELECT kpi.create_alert(name => 'a', kpi => 'checkout', condition => 'orders > 1')",
        )
        .expect("a good one");
        let dup = try_sql(
            "SELECT kpi.create_alert(name => 'a', kpi => 'checkout', condition => 'orders > 2')",
        );
        assert!(
            matches!(&dup, Err((c, _, Some(_))) if c.contains("DUPLICATE_OBJECT")),
            "{dup:?}"
        );
        let bad_alter = try_sql("SELECT kpi.alter_alert('a', condition => 'nope > 1')");
        assert!(bad_alter.is_err());
        assert_eq!(
            one::<String>("SELECT condition FROM kpi.alert_rules WHERE name = 'a'").as_deref(),
            Some("orders > 1"),
            "a failed alter keeps the rule"
        );
    }

    #[pg_test]
    fn only_the_kpis_owner_defines_alerts_and_others_see_only_what_they_may_read() {
        setup();
        create_checkout();
        Spi::run(
            "SELECT kpi.create_alert(name => 'a', kpi => 'checkout', condition => 'orders > 1')",
        )
        .expect("owner's alert");
        evaluate();
        Spi::run(
            "CREATE ROLE kpi_alert_stranger; GRANT SELECT ON kpi.checkout TO kpi_alert_stranger",
        )
        .expect("role");
        Spi::run("SET ROLE kpi_alert_stranger").expect("set role");
        let define = try_sql(
            "SELECT kpi.create_alert(name => 'b', kpi => 'checkout', condition => 'orders > 1')",
        );
        let seen = one::<i64>("SELECT count(*) FROM kpi.alerts");
        let history = one::<i64>("SELECT count(*) FROM kpi.alert_history");
        let drop = try_sql("SELECT kpi.drop_alert('a')");
        Spi::run("RESET ROLE").expect("reset");
        assert!(
            matches!(&define, Err((c, _, Some(_))) if c.contains("INSUFFICIENT_PRIVILEGE")),
            "{define:?}"
        );
        assert!(
            matches!(&drop, Err((c, _, Some(_))) if c.contains("INSUFFICIENT_PRIVILEGE")),
            "{drop:?}"
        );
        assert_eq!(
            (seen, history),
            (Some(1), Some(1)),
            "a reader of the KPI sees its alerts"
        );

        Spi::run(
            "REVOKE SELECT ON kpi.checkout FROM kpi_alert_stranger; SET ROLE kpi_alert_stranger",
        )
        .expect("revoke");
        let seen = one::<i64>("SELECT count(*) FROM kpi.alerts");
        let history = one::<i64>("SELECT count(*) FROM kpi.alert_history");
        Spi::run("RESET ROLE").expect("reset");
        assert_eq!(
            (seen, history),
            (Some(0), Some(0)),
            "nor of a KPI it cannot read"
        );
    }

    #[pg_test]
    fn absent_fires_with_no_rows_and_resolves_with_one() {
        Spi::run(
            "CREATE TABLE ev (at timestamptz NOT NULL, v int);
             SELECT kpi.create(name => 'ev', source => 'ev', time_column => 'at', measures => 'n = count(*)',
                               dimensions => '{v}');
             SELECT kpi.create_alert(name => 'quiet', kpi => 'ev', condition => 'absent(10 minutes)');",
        )
        .expect("rule");
        assert_eq!(
            one::<String>("SELECT \"window\"::text FROM kpi.alerts WHERE alert = 'quiet'")
                .as_deref(),
            Some("00:10:00"),
            "absent() sets the window"
        );
        assert_eq!(evaluate(), 1);
        assert_eq!(states("quiet"), [(String::new(), "firing".into())]);
        Spi::run("INSERT INTO ev VALUES (now(), 1); SELECT kpi._flush_for_tests();")
            .expect("insert");
        assert_eq!(evaluate(), 1);
        assert_eq!(history("quiet"), ["firing", "resolved"]);
        for (cond, extra, code) in [
            (
                "absent(10 minutes)",
                ", group_by => 'v'",
                "FEATURE_NOT_SUPPORTED",
            ),
            ("absent(soon)", "", "INVALID_PARAMETER_VALUE"),
            ("absent(-5 minutes)", "", "INVALID_PARAMETER_VALUE"),
        ] {
            let sql = format!(
                "SELECT kpi.create_alert(name => 'q2', kpi => 'ev', condition => '{cond}'{extra})"
            );
            let r = try_sql(&sql);
            assert!(
                matches!(&r, Err((c, _, Some(_))) if c.contains(code)),
                "{sql}: {r:?}"
            );
        }
    }

    /// Four weeks of history (11, 12, 13, 14 rows in the same 10 minutes of the week),
    /// then a normal and an abnormal present.
    #[pg_test]
    fn anomaly_compares_with_the_same_window_in_past_weeks() {
        Spi::run(
            "CREATE TABLE ev (at timestamptz NOT NULL, v int);
             INSERT INTO ev SELECT now() - w * interval '7 days' - interval '1 minute', 1
               FROM generate_series(1, 4) w, LATERAL generate_series(1, 10 + w) i;
             INSERT INTO ev SELECT now() - interval '1 minute', 1 FROM generate_series(1, 12);
             SELECT kpi.create(name => 'ev', source => 'ev', time_column => 'at', measures => 'n = count(*)');
             SELECT kpi.create_alert(name => 'odd', kpi => 'ev', condition => 'anomaly(n, 3)', \"window\" => '10 minutes');
             SELECT kpi.create_alert(name => 'odd8', kpi => 'ev', condition => 'anomaly(n, 3, 8)', \"window\" => '10 minutes');",
        )
        .expect("history and rules");
        evaluate();
        assert_eq!(states("odd"), [(String::new(), "inactive".into())]);
        assert_eq!(
            one::<String>("SELECT reason FROM kpi.alerts WHERE alert = 'odd'"),
            None
        );
        assert_eq!(
            one::<String>("SELECT reason FROM kpi.alerts WHERE alert = 'odd8'").as_deref(),
            Some("4 of 8 weeks of history needed")
        );
        Spi::run(
            "INSERT INTO ev SELECT now(), 1 FROM generate_series(1, 40); SELECT kpi._flush_for_tests();",
        )
        .expect("a spike");
        assert_eq!(evaluate(), 1, "only the rule with enough history fires");
        assert_eq!(states("odd"), [(String::new(), "firing".into())]);
        // mean 12.5, sample sd 1.291: (52 - 12.5) / 1.291 = 30.59
        let z =
            one::<f64>("SELECT value::float8 FROM kpi.alerts WHERE alert = 'odd'").unwrap_or(0.0);
        assert!((z - 30.594).abs() < 0.01, "{z}");
        assert_eq!(states("odd8"), [(String::new(), "inactive".into())]);
        for (cond, code) in [
            ("anomaly(nope, 3)", "UNDEFINED"),
            ("anomaly(n, -1)", "INVALID_PARAMETER_VALUE"),
            ("anomaly(n, 3, 1)", "INVALID_PARAMETER_VALUE"),
            ("anomaly(n)", "INVALID_PARAMETER_VALUE"),
        ] {
            let sql = format!(
                "SELECT kpi.create_alert(name => 'o2', kpi => 'ev', condition => '{cond}')"
            );
            let r = try_sql(&sql);
            assert!(
                matches!(&r, Err((c, _, Some(_))) if c.contains(code)),
                "{sql}: {r:?}"
            );
        }
    }
}
