//! DDSketch accuracy, removal and merge laws.

mod common;

use common::{dd_of, lognormal, mixed, relative_error, rng};
use pg_kpi_sketches::ddsketch::RELATIVE_ACCURACY;
use pg_kpi_sketches::DdSketch;
use rand::seq::SliceRandom;
use rand::Rng;

const QUANTILES: [f64; 9] = [0.0, 0.01, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999, 1.0];

/// The 0-based rank of PostgreSQL's `percentile_disc(q)`: the ⌈q·n⌉-th value, or the first.
fn percentile_disc_rank(q: f64, n: usize) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

/// Checks every quantile against the exact value of the same rank; returns the worst
/// relative error seen.
fn check_quantiles(name: &str, values: &mut [f64]) -> f64 {
    let sketch = dd_of(values);
    assert_eq!(sketch.count(), values.len() as i64);
    values.sort_by(f64::total_cmp);
    let mut worst: f64 = 0.0;
    let mut report = Vec::new();
    for q in QUANTILES {
        let exact = values[percentile_disc_rank(q, values.len())];
        let estimate = sketch.quantile(q).expect("non-empty sketch");
        let from_bytes = DdSketch::quantile_of_bytes(&sketch.to_bytes(), q).expect("valid bytes");
        assert_eq!(from_bytes, Some(estimate), "{name} q={q}: read from bytes");
        let error = relative_error(estimate, exact);
        // The guarantee is α = 0.5 %; allow only float rounding on top of it.
        assert!(
            error <= RELATIVE_ACCURACY * (1.0 + 1e-9),
            "{name} q={q}: estimate {estimate} vs exact {exact} ({error})"
        );
        worst = worst.max(error);
        report.push(format!("p{}={:.4}%", q * 100.0, error * 100.0));
    }
    let bytes = sketch.to_bytes().len();
    println!(
        "DDSketch {name}: worst {:.4} %, {bytes} bytes; {}",
        worst * 100.0,
        report.join(" ")
    );
    worst
}

#[test]
fn quantiles_within_one_percent_on_a_million_uniform_values() {
    let mut rng = rng(0x21);
    let mut values: Vec<f64> = (0..1_000_000)
        .map(|_| rng.random_range(0.0..1_000.0))
        .collect();
    assert!(check_quantiles("uniform[0,1000)", &mut values) < 0.01);
}

#[test]
fn quantiles_within_one_percent_on_a_million_lognormal_values() {
    let mut rng = rng(0x22);
    let mut values: Vec<f64> = (0..1_000_000)
        .map(|_| lognormal(&mut rng, 3.0, 1.5))
        .collect();
    assert!(check_quantiles("lognormal(3,1.5)", &mut values) < 0.01);
}

#[test]
fn quantiles_within_one_percent_with_negatives_and_zeros() {
    let mut rng = rng(0x23);
    let mut values: Vec<f64> = (0..1_000_000).map(|_| mixed(&mut rng)).collect();
    assert!(values.iter().filter(|v| **v < 0.0).count() > 300_000);
    assert!(values.iter().filter(|v| **v == 0.0).count() > 100_000);
    assert!(check_quantiles("normal(20,100)+15% zeros", &mut values) < 0.01);
}

#[test]
fn removal_undoes_insertion_byte_for_byte() {
    let mut rng = rng(0x24);
    let values: Vec<f64> = (0..20_000).map(|_| mixed(&mut rng)).collect();
    let (removed, kept): (Vec<f64>, Vec<f64>) = values.iter().partition(|_| rng.random_bool(0.3));
    let mut sketch = dd_of(&values);
    for &value in &removed {
        sketch.remove(value).expect("finite");
    }
    assert_eq!(sketch, dd_of(&kept));
    assert_eq!(sketch.to_bytes(), dd_of(&kept).to_bytes());
    // Removing everything leaves the empty sketch, not a sketch of zero-count buckets.
    for &value in &kept {
        sketch.remove(value).expect("finite");
    }
    assert!(sketch.is_empty());
    assert_eq!(sketch.to_bytes(), DdSketch::new().to_bytes());
}

#[test]
fn deltas_in_any_order_net_out() {
    // A row inserted, updated (old value out, new value in) and deleted, with the deltas of
    // each statement arriving at the fold in a shuffled order.
    let mut rng = rng(0x25);
    let base_values: Vec<f64> = (0..2_000).map(|_| lognormal(&mut rng, 2.0, 1.0)).collect();
    let mut deltas: Vec<DdSketch> = Vec::new();
    let mut expected = base_values.clone();
    for chunk in base_values.chunks(100) {
        let mut insert = DdSketch::new();
        let mut update = DdSketch::new();
        for &value in chunk {
            insert.add(value).expect("finite");
            update.remove(value).expect("finite");
            update.add(value * 2.0).expect("finite");
        }
        deltas.push(insert);
        deltas.push(update);
    }
    for value in &mut expected {
        *value *= 2.0;
    }
    deltas.shuffle(&mut rng);
    let mut folded = DdSketch::new();
    let mut saw_negative = false;
    for delta in &deltas {
        folded.merge(delta);
        saw_negative |= folded.has_negative_counts();
    }
    assert!(
        saw_negative,
        "the shuffle should apply some removals before their insertions"
    );
    assert!(!folded.has_negative_counts());
    assert_eq!(folded.to_bytes(), dd_of(&expected).to_bytes());
}

#[test]
fn merge_is_commutative_and_associative() {
    let mut rng = rng(0x26);
    let values: Vec<f64> = (0..30_000).map(|_| mixed(&mut rng)).collect();
    let (a, rest) = values.split_at(7_000);
    let (b, c) = rest.split_at(13_000);
    let [a, b, c] = [a, b, c].map(dd_of);
    // A delta with removals of values in `a`, so that signed counts are exercised too.
    let mut d = DdSketch::new();
    for &value in values.iter().take(3_000) {
        d.remove(value).expect("finite");
    }
    let merge = |parts: &[&DdSketch]| {
        let mut out = DdSketch::new();
        for part in parts {
            out.merge(part);
        }
        out
    };
    let reference = dd_of(&values[3_000..]).to_bytes();
    let mut bc = b.clone();
    bc.merge(&c);
    let mut a_bcd = a.clone();
    a_bcd.merge(&merge(&[&bc, &d]));
    for merged in [
        merge(&[&a, &b, &c, &d]),
        merge(&[&d, &c, &b, &a]),
        merge(&[&c, &d, &a, &b]),
        a_bcd,
    ] {
        assert_eq!(merged.to_bytes(), reference);
    }
}

#[test]
fn collapse_keeps_the_high_end_accurate_and_removals_balanced() {
    // Log-uniform over fifteen decades: about 3,450 buckets, so the lowest are collapsed.
    let mut rng = rng(0x27);
    let mut values: Vec<f64> = (0..200_000)
        .map(|_| 10f64.powf(rng.random_range(-6.0..9.0)))
        .collect();
    let sketch = dd_of(&values);
    values.sort_by(f64::total_cmp);
    for q in [0.5, 0.9, 0.95, 0.99, 1.0] {
        let exact = values[percentile_disc_rank(q, values.len())];
        let estimate = sketch.quantile(q).expect("non-empty");
        assert!(
            relative_error(estimate, exact) <= RELATIVE_ACCURACY * (1.0 + 1e-9),
            "q={q}"
        );
    }
    // The low end is what collapsing gives up: p1 lies in the collapsed bucket.
    let p1 = sketch.quantile(0.01).expect("non-empty");
    assert!(
        p1 > values[values.len() / 100] * 1.5,
        "p1 {p1} reported from the collapsed bucket"
    );
    assert!(sketch.to_bytes().len() < 2_048 * 4);

    // Merges agree whatever the order, since all counts are positive.
    let mut shuffled = values.clone();
    shuffled.shuffle(&mut rng);
    let (x, y) = shuffled.split_at(50_000);
    let mut xy = dd_of(x);
    xy.merge(&dd_of(y));
    let mut yx = dd_of(y);
    yx.merge(&dd_of(x));
    assert_eq!(xy.to_bytes(), sketch.to_bytes());
    assert_eq!(yx.to_bytes(), sketch.to_bytes());

    // Every removal meets its (collapsed) insertion.
    let mut emptied = sketch.clone();
    for &value in &values {
        emptied.remove(value).expect("finite");
    }
    assert!(emptied.is_empty());
    assert_eq!(emptied.count(), 0);
}

#[test]
fn quantile_of_bytes_agrees_with_the_decoded_sketch_on_deltas_and_edges() {
    let mut rng = rng(0x31);
    let mut delta = DdSketch::new();
    for _ in 0..500 {
        let v: f64 = rng.random_range(-50.0..50.0);
        if rng.random_bool(0.3) {
            delta.remove(v).expect("finite");
        } else {
            delta.add(v).expect("finite");
        }
    }
    delta.add(0.0).expect("finite");
    let empty = DdSketch::new();
    for sketch in [&delta, &empty] {
        for q in [-0.1, 0.0, 0.3, 0.5, 0.99, 1.0, 1.5, f64::NAN] {
            assert_eq!(
                DdSketch::quantile_of_bytes(&sketch.to_bytes(), q).expect("valid bytes"),
                sketch.quantile(q),
                "q={q}"
            );
        }
    }
    let mut bytes = delta.to_bytes();
    bytes.truncate(bytes.len() - 1);
    assert!(DdSketch::quantile_of_bytes(&bytes, 0.5).is_err());
    let mut bytes = delta.to_bytes();
    bytes.push(0);
    assert!(DdSketch::quantile_of_bytes(&bytes, 0.5).is_err());
}
