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
//!
//! Besides one channel per KPI, the hub keeps one per dimension filter that clients
//! follow (see `filter`). Those are created on demand and forgotten once nobody
//! subscribes to them any more; the LISTEN task asks for the live ones of each KPI it
//! re-reads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::filter::{DimFilter, Topic};
use crate::fanout::{self, Registry};
use crate::metrics::Metrics;
use crate::protocol::ValueFrame;

/// One published version of one KPI, ready to send.
#[derive(Debug)]
pub struct Snapshot {
    pub kpi: Arc<str>,
    /// The dimension filter of a filtered topic; `None` for the whole KPI.
    pub dims: Option<DimFilter>,
    /// The KPI's dimension names (from the snapshot's `dimensions`), which filters are
    /// checked against.
    pub dimensions: Arc<[String]>,
    /// The KPI's version from `kpi.snapshot` (per KPI, strictly increasing).
    pub version: i64,
    /// `{"type":"snapshot","kpi":…,"version":…,"data":…}`
    pub snapshot_frame: Utf8Bytes,
    /// `{"type":"update",…}`, the same object with another type.
    pub update_frame: Utf8Bytes,
    /// The two frames as complete WebSocket frames, written as they are to every
    /// subscribed socket (see `fanout`).
    pub snapshot_ws: Bytes,
    pub update_ws: Bytes,
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

/// The parts of a `kpi.snapshot` the notifier itself reads.
#[derive(serde::Deserialize)]
struct Head {
    version: Option<i64>,
    #[serde(default)]
    dimensions: Vec<String>,
}

impl Snapshot {
    /// Builds the frames of a whole KPI for `data` (the `kpi.snapshot` jsonb as text).
    /// The version is the one `data` carries (consistent with its values); `version` is
    /// used only when it carries none.
    pub fn new(
        kpi: &str,
        version: i64,
        data: &str,
        notified_at: Option<Instant>,
    ) -> Result<Snapshot, serde_json::Error> {
        Snapshot::build(kpi, None, Some(version), data, notified_at)
    }

    /// Builds the frames of `kpi` filtered by `dims` (`None`: the whole KPI), with the
    /// version the snapshot itself carries.
    pub fn from_data(
        kpi: &str,
        dims: Option<DimFilter>,
        data: &str,
        notified_at: Option<Instant>,
    ) -> Result<Snapshot, serde_json::Error> {
        Snapshot::build(kpi, dims, None, data, notified_at)
    }

    fn build(
        kpi: &str,
        dims: Option<DimFilter>,
        version: Option<i64>,
        data: &str,
        notified_at: Option<Instant>,
    ) -> Result<Snapshot, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(data)?;
        let head: Head = serde_json::from_str(data)?;
        let version = head.version.or(version).unwrap_or(0);
        // Canonical JSON text from `DimFilter`, so always valid.
        let dims_raw: Option<&RawValue> = dims
            .as_ref()
            .map(|d| serde_json::from_str(d.as_str()))
            .transpose()?;
        let frame = |kind| {
            serde_json::to_string(&ValueFrame {
                kind,
                kpi,
                dims: dims_raw,
                version,
                data: raw,
            })
        };
        let (snapshot_frame, update_frame) = (frame("snapshot")?, frame("update")?);
        Ok(Snapshot {
            kpi: Arc::from(kpi),
            dims: dims.clone(),
            dimensions: head.dimensions.into(),
            version,
            snapshot_ws: fanout::text_frame(snapshot_frame.as_bytes()),
            update_ws: fanout::text_frame(update_frame.as_bytes()),
            snapshot_frame: snapshot_frame.into(),
            update_frame: update_frame.into(),
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

/// What [`Hub::filtered_subscribe`] found.
#[derive(Debug)]
pub enum FilterSlot {
    /// The filter has a channel: follow it.
    Live(Receiver),
    /// Nobody follows it yet: read its first value and [`Hub::filtered_install`] it.
    /// It is registered already, so a change announced from now on re-reads it too.
    Read,
    /// `limits.max_dim_filters` distinct filters are followed already.
    TooMany,
}

/// A filtered topic.
enum Slot {
    /// Its first value is being read (by a client's subscribe); holds the newest value
    /// the LISTEN task published meanwhile.
    Reading(Option<Arc<Snapshot>>),
    Live(watch::Sender<Arc<Snapshot>>),
}

/// Filtered topics, by KPI and filter.
type Filtered = HashMap<(String, DimFilter), Slot>;

/// The per-KPI channels, and those of the dimension filters clients follow.
#[derive(Default)]
pub struct Hub {
    // Std locks: they are held only for map operations, never across an await. When
    // both are taken, `channels` comes first.
    channels: RwLock<HashMap<String, watch::Sender<Arc<Snapshot>>>>,
    filtered: std::sync::Mutex<Filtered>,
    loaded: AtomicBool,
    /// The WebSocket subscribers of each topic, which every new value is written to.
    pub fanout: Registry,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::default()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A hub whose fan-out counts into `metrics` and runs on the current runtime.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Hub {
        Hub {
            metrics,
            fanout: Registry::on_current_runtime(),
            ..Hub::default()
        }
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
        let kpi = snap.kpi.clone();
        {
            let channels = self.read();
            if let Some(tx) = channels.get(&*kpi) {
                let new = publish_into(tx, snap);
                drop(channels);
                return match new {
                    Some(new) => {
                        self.deliver(&new);
                        Published::Changed
                    }
                    None => Published::Unchanged,
                };
            }
        }
        let mut map = self.write();
        // Re-check under the write lock: only the LISTEN task publishes, but stay correct
        // if that ever changes.
        if let Some(tx) = map.get(&*kpi) {
            snap.seq = tx.borrow().seq + 1;
            let new = Arc::new(snap);
            tx.send_replace(new.clone());
            drop(map);
            self.deliver(&new);
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
        self.filters().retain(|(kpi, _), _| keep.contains(kpi));
        drop(map);
        if !gone.is_empty() {
            self.fanout
                .end(|topic| !keep.contains(&topic.kpi), &self.metrics);
        }
        gone
    }

    /// Finds or registers the channel of `kpi` filtered by `dims` (see [`FilterSlot`]).
    pub fn filtered_subscribe(&self, kpi: &str, dims: &DimFilter, max: usize) -> FilterSlot {
        let mut f = self.filters();
        let key = (kpi.to_string(), dims.clone());
        match f.get(&key) {
            Some(Slot::Live(tx)) => return FilterSlot::Live(tx.subscribe()),
            // Another client's first read is under way; reading again is harmless.
            Some(Slot::Reading(_)) => return FilterSlot::Read,
            None => {}
        }
        if f.len() >= max {
            prune(&mut f);
            if f.len() >= max {
                return FilterSlot::TooMany;
            }
        }
        f.insert(key, Slot::Reading(None));
        FilterSlot::Read
    }

    /// Installs the first value of a filtered topic registered by `filtered_subscribe`
    /// and returns a receiver. Of that value and any the LISTEN task published while it
    /// was read, the higher version wins. `None` when the KPI has been dropped since.
    pub fn filtered_install(&self, snap: Snapshot) -> Option<Receiver> {
        let dims = snap.dims.clone()?;
        let channels = self.read();
        channels.get(&*snap.kpi)?;
        let mut f = self.filters();
        let slot = f
            .entry((snap.kpi.to_string(), dims))
            .or_insert(Slot::Reading(None));
        let (rx, new) = match slot {
            Slot::Live(tx) => {
                let rx = tx.subscribe();
                let newer = snap.version > tx.borrow().version;
                (rx, if newer { publish_into(tx, snap) } else { None })
            }
            Slot::Reading(newer) => {
                let value = match newer.take() {
                    Some(n) if n.version > snap.version => n,
                    _ => Arc::new(snap),
                };
                let (tx, rx) = watch::channel(value);
                *slot = Slot::Live(tx);
                (rx, None)
            }
        };
        drop(f);
        drop(channels);
        if let Some(new) = new {
            self.deliver(&new);
        }
        Some(rx)
    }

    /// Forgets a filter whose first read failed or was abandoned, unless it has a
    /// channel by now.
    pub fn filtered_abandon(&self, kpi: &str, dims: &DimFilter) {
        let mut f = self.filters();
        let key = (kpi.to_string(), dims.clone());
        if matches!(f.get(&key), Some(Slot::Reading(_))) {
            f.remove(&key);
        }
    }

    /// The filters followed for `kpis` (every KPI for `None`), after forgetting those
    /// nobody subscribes to any more.
    pub fn filters_of(&self, kpis: Option<&[String]>) -> Vec<(String, DimFilter)> {
        let mut f = self.filters();
        prune(&mut f);
        f.keys()
            .filter(|(kpi, _)| kpis.is_none_or(|names| names.contains(kpi)))
            .cloned()
            .collect()
    }

    /// Publishes a new value of a filtered topic (ignored if nobody follows it).
    pub fn filtered_publish(&self, snap: Snapshot) -> Published {
        let Some(dims) = snap.dims.clone() else {
            return Published::Unchanged;
        };
        let mut f = self.filters();
        match f.get_mut(&(snap.kpi.to_string(), dims)) {
            None => Published::Unchanged,
            Some(Slot::Reading(newer)) => {
                // Kept for `filtered_install`, which compares it with its own read.
                if newer.as_ref().is_none_or(|n| snap.version > n.version) {
                    *newer = Some(Arc::new(snap));
                }
                Published::New
            }
            Some(Slot::Live(tx)) => match publish_into(tx, snap) {
                Some(new) => {
                    drop(f);
                    self.deliver(&new);
                    Published::Changed
                }
                None => Published::Unchanged,
            },
        }
    }

    /// Drops a filtered topic; its subscribers see their receiver close.
    pub fn filtered_remove(&self, kpi: &str, dims: &DimFilter) {
        self.filters().remove(&(kpi.to_string(), dims.clone()));
        self.fanout.end(
            |t| t.kpi == kpi && t.dims.as_ref() == Some(dims),
            &self.metrics,
        );
    }

    /// Writes a new value to the topic's WebSocket subscribers.
    fn deliver(&self, snap: &Arc<Snapshot>) {
        let topic = Topic {
            kpi: snap.kpi.to_string(),
            dims: snap.dims.clone(),
        };
        self.fanout.deliver(&topic, snap, &self.metrics);
    }

    /// Filtered topics currently followed (or being read for the first time).
    pub fn filter_count(&self) -> usize {
        self.filters().len()
    }

    /// Whether the first full load from the database has completed.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }

    fn filters(&self) -> std::sync::MutexGuard<'_, Filtered> {
        // As for `channels`: every mutation is a single insert, remove or replace.
        self.filtered.lock().unwrap_or_else(|e| e.into_inner())
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

/// Replaces the channel's value unless it has the same version; the new value if it did.
fn publish_into(tx: &watch::Sender<Arc<Snapshot>>, snap: Snapshot) -> Option<Arc<Snapshot>> {
    let mut snap = Some(snap);
    let mut new = None;
    tx.send_if_modified(|cur| {
        if cur.version == snap.as_ref().map_or(cur.version, |s| s.version) {
            return false;
        }
        if let Some(mut s) = snap.take() {
            s.seq = cur.seq + 1;
            *cur = Arc::new(s);
            new = Some(cur.clone());
        }
        true
    });
    new
}

/// Forgets filtered topics that have a channel but no subscriber left.
fn prune(f: &mut Filtered) {
    f.retain(|_, slot| match slot {
        Slot::Reading(_) => true,
        Slot::Live(tx) => tx.receiver_count() > 0,
    });
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

    #[test]
    fn the_version_comes_from_the_data_when_it_has_one() {
        let data = r#"{"kpi":"a","version":42,"dimensions":["region"],"measures":{}}"#;
        let s = Snapshot::new("a", 7, data, None).unwrap();
        assert_eq!(s.version, 42);
        assert_eq!(&*s.dimensions, ["region".to_string()]);
        assert_eq!(
            Snapshot::new("a", 7, r#"{"kpi":"a"}"#, None)
                .unwrap()
                .version,
            7
        );
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

    fn filtered(kpi: &str, region: &str, version: i64) -> Snapshot {
        let d = DimFilter::parse(Some(&serde_json::json!({ "region": region })))
            .unwrap()
            .unwrap();
        Snapshot::from_data(kpi, Some(d), &format!(r#"{{"version": {version}}}"#), None).unwrap()
    }

    /// A hub with KPI `a` and the filter region = eu registered for its first read.
    fn hub_reading_eu() -> (Hub, DimFilter) {
        let hub = Hub::new();
        hub.publish(snap("a", 1));
        let eu = filtered("a", "eu", 1).dims.unwrap();
        assert!(matches!(
            hub.filtered_subscribe("a", &eu, 10),
            FilterSlot::Read
        ));
        (hub, eu)
    }

    #[tokio::test]
    async fn filters_register_before_their_first_read_and_are_pruned_when_unused() {
        let (hub, eu) = hub_reading_eu();
        // Registered: the LISTEN task re-reads it from now on, even before it is installed.
        assert_eq!(hub.filters_of(Some(&["a".to_string()])).len(), 1);
        assert!(hub.filters_of(Some(&["b".to_string()])).is_empty());
        // A newer value published during the first read wins over the read's own.
        assert_eq!(hub.filtered_publish(filtered("a", "eu", 3)), Published::New);
        let mut rx = hub.filtered_install(filtered("a", "eu", 2)).unwrap();
        assert_eq!(rx.borrow().version, 3);
        assert!(matches!(
            hub.filtered_subscribe("a", &eu, 10),
            FilterSlot::Live(_)
        ));
        assert_eq!(
            hub.filtered_publish(filtered("a", "eu", 4)),
            Published::Changed
        );
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().version, 4);
        // At the limit, unused filters are pruned to make room; used ones are not.
        let us = filtered("a", "us", 1).dims.unwrap();
        assert!(matches!(
            hub.filtered_subscribe("a", &us, 1),
            FilterSlot::TooMany
        ));
        drop(rx);
        assert!(matches!(
            hub.filtered_subscribe("a", &us, 1),
            FilterSlot::Read
        ));
        assert_eq!(hub.filter_count(), 1);
        // A failed first read leaves nothing behind.
        hub.filtered_abandon("a", &us);
        assert_eq!(hub.filter_count(), 0);
        // A filter of a KPI the database dropped cannot be installed.
        assert!(hub.filtered_install(filtered("gone", "eu", 1)).is_none());
    }

    #[tokio::test]
    async fn dropping_a_kpi_closes_its_filters() {
        let (hub, _eu) = hub_reading_eu();
        let mut rx = hub.filtered_install(filtered("a", "eu", 1)).unwrap();
        hub.retain(&HashSet::new());
        assert!(rx.changed().await.is_err());
        assert_eq!(hub.filter_count(), 0);
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
