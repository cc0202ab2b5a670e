//! Each alert channel against a real receiver on loopback: Slack's and PagerDuty's
//! documented payloads from HTTP receivers standing in for them, `Retry-After` on 429
//! and 503, an unreachable receiver recorded as failed, email through a real SMTP
//! server (Python's aiosmtpd) with good and bad credentials, and a real Alertmanager
//! (Debian's `prometheus-alertmanager`) that passes pg_kpi's alerts on and resolves them.
// A test should fail loudly on anything unexpected, so unwrap is fine here.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::alerting::*;
use common::receiver::{Hook, Mode};
use common::*;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Quick timers, and retries quick enough for a test but with room for Retry-After.
const TIMERS: &str = r#"
    poll_interval_ms = 200
    lease_ms = 2000
    external_url = "http://dashboard.example.test"
"#;
const ROUTE_TIMERS: &str = r#"
    group_wait = "0s"
    group_interval = "1s"
    repeat_interval = "1h"
"#;
const RETRY: &str =
    "retry = { max_attempts = 3, initial_backoff_ms = 50, max_backoff_ms = 5000, timeout_ms = 3000 }";

/// The `text` of every field of a Block Kit message's sections.
fn slack_fields(body: &Value) -> Vec<String> {
    body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "section")
        .flat_map(|b| b["fields"].as_array().cloned().unwrap_or_default())
        .map(|f| f["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_pagerduty_get_the_payloads_they_document() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let slack = Hook::start(Mode::Ok).await;
    let pagerduty = Hook::start(Mode::Ok).await;
    let mut cfg = config(&cluster);
    cfg.alerting = alerting(&format!(
        r##"{TIMERS}
        [[receivers]]
        name = "oncall"
        {RETRY}
        [[receivers.slack_configs]]
        api_url = "{}"
        channel = "#ops"
        [[receivers.pagerduty_configs]]
        url = "{}"
        routing_key = "R0UT1NGKEY0123456789"
        [route]
        receiver = "oncall"
        {ROUTE_TIMERS}
        "##,
        slack.url(),
        pagerduty.url()
    ));
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;

    // Slack: a Block Kit message with severity, KPI, value, threshold, since when and a
    // button to the dashboard, plus the `text` fallback Slack shows in notifications.
    let s = slack.wait(1, "slack firing").await;
    let m = &s[0];
    assert!(
        m["text"]
            .as_str()
            .unwrap()
            .contains("[FIRING:1] orders_high"),
        "{m}"
    );
    assert_eq!(m["channel"], "#ops");
    assert_eq!(m["blocks"][0]["type"], "header");
    let fields = slack_fields(m);
    // Slack's mrkdwn escapes `<`, `>` and `&`.
    for want in [
        "*Severity*\ncritical",
        "*KPI*\nk",
        "*Value*\n2",
        "*Threshold*\n&gt;= 2",
    ] {
        assert!(fields.iter().any(|f| f == want), "{want:?} in {fields:?}");
    }
    assert!(
        fields.iter().any(|f| f.starts_with("*Since*\n<!date^")),
        "{fields:?}"
    );
    let actions = m["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap();
    assert!(
        actions["elements"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://dashboard.example.test"),
        "{actions}"
    );

    // PagerDuty Events API v2: a trigger with routing_key, dedup_key and the payload's
    // required summary, source and severity.
    let p = pagerduty.wait(1, "pagerduty trigger").await;
    let trigger = &p[0];
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["routing_key"], "R0UT1NGKEY0123456789");
    let dedup = trigger["dedup_key"].as_str().unwrap().to_string();
    assert!(dedup.starts_with("pgkpi:orders_high:"), "{dedup}");
    assert_eq!(trigger["payload"]["summary"], "2 orders");
    assert_eq!(trigger["payload"]["source"], "pg_kpi");
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert!(trigger["payload"]["timestamp"].is_string(), "{trigger}");
    assert_eq!(
        pagerduty.requests()[0].headers["content-type"],
        "application/json"
    );

    // An acknowledgement in pg_kpi is an `acknowledge` on the same incident; Slack,
    // which has no word for it, hears nothing.
    exec(
        &cluster,
        "SELECT kpi.ack_alert(id, 'alice', 'looking') FROM kpi.alerts WHERE alert = 'orders_high'",
    )
    .await;
    let p = pagerduty.wait(2, "pagerduty acknowledge").await;
    assert_eq!(
        (p[1]["event_action"].as_str(), p[1]["dedup_key"].as_str()),
        (Some("acknowledge"), Some(dedup.as_str()))
    );
    assert!(p[1].get("payload").is_none(), "{}", p[1]);

    resolve(&cluster).await;
    let p = pagerduty.wait(3, "pagerduty resolve").await;
    assert_eq!(
        (p[2]["event_action"].as_str(), p[2]["dedup_key"].as_str()),
        (Some("resolve"), Some(dedup.as_str()))
    );
    let s = slack.wait(2, "slack resolved").await;
    assert!(
        s[1]["text"]
            .as_str()
            .unwrap()
            .contains("[RESOLVED] orders_high"),
        "{}",
        s[1]
    );
    assert_eq!(s.len(), 2, "the acknowledgement sent Slack nothing: {s:#?}");
    n.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_an_unreachable_receiver_is_recorded() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let busy = Hook::start(Mode::Ok).await;
    busy.script(&[Mode::RetryAfter(429, 1), Mode::RetryAfter(503, 1)]);
    // Nothing listens on port 1 of loopback.
    let mut cfg = config(&cluster);
    cfg.alerting = alerting(&format!(
        r#"{TIMERS}
        [[receivers]]
        name = "busy"
        {RETRY}
        [[receivers.webhook_configs]]
        url = "{}"
        [[receivers]]
        name = "gone"
        {RETRY}
        [[receivers.webhook_configs]]
        url = "http://127.0.0.1:1/hook"
        [route]
        receiver = "busy"
        {ROUTE_TIMERS}
        [[route.routes]]
        receiver = "busy"
        continue = true
        [[route.routes]]
        receiver = "gone"
        "#,
        busy.url()
    ));
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;

    // 429, then 503, each with Retry-After: 1, then 200. Without Retry-After the
    // backoff would be at most 100 ms; with it each retry waits the second it was told.
    let r = busy.wait_requests(3, "the third attempt").await;
    for i in 1..3 {
        let gap = r[i].at - r[i - 1].at;
        assert!(
            gap >= Duration::from_millis(950),
            "attempt {} came {gap:?} after a Retry-After of 1 s",
            i + 1
        );
    }
    assert_eq!(r[0].body, r[2].body, "a retry sends the same notification");
    let d = wait_deliveries(&cluster, "busy", "the sent retry", |d| {
        d.iter().any(|x| x.0 == "sent")
    })
    .await;
    assert_eq!((d[0].0.as_str(), d[0].1), ("sent", 3), "{d:?}");

    // The unreachable one fails after its three attempts, with the reason recorded
    // where people look: the database, /api/alerts and /metrics.
    // Like Alertmanager, the group is tried again at its next group_interval, so the
    // attempts add up while the receiver stays away.
    let d = wait_deliveries(&cluster, "gone", "the failure", |d| {
        d.iter().any(|x| x.0 == "failed")
    })
    .await;
    assert!(d[0].1 >= 3, "{d:?}");
    let error = d[0].2.clone().unwrap_or_default();
    assert!(error.contains("after 3 attempts"), "{error}");
    let alerts: Value = reqwest::get(n.url("/api/alerts"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deliveries = alerts["alerts"][0]["deliveries"].as_array().unwrap();
    let gone = deliveries.iter().find(|d| d["receiver"] == "gone").unwrap();
    assert_eq!(gone["status"], "failed", "{gone}");
    assert_eq!(gone["last_error"].as_str(), Some(error.as_str()));
    assert!(
        n.metric("kpi_notifier_alert_notification_failures_total{integration=\"webhook\"}")
            .await
            >= 1.0
    );
    assert!(
        n.metric("kpi_notifier_alert_send_attempts_total{integration=\"webhook\"}")
            .await
            >= 6.0
    );
    n.stop().await;
}

/// A child process of the test, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// aiosmtpd on loopback, writing each message it accepts to `dir`.
fn smtp_sink(dir: &Path, credentials: Option<(&str, &str)>) -> (Process, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script).arg("--dir").arg(dir);
    if let Some((user, password)) = credentials {
        cmd.args(["--user", user, "--password", password]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3-aiosmtpd (scripts/setup.sh installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("smtp_sink said {line:?}"));
    (Process(child), port)
}

/// The messages in `dir`, in the order they arrived, once there are `n` (bounded).
async fn mails(dir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let k = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".eml")?
                    .parse()
                    .ok()?;
                Some((k, p))
            })
            .collect();
        if found.len() >= n {
            found.sort();
            return found
                .iter()
                .map(|(_, p)| std::fs::read_to_string(p).unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} mails arrived",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_real_smtp_server_and_bad_credentials_are_recorded() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let dir = tempfile::tempdir().unwrap();
    let (_smtp, port) = smtp_sink(dir.path(), Some(("alerts", "s3cret")));
    let mut cfg = config(&cluster);
    let email = |password: &str| {
        format!(
            r#"{RETRY}
            [[receivers.email_configs]]
            to = ["oncall@example.test", "Ops Lead <lead@example.test>"]
            from = "pg_kpi <alerts@example.test>"
            smarthost = "127.0.0.1:{port}"
            require_tls = false
            auth_username = "alerts"
            auth_password = "{password}""#
        )
    };
    cfg.alerting = alerting(&format!(
        r#"{TIMERS}
        [[receivers]]
        name = "mail"
        {}
        [[receivers]]
        name = "badmail"
        {}
        [route]
        receiver = "mail"
        {ROUTE_TIMERS}
        [[route.routes]]
        receiver = "mail"
        continue = true
        [[route.routes]]
        receiver = "badmail"
        "#,
        email("s3cret"),
        email("wrong")
    ));
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;

    let m = mails(dir.path(), 1).await;
    let firing = &m[0];
    assert!(
        firing.contains("Subject: [FIRING:1] orders_high (critical)"),
        "{firing}"
    );
    assert!(firing.contains("To: oncall@example.test"), "{firing}");
    assert!(firing.contains("multipart/alternative"), "{firing}");
    assert!(
        firing.contains("text/plain") && firing.contains("text/html"),
        "{firing}"
    );
    assert!(firing.contains("KPI:       k"), "{firing}");
    assert!(firing.contains("Threshold: >= 2"), "{firing}");

    // Bad credentials are permanent (535): one attempt, the server's answer recorded.
    let d = wait_deliveries(&cluster, "badmail", "the refused login", |d| {
        d.iter().any(|x| x.0 == "failed")
    })
    .await;
    let error = d[0].2.clone().unwrap_or_default();
    assert_eq!(d[0].1, 1, "{d:?}");
    assert!(
        error.contains("535") || error.to_lowercase().contains("auth"),
        "{error}"
    );
    assert!(
        n.metric("kpi_notifier_alert_notification_failures_total{integration=\"email\"}")
            .await
            >= 1.0
    );

    resolve(&cluster).await;
    let m = mails(dir.path(), 2).await;
    assert!(
        m[1].contains("Subject: [RESOLVED] orders_high (critical)"),
        "{}",
        m[1]
    );
    assert_eq!(m.len(), 2, "nothing was sent with the wrong password");
    n.stop().await;
}

/// A free loopback port (a tiny race with whoever binds it next, as with any test
/// that must hand a port to another program).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's Alertmanager on loopback, its one webhook pointing at `hook`.
async fn alertmanager(dir: &Path, hook: &Hook) -> (Process, String) {
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: test\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n- name: test\n  webhook_configs:\n  - url: {}\n    send_resolved: true\n",
            hook.url()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No gossip: a single Alertmanager needs no cluster port.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager (scripts/setup.sh installs it)");
    let process = Process(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (process, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_passes_the_alert_on_and_resolves_it() {
    let cluster = cluster().await;
    exec(&cluster, SETUP).await;
    exec(&cluster, RULE).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::start(Mode::Ok).await;
    let (_am, am_url) = alertmanager(dir.path(), &hook).await;
    let mut cfg = config(&cluster);
    cfg.alerting = alerting(&format!(
        r#"{TIMERS}
        [[receivers]]
        name = "am"
        {RETRY}
        [[receivers.alertmanager_configs]]
        url = "{am_url}"
        [route]
        receiver = "am"
        {ROUTE_TIMERS}
        "#
    ));
    let mut n = Notifier::start(cfg).await;
    fire(&cluster).await;

    // Out of Alertmanager's own webhook: the alert pg_kpi pushed, with its labels.
    let b = hook.wait(1, "Alertmanager's firing notification").await;
    assert_eq!(b[0]["status"], "firing", "{}", b[0]);
    assert_eq!(b[0]["receiver"], "test");
    let alert = &b[0]["alerts"][0];
    assert_eq!(
        (
            alert["labels"]["alertname"].as_str(),
            alert["labels"]["kpi"].as_str(),
            alert["labels"]["severity"].as_str(),
            alert["labels"]["team"].as_str()
        ),
        (
            Some("orders_high"),
            Some("k"),
            Some("critical"),
            Some("shop")
        ),
        "{alert}"
    );
    assert_eq!(alert["annotations"]["summary"], "2 orders");
    // Alertmanager holds it as active.
    let active: Value = reqwest::get(format!("{am_url}/api/v2/alerts?active=true"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(active.as_array().unwrap().len(), 1, "{active}");

    // pg_kpi's resolve sets endsAt, and Alertmanager sends the resolved notification.
    resolve(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if hook.bodies().iter().any(|b| b["status"] == "resolved") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resolved from Alertmanager: {:#?}",
            hook.bodies()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resolved = hook
        .bodies()
        .into_iter()
        .find(|b| b["status"] == "resolved")
        .unwrap();
    assert_eq!(
        resolved["alerts"][0]["labels"]["alertname"],
        json!("orders_high")
    );
    n.stop().await;
}
