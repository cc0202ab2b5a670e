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
}
