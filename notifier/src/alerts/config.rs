//! `[alerting]`: receivers and the route tree, with Alertmanager's names (`receivers`,
//! `route`, `matchers`, `continue`, `group_by`, `group_wait`, `group_interval`,
//! `repeat_interval`, `send_resolved`, `webhook_configs`, `slack_configs`,
//! `pagerduty_configs`, `email_configs`), so its users feel at home. pg_kpi adds
//! `alertmanager_configs` (push to an existing Alertmanager) and escalation
//! (`escalate_after`, `escalate_to`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::matcher::Matcher;
use crate::config::Secret;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// Whether this notifier delivers alerts (every replica may: they share the work
    /// through the database). Delivery needs a `route` as well.
    pub enabled: bool,
    /// The dashboard's address as people reach it, for links in notifications
    /// (`externalURL`, Slack's button). Empty: `http://<listen>`.
    pub external_url: String,
    /// How long a notifier holds a notification group it is sending (milliseconds);
    /// renewed while the send goes on, so only a notifier that died loses it, and
    /// another takes the group over after this long.
    pub lease_ms: u64,
    /// How often to look for due groups and unrouted transitions without a NOTIFY
    /// (milliseconds); a NOTIFY wakes it at once.
    pub poll_interval_ms: u64,
    /// How many groups this notifier sends at the same time.
    pub max_concurrent_sends: usize,
    pub receivers: Vec<Receiver>,
    /// The root of the route tree. Without one nothing is delivered (alerts still show
    /// in `/api/alerts` and the `alerts` topic).
    pub route: Option<Route>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            enabled: true,
            external_url: String::new(),
            lease_ms: 15_000,
            poll_interval_ms: 1_000,
            max_concurrent_sends: 32,
            receivers: Vec::new(),
            route: None,
        }
    }
}

/// Somewhere notifications go: any number of integrations, each tried on its own.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    pub name: String,
    #[serde(default)]
    pub webhook_configs: Vec<WebhookConfig>,
    #[serde(default)]
    pub slack_configs: Vec<SlackConfig>,
    #[serde(default)]
    pub pagerduty_configs: Vec<PagerDutyConfig>,
    #[serde(default)]
    pub email_configs: Vec<EmailConfig>,
    #[serde(default)]
    pub alertmanager_configs: Vec<AlertmanagerConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
}

fn yes() -> bool {
    true
}

/// A generic webhook: Alertmanager's webhook JSON (version "4").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Sent as `Authorization: Bearer …` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
}

/// A Slack incoming webhook: a Block Kit message per notification.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub api_url: Secret,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// PagerDuty Events API v2: trigger, acknowledge and resolve per alert.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    pub routing_key: Secret,
    #[serde(default = "PagerDutyConfig::default_url")]
    pub url: String,
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

impl PagerDutyConfig {
    fn default_url() -> String {
        "https://events.pagerduty.com/v2/enqueue".into()
    }
}

/// Email over SMTP.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: Vec<String>,
    pub from: String,
    /// `host:port` of the SMTP server.
    pub smarthost: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password: Option<Secret>,
    /// STARTTLS: required (the default, as in Alertmanager) or not used at all.
    #[serde(default = "yes")]
    pub require_tls: bool,
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// An existing Alertmanager (`POST /api/v2/alerts`): pushed while firing, as Prometheus
/// does, and with `endsAt` on resolve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Its base address, e.g. `http://127.0.0.1:9093`.
    pub url: String,
}

/// How a receiver's integrations retry: exponential backoff with full jitter up to a
/// cap, `Retry-After` honoured on 429 and 503.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// One attempt's timeout (milliseconds): a receiver that hangs fails this attempt.
    pub timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            timeout_ms: 10_000,
        }
    }
}

/// A node of the route tree. Unset fields are inherited from the parent; the root's
/// defaults are Alertmanager's (group_wait 30s, group_interval 5m, repeat_interval 4h).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Route {
    pub receiver: Option<String>,
    /// `name="value"`, `name!="value"`, `name=~"regex"`, `name!~"regex"`, all of which
    /// must hold.
    pub matchers: Vec<String>,
    /// Go on to the next sibling after matching this route.
    #[serde(rename = "continue")]
    pub continue_: bool,
    /// Labels that split alerts into notifications; `["..."]` groups by every label.
    pub group_by: Option<Vec<String>>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<Duration>,
    /// A critical alert still firing and unacknowledged this long after it fired also
    /// goes to `escalate_to`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub escalate_after: Option<Duration>,
    pub escalate_to: Option<String>,
    pub routes: Vec<Route>,
}

impl AlertingConfig {
    /// Checks names, matchers and durations; errors name the key (`alerting.route.routes[1].receiver`).
    pub fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let key = format!("alerting.receivers[{i}]");
            if r.name.trim().is_empty() {
                return Err(format!("{key}.name: empty"));
            }
            if !names.insert(r.name.as_str()) {
                return Err(format!(
                    "{key}.name: receiver {:?} is defined twice",
                    r.name
                ));
            }
            r.validate(&key)?;
        }
        if self.lease_ms < 100 || self.poll_interval_ms == 0 || self.max_concurrent_sends == 0 {
            return Err(
                "alerting: lease_ms must be >= 100, poll_interval_ms and max_concurrent_sends > 0"
                    .into(),
            );
        }
        if !self.external_url.is_empty() {
            check_url("alerting.external_url", &self.external_url)?;
        }
        if let Some(root) = &self.route {
            if root.receiver.is_none() {
                return Err("alerting.route.receiver: the root route needs a receiver".into());
            }
            if !root.matchers.is_empty() {
                return Err("alerting.route.matchers: the root route matches every alert, it takes no matchers".into());
            }
            root.validate("alerting.route", &names)?;
        }
        Ok(())
    }

    pub fn receiver(&self, name: &str) -> Option<&Receiver> {
        self.receivers.iter().find(|r| r.name == name)
    }
}

impl Receiver {
    fn validate(&self, key: &str) -> Result<(), String> {
        let integrations = self.webhook_configs.len()
            + self.slack_configs.len()
            + self.pagerduty_configs.len()
            + self.email_configs.len()
            + self.alertmanager_configs.len();
        if integrations == 0 {
            return Err(format!(
                "{key}: receiver {:?} has no webhook_configs, slack_configs, pagerduty_configs, email_configs or alertmanager_configs",
                self.name
            ));
        }
        for (i, w) in self.webhook_configs.iter().enumerate() {
            check_url(&format!("{key}.webhook_configs[{i}].url"), &w.url)?;
        }
        for (i, s) in self.slack_configs.iter().enumerate() {
            check_url(
                &format!("{key}.slack_configs[{i}].api_url"),
                s.api_url.expose(),
            )?;
        }
        for (i, p) in self.pagerduty_configs.iter().enumerate() {
            check_url(&format!("{key}.pagerduty_configs[{i}].url"), &p.url)?;
            if p.routing_key.expose().trim().is_empty() {
                return Err(format!("{key}.pagerduty_configs[{i}].routing_key: empty"));
            }
        }
        for (i, a) in self.alertmanager_configs.iter().enumerate() {
            check_url(&format!("{key}.alertmanager_configs[{i}].url"), &a.url)?;
        }
        for (i, e) in self.email_configs.iter().enumerate() {
            let k = format!("{key}.email_configs[{i}]");
            if e.to.is_empty() {
                return Err(format!("{k}.to: no recipients"));
            }
            for a in e.to.iter().chain(std::iter::once(&e.from)) {
                a.parse::<lettre::message::Mailbox>()
                    .map_err(|err| format!("{k}: {a:?} is not an email address: {err}"))?;
            }
            match e.smarthost.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(format!("{k}.smarthost: {:?} is not host:port", e.smarthost)),
            }
            if e.auth_username.is_some() != e.auth_password.is_some() {
                return Err(format!("{k}: auth_username and auth_password go together"));
            }
        }
        let r = &self.retry;
        if r.max_attempts == 0
            || r.initial_backoff_ms == 0
            || r.max_backoff_ms < r.initial_backoff_ms
            || r.timeout_ms == 0
        {
            return Err(format!(
                "{key}.retry: need max_attempts > 0, 0 < initial_backoff_ms <= max_backoff_ms, timeout_ms > 0"
            ));
        }
        Ok(())
    }
}

impl Route {
    fn validate(&self, key: &str, receivers: &BTreeSet<&str>) -> Result<(), String> {
        for (field, name) in [
            ("receiver", &self.receiver),
            ("escalate_to", &self.escalate_to),
        ] {
            if let Some(n) = name {
                if !receivers.contains(n.as_str()) {
                    return Err(format!(
                        "{key}.{field}: receiver {n:?} is not defined in alerting.receivers"
                    ));
                }
            }
        }
        if self.escalate_after.is_some() != self.escalate_to.is_some() {
            return Err(format!("{key}: escalate_after and escalate_to go together"));
        }
        for (i, m) in self.matchers.iter().enumerate() {
            Matcher::parse(m).map_err(|e| format!("{key}.matchers[{i}]: {e}"))?;
        }
        for (field, d) in [
            ("group_interval", self.group_interval),
            ("repeat_interval", self.repeat_interval),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(format!("{key}.{field}: must be more than 0"));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(&format!("{key}.routes[{i}]"), receivers)?;
        }
        Ok(())
    }
}

fn check_url(key: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) => Err(format!(
            "{key}: {url:?} is not an http(s) URL (scheme {:?})",
            u.scheme()
        )),
        Err(e) => Err(format!("{key}: {url:?} is not a URL: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AlertingConfig, String> {
        let c: AlertingConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        c.validate().map(|_| c)
    }

    const BASE: &str = r#"
        [[receivers]]
        name = "ops"
        webhook_configs = [{ url = "http://127.0.0.1:9000/hook" }]
        [[receivers]]
        name = "pager"
        pagerduty_configs = [{ routing_key = "k", url = "http://127.0.0.1:9001/v2/enqueue" }]
    "#;

    #[test]
    fn a_route_tree_parses_with_alertmanager_names() {
        let c = parse(&format!(
            r#"{BASE}
            [route]
            receiver = "ops"
            group_by = ["alertname", "region"]
            group_wait = "0s"
            group_interval = "5m"
            repeat_interval = "4h"
            [[route.routes]]
            matchers = ['severity="critical"']
            receiver = "pager"
            continue = true
            escalate_after = "10m"
            escalate_to = "ops"
            "#
        ))
        .unwrap();
        let root = c.route.unwrap();
        assert_eq!(root.group_interval, Some(Duration::from_secs(300)));
        assert!(root.routes[0].continue_);
        assert_eq!(
            root.routes[0].escalate_after,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let cases = [
            (
                "[route]\nreceiver = \"nobody\"",
                "alerting.route.receiver: receiver \"nobody\" is not defined",
            ),
            (
                "[route]\nreceiver = \"ops\"\n[[route.routes]]\nreceiver = \"x\"",
                "alerting.route.routes[0].receiver",
            ),
            (
                "[route]\nreceiver = \"ops\"\n[[route.routes]]\nmatchers = ['severity=critical']",
                "alerting.route.routes[0].matchers[0]",
            ),
            (
                "[route]\nreceiver = \"ops\"\nescalate_to = \"pager\"",
                "escalate_after and escalate_to go together",
            ),
        ];
        for (extra, want) in cases {
            let err = parse(&format!("{BASE}\n{extra}")).unwrap_err();
            assert!(err.contains(want), "{extra:?}: {err}");
        }
        let err = parse("[[receivers]]\nname = \"w\"\nwebhook_configs = [{ url = \"not a url\" }]")
            .unwrap_err();
        assert!(
            err.contains("alerting.receivers[0].webhook_configs[0].url"),
            "{err}"
        );
        let err = parse("[[receivers]]\nname = \"w\"").unwrap_err();
        assert!(err.contains("has no webhook_configs"), "{err}");
        let err = parse(&format!("{BASE}\n[[receivers]]\nname = \"ops\"\nwebhook_configs = [{{ url = \"http://127.0.0.1:1/\" }}]")).unwrap_err();
        assert!(err.contains("defined twice"), "{err}");
        let err = parse(
            "[[receivers]]\nname = \"m\"\nemail_configs = [{ to = [\"ops@example.com\"], from = \"nope\", smarthost = \"127.0.0.1:25\" }]",
        )
        .unwrap_err();
        assert!(err.contains("is not an email address"), "{err}");
    }
}
