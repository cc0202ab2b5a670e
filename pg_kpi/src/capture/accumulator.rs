//! The transaction-local accumulator: one entry per KPI × bucket × dimension values ×
//! subtransaction, holding the net change of every measure's state.
//!
//! Entries remember the subtransaction that produced them, so `ROLLBACK TO SAVEPOINT`
//! drops exactly its own deltas (every subtransaction started after the aborted one is
//! nested in it, so "id ≥ aborted id" is the aborted set).

use crate::deltas::{self, Entry, Group, Merged, State};
use rust_decimal::Decimal;
// FxHash: the keys are the backend's own (KPI, bucket, dimension values), not an
// attacker-chosen stream, and SipHash was the largest single cost of capturing a row.
use rustc_hash::FxHashMap as HashMap;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub kpi: i32,
    pub bucket_us: i64,
    pub dims: Vec<Option<String>>,
    pub subxact: u32,
}

impl From<Key> for Group {
    /// The group a key's entry belongs to (keys also tell subtransactions apart).
    fn from(key: Key) -> Group {
        Group {
            kpi: key.kpi,
            bucket_us: key.bucket_us,
            dims: key.dims,
        }
    }
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

    /// The live entries of KPI `kpi` (every subtransaction not rolled back), as groups:
    /// what this transaction has changed and not yet written to the delta buffer.
    pub fn entries_of(&self, kpi: i32) -> Vec<(Group, Entry)> {
        self.entries
            .iter()
            .filter(|(key, _)| key.kpi == kpi)
            .map(|(key, entry)| (Group::from(key.clone()), entry.clone()))
            .collect()
    }

    /// Forgets the deltas of an aborted subtransaction and everything nested in it.
    pub fn abort_subxact(&mut self, subxact: u32) {
        self.entries.retain(|k, _| k.subxact < subxact);
    }

    /// Removes and encodes the entries of subtransactions ≥ `min_subxact` (those that
    /// belong to the current subtransaction or committed into it) as one delta batch.
    pub fn take_batch(&mut self, min_subxact: u32) -> Option<Vec<u8>> {
        let mut taken = Vec::with_capacity(self.entries.len());
        let mut first_subxact = None;
        let mut one_subxact = true;
        // Taken by value, so the dimension values move into the batch uncloned.
        for (key, entry) in self.entries.extract_if(|key, _| key.subxact >= min_subxact) {
            one_subxact &= *first_subxact.get_or_insert(key.subxact) == key.subxact;
            taken.push((Group::from(key), entry));
        }
        if taken.is_empty() {
            return None;
        }
        // Keys differ by group or subtransaction, so entries of a single subtransaction
        // (a transaction without savepoints: nearly every one) have distinct groups
        // already and need no merging.
        if one_subxact {
            return Some(deltas::encode(&taken));
        }
        let mut merged = Merged::default();
        merged.extend(taken);
        Some(deltas::encode(&merged.into_entries()))
    }
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
        let batch = deltas::decode(&acc.take_batch(1).expect("batch")).expect("decodes");
        assert_eq!(batch.len(), 1);
        assert_eq!(
            batch[0].1,
            Entry {
                rows: 0,
                states: vec![
                    State::Rows,
                    State::Sum {
                        sum: Decimal::ZERO,
                        nn: 0
                    },
                    State::Extreme {
                        val: Some(Decimal::from(5)),
                        dirty: true,
                        is_min: true
                    },
                ],
            }
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
    fn a_group_touched_in_several_subxacts_is_written_once() {
        let mut acc = Accumulator::default();
        acc.apply(key(1), &template(), 1, &row(2)).expect("apply");
        acc.apply(key(2), &template(), 1, &row(3)).expect("apply");
        let batch = deltas::decode(&acc.take_batch(1).expect("batch")).expect("decodes");
        assert_eq!(batch.len(), 1, "merged across subtransactions");
        assert_eq!(batch[0].1.rows, 2);
        assert_eq!(
            batch[0].1.states[1],
            State::Sum {
                sum: Decimal::from(5),
                nn: 2
            }
        );
        // One subtransaction, two groups: written as they are.
        let mut other = key(1);
        other.bucket_us += 60_000_000;
        acc.apply(key(1), &template(), 1, &row(2)).expect("apply");
        acc.apply(other, &template(), 1, &row(3)).expect("apply");
        let batch = deltas::decode(&acc.take_batch(1).expect("batch")).expect("decodes");
        assert_eq!(batch.len(), 2);
    }
}
