-- pg_kpi alerts: rules, their current state, and the append-only history of transitions
-- (which the notifier will deliver from). Written only by the extension's functions;
-- read through kpi.alerts and kpi.alert_history, which show the rules of KPIs the
-- caller may see. See src/alerts/.

CREATE TABLE kpi.alert_rules (
    id              serial PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    kpi_id          integer NOT NULL REFERENCES kpi.definitions (id) ON DELETE CASCADE,
    -- The condition as written, and what it compares. A threshold compares value_sql
    -- (an expression over the window's measures, with measure i as parameter $i+1, as
    -- Postgres normalized it) with the threshold; an anomaly compares the z-score of
    -- measures[1] against the same window in each of the `weeks` previous weeks with
    -- the threshold (sigmas); an absence compares the rows counted in the window with 0.
    -- `measures` lists the measure indexes the value reads.
    condition       text NOT NULL,
    kind            text NOT NULL DEFAULT 'threshold' CHECK (kind IN ('threshold', 'anomaly', 'absent')),
    value_sql       text,
    weeks           integer,
    op              text NOT NULL CHECK (op IN ('>', '>=', '<', '<=')),
    threshold       numeric NOT NULL,
    recover         numeric,
    measures        integer[] NOT NULL,
    "window"        interval NOT NULL,
    "for"           interval NOT NULL DEFAULT '0',
    keep_firing_for interval NOT NULL DEFAULT '0',
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    labels          jsonb NOT NULL DEFAULT '{}',
    summary         text,
    group_by        text,
    owner           regrole NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Why the last evaluation failed (NULL once it works again).
    last_error      text,
    -- Why the alert cannot fire now although it evaluates (an anomaly without enough
    -- history).
    reason          text,
    last_error_at   timestamptz
);
COMMENT ON TABLE kpi.alert_rules IS 'pg_kpi alert rules (define them with kpi.create_alert, read them through kpi.alerts)';

-- One row per rule and group value ('' for a rule without group_by) that was ever
-- active; inactive rows are kept so the next transition knows where it comes from.
CREATE TABLE kpi.alert_state (
    rule_id       integer NOT NULL REFERENCES kpi.alert_rules (id) ON DELETE CASCADE,
    group_value   text NOT NULL,
    state         text NOT NULL CHECK (state IN ('inactive', 'pending', 'firing')),
    value         numeric,
    -- When the condition last became true (pending or firing since), and when it was
    -- last true (keep_firing_for counts from there).
    active_since  timestamptz,
    firing_since  timestamptz,
    last_active_at timestamptz,
    evaluated_at  timestamptz NOT NULL,
    PRIMARY KEY (rule_id, group_value)
);
COMMENT ON TABLE kpi.alert_state IS 'pg_kpi alert state per rule and group value (read it through kpi.alerts)';

-- Append-only: one row per transition. `id` orders them and is the delivery key
-- (NOTIFY kpi_alerts '{"id":N}'); the rule's name, KPI and labels are copied so a row
-- still makes sense after the rule changes or is dropped.
CREATE TABLE kpi.alert_history (
    id          bigserial PRIMARY KEY,
    rule_id     integer NOT NULL,
    rule        text NOT NULL,
    kpi         text NOT NULL,
    group_by    text,
    group_value text NOT NULL,
    from_state  text NOT NULL,
    to_state    text NOT NULL CHECK (to_state IN ('pending', 'firing', 'resolved', 'inactive')),
    value       numeric,
    threshold   numeric NOT NULL,
    severity    text NOT NULL,
    labels      jsonb NOT NULL,
    summary     text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON kpi.alert_history (rule_id, id);
COMMENT ON TABLE kpi.alert_history IS 'pg_kpi alert transitions, append-only (the delivery outbox)';

REVOKE ALL ON kpi.alert_rules, kpi.alert_state, kpi.alert_history FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('kpi.alert_rules', '');
