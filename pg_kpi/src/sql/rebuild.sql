-- kpi.rebuild and kpi.alter (src/api/rebuild, docs/rebuild.md): procedures, since they
-- commit between their steps so that writers are only ever blocked for a moment.

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
