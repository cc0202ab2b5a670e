//! Derived KPIs across KPIs (see the parent module).
