//! PagerDuty Events API v2: one event per alert. A firing alert triggers, an
//! acknowledgement in pg_kpi acknowledges, a resolve resolves; all three carry the
//! episode's key as `dedup_key`, so PagerDuty keeps them on one incident.

use serde_json::{json, Value};

use super::rfc3339;
use crate::alerts::config::PagerDutyConfig;
use crate::alerts::notification::{Alert, Notification, Status};

pub fn events(n: &Notification, cfg: &PagerDutyConfig) -> Vec<Value> {
    n.alerts
        .iter()
        .filter(|a| cfg.send_resolved || a.status != Status::Resolved)
        .map(|a| event(a, cfg))
        .collect()
}

fn event(a: &Alert, cfg: &PagerDutyConfig) -> Value {
    let action = match a.status {
        Status::Firing => "trigger",
        Status::Acknowledged => "acknowledge",
        Status::Resolved => "resolve",
    };
    let mut e = json!({
        "routing_key": cfg.routing_key.expose(),
        "event_action": action,
        "dedup_key": a.incident_key,
    });
    if a.status == Status::Firing {
        let summary = a.summary.clone().unwrap_or_else(|| {
            format!(
                "{} on {}: {} {} {}",
                a.rule,
                a.kpi,
                a.value.as_deref().unwrap_or("?"),
                a.op,
                a.threshold
            )
        });
        e["payload"] = json!({
            // PagerDuty caps the summary at 1024 characters.
            "summary": crate::error::truncate(&summary, 1024),
            "source": "pg_kpi",
            "severity": severity(&a.severity),
            "timestamp": rfc3339(a.starts_at),
            "component": a.kpi,
            "group": a.rule,
            "class": "kpi",
            "custom_details": {
                "labels": a.labels,
                "value": a.value,
                "threshold": format!("{} {}", a.op, a.threshold),
                "group_value": a.group_value,
                "dedup_key": a.dedup_key,
            },
        });
        e["links"] = json!([{"href": a.generator_url, "text": "pg_kpi dashboard"}]);
        e["client"] = json!("pg_kpi");
        e["client_url"] = json!(a.generator_url);
    }
    e
}

/// PagerDuty's severities are critical, error, warning and info.
fn severity(s: &str) -> &'static str {
    match s {
        "critical" => "critical",
        "warning" => "warning",
        "info" => "info",
        _ => "error",
    }
}
