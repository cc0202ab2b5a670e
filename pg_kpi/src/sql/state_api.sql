-- kpi.create_state and kpi.create_overdue (src/api/state.rs, docs/current-state.md).

CREATE FUNCTION kpi.create_state(
    name        text,
    source      text,
    measures    text,
    dimensions  text[]   DEFAULT '{}',
    filter      text     DEFAULT NULL,
    resolution  interval DEFAULT '1 minute',
    history     interval DEFAULT '7 days',
    backfill    boolean  DEFAULT true)
RETURNS integer LANGUAGE sql VOLATILE AS $$
    SELECT kpi._create_state(name, kpi._resolve_table(source), measures, coalesce(dimensions, '{}'),
                             filter, resolution, history, coalesce(backfill, true))
$$;
COMMENT ON FUNCTION kpi.create_state(text, text, text, text[], text, interval, interval, boolean) IS
'Defines a current-state KPI: measures over the rows of a table as they are now, per dimension values (no time bucket), kept exact by the same triggers; its history is sampled at most once per resolution and kept for history. Returns its id.';

CREATE FUNCTION kpi.create_overdue(
    name        text,
    source      text,
    due         text,
    open_filter text     DEFAULT NULL,
    dimensions  text[]   DEFAULT '{}',
    measures    text     DEFAULT 'overdue = count(*)',
    backfill    boolean  DEFAULT true)
RETURNS integer LANGUAGE sql VOLATILE AS $$
    SELECT kpi._create_overdue(name, kpi._resolve_table(source), due, open_filter,
                               coalesce(dimensions, '{}'), coalesce(measures, 'overdue = count(*)'),
                               coalesce(backfill, true))
$$;
COMMENT ON FUNCTION kpi.create_overdue(text, text, text, text, text[], text, boolean) IS
'Defines an overdue KPI: the rows matching open_filter whose deadline (due, an expression over the row) has passed; it rises as deadlines pass, without writes. Returns its id.';
