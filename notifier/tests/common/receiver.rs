//! An HTTP receiver on loopback standing in for a webhook, Slack or PagerDuty: it
//! records every request (body, headers, arrival time) and answers as it is told.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::time::Instant;

/// How a receiver answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Status(u16),
    /// The status with `Retry-After: <seconds>` (429 and 503 in the tests).
    RetryAfter(u16, u64),
    /// Never answers (the request is recorded all the same).
    Hang,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Request {
    pub body: Value,
    pub headers: HeaderMap,
    pub at: Instant,
}

#[derive(Default)]
struct Seen {
    requests: Vec<Request>,
    /// Answers for the next requests, in order; then `mode`.
    script: VecDeque<Mode>,
    mode: Option<Mode>,
}

#[derive(Clone)]
pub struct Hook {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Hook {
    pub async fn start(mode: Mode) -> Hook {
        let seen = Arc::new(Mutex::new(Seen {
            mode: Some(mode),
            ..Seen::default()
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hook { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.seen.lock().unwrap().mode = Some(mode);
    }

    /// The next requests get these answers, in order, before the mode applies again.
    pub fn script(&self, answers: &[Mode]) {
        self.seen
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().requests.clone()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.requests().into_iter().map(|r| r.body).collect()
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize, what: &str) -> Vec<Request> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.requests();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {n} notifications arrived: {:#?}",
                r.len(),
                r.iter().map(|r| &r.body).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait(&self, n: usize, what: &str) -> Vec<Value> {
        self.wait_requests(n, what)
            .await
            .into_iter()
            .map(|r| r.body)
            .collect()
    }
}

async fn receive(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mode = {
        let mut s = seen.lock().unwrap();
        // A body that is not JSON is kept as a string, so the test can show it.
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        s.requests.push(Request {
            body,
            headers,
            at: Instant::now(),
        });
        s.script.pop_front().or(s.mode).unwrap_or(Mode::Ok)
    };
    match mode {
        Mode::Ok => StatusCode::OK.into_response(),
        Mode::Status(c) => StatusCode::from_u16(c).unwrap().into_response(),
        Mode::RetryAfter(c, secs) => (
            StatusCode::from_u16(c).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Mode::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}
