-- Derived KPIs across KPIs (src/derived/across.rs, docs/derived.md). Only the formula is
-- stored: reads evaluate it over the components' reads of the same window.
CREATE TABLE kpi.derived (
    id         serial PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    -- The normalized formula over kpi.measure references.
    formula    text NOT NULL,
    -- The KPIs it reads: a NOTIFY announcing one of them announces this one too.
    kpis       text[] NOT NULL,
    owner      regrole NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kpi.derived IS 'pg_kpi catalog: derived KPIs across KPIs (read them through kpi.list())';
ALTER TABLE kpi.derived ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_derived ON kpi.derived FOR SELECT USING (
    pg_catalog.pg_has_role(owner, 'USAGE')
    OR pg_catalog.has_table_privilege(pg_catalog.format('kpi.%I', name), 'SELECT'));
GRANT SELECT ON kpi.derived TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('kpi.derived', '');
