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
