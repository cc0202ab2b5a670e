-- pg_kpi 0.1.0 -> 0.2.0: the KPI kinds operations teams run (issue #16).
-- Runs as the extension's owner in one transaction (docs/releasing.md). Each part below
-- creates what its feature added to the SQL surface, with its grants and comments.

-- == current-state and overdue KPIs ==

-- Current-state and overdue KPIs (docs/current-state.md). Both are stored like any KPI
-- (same capture, delta buffer, fold and aggregate tables); this table says how their
-- rows' "time" is computed and, for current-state KPIs, how their history is sampled.
CREATE TABLE kpi.definition_kinds (
    kpi        integer PRIMARY KEY REFERENCES kpi.definitions (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('state', 'overdue')),
    -- The row's time as SQL over the source row: a constant for a current-state KPI
    -- (every row in one bucket), the deadline for an overdue KPI (bucket = due instant).
    time_expr  text NOT NULL,
    -- Current-state KPIs: at most one history sample per resolution, kept for history.
    resolution interval,
    history    interval
);
COMMENT ON TABLE kpi.definition_kinds IS 'pg_kpi catalog: the current-state and overdue KPIs (kind, row time expression, sampling)';
ALTER TABLE kpi.definition_kinds ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_kinds ON kpi.definition_kinds FOR SELECT USING (
    EXISTS (SELECT 1 FROM kpi.definitions d WHERE d.id = kpi));
GRANT SELECT ON kpi.definition_kinds TO PUBLIC;

CREATE FUNCTION kpi."_create_state"(
	"name" TEXT,
	"source" oid,
	"measures" TEXT,
	"dimensions" TEXT[],
	"filter" TEXT,
	"resolution" interval,
	"history" interval,
	"backfill" bool
) RETURNS INT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_state_wrapper';

CREATE FUNCTION kpi."_create_overdue"(
	"name" TEXT,
	"source" oid,
	"due" TEXT,
	"open_filter" TEXT,
	"dimensions" TEXT[],
	"measures" TEXT,
	"backfill" bool
) RETURNS INT
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_overdue_wrapper';

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



-- == derived measures, kpi.create_derived and kpi.funnel ==

-- == kpi.rebuild and kpi.alter ==
