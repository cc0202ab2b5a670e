//! The fan-out hub: one latest-value channel (`tokio::sync::watch`) per KPI.
//!
//! Why watch and not a broadcast queue: a dashboard only needs the newest value of a
//! KPI. A slow client that misses intermediate versions simply gets the newest one next
//! time it is ready, so per-client memory is one receiver per subscription no matter
//! how far behind it is, and no client can make the hub buffer for it.
//!
//! Each published version is serialized once, into the exact frames sent to clients
//! (`snapshot` and `update`); every client shares those bytes (`Utf8Bytes` is a
//! reference-counted buffer).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;
use tokio::sync::watch;

use crate::protocol::ValueFrame;

/// One published version of one KPI, ready to send.
#[derive(Debug)]
pub struct Snapshot {
    pub kpi: Arc<str>,
    /// The KPI's version from `kpi.snapshot` (per KPI, strictly increasing).
    pub version: i64,
    /// `{"type":"snapshot","kpi":…,"version":…,"data":…}`
    pub snapshot_frame: Utf8Bytes,
    /// `{"type":"update",…}`, the same object with another type.
    pub update_frame: Utf8Bytes,
    /// Counts publications of this KPI in this process, so a receiver can tell how many
    /// versions it skipped (the database's versions may have gaps of their own).
    pub seq: u64,
    /// When the NOTIFY that led to this read arrived (for the notify-to-send histogram);
    /// `None` for values loaded at (re)connect.
    pub notified_at: Option<Instant>,
    /// When this value was built, just before it was published (for the
    /// publish-to-send histogram: the fan-out's own share of the latency).
    pub published_at: Instant,
}

impl Snapshot {
    /// Builds the frames for `data` (the `kpi.snapshot` jsonb as text).
    pub fn new(
        kpi: &str,
        version: i64,
        data: &str,
        notified_at: Option<Instant>,
    ) -> Result<Snapshot, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(data)?;
        let frame = |kind| {
            serde_json::to_string(&ValueFrame {
                kind,
                kpi,
                version,
                data: raw,
            })
        };
        Ok(Snapshot {
            kpi: Arc::from(kpi),
            version,
            snapshot_frame: frame("snapshot")?.into(),
            update_frame: frame("update")?.into(),
            seq: 0,
            notified_at,
            published_at: Instant::now(),
        })
    }
}

pub type Receiver = watch::Receiver<Arc<Snapshot>>;

/// What [`Hub::publish`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    New,
    Changed,
    /// Same version as already published: nothing sent.
    Unchanged,
}

/// The per-KPI channels.
#[derive(Default)]
pub struct Hub {
    // A std lock: it is held only for map lookups, never across an await.
    channels: RwLock<HashMap<String, watch::Sender<Arc<Snapshot>>>>,
    loaded: AtomicBool,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    /// A receiver positioned at the current value, or `None` for an unknown KPI.
    pub fn subscribe(&self, kpi: &str) -> Option<Receiver> {
        self.read().get(kpi).map(|tx| tx.subscribe())
    }

    /// The current value of a KPI.
    pub fn current(&self, kpi: &str) -> Option<Arc<Snapshot>> {
        self.read().get(kpi).map(|tx| tx.borrow().clone())
    }

    /// Names of all known KPIs, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes a value. A value whose version equals the current one is ignored; any
    /// other version replaces it (the database is the authority; a lower version means
    /// the KPI was dropped and re-created).
    pub fn publish(&self, mut snap: Snapshot) -> Published {
        if let Some(tx) = self.read().get(&*snap.kpi) {
            let mut snap = Some(snap);
            let changed = tx.send_if_modified(|cur| {
                if cur.version == snap.as_ref().map_or(cur.version, |s| s.version) {
                    return false;
                }
                if let Some(mut s) = snap.take() {
                    s.seq = cur.seq + 1;
                    *cur = Arc::new(s);
                }
                true
            });
            return if changed {
                Published::Changed
            } else {
                Published::Unchanged
            };
        }
        let mut map = self.write();
        // Re-check under the write lock: only the LISTEN task publishes, but stay correct
        // if that ever changes.
        if let Some(tx) = map.get(&*snap.kpi) {
            snap.seq = tx.borrow().seq + 1;
            tx.send_replace(Arc::new(snap));
            return Published::Changed;
        }
        let name = snap.kpi.to_string();
        let (tx, _rx) = watch::channel(Arc::new(snap));
        map.insert(name, tx);
        Published::New
    }

    /// Drops every KPI not in `keep`. Subscribers of a dropped KPI see their receiver
    /// close. Returns the dropped names.
    pub fn retain(&self, keep: &HashSet<String>) -> Vec<String> {
        let mut map = self.write();
        let gone: Vec<String> = map.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for name in &gone {
            map.remove(name);
        }
        gone
    }

    /// Whether the first full load from the database has completed.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, watch::Sender<Arc<Snapshot>>>> {
        // A poisoned lock means a panic while holding it; the map itself is still
        // consistent (every mutation is a single insert/remove), so keep serving.
        self.channels.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, watch::Sender<Arc<Snapshot>>>> {
        self.channels.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snap(kpi: &str, version: i64) -> Snapshot {
        Snapshot::new(kpi, version, &format!(r#"{{"version": {version}}}"#), None).unwrap()
    }

    #[test]
    fn frames_are_serialized_once_and_shared() {
        let s = snap("a", 3);
        assert_eq!(
            s.snapshot_frame.as_str(),
            r#"{"type":"snapshot","kpi":"a","version":3,"data":{"version": 3}}"#
        );
        assert!(s.update_frame.as_str().starts_with(r#"{"type":"update""#));
        let hub = Hub::new();
        hub.publish(s);
        let a = hub.current("a").unwrap();
        let b = hub.subscribe("a").unwrap().borrow().clone();
        assert!(Arc::ptr_eq(&a, &b), "every reader shares one value");
        assert!(Snapshot::new("a", 1, "{not json", None).is_err());
    }

    #[tokio::test]
    async fn slow_receivers_skip_to_the_latest() {
        let hub = Hub::new();
        assert_eq!(hub.publish(snap("a", 1)), Published::New);
        let mut rx = hub.subscribe("a").unwrap();
        for v in 2..=100 {
            assert_eq!(hub.publish(snap("a", v)), Published::Changed);
        }
        rx.changed().await.unwrap();
        let cur = rx.borrow_and_update().clone();
        assert_eq!(cur.version, 100, "only the newest value is kept");
        assert_eq!(
            cur.seq, 99,
            "and it tells how many were published meanwhile"
        );
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn same_version_is_not_republished() {
        let hub = Hub::new();
        hub.publish(snap("a", 5));
        let rx = hub.subscribe("a").unwrap();
        assert_eq!(hub.publish(snap("a", 5)), Published::Unchanged);
        assert!(!rx.has_changed().unwrap());
        // A lower version (KPI re-created) replaces the value.
        assert_eq!(hub.publish(snap("a", 1)), Published::Changed);
        assert_eq!(hub.current("a").unwrap().version, 1);
    }

    #[tokio::test]
    async fn retain_closes_dropped_kpis() {
        let hub = Hub::new();
        hub.publish(snap("a", 1));
        hub.publish(snap("b", 1));
        let mut rx = hub.subscribe("a").unwrap();
        let gone = hub.retain(&HashSet::from(["b".to_string()]));
        assert_eq!(gone, vec!["a".to_string()]);
        assert!(
            rx.changed().await.is_err(),
            "receiver sees the channel close"
        );
        assert!(hub.subscribe("a").is_none());
        assert_eq!(hub.names(), vec!["b".to_string()]);
    }
}
