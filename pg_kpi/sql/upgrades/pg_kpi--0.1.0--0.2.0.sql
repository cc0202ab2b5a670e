-- pg_kpi 0.1.0 -> 0.2.0: the KPI kinds operations teams run (issue #16).
-- Runs as the extension's owner in one transaction (docs/releasing.md). Each part below
-- creates what its feature added to the SQL surface, with its grants and comments.

-- == current-state and overdue KPIs ==

-- == derived measures, kpi.create_derived and kpi.funnel ==

-- == kpi.rebuild and kpi.alter ==
