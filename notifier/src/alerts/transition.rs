//! A row of `kpi.alert_history` as the dispatcher reads it, and the alert a channel
//! gets from it: labels for routing, annotations, keys for deduplication.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::matcher::Labels;
use super::notification::{Alert, Status};

/// The columns [`Transition::from_row`] reads, from `kpi.alert_history h` joined to
/// `kpi.alert_rules r` (the rule may have been dropped since).
pub const COLUMNS: &str = "h.id, h.rule_id, h.rule, h.kpi, h.group_by, h.group_value, h.to_state, \
     h.value::text, h.threshold::text, h.severity, h.labels::text, h.summary, h.at, h.started_at, \
     h.actor, h.note, r.op, r.condition";

/// One transition of one alert instance.
#[derive(Clone, Debug)]
pub struct Transition {
    pub id: i64,
    pub rule_id: i32,
    pub rule: String,
    pub kpi: String,
    pub group_by: Option<String>,
    pub group_value: String,
    pub to_state: String,
    pub value: Option<String>,
    pub threshold: String,
    pub severity: String,
    /// The rule's own labels (a JSON object).
    pub rule_labels: serde_json::Map<String, serde_json::Value>,
    pub summary: Option<String>,
    pub at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub actor: Option<String>,
    pub note: Option<String>,
    /// `None` once the rule is dropped.
    pub op: Option<String>,
    pub condition: Option<String>,
}

impl Transition {
    pub fn from_row(row: &Row) -> Result<Transition, tokio_postgres::Error> {
        let labels: String = row.try_get(10)?;
        Ok(Transition {
            id: row.try_get(0)?,
            rule_id: row.try_get(1)?,
            rule: row.try_get(2)?,
            kpi: row.try_get(3)?,
            group_by: row.try_get(4)?,
            group_value: row.try_get(5)?,
            to_state: row.try_get(6)?,
            value: row.try_get(7)?,
            threshold: row.try_get(8)?,
            severity: row.try_get(9)?,
            // The column is a jsonb object by the extension's CHECK; anything else reads
            // as no labels rather than stopping delivery.
            rule_labels: serde_json::from_str(&labels).unwrap_or_default(),
            summary: row.try_get(11)?,
            at: row.try_get(12)?,
            started_at: row.try_get(13)?,
            actor: row.try_get(14)?,
            note: row.try_get(15)?,
            op: row.try_get(16)?,
            condition: row.try_get(17)?,
        })
    }

    /// Whether the dispatcher routes it (pending and cancelled transitions stay in the
    /// database and the `alerts` topic; nobody is paged for them).
    pub fn delivered(&self) -> bool {
        Status::from_state(&self.to_state).is_some()
    }

    /// The labels routes and silences match: the rule's own, then `alertname`, `kpi`,
    /// `severity` and the group_by dimension with its value (these win on a clash, so a
    /// rule cannot pose as another).
    pub fn labels(&self) -> Labels {
        let mut l: Labels = self
            .rule_labels
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        l.insert("alertname".into(), self.rule.clone());
        l.insert("kpi".into(), self.kpi.clone());
        l.insert("severity".into(), self.severity.clone());
        if let Some(dim) = &self.group_by {
            l.insert(dim.clone(), self.group_value.clone());
        }
        l
    }

    /// When its firing episode began (the transition itself for rows written before
    /// `started_at` existed).
    pub fn started(&self) -> DateTime<Utc> {
        self.started_at.unwrap_or(self.at)
    }

    /// The alert a channel sends for this transition.
    pub fn alert(&self, external_url: &str) -> Alert {
        let status = Status::from_state(&self.to_state).unwrap_or(Status::Firing);
        let labels = self.labels();
        let op = self.op.clone().unwrap_or_default();
        let dedup_key = format!("pgkpi:{}:{}:{}", self.rule, self.group_value, self.id);
        let incident_key = format!(
            "pgkpi:{}:{}:{}",
            self.rule,
            self.group_value,
            self.started().timestamp_micros()
        );
        let mut annotations = Labels::new();
        if let Some(s) = &self.summary {
            annotations.insert("summary".into(), s.clone());
        }
        if let Some(v) = &self.value {
            annotations.insert("value".into(), v.clone());
        }
        annotations.insert("threshold".into(), format!("{op} {}", self.threshold));
        if let Some(c) = &self.condition {
            annotations.insert("condition".into(), c.clone());
        }
        annotations.insert("dedup_key".into(), dedup_key.clone());
        Alert {
            history_id: self.id,
            status,
            fingerprint: fingerprint(&labels),
            labels,
            annotations,
            starts_at: self.started(),
            ends_at: (status == Status::Resolved).then_some(self.at),
            dedup_key,
            incident_key,
            rule: self.rule.clone(),
            kpi: self.kpi.clone(),
            severity: self.severity.clone(),
            group_by: self.group_by.clone(),
            group_value: self.group_value.clone(),
            value: self.value.clone(),
            op,
            threshold: self.threshold.clone(),
            summary: self.summary.clone(),
            at: self.at,
            acked_by: self.actor.clone(),
            ack_note: self.note.clone(),
            generator_url: format!(
                "{}/?kpi={}",
                external_url.trim_end_matches('/'),
                url_component(&self.kpi)
            ),
        }
    }
}

/// Alertmanager's fingerprint role: 16 hex digits, stable for the same labels across
/// episodes, restarts and replicas (FNV-1a 64 over `name\xffvalue\xff…`, which no
/// label text can forge since labels are UTF-8).
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    format!("{h:016x}")
}

/// Percent-encodes what a query parameter cannot hold as is.
fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_tell_label_sets_apart() {
        let a: Labels = [("alertname".to_string(), "x".to_string())].into();
        let b: Labels = [("alertname".to_string(), "y".to_string())].into();
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
        // "ab"="" and "a"="b" must not collide.
        let c: Labels = [("ab".to_string(), String::new())].into();
        let d: Labels = [("a".to_string(), "b".to_string())].into();
        assert_ne!(fingerprint(&c), fingerprint(&d));
    }

    #[test]
    fn kpi_names_are_encoded_in_links() {
        assert_eq!(url_component("a b&c"), "a%20b%26c");
    }
}
