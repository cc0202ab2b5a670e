//! Alert channels: one notification, sent to every integration of its receiver at the
//! same time, each with its own retries, so one slow or dead integration delays none
//! of the others.
//!
//! | module | wire format |
//! |---|---|
//! | [`webhook`] | Alertmanager's webhook JSON, version "4" |
//! | [`slack`] | a Slack incoming webhook's Block Kit message |
//! | [`pagerduty`] | PagerDuty Events API v2: trigger, acknowledge, resolve per alert |
//! | [`email`] | a plain-text and HTML email over SMTP (lettre) |
//! | [`alertmanager`] | an existing Alertmanager's `POST /api/v2/alerts` |

pub mod alertmanager;
pub mod email;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::config::{AlertingConfig, Receiver, RetryConfig};
use super::notification::Notification;
use super::retry::{self, with_retries, Failed};
use crate::metrics::Metrics;

/// How often a receiver that expires alerts unless told again (Alertmanager) is sent a
/// firing group, whatever the route's repeat interval: Prometheus' resend delay.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// What happened to one notification at its receiver.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Every integration delivered it (or had nothing to say).
    pub ok: bool,
    /// The most attempts any integration made.
    pub attempts: u32,
    /// The first integration's error, named (`webhook[0]: HTTP 500 … (after 5 attempts)`).
    pub error: Option<String>,
}

/// The configured receivers and what they send with.
pub struct Channels {
    receivers: HashMap<String, Receiver>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

type Sending<'a> = Pin<Box<dyn Future<Output = (String, Result<u32, Failed>)> + Send + 'a>>;

impl Channels {
    pub fn new(cfg: &AlertingConfig, metrics: Arc<Metrics>) -> Result<Channels, String> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("pg_kpi-notifier/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("alerting: cannot build the HTTP client: {e}"))?;
        Ok(Channels {
            receivers: cfg
                .receivers
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            http,
            metrics,
        })
    }

    /// The shortest interval at which `receiver` wants a firing group re-sent.
    pub fn resend_interval(&self, receiver: &str) -> Option<Duration> {
        self.receivers
            .get(receiver)
            .filter(|r| !r.alertmanager_configs.is_empty())
            .map(|_| ALERTMANAGER_RESEND)
    }

    /// Sends `n` through every integration of its receiver, concurrently.
    pub async fn deliver(&self, n: &Notification) -> Outcome {
        let Some(r) = self.receivers.get(&n.receiver) else {
            return Outcome {
                ok: false,
                attempts: 0,
                error: Some(format!("receiver {:?} is not configured", n.receiver)),
            };
        };
        let retry = &r.retry;
        let mut sends: Vec<Sending<'_>> = Vec::new();
        for (i, w) in r.webhook_configs.iter().enumerate() {
            sends.push(Box::pin(async move {
                let res = match webhook::body(n, w.send_resolved) {
                    Some(body) => {
                        let bearer = w.bearer_token.as_ref().map(|t| t.expose());
                        self.post("webhook", retry, &w.url, &body, bearer).await
                    }
                    None => Ok(0),
                };
                (format!("webhook[{i}]"), res)
            }));
        }
        for (i, s) in r.slack_configs.iter().enumerate() {
            sends.push(Box::pin(async move {
                let res = match slack::body(n, s) {
                    Some(body) => {
                        self.post("slack", retry, s.api_url.expose(), &body, None)
                            .await
                    }
                    None => Ok(0),
                };
                (format!("slack[{i}]"), res)
            }));
        }
        for (i, p) in r.pagerduty_configs.iter().enumerate() {
            sends.push(Box::pin(async move {
                let mut res = Ok(0);
                // One event per alert, in order; the first that fails stops the rest,
                // and the whole notification is tried again later (PagerDuty
                // deduplicates the ones it already has by dedup_key).
                for event in pagerduty::events(n, p) {
                    match self.post("pagerduty", retry, &p.url, &event, None).await {
                        Ok(a) => res = res.map(|b: u32| b.max(a)),
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                (format!("pagerduty[{i}]"), res)
            }));
        }
        for (i, e) in r.email_configs.iter().enumerate() {
            sends.push(Box::pin(async move {
                let res = match email::message(n, e) {
                    Ok(Some(m)) => {
                        with_retries(
                            retry,
                            || email::send(e, m.clone(), Duration::from_millis(retry.timeout_ms)),
                            || self.metrics.alert_send_attempts.inc("email"),
                        )
                        .await
                    }
                    Ok(None) => Ok(0),
                    Err(error) => Err(Failed { attempts: 0, error }),
                };
                self.count("email", &res);
                (format!("email[{i}]"), res)
            }));
        }
        for (i, a) in r.alertmanager_configs.iter().enumerate() {
            sends.push(Box::pin(async move {
                let url = format!("{}/api/v2/alerts", a.url.trim_end_matches('/'));
                let body = alertmanager::body(n);
                let res = self.post("alertmanager", retry, &url, &body, None).await;
                (format!("alertmanager[{i}]"), res)
            }));
        }
        let results = futures::future::join_all(sends).await;
        let mut out = Outcome {
            ok: true,
            attempts: 0,
            error: None,
        };
        for (name, res) in results {
            match res {
                Ok(a) => out.attempts = out.attempts.max(a),
                Err(f) => {
                    out.ok = false;
                    out.attempts = out.attempts.max(f.attempts);
                    tracing::warn!(receiver = %n.receiver, integration = %name, error = %f.error,
                                   "alert notification failed");
                    out.error.get_or_insert(format!("{name}: {}", f.error));
                }
            }
        }
        out
    }

    async fn post(
        &self,
        kind: &str,
        retry: &RetryConfig,
        url: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
    ) -> Result<u32, Failed> {
        let timeout = Duration::from_millis(retry.timeout_ms);
        let res = with_retries(
            retry,
            || retry::post_json(&self.http, url, body, bearer, timeout),
            || self.metrics.alert_send_attempts.inc(kind),
        )
        .await;
        self.count(kind, &res);
        res
    }

    fn count(&self, kind: &str, res: &Result<u32, Failed>) {
        match res {
            Ok(0) => {}
            Ok(_) => self.metrics.alert_notifications.inc(kind),
            Err(_) => self.metrics.alert_notification_failures.inc(kind),
        }
    }
}

/// RFC 3339 with milliseconds and `Z`, as Alertmanager writes times.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
