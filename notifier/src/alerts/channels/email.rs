//! Email over SMTP with lettre: STARTTLS required or not used (`require_tls`), a
//! readable plain-text body and the same as HTML.

use std::fmt::Write;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::alerts::config::EmailConfig;
use crate::alerts::notification::{Alert, Notification, Status};
use crate::alerts::retry::Attempt;

/// The message, `None` when there is nothing to announce, or why it cannot be built.
pub fn message(n: &Notification, cfg: &EmailConfig) -> Result<Option<Message>, String> {
    let alerts = n.to_announce(cfg.send_resolved);
    if alerts.is_empty() {
        return Ok(None);
    }
    let severity = n
        .common_labels
        .get("severity")
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let subject = format!("{}{severity}", n.title(&alerts).1);
    let mailbox = |a: &str| {
        a.parse::<Mailbox>()
            .map_err(|e| format!("{a:?} is not an email address: {e}"))
    };
    let mut b = Message::builder()
        .from(mailbox(&cfg.from)?)
        .subject(subject.clone());
    for to in &cfg.to {
        b = b.to(mailbox(to)?);
    }
    b.multipart(MultiPart::alternative_plain_html(
        text(&subject, n, &alerts),
        html(&subject, n, &alerts),
    ))
    .map(Some)
    .map_err(|e| format!("cannot build the email: {e}"))
}

fn state(a: &Alert) -> &'static str {
    match a.status {
        Status::Firing => "FIRING",
        Status::Acknowledged => "FIRING (acknowledged)",
        Status::Resolved => "RESOLVED",
    }
}

fn text(subject: &str, n: &Notification, alerts: &[&Alert]) -> String {
    let mut t = format!("{subject}\n\n");
    for a in alerts {
        let _ = writeln!(t, "{} {}", state(a), a.rule);
        if let Some(s) = &a.summary {
            let _ = writeln!(t, "  {s}");
        }
        let _ = writeln!(t, "  KPI:       {}", a.kpi);
        if !a.group_value.is_empty() {
            let _ = writeln!(t, "  Group:     {}", a.group_value);
        }
        let _ = writeln!(t, "  Severity:  {}", a.severity);
        let _ = writeln!(t, "  Value:     {}", a.value.as_deref().unwrap_or("-"));
        let _ = writeln!(t, "  Threshold: {} {}", a.op, a.threshold);
        let _ = writeln!(
            t,
            "  Since:     {}",
            a.starts_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        if let Some(by) = &a.acked_by {
            let _ = writeln!(
                t,
                "  Acknowledged by {by}: {}",
                a.ack_note.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(t, "  {}\n", a.generator_url);
    }
    let _ = writeln!(t, "-- \npg_kpi, {}", n.external_url);
    t
}

fn html(subject: &str, n: &Notification, alerts: &[&Alert]) -> String {
    let mut h = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\"><h2>{}</h2>",
        esc(subject)
    );
    for a in alerts {
        let colour = match a.status {
            Status::Resolved => "#2e7d32",
            _ if a.severity == "critical" => "#c62828",
            _ => "#ef6c00",
        };
        let _ = write!(
            h,
            "<h3 style=\"color:{colour}\">{} {}</h3>",
            esc(state(a)),
            esc(&a.rule)
        );
        if let Some(s) = &a.summary {
            let _ = write!(h, "<p>{}</p>", esc(s));
        }
        h.push_str("<table cellpadding=\"4\">");
        let mut row = |k: &str, v: &str| {
            let _ = write!(h, "<tr><th align=\"left\">{k}</th><td>{}</td></tr>", esc(v));
        };
        row("KPI", &a.kpi);
        if !a.group_value.is_empty() {
            row("Group", &a.group_value);
        }
        row("Severity", &a.severity);
        row("Value", a.value.as_deref().unwrap_or("-"));
        row("Threshold", &format!("{} {}", a.op, a.threshold));
        row(
            "Since",
            &a.starts_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        );
        if let Some(by) = &a.acked_by {
            row("Acknowledged by", by);
        }
        let _ = write!(
            h,
            "</table><p><a href=\"{}\">Open the dashboard</a></p>",
            esc(&a.generator_url)
        );
    }
    let _ = write!(
        h,
        "<p style=\"color:#777\">pg_kpi, {}</p></body></html>",
        esc(&n.external_url)
    );
    h
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One attempt: connect, STARTTLS when required, authenticate, send. An answer in the
/// 5xx range (bad credentials, a refused recipient) is permanent.
pub async fn send(cfg: &EmailConfig, m: Message, timeout: Duration) -> Attempt {
    let (host, port) = match cfg
        .smarthost
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
    {
        Some(hp) => hp,
        None => {
            return Attempt::Permanent(format!("smarthost {:?} is not host:port", cfg.smarthost))
        }
    };
    let builder = if cfg.require_tls {
        match AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host) {
            Ok(b) => b,
            Err(e) => return Attempt::Permanent(format!("STARTTLS to {host}: {e}")),
        }
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    };
    let mut builder = builder.port(port).timeout(Some(timeout));
    if let Some(user) = &cfg.auth_username {
        let password = cfg
            .auth_password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.clone(), password));
    }
    match builder.build().send(m).await {
        Ok(_) => Attempt::Sent,
        Err(e) if e.is_permanent() => Attempt::Permanent(format!("SMTP {}: {e}", cfg.smarthost)),
        Err(e) => Attempt::Retry {
            error: format!("SMTP {}: {e}", cfg.smarthost),
            after: None,
        },
    }
}
