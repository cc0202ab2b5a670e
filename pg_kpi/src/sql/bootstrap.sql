-- pg_kpi catalog. Created before any function of the extension.

-- The schema belongs to the extension, so DROP EXTENSION pg_kpi CASCADE also removes
-- every KPI's views and aggregate tables.
CREATE SCHEMA kpi;
COMMENT ON SCHEMA kpi IS 'pg_kpi: KPI views, functions and catalog';
GRANT USAGE ON SCHEMA kpi TO PUBLIC;

-- One row per KPI. `measures` is the parsed, validated definition (see measures.rs);
-- expressions are stored in the normalized form Postgres deparsed them to.
CREATE TABLE kpi.definitions (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    source      regclass NOT NULL,
    time_column text NOT NULL,
    time_type   regtype NOT NULL,
    measures    jsonb NOT NULL,
    dimensions  text[] NOT NULL DEFAULT '{}',
    dimension_types regtype[] NOT NULL DEFAULT '{}',
    filter      text,
    bucket      interval NOT NULL,
    retention   interval,
    -- Coarser storage tiers: [{"bucket","bucket_us","retention","retention_us"}, …].
    rollups     jsonb NOT NULL DEFAULT '[]',
    owner       regrole NOT NULL,
    version     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE kpi.definitions IS 'pg_kpi catalog: one row per KPI (read it through kpi.list())';

-- The delta buffer. Writers only ever INSERT here, one row per transaction carrying the
-- deltas of every KPI it touched, in the binary form of src/deltas (decoded in Rust).
-- No index and no UPDATE, so concurrent writers never wait on each other; the fold
-- drains it with DELETE … RETURNING.
CREATE TABLE kpi.deltas (batch bytea NOT NULL);
-- The fold empties this table many times a second. Vacuum would then keep truncating its
-- empty tail, which takes an ACCESS EXCLUSIVE lock that stalls every committing writer
-- and the fold: keep the pages instead (they are reused at once).
ALTER TABLE kpi.deltas SET (vacuum_truncate = false);
COMMENT ON TABLE kpi.deltas IS 'pg_kpi delta buffer: captured, not yet folded changes (insert-only for writers)';

-- The key of a text dimension value in an aggregate table's unique index. A btree entry
-- holds about 2,700 bytes, and a longer value would make every fold's upsert fail: values
-- up to 512 bytes are their own key, longer ones their first 200 characters and a SHA-256
-- of the whole. The tags ('=' or '#') keep a short value from ever equalling a long
-- value's key, so distinct values get distinct keys (up to a SHA-256 collision of long
-- values with the same start).
CREATE FUNCTION kpi._dim_key(v text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE WHEN octet_length(v) <= 512 THEN '=' || v
                ELSE '#' || left(v, 200) || encode(sha256(convert_to(v, 'UTF8')), 'hex') END;
COMMENT ON FUNCTION kpi._dim_key(text) IS 'pg_kpi internal: the index key of a text dimension value';

-- Orders the NOTIFY payloads of successive folds.
CREATE SEQUENCE kpi.notify_seq;

REVOKE ALL ON kpi.definitions, kpi.deltas, kpi.notify_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('kpi.definitions', '');

