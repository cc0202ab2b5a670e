//! The change feed: how KPI values get from Postgres into the per-topic channels.
//!
//! | module | what lives there |
//! |---|---|
//! | [`listen`] | the supervised LISTEN connection: reconnect, reload, coalesced snapshot reads, fold timer |
//! | [`fold_watch`] | `kpi.status()` polled: stalls reported, and the notifier's fallback fold |
//! | [`hub`] | per-topic `watch` channels: the latest value of each, frames serialized once |
//! | [`cursor`] | what a subscriber has of a topic, and which frame a newer value needs |
//! | [`filter`] | dimension filters and topics: a KPI, whole or restricted to some dimension values |
//! | [`alert_events`] | the `alerts` topic: alert transitions as they commit, a live tail over `kpi.alert_history` |
//!
//! Nothing here knows about HTTP or clients: `serve` reads the feed through the [`hub::Hub`]
//! and the status channels of [`listen`] and [`fold_watch`].

pub mod alert_events;
pub mod cursor;
pub mod filter;
pub mod fold_watch;
pub mod hub;
pub mod listen;

/// A spawned task (a connection's driver) aborted when its owner goes away, so a
/// session that ends for any reason takes its connection with it.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
