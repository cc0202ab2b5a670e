//! The SQL-facing functions. Public names, defaults and comments are declared in
//! `src/sql/api.sql`, which wraps these `kpi._…` functions.

pub(crate) mod create;
mod drop;
mod fold;
pub(crate) mod read;
pub(crate) mod rebuild;
mod sketches;
pub(crate) mod state;
mod status;
mod truncate;
