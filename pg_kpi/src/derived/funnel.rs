//! kpi.funnel.
