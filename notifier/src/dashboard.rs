//! Dashboards: which KPIs and measures the built-in web page shows, and how.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | `[[dashboards]]` in the notifier's TOML, validated at start-up |
//! | [`resolve`] | a dashboard as the page gets it: the default one expanded from the KPIs, config mistakes named |
//!
//! The page itself (`dashboard/` at the top of the repository, built into
//! `dashboard/dist/`) is served by [`serve::assets`](crate::serve::assets); its definition
//! by `GET /api/dashboards/{name}` ([`serve::api`](crate::serve::api)).

pub mod config;
pub mod resolve;

pub use config::Dashboard;
