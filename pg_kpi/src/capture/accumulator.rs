//! The transaction-local accumulator: one entry per KPI × bucket × dimension values ×
//! subtransaction, holding the net change of every measure's state.
//!
//! Entries remember the subtransaction that produced them, so `ROLLBACK TO SAVEPOINT`
//! drops exactly its own deltas (every subtransaction started after the aborted one is
//! nested in it, so "id ≥ aborted id" is the aborted set).

use base64::Engine;
use pg_kpi_sketches::{DdSketch, Hll};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::fmt::Write;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub kpi: i32,
    pub bucket_us: i64,
    pub dims: Vec<Option<String>>,
    pub subxact: u32,
}

/// The net change of one measure's state.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// count(*): carried by the entry's row count.
    Rows,
    /// count(expr): net non-null values.
    Count(i64),
    /// sum/avg: net sum of non-null values and their net count.
    Sum { sum: Decimal, nn: i64 },
    /// min/max of added values; `dirty` when a value was removed (the extreme may be gone).
    Extreme {
        val: Option<Decimal>,
        dirty: bool,
        is_min: bool,
    },
    /// count_distinct: values added; `dirty` when one was removed (HLL cannot forget).
    Distinct { hll: Hll, dirty: bool },
    /// percentile: net sketch (negative counts for removals).
    Quantiles(DdSketch),
    /// percentile reading another measure's sketch.
    Shared,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub rows: i64,
    pub states: Vec<State>,
}

/// What one row contributes to one measure.
#[derive(Clone, Debug)]
pub enum Contribution {
    Rows,
    /// count(expr): whether the value is non-null.
    Present(bool),
    Number(Option<Decimal>),
    /// count_distinct: the value's text form.
    Text(Option<String>),
    /// percentile: the value as a double.
    Float(Option<f64>),
    /// Nothing to record (a shared percentile).
    None,
}

#[derive(Default)]
pub struct Accumulator {
    entries: HashMap<Key, Entry>,
}

impl Accumulator {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Adds (`sign` = 1) or removes (`sign` = -1) one row's contributions.
    /// `template` gives the measure kinds for a fresh entry.
    pub fn apply(
        &mut self,
        key: Key,
        template: &[State],
        sign: i64,
        values: &[Contribution],
    ) -> Result<(), String> {
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            rows: 0,
            states: template.to_vec(),
        });
        entry.rows += sign;
        for (state, value) in entry.states.iter_mut().zip(values) {
            match (state, value) {
                (State::Rows, _) => {}
                (State::Count(n), Contribution::Present(p)) => *n += sign * i64::from(*p),
                (State::Sum { sum, nn }, Contribution::Number(Some(v))) => {
                    let delta = if sign > 0 { *v } else { -*v };
                    *sum = sum
                        .checked_add(delta)
                        .ok_or_else(|| "sum exceeds the range pg_kpi can capture".to_string())?;
                    *nn += sign;
                }
                (State::Extreme { val, dirty, is_min }, Contribution::Number(Some(v))) => {
                    if sign > 0 {
                        *val = Some(match *val {
                            Some(cur) if *is_min => cur.min(*v),
                            Some(cur) => cur.max(*v),
                            None => *v,
                        });
                    } else {
                        *dirty = true;
                    }
                }
                (State::Distinct { hll, dirty }, Contribution::Text(Some(v))) => {
                    if sign > 0 {
                        hll.add_bytes(v.as_bytes());
                    } else {
                        *dirty = true;
                    }
                }
                (State::Quantiles(sketch), Contribution::Float(Some(v))) => {
                    // Non-finite values cannot be placed in a sketch; they are skipped
                    // (documented), like NULLs.
                    let _ = sketch.add_count(*v, sign);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Forgets the deltas of an aborted subtransaction and everything nested in it.
    pub fn abort_subxact(&mut self, subxact: u32) {
        self.entries.retain(|k, _| k.subxact < subxact);
    }

    /// Removes and serializes the entries of subtransactions ≥ `min_subxact` (those
    /// that belong to the current subtransaction or committed into it), as one delta
    /// batch: `{"<kpi>": [[bucket_us, [dims…], rows, [states…]], …], …}`.
    pub fn take_batch(&mut self, min_subxact: u32) -> Option<String> {
        let keys: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| k.subxact >= min_subxact)
            .cloned()
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut by_kpi: HashMap<i32, Vec<(Key, Entry)>> = HashMap::new();
        for key in keys {
            if let Some(entry) = self.entries.remove(&key) {
                by_kpi.entry(key.kpi).or_default().push((key, entry));
            }
        }
        let mut out = String::with_capacity(128);
        out.push('{');
        for (i, (kpi, entries)) in by_kpi.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{kpi}\":[");
            for (j, (key, entry)) in entries.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                write_entry(&mut out, key, entry);
            }
            out.push(']');
        }
        out.push('}');
        Some(out)
    }
}

fn write_entry(out: &mut String, key: &Key, entry: &Entry) {
    let _ = write!(out, "[{},[", key.bucket_us);
    for (i, d) in key.dims.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match d {
            Some(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
            None => out.push_str("null"),
        }
    }
    let _ = write!(out, "],{},[", entry.rows);
    for (i, s) in entry.states.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match s {
            State::Rows => out.push('0'),
            State::Count(n) => {
                let _ = write!(out, "{n}");
            }
            State::Sum { sum, nn } => {
                let _ = write!(out, "[\"{sum}\",{nn}]");
            }
            State::Distinct { hll, dirty } => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(hll.to_bytes());
                let _ = write!(out, "[\"{b64}\",{}]", u8::from(*dirty));
            }
            State::Quantiles(sketch) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(sketch.to_bytes());
                let _ = write!(out, "[\"{b64}\"]");
            }
            State::Shared => out.push_str("null"),
            State::Extreme { val, dirty, .. } => match val {
                Some(v) => {
                    let _ = write!(out, "[\"{v}\",{}]", u8::from(*dirty));
                }
                None => {
                    let _ = write!(out, "[null,{}]", u8::from(*dirty));
                }
            },
        }
    }
    out.push_str("]]");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sub: u32) -> Key {
        Key {
            kpi: 1,
            bucket_us: 60_000_000,
            dims: vec![Some("eu".into()), None],
            subxact: sub,
        }
    }

    fn template() -> Vec<State> {
        vec![
            State::Rows,
            State::Sum {
                sum: Decimal::ZERO,
                nn: 0,
            },
            State::Extreme {
                val: None,
                dirty: false,
                is_min: true,
            },
        ]
    }

    fn row(v: i64) -> Vec<Contribution> {
        vec![
            Contribution::Rows,
            Contribution::Number(Some(Decimal::from(v))),
            Contribution::Number(Some(Decimal::from(v))),
        ]
    }

    #[test]
    fn insert_then_delete_nets_out_but_marks_min_dirty() {
        let mut acc = Accumulator::default();
        acc.apply(key(1), &template(), 1, &row(5)).expect("apply");
        acc.apply(key(1), &template(), -1, &row(5)).expect("apply");
        let batch = acc.take_batch(1).expect("batch");
        assert_eq!(
            batch,
            r#"{"1":[[60000000,["eu",null],0,[0,["0",0],["5",1]]]]}"#
        );
        assert!(acc.is_empty());
    }

    #[test]
    fn aborted_subxact_deltas_vanish() {
        let mut acc = Accumulator::default();
        acc.apply(key(1), &template(), 1, &row(1)).expect("apply");
        acc.apply(key(2), &template(), 1, &row(2)).expect("apply");
        acc.apply(key(3), &template(), 1, &row(3)).expect("apply");
        acc.abort_subxact(2);
        assert_eq!(acc.len(), 1);
        // Flushing inside subxact 2 must not take the outer transaction's entry.
        assert!(acc.take_batch(2).is_none());
        assert!(acc.take_batch(1).is_some());
    }

    #[test]
    fn dimension_values_are_json_escaped() {
        let mut acc = Accumulator::default();
        let k = Key {
            kpi: 7,
            bucket_us: -60_000_000,
            dims: vec![Some("a\"b\\c".into())],
            subxact: 1,
        };
        acc.apply(k, &[State::Count(0)], 1, &[Contribution::Present(true)])
            .expect("apply");
        let batch = acc.take_batch(1).expect("batch");
        let parsed: serde_json::Value = serde_json::from_str(&batch).expect("valid json");
        assert_eq!(parsed["7"][0][1][0], "a\"b\\c");
    }
}
