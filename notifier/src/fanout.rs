//! Fan-out: writing each new value of a topic to every WebSocket subscribed to it.
//!
//! The publisher writes, not the sessions. Server-to-client WebSocket frames are not
//! masked, so a value's frame is the same bytes for every client: the hub builds it once
//! (`Snapshot::update_ws`), and publishing writes it straight into each subscribed
//! socket, a few subscribers per task across the runtime's workers. Waking one session
//! task per client instead (a `watch` receiver each, then its `select!`, the framing and
//! the flush) was a third of the notifier's CPU per delivery; with 10,000 clients that
//! is the difference between a value reaching the last client within 100 ms or not.
//!
//! Each connection has an [`Outbox`]: its socket and a queue of whole frames the socket
//! has not taken yet, behind one lock, so frames from the publisher and from the
//! session (tungstenite's replies, errors, pings, close) never interleave mid-frame.
//! When the socket takes a frame at once, which is nearly always, nothing else happens.
//! When it does not, the frame is queued and the session task is woken to drain the
//! queue, with the send timeout that closes too slow clients. A queued value that has
//! not started to go out is replaced by a newer one of the same subscription
//! (latest-value semantics), so a slow client costs at most one frame per subscription.
//!
//! | module | what lives there |
//! |---|---|
//! | [`outbox`] | a connection's socket and queue; the session's view of it ([`SharedIo`]) |
//! | [`registry`] | who follows each topic, and the delivery rounds of new values |

mod outbox;
mod registry;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

pub use outbox::{Dropped, Outbox, SharedIo};
pub use registry::Registry;

/// What a connection's socket must be: a WebSocket upgraded from HTTP, or an in-memory
/// pipe in tests.
pub trait Socket: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Socket for T {}

/// A text message as a complete, unmasked WebSocket frame (as a server sends it).
pub fn text_frame(payload: &[u8]) -> Bytes {
    let frame = Frame::message(
        Bytes::copy_from_slice(payload),
        OpCode::Data(Data::Text),
        true,
    );
    let mut out = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut out);
    out.into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
