//! Serialization: exact round trips, and errors (never panics) on anything else.

mod common;

use common::{dd_of, hashes, hll_of, lognormal, mixed, rng};
use pg_kpi_sketches::{sketch_kind, DdSketch, Hll, SketchError, SketchKind};
use rand::Rng;

fn hll_samples() -> Vec<Hll> {
    let mut rng = rng(0x31);
    let mut three = Hll::new();
    for user in ["alice", "bob", "carol"] {
        three.add_bytes(user.as_bytes());
    }
    vec![
        Hll::new(),
        three,
        hll_of(&hashes(&mut rng, 1_000)),
        hll_of(&hashes(&mut rng, 50_000)),
    ]
}

/// The largest sketch still sparse: 4,096 entries, about 13 KB. Kept out of the samples
/// because decoding each of its prefixes costs time quadratic in its length.
fn full_sparse_hll() -> Hll {
    let hll = hll_of(&hashes(&mut rng(0x35), 4_096));
    assert!(hll.is_sparse());
    hll
}

fn dd_samples() -> Vec<DdSketch> {
    let mut rng = rng(0x32);
    let mut delta = DdSketch::new();
    for _ in 0..500 {
        delta.remove(lognormal(&mut rng, 1.0, 2.0)).expect("finite");
        delta.add(mixed(&mut rng)).expect("finite");
    }
    let mut one = DdSketch::new();
    one.add(42.0).expect("finite");
    let mut extremes = DdSketch::new();
    for value in [
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        -f64::from_bits(1),
        0.0,
    ] {
        extremes.add_count(value, i64::MAX).expect("finite");
    }
    let collapsed = dd_of(
        &(0..5_000)
            .map(|i| 1.01f64.powi(i - 2_500))
            .collect::<Vec<_>>(),
    );
    vec![
        DdSketch::new(),
        one,
        dd_of(&(0..10_000).map(|_| mixed(&mut rng)).collect::<Vec<_>>()),
        delta,
        extremes,
        collapsed,
    ]
}

fn encodings() -> Vec<Vec<u8>> {
    hll_samples()
        .iter()
        .map(Hll::to_bytes)
        .chain(dd_samples().iter().map(DdSketch::to_bytes))
        .collect()
}

/// Decodes with the decoder the header names (or both, for foreign bytes). Whatever is
/// accepted must re-encode to the same bytes: the format has one encoding per sketch.
fn decode(bytes: &[u8]) -> Result<(), SketchError> {
    let hll = Hll::from_bytes(bytes);
    let dd = DdSketch::from_bytes(bytes);
    // The quantile read straight from bytes accepts exactly what the decoder accepts.
    match (&dd, DdSketch::quantile_of_bytes(bytes, 0.5)) {
        (Ok(dd), Ok(q)) => assert_eq!(q, dd.quantile(0.5), "quantile read from bytes"),
        (Err(_), Err(_)) => {}
        (dd, q) => panic!("decoder says {dd:?} but quantile_of_bytes says {q:?}"),
    }
    if let Ok(hll) = &hll {
        assert_eq!(
            hll.to_bytes(),
            bytes,
            "accepted HLL bytes re-encode identically"
        );
    }
    if let Ok(dd) = &dd {
        assert_eq!(
            dd.to_bytes(),
            bytes,
            "accepted DDSketch bytes re-encode identically"
        );
    }
    assert!(hll.is_err() || dd.is_err(), "no bytes are both sketches");
    hll.and(Ok(())).or(dd.map(|_| ()))
}

#[test]
fn sketches_round_trip_exactly() {
    for hll in hll_samples().into_iter().chain([full_sparse_hll()]) {
        let bytes = hll.to_bytes();
        let decoded = Hll::from_bytes(&bytes).expect("valid HLL");
        assert_eq!(decoded, hll);
        assert_eq!(decoded.to_bytes(), bytes);
        assert_eq!(decoded.estimate(), hll.estimate());
        assert_eq!(sketch_kind(&bytes), Ok(SketchKind::Hll));
    }
    for dd in dd_samples() {
        let bytes = dd.to_bytes();
        let decoded = DdSketch::from_bytes(&bytes).expect("valid DDSketch");
        assert_eq!(decoded, dd);
        assert_eq!(decoded.to_bytes(), bytes);
        assert_eq!(decoded.quantile(0.9), dd.quantile(0.9));
        assert_eq!(sketch_kind(&bytes), Ok(SketchKind::DdSketch));
    }
}

#[test]
fn decoded_sketches_keep_working() {
    // A decoded sketch carries all of its state: removals and merges after a round trip
    // give what they would have given on the original.
    let mut rng = rng(0x33);
    let values: Vec<f64> = (0..1_000).map(|_| mixed(&mut rng)).collect();
    let mut decoded = DdSketch::from_bytes(&dd_of(&values).to_bytes()).expect("valid");
    for &value in &values[..400] {
        decoded.remove(value).expect("finite");
    }
    assert_eq!(decoded.to_bytes(), dd_of(&values[400..]).to_bytes());

    let collapsed = dd_samples().pop().expect("collapsed sample");
    let mut decoded = DdSketch::from_bytes(&collapsed.to_bytes()).expect("valid");
    for i in 0..5_000 {
        decoded.remove(1.01f64.powi(i - 2_500)).expect("finite");
    }
    assert!(decoded.is_empty(), "the floor survives the round trip");

    let sparse = hll_of(&hashes(&mut rng, 3_000));
    let mut decoded = Hll::from_bytes(&sparse.to_bytes()).expect("valid");
    decoded.merge(&hll_of(&hashes(&mut rng, 3_000)));
    assert!(!decoded.is_sparse());
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in encodings() {
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "prefix of {len} of {} bytes",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let error = match sketch_kind(&bytes) {
            Ok(SketchKind::Hll) => Hll::from_bytes(&longer).err(),
            _ => DdSketch::from_bytes(&longer).err(),
        };
        assert_eq!(error, Some(SketchError::TrailingBytes(1)));
    }
}

#[test]
fn foreign_and_random_bytes_are_errors_not_panics() {
    let mut rng = rng(0x34);
    // Entirely random strings.
    for _ in 0..300 {
        let len = rng.random_range(0..80);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = decode(&bytes);
    }
    // Valid headers followed by random bodies, to get past the first checks.
    for kind in [1u8, 2] {
        for _ in 0..300 {
            let len = rng.random_range(0..80);
            let mut bytes = vec![1, kind, if kind == 1 { 14 } else { 1 }];
            bytes.extend((0..len).map(|_| rng.random::<u8>()));
            let _ = decode(&bytes);
        }
    }
    // Valid encodings with a few bytes changed.
    for bytes in encodings() {
        for _ in 0..200 {
            let mut mutated = bytes.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..mutated.len());
                mutated[at] = rng.random();
            }
            let _ = decode(&mutated);
        }
    }
    // Text, JSON and a foreign sketch's bytes.
    for foreign in [
        &b"hello world"[..],
        b"{\"p95\": 12.5}",
        b"\x00\x00\x00\x01",
        b"\x01\x03",
    ] {
        assert!(decode(foreign).is_err());
    }
}

#[test]
fn lengths_are_capped_before_allocating() {
    // Claimed counts far beyond what the input holds or the format allows.
    let huge_sparse = [1, 1, 14, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        Hll::from_bytes(&huge_sparse),
        Err(SketchError::Corrupt(_))
    ));
    let huge_store = [1, 2, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
    assert!(matches!(
        DdSketch::from_bytes(&huge_store),
        Err(SketchError::Corrupt(_))
    ));
    // A gap that would open a span of a billion buckets.
    let wide = [1, 2, 1, 0, 0, 2, 0, 2, 0xff, 0xff, 0xff, 0xff, 0x03, 2, 0];
    assert!(matches!(
        DdSketch::from_bytes(&wide),
        Err(SketchError::Corrupt(_))
    ));
}

#[test]
fn kinds_are_not_confused() {
    let hll = Hll::new().to_bytes();
    let dd = DdSketch::new().to_bytes();
    assert!(matches!(
        DdSketch::from_bytes(&hll),
        Err(SketchError::WrongKind { found: 1, .. })
    ));
    assert!(matches!(
        Hll::from_bytes(&dd),
        Err(SketchError::WrongKind { found: 2, .. })
    ));
    let mut future = dd.clone();
    future[0] = 2;
    assert_eq!(
        DdSketch::from_bytes(&future),
        Err(SketchError::UnsupportedVersion(2))
    );
    assert_eq!(Hll::from_bytes(&[]), Err(SketchError::Truncated));
}

#[test]
fn empty_sketches_are_a_few_bytes() {
    assert_eq!(Hll::new().to_bytes(), vec![1, 1, 14, 0, 0]);
    assert_eq!(DdSketch::new().to_bytes(), vec![1, 2, 1, 0, 0, 0, 0, 0]);
}
