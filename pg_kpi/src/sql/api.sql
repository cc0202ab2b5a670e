-- pg_kpi public SQL API: named arguments, defaults and documentation over the
-- internal kpi._… functions. See docs/sql-contract.md.

-- The capture trigger is plain C ABI (it needs the executor's tuple slots).
CREATE FUNCTION kpi._capture() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'pg_kpi_capture';
COMMENT ON FUNCTION kpi._capture() IS 'pg_kpi: row trigger capturing KPI deltas (installed by kpi.create)';

-- SECURITY DEFINER: whoever may TRUNCATE the source must be able to reset its KPIs,
-- which live in tables they cannot write.
CREATE FUNCTION kpi._truncate() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
BEGIN
    PERFORM kpi._reset_source(TG_RELID);
    RETURN NULL;
END $$;
COMMENT ON FUNCTION kpi._truncate() IS 'pg_kpi: rebuilds a source''s KPIs after TRUNCATE';

CREATE FUNCTION kpi.create(
    name        text,
    source      text,
    time_column text,
    measures    text,
    dimensions  text[]   DEFAULT '{}',
    filter      text     DEFAULT NULL,
    bucket      interval DEFAULT '1 minute',
    retention   interval DEFAULT NULL,
    backfill    boolean  DEFAULT true,
    rollups     jsonb    DEFAULT NULL)
RETURNS integer LANGUAGE sql VOLATILE AS $$
    SELECT kpi._create(name, kpi._resolve_table(source), time_column, measures, coalesce(dimensions, '{}'),
                       filter, bucket, retention, coalesce(backfill, true), rollups)
$$;
COMMENT ON FUNCTION kpi.create(text, text, text, text, text[], text, interval, interval, boolean, jsonb) IS
'Defines a KPI over a table: measures per time bucket and dimension values, kept exact by triggers. Returns its id.';

-- The same with the source given as a regclass value.
CREATE FUNCTION kpi.create(
    name text, source regclass, time_column text, measures text, dimensions text[] DEFAULT '{}',
    filter text DEFAULT NULL, bucket interval DEFAULT '1 minute', retention interval DEFAULT NULL,
    backfill boolean DEFAULT true, rollups jsonb DEFAULT NULL)
RETURNS integer LANGUAGE sql VOLATILE AS $$
    SELECT kpi._create(name, source::oid, time_column, measures, coalesce(dimensions, '{}'),
                       filter, bucket, retention, coalesce(backfill, true), rollups)
$$;
COMMENT ON FUNCTION kpi.create(text, regclass, text, text, text[], text, interval, interval, boolean, jsonb) IS
'Defines a KPI over a table given as a regclass. Returns its id.';

CREATE FUNCTION kpi.drop(name text, if_exists boolean DEFAULT false)
RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT kpi._drop(name, if_exists) $$;
COMMENT ON FUNCTION kpi.drop(text, boolean) IS 'Drops a KPI, its view and state; removes the source''s triggers when no KPI is left on it.';

-- jit = off here and on the reads below: these queries are cheap, but their jsonb row
-- estimates are not, and JIT compilation would cost more than running them.
CREATE FUNCTION kpi.fold() RETURNS bigint LANGUAGE sql VOLATILE SET jit = off AS $$ SELECT kpi._fold() $$;
COMMENT ON FUNCTION kpi.fold() IS 'Folds pending deltas into the aggregates now (the fold worker does this on its own); returns delta rows folded.';

CREATE FUNCTION kpi.status() RETURNS TABLE (
    database text, worker_pid integer, worker_state text, last_fold_at timestamptz,
    last_fold_ms double precision, folds bigint, pending_rows bigint,
    fold_lag_seconds double precision, last_error text, last_error_at timestamptz,
    failing_kpis text[])
LANGUAGE sql VOLATILE AS $$ SELECT * FROM kpi._status() $$;
COMMENT ON FUNCTION kpi.status() IS
'Whether this database''s KPIs are being folded: the fold worker (pid; state running, stopped, disabled, not_listed or not_preloaded), the last successful fold (when, how long, how many since the server started), delta rows pending and an upper bound on the age of the oldest (fold_lag_seconds), the last fold error and when, and the KPIs whose merge fails now.';

-- Rows of the catalog the caller may see: KPIs they own or whose view they can read.
ALTER TABLE kpi.definitions ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_kpis ON kpi.definitions FOR SELECT USING (
    pg_catalog.pg_has_role(owner, 'USAGE')
    OR pg_catalog.has_table_privilege(pg_catalog.format('kpi.%I', name), 'SELECT'));
GRANT SELECT ON kpi.definitions TO PUBLIC;

CREATE FUNCTION kpi.list() RETURNS TABLE (
    name text, source regclass, time_column text, measures jsonb, dimensions text[],
    filter text, bucket interval, retention interval, version bigint, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT d.name, d.source, d.time_column, d.measures, d.dimensions, d.filter, d.bucket,
           d.retention, d.version, d.created_at
      FROM kpi.definitions d
     WHERE pg_catalog.strpos(d.name, '#') = 0  -- not a rebuild's hidden definition
    UNION ALL
    -- Derived KPIs: one measure "value"; the version is the sum of their components'.
    SELECT x.name, NULL, NULL,
           pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'name', 'value', 'kind', 'derived', 'formula', x.formula, 'kpis', x.kpis)),
           -- The dimensions every component has.
           (SELECT coalesce(pg_catalog.array_agg(t.u ORDER BY t.u), '{}')
              FROM (SELECT u FROM kpi.definitions d, unnest(d.dimensions) AS u
                     WHERE d.name = ANY (x.kpis)
                     GROUP BY u HAVING count(*) = pg_catalog.cardinality(x.kpis)) t),
           NULL, c.bucket, NULL, c.version, x.created_at
      FROM kpi.derived x,
           LATERAL (SELECT min(d.bucket) AS bucket, coalesce(sum(d.version), 0)::bigint AS version
                      FROM kpi.definitions d WHERE d.name = ANY (x.kpis)) c
     ORDER BY 1
$$;
COMMENT ON FUNCTION kpi.list() IS 'The KPIs you can see, one row each.';

CREATE FUNCTION kpi.value(name text, measure text, "window" interval DEFAULT '1 hour', dims jsonb DEFAULT '{}')
RETURNS numeric LANGUAGE sql STABLE SET jit = off AS $$ SELECT kpi._value(name, measure, "window", coalesce(dims, '{}')) $$;
COMMENT ON FUNCTION kpi.value(text, text, interval, jsonb) IS 'A measure over the buckets overlapping the last "window", optionally for some dimension values.';

CREATE FUNCTION kpi.series(name text, measure text, since timestamptz, until timestamptz DEFAULT now(),
                           step interval DEFAULT NULL, dims jsonb DEFAULT '{}', compare boolean DEFAULT false)
RETURNS TABLE (bucket timestamptz, value numeric, day_ago numeric, week_ago numeric) LANGUAGE sql STABLE SET jit = off AS $$
    SELECT * FROM kpi._series(name, measure, since, until, step, coalesce(dims, '{}'), coalesce(compare, false))
$$;
COMMENT ON FUNCTION kpi.series(text, text, timestamptz, timestamptz, interval, jsonb, boolean) IS 'A measure per step from since to until, gap-filled (counts 0, others NULL); with compare => true also the same steps one day and one week earlier (day_ago, week_ago). Reads the finest rollup tier that still holds the range.';

CREATE FUNCTION kpi.top(name text, measure text, dimension text, "window" interval DEFAULT '1 hour', n integer DEFAULT 10)
RETURNS TABLE (dimension_value text, value numeric) LANGUAGE sql STABLE SET jit = off AS $$
    SELECT * FROM kpi._top(name, measure, dimension, "window", n)
$$;
COMMENT ON FUNCTION kpi.top(text, text, text, interval, integer) IS 'The n largest values of a measure by one dimension over the last "window".';

CREATE FUNCTION kpi.snapshot(name text, dims jsonb DEFAULT '{}') RETURNS jsonb LANGUAGE sql STABLE SET jit = off AS $$
    SELECT kpi._snapshot(name, coalesce(dims, '{}'))
$$;
COMMENT ON FUNCTION kpi.snapshot(text, jsonb) IS 'Everything a dashboard card needs: per measure today, the last hour, and that hour a day and a week ago, with the KPI version; over the rows whose dimensions equal dims (all rows for {}).';

-- Alerts (see src/alerts and docs/sql-contract.md).
CREATE FUNCTION kpi.create_alert(
    name            text,
    kpi             text,
    condition       text,
    "window"        interval DEFAULT '5 minutes',
    "for"           interval DEFAULT '0',
    keep_firing_for interval DEFAULT '0',
    severity        text     DEFAULT 'warning',
    labels          jsonb    DEFAULT '{}',
    summary         text     DEFAULT NULL,
    group_by        text     DEFAULT NULL,
    recover         numeric  DEFAULT NULL)
RETURNS integer LANGUAGE sql VOLATILE AS $$
    SELECT kpi._create_alert(name, kpi, condition, "window", coalesce("for", '0'),
                             coalesce(keep_firing_for, '0'), coalesce(severity, 'warning'),
                             coalesce(labels, '{}'), summary, group_by, recover)
$$;
COMMENT ON FUNCTION kpi.create_alert(text, text, text, interval, interval, interval, text, jsonb, text, text, numeric) IS
'Defines an alert on a KPI: condition compares an expression over the measures of the last "window" with a number (errors / nullif(orders, 0) > 0.05), or is anomaly(measure, sigmas[, weeks]) (the window against the same window in the previous weeks, default 4) or absent(interval) (no rows for that long); it is pending once true, firing once true for "for", and resolves once false for keep_firing_for (past recover, when given). severity is info, warning or critical; summary may use {{value}}, {{threshold}}, {{group}}, {{kpi}}, {{alert}}; group_by (a dimension) makes one instance per value. Returns its id.';

CREATE FUNCTION kpi.alter_alert(
    name            text,
    condition       text     DEFAULT NULL,
    "window"        interval DEFAULT NULL,
    "for"           interval DEFAULT NULL,
    keep_firing_for interval DEFAULT NULL,
    severity        text     DEFAULT NULL,
    labels          jsonb    DEFAULT NULL,
    summary         text     DEFAULT NULL,
    recover         numeric  DEFAULT NULL)
RETURNS boolean LANGUAGE sql VOLATILE AS $$
    SELECT kpi._alter_alert(name, condition, "window", "for", keep_firing_for, severity, labels, summary, recover)
$$;
COMMENT ON FUNCTION kpi.alter_alert(text, text, interval, interval, interval, text, jsonb, text, numeric) IS
'Changes the given parts of an alert (the others are kept); instances keep their state. To change group_by, drop and create the alert.';

CREATE FUNCTION kpi.drop_alert(name text, if_exists boolean DEFAULT false)
RETURNS boolean LANGUAGE sql VOLATILE AS $$ SELECT kpi._drop_alert(name, coalesce(if_exists, false)) $$;
COMMENT ON FUNCTION kpi.drop_alert(text, boolean) IS 'Drops an alert and its state; its history stays.';

CREATE FUNCTION kpi.ack_alert(id bigint, "by" text, note text DEFAULT NULL)
RETURNS bigint LANGUAGE sql VOLATILE AS $$ SELECT kpi._ack_alert(id, "by", note) $$;
COMMENT ON FUNCTION kpi.ack_alert(bigint, text, text) IS
'Acknowledges a firing alert instance (id from kpi.alerts) for its current episode: no more repeats, no escalation, and PagerDuty hears "acknowledge". Returns the id of the acknowledged transition in kpi.alert_history.';

CREATE FUNCTION kpi.evaluate_alerts() RETURNS bigint LANGUAGE sql VOLATILE SET jit = off AS $$ SELECT kpi._evaluate_alerts() $$;
COMMENT ON FUNCTION kpi.evaluate_alerts() IS 'Evaluates every alert rule now (the fold does this on its own); returns the number of transitions.';

-- Rules, state and history are visible for the KPIs the caller can see (the policy on
-- kpi.definitions applies inside these policies, as the caller).
ALTER TABLE kpi.alert_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_alerts ON kpi.alert_rules FOR SELECT USING (
    EXISTS (SELECT 1 FROM kpi.definitions d WHERE d.id = kpi_id));
ALTER TABLE kpi.alert_state ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_alert_state ON kpi.alert_state FOR SELECT USING (
    EXISTS (SELECT 1 FROM kpi.alert_rules r WHERE r.id = rule_id));
ALTER TABLE kpi.alert_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_alert_history ON kpi.alert_history FOR SELECT USING (
    EXISTS (SELECT 1 FROM kpi.definitions d WHERE d.name = kpi));
-- The notifier marks the rows it routed (UPDATE (routed_at), granted to its role by
-- the administrator: docs/notifier.md#alert-delivery), for the KPIs it can see.
CREATE POLICY route_alert_history ON kpi.alert_history FOR UPDATE USING (
    EXISTS (SELECT 1 FROM kpi.definitions d WHERE d.name = kpi));
GRANT SELECT ON kpi.alert_rules, kpi.alert_state, kpi.alert_history TO PUBLIC;

CREATE VIEW kpi.alerts WITH (security_invoker = true) AS
SELECT r.name AS alert, d.name AS kpi, r.group_by, coalesce(s.group_value, '') AS group_value,
       coalesce(s.state, 'inactive') AS state, s.value, r.op, r.threshold, r.recover,
       r.severity, r.labels, r.summary, r.condition, r."window", r."for", r.keep_firing_for,
       s.active_since, s.firing_since, s.evaluated_at, r.reason, r.last_error, r.last_error_at,
       s.id,
       CASE WHEN s.state = 'firing' AND s.acked_at >= s.firing_since THEN s.acked_at END AS acked_at,
       CASE WHEN s.state = 'firing' AND s.acked_at >= s.firing_since THEN s.acked_by END AS acked_by,
       CASE WHEN s.state = 'firing' AND s.acked_at >= s.firing_since THEN s.ack_note END AS ack_note
  FROM kpi.alert_rules r
  JOIN kpi.definitions d ON d.id = r.kpi_id
  LEFT JOIN kpi.alert_state s ON s.rule_id = r.id
 WHERE s.rule_id IS NULL OR s.state <> 'inactive'
    OR NOT EXISTS (SELECT 1 FROM kpi.alert_state o WHERE o.rule_id = r.id AND o.state <> 'inactive')
       AND s.group_value = (SELECT min(o.group_value) FROM kpi.alert_state o WHERE o.rule_id = r.id);
COMMENT ON VIEW kpi.alerts IS
'Alerts now: one row per pending or firing instance (per group_by value), and one inactive row for an alert with none; reason says why it cannot fire (too little history for an anomaly), last_error why its last evaluation failed; id is the instance''s handle for kpi.ack_alert, and acked_* its acknowledgement while it fires.';
GRANT SELECT ON kpi.alerts TO PUBLIC;

-- The planner's default guess for a set-returning function (1000 rows) would make every
-- read of a KPI view look expensive enough to JIT-compile; pending deltas are few.
ALTER FUNCTION kpi._pending(integer) ROWS 50;

-- Internal functions are reached through the wrappers above.
REVOKE ALL ON FUNCTION kpi._reset_source(oid) FROM PUBLIC;

REVOKE ALL ON FUNCTION kpi._request_worker() FROM PUBLIC;

-- A fold worker comes for this database once CREATE EXTENSION commits (the launcher
-- starts it); say so when none will.
DO $$
BEGIN
    IF kpi._worker_configured() THEN
        PERFORM kpi._request_worker();
    ELSE
        RAISE WARNING 'pg_kpi: no fold worker serves database "%"', current_database()
            USING DETAIL = 'KPI views stay exact, but pending deltas are only folded into the aggregates by kpi.fold().',
                  HINT = 'Add pg_kpi to shared_preload_libraries and restart (and, if pg_kpi.databases is set, name this database in it; pg_kpi.fold_workers must be on); or call kpi.fold() periodically (the notifier can do it).';
    END IF;
END $$;
