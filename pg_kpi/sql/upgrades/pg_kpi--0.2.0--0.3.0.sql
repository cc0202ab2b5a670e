-- pg_kpi 0.2.0 -> 0.3.0: derived KPIs across KPIs and funnels (issue #16).
-- Runs as the extension's owner in one transaction (docs/releasing.md). Derived measures
-- within a KPI need nothing here: they are stored in kpi.definitions.measures like any
-- measure.

-- == kpi.derived ==

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

-- == kpi.create_derived and kpi.funnel ==

-- pg_kpi::derived::across::_create_derived
CREATE  FUNCTION kpi."_create_derived"(
	"name" TEXT, /* & str */
	"expression" TEXT /* & str */
) RETURNS INT /* i32 */
STRICT VOLATILE PARALLEL UNSAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_derived_wrapper';

-- pg_kpi::derived::funnel::_funnel
CREATE  FUNCTION kpi."_funnel"(
	"steps" TEXT[], /* Vec < String > */
	"window" interval, /* Interval */
	"dims" jsonb /* JsonB */
) RETURNS TABLE (
	"step" INT,  /* i32 */
	"name" TEXT,  /* String */
	"value" NUMERIC,  /* Option < AnyNumeric > */
	"from_previous" NUMERIC,  /* Option < AnyNumeric > */
	"from_first" NUMERIC  /* Option < AnyNumeric > */
)
STRICT STABLE PARALLEL RESTRICTED  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'funnel_wrapper';

-- kpi.create_derived and kpi.funnel (src/derived, docs/derived.md).

CREATE FUNCTION kpi.create_derived(name text, expression text)
RETURNS integer LANGUAGE sql VOLATILE AS $$ SELECT kpi._create_derived(name, expression) $$;
COMMENT ON FUNCTION kpi.create_derived(text, text) IS
'Defines a KPI computed from measures of other KPIs with the same bucket, e.g. ''checkout.orders / sessions.visitors'': its measure "value" is the formula over each side''s value of the same window, pushed whenever a side changes. Returns its id.';

CREATE FUNCTION kpi.funnel(steps text[], "window" interval DEFAULT '1 hour', dims jsonb DEFAULT '{}')
RETURNS TABLE (step integer, name text, value numeric, from_previous numeric, from_first numeric)
LANGUAGE sql STABLE SET jit = off AS $$ SELECT * FROM kpi._funnel(steps, "window", coalesce(dims, '{}')) $$;
COMMENT ON FUNCTION kpi.funnel(text[], interval, jsonb) IS
'Each step (kpi.measure) over the last "window": its value, its conversion from the previous step and from the first (NULL when that is 0).';

-- == kpi.list lists derived KPIs ==

CREATE OR REPLACE FUNCTION kpi.list() RETURNS TABLE (
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
