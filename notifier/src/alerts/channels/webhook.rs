//! The generic webhook: Alertmanager's webhook JSON (version "4"), so receivers
//! written for Alertmanager work unchanged.

use serde_json::{json, Value};

use super::rfc3339;
use crate::alerts::notification::{Alert, Notification, Status};

/// Alertmanager's zero time, its `endsAt` of an alert that has not ended.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The body, or `None` when there is nothing to announce.
pub fn body(n: &Notification, send_resolved: bool) -> Option<Value> {
    let alerts = n.to_announce(send_resolved);
    if alerts.is_empty() {
        return None;
    }
    let firing = alerts.iter().any(|a| a.status != Status::Resolved);
    Some(json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "externalURL": n.external_url,
        "alerts": alerts.iter().map(|a| alert(a)).collect::<Vec<_>>(),
    }))
}

fn alert(a: &Alert) -> Value {
    let resolved = a.status == Status::Resolved;
    json!({
        "status": if resolved { "resolved" } else { "firing" },
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.starts_at),
        "endsAt": a.ends_at.filter(|_| resolved).map_or_else(|| ZERO_TIME.to_string(), rfc3339),
        "generatorURL": a.generator_url,
        "fingerprint": a.fingerprint,
    })
}
