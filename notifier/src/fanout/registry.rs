//! Who follows each topic, and the delivery rounds that write new values to them.
//!
//! A round writes one topic's newest value to all its followers, in chunks run as tasks
//! on every worker. At most one round per topic is in flight: a value published during
//! a round becomes the topic's newest, which the round's later chunks already write,
//! and one more round follows for the followers the first reached earlier. Starting a
//! round per value instead lets rounds pile up once values come faster than one round
//! takes (10,000 clients at 10 values a second on two shared cores is close): the
//! rounds then contend for the same outboxes, each gets slower, and the delay grows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{text_frame, Outbox};
use crate::filter::Topic;
use crate::hub::Snapshot;
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode};

/// Followers per delivery task: small enough that both workers share a big fan-out,
/// large enough that spawning costs little next to the writes.
pub(super) const CHUNK: usize = 256;

/// Followers written to by one delivery task.
type Chunk = Vec<(u64, Arc<Outbox>)>;

/// One topic's followers and its delivery round.
#[derive(Default)]
struct Followers {
    subs: HashMap<u64, Arc<Outbox>>,
    /// The newest value published: what a round's chunks write when they start.
    latest: Option<Arc<Snapshot>>,
    /// Counts rounds, so a chunk of an old round (the topic was forgotten and followed
    /// again meanwhile) cannot end the current one.
    round: u64,
    /// Chunks of the current round still running; 0 when no round is in flight.
    running: usize,
    /// A value was published during the round: another round follows it.
    again: bool,
}

impl Followers {
    /// Starts a round: its chunks of followers.
    fn start_round(&mut self) -> (u64, Vec<Chunk>) {
        let mut chunks: Vec<Chunk> = Vec::new();
        let n = self.subs.len();
        for (i, (id, outbox)) in self.subs.iter().enumerate() {
            if i % CHUNK == 0 {
                chunks.push(Vec::with_capacity(CHUNK.min(n - i)));
            }
            if let Some(chunk) = chunks.last_mut() {
                chunk.push((*id, outbox.clone()));
            }
        }
        self.round += 1;
        self.running = chunks.len();
        self.again = false;
        (self.round, chunks)
    }
}

type Topics = Arc<Mutex<HashMap<Topic, Followers>>>;

fn lock(topics: &Topics) -> MutexGuard<'_, HashMap<Topic, Followers>> {
    // Each mutation leaves the map consistent; a panic elsewhere does not poison it.
    topics.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which connections follow each topic.
#[derive(Default)]
pub struct Registry {
    topics: Topics,
    next_id: AtomicU64,
}

impl Registry {
    /// A new subscription id, unique in this process.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add(&self, topic: &Topic, id: u64, outbox: &Arc<Outbox>) {
        lock(&self.topics)
            .entry(topic.clone())
            .or_default()
            .subs
            .insert(id, outbox.clone());
    }

    pub fn remove(&self, topic: &Topic, id: u64) {
        let mut topics = lock(&self.topics);
        if let Some(f) = topics.get_mut(topic) {
            f.subs.remove(&id);
            if f.subs.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Subscriptions registered, over all topics.
    pub fn len(&self) -> usize {
        lock(&self.topics).values().map(|f| f.subs.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends a new value of `topic` to its followers: starts a round, or leaves the
    /// value to the round in flight (see the module's comment).
    pub fn deliver(&self, topic: &Topic, snap: &Arc<Snapshot>, metrics: &Arc<Metrics>) {
        let (round, chunks) = {
            let mut topics = lock(&self.topics);
            let Some(f) = topics.get_mut(topic) else {
                return;
            };
            f.latest = Some(snap.clone());
            if f.running > 0 {
                f.again = true;
                return;
            }
            f.start_round()
        };
        run_round(&self.topics, topic, round, chunks, metrics);
    }

    /// Ends every subscription to a topic `gone` says is gone, telling each client
    /// with an `unknown_kpi` error.
    pub fn end(&self, gone: impl Fn(&Topic) -> bool, metrics: &Metrics) {
        let ended: Vec<(Topic, Followers)> = {
            let mut topics = lock(&self.topics);
            let names: Vec<Topic> = topics.keys().filter(|t| gone(t)).cloned().collect();
            names
                .into_iter()
                .filter_map(|t| topics.remove(&t).map(|f| (t, f)))
                .collect()
        };
        for (topic, Followers { subs, .. }) in ended {
            let kpi = topic.kpi.as_str();
            let message = match &topic.dims {
                None => format!("KPI {kpi:?} was dropped"),
                Some(d) => format!("KPI {kpi:?} filtered by {} is gone", d.as_str()),
            };
            let frame = text_frame(
                protocol::error_frame(ErrorCode::UnknownKpi, &message, Some(kpi)).as_bytes(),
            );
            let told = subs
                .iter()
                .filter(|(id, outbox)| outbox.end(**id, &frame))
                .count();
            for _ in 0..told {
                metrics.client_errors.inc(ErrorCode::UnknownKpi.as_str());
            }
            tracing::info!(
                kpi,
                dims = topic.dims.as_ref().map(|d| d.as_str()),
                clients = told,
                "subscriptions ended: {message}"
            );
        }
    }
}

/// Runs a round's chunks as tasks on the runtime (inline without one, in unit tests).
///
/// The tasks run outside tokio's cooperative budget: every socket write spends from it,
/// and once a task's 128 units are gone each write says "not ready", which would send
/// every later follower down the queue-and-wake path. A chunk is a bounded piece of
/// work, so it cannot starve other tasks for long.
fn run_round(
    topics: &Topics,
    topic: &Topic,
    round: u64,
    chunks: Vec<Chunk>,
    metrics: &Arc<Metrics>,
) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    for chunk in chunks {
        let (topics, topic, metrics) = (topics.clone(), topic.clone(), metrics.clone());
        let run = move || run_chunk(&topics, &topic, round, chunk, &metrics);
        match &runtime {
            Some(rt) => {
                rt.spawn(tokio::task::unconstrained(async move { run() }));
            }
            None => run(),
        }
    }
}

/// Writes the topic's newest value to one chunk of followers; the round's last chunk
/// starts the next round if a value came meanwhile.
fn run_chunk(topics: &Topics, topic: &Topic, round: u64, chunk: Chunk, metrics: &Arc<Metrics>) {
    let latest = lock(topics).get(topic).and_then(|f| f.latest.clone());
    if let Some(snap) = latest {
        for (id, outbox) in chunk {
            // A panic under one connection must neither cost the rest of the chunk its
            // value nor skip the bookkeeping below (the round would never end, and the
            // topic would get no round again). Free unless something panics.
            let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                outbox.deliver(id, &snap, metrics)
            }));
            if delivered.is_err() {
                tracing::error!(kpi = %topic.kpi, "delivery to a connection panicked");
            }
        }
    }
    let next = {
        let mut map = lock(topics);
        let Some(f) = map.get_mut(topic).filter(|f| f.round == round) else {
            return;
        };
        f.running = f.running.saturating_sub(1);
        if f.running > 0 || !f.again {
            return;
        }
        f.start_round()
    };
    let (round, chunks) = next;
    run_round(topics, topic, round, chunks, metrics);
}
