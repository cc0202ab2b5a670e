//! HyperLogLog accuracy, merging and the sparse → dense switch.

mod common;

use common::{hashes, hll_of, relative_error, rng, SplitMix64};
use pg_kpi_sketches::{hash_bytes, Hll};

#[test]
fn within_two_percent_at_1k_100k_1m() {
    let mut rng = rng(0x11);
    for n in [1_000, 100_000, 1_000_000] {
        let hll = hll_of(&hashes(&mut rng, n));
        let error = relative_error(hll.estimate(), n as f64);
        println!(
            "HLL n={n}: estimate {:.0}, error {:.3} %",
            hll.estimate(),
            error * 100.0
        );
        assert!(
            error < 0.02,
            "n={n}: estimate {} off by {error}",
            hll.estimate()
        );
    }
}

#[test]
fn within_two_percent_at_10m() {
    // SplitMix64 words are as good as hashes (distinct, well mixed) and keep the debug
    // build fast.
    let mut hll = Hll::new();
    let n = 10_000_000;
    for hash in SplitMix64(0x10).take(n) {
        hll.add_hash(hash);
    }
    let error = relative_error(hll.estimate(), n as f64);
    println!(
        "HLL n={n}: estimate {:.0}, error {:.3} %",
        hll.estimate(),
        error * 100.0
    );
    assert!(error < 0.02);
}

#[test]
fn small_cardinalities_are_exact_in_sparse_form() {
    // Every n from 1 to 1,000, by adding one value at a time to the same sketch; duplicates
    // along the way must not move the estimate.
    let mut hll = Hll::new();
    assert_eq!(hll.estimate(), 0.0);
    for n in 1..=1_000u64 {
        hll.add_bytes(&n.to_le_bytes());
        hll.add_bytes(&(n / 2 + 1).to_le_bytes()); // already present
        assert_eq!(hll.cardinality(), n, "n={n}");
    }
    assert!(hll.is_sparse());
}

#[test]
fn error_stays_small_across_the_sparse_to_dense_switch() {
    let mut rng = rng(0x12);
    let mut hll = Hll::new();
    let mut worst: f64 = 0.0;
    let mut switched_at = None;
    for (i, hash) in hashes(&mut rng, 20_000).into_iter().enumerate() {
        hll.add_hash(hash);
        let n = i + 1;
        if switched_at.is_none() && !hll.is_sparse() {
            switched_at = Some(n);
        }
        if n % 97 == 0 || n.abs_diff(4097) < 3 {
            let error = relative_error(hll.estimate(), n as f64);
            worst = worst.max(error);
            if hll.is_sparse() {
                assert!(error < 0.001, "sparse n={n}: {error}");
            }
        }
    }
    println!(
        "HLL switch to dense at n={switched_at:?}, worst error up to 20k: {:.3} %",
        worst * 100.0
    );
    // The switch comes when the 4,097th distinct sparse index appears: a value or two later
    // than n = 4,097 if two values shared one of the 2^25 sparse indices.
    assert!(switched_at.is_some_and(|n| (4_097..4_110).contains(&n)));
    assert!(worst < 0.02);
}

#[test]
fn merge_of_disjoint_and_overlapping_sets() {
    let mut rng = rng(0x13);
    let values = hashes(&mut rng, 100_000);
    // Disjoint halves.
    let mut left = hll_of(&values[..50_000]);
    left.merge(&hll_of(&values[50_000..]));
    assert_eq!(left, hll_of(&values));
    // Overlapping ranges: 0..60k and 40k..100k share 20k values.
    let mut first = hll_of(&values[..60_000]);
    first.merge(&hll_of(&values[40_000..]));
    assert_eq!(first.to_bytes(), hll_of(&values).to_bytes());
    let error = relative_error(first.estimate(), 100_000.0);
    println!(
        "HLL overlapping merge 60k ∪ 60k (100k distinct): error {:.3} %",
        error * 100.0
    );
    assert!(error < 0.02);
    // Small overlapping sets stay sparse and exact.
    let mut a = hll_of(&values[..300]);
    a.merge(&hll_of(&values[200..500]));
    assert!(a.is_sparse());
    assert_eq!(a.cardinality(), 500);
}

#[test]
fn merge_is_commutative_associative_idempotent_and_canonical() {
    let mut rng = rng(0x14);
    // Sizes chosen to hit sparse+sparse→sparse, sparse+sparse→dense, sparse+dense, dense+dense.
    for sizes in [
        [0, 5, 7],
        [10, 20, 30],
        [1_000, 2_000, 1_500],
        [3_000, 3_000, 0],
        [50_000, 10, 100],
        [9_000, 9_000, 9_000],
    ] {
        let parts: Vec<Vec<u64>> = sizes.iter().map(|&n| hashes(&mut rng, n)).collect();
        let [a, b, c] = [&parts[0], &parts[1], &parts[2]].map(|p| hll_of(p));
        let all: Vec<u64> = parts.concat();
        let reference = hll_of(&all).to_bytes();

        let mut ab_c = a.clone();
        ab_c.merge(&b);
        ab_c.merge(&c);
        let mut bc = b.clone();
        bc.merge(&c);
        let mut a_bc = a.clone();
        a_bc.merge(&bc);
        let mut cb_a = c.clone();
        cb_a.merge(&b);
        cb_a.merge(&a);
        for merged in [&ab_c, &a_bc, &cb_a] {
            assert_eq!(merged.to_bytes(), reference, "sizes {sizes:?}");
        }
        let mut twice = ab_c.clone();
        twice.merge(&ab_c);
        assert_eq!(twice, ab_c, "merge is idempotent");
    }
}

#[test]
fn small_sketches_are_small() {
    let mut hll = Hll::new();
    assert_eq!(hll.to_bytes().len(), 5);
    for user in ["alice", "bob", "carol"] {
        hll.add_bytes(user.as_bytes());
    }
    let three = hll.to_bytes().len();
    let thousand = hll_of(&hashes(&mut rng(0x15), 1_000)).to_bytes().len();
    let dense = hll_of(&hashes(&mut rng(0x16), 5_000)).to_bytes().len();
    println!("HLL bytes: 3 values {three}, 1,000 values {thousand}, dense {dense}");
    assert!(three <= 20);
    assert!(thousand < 4_000);
    assert_eq!(dense, 4 + 12_288);
}

#[test]
fn hashing_is_what_add_bytes_uses() {
    let mut by_bytes = Hll::new();
    by_bytes.add_bytes(b"user-42");
    let mut by_hash = Hll::new();
    by_hash.add_hash(hash_bytes(b"user-42"));
    assert_eq!(by_bytes, by_hash);
}
