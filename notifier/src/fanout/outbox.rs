//! A connection's outbox: its socket and the frames the socket has not taken yet.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Socket;
use crate::feed::cursor::{Cursor, Frame};
use crate::feed::filter::Topic;
use crate::feed::hub::{Receiver, Snapshot};
use crate::metrics::{Metrics, Transport};

/// One subscription of a connection: what its client has been sent.
struct Sub {
    topic: Topic,
    cursor: Cursor,
    /// Keeps a filtered topic alive in the hub, which forgets filters nobody receives.
    _rx: Receiver,
}

/// A frame the socket has not taken (all of it, or the rest of it).
struct Queued {
    bytes: Bytes,
    /// The subscription whose value this is, while none of it has been written: a newer
    /// value of that subscription replaces it.
    sub: Option<u64>,
}

struct Io {
    socket: Box<dyn Socket>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    subs: Subs,
    /// The session has ended: nothing more is written.
    closed: bool,
}

/// The write side of one WebSocket connection, shared by its session and the publisher.
pub struct Outbox {
    io: Mutex<Io>,
    /// The session task, woken when the queue needs draining.
    session: AtomicWaker,
    /// The session's own writes wait for the queue to drain beyond this many bytes.
    max_queued: usize,
    /// Where the boxed socket lives, for [`Outbox::prefetch`] (the box never moves).
    socket_at: usize,
}

/// What became of a frame offered to the socket.
#[derive(Debug, PartialEq, Eq)]
enum Offer {
    Written,
    Queued,
    /// Queued in place of an older value the client will now never get.
    Replaced,
}

/// A connection's subscriptions, by id. Not a map: a connection has a few, and a hash
/// map costs two cache misses (its control bytes, then the entry) for each of 10,000
/// connections per value. Nearly every connection has one, kept inline, in the outbox's
/// own memory, which a delivery round prefetches (see [`Outbox::prefetch`]); any more
/// go in a list.
#[derive(Default)]
struct Subs {
    first: Option<(u64, Sub)>,
    more: Vec<(u64, Sub)>,
}

impl Subs {
    fn iter(&self) -> impl Iterator<Item = &(u64, Sub)> {
        self.first.iter().chain(&self.more)
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Sub> {
        match &mut self.first {
            Some((i, s)) if *i == id => Some(s),
            _ => self.more.iter_mut().find(|(i, _)| *i == id).map(|(_, s)| s),
        }
    }

    fn remove(&mut self, id: u64) -> Option<Sub> {
        if self.first.as_ref().is_some_and(|(i, _)| *i == id) {
            let (_, sub) = std::mem::replace(&mut self.first, self.more.pop())?;
            return Some(sub);
        }
        let at = self.more.iter().position(|(i, _)| *i == id)?;
        Some(self.more.swap_remove(at).1)
    }

    fn insert(&mut self, id: u64, sub: Sub) {
        if self.first.is_none() {
            self.first = Some((id, sub));
        } else {
            self.more.push((id, sub));
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = (u64, Sub)> + '_ {
        self.first.take().into_iter().chain(self.more.drain(..))
    }
}

/// Prefetches the cache lines of `len` bytes at address `at`: a hint that cannot fault,
/// whatever the address.
fn prefetch_range(at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for line in (at & !63..at + len).step_by(64) {
            // SAFETY: a prefetch reads nothing architecturally and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

/// The topic of a subscription that was to start is gone (its KPI was dropped).
#[derive(Debug)]
pub struct Dropped;

impl Outbox {
    pub fn new(socket: impl Socket, max_queued: usize) -> Arc<Outbox> {
        let socket: Box<dyn Socket> = Box::new(socket);
        let socket_at = (&*socket as *const dyn Socket).cast::<u8>() as usize;
        Arc::new(Outbox {
            io: Mutex::new(Io {
                socket,
                queue: VecDeque::new(),
                queued_bytes: 0,
                subs: Subs::default(),
                closed: false,
            }),
            session: AtomicWaker::new(),
            max_queued,
            socket_at,
        })
    }

    /// Asks the CPU to load this outbox's memory (its lock, queue, first subscription)
    /// ahead of a delivery. A round walks 10,000 outboxes that nothing has touched since
    /// the last value, and waiting for their cache lines was most of the notifier's own
    /// time per delivery: the round prefetches the connections after the one the kernel
    /// is sending to. A hint: it neither faults nor writes.
    pub fn prefetch(&self) {
        let at = self as *const Outbox as usize;
        prefetch_range(at, std::mem::size_of::<Outbox>());
    }

    /// The same for the socket, once [`Outbox::prefetch`] has brought in where it is.
    pub fn prefetch_socket(&self) {
        prefetch_range(self.socket_at, 64);
    }

    fn lock(&self) -> MutexGuard<'_, Io> {
        // Every mutation leaves the queue whole; a panic elsewhere does not poison it.
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts subscription `id` to `topic` at the receiver's current value: sends its
    /// snapshot unless the client has `since` at or above it. Under the lock, so no
    /// update of the topic can reach the socket before the snapshot. Returns the
    /// subscription to the same topic it replaced, if any (to remove from the registry).
    ///
    /// The caller registers `id` first: a topic dropped after this checks its channel
    /// then finds the registration and ends the subscription (see [`super::Registry::end`]).
    pub fn subscribe(
        &self,
        id: u64,
        topic: Topic,
        rx: Receiver,
        since: Option<i64>,
        metrics: &Metrics,
    ) -> Result<Option<u64>, Dropped> {
        if rx.has_changed().is_err() {
            return Err(Dropped);
        }
        let mut io = self.lock();
        let replaced = io
            .subs
            .iter()
            .find(|(_, s)| s.topic == topic)
            .map(|(id, _)| *id);
        if let Some(old) = replaced {
            io.subs.remove(old);
        }
        let current = rx.borrow().clone();
        let (cursor, send) = Cursor::start(&current, since);
        io.subs.insert(
            id,
            Sub {
                topic,
                cursor,
                _rx: rx,
            },
        );
        let queued = send && self.offer(&mut io, &current.snapshot_ws, None) != Offer::Written;
        drop(io);
        if send {
            metrics.message_sent(Transport::Ws);
        }
        if queued {
            self.session.wake();
        }
        Ok(replaced)
    }

    /// Ends the subscriptions whose topic matches; returns their ids and topics.
    pub fn unsubscribe(&self, ends: impl Fn(&Topic) -> bool) -> Vec<(u64, Topic)> {
        let mut io = self.lock();
        let ids: Vec<u64> = io
            .subs
            .iter()
            .filter(|(_, s)| ends(&s.topic))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| io.subs.remove(id).map(|s| (id, s.topic)))
            .collect()
    }

    /// Whether the connection follows `topic`, and how many topics it follows.
    pub fn follows(&self, topic: &Topic) -> (bool, usize) {
        let io = self.lock();
        let follows = io.subs.iter().any(|(_, s)| &s.topic == topic);
        (follows, io.subs.len())
    }

    /// Sends `snap` to subscription `id` if the client does not have it: at once when
    /// the socket takes it, else queued for the session to drain.
    pub fn deliver(&self, id: u64, snap: &Arc<Snapshot>, metrics: &Metrics) {
        let mut io = self.lock();
        if io.closed {
            return;
        }
        let Some(sub) = io.subs.get_mut(id) else {
            // Not started yet (its snapshot will carry this value) or ended.
            return;
        };
        // `None`: seen already (the snapshot at subscribe carried it, or a later round).
        let Some(advance) = sub.cursor.advance(snap) else {
            return;
        };
        metrics.updates_dropped(Transport::Ws, advance.skipped);
        let frame = match advance.frame {
            Some(Frame::Snapshot) => &snap.snapshot_ws,
            Some(Frame::Update) => &snap.update_ws,
            None => return,
        };
        let offer = self.offer(&mut io, frame, Some(id));
        drop(io);
        if offer == Offer::Replaced {
            metrics.updates_dropped(Transport::Ws, 1);
        }
        metrics.message_sent(Transport::Ws);
        let now = Instant::now();
        metrics
            .publish_to_send
            .observe(now.saturating_duration_since(snap.published_at));
        if let Some(at) = snap.notified_at {
            metrics
                .notify_to_send
                .observe(now.saturating_duration_since(at));
        }
        if offer != Offer::Written {
            self.session.wake();
        }
    }

    /// Ends subscription `id` with an error frame (its topic is gone); whether it existed.
    pub fn end(&self, id: u64, error: &Bytes) -> bool {
        let mut io = self.lock();
        if io.closed || io.subs.remove(id).is_none() {
            return false;
        }
        let offer = self.offer(&mut io, error, None);
        drop(io);
        if offer != Offer::Written {
            self.session.wake();
        }
        true
    }

    /// Stops all writing but the session's own, and returns the subscriptions to
    /// remove from the registry.
    pub fn close(&self) -> Vec<(u64, Topic)> {
        let mut io = self.lock();
        io.closed = true;
        io.subs.drain().map(|(id, s)| (id, s.topic)).collect()
    }

    /// Writes `frame` now if nothing is queued and the socket takes all of it; queues
    /// it (or what is left of it) otherwise, in place of an older value of subscription
    /// `sub` that is still waiting. Unless written, the caller wakes the session once
    /// the lock is released.
    ///
    /// Borrowed, and cloned only to be queued: a value's frame is one buffer shared by
    /// every connection, and a clone and drop per delivery would bounce its reference
    /// count between the cores writing it.
    fn offer(&self, io: &mut Io, frame: &Bytes, sub: Option<u64>) -> Offer {
        if io.queue.is_empty() {
            // A no-op waker: when the socket is full, the session is woken instead, and
            // it registers its own waker when it drains.
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            match Pin::new(&mut io.socket).poll_write(&mut cx, frame) {
                Poll::Ready(Ok(n)) if n == frame.len() => return Offer::Written,
                Poll::Ready(Ok(n)) => {
                    // Part of it is on the wire: the rest must follow, whatever comes.
                    io.push(frame.slice(n..), None);
                    return Offer::Queued;
                }
                // The session's drain meets the error again and ends the session.
                Poll::Ready(Err(_)) | Poll::Pending => {
                    io.push(frame.clone(), sub);
                    return Offer::Queued;
                }
            }
        }
        // Only frames none of which is written carry their subscription.
        match sub.and_then(|id| io.queue.iter_mut().find(|q| q.sub == Some(id))) {
            Some(waiting) => {
                let old = std::mem::replace(&mut waiting.bytes, frame.clone());
                let new_len = waiting.bytes.len();
                io.queued_bytes = io.queued_bytes + new_len - old.len();
                Offer::Replaced
            }
            None => {
                io.push(frame.clone(), sub);
                Offer::Queued
            }
        }
    }

    /// Ready when frames are queued; registers the session's waker otherwise.
    pub fn poll_backlog(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.session.register(cx.waker());
        if self.lock().queue.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Writes queued frames until none is left. Only the session polls this: a socket
    /// keeps one writer's waker, so a second drainer could take the wake-up from it.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.lock().poll_drain(cx)
    }
}

impl Io {
    fn push(&mut self, bytes: Bytes, sub: Option<u64>) {
        self.queued_bytes += bytes.len();
        self.queue.push_back(Queued { bytes, sub });
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(front) = self.queue.front_mut() {
            let n = std::task::ready!(Pin::new(&mut self.socket).poll_write(cx, &front.bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.queued_bytes -= n;
            if n == front.bytes.len() {
                self.queue.pop_front();
            } else {
                front.bytes = front.bytes.slice(n..);
                front.sub = None;
            }
        }
        Pin::new(&mut self.socket).poll_flush(cx)
    }
}

/// The connection's socket as the session's WebSocket sees it: reads go straight to
/// the socket; writes join the outbox's queue as whole buffers (tungstenite writes
/// whole frames), so they never split a frame of the publisher's.
pub struct SharedIo(pub Arc<Outbox>);

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.lock().socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut io = self.0.lock();
        if !io.queue.is_empty() && io.queued_bytes + buf.len() > self.0.max_queued {
            std::task::ready!(io.poll_drain(cx))?;
        }
        if io.queue.is_empty() {
            match Pin::new(&mut io.socket).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) if n == buf.len() => return Poll::Ready(Ok(n)),
                Poll::Ready(Ok(n)) => io.push(Bytes::copy_from_slice(&buf[n..]), None),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => io.push(Bytes::copy_from_slice(buf), None),
            }
        } else {
            io.push(Bytes::copy_from_slice(buf), None);
        }
        // Accepted whole; `poll_flush` writes it out.
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = self.0.lock();
        std::task::ready!(io.poll_drain(cx))?;
        Pin::new(&mut io.socket).poll_shutdown(cx)
    }
}
