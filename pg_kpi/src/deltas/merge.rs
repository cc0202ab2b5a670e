//! Merging entries of the same group, so the fold upserts each aggregate row once per
//! fold however many transactions touched it, and a view reads one pending row per group.

use super::{ByKpi, Entry, Group, State};
// FxHash, as in the capture accumulator: small trusted keys, merged once per delta.
use rustc_hash::FxHashMap as HashMap;

/// Entries merged by group. A group keeps a second entry only when merging would
/// overflow a sum's exact range (28 digits); SQL then adds them as `numeric`.
#[derive(Default)]
pub struct Merged {
    groups: HashMap<Group, Vec<Entry>>,
}

impl Merged {
    pub fn add(&mut self, group: Group, entry: Entry) {
        let entries = self.groups.entry(group).or_default();
        if let Some(last) = entries.last_mut() {
            if last.try_merge(&entry) {
                return;
            }
        }
        entries.push(entry);
    }

    pub fn extend(&mut self, batch: Vec<(Group, Entry)>) {
        for (group, entry) in batch {
            self.add(group, entry);
        }
    }

    /// The merged entries, grouped by KPI.
    pub fn by_kpi(self) -> ByKpi {
        let mut out = ByKpi::default();
        for (group, entries) in self.groups {
            let list = out.entry(group.kpi).or_default();
            for entry in entries {
                list.push((group.clone(), entry));
            }
        }
        out
    }

    /// Every merged entry, in no particular order. (Writers call this at every commit.)
    pub fn into_entries(self) -> Vec<(Group, Entry)> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (group, mut entries) in self.groups {
            // Nearly always one entry per group: the group moves, no clone.
            let last = entries.pop();
            for entry in entries {
                out.push((group.clone(), entry));
            }
            out.extend(last.map(|entry| (group, entry)));
        }
        out
    }
}

impl Entry {
    /// Adds `other` into `self`; returns false (and changes nothing) when a sum would
    /// leave Decimal's range or the states do not line up.
    pub fn try_merge(&mut self, other: &Entry) -> bool {
        if self.states.len() != other.states.len() {
            return false;
        }
        let mut sums = Vec::with_capacity(self.states.len());
        for (a, b) in self.states.iter().zip(&other.states) {
            match (a, b) {
                (State::Sum { sum: x, .. }, State::Sum { sum: y, .. }) => match x.checked_add(*y) {
                    Some(s) => sums.push(Some(s)),
                    None => return false,
                },
                _ if std::mem::discriminant(a) != std::mem::discriminant(b) => return false,
                _ => sums.push(None),
            }
        }
        self.rows += other.rows;
        for ((a, b), new_sum) in self.states.iter_mut().zip(&other.states).zip(sums) {
            merge_state(a, b, new_sum);
        }
        true
    }
}

fn merge_state(a: &mut State, b: &State, new_sum: Option<rust_decimal::Decimal>) {
    match (a, b) {
        (State::Count(x), State::Count(y)) => *x += y,
        (State::Sum { sum, nn }, State::Sum { nn: m, .. }) => {
            if let Some(s) = new_sum {
                *sum = s;
            }
            *nn += m;
        }
        (
            State::Extreme { val, dirty, is_min },
            State::Extreme {
                val: other,
                dirty: other_dirty,
                ..
            },
        ) => {
            *val = match (*val, *other) {
                (Some(x), Some(y)) if *is_min => Some(x.min(y)),
                (Some(x), Some(y)) => Some(x.max(y)),
                (x, y) => x.or(y),
            };
            *dirty |= other_dirty;
        }
        (
            State::Distinct { hll, dirty },
            State::Distinct {
                hll: other,
                dirty: other_dirty,
            },
        ) => {
            hll.merge(other);
            *dirty |= other_dirty;
        }
        (State::Quantiles(x), State::Quantiles(y)) => x.merge(y),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn group(bucket: i64) -> Group {
        Group {
            kpi: 1,
            bucket_us: bucket,
            dims: vec![Some("eu".into())],
        }
    }

    fn entry(rows: i64, sum: &str, min: Option<&str>, dirty: bool) -> Entry {
        Entry {
            rows,
            states: vec![
                State::Rows,
                State::Sum {
                    sum: Decimal::from_str(sum).expect("decimal"),
                    nn: rows,
                },
                State::Extreme {
                    val: min.map(|m| Decimal::from_str(m).expect("decimal")),
                    dirty,
                    is_min: true,
                },
            ],
        }
    }

    #[test]
    fn same_group_merges_into_one_entry() {
        let mut m = Merged::default();
        m.add(group(0), entry(2, "10.5", Some("3"), false));
        m.add(group(0), entry(-1, "-4", None, true));
        m.add(group(60), entry(1, "1", Some("1"), false));
        let mut all = m.into_entries();
        all.sort_by_key(|(g, _)| g.bucket_us);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1, entry(1, "6.5", Some("3"), true));
    }

    #[test]
    fn overflowing_sums_stay_apart() {
        let big = "70000000000000000000000000000";
        let mut m = Merged::default();
        m.add(group(0), entry(1, big, None, false));
        m.add(group(0), entry(1, big, None, false));
        assert_eq!(m.into_entries().len(), 2);
    }
}
