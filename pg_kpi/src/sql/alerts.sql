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
    -- The instance's handle for acknowledgement (kpi.ack_alert, POST /api/alerts/{id}/ack).
    id            bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The last acknowledgement; it counts for the firing episode it was given in
    -- (acked_at >= firing_since), so a new episode starts unacknowledged.
    acked_at      timestamptz,
    acked_by      text,
    ack_note      text,
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
    to_state    text NOT NULL CHECK (to_state IN ('pending', 'firing', 'resolved', 'inactive', 'acknowledged')),
    value       numeric,
    threshold   numeric NOT NULL,
    severity    text NOT NULL,
    labels      jsonb NOT NULL,
    summary     text,
    at          timestamptz NOT NULL DEFAULT now(),
    -- When the firing episode began (firing, resolved and acknowledged rows): with the
    -- rule and group value it names the episode, e.g. PagerDuty's dedup_key.
    started_at  timestamptz,
    -- Who acknowledged, and why (acknowledged rows).
    actor       text,
    note        text,
    -- Set by the notifier in the transaction that routed the row to its receivers
    -- (kpi.alert_deliveries); NULL means not yet routed.
    routed_at   timestamptz
);
CREATE INDEX ON kpi.alert_history (rule_id, id);
CREATE INDEX alert_history_unrouted ON kpi.alert_history (id) WHERE routed_at IS NULL;
COMMENT ON TABLE kpi.alert_history IS 'pg_kpi alert transitions, append-only (the delivery outbox)';

-- Delivery, written by the notifier (see notifier/src/alerts/). One row per transition
-- and receiver it was routed to: what happened to it there.
CREATE TABLE kpi.alert_deliveries (
    history_id   bigint NOT NULL REFERENCES kpi.alert_history (id) ON DELETE CASCADE,
    receiver     text NOT NULL,
    -- The notification group (route, receiver and group_by label values) it goes out in.
    group_key    text NOT NULL,
    -- Sent to a route's escalate_to receiver because it stayed unacknowledged.
    escalation   boolean NOT NULL DEFAULT false,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'sent', 'failed', 'silenced', 'skipped')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    queued_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    PRIMARY KEY (history_id, receiver)
);
CREATE INDEX alert_deliveries_open ON kpi.alert_deliveries (receiver, group_key)
    WHERE status IN ('queued', 'failed');
-- A group's members: the latest delivery of each instance in it.
CREATE INDEX alert_deliveries_group ON kpi.alert_deliveries (receiver, group_key, history_id);
COMMENT ON TABLE kpi.alert_deliveries IS 'pg_kpi alert deliveries: one row per transition and receiver, written by the notifier';

-- One row per notification group: when it is next due, what it last sent, and which
-- notifier holds it. Several notifiers share the table; a lease (lease_until) held by a
-- notifier that died simply runs out, and another one takes the group over.
CREATE TABLE kpi.alert_groups (
    receiver       text NOT NULL,
    group_key      text NOT NULL,
    group_labels   jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- NULL once the group has nothing firing and nothing to send.
    next_flush_at  timestamptz,
    last_sent_at   timestamptz,
    -- What the last notification said (instances and states), so an unchanged group
    -- is sent again only after repeat_interval.
    last_sent_hash text,
    lease_owner    text,
    lease_until    timestamptz,
    PRIMARY KEY (receiver, group_key)
);
CREATE INDEX alert_groups_due ON kpi.alert_groups (next_flush_at) WHERE next_flush_at IS NOT NULL;
COMMENT ON TABLE kpi.alert_groups IS 'pg_kpi notification groups and their timers, written by the notifier';

-- Silences (POST /api/silences): matchers in Alertmanager's API form,
-- [{"name": "severity", "value": "critical", "isRegex": false, "isEqual": true}].
CREATE TABLE kpi.alert_silences (
    id         bigserial PRIMARY KEY,
    matchers   jsonb NOT NULL CHECK (jsonb_typeof(matchers) = 'array' AND jsonb_array_length(matchers) > 0),
    starts_at  timestamptz NOT NULL DEFAULT now(),
    ends_at    timestamptz NOT NULL,
    created_by text NOT NULL,
    comment    text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX alert_silences_active ON kpi.alert_silences (ends_at);
COMMENT ON TABLE kpi.alert_silences IS 'pg_kpi alert silences, written by the notifier (DELETE /api/silences/{id} expires one)';

REVOKE ALL ON kpi.alert_rules, kpi.alert_state, kpi.alert_history FROM PUBLIC;
REVOKE ALL ON kpi.alert_deliveries, kpi.alert_groups, kpi.alert_silences FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('kpi.alert_silences', '');
SELECT pg_catalog.pg_extension_config_dump('kpi.alert_rules', '');
