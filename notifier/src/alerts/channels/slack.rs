//! Slack incoming webhooks: a Block Kit message per notification, with each alert's
//! severity, KPI, value, threshold and start, and a button to the dashboard.

use serde_json::{json, Value};

use crate::alerts::config::SlackConfig;
use crate::alerts::notification::{Alert, Notification, Status};

/// Slack allows 50 blocks; a notification lists this many alerts and counts the rest.
const MAX_ALERTS: usize = 10;

pub fn body(n: &Notification, cfg: &SlackConfig) -> Option<Value> {
    let alerts = n.to_announce(cfg.send_resolved);
    if alerts.is_empty() {
        return None;
    }
    let title = match n.title(&alerts) {
        (true, t) => format!("🔥 {t}"),
        (false, t) => format!("✅ {t}"),
    };
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": title, "emoji": true}
    })];
    for a in alerts.iter().take(MAX_ALERTS) {
        blocks.push(section(a));
    }
    if alerts.len() > MAX_ALERTS {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("…and {} more", alerts.len() - MAX_ALERTS)}]
        }));
    }
    let link = alerts
        .first()
        .map_or_else(|| n.external_url.clone(), |a| a.generator_url.clone());
    blocks.push(json!({
        "type": "actions",
        "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": "Open dashboard"},
            "url": link
        }]
    }));
    let mut body = json!({ "text": title, "blocks": blocks });
    if let Some(c) = &cfg.channel {
        body["channel"] = json!(c);
    }
    Some(body)
}

fn section(a: &Alert) -> Value {
    let state = match a.status {
        Status::Firing => "firing",
        Status::Acknowledged => "firing, acknowledged",
        Status::Resolved => "resolved",
    };
    let headline = format!(
        "*{}*{} — {state}\n{}",
        escape(&a.rule),
        if a.group_value.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape(&a.group_value))
        },
        escape(a.summary.as_deref().unwrap_or("")),
    );
    let since = a.starts_at.timestamp();
    json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": headline.trim_end()},
        "fields": [
            {"type": "mrkdwn", "text": format!("*Severity*\n{}", escape(&a.severity))},
            {"type": "mrkdwn", "text": format!("*KPI*\n{}", escape(&a.kpi))},
            {"type": "mrkdwn", "text": format!("*Value*\n{}", escape(a.value.as_deref().unwrap_or("–")))},
            {"type": "mrkdwn", "text": format!("*Threshold*\n{} {}", escape(&a.op), escape(&a.threshold))},
            {"type": "mrkdwn", "text": format!(
                "*Since*\n<!date^{since}^{{date_short_pretty}} {{time}}|{}>",
                a.starts_at.format("%Y-%m-%d %H:%M UTC"))},
        ]
    })
}

/// Slack's three control characters in mrkdwn.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
