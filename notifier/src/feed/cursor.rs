//! What one subscriber has of a topic, and what a newer value of it needs sent: shared
//! by WebSocket subscriptions (`fanout`) and SSE streams (`sse`).

use super::hub::Snapshot;

/// Which of a value's two frames a subscriber needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Snapshot,
    Update,
}

/// A subscriber's position in a topic.
#[derive(Debug)]
pub struct Cursor {
    /// Versions at or below this are not sent (what the client has, or said it has).
    floor: i64,
    /// The version and publish counter of the last value seen from the hub.
    hub_version: i64,
    hub_seq: u64,
}

/// What a newer value means for a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub struct Advance {
    /// Values published since the last one it saw, which it never got.
    pub skipped: u64,
    /// The frame to send, if any.
    pub frame: Option<Frame>,
}

impl Cursor {
    /// A subscriber starting at the topic's `current` value, whose client has `since`;
    /// and whether it needs the current snapshot. A client that already has this
    /// version (or a newer one, from a replica that is ahead) gets nothing until the
    /// topic changes.
    pub fn start(current: &Snapshot, since: Option<i64>) -> (Cursor, bool) {
        let send = since.is_none_or(|s| current.version > s);
        let cursor = Cursor {
            floor: match since {
                Some(s) if !send => s,
                _ => current.version,
            },
            hub_version: current.version,
            hub_seq: current.seq,
        };
        (cursor, send)
    }

    /// The newest version the client has.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// Moves to `snap`; `None` when the subscriber has seen it (or a later value)
    /// already, which happens when deliveries race.
    pub fn advance(&mut self, snap: &Snapshot) -> Option<Advance> {
        if snap.seq <= self.hub_seq {
            return None;
        }
        let skipped = snap.seq - self.hub_seq - 1;
        // A lower version: the KPI was dropped and re-created, its versions started over.
        let recreated = snap.version < self.hub_version;
        self.hub_version = snap.version;
        self.hub_seq = snap.seq;
        let frame = if recreated {
            Some(Frame::Snapshot)
        } else if snap.version > self.floor {
            Some(Frame::Update)
        } else {
            None
        };
        if frame.is_some() {
            self.floor = snap.version;
        }
        Some(Advance { skipped, frame })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snap(version: i64, seq: u64) -> Snapshot {
        let data = format!(r#"{{"version": {version}}}"#);
        let mut s = Snapshot::new("k", version, &data, None).unwrap();
        s.seq = seq;
        s
    }

    #[test]
    fn updates_above_the_floor_skips_and_recreation() {
        let (mut c, send) = Cursor::start(&snap(5, 0), None);
        assert!(send);
        let adv = |c: &mut Cursor, v, s| c.advance(&snap(v, s));
        assert_eq!(
            adv(&mut c, 6, 1),
            Some(Advance {
                skipped: 0,
                frame: Some(Frame::Update)
            })
        );
        assert_eq!(adv(&mut c, 6, 1), None, "seen already");
        assert_eq!(
            adv(&mut c, 9, 4),
            Some(Advance {
                skipped: 2,
                frame: Some(Frame::Update)
            })
        );
        assert_eq!(
            adv(&mut c, 2, 5),
            Some(Advance {
                skipped: 0,
                frame: Some(Frame::Snapshot)
            }),
            "re-created KPI"
        );
        assert_eq!(c.floor(), 2);
    }

    #[test]
    fn a_client_ahead_waits_for_a_newer_version() {
        let (mut c, send) = Cursor::start(&snap(5, 0), Some(10));
        assert!(!send);
        assert_eq!(c.floor(), 10);
        assert_eq!(c.advance(&snap(7, 1)).unwrap().frame, None);
        assert_eq!(c.advance(&snap(11, 2)).unwrap().frame, Some(Frame::Update));
        let (c, send) = Cursor::start(&snap(5, 0), Some(4));
        assert!(send);
        assert_eq!(c.floor(), 5);
    }
}
