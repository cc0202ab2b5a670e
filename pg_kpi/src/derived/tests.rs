//! `#[pg_test]`s of derived measures within a KPI: every read path gives the formula
//! over the window's merged components (sum/sum, not an average of ratios), and bad
//! formulas are refused leaving nothing behind.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::tests::try_sql;
    use pgrx::prelude::*;

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Two buckets with very different ratios: 1 error in 100 attempts, then 9 in 10.
    /// The 2-bucket error rate is 10/110, where averaging per-bucket rates gives 0.455.
    fn setup() {
        Spi::run(
            "CREATE TABLE calls (id bigserial PRIMARY KEY, at timestamptz NOT NULL,
                                 region text NOT NULL, ok boolean NOT NULL, amount numeric);
             INSERT INTO calls (at, region, ok, amount)
             SELECT date_trunc('minute', now()) - interval '3 minutes', 'eu', g > 1, 2
               FROM generate_series(1, 100) g;
             INSERT INTO calls (at, region, ok, amount)
             SELECT date_trunc('minute', now()) - interval '1 minute', 'us', g > 9, 5
               FROM generate_series(1, 10) g;
             SELECT kpi.create('calls', 'calls', 'at',
                measures => 'attempts = count(*), errors = count(nullif(ok, true)),
                             revenue = sum(amount), per_call = revenue / attempts,
                             error_rate = errors / attempts, error_pct = round(error_rate * 100, 2),
                             none = errors / nullif(attempts - attempts, 0)',
                dimensions => '{region}', bucket => '1 minute');",
        )
        .expect("setup");
    }

    fn nothing_left() {
        assert_eq!(one::<i64>("SELECT count(*) FROM kpi.definitions"), Some(0));
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'calls'::regclass"
            ),
            Some(0)
        );
    }

    #[pg_test]
    fn a_ratio_over_a_window_is_sum_over_sum_in_every_read() {
        setup();
        let v = |sql: &str| one::<String>(sql).unwrap_or_default();
        // The window's merged components, then the formula.
        assert_eq!(
            v("SELECT round(kpi.value('calls', 'error_rate', '10 minutes'), 6)::text"),
            "0.090909"
        );
        assert_eq!(
            v("SELECT kpi.value('calls', 'error_pct', '10 minutes')::text"),
            "9.09"
        );
        assert_eq!(
            v("SELECT round(kpi.value('calls', 'per_call', '10 minutes'), 6)::text"),
            round6(250.0 / 110.0)
        );
        // Division by zero reads as NULL, not an error.
        assert_eq!(
            one::<String>("SELECT kpi.value('calls', 'none', '10 minutes')::text"),
            None
        );
        // With a dimension filter, one region's ratio.
        assert_eq!(
            v("SELECT round(kpi.value('calls', 'error_rate', '10 minutes', '{\"region\":\"us\"}'), 4)::text"),
            "0.9000"
        );
        // Series: per step; a step spanning both buckets is again sum/sum.
        assert_eq!(
            v("SELECT string_agg(coalesce(round(value, 4)::text, '-'), ',' ORDER BY bucket)
                 FROM kpi.series('calls', 'error_rate', date_trunc('minute', now()) - interval '3 minutes',
                                 date_trunc('minute', now()) - interval '1 minute')"),
            "0.0100,-,0.9000"
        );
        assert_eq!(
            v(
                "SELECT round(value, 4)::text FROM kpi.series('calls', 'error_rate',
                     date_trunc('hour', now()) - interval '1 hour', now(), step => '1 day')
                WHERE value IS NOT NULL"
            ),
            "0.0909"
        );
        // Top ranks by the derived measure.
        assert_eq!(
            v("SELECT string_agg(dimension_value || '=' || round(value, 2), ',' ORDER BY value DESC)
                 FROM kpi.top('calls', 'error_rate', 'region', '10 minutes')"),
            "us=0.90,eu=0.01"
        );
        // The view: per bucket and region.
        assert_eq!(
            v("SELECT string_agg(region || '=' || round(error_rate, 2), ',' ORDER BY bucket) FROM kpi.calls"),
            "eu=0.01,us=0.90"
        );
        // The snapshot: every range of the card.
        assert_eq!(
            v("SELECT round((kpi.snapshot('calls')->'measures'->'error_rate'->>'window')::numeric, 6)::text"),
            "0.090909"
        );
        // kpi.list shows the formula.
        assert_eq!(
            v(
                "SELECT m->>'formula' FROM kpi.list(), jsonb_array_elements(measures) m
                WHERE m->>'name' = 'error_pct'"
            ),
            "round(error_rate * 100, 2)"
        );
    }

    fn round6(x: f64) -> String {
        format!("{x:.6}")
    }

    #[pg_test]
    fn an_alert_condition_reads_a_derived_measure() {
        setup();
        Spi::run(
            "SELECT kpi.create_alert(name => 'errors', kpi => 'calls', condition => 'error_rate > 0.05',
                    \"window\" => '10 minutes');
             SELECT kpi.create_alert(name => 'per_region', kpi => 'calls', condition => 'error_rate > 0.5',
                    \"window\" => '10 minutes', group_by => 'region');",
        )
        .expect("create_alert");
        assert!(one::<i64>("SELECT kpi.evaluate_alerts()").unwrap_or(-1) >= 1);
        assert_eq!(
            one::<String>(
                "SELECT string_agg(alert || ':' || coalesce(group_value, '') || ':' || state, ',' ORDER BY alert, group_value)
                   FROM kpi.alerts"
            )
            .unwrap_or_default(),
            "errors::firing,per_region:us:firing"
        );
    }

    #[pg_test]
    fn bad_formulas_are_refused_and_leave_nothing() {
        Spi::run("CREATE TABLE calls (id int, at timestamptz, ok boolean)").expect("table");
        let refused = |measures: &str, code: &str, message: &str, hint: &str| {
            let sql =
                format!("SELECT kpi.create('calls', 'calls', 'at', measures => $m${measures}$m$)");
            let (c, m, h) = try_sql(&sql).expect_err(&sql);
            assert_eq!(c, code, "{measures}: {m}");
            assert!(m.contains(message), "{measures}: {m:?} lacks {message:?}");
            let h = h.unwrap_or_default();
            assert!(h.contains(hint), "{measures}: hint {h:?} lacks {hint:?}");
            nothing_left();
        };
        refused(
            "n = count(*), r = n / attempts",
            "ERRCODE_UNDEFINED_COLUMN",
            "derived measure \"r\" reads unknown measure \"attempts\"",
            "n, r",
        );
        refused(
            "n = count(*), a = b + n, b = a * 2",
            "ERRCODE_INVALID_RECURSION",
            "a -> b -> a",
            "never itself",
        );
        refused(
            "n = count(*), a = a + n",
            "ERRCODE_INVALID_RECURSION",
            "a -> a",
            "",
        );
        refused(
            "n = count(*), r = sum(id) / n",
            "ERRCODE_SYNTAX_ERROR",
            "\"sum\" is not a function a derived measure can call",
            "belong in their own measure",
        );
        refused(
            "n = count(*), r = n / other.n",
            "ERRCODE_FEATURE_NOT_SUPPORTED",
            "reads \"other.n\" of another KPI",
            "kpi.create_derived",
        );
        refused(
            "n = count(*), r = n; drop table calls",
            "ERRCODE_SYNTAX_ERROR",
            "unexpected character ';'",
            "",
        );
        refused(
            "n = count(*), r = n +",
            "ERRCODE_SYNTAX_ERROR",
            "ends too early",
            "",
        );
        refused(
            "n = count(*), r = 'x'",
            "ERRCODE_SYNTAX_ERROR",
            "unexpected character",
            "",
        );
    }

    /// Two KPIs with one-minute buckets, and one hourly: 200 visitors and 10 orders in the
    /// last minutes (5 % conversion), 50 carts.
    fn setup_across() {
        Spi::run(
            "CREATE TABLE visits (at timestamptz NOT NULL, channel text NOT NULL, cart boolean NOT NULL);
             CREATE TABLE orders (at timestamptz NOT NULL, channel text NOT NULL, paid boolean NOT NULL, amount numeric);
             INSERT INTO visits SELECT now() - (g % 20) * interval '1 minute', CASE WHEN g % 4 = 0 THEN 'ads' ELSE 'web' END, g % 4 = 1
               FROM generate_series(1, 200) g;
             INSERT INTO orders SELECT now() - (g % 20) * interval '1 minute', CASE WHEN g % 2 = 0 THEN 'ads' ELSE 'web' END, g <= 8, 10
               FROM generate_series(1, 10) g;
             SELECT kpi.create('sessions', 'visits', 'at', measures => 'visitors = count(*), carts = count(nullif(cart, false))',
                               dimensions => '{channel}');
             SELECT kpi.create('checkout', 'orders', 'at', measures => 'orders = count(*), paid = count(nullif(paid, false)), revenue = sum(amount)',
                               dimensions => '{channel}');
             SELECT kpi.create('hourly', 'orders', 'at', measures => 'orders = count(*)', bucket => '1 hour');",
        )
        .expect("setup");
    }

    #[pg_test]
    fn a_derived_kpi_reads_every_side_over_the_same_window() {
        setup_across();
        Spi::run("SELECT kpi.create_derived('conversion', 'checkout.orders / sessions.visitors')")
            .expect("create_derived");
        let v = |sql: &str| one::<String>(sql).unwrap_or_default();
        assert_eq!(
            v("SELECT kpi.value('conversion', 'value', '1 hour')::text"),
            "0.05000000000000000000"
        );
        assert_eq!(
            v("SELECT round(kpi.value('conversion', 'value', '1 hour', '{\"channel\":\"ads\"}'), 4)::text"),
            "0.1000"
        );
        // The series: per bucket, the same as the two sides' series.
        assert_eq!(
            v("SELECT count(*)::text FROM kpi.series('conversion', 'value', now() - interval '30 minutes') c
                 JOIN kpi.series('checkout', 'orders', now() - interval '30 minutes') o USING (bucket)
                 JOIN kpi.series('sessions', 'visitors', now() - interval '30 minutes') s USING (bucket)
                WHERE c.value IS NOT DISTINCT FROM o.value / nullif(s.value, 0)"),
            v("SELECT count(*)::text FROM kpi.series('checkout', 'orders', now() - interval '30 minutes')")
        );
        // The snapshot: the card of any KPI, at the sum of the sides' versions.
        assert_eq!(
            v("SELECT round((kpi.snapshot('conversion')->'measures'->'value'->>'window')::numeric, 4)::text"),
            "0.0500"
        );
        assert_eq!(
            v("SELECT (kpi.snapshot('conversion')->>'version') || ' ' || (kpi.snapshot('conversion')->>'dimensions')"),
            "2 [\"channel\"]"
        );
        // kpi.list lists it, and its view reads the last day.
        assert_eq!(
            v("SELECT measures->0->>'formula' || ' v' || version || ' ' || dimensions::text FROM kpi.list() WHERE name = 'conversion'"),
            "checkout.orders / sessions.visitors v2 {channel}"
        );
        assert_eq!(v("SELECT round(sum(value), 2)::text FROM kpi.conversion WHERE value IS NOT NULL"), v(
            "SELECT round(sum(value), 2)::text FROM kpi.series('conversion', 'value', now() - interval '1 day') WHERE value IS NOT NULL"
        ));
        // A funnel: values, step-to-step and from-the-first conversions.
        assert_eq!(
            v("SELECT string_agg(name || '=' || value || '/' || coalesce(round(from_previous, 2)::text, '-') || '/' || round(from_first, 3), ' ' ORDER BY step)
                 FROM kpi.funnel('{sessions.visitors, sessions.carts, checkout.orders, checkout.paid}', '1 hour')"),
            "sessions.visitors=200/-/1.000 sessions.carts=50/0.25/0.250 checkout.orders=10/0.20/0.050 checkout.paid=8/0.80/0.040"
        );
        // Its sides cannot be dropped while it reads them; it can.
        let (c, m, h) = try_sql("SELECT kpi.drop('checkout')").expect_err("drop side");
        assert_eq!(c, "ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST", "{m}");
        assert!(
            m.contains("read by derived KPI conversion")
                && h.unwrap_or_default().contains("nothing was dropped"),
            "{m}"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM kpi.definitions WHERE name = 'checkout'"),
            Some(1)
        );
        let (c, _, _) =
            try_sql("SELECT * FROM kpi.top('conversion', 'value', 'channel')").expect_err("top");
        assert_eq!(c, "ERRCODE_FEATURE_NOT_SUPPORTED");
        let (c, _, _) = try_sql("SELECT kpi.value('conversion', 'rate')").expect_err("measure");
        assert_eq!(c, "ERRCODE_UNDEFINED_COLUMN");
        assert_eq!(one::<bool>("SELECT kpi.drop('conversion')"), Some(true));
        assert_eq!(one::<i64>("SELECT count(*) FROM kpi.derived"), Some(0));
        assert_eq!(
            one::<bool>("SELECT to_regclass('kpi.conversion') IS NULL"),
            Some(true)
        );
        assert_eq!(one::<bool>("SELECT kpi.drop('checkout')"), Some(true));
    }

    #[pg_test]
    fn bad_derived_kpis_and_funnels_are_refused_and_leave_nothing() {
        setup_across();
        Spi::run(
            "CREATE TABLE stock (sku text, qty int);
             SELECT kpi.create_state('on_hand', 'stock', 'units = sum(qty)');
             SELECT kpi.create_derived('aov', 'checkout.revenue / checkout.orders');",
        )
        .expect("setup");
        let refused = |sql: &str, code: &str, message: &str, hint: &str| {
            let (c, m, h) = try_sql(sql).expect_err(sql);
            assert_eq!(c, code, "{sql}: {m}");
            assert!(m.contains(message), "{sql}: {m:?} lacks {message:?}");
            let h = h.unwrap_or_default();
            assert!(h.contains(hint), "{sql}: hint {h:?} lacks {hint:?}");
            assert_eq!(
                one::<i64>("SELECT count(*) FROM kpi.derived"),
                Some(1),
                "{sql}"
            );
            assert_eq!(
                one::<i64>("SELECT count(*) FROM pg_catalog.pg_views WHERE schemaname = 'kpi' AND viewname = 'x'"),
                Some(0),
                "{sql}"
            );
        };
        let create = |formula: &str| format!("SELECT kpi.create_derived('x', $f${formula}$f$)");
        refused(
            &create("nope.orders / sessions.visitors"),
            "ERRCODE_UNDEFINED_OBJECT",
            "reads KPI \"nope\", which does not exist",
            "kpi.list()",
        );
        refused(
            &create("checkout.nope / sessions.visitors"),
            "ERRCODE_UNDEFINED_COLUMN",
            "has no measure \"nope\"",
            "orders, paid, revenue",
        );
        refused(
            &create("hourly.orders / sessions.visitors"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "incompatible buckets",
            "same bucket width",
        );
        refused(
            &create("x.value / sessions.visitors"),
            "ERRCODE_INVALID_RECURSION",
            "reads itself",
            "",
        );
        refused(
            &create("aov.value / sessions.visitors"),
            "ERRCODE_FEATURE_NOT_SUPPORTED",
            "reads derived KPI \"aov\"",
            "formula out",
        );
        refused(
            &create("on_hand.units / sessions.visitors"),
            "ERRCODE_FEATURE_NOT_SUPPORTED",
            "current-state or overdue",
            "derived measure",
        );
        refused(
            &create("orders / visitors"),
            "ERRCODE_SYNTAX_ERROR",
            "does not name its KPI",
            "kpi_name.measure",
        );
        refused(
            &create("sum(checkout.orders)"),
            "ERRCODE_SYNTAX_ERROR",
            "not a function",
            "",
        );
        refused(
            "SELECT kpi.create_derived('aov', 'checkout.orders / sessions.visitors')",
            "ERRCODE_DUPLICATE_OBJECT",
            "already exists",
            "",
        );
        refused(
            "SELECT kpi.create_derived('checkout', 'checkout.orders / sessions.visitors')",
            "ERRCODE_INVALID_RECURSION",
            "reads itself",
            "",
        );
        refused(
            "SELECT kpi.create_derived('hourly', 'checkout.orders / sessions.visitors')",
            "ERRCODE_DUPLICATE_OBJECT",
            "already exists",
            "",
        );
        let funnel = |steps: &str| format!("SELECT * FROM kpi.funnel($s${steps}$s$)");
        refused(
            &funnel("{sessions.visitors}"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "at least two steps",
            "",
        );
        refused(
            &funnel("{sessions.visitors, visitors}"),
            "ERRCODE_SYNTAX_ERROR",
            "is not kpi_name.measure",
            "",
        );
        refused(
            &funnel("{sessions.visitors, checkout.nope}"),
            "ERRCODE_UNDEFINED_COLUMN",
            "no measure \"nope\"",
            "",
        );
        refused(
            &funnel("{sessions.visitors, nope.orders}"),
            "ERRCODE_UNDEFINED_OBJECT",
            "does not exist",
            "",
        );
        refused(
            &funnel("{sessions.visitors, hourly.orders}"),
            "ERRCODE_INVALID_PARAMETER_VALUE",
            "incompatible buckets",
            "",
        );
        refused(
            &funnel("{sessions.visitors, aov.value}"),
            "ERRCODE_FEATURE_NOT_SUPPORTED",
            "derived KPI",
            "",
        );
        refused(
            &funnel("{sessions.visitors, on_hand.units}"),
            "ERRCODE_FEATURE_NOT_SUPPORTED",
            "current-state",
            "",
        );
    }
}
