//! Pushing to an existing Alertmanager (`POST /api/v2/alerts`), as Prometheus does:
//! firing alerts are re-sent every [`ALERTMANAGER_RESEND`](super::ALERTMANAGER_RESEND)
//! with an `endsAt` four resends ahead, so Alertmanager resolves them by itself if
//! pg_kpi goes away; a resolve sets `endsAt` to when it resolved.

use serde_json::{json, Value};

use super::{rfc3339, ALERTMANAGER_RESEND};
use crate::alerts::notification::{Notification, Status};

pub fn body(n: &Notification) -> Value {
    let expires =
        chrono::Utc::now() + chrono::Duration::seconds(4 * ALERTMANAGER_RESEND.as_secs() as i64);
    Value::Array(
        n.alerts
            .iter()
            .map(|a| {
                let ends = match (a.status, a.ends_at) {
                    (Status::Resolved, Some(at)) => at,
                    _ => expires,
                };
                json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(a.starts_at),
                    "endsAt": rfc3339(ends),
                    "generatorURL": a.generator_url,
                })
            })
            .collect(),
    )
}
