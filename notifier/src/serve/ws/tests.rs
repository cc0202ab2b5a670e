//! Session tests over an in-memory pipe (no network socket, no database), with a real
//! tungstenite client on the other end.

use futures::stream::{SplitSink, SplitStream};
use serde_json::{json, Value};
use tokio::io::DuplexStream;

use super::*;
use crate::config::Config;
use crate::feed::hub::Snapshot;
use crate::serve::auth::Scope;
use crate::shutdown;

type Client = WebSocketStream<DuplexStream>;

/// Starts a session on one end of a pipe of `buffer` bytes each way; returns the
/// client's end and the session's task.
async fn connect(
    state: &AppState,
    principal: Principal,
    buffer: usize,
) -> (Client, tokio::task::JoinHandle<()>) {
    let (server, client) = tokio::io::duplex(buffer);
    let task = tokio::spawn(Session::new(state.clone(), principal).run(server));
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    (client, task)
}

struct Harness {
    to_server: SplitSink<Client, Message>,
    from_server: SplitStream<Client>,
    state: AppState,
    _trigger: shutdown::Trigger,
    task: tokio::task::JoinHandle<()>,
}

fn publish(state: &AppState, kpi: &str, version: i64) {
    let data = json!({"kpi": kpi, "version": version, "dimensions": ["region"],
                      "measures": {"n": {"today": version}}});
    state
        .hub
        .publish(Snapshot::new(kpi, version, &data.to_string(), None).unwrap());
}

fn dims(v: Value) -> crate::feed::filter::DimFilter {
    crate::feed::filter::DimFilter::parse(Some(&v))
        .unwrap()
        .unwrap()
}

/// Publishes a filtered value as the LISTEN task would, creating the topic if needed
/// (as a subscribe that read it first would).
fn publish_filtered(state: &AppState, kpi: &str, filter: &Value, version: i64) {
    let d = dims(filter.clone());
    let data = json!({"kpi": kpi, "version": version, "dims": filter,
                      "measures": {"n": {"today": version * 10}}});
    let snap = Snapshot::from_data(kpi, Some(d.clone()), &data.to_string(), None).unwrap();
    if state.hub.filtered_publish(snap) == crate::feed::hub::Published::Unchanged {
        let snap = Snapshot::from_data(kpi, Some(d.clone()), &data.to_string(), None).unwrap();
        assert!(matches!(
            state.hub.filtered_subscribe(kpi, &d, 100),
            crate::feed::hub::FilterSlot::Read | crate::feed::hub::FilterSlot::Live(_)
        ));
        // Kept alive for the test: a topic without receivers is pruned.
        std::mem::forget(state.hub.filtered_install(snap).unwrap());
    }
}

async fn harness_with(config: Config, scope: Scope, buffer: usize) -> Harness {
    let (trigger, flag) = shutdown::channel();
    let (state, _feeds) = crate::state(config, flag).unwrap();
    publish(&state, "a", 1);
    publish(&state, "b", 7);
    state.hub.mark_loaded();
    let principal = Principal {
        name: "test".into(),
        scope,
        ingest: Scope::All,
        expires_at: None,
    };
    let (client, task) = connect(&state, principal, buffer).await;
    let (to_server, from_server) = client.split();
    Harness {
        to_server,
        from_server,
        state,
        _trigger: trigger,
        task,
    }
}

async fn harness() -> Harness {
    harness_with(Config::default(), Scope::All, 64 * 1024).await
}

impl Harness {
    async fn send(&mut self, v: impl ToString) {
        self.to_server
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(3), self.from_server.next())
                .await
                .expect("timed out waiting for a server message")
                .expect("session ended")
                .expect("a WebSocket frame");
            if !matches!(m, Message::Ping(_)) {
                return m;
            }
        }
    }

    async fn json(&mut self) -> Value {
        match self.next().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    async fn close_code(&mut self) -> u16 {
        loop {
            match self.next().await {
                Message::Close(Some(f)) => return f.code.into(),
                Message::Text(_) => continue,
                other => panic!("expected close, got {other:?}"),
            }
        }
    }

    async fn silent_for(&mut self, ms: u64) {
        let r = tokio::time::timeout(Duration::from_millis(ms), self.next()).await;
        assert!(r.is_err(), "expected nothing, got {r:?}");
    }
}

#[tokio::test]
async fn snapshot_then_updates_then_pong() {
    let mut h = harness().await;
    h.send(json!({"op":"subscribe","kpis":["a"]})).await;
    let v = h.json().await;
    assert_eq!(v["type"], "snapshot");
    assert_eq!(v["kpi"], "a");
    assert_eq!(v["version"], 1);
    assert_eq!(v["data"]["measures"]["n"]["today"], 1);
    publish(&h.state, "a", 2);
    let v = h.json().await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("update"), Some(2))
    );
    h.send(json!({"op":"ping"})).await;
    assert_eq!(h.json().await, json!({"type":"pong"}));
    h.send(json!({"op":"unsubscribe","kpis":["a"]})).await;
    h.send(json!({"op":"ping"})).await;
    assert_eq!(h.json().await["type"], "pong");
    publish(&h.state, "a", 3);
    h.silent_for(200).await;
}

#[tokio::test]
async fn since_at_or_above_current_waits_for_a_change() {
    let mut h = harness().await;
    h.send(json!({"op":"subscribe","kpis":["a","b"],"since":{"a":1,"b":3}}))
        .await;
    let v = h.json().await;
    assert_eq!(
        (v["kpi"].as_str(), v["type"].as_str(), v["version"].as_i64()),
        (Some("b"), Some("snapshot"), Some(7))
    );
    h.silent_for(150).await;
    publish(&h.state, "a", 2);
    let v = h.json().await;
    assert_eq!(
        (v["kpi"].as_str(), v["type"].as_str(), v["version"].as_i64()),
        (Some("a"), Some("update"), Some(2))
    );

    // A client ahead of this replica (since 10) skips versions up to 10.
    let mut h = harness().await;
    h.send(json!({"op":"subscribe","kpis":["a"],"since":{"a":10}}))
        .await;
    publish(&h.state, "a", 5);
    h.silent_for(150).await;
    publish(&h.state, "a", 11);
    assert_eq!(h.json().await["version"], 11);
}

#[tokio::test]
async fn refusals_keep_the_connection_open() {
    let mut h = harness_with(
        Config::default(),
        Scope::Kpis(["a".to_string(), "nope".to_string()].into()),
        64 * 1024,
    )
    .await;
    h.send(json!({"op":"subscribe","kpis":["b"]})).await;
    let v = h.json().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["kpi"].as_str()),
        (Some("error"), Some("forbidden"), Some("b"))
    );
    h.send(json!({"op":"subscribe","kpis":["nope"]})).await;
    assert_eq!(h.json().await["code"], "unknown_kpi");
    h.send(json!({"op":"subscribe","kpis":["a"],"since":{"a":-4}}))
        .await;
    assert_eq!(h.json().await["code"], "bad_since");
    h.send(json!({"op":"dance"})).await;
    assert_eq!(h.json().await["code"], "unknown_op");
    h.send(json!({"kpis":["a"]})).await;
    assert_eq!(h.json().await["code"], "bad_message");
    h.send(json!({"op":"ping"})).await;
    assert_eq!(h.json().await["type"], "pong");
    assert_eq!(h.state.metrics.client_errors.get("forbidden"), 1);
    assert_eq!(h.state.metrics.client_errors.get("bad_since"), 1);
}

#[tokio::test]
async fn not_json_closes_4400() {
    let mut h = harness().await;
    h.send("{this is not json").await;
    assert_eq!(h.json().await["code"], "bad_message");
    assert_eq!(h.close_code().await, close::BAD_MESSAGE);
    h.task.await.unwrap();
    assert_eq!(h.state.metrics.ws_closes.get("4400"), 1);
    assert_eq!(h.state.metrics.connections(Transport::Ws), 0);
}

#[tokio::test]
async fn binary_closes_1003() {
    let mut h = harness().await;
    h.to_server
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(h.close_code().await, close::UNSUPPORTED_DATA);
}

#[tokio::test]
async fn subscription_limit() {
    let mut config = Config::default();
    config.limits.max_subscriptions = 1;
    let mut h = harness_with(config, Scope::All, 64 * 1024).await;
    h.send(json!({"op":"subscribe","kpis":["a","b"]})).await;
    assert_eq!(h.json().await["type"], "snapshot");
    let v = h.json().await;
    assert_eq!(
        (v["code"].as_str(), v["kpi"].as_str()),
        (Some("too_many_subscriptions"), Some("b"))
    );
    // Re-subscribing to a KPI already held is not a new subscription.
    h.send(json!({"op":"subscribe","kpis":["a"]})).await;
    assert_eq!(h.json().await["type"], "snapshot");
}

#[tokio::test]
async fn flooding_is_told_then_closed() {
    let mut h = harness().await;
    for _ in 0..1000 {
        h.send(json!({"op":"ping"})).await;
    }
    let mut pongs = 0;
    let mut rate_limited = 0;
    let code = loop {
        match h.next().await {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(v["code"], "rate_limited");
                        rate_limited += 1;
                    }
                    _ => panic!("{v}"),
                }
            }
            Message::Close(Some(f)) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, close::RATE_LIMITED);
    assert_eq!(rate_limited, 1, "told once, not once per message");
    let burst = Config::default().limits.burst as usize;
    assert!((burst..burst + 5).contains(&pongs), "{pongs} pongs");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_too_slow() {
    let mut config = Config::default();
    config.limits.send_timeout_ms = 100;
    // A pipe that takes a frame or two, then blocks like a full socket.
    let mut h = harness_with(config, Scope::All, 256).await;
    h.send(json!({"op":"subscribe","kpis":["a","b"]})).await;
    for v in 2..50 {
        publish(&h.state, "a", v);
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(5), &mut h.task)
        .await
        .expect("session should end")
        .unwrap();
    assert_eq!(h.state.metrics.ws_closes.get("4002"), 1);
}

#[tokio::test]
async fn shutdown_closes_1001_and_dropped_kpis_are_reported() {
    let mut h = harness().await;
    h.send(json!({"op":"subscribe","kpis":["a","b"]})).await;
    h.json().await;
    h.json().await;
    h.state.hub.retain(&["b".to_string()].into());
    let v = h.json().await;
    assert_eq!(
        (v["code"].as_str(), v["kpi"].as_str()),
        (Some("unknown_kpi"), Some("a"))
    );
    h._trigger.fire();
    assert_eq!(h.close_code().await, close::GOING_AWAY);
}

#[tokio::test]
async fn not_ready_before_the_first_load() {
    let (_trigger, flag) = shutdown::channel();
    let (state, _feeds) = crate::state(Config::default(), flag).unwrap();
    let (mut client, _task) = connect(&state, Principal::anonymous(), 4096).await;
    client
        .send(Message::Text(
            json!({"op":"subscribe","kpis":["a"]}).to_string().into(),
        ))
        .await
        .unwrap();
    let Some(Ok(Message::Text(t))) = client.next().await else {
        panic!("expected text")
    };
    let v: Value = serde_json::from_str(t.as_str()).unwrap();
    assert_eq!(v["code"], "not_ready");
}

#[tokio::test]
async fn oversized_and_broken_reads_map_to_close_codes() {
    assert!(matches!(
        read_error(
            "Space limit exceeded: Message too long: 10485760 > 65536",
            65536
        ),
        End::Close(close::TOO_BIG, _)
    ));
    assert!(matches!(
        read_error("Connection reset without closing handshake", 1),
        End::Gone
    ));
}

#[tokio::test]
async fn dimension_filters_are_topics_of_their_own() {
    let mut h = harness().await;
    let eu = json!({"region": "eu"});
    publish_filtered(&h.state, "a", &eu, 1);
    h.send(json!({"op":"subscribe","kpis":["a"],"dims":{"region":"eu"}}))
        .await;
    let v = h.json().await;
    assert_eq!(
        (v["type"].as_str(), v["kpi"].as_str(), v["version"].as_i64()),
        (Some("snapshot"), Some("a"), Some(1))
    );
    assert_eq!(
        v["dims"], eu,
        "frames of a filtered topic carry their filter"
    );
    assert_eq!(v["data"]["measures"]["n"]["today"], 10);
    // The unfiltered KPI is another subscription on the same connection.
    h.send(json!({"op":"subscribe","kpis":["a"]})).await;
    let v = h.json().await;
    assert!(v.get("dims").is_none(), "{v}");
    assert_eq!(v["data"]["measures"]["n"]["today"], 1);
    publish_filtered(&h.state, "a", &eu, 2);
    let v = h.json().await;
    assert_eq!(
        (v["type"].as_str(), v["dims"].clone(), v["version"].as_i64()),
        (Some("update"), eu.clone(), Some(2))
    );
    // Unsubscribing the filter leaves the unfiltered subscription.
    h.send(json!({"op":"unsubscribe","kpis":["a"],"dims":{"region":"eu"}}))
        .await;
    h.send(json!({"op":"ping"})).await;
    assert_eq!(h.json().await["type"], "pong");
    publish_filtered(&h.state, "a", &eu, 3);
    publish(&h.state, "a", 3);
    let v = h.json().await;
    assert!(v.get("dims").is_none() && v["version"] == 3, "{v}");
    h.silent_for(150).await;
}

#[tokio::test]
async fn bad_and_unknown_dimensions_are_refused() {
    let mut h = harness().await;
    h.send(json!({"op":"subscribe","kpis":["a"],"dims":["eu"]}))
        .await;
    assert_eq!(h.json().await["code"], "bad_dims");
    h.send(json!({"op":"subscribe","kpis":["a"],"dims":{"nope":"x"}}))
        .await;
    let v = h.json().await;
    assert_eq!(
        (v["code"].as_str(), v["kpi"].as_str()),
        (Some("unknown_dimension"), Some("a"))
    );
    assert!(v["message"].as_str().unwrap().contains("region"), "{v}");
    h.send(json!({"op":"subscribe","kpis":["nope"],"dims":{"region":"eu"}}))
        .await;
    assert_eq!(h.json().await["code"], "unknown_kpi");
    // Still serving.
    h.send(json!({"op":"ping"})).await;
    assert_eq!(h.json().await["type"], "pong");
}

#[tokio::test]
async fn the_number_of_distinct_filters_is_bounded() {
    let mut config = Config::default();
    config.limits.max_dim_filters = 1;
    let mut h = harness_with(config, Scope::All, 64 * 1024).await;
    publish_filtered(&h.state, "a", &json!({"region": "eu"}), 1);
    h.send(json!({"op":"subscribe","kpis":["a"],"dims":{"region":"us"}}))
        .await;
    assert_eq!(h.json().await["code"], "too_many_filters");
    // The filter that exists can still be followed.
    h.send(json!({"op":"subscribe","kpis":["a"],"dims":{"region":"eu"}}))
        .await;
    assert_eq!(h.json().await["type"], "snapshot");
}
