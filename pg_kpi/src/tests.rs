//! `#[pg_test]`s of the SQL surface. Each runs in a transaction that pgrx rolls back,
//! so the pre-commit flush of captured deltas is exercised by the end-to-end tests in
//! tests/ instead; here, data reaches the views through backfill and `kpi.fold()`.

#[pgrx::pg_schema]
pub(crate) mod tests {
    use pgrx::pg_sys;
    use pgrx::prelude::*;

    /// Runs `sql` in a subtransaction; on error returns (SQLSTATE, message, hint) and rolls
    /// the subtransaction back, exactly like a PL/pgSQL EXCEPTION block.
    pub(crate) fn try_sql(sql: &str) -> Result<(), (String, String, Option<String>)> {
        unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            PgTryBuilder::new(|| {
                Spi::run(sql).expect("SPI");
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                Ok(())
            })
            .catch_others(|e| {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
                let report = match &e {
                    pg_sys::panic::CaughtError::PostgresError(r)
                    | pg_sys::panic::CaughtError::ErrorReport(r) => r,
                    pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport,
                };
                Err((
                    format!("{:?}", report.sql_error_code()),
                    report.message().to_string(),
                    report.hint().map(str::to_string),
                ))
            })
            .execute()
        }
    }

    pub(crate) fn setup() {
        Spi::run(
            "CREATE TABLE orders (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL,
                                  region text, channel text, status text, amount numeric(12,2),
                                  quantity int, note text);
             CREATE TABLE other (x int);
             INSERT INTO orders (created_at, region, channel, status, amount, quantity)
             SELECT now() - g * interval '50 seconds', (ARRAY['eu','us'])[1 + g % 2],
                    (ARRAY['web','app','store'])[1 + g % 3],
                    CASE WHEN g % 5 = 0 THEN 'cancelled' ELSE 'paid' END, g % 13 + 0.5, 1 + g % 3
               FROM generate_series(1, 200) g;",
        )
        .expect("setup");
    }

    pub(crate) fn create_checkout() {
        Spi::run(
            "SELECT kpi.create(name => 'checkout', source => 'orders', time_column => 'created_at',
                measures => 'revenue = sum(amount * quantity), orders = count(*), aov = avg(amount),
                             lo = min(amount), hi = max(amount), notes = count(note)',
                dimensions => '{region, channel}', filter => $$status <> 'cancelled'$$)",
        )
        .expect("create checkout");
    }

    /// The oracle: the KPI view equals a GROUP BY recomputation, both ways.
    fn assert_view_matches_source() {
        let diff = Spi::get_one::<i64>(
            "WITH truth AS (
               SELECT date_bin('1 minute', created_at, '2000-01-01 00:00:00+00') AS bucket, region, channel,
                      sum(amount * quantity) AS revenue, count(*) AS orders, round(avg(amount), 10) AS aov,
                      min(amount) AS lo, max(amount) AS hi, count(note) AS notes
                 FROM orders WHERE status <> 'cancelled' GROUP BY 1, 2, 3),
             kept AS (SELECT bucket, region, channel, revenue, orders, round(aov, 10), lo, hi, notes FROM kpi.checkout)
             SELECT (SELECT count(*) FROM (SELECT * FROM truth EXCEPT ALL SELECT * FROM kept) a)
                  + (SELECT count(*) FROM (SELECT * FROM kept EXCEPT ALL SELECT * FROM truth) b)",
        )
        .expect("oracle")
        .expect("count");
        assert_eq!(diff, 0, "kpi.checkout differs from its recomputation");
    }

    #[pg_test]
    fn backfill_matches_a_recomputation() {
        setup();
        create_checkout();
        assert_view_matches_source();
        let listed = Spi::get_one::<i64>(
            "SELECT count(*) FROM kpi.list() WHERE name = 'checkout' AND version = 1",
        )
        .expect("list");
        assert_eq!(listed, Some(1));
    }

    #[pg_test]
    fn reads_agree_with_the_view() {
        setup();
        create_checkout();
        let (value, direct) = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT kpi.value('checkout', 'revenue', '10 minutes'),
                    (SELECT sum(revenue) FROM kpi.checkout
                      WHERE bucket >= date_bin('1 minute', now() - interval '10 minutes', '2000-01-01 00:00:00+00'))",
        )
        .expect("value");
        assert_eq!(value, direct);
        let eu = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT kpi.value('checkout', 'lo', '1 day', '{\"region\": \"eu\"}'),
                    (SELECT min(lo) FROM kpi.checkout WHERE region = 'eu')",
        )
        .expect("value with dims");
        assert_eq!(eu.0, eu.1);
        let steps = Spi::get_one::<i64>(
            "SELECT count(*) FROM kpi.series('checkout', 'orders', now() - interval '2 hours', now(), '10 minutes')",
        )
        .expect("series");
        assert!(matches!(steps, Some(12) | Some(13)), "got {steps:?} steps");
        let series_total = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT (SELECT sum(value) FROM kpi.series('checkout', 'orders', now() - interval '1 day')),
                    (SELECT sum(orders)::numeric FROM kpi.checkout)",
        )
        .expect("series total");
        assert_eq!(series_total.0, series_total.1);
        let compared = Spi::get_two::<i64, i64>(
            "SELECT count(*) FILTER (WHERE day_ago = 0 AND week_ago = 0), count(*)
               FROM kpi.series('checkout', 'orders', now() - interval '1 hour', compare => true)",
        )
        .expect("series compare");
        assert_eq!(
            compared.0, compared.1,
            "no data a day or a week ago: comparisons are 0"
        );
        let top = Spi::get_one::<String>(
            "SELECT dimension_value FROM kpi.top('checkout', 'orders', 'channel', '1 day', 1)",
        )
        .expect("top");
        let expected = Spi::get_one::<String>(
            "SELECT channel FROM kpi.checkout GROUP BY channel ORDER BY sum(orders) DESC, channel LIMIT 1",
        )
        .expect("top truth");
        assert_eq!(top, expected);
        let snapshot = Spi::get_one::<pgrx::JsonB>("SELECT kpi.snapshot('checkout')")
            .expect("snapshot")
            .expect("not null");
        let s = snapshot.0;
        assert_eq!(s["kpi"], "checkout");
        assert_eq!(s["version"], 1);
        for m in ["revenue", "orders", "aov", "lo", "hi", "notes"] {
            for k in ["today", "window", "window_day_ago", "window_week_ago"] {
                assert!(s["measures"][m].get(k).is_some(), "snapshot lacks {m}.{k}");
            }
        }
    }

    #[pg_test]
    fn a_filter_guards_its_measures_in_the_shared_projection() {
        setup();
        create_checkout();
        // Same table, so one projection computes both KPIs' values. `amount / quantity`
        // would divide by zero on the rows this KPI's filter leaves out: it must not be
        // evaluated for them (the other KPI, unfiltered, never divides).
        Spi::run(
            "SELECT kpi.create(name => 'per_unit', source => 'orders', time_column => 'created_at',
                measures => 'unit = sum(amount / quantity), n = count(*), total = sum(amount)',
                filter => 'quantity > 0', bucket => '1 hour');
             SELECT kpi.create(name => 'all_rows', source => 'orders', time_column => 'created_at',
                measures => 'n = count(*), total = sum(amount)', bucket => '1 hour')",
        )
        .expect("create");
        Spi::run(
            "INSERT INTO orders (created_at, region, channel, status, amount, quantity)
             VALUES (now(), 'eu', 'web', 'paid', 5, 0), (now(), 'eu', 'web', 'paid', 9, 3),
                    (now(), 'us', 'app', 'cancelled', 4, 2)",
        )
        .expect("a row the filter excludes must not make the INSERT fail");
        Spi::run("SELECT kpi._flush_for_tests()").expect("flush");
        assert_view_matches_source();
        let same = Spi::get_one::<bool>(
            "SELECT (SELECT sum(unit) FROM kpi.per_unit)
                  = (SELECT sum(amount / quantity) FROM orders WHERE quantity > 0)",
        )
        .expect("per_unit");
        assert_eq!(same, Some(true), "per_unit sums exactly the admitted rows");
        let counts = Spi::get_two::<i64, i64>(
            "SELECT (SELECT sum(n) FROM kpi.all_rows)::bigint, (SELECT count(*) FROM orders)",
        )
        .expect("all_rows");
        assert_eq!(counts.0, counts.1, "the unfiltered KPI counts every row");
    }

    #[pg_test]
    fn long_and_toasted_dimension_values_are_captured_whole() {
        setup();
        Spi::run(
            "SELECT kpi.create(name => 'by_note', source => 'orders', time_column => 'created_at',
                measures => 'n = count(*)', dimensions => '{note}', bucket => '1 day');
             -- Compressible (stored compressed in line) and incompressible (moved to TOAST).
             INSERT INTO orders (created_at, region, channel, status, amount, quantity, note)
             VALUES (now(), 'eu', 'web', 'paid', 1, 1, repeat('ab', 20000)),
                    (now(), 'eu', 'web', 'paid', 1, 1,
                     (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)),
                    (now(), 'eu', 'web', 'paid', 1, 1, 'short')",
        )
        .expect("insert");
        Spi::run("SELECT kpi._flush_for_tests()").expect("flush");
        let missing = Spi::get_one::<i64>(
            "SELECT count(*) FROM (SELECT note FROM orders WHERE note IS NOT NULL
                                   EXCEPT SELECT note FROM kpi.by_note) m",
        )
        .expect("compare");
        assert_eq!(missing, Some(0), "every note must reach the view unchanged");
        // Folded: values far beyond a btree entry's 2,700 bytes are groups of their own in
        // the aggregate table, and so are two long values that differ only at the end.
        Spi::run(
            "SELECT kpi.fold();
             INSERT INTO orders (created_at, region, channel, status, amount, quantity, note)
             SELECT now(), 'eu', 'web', 'paid', 1, 1, note FROM orders WHERE note IS NOT NULL;
             INSERT INTO orders (created_at, region, channel, status, amount, quantity, note)
             SELECT now(), 'eu', 'web', 'paid', 1, 1, repeat('ab', 300) || 'x' || g
               FROM generate_series(1, 2) g;
             SELECT kpi._flush_for_tests();
             SELECT kpi.fold();",
        )
        .expect("fold long dimension values");
        let check = "SELECT count(*) FROM (
                       SELECT note, count(*) AS n FROM orders WHERE note IS NOT NULL GROUP BY note
                       EXCEPT SELECT note, sum(n) FROM kpi.by_note GROUP BY note) m";
        assert_eq!(Spi::get_one::<i64>(check).expect("compare"), Some(0));
        let id = Spi::get_one::<i32>("SELECT id FROM kpi.definitions WHERE name = 'by_note'")
            .expect("id")
            .expect("by_note exists");
        let groups = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM kpi._agg_{id} WHERE note IS NOT NULL"
        ))
        .expect("aggregate rows");
        assert_eq!(
            groups,
            Some(5),
            "three notes and the two near-copies, one row each"
        );
        // A backfill over the same rows builds the same groups.
        Spi::run(
            "SELECT kpi.create(name => 'by_note_again', source => 'orders',
                time_column => 'created_at', measures => 'n = count(*)',
                dimensions => '{note}', bucket => '1 day')",
        )
        .expect("backfill long dimension values");
        let check_again = check.replace("kpi.by_note ", "kpi.by_note_again ");
        assert_eq!(Spi::get_one::<i64>(&check_again).expect("compare"), Some(0));
    }

    #[pg_test]
    fn snapshot_with_dims_reads_only_those_rows() {
        setup();
        create_checkout();
        // Pending deltas too: the filtered snapshot must merge them like the others.
        Spi::run(
            "INSERT INTO orders (created_at, region, channel, status, amount, quantity)
             VALUES (now(), 'eu', 'web', 'paid', 7, 3), (now(), 'us', 'app', 'paid', 9, 1)",
        )
        .expect("insert");
        Spi::run("SELECT kpi._flush_for_tests()").expect("flush");
        let s = Spi::get_one::<pgrx::JsonB>(
            r#"SELECT kpi.snapshot('checkout', '{"region": "eu", "channel": "web"}')"#,
        )
        .expect("snapshot")
        .expect("not null")
        .0;
        assert_eq!(
            s["dims"],
            serde_json::json!({"region": "eu", "channel": "web"})
        );
        for m in ["revenue", "orders", "lo"] {
            let same = Spi::get_one::<bool>(&format!(
                r#"WITH d AS (SELECT '{{"region": "eu", "channel": "web"}}'::jsonb AS dims)
                   SELECT (kpi.snapshot('checkout', dims)->'measures'->'{m}'->>'window')::numeric
                        = kpi.value('checkout', '{m}', '1 hour', dims) FROM d"#
            ))
            .expect("compare");
            assert_eq!(
                same,
                Some(true),
                "{m}: the snapshot's window equals kpi.value with dims"
            );
        }
        let all = Spi::get_one::<pgrx::JsonB>("SELECT kpi.snapshot('checkout')")
            .expect("snapshot")
            .expect("not null")
            .0;
        assert_eq!(all["dims"], serde_json::json!({}));
        assert_ne!(
            all["measures"]["orders"]["window"], s["measures"]["orders"]["window"],
            "the filter must restrict the rows read"
        );
        for (dims, code) in [
            (r#"'{"nope": "x"}'"#, "UNDEFINED_COLUMN"),
            (r#"'["eu"]'"#, "INVALID_PARAMETER_VALUE"),
        ] {
            let err = try_sql(&format!("SELECT kpi.snapshot('checkout', {dims})"))
                .expect_err("bad dims must fail");
            assert!(err.0.contains(code), "{dims}: {err:?}");
            assert!(err.2.is_some(), "{dims}: a hint is expected");
        }
    }

    #[pg_test]
    fn fold_merges_pending_deltas_exactly() {
        setup();
        create_checkout();
        // Deltas as the capture trigger writes them, flushed here by hand because the
        // pre-commit flush never runs inside a rolled-back test transaction.
        Spi::run(
            "INSERT INTO orders (created_at, region, channel, status, amount, quantity)
             VALUES (now(), 'eu', 'web', 'paid', 100, 2)",
        )
        .expect("insert");
        Spi::run("DELETE FROM orders WHERE amount = (SELECT min(amount) FROM orders WHERE status <> 'cancelled')")
            .expect("delete");
        Spi::run("UPDATE orders SET region = 'us' WHERE region = 'eu' AND amount > 10")
            .expect("update");
        Spi::run("SELECT kpi._flush_for_tests()").expect("flush");
        assert_view_matches_source();
        let folded = Spi::get_one::<i64>("SELECT kpi.fold()")
            .expect("fold")
            .expect("count");
        assert_eq!(folded, 1);
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM kpi.deltas").expect("deltas"),
            Some(0)
        );
        assert_view_matches_source();
        assert_eq!(
            Spi::get_one::<i64>("SELECT version FROM kpi.list() WHERE name = 'checkout'")
                .expect("version"),
            Some(2)
        );
    }

    #[pg_test]
    fn truncate_resets_the_kpi() {
        setup();
        create_checkout();
        Spi::run("TRUNCATE orders").expect("truncate");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM kpi.checkout").expect("count"),
            Some(0)
        );
    }

    #[pg_test]
    fn drop_removes_everything() {
        setup();
        create_checkout();
        Spi::run("SELECT kpi.drop('checkout')").expect("drop");
        let left = Spi::get_one::<i64>(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'kpi'::regnamespace
                       AND relname NOT IN ('definitions', 'deltas', 'notify_seq', 'definitions_pkey',
                                           'definitions_name_key', 'definitions_id_seq')
                       AND relname <> 'alerts' AND relname NOT LIKE 'alert\\_%'
                       -- 0.2.0's catalogs of KPI kinds and rebuilds
                       AND relname NOT LIKE 'definition\\_kinds%' AND relname NOT LIKE 'rebuild%'
                       -- 0.3.0's catalog of derived KPIs
                       AND relname NOT LIKE 'derived%')
                  + (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal)
                  + (SELECT count(*) FROM kpi.list())",
        )
        .expect("leftovers");
        assert_eq!(left, Some(0));
        assert_eq!(
            Spi::get_one::<bool>("SELECT kpi.drop('checkout', if_exists => true)").expect("drop"),
            Some(false)
        );
    }

    /// Every bad definition fails with a SQLSTATE, a message and a hint, and leaves the
    /// catalog, schema kpi and the source's triggers exactly as they were.
    #[pg_test]
    fn bad_definitions_are_rejected_cleanly() {
        setup();
        create_checkout();
        let base = "name => 'k2', source => 'orders', time_column => 'created_at'";
        let cases: Vec<(String, &str)> = vec![
            ("SELECT kpi.create(name => 'k2', source => 'nope', time_column => 'created_at', measures => 'n = count(*)')".into(), "UNDEFINED_TABLE"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(nope)')"), "UNDEFINED_COLUMN"),
            ("SELECT kpi.create(name => 'k2', source => 'orders', time_column => 'region', measures => 'n = count(*)')".into(), "DATATYPE_MISMATCH"),
            ("SELECT kpi.create(name => 'k2', source => 'orders', time_column => 'nope', measures => 'n = count(*)')".into(), "UNDEFINED_COLUMN"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(note)')"), "DATATYPE_MISMATCH"),
            (format!("SELECT kpi.create({base}, measures => 'n = avg(region)')"), "DATATYPE_MISMATCH"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(amount +)')"), "SYNTAX_ERROR"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(other.x)')"), "UNDEFINED_TABLE"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum((SELECT x FROM other))')"), "FEATURE_NOT_SUPPORTED"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(sum(amount))')"), "FEATURE_NOT_SUPPORTED"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', filter => 'amount')"), "DATATYPE_MISMATCH"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', filter => 'true; DROP TABLE orders')"), "SYNTAX_ERROR"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', filter => 'true FROM other')"), "SYNTAX_ERROR"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', filter => $$true --$$)"), "Ok?"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(amount)); DROP TABLE orders; SELECT (1')"), "SYNTAX_ERROR"),
            (format!("SELECT kpi.create({base}, measures => 'n = sum(amount) -- ')"), "Ok?"),
            ("SELECT kpi.create(name => 'k2', source => 'orders', time_column => 'created_at); DROP TABLE orders; --', measures => 'n = count(*)')".into(), "UNDEFINED_COLUMN"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', dimensions => '{{\"region); DROP TABLE orders; --\"}}')"), "UNDEFINED_COLUMN"),
            ("SELECT kpi.create(name => 'checkout', source => 'orders', time_column => 'created_at', measures => 'n = count(*)')".into(), "DUPLICATE_OBJECT"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*), n = sum(amount)')"), "DUPLICATE_COLUMN"),
            (format!("SELECT kpi.create({base}, measures => 'region = count(*)', dimensions => '{{region}}')"), "DUPLICATE_COLUMN"),
            ("SELECT kpi.create(name => 'Checkout', source => 'orders', time_column => 'created_at', measures => 'n = count(*)')".into(), "INVALID_NAME"),
            ("SELECT kpi.create(name => '9lives', source => 'orders', time_column => 'created_at', measures => 'n = count(*)')".into(), "INVALID_NAME"),
            (format!("SELECT kpi.create(name => '{}', source => 'orders', time_column => 'created_at', measures => 'n = count(*)')", "a".repeat(49)), "INVALID_NAME"),
            ("SELECT kpi.create(name => '', source => 'orders', time_column => 'created_at', measures => 'n = count(*)')".into(), "INVALID_NAME"),
            (format!("SELECT kpi.create({base}, measures => 'Bad = count(*)')"), "INVALID_NAME"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', bucket => '0 seconds')"), "INVALID_PARAMETER_VALUE"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', bucket => '-1 minute')"), "INVALID_PARAMETER_VALUE"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', bucket => '1 month')"), "INVALID_PARAMETER_VALUE"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', bucket => '1 hour', retention => '10 minutes')"), "INVALID_PARAMETER_VALUE"),
            (format!("SELECT kpi.create({base}, measures => 'n = median(amount)')"), "INVALID_PARAMETER_VALUE"),
            (format!("SELECT kpi.create({base}, measures => '')"), "INVALID_PARAMETER_VALUE"),
            (format!("SELECT kpi.create({base}, measures => 'n = count(*)', dimensions => '{{bucket}}')"), "INVALID_PARAMETER_VALUE"),
            ("SELECT kpi.value('nope', 'x')".into(), "UNDEFINED_OBJECT"),
            ("SELECT kpi.value('checkout', 'nope')".into(), "UNDEFINED_COLUMN"),
            ("SELECT kpi.value('checkout', 'orders', '1 hour', '{\"nope\": 1}')".into(), "UNDEFINED_COLUMN"),
            ("SELECT * FROM kpi.series('checkout', 'orders', now() - interval '1 hour', now(), '90 seconds')".into(), "INVALID_PARAMETER_VALUE"),
            ("SELECT kpi.drop('nope')".into(), "UNDEFINED_OBJECT"),
        ];
        let snapshot = "SELECT (SELECT string_agg(name, ',' ORDER BY name) FROM kpi.list()) || '|' ||
                               (SELECT count(*) FROM pg_class WHERE relnamespace = 'kpi'::regnamespace) || '|' ||
                               (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal) || '|' ||
                               (SELECT count(*) FROM pg_class WHERE relname = 'orders')";
        let before = Spi::get_one::<String>(snapshot).expect("snapshot");
        for (sql, expected) in &cases {
            match (try_sql(sql), *expected) {
                (Ok(()), "Ok?") => {
                    // A trailing comment is harmless once deparsed; drop the KPI again.
                    Spi::run("SELECT kpi.drop('k2')").expect("drop k2");
                }
                (Ok(()), _) => panic!("expected {expected} from {sql}, but it succeeded"),
                (Err((code, message, hint)), expected) => {
                    assert!(
                        code.contains(expected) || expected == "Ok?",
                        "{sql}: expected {expected}, got {code}: {message}"
                    );
                    assert!(
                        hint.is_some_and(|h| !h.is_empty()),
                        "{sql}: no hint for {code}: {message}"
                    );
                    assert!(!message.is_empty());
                }
            }
            let after = Spi::get_one::<String>(snapshot).expect("snapshot");
            assert_eq!(before, after, "{sql} left something behind");
        }
    }

    #[pg_test]
    fn non_owners_cannot_define_and_views_are_private() {
        setup();
        create_checkout();
        Spi::run("CREATE ROLE kpi_stranger; GRANT USAGE ON SCHEMA public TO kpi_stranger; GRANT SELECT ON orders TO kpi_stranger")
            .expect("role");
        Spi::run("SET ROLE kpi_stranger").expect("set role");
        let define = try_sql("SELECT kpi.create(name => 'mine', source => 'orders', time_column => 'created_at', measures => 'n = count(*)')");
        let read = try_sql("SELECT * FROM kpi.checkout");
        let value = try_sql("SELECT kpi.value('checkout', 'orders')");
        let listed = Spi::get_one::<i64>("SELECT count(*) FROM kpi.list()").expect("list");
        Spi::run("RESET ROLE").expect("reset role");
        assert!(
            matches!(define, Err((ref c, _, Some(_))) if c.contains("INSUFFICIENT_PRIVILEGE")),
            "{define:?}"
        );
        assert!(
            matches!(read, Err((ref c, _, _)) if c.contains("INSUFFICIENT_PRIVILEGE")),
            "{read:?}"
        );
        assert!(
            matches!(value, Err((ref c, _, Some(_))) if c.contains("INSUFFICIENT_PRIVILEGE")),
            "{value:?}"
        );
        assert_eq!(
            listed,
            Some(0),
            "kpi.list() shows KPIs the role cannot read"
        );
        Spi::run("GRANT SELECT ON kpi.checkout TO kpi_stranger; SET ROLE kpi_stranger")
            .expect("grant");
        let granted =
            try_sql("SELECT kpi.value('checkout', 'orders'), (SELECT count(*) FROM kpi.checkout)");
        Spi::run("RESET ROLE").expect("reset role");
        assert!(granted.is_ok(), "{granted:?}");
    }

    /// count_distinct and percentile: within their error bounds after backfill, after
    /// deletes captured by the trigger (read before and after the fold), one shared
    /// sketch for several quantiles of one expression.
    #[pg_test]
    fn sketches_stay_within_bounds() {
        Spi::run(
            "CREATE TABLE hits (at timestamptz NOT NULL, user_id int, latency double precision);
             INSERT INTO hits SELECT now() - (g % 600) * interval '1 second', g % 5000, 1 + (g * 7919 % 100000) / 100.0
               FROM generate_series(1, 50000) g;
             SELECT kpi.create(name => 'hits', source => 'hits', time_column => 'at', bucket => '1 minute',
                measures => 'users = count_distinct(user_id), p50 = percentile(latency, 0.5),
                             p95 = percentile(latency, 0.95), p99 = percentile(latency, 0.99)');",
        )
        .expect("setup");
        let shared = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = (SELECT ('kpi._agg_' || id)::regclass FROM kpi.definitions WHERE name = 'hits')
                AND attname LIKE '%_dd'",
        )
        .expect("columns");
        assert_eq!(
            shared,
            Some(1),
            "three quantiles of one expression must share one sketch"
        );
        let check = |label: &str| {
            let row = Spi::get_three::<f64, f64, f64>(
                "SELECT kpi.value('hits', 'users', '1 hour')::float8 / (SELECT count(DISTINCT user_id) FROM hits),
                        kpi.value('hits', 'p95', '1 hour')::float8 / (SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY latency) FROM hits),
                        kpi.value('hits', 'p50', '1 hour')::float8 / (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY latency) FROM hits)",
            )
            .expect("ratios");
            let (users, p95, p50) = (
                row.0.unwrap_or(0.0),
                row.1.unwrap_or(0.0),
                row.2.unwrap_or(0.0),
            );
            assert!(
                (users - 1.0).abs() < 0.02,
                "{label}: distinct count off by {users}"
            );
            assert!((p95 - 1.0).abs() < 0.01, "{label}: p95 off by {p95}");
            assert!((p50 - 1.0).abs() < 0.01, "{label}: p50 off by {p50}");
        };
        check("backfill");
        // Delete every user below 2500 and the slowest tenth: deltas carry removals.
        Spi::run("DELETE FROM hits WHERE user_id < 2500 OR latency > 900").expect("delete");
        Spi::run("SELECT kpi._flush_for_tests()").expect("flush");
        check("pending deletes");
        Spi::run("SELECT kpi.fold()").expect("fold");
        check("folded deletes");
        let bad = try_sql("SELECT kpi.create(name => 'h2', source => 'hits', time_column => 'at', measures => 'p = percentile(latency, 1.5)')");
        assert!(
            matches!(bad, Err((ref c, _, Some(_))) if c.contains("INVALID_PARAMETER_VALUE")),
            "{bad:?}"
        );
        let text = try_sql("SELECT kpi.create(name => 'h2', source => 'hits', time_column => 'at', measures => 'p = percentile(at::text, 0.5)')");
        assert!(
            matches!(text, Err((ref c, _, Some(_))) if c.contains("DATATYPE_MISMATCH")),
            "{text:?}"
        );
    }

    /// The finalized sketch values cached in generated columns (read for a group that
    /// is one folded row) must equal merging the sketches (read for any other group):
    /// after backfill, with deltas pending on folded buckets and on a bucket of their
    /// own, and after the fold.
    #[pg_test]
    fn cached_sketch_values_equal_the_merge() {
        Spi::run(
            "CREATE TABLE hits (at timestamptz NOT NULL, user_id int, latency double precision);
             INSERT INTO hits SELECT date_trunc('minute', now()) - (g % 600) * interval '1 second', g % 5000, 1 + (g * 7919 % 100000) / 100.0
               FROM generate_series(1, 20000) g;
             SELECT kpi.create(name => 'hits', source => 'hits', time_column => 'at', bucket => '1 minute',
                measures => 'users = count_distinct(user_id), p50 = percentile(latency, 0.5),
                             p95 = percentile(latency, 0.95)');",
        )
        .expect("setup");
        let id = Spi::get_one::<i32>("SELECT id FROM kpi.definitions WHERE name = 'hits'")
            .expect("id")
            .expect("hits exists");
        // Every step of the series against the merge of the state rows of its bucket.
        let mismatches = |label: &str| {
            let sql = format!(
                "WITH merged AS (
                   SELECT bucket, kpi._hll_count_all(array_agg(_m0_hll)) AS users,
                          kpi._dd_quantile_all(array_agg(_m1_dd), 0.5) AS p50,
                          kpi._dd_quantile_all(array_agg(_m1_dd), 0.95) AS p95
                     FROM kpi._state_{id} GROUP BY bucket)
                 SELECT count(*) FROM merged m
                   JOIN kpi.series('hits', 'users', now() - interval '30 minutes') u ON u.bucket = m.bucket
                   JOIN kpi.series('hits', 'p50', now() - interval '30 minutes') a ON a.bucket = m.bucket
                   JOIN kpi.series('hits', 'p95', now() - interval '30 minutes') b ON b.bucket = m.bucket
                  WHERE u.value IS DISTINCT FROM m.users
                     OR a.value IS DISTINCT FROM m.p50::numeric
                     OR b.value IS DISTINCT FROM m.p95::numeric"
            );
            let n = Spi::get_one::<i64>(&sql).expect("compare").unwrap_or(-1);
            assert_eq!(
                n, 0,
                "{label}: series steps differing from the merged sketches"
            );
        };
        let (missing, rows) = Spi::get_two::<i64, i64>(&format!(
            "SELECT count(*) FILTER (WHERE _m0_est IS NULL OR _m2_q IS NULL), count(*) FROM kpi._agg_{id}"
        ))
        .expect("cached");
        assert_eq!(
            (missing, rows),
            (Some(0), Some(11)),
            "a cached value in each of the 11 folded buckets"
        );
        // Sketch columns use lz4 where the server has it (pglz burns CPU on dense HLLs).
        let compression = Spi::get_two::<String, bool>(&format!(
            "SELECT string_agg(attname || ':' || attcompression::text, ',' ORDER BY attname),
                    (SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression')
               FROM pg_attribute WHERE attrelid = 'kpi._agg_{id}'::regclass AND atttypid = 'bytea'::regtype"
        ))
        .expect("compression");
        let expected = if compression.1 == Some(true) {
            "_m0_hll:l,_m1_dd:l"
        } else {
            "_m0_hll:,_m1_dd:"
        };
        assert_eq!(compression.0.as_deref(), Some(expected));
        mismatches("backfill");
        Spi::run(
            "INSERT INTO hits SELECT date_trunc('minute', now()) - (g % 300) * interval '1 second', 5000 + g, 2000 + g
               FROM generate_series(1, 500) g;
             INSERT INTO hits SELECT date_trunc('minute', now()) - interval '20 minutes', g, g FROM generate_series(1, 50) g;
             SELECT kpi._flush_for_tests();",
        )
        .expect("pending");
        mismatches("pending");
        Spi::run("SELECT kpi.fold()").expect("fold");
        mismatches("folded");
    }

    /// Reads without a dimension filter use the dimensionless tier (one row per bucket):
    /// it must agree with the source, with deltas pending and after the fold, including
    /// min/max after their extreme rows were deleted.
    #[pg_test]
    fn totals_tier_agrees_with_the_source() {
        setup();
        create_checkout();
        let id = Spi::get_one::<i32>("SELECT id FROM kpi.definitions WHERE name = 'checkout'")
            .expect("id")
            .expect("exists");
        let check = |when: &str| {
            let row = Spi::get_one::<bool>(
                "WITH src AS (
                   SELECT * FROM orders WHERE status <> 'cancelled'
                      AND created_at >= date_bin('1 minute', now() - interval '1 day', '2000-01-01 00:00:00+00'))
                 SELECT kpi.value('checkout', 'revenue', '1 day') = (SELECT sum(amount * quantity) FROM src)
                    AND kpi.value('checkout', 'orders', '1 day') = (SELECT count(*) FROM src)
                    AND round(kpi.value('checkout', 'aov', '1 day'), 10) = (SELECT round(avg(amount), 10) FROM src)
                    AND kpi.value('checkout', 'lo', '1 day') = (SELECT min(amount) FROM src)
                    AND kpi.value('checkout', 'hi', '1 day') = (SELECT max(amount) FROM src)
                    AND (SELECT sum(value) FROM kpi.series('checkout', 'orders', now() - interval '1 day'))
                        = (SELECT count(*) FROM src)",
            )
            .expect("totals reads");
            assert_eq!(row, Some(true), "totals differ from the source {when}");
        };
        check("after backfill");
        Spi::run(
            "DELETE FROM orders WHERE amount < 2 OR amount > 12;
             UPDATE orders SET amount = amount + 100, region = 'us' WHERE id % 7 = 0;
             INSERT INTO orders (created_at, region, channel, status, amount, quantity)
             VALUES (now(), NULL, 'web', 'paid', 0.25, 2);
             SELECT kpi._flush_for_tests();",
        )
        .expect("changes");
        check("with deltas pending");
        Spi::run("SELECT kpi.fold()").expect("fold");
        check("after the fold");
        let per_bucket = Spi::get_one::<bool>(&format!(
            "SELECT (SELECT count(*) FROM kpi._agg_{id}_r1)
                  = (SELECT count(DISTINCT bucket) FROM kpi._agg_{id})"
        ))
        .expect("totals rows");
        assert_eq!(per_bucket, Some(true), "one totals row per bucket");
    }

    /// Rollup tiers: the base keeps 2 hours of minutes, an hourly tier 30 days, a daily
    /// tier forever; reads over longer windows use the coarser tiers and stay exact.
    #[pg_test]
    fn rollups_answer_beyond_base_retention() {
        Spi::run(
            "CREATE TABLE ev (at timestamptz NOT NULL, v int);
             INSERT INTO ev SELECT now() - g * interval '7 minutes', g % 10 FROM generate_series(0, 3000) g;
             SELECT kpi.create(name => 'ev', source => 'ev', time_column => 'at', measures => 'n = count(*), s = sum(v), hi = max(v)',
                               bucket => '1 minute', retention => '2 hours',
                               rollups => '{\"1 hour\": \"30 days\", \"1 day\": null}');
             DELETE FROM ev WHERE v = 9;
             SELECT kpi._flush_for_tests();
             SELECT kpi.fold();",
        )
        .expect("setup");
        let id = Spi::get_one::<i32>("SELECT id FROM kpi.definitions WHERE name = 'ev'")
            .expect("id")
            .expect("exists");
        let old_minutes = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM kpi._agg_{id} WHERE bucket < now() - interval '2 hours'"
        ))
        .expect("retention");
        assert_eq!(old_minutes, Some(0), "base retention not applied");
        let (got, want) = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT kpi.value('ev', 's', '5 days'),
                    (SELECT sum(v)::numeric FROM ev WHERE at >= date_bin('1 hour', now() - interval '5 days', '2000-01-01 00:00:00+00'))",
        )
        .expect("hourly value");
        assert_eq!(got, want, "hourly tier answer");
        let (got, want) = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT (SELECT sum(value) FROM kpi.series('ev', 'n', now() - interval '20 days', now(), '1 day')),
                    (SELECT count(*)::numeric FROM ev WHERE at >= date_bin('1 day', now() - interval '20 days', '2000-01-01 00:00:00+00'))",
        )
        .expect("daily series");
        assert_eq!(got, want, "daily series total");
        let (got, want) = Spi::get_two::<AnyNumeric, AnyNumeric>(
            "SELECT kpi.value('ev', 'hi', '3 days'), (SELECT max(v)::numeric FROM ev)",
        )
        .expect("max after deletes");
        assert_eq!(got, want, "max in rollup tier after deletes");
        let base = "SELECT kpi.create(name => 'ev2', source => 'ev', time_column => 'at', measures => 'n = count(*)'";
        for bad in [
            format!("{base}, rollups => '{{\"90 seconds\": null}}')"),
            format!("{base}, rollups => '{{\"1 hour\": null, \"90 minutes\": null}}')"),
            format!("{base}, rollups => '{{\"1 hour\": \"10 minutes\"}}')"),
            format!("{base}, rollups => '{{\"soon\": null}}')"),
            format!("{base}, rollups => '[1]')"),
        ] {
            let r = try_sql(&bad);
            assert!(
                matches!(r, Err((ref c, _, Some(_))) if c.contains("INVALID_PARAMETER_VALUE")),
                "{bad}: {r:?}"
            );
        }
    }
}
