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

-- pg_kpi::api::rebuild::_dd_negate
CREATE  FUNCTION kpi."_dd_negate"(
	"state" bytea /* & [u8] */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE STRICT PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'dd_negate_wrapper';
-- pg_kpi::api::rebuild::_rebuild_begin
CREATE  FUNCTION kpi."_rebuild_begin"(
	"name" TEXT, /* & str */
	"what" TEXT, /* & str */
	"time_column" TEXT, /* Option < & str > */
	"measures" TEXT, /* Option < & str > */
	"dimensions" TEXT[], /* :: std :: option :: Option < Vec < String > > */
	"filter" TEXT, /* Option < & str > */
	"bucket" interval, /* Option < Interval > */
	"retention" interval, /* Option < Interval > */
	"rollups" jsonb /* Option < pgrx :: JsonB > */
) RETURNS INT /* i32 */
VOLATILE PARALLEL UNSAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rebuild_begin_wrapper';
-- pg_kpi::api::rebuild::_rebuild_build
CREATE  FUNCTION kpi."_rebuild_build"(
	"id" INT /* i32 */
) RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rebuild_build_wrapper';
-- pg_kpi::api::rebuild::_rebuild_swap
CREATE  FUNCTION kpi."_rebuild_swap"(
	"id" INT /* i32 */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rebuild_swap_wrapper';


-- One row per KPI being rebuilt: its definition being built under a hidden name. A row
-- left by an interrupted rebuild is removed by the next rebuild, alter or drop.
CREATE TABLE kpi.rebuilds (
    kpi         text PRIMARY KEY,
    kpi_id      integer NOT NULL,
    building_id integer NOT NULL UNIQUE REFERENCES kpi.definitions (id) ON DELETE CASCADE,
    started_at  timestamptz NOT NULL DEFAULT now(),
    pid         integer NOT NULL DEFAULT pg_catalog.pg_backend_pid()
);
COMMENT ON TABLE kpi.rebuilds IS 'pg_kpi: rebuilds in progress or interrupted (read it through kpi.rebuild_status)';
REVOKE ALL ON kpi.rebuilds FROM PUBLIC;

-- running: a step of the rebuild holds its advisory lock now (between two steps, for a
-- moment, it does not); false means it was interrupted and left its hidden definition.
CREATE VIEW kpi.rebuild_status AS
SELECT r.kpi, r.started_at, r.pid,
       EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                WHERE l.locktype = 'advisory' AND l.classid = 1802529138::oid
                  AND l.objid = r.building_id::oid AND l.objsubid = 2 AND l.granted) AS running
  FROM kpi.rebuilds r
  JOIN kpi.definitions d ON d.id = r.kpi_id
 WHERE pg_catalog.pg_has_role(d.owner, 'USAGE')
    OR pg_catalog.has_table_privilege(pg_catalog.format('kpi.%I', d.name), 'SELECT');
COMMENT ON VIEW kpi.rebuild_status IS
'KPIs being rebuilt (kpi.rebuild, kpi.alter): since when, by which process, and whether it still runs (false: interrupted; the next rebuild, alter or drop of the KPI removes what it left).';
GRANT SELECT ON kpi.rebuild_status TO PUBLIC;

CREATE PROCEDURE kpi.rebuild(name text)
LANGUAGE plpgsql AS $$
DECLARE
    building integer;
BEGIN
    building := kpi._rebuild_begin(name, 'kpi.rebuild', NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    COMMIT;
    PERFORM kpi._rebuild_build(building);
    COMMIT;
    PERFORM kpi._rebuild_swap(building);
END $$;
COMMENT ON PROCEDURE kpi.rebuild(text) IS
'Recomputes a KPI from its source while writers keep writing: builds new aggregates beside the old ones (progress as NOTICEs), then swaps them in in one short transaction. CALL it outside a transaction block.';

CREATE PROCEDURE kpi.alter(
    name        text,
    measures    text     DEFAULT NULL,
    dimensions  text[]   DEFAULT NULL,
    filter      text     DEFAULT NULL,
    bucket      interval DEFAULT NULL,
    retention   interval DEFAULT NULL,
    rollups     jsonb    DEFAULT NULL,
    time_column text     DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    building integer;
BEGIN
    building := kpi._rebuild_begin(name, 'kpi.alter', time_column, measures, dimensions, filter,
                                   bucket, retention, rollups);
    COMMIT;
    PERFORM kpi._rebuild_build(building);
    COMMIT;
    PERFORM kpi._rebuild_swap(building);
END $$;
COMMENT ON PROCEDURE kpi.alter(text, text, text[], text, interval, interval, jsonb, text) IS
'Changes a KPI''s definition through a rebuild; NULL keeps a part as it is, filter => '''' removes the filter, retention => ''0'' keeps forever, rollups => ''{}'' removes them. An invalid definition is refused and the KPI stays as it was. CALL it outside a transaction block.';

-- kpi.list() hides a rebuild's definition under construction.
CREATE OR REPLACE FUNCTION kpi.list() RETURNS TABLE (
    name text, source regclass, time_column text, measures jsonb, dimensions text[],
    filter text, bucket interval, retention interval, version bigint, created_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT d.name, d.source, d.time_column, d.measures, d.dimensions, d.filter, d.bucket,
           d.retention, d.version, d.created_at
      FROM kpi.definitions d
     WHERE pg_catalog.strpos(d.name, '#') = 0  -- not a rebuild's hidden definition
     ORDER BY d.name
$$;
COMMENT ON FUNCTION kpi.list() IS 'The KPIs you can see, one row each.';

