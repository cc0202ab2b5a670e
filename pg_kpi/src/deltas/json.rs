//! Entries as SQL reads them: `[bucket_us, [dims…], rows, [states…]]`, decoded by the
//! state views (`ddl::decode_entry_columns`) and the fold's upserts. Sums and extremes
//! are strings so `numeric` gets them exactly; sketches are base64 of their bytes.

use super::{Entry, Group, State};
use base64::Engine;
use serde_json::{json, Value};

pub fn entry(group: &Group, entry: &Entry) -> Value {
    let states: Vec<Value> = entry.states.iter().map(state).collect();
    json!([group.bucket_us, group.dims, entry.rows, states])
}

/// A JSON array of entries, as text.
pub fn array_text<'a>(entries: impl Iterator<Item = &'a (Group, Entry)>) -> String {
    Value::Array(entries.map(|(g, e)| entry(g, e)).collect()).to_string()
}

fn state(s: &State) -> Value {
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    match s {
        State::Rows => json!(0),
        State::Count(n) => json!(n),
        State::Sum { sum, nn } => json!([sum.to_string(), nn]),
        State::Extreme { val, dirty, .. } => {
            json!([val.map(|v| v.to_string()), u8::from(*dirty)])
        }
        State::Distinct { hll, dirty } => json!([b64(hll.to_bytes()), u8::from(*dirty)]),
        State::Quantiles(sketch) => json!([b64(sketch.to_bytes())]),
        State::Shared => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    #[test]
    fn entry_layout_matches_the_sql_decoders() {
        let g = Group {
            kpi: 1,
            bucket_us: 60_000_000,
            dims: vec![Some("a\"b".into()), None],
        };
        let e = Entry {
            rows: 0,
            states: vec![
                State::Rows,
                State::Sum {
                    sum: Decimal::ZERO,
                    nn: 0,
                },
                State::Extreme {
                    val: Some(Decimal::from(5)),
                    dirty: true,
                    is_min: true,
                },
                State::Shared,
            ],
        };
        assert_eq!(
            entry(&g, &e).to_string(),
            r#"[60000000,["a\"b",null],0,[0,["0",0],["5",1],null]]"#
        );
    }
}
