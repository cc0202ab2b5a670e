//! Retries: exponential backoff with jitter up to a cap, `Retry-After` honoured on 429
//! and 503, and the line between failures worth retrying and those that are not.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::config::RetryConfig;

/// How one attempt went.
#[derive(Debug, PartialEq)]
pub enum Attempt {
    Sent,
    /// Worth another try (timeouts, refused connections, 5xx, 429), after `after` if
    /// the receiver said when.
    Retry {
        error: String,
        after: Option<Duration>,
    },
    /// Trying again would fail the same way (4xx, bad credentials).
    Permanent(String),
}

/// Why an integration gave up, and after how many attempts.
#[derive(Debug, PartialEq)]
pub struct Failed {
    pub attempts: u32,
    pub error: String,
}

/// Runs `attempt` until it is sent, fails permanently, or `max_attempts` are spent.
/// Returns the attempts made; `on_attempt` is told of each (for metrics).
pub async fn with_retries<F, Fut>(
    cfg: &RetryConfig,
    mut attempt: F,
    on_attempt: impl Fn(),
) -> Result<u32, Failed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let max = cfg.max_attempts.max(1);
    let mut n = 0;
    loop {
        n += 1;
        on_attempt();
        match attempt().await {
            Attempt::Sent => return Ok(n),
            Attempt::Permanent(error) => return Err(Failed { attempts: n, error }),
            Attempt::Retry { error, .. } if n >= max => {
                return Err(Failed {
                    attempts: n,
                    error: format!("{error} (after {n} attempts)"),
                })
            }
            Attempt::Retry { after, .. } => {
                let cap = Duration::from_millis(cfg.max_backoff_ms);
                let wait = after.map_or_else(|| backoff(cfg, n), |a| a.min(cap));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The wait after the `n`th failed attempt: `initial × 2^(n-1)`, capped, of which a
/// random half is taken off so that receivers coming back are not hit in lockstep.
pub fn backoff(cfg: &RetryConfig, n: u32) -> Duration {
    let exp = cfg
        .initial_backoff_ms
        .saturating_mul(1u64 << (n.saturating_sub(1)).min(32))
        .min(cfg.max_backoff_ms);
    let half = exp / 2;
    Duration::from_millis(half + rand::rng().random_range(0..=exp - half))
}

/// `Retry-After`, in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// POSTs a JSON body and classifies the answer: 2xx is sent; 429 and 503 are retried
/// after their `Retry-After`; other 5xx, timeouts and connection errors are retried;
/// any other status is permanent.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    bearer: Option<&str>,
    timeout: Duration,
) -> Attempt {
    let mut req = http.post(url).json(body).timeout(timeout);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Attempt::Sent,
        Ok(r) => {
            let (status, headers) = (r.status(), r.headers().clone());
            classify(status, &headers, &r.text().await.unwrap_or_default())
        }
        Err(e) if e.is_timeout() => Attempt::Retry {
            error: format!("no answer within {} ms", timeout.as_millis()),
            after: None,
        },
        Err(e) => Attempt::Retry {
            error: format!("cannot reach {}: {}", redact(url), source_chain(&e)),
            after: None,
        },
    }
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> Attempt {
    let error = format!(
        "HTTP {}: {}",
        status.as_u16(),
        crate::error::truncate(body.trim(), 200)
    );
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        Attempt::Retry {
            error,
            after: retry_after(headers),
        }
    } else if status.is_server_error() {
        Attempt::Retry { error, after: None }
    } else {
        Attempt::Permanent(error)
    }
}

/// The URL without its path: Slack's and others' secrets live in the path.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            format!("{}://{}", u.scheme(), u.host_str().unwrap_or("?"))
                + &u.port().map(|p| format!(":{p}")).unwrap_or_default()
        }
        Err(_) => "the receiver".into(),
    }
}

/// reqwest's error and its causes ("error sending request: connection refused").
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> RetryConfig {
        RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        for _ in 0..100 {
            let b = |n| backoff(&cfg(), n).as_millis();
            assert!((50..=100).contains(&b(1)), "{}", b(1));
            assert!((100..=200).contains(&b(2)));
            assert!((200..=400).contains(&b(3)));
            assert!((500..=1000).contains(&b(5)));
            assert!((500..=1000).contains(&b(40)), "capped, no overflow");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &h, "no"),
            Attempt::Permanent(_)
        ));
        assert!(matches!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, &h, ""),
            Attempt::Retry { after: None, .. }
        ));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, "slow down"),
            Attempt::Retry {
                error: "HTTP 429: slow down".into(),
                after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn urls_in_errors_lose_their_secret_paths() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T/B/SECRET"),
            "https://hooks.slack.com"
        );
        assert_eq!(redact("http://127.0.0.1:9/x"), "http://127.0.0.1:9");
    }

    #[tokio::test]
    async fn attempts_stop_at_the_first_success_or_a_permanent_failure() {
        let quick = RetryConfig {
            initial_backoff_ms: 1,
            max_backoff_ms: 2,
            ..cfg()
        };
        let mut calls = 0;
        let r = with_retries(
            &quick,
            || {
                calls += 1;
                let c = calls;
                async move {
                    if c < 3 {
                        Attempt::Retry {
                            error: "500".into(),
                            after: None,
                        }
                    } else {
                        Attempt::Sent
                    }
                }
            },
            || {},
        )
        .await;
        assert_eq!(r, Ok(3));
        let r = with_retries(&quick, || async { Attempt::Permanent("401".into()) }, || {}).await;
        assert_eq!(
            r,
            Err(Failed {
                attempts: 1,
                error: "401".into()
            })
        );
        let r = with_retries(
            &quick,
            || async {
                Attempt::Retry {
                    error: "down".into(),
                    after: None,
                }
            },
            || {},
        )
        .await;
        assert_eq!(r.unwrap_err().attempts, 5);
    }
}
