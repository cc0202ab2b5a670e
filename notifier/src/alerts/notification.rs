//! What a channel is handed: one notification of one group to one receiver, with the
//! alerts (transitions of `kpi.alert_history`) it reports. Built by the dispatcher from
//! the database; channels only turn it into their wire format.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::matcher::Labels;

/// Where an alert instance stands in this notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
    /// Still firing, and a person has taken it (`kpi.ack_alert`). Only PagerDuty has a
    /// word for it (`acknowledge`); the other channels leave such alerts out.
    Acknowledged,
}

impl Status {
    pub fn from_state(to_state: &str) -> Option<Status> {
        match to_state {
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            "acknowledged" => Some(Status::Acknowledged),
            _ => None,
        }
    }
}

/// One alert instance (rule and group value) as of one transition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// The `kpi.alert_history` row this reports.
    pub history_id: i64,
    pub status: Status,
    /// `alertname` (the rule), `kpi`, `severity`, the group_by dimension and its value,
    /// and the rule's own labels.
    pub labels: Labels,
    /// `summary`, `value`, `threshold`, `condition`, `dedup_key`.
    pub annotations: Labels,
    /// When the firing episode began.
    pub starts_at: DateTime<Utc>,
    /// When it resolved (resolved alerts only).
    pub ends_at: Option<DateTime<Utc>>,
    /// A stable hash of the labels: the instance, across episodes (Alertmanager's).
    pub fingerprint: String,
    /// Unique per transition, `pgkpi:<rule>:<group value>:<history id>`: a receiver
    /// that sees it twice can drop the duplicate.
    pub dedup_key: String,
    /// Unique per firing episode, `pgkpi:<rule>:<group value>:<started at, µs>`: the
    /// same for its trigger, acknowledge and resolve (PagerDuty's `dedup_key`).
    pub incident_key: String,
    pub rule: String,
    pub kpi: String,
    pub severity: String,
    pub group_by: Option<String>,
    pub group_value: String,
    /// The value that crossed (or the last value seen), as Postgres printed it.
    pub value: Option<String>,
    pub op: String,
    pub threshold: String,
    pub summary: Option<String>,
    /// When this transition happened.
    pub at: DateTime<Utc>,
    /// Who acknowledged it and their note (acknowledged alerts).
    pub acked_by: Option<String>,
    pub ack_note: Option<String>,
    /// The dashboard page of its KPI.
    pub generator_url: String,
}

/// One notification: a group's alerts for one receiver.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    pub receiver: String,
    /// The group's key (route and group_by label values), stable across sends.
    pub group_key: String,
    /// The group_by labels and their values.
    pub group_labels: Labels,
    /// Labels every alert of the notification has with the same value.
    pub common_labels: Labels,
    pub common_annotations: Labels,
    pub alerts: Vec<Alert>,
    /// The dashboard's address (`externalURL`).
    pub external_url: String,
}

impl Notification {
    /// `firing` if any alert still fires (acknowledged ones too), else `resolved`.
    pub fn status(&self) -> &'static str {
        if self.alerts.iter().any(|a| a.status != Status::Resolved) {
            "firing"
        } else {
            "resolved"
        }
    }

    /// The alerts a channel without a word for acknowledgements announces: none when
    /// the notification only reports acknowledgements (or resolves the channel does
    /// not want); else every alert, acknowledged ones as the firing alerts they still
    /// are, resolved ones only with `send_resolved`.
    pub fn to_announce(&self, send_resolved: bool) -> Vec<&Alert> {
        let news = self.alerts.iter().any(|a| match a.status {
            Status::Firing => true,
            Status::Resolved => send_resolved,
            Status::Acknowledged => false,
        });
        if !news {
            return Vec::new();
        }
        self.alerts
            .iter()
            .filter(|a| send_resolved || a.status != Status::Resolved)
            .collect()
    }

    /// `[FIRING:n] <alertname>`, or `[RESOLVED] <alertname>` when none of `alerts`
    /// still fires, as Alertmanager's default titles read (`n alerts` for a group of
    /// several rules); and whether any fires.
    pub fn title(&self, alerts: &[&Alert]) -> (bool, String) {
        let firing = alerts
            .iter()
            .filter(|a| a.status != Status::Resolved)
            .count();
        let name = self
            .common_labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| format!("{} alerts", alerts.len()));
        if firing > 0 {
            (true, format!("[FIRING:{firing}] {name}"))
        } else {
            (false, format!("[RESOLVED] {name}"))
        }
    }

    /// Labels (or annotations) shared by every alert.
    pub fn common(alerts: &[Alert], of: impl Fn(&Alert) -> &Labels) -> Labels {
        let mut it = alerts.iter();
        let Some(first) = it.next() else {
            return Labels::new();
        };
        let mut common = of(first).clone();
        for a in it {
            let l = of(a);
            common.retain(|k, v| l.get(k) == Some(v));
        }
        common
    }
}
