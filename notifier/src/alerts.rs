//! Alerts, the notifier's half: the database decides what fires (`kpi.alert_history`);
//! this module decides who hears it and makes sure they do.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | `[alerting]`: receivers and the route tree, with Alertmanager's names |
//! | [`matcher`] | label matchers of routes and silences |
//! | [`notification`] | what a channel is handed: one group's alerts for one receiver |
//! | [`channels`] | webhook, Slack, PagerDuty, email and Alertmanager, with retries |

pub mod channels;
pub mod config;
pub mod matcher;
pub mod notification;
