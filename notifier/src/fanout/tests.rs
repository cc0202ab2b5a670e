//! Outbox and registry tests over in-memory pipes, read by a real tungstenite client.

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::DuplexStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::registry::CHUNK;
use super::*;
use crate::feed::filter::Topic;
use crate::feed::hub::{Hub, Snapshot};
use crate::metrics::{Metrics, Transport};
use crate::protocol;

fn publish(hub: &Hub, kpi: &str, version: i64) {
    let data = json!({"version": version, "measures": {"n": {"today": version}}});
    hub.publish(Snapshot::new(kpi, version, &data.to_string(), None).unwrap());
}

fn topic(kpi: &str) -> Topic {
    Topic {
        kpi: kpi.into(),
        dims: None,
    }
}

/// A connection subscribed to `kpi` (whose snapshot it is sent), over a pipe of
/// `buffer` bytes.
fn subscriber(hub: &Hub, kpi: &str, buffer: usize) -> (Arc<Outbox>, u64, DuplexStream) {
    let (server, client) = tokio::io::duplex(buffer);
    let outbox = Outbox::new(server, 64 * 1024);
    let id = hub.fanout.next_id();
    hub.fanout.add(&topic(kpi), id, &outbox);
    let rx = hub.subscribe(kpi).unwrap();
    let replaced = outbox
        .subscribe(id, topic(kpi), rx, None, &Metrics::default())
        .unwrap();
    assert_eq!(replaced, None);
    (outbox, id, client)
}

async fn client(pipe: DuplexStream) -> WebSocketStream<DuplexStream> {
    WebSocketStream::from_raw_socket(pipe, Role::Client, None).await
}

/// The next text frame, as JSON.
async fn next(ws: &mut WebSocketStream<DuplexStream>) -> Value {
    let m = tokio::time::timeout(std::time::Duration::from_secs(3), ws.next())
        .await
        .expect("timed out waiting for a frame")
        .expect("pipe closed")
        .expect("a WebSocket frame");
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn backlog(outbox: &Outbox) -> bool {
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    outbox.poll_backlog(&mut cx).is_ready()
}

/// Drains `outbox` while the client reads: the session's part.
fn drain_in_background(outbox: Arc<Outbox>) -> tokio::task::JoinHandle<io::Result<()>> {
    tokio::spawn(async move { std::future::poll_fn(|cx| outbox.poll_drain(cx)).await })
}

#[tokio::test]
async fn a_socket_with_room_takes_each_value_at_once() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let (outbox, _, pipe) = subscriber(&hub, "a", 64 * 1024);
    // A round each: the delivery task runs before the next value.
    publish(&hub, "a", 2);
    tokio::task::yield_now().await;
    publish(&hub, "a", 3);
    tokio::task::yield_now().await;
    assert!(
        !backlog(&outbox),
        "nothing queued, the session is not needed"
    );
    let mut ws = client(pipe).await;
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("snapshot"), Some(1))
    );
    for version in [2, 3] {
        let v = next(&mut ws).await;
        assert_eq!(
            (v["type"].as_str(), v["version"].as_i64()),
            (Some("update"), Some(version))
        );
    }
}

#[tokio::test]
async fn a_full_socket_keeps_the_frame_it_started_and_only_the_newest_value() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    // Room for less than one frame: the snapshot goes out in part.
    let (outbox, _, pipe) = subscriber(&hub, "a", 40);
    assert!(backlog(&outbox));
    for version in 2..=9 {
        publish(&hub, "a", version);
    }
    let drained = drain_in_background(outbox.clone());
    let mut ws = client(pipe).await;
    assert_eq!(
        next(&mut ws).await["version"],
        1,
        "the started frame, whole"
    );
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("update"), Some(9))
    );
    drained.await.unwrap().unwrap();
    assert!(!backlog(&outbox));
    // Versions 2 to 8 were replaced in the queue, each counted as dropped.
    assert_eq!(hub.metrics().dropped(Transport::Ws), 7);
}

#[tokio::test]
async fn the_sessions_frames_and_the_publishers_never_interleave() {
    use tokio::io::AsyncWriteExt;
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let (outbox, _, pipe) = subscriber(&hub, "a", 40);
    // The session writes a frame of its own (as tungstenite does) behind the part-sent
    // snapshot, a value is published behind that, and the session's flush drains all.
    let mut io = SharedIo(outbox.clone());
    io.write_all(&text_frame(protocol::PONG.as_bytes()))
        .await
        .unwrap();
    publish(&hub, "a", 2);
    let flush = tokio::spawn(async move { io.flush().await });
    let mut ws = client(pipe).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut ws).await["type"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["snapshot", "pong", "update"]);
    flush.await.unwrap().unwrap();
    assert!(!backlog(&outbox));
}

#[tokio::test]
async fn values_before_the_start_or_already_seen_are_not_sent() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let (server, pipe) = tokio::io::duplex(64 * 1024);
    let outbox = Outbox::new(server, 64 * 1024);
    let id = hub.fanout.next_id();
    hub.fanout.add(&topic("a"), id, &outbox);
    // Registered, not started: the fan-out skips it.
    publish(&hub, "a", 2);
    let rx = hub.subscribe("a").unwrap();
    outbox
        .subscribe(id, topic("a"), rx, Some(1), &Metrics::default())
        .unwrap();
    // Its start saw version 2 (above `since`), so it got the snapshot of 2; a late
    // delivery of 2 changes nothing.
    outbox.deliver(id, &hub.current("a").unwrap(), &Metrics::default());
    publish(&hub, "a", 3);
    let mut ws = client(pipe).await;
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("snapshot"), Some(2))
    );
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("update"), Some(3))
    );
}

#[tokio::test]
async fn a_dropped_kpi_ends_its_subscriptions_with_one_error_each() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    publish(&hub, "b", 1);
    let (outbox, _, pipe) = subscriber(&hub, "a", 64 * 1024);
    hub.retain(&["b".to_string()].into());
    assert!(hub.fanout.is_empty(), "the registry forgot the topic");
    assert_eq!(outbox.follows(&topic("a")), (false, 0));
    let mut ws = client(pipe).await;
    assert_eq!(next(&mut ws).await["type"], "snapshot");
    let v = next(&mut ws).await;
    assert_eq!(
        (v["code"].as_str(), v["kpi"].as_str()),
        (Some("unknown_kpi"), Some("a"))
    );
    assert_eq!(hub.metrics().client_errors.get("unknown_kpi"), 1);
    // A subscription that starts after its KPI's channel is gone is refused.
    let rx = {
        publish(&hub, "c", 1);
        let rx = hub.subscribe("c").unwrap();
        hub.retain(&["b".to_string()].into());
        rx
    };
    assert!(outbox
        .subscribe(9, topic("c"), rx, None, &Metrics::default())
        .is_err());
}

#[tokio::test]
async fn a_connections_subscriptions_survive_the_first_ones_end() {
    let hub = Hub::new();
    for kpi in ["a", "b", "c"] {
        publish(&hub, kpi, 1);
    }
    let (server, pipe) = tokio::io::duplex(64 * 1024);
    let outbox = Outbox::new(server, 64 * 1024);
    let metrics = Metrics::default();
    let mut ids = Vec::new();
    for kpi in ["a", "b", "c"] {
        let id = hub.fanout.next_id();
        hub.fanout.add(&topic(kpi), id, &outbox);
        let rx = hub.subscribe(kpi).unwrap();
        assert_eq!(
            outbox
                .subscribe(id, topic(kpi), rx, None, &metrics)
                .unwrap(),
            None
        );
        ids.push(id);
    }
    assert_eq!(outbox.follows(&topic("c")), (true, 3));
    // The first subscription (kept inline) ends; the others go on, each its own way.
    let ended = outbox.unsubscribe(|t| t.kpi.as_str() == "a");
    assert_eq!(ended, vec![(ids[0], topic("a"))]);
    hub.fanout.remove(&topic("a"), ids[0]);
    assert_eq!(outbox.follows(&topic("a")), (false, 2));
    for kpi in ["a", "b", "c"] {
        publish(&hub, kpi, 2);
        tokio::task::yield_now().await;
    }
    // Subscribing again to a followed topic replaces that subscription.
    let id = hub.fanout.next_id();
    hub.fanout.add(&topic("c"), id, &outbox);
    let rx = hub.subscribe("c").unwrap();
    assert_eq!(
        outbox
            .subscribe(id, topic("c"), rx, Some(2), &metrics)
            .unwrap(),
        Some(ids[2])
    );
    hub.fanout.remove(&topic("c"), ids[2]);
    publish(&hub, "c", 3);
    tokio::task::yield_now().await;
    let mut ws = client(pipe).await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let v = next(&mut ws).await;
        got.push((
            v["type"].as_str().unwrap().to_string(),
            v["kpi"].as_str().unwrap().to_string(),
            v["version"].as_i64().unwrap(),
        ));
    }
    let expect = [
        ("snapshot", "a", 1),
        ("snapshot", "b", 1),
        ("snapshot", "c", 1),
        ("update", "b", 2),
        ("update", "c", 2),
        ("update", "c", 3),
    ];
    let expect: Vec<_> = expect
        .iter()
        .map(|(t, k, v)| (t.to_string(), k.to_string(), *v))
        .collect();
    assert_eq!(got, expect);
    let mut left = outbox.close();
    left.sort_by_key(|(id, _)| *id);
    assert_eq!(left, vec![(ids[1], topic("b")), (id, topic("c"))]);
}

#[tokio::test]
async fn a_closed_outbox_takes_no_more_values() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let (outbox, id, pipe) = subscriber(&hub, "a", 64 * 1024);
    let ended = outbox.close();
    assert_eq!(ended.len(), 1);
    hub.fanout.remove(&ended[0].1, ended[0].0);
    assert!(hub.fanout.is_empty());
    outbox.deliver(id, &hub.current("a").unwrap(), &Metrics::default());
    drop(outbox);
    let mut ws = client(pipe).await;
    assert_eq!(next(&mut ws).await["type"], "snapshot");
    // The server end is gone with the outbox; nothing came after the snapshot.
    assert!(ws.next().await.is_none_or(|m| m.is_err()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_is_spread_over_tasks_and_reaches_everyone() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    // Outside the test task's cooperative budget, like many sessions subscribing each
    // in its own task: past the budget, the pipes would refuse the snapshots.
    let clients: Vec<_> = tokio::task::unconstrained(async {
        (0..3 * CHUNK + 7)
            .map(|_| subscriber(&hub, "a", 4096))
            .collect()
    })
    .await;
    assert_eq!(hub.fanout.len(), clients.len());
    publish(&hub, "a", 2);
    for (outbox, _, pipe) in clients {
        assert!(!backlog(&outbox));
        let mut ws = client(pipe).await;
        assert_eq!(next(&mut ws).await["version"], 1);
        assert_eq!(next(&mut ws).await["version"], 2);
    }
}

/// A socket that is never readable and hands each write to `F`: one that records or
/// one that panics.
struct WriteOnly<F>(F);

impl<F: FnMut(&[u8]) -> usize + Unpin> tokio::io::AsyncWrite for WriteOnly<F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok((self.0)(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<F: Unpin> tokio::io::AsyncRead for WriteOnly<F> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// The order the fan-out benchmark depends on (see `Followers::subs`): connections in
/// the order their memory was allocated, not a hash map's.
#[tokio::test]
async fn a_round_writes_to_connections_in_the_order_they_subscribed() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let log = Arc::new(Mutex::new(Vec::new()));
    let n = 3 * CHUNK + 7;
    let outboxes: Vec<_> = (0..n)
        .map(|who| {
            let log = log.clone();
            let outbox = Outbox::new(
                WriteOnly(move |buf: &[u8]| {
                    log.lock().unwrap().push(who);
                    buf.len()
                }),
                64 * 1024,
            );
            let id = hub.fanout.next_id();
            hub.fanout.add(&topic("a"), id, &outbox);
            let rx = hub.subscribe("a").unwrap();
            outbox
                .subscribe(id, topic("a"), rx, None, &Metrics::default())
                .unwrap();
            outbox
        })
        .collect();
    log.lock().unwrap().clear();
    publish(&hub, "a", 2);
    // On this single-threaded runtime the round's chunks run one after the other.
    for _ in 0..100 {
        if log.lock().unwrap().len() == n {
            break;
        }
        tokio::task::yield_now().await;
    }
    let order = log.lock().unwrap().clone();
    assert_eq!(order, (0..n).collect::<Vec<_>>(), "round order");
    drop(outboxes);
}

#[tokio::test]
async fn values_published_during_a_round_are_merged_into_one_more_round() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let (_outbox, _, pipe) = subscriber(&hub, "a", 64 * 1024);
    // No task runs between these: the first starts a round, the others only update
    // the value it will write.
    for version in 2..=5 {
        publish(&hub, "a", version);
    }
    let mut ws = client(pipe).await;
    assert_eq!(next(&mut ws).await["version"], 1);
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("update"), Some(5))
    );
    // The follow-up round found the client up to date; the next value gets a round.
    publish(&hub, "a", 6);
    assert_eq!(next(&mut ws).await["version"], 6);
    assert_eq!(hub.metrics().dropped(Transport::Ws), 3, "versions 2 to 4");
}

#[tokio::test]
async fn a_follower_that_joins_during_a_round_gets_its_next_value() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    let (_a, _, early) = subscriber(&hub, "a", 64 * 1024);
    // A round for version 2 is in flight (its task has not run yet) when a second
    // follower joins (its snapshot is version 2) and version 3 comes.
    publish(&hub, "a", 2);
    let (_b, _, late) = subscriber(&hub, "a", 64 * 1024);
    publish(&hub, "a", 3);
    let mut ws = client(late).await;
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("snapshot"), Some(2))
    );
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["version"].as_i64()),
        (Some("update"), Some(3))
    );
    let mut ws = client(early).await;
    assert_eq!(next(&mut ws).await["version"], 1);
    assert_eq!(next(&mut ws).await["version"], 3, "2 was merged into 3");
}

#[tokio::test]
async fn a_panic_under_one_connection_does_not_stop_the_topics_rounds() {
    let hub = Hub::new();
    publish(&hub, "a", 1);
    // A bug somewhere under one connection's write.
    let broken = Outbox::new(
        WriteOnly(|_: &[u8]| -> usize { panic!("a write that panics") }),
        64 * 1024,
    );
    let id = hub.fanout.next_id();
    hub.fanout.add(&topic("a"), id, &broken);
    // It has version 1 already, so starting it writes nothing.
    let rx = hub.subscribe("a").unwrap();
    broken
        .subscribe(id, topic("a"), rx, Some(1), &Metrics::default())
        .unwrap();
    // Subscribed after it, so the round reaches them after the panic.
    let healthy: Vec<_> = (0..8).map(|_| subscriber(&hub, "a", 64 * 1024)).collect();
    publish(&hub, "a", 2);
    tokio::task::yield_now().await;
    publish(&hub, "a", 3);
    for (_, _, pipe) in healthy {
        let mut ws = client(pipe).await;
        assert_eq!(next(&mut ws).await["version"], 1);
        // Version 2 may have gone out before the panic, or not; 3 has a round of its own.
        let mut v = next(&mut ws).await;
        if v["version"] == 2 {
            v = next(&mut ws).await;
        }
        assert_eq!(v["version"], 3);
    }
}

#[test]
fn text_frames_are_unmasked_server_frames() {
    let short = text_frame(b"hi");
    assert_eq!(&short[..], &[0x81, 2, b'h', b'i']);
    let long = text_frame(&[b'x'; 300]);
    assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
    assert_eq!(long.len(), 304);
}
