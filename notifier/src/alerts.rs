//! Alerts, the notifier's half: the database decides what fires (`kpi.alert_history`);
//! this module decides who hears it and makes sure they do.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | `[alerting]`: receivers and the route tree, with Alertmanager's names |
//! | [`matcher`] | label matchers of routes and silences |
//! | [`notification`] | what a channel is handed: one group's alerts for one receiver |
//! | [`channels`] | webhook, Slack, PagerDuty, email and Alertmanager, with retries |
//! | [`retry`] | backoff with jitter, `Retry-After`, which failures are worth retrying |
//! | [`transition`] | a `kpi.alert_history` row: its labels, and the alert a channel sends |
//! | [`routing`] | the route tree: receivers, groups and timers of an alert |
//! | [`outbox`] | routing new transitions into deliveries and groups; escalation |
//! | [`flush`] | one group's notification: silences, repeats, the send, its outcome |
//! | [`dispatcher`] | the task that runs them: LISTEN, poll, leases, concurrent sends |
//!
//! Delivery state lives in the database (`kpi.alert_deliveries`, `kpi.alert_groups`,
//! `kpi.alert_silences`), never only in one notifier's memory: replicas share the work
//! through leases, and a restart picks up where the last run stopped.

pub mod channels;
pub mod config;
pub mod dispatcher;
pub mod flush;
pub mod matcher;
pub mod notification;
pub mod outbox;
pub mod retry;
pub mod routing;
pub mod transition;
