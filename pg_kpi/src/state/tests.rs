//! `#[pg_test]`s of current-state and overdue KPIs: definitions, their refusals (each
//! leaving nothing behind), and reads within one transaction (a transaction reads its
//! own captured changes). Concurrency, the fold and deadlines passing are covered by
//! tests/tests/oracle_state.rs and notifier/tests/e2e_state.rs.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::tests::try_sql;
    use pgrx::prelude::*;

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn setup() {
        Spi::run(
            "CREATE TABLE shipments (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL,
                                     status text NOT NULL, sku text, warehouse text, quantity int);
             CREATE TABLE counters (id int, n int, label text);
             INSERT INTO shipments (created_at, status, sku, warehouse, quantity)
             SELECT now() - g * interval '10 minutes',
                    (ARRAY['new','picking','packed','shipped','cancelled'])[1 + g % 5],
                    'sku' || (g % 3), 'wh' || (g % 2), g
               FROM generate_series(1, 50) g;",
        )
        .expect("setup");
    }

    fn nothing_left() {
        assert_eq!(one::<i64>("SELECT count(*) FROM kpi.definitions"), Some(0));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM kpi.definition_kinds"),
            Some(0)
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'kpi' AND (c.relname LIKE '\\_agg\\_%' OR c.relname LIKE '\\_samples\\_%')"
            ),
            Some(0)
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'shipments'::regclass"
            ),
            Some(0)
        );
    }

    fn refused(sql: &str, code: &str, message: &str, hint: &str) {
        let (c, m, h) = try_sql(sql).expect_err(sql);
        assert_eq!(c, code, "{sql}: {m}");
        assert!(
            m.contains(message),
            "{sql}: message {m:?} lacks {message:?}"
        );
        let h = h.unwrap_or_default();
        assert!(h.contains(hint), "{sql}: hint {h:?} lacks {hint:?}");
        nothing_left();
    }

    fn by_status(name: &str) -> Vec<(String, i64)> {
        Spi::connect(|c| {
            c.select(
                "SELECT dimension_value, value::bigint FROM kpi.top($1, 'n', 'status', n => 10) ORDER BY 1",
                None,
                &[name.into()],
            )
            .expect("top")
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i64>(2).ok().flatten().unwrap_or_default(),
                )
            })
            .collect()
        })
    }

    fn truth_by_status() -> Vec<(String, i64)> {
        Spi::connect(|c| {
            c.select(
                "SELECT status, count(*) FROM shipments GROUP BY 1 ORDER BY 1",
                None,
                &[],
            )
            .expect("truth")
            .map(|r| {
                (
                    r.get::<String>(1).ok().flatten().unwrap_or_default(),
                    r.get::<i64>(2).ok().flatten().unwrap_or_default(),
                )
            })
            .collect()
        })
    }

    #[pg_test]
    fn a_state_kpi_is_the_table_as_it_is_now() {
        setup();
        Spi::run(
            "SELECT kpi.create_state(name => 'pipeline', source => 'shipments',
                    measures => 'n = count(*), units = sum(quantity), most = max(quantity)',
                    dimensions => '{status}', resolution => '10 seconds')",
        )
        .expect("create_state");
        // Rows of any age count: there is no window.
        assert_eq!(
            one::<i64>("SELECT kpi.value('pipeline', 'n')::bigint"),
            Some(50)
        );
        assert_eq!(
            one::<i64>("SELECT kpi.value('pipeline', 'n', \"window\" => '1 second')::bigint"),
            Some(50)
        );
        assert_eq!(by_status("pipeline"), truth_by_status());
        // Moving rows between stages, inserting, deleting: read in the same transaction.
        Spi::run(
            "UPDATE shipments SET status = 'shipped' WHERE status = 'packed';
             INSERT INTO shipments (created_at, status, quantity) VALUES (now() - interval '3 days', 'new', 7);
             DELETE FROM shipments WHERE id % 7 = 0;
             UPDATE shipments SET quantity = quantity + 1000 WHERE id = 1;",
        )
        .expect("dml");
        assert_eq!(by_status("pipeline"), truth_by_status());
        assert_eq!(
            one::<i64>(
                "SELECT kpi.value('pipeline', 'units', dims => '{\"status\": \"new\"}')::bigint"
            ),
            one::<i64>("SELECT sum(quantity) FROM shipments WHERE status = 'new'")
        );
        assert_eq!(
            one::<i64>("SELECT kpi.value('pipeline', 'most')::bigint"),
            one::<i64>("SELECT max(quantity)::bigint FROM shipments")
        );
        // The view shows one row per status, at the one bucket.
        assert_eq!(
            one::<i64>("SELECT count(DISTINCT bucket) FROM kpi.pipeline"),
            Some(1)
        );
        let snap = one::<pgrx::JsonB>("SELECT kpi.snapshot('pipeline')")
            .expect("snapshot")
            .0;
        let total = one::<i64>("SELECT count(*) FROM shipments").unwrap_or_default();
        assert_eq!(snap["measures"]["n"]["window"], serde_json::json!(total));
        assert_eq!(snap["measures"]["n"]["today"], serde_json::json!(total));
        // History: the sample taken at creation is carried forward.
        let series = one::<i64>(
            "SELECT value::bigint FROM kpi.series('pipeline', 'n', now() - interval '1 minute')
              ORDER BY bucket DESC LIMIT 1",
        );
        assert_eq!(series, Some(50));
        assert_eq!(
            one::<i64>("SELECT count(*) FROM kpi.series('pipeline', 'n', now() - interval '1 minute', step => '10 seconds')"),
            Some(7)
        );
        assert_eq!(
            one::<String>("SELECT kind FROM kpi.definition_kinds"),
            Some("state".into())
        );
        Spi::run("SELECT kpi.drop('pipeline')").expect("drop");
        nothing_left();
    }

    #[pg_test]
    fn a_filtered_state_kpi_and_truncate() {
        setup();
        Spi::run(
            "SELECT kpi.create_state(name => 'open_orders', source => 'shipments', measures => 'n = count(*)',
                    filter => $$status NOT IN ('shipped', 'cancelled')$$)",
        )
        .expect("create_state");
        let truth = "SELECT count(*) FROM shipments WHERE status NOT IN ('shipped', 'cancelled')";
        assert_eq!(
            one::<i64>("SELECT kpi.value('open_orders', 'n')::bigint"),
            one::<i64>(truth)
        );
        Spi::run("UPDATE shipments SET status = 'shipped' WHERE id < 20").expect("update");
        assert_eq!(
            one::<i64>("SELECT kpi.value('open_orders', 'n')::bigint"),
            one::<i64>(truth)
        );
        Spi::run("TRUNCATE shipments").expect("truncate");
        assert_eq!(
            one::<i64>("SELECT kpi.value('open_orders', 'n')::bigint"),
            Some(0)
        );
    }

    #[pg_test]
    fn create_state_refuses_bad_definitions_and_leaves_nothing() {
        setup();
        let base = |args: &str| {
            format!("SELECT kpi.create_state(name => 'st', source => 'shipments', {args})")
        };
        refused(
            &base("measures => 'n = median(quantity)'"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "median",
            "count(*)",
        );
        refused(
            &base("measures => 'n = count(*)', resolution => '0 seconds'"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "invalid resolution",
            "positive fixed-width interval",
        );
        refused(
            &base("measures => 'n = count(*)', resolution => '1 month'"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "invalid resolution",
            "positive fixed-width interval",
        );
        refused(
            &base("measures => 'n = count(*)', resolution => '1 hour', history => '1 minute'"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "shorter than the resolution",
            "Keep at least one sample",
        );
        refused(
            &base("measures => 'n = count(*)', dimensions => '{nope}'"),
            "ERRCODE_UNDEFINED_COLUMN",
            "nope",
            "shipments",
        );
        refused(
            &base("measures => 'n = count(*)', filter => 'quantity'"),
            "ERRCODE_DATATYPE_MISMATCH",
            "boolean",
            "condition",
        );
        refused(
            "SELECT kpi.create_state(name => 'st', source => 'nowhere', measures => 'n = count(*)')",
            "ERRCODE_UNDEFINED_TABLE",
            "nowhere",
            "existing table",
        );
        Spi::run(&base(
            "measures => 'n = count(*)', dimensions => '{status}'",
        ))
        .expect("create");
        let (c, m, _) = try_sql(&base("measures => 'n = count(*)'")).expect_err("twice");
        assert_eq!(c, "ERRCODE_DUPLICATE_OBJECT", "{m}");
        // The history of a state KPI is of its totals.
        let (c, m, h) = try_sql(
            "SELECT * FROM kpi.series('st', 'n', now() - interval '1 hour', dims => '{\"status\": \"new\"}')",
        )
        .expect_err("series with dims");
        assert_eq!(c, "ERRCODE_FEATURE_NOT_SUPPORTED", "{m}");
        assert!(h.unwrap_or_default().contains("without dims"));
    }

    #[pg_test]
    fn an_overdue_kpi_counts_open_rows_past_their_deadline() {
        setup();
        Spi::run(
            "SELECT kpi.create_overdue(name => 'late', source => 'shipments',
                    due => 'created_at + interval ''2 hours''',
                    open_filter => $$status NOT IN ('shipped', 'cancelled')$$,
                    dimensions => '{warehouse}')",
        )
        .expect("create_overdue");
        let truth = "SELECT count(*) FROM shipments
                      WHERE created_at + interval '2 hours' < now() AND status NOT IN ('shipped', 'cancelled')";
        assert_eq!(
            one::<i64>("SELECT kpi.value('late', 'overdue')::bigint"),
            one::<i64>(truth)
        );
        assert!(one::<i64>(truth).unwrap_or_default() > 0);
        // Closing rows, opening new ones due in the past and the future.
        Spi::run(
            "UPDATE shipments SET status = 'shipped' WHERE id % 4 = 0;
             INSERT INTO shipments (created_at, status, warehouse) VALUES
                (now() - interval '5 hours', 'new', 'wh0'), (now() + interval '1 hour', 'new', 'wh1');
             UPDATE shipments SET created_at = now() WHERE id = 11;",
        )
        .expect("dml");
        assert_eq!(
            one::<i64>("SELECT kpi.value('late', 'overdue')::bigint"),
            one::<i64>(truth)
        );
        assert_eq!(
            one::<i64>(
                "SELECT kpi.value('late', 'overdue', dims => '{\"warehouse\": \"wh0\"}')::bigint"
            ),
            one::<i64>(&format!("{truth} AND warehouse = 'wh0'"))
        );
        let by_wh =
            one::<i64>("SELECT sum(value)::bigint FROM kpi.top('late', 'overdue', 'warehouse')");
        assert_eq!(by_wh, one::<i64>(truth));
        // Folded, the queue holds open rows only: the closed rows' groups are gone
        // (else every read and deadline probe would walk them), and nothing changed.
        Spi::run("SELECT kpi._flush_for_tests(); SELECT kpi.fold()").expect("fold");
        let agg = format!(
            "kpi._agg_{}",
            one::<i32>("SELECT id FROM kpi.definitions WHERE name = 'late'").unwrap_or_default()
        );
        assert_eq!(
            one::<i64>(&format!("SELECT count(*) FROM {agg} WHERE _n = 0")),
            Some(0)
        );
        assert_eq!(
            one::<i64>(&format!("SELECT sum(_n)::bigint FROM {agg}")),
            one::<i64>(
                "SELECT count(*) FROM shipments WHERE status NOT IN ('shipped', 'cancelled')"
            )
        );
        assert_eq!(
            one::<i64>("SELECT kpi.value('late', 'overdue')::bigint"),
            one::<i64>(truth)
        );
        // A row opened and closed between two folds leaves no group either.
        Spi::run(
            "INSERT INTO shipments (id, created_at, status, warehouse)
                VALUES (1000, now() - interval '3 hours', 'new', 'wh1');
             UPDATE shipments SET status = 'cancelled' WHERE id = 1000;
             SELECT kpi._flush_for_tests();
             SELECT kpi.fold();",
        )
        .expect("open and close");
        assert_eq!(
            one::<i64>(&format!("SELECT count(*) FROM {agg} WHERE _n = 0")),
            Some(0)
        );
        assert_eq!(
            one::<i64>("SELECT kpi.value('late', 'overdue')::bigint"),
            one::<i64>(truth)
        );
        let snap = one::<pgrx::JsonB>("SELECT kpi.snapshot('late')")
            .expect("snapshot")
            .0;
        assert_eq!(
            snap["measures"]["overdue"]["window"],
            serde_json::json!(one::<i64>(truth))
        );
        // An alert rule reads the current count.
        Spi::run(
            "SELECT kpi.create_alert(name => 'sla', kpi => 'late', condition => 'overdue > 3',
                    \"window\" => '1 minute', severity => 'warning')",
        )
        .expect("create_alert");
        Spi::run("SELECT kpi.evaluate_alerts()").expect("evaluate");
        assert_eq!(
            one::<String>("SELECT state FROM kpi.alerts WHERE alert = 'sla'"),
            Some("firing".into())
        );
        Spi::run("SELECT kpi.drop('late')").expect("drop");
    }

    #[pg_test]
    fn create_overdue_refuses_bad_deadlines_and_leaves_nothing() {
        setup();
        let base = |args: &str| {
            format!("SELECT kpi.create_overdue(name => 'late', source => 'shipments', {args})")
        };
        refused(
            &base("due => 'quantity + 2'"),
            "ERRCODE_DATATYPE_MISMATCH",
            "must be of type timestamptz, timestamp or date, not integer",
            "The deadline must be",
        );
        refused(
            &base("due => $$now() + interval '1 hour'$$"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "does not read the row",
            "computed from each row",
        );
        refused(
            &base("due => 'created_at + interval ''1 hour''', open_filter => 'shipped_at IS NULL'"),
            "ERRCODE_UNDEFINED_COLUMN",
            "invalid open_filter",
            "open_filter",
        );
        refused(
            &base("due => 'created_at + interval ''1 hour''', open_filter => 'quantity'"),
            "ERRCODE_DATATYPE_MISMATCH",
            "open_filter must be boolean",
            "condition",
        );
        refused(
            &base("due => 'nope + interval ''1 hour'''"),
            "ERRCODE_UNDEFINED_COLUMN",
            "invalid due expression",
            "due expression",
        );
        refused(
            "SELECT kpi.create_overdue(name => 'late', source => 'counters', due => 'n + interval ''1 hour''')",
            "ERRCODE_UNDEFINED_COLUMN",
            "has no timestamptz, timestamp or date column",
            "Add one to the table",
        );
        refused(
            &base("due => 'created_at', measures => 'x = count(*), y = wat(id)'"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "wat",
            "count(*)",
        );
    }
}
