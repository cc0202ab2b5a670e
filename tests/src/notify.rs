//! The `kpi_changes` notification contract: payloads `{"seq":N,"kpis":{"<name>":<version>}}`
//! (or `{"seq":N,"overflow":true}`), `seq` increasing with every fold that notifies and
//! each KPI's version strictly increasing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

pub const CHANNEL: &str = "kpi_changes";

/// One parsed `kpi_changes` payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub kpis: BTreeMap<String, i64>,
    pub overflow: bool,
}

/// Parses a payload, or says what is wrong with it.
pub fn parse(payload: &str) -> Result<Change, String> {
    if payload.len() >= 8000 {
        return Err(format!("payload of {} bytes (limit 8000)", payload.len()));
    }
    let value: serde_json::Value =
        serde_json::from_str(payload).map_err(|e| format!("not JSON ({e}): {payload}"))?;
    let seq = value
        .get("seq")
        .and_then(serde_json::Value::as_i64)
        .ok_or_else(|| format!("no integer \"seq\": {payload}"))?;
    let overflow = value.get("overflow").and_then(serde_json::Value::as_bool) == Some(true);
    let mut kpis = BTreeMap::new();
    match value.get("kpis") {
        Some(serde_json::Value::Object(map)) => {
            for (name, version) in map {
                let v = version
                    .as_i64()
                    .ok_or_else(|| format!("version of {name} is not an integer: {payload}"))?;
                kpis.insert(name.clone(), v);
            }
        }
        None if overflow => {}
        _ => return Err(format!("no \"kpis\" object: {payload}")),
    }
    Ok(Change {
        seq,
        kpis,
        overflow,
    })
}

/// Accumulates notifications and checks the ordering guarantees as they arrive.
#[derive(Debug, Default)]
pub struct Tracker {
    pub changes: Vec<Change>,
    /// The latest version seen per KPI.
    pub latest: BTreeMap<String, i64>,
    /// Contract violations seen so far.
    pub violations: Vec<String>,
}

impl Tracker {
    pub fn record(&mut self, payload: &str) {
        let change = match parse(payload) {
            Ok(c) => c,
            Err(e) => {
                self.violations.push(e);
                return;
            }
        };
        if let Some(prev) = self.changes.last() {
            if change.seq <= prev.seq {
                self.violations.push(format!(
                    "seq did not increase: {} after {} ({payload})",
                    change.seq, prev.seq
                ));
            }
        }
        for (name, &version) in &change.kpis {
            if let Some(&prev) = self.latest.get(name) {
                if version <= prev {
                    self.violations.push(format!(
                        "version of {name} did not increase: {version} after {prev} ({payload})"
                    ));
                }
            }
            self.latest.insert(name.clone(), version);
        }
        self.changes.push(change);
    }

    /// Receives notifications on `listener` until `done(self)` holds or `timeout` passes;
    /// returns whether `done` held.
    pub fn receive_until(
        &mut self,
        listener: &mut Client,
        timeout: Duration,
        mut done: impl FnMut(&Tracker) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut notifications = listener.notifications();
            let mut iter = notifications.timeout_iter(left.min(Duration::from_millis(200)));
            while let Some(n) = iter.next().unwrap_or_else(|e| panic!("listen: {e}")) {
                if n.channel() == CHANNEL {
                    self.record(n.payload());
                }
            }
        }
    }
}

/// Every KPI's current version, from `kpi.list()`.
pub fn versions(client: &mut Client) -> BTreeMap<String, i64> {
    client
        .query("SELECT name::text, version::bigint FROM kpi.list()", &[])
        .unwrap_or_else(|e| panic!("kpi.list(): {}", crate::describe_error(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A connection listening on `kpi_changes`.
pub fn listen(client: &mut Client) {
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .expect("LISTEN");
}
