//! The binary form of a batch: `postcard` (varints, no field names) of the list of
//! (group, entry) pairs, behind a one-byte format version so a future layout can be
//! told apart from this one.
//!
//! Decimals travel as mantissa and scale (exact, and small for small numbers), sketches
//! as their own documented byte formats.

use super::{Entry, Group};

/// Bumped whenever the layout changes; decoders refuse versions they do not know.
const FORMAT: u8 = 1;

/// Encodes one batch.
pub fn encode(entries: &[(Group, Entry)]) -> Vec<u8> {
    // Room for a typical entry (ids, bucket, two short dimension values, a few
    // decimal states) up front: growing the buffer byte by byte was a fifth of the cost.
    let mut out = Vec::with_capacity(16 + 96 * entries.len());
    out.push(FORMAT);
    // Writing into a Vec cannot fail, and every type here serializes.
    match postcard::to_extend(entries, out) {
        Ok(v) => v,
        Err(e) => unreachable!("delta batch serialization cannot fail: {e}"),
    }
}

/// Decodes one batch; corrupted or unknown bytes give an error, never a panic.
pub fn decode(bytes: &[u8]) -> Result<Vec<(Group, Entry)>, String> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("corrupted delta batch: {e}"))
        }
        Some((v, _)) => Err(format!("delta batch format {v} is not supported")),
        None => Err("empty delta batch".into()),
    }
}

pub mod decimal {
    use rust_decimal::Decimal;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("Decimal", &(d.mantissa(), d.scale()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let (mantissa, scale) = <(i128, u32)>::deserialize(d)?;
        Decimal::try_from_i128_with_scale(mantissa, scale).map_err(D::Error::custom)
    }
}

pub mod opt_decimal {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "super::decimal")] Decimal);

    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        d.map(Wrapped).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

pub mod hll {
    use pg_kpi_sketches::Hll;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &Hll, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&h.to_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hll, D::Error> {
        let bytes = <&[u8]>::deserialize(d)?;
        Hll::from_bytes(bytes).map_err(D::Error::custom)
    }
}

pub mod ddsketch {
    use pg_kpi_sketches::DdSketch;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &DdSketch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&h.to_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DdSketch, D::Error> {
        let bytes = <&[u8]>::deserialize(d)?;
        DdSketch::from_bytes(bytes).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::State;
    use super::*;
    use pg_kpi_sketches::{DdSketch, Hll};
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn sample() -> Vec<(Group, Entry)> {
        let mut hll = Hll::new();
        hll.add_bytes(b"alice");
        let mut dd = DdSketch::new();
        dd.add_count(12.5, -2).expect("finite");
        vec![(
            Group {
                kpi: 3,
                bucket_us: -60_000_000,
                dims: vec![Some("eu".into()), None],
            },
            Entry {
                rows: -1,
                states: vec![
                    State::Rows,
                    State::Count(7),
                    State::Sum {
                        sum: Decimal::from_str("-1234567890.123456789").expect("decimal"),
                        nn: 2,
                    },
                    State::Extreme {
                        val: None,
                        dirty: true,
                        is_min: false,
                    },
                    State::Extreme {
                        val: Some(Decimal::from_str("0.01").expect("decimal")),
                        dirty: false,
                        is_min: true,
                    },
                    State::Distinct { hll, dirty: true },
                    State::Quantiles(dd),
                    State::Shared,
                ],
            },
        )]
    }

    #[test]
    fn round_trips() {
        let batch = sample();
        assert_eq!(decode(&encode(&batch)).expect("decodes"), batch);
    }

    #[test]
    fn is_compact() {
        let batch = vec![(
            Group {
                kpi: 1,
                bucket_us: 817_000_000_000_000,
                dims: vec![Some("eu".into()), Some("web".into())],
            },
            Entry {
                rows: 1,
                states: vec![
                    State::Rows,
                    State::Sum {
                        sum: Decimal::from_str("123.45").expect("decimal"),
                        nn: 1,
                    },
                ],
            },
        )];
        assert!(encode(&batch).len() < 40, "{} bytes", encode(&batch).len());
    }

    #[test]
    fn corrupted_bytes_are_an_error() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 9;
        assert!(matches!(decode(&wrong_version), Err(e) if e.contains("format 9")));
        // Arbitrary garbage must never panic.
        for seed in 0..2_000u32 {
            let noise: Vec<u8> = (0..64u32)
                .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503) >> 7) as u8)
                .collect();
            let mut b = vec![FORMAT];
            b.extend(noise);
            let _ = decode(&b);
        }
    }
}
