//! A small Chrome DevTools Protocol client: launches Debian's headless Chromium on a
//! throwaway profile and drives one page over the protocol's WebSocket (commands by id,
//! flattened sessions). Console messages and page exceptions are printed, so a failing
//! test shows what the page said.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    _child: Child,
    _profile: tempfile::TempDir,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: Mutex<u64>,
    session: String,
}

/// The browser binary: `CHROMIUM` or Debian's `chromium`.
fn binary() -> String {
    if let Ok(b) = std::env::var("CHROMIUM") {
        return b;
    }
    for b in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(b).exists() {
            return b.to_string();
        }
    }
    panic!(
        "chromium not found (looked for /usr/bin/chromium and $CHROMIUM): run scripts/setup.sh, \
         which installs Debian's chromium package"
    );
}

impl Browser {
    /// Starts Chromium and opens one blank page of `width`×`height`.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(binary())
            .args([
                "--headless=new",
                // We run as root in CI, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--mute-audio",
                &format!("--window-size={width},{height}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromium: {e} (run scripts/setup.sh)"));
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("chromium exited before it listened for DevTools");
        })
        .await
        .expect("chromium did not print its DevTools address within 30 s");
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let p = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let v: Value = match serde_json::from_str(t.as_str()) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                } else {
                    print_event(&v);
                }
            }
        });
        let mut b = Browser {
            _child: child,
            _profile: profile,
            out,
            pending,
            next_id: Mutex::new(0),
            session: String::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        for m in [
            "Page.enable",
            "Runtime.enable",
            "Performance.enable",
            "HeapProfiler.enable",
        ] {
            b.page(m, json!({})).await;
        }
        b.page(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    async fn send(&self, method: &str, params: Value, session: Option<&str>) -> Value {
        let id = {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            *n
        };
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out.send(Message::text(msg.to_string())).unwrap();
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
            .unwrap();
        if let Some(e) = v.get("error") {
            panic!("{method}: {e}");
        }
        v["result"].clone()
    }

    /// A browser-level command.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.send(method, params, None).await
    }

    /// A command to the page.
    pub async fn page(&self, method: &str, params: Value) -> Value {
        self.send(method, params, Some(&self.session.clone())).await
    }

    pub async fn navigate(&self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value as JSON.
    pub async fn eval(&self, expr: &str) -> Value {
        let r = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (bounded by `timeout`); returns its value.
    pub async fn wait_for(&self, expr: &str, timeout: Duration, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        // While a page loads, `document.body` may be null: that is "not yet", not an error.
        let guarded =
            format!("(() => {{ try {{ return ({expr}); }} catch (e) {{ return null; }} }})()");
        loop {
            let v = self.eval(&guarded).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out ({timeout:?}) waiting for {what}: {expr} is {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `JSHeapUsedSize` after a full garbage collection, in bytes.
    pub async fn heap_after_gc(&self) -> f64 {
        self.page("HeapProfiler.collectGarbage", json!({})).await;
        let m = self.page("Performance.getMetrics", json!({})).await;
        m["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "JSHeapUsedSize")
            .and_then(|m| m["value"].as_f64())
            .expect("Performance.getMetrics has no JSHeapUsedSize")
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .page(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}

fn print_event(v: &Value) {
    match v["method"].as_str() {
        Some("Runtime.consoleAPICalled") => {
            let args: Vec<String> = v["params"]["args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            x["value"]
                                .as_str()
                                .map(String::from)
                                .unwrap_or_else(|| x["description"].to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            eprintln!(
                "[page console.{}] {}",
                v["params"]["type"].as_str().unwrap_or("log"),
                args.join(" ")
            );
        }
        Some("Runtime.exceptionThrown") => {
            eprintln!("[page exception] {}", v["params"]["exceptionDetails"]);
        }
        _ => {}
    }
}
