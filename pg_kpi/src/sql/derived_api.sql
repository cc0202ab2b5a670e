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
