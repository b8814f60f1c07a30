//! Deterministic, stratified train/validation/test splits.
//!
//! Records are grouped by their label vector (masked labels included as their own value);
//! inside each group they are ordered by MD5(seed, key) — a stable pseudo-random order that
//! depends only on the seed and the record, not on insertion order — and cut by cumulative
//! rounding, so every group is split as close to the ratios as its size allows.
use std::collections::BTreeMap;

use md5::{Digest, Md5};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// The pseudo-random sort key of a record inside its stratum: MD5(seed, key), compared byte by
/// byte (as PostgreSQL orders `bytea`, so the dataset build can rank records in the database).
pub fn split_key(seed: u64, key: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(seed.to_le_bytes());
    h.update(key.as_bytes());
    h.finalize().into()
}

/// Where a stratum of `n` records is cut: ranks `< train_end` train, `< validation_end`
/// validation, the rest test.
pub fn cut_points(n: usize, ratios: (f64, f64, f64)) -> (usize, usize) {
    let total = ratios.0 + ratios.1 + ratios.2;
    let (train, validation) = (ratios.0 / total, ratios.1 / total);
    let n = n as f64;
    (
        (n * train).round() as usize,
        (n * (train + validation)).round() as usize,
    )
}

/// `items`: (stable key, stratum). Returns one split per item, in input order.
pub fn stratified_split(
    items: &[(String, String)],
    ratios: (f64, f64, f64),
    seed: u64,
) -> Vec<Split> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, stratum)) in items.iter().enumerate() {
        groups.entry(stratum.as_str()).or_default().push(i);
    }
    let mut out = vec![Split::Train; items.len()];
    for members in groups.values_mut() {
        members.sort_by_cached_key(|&i| split_key(seed, &items[i].0));
        let (train_end, validation_end) = cut_points(members.len(), ratios);
        for (rank, &i) in members.iter().enumerate() {
            out[i] = if rank < train_end {
                Split::Train
            } else if rank < validation_end {
                Split::Validation
            } else {
                Split::Test
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize, strata: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("doc-{i}"), format!("s{}", i % strata)))
            .collect()
    }

    #[test]
    fn ratios_hold_per_stratum() {
        let items = items(1000, 2);
        let splits = stratified_split(&items, (0.8, 0.1, 0.1), 42);
        for stratum in ["s0", "s1"] {
            let of = |s: Split| {
                items
                    .iter()
                    .zip(&splits)
                    .filter(|((_, st), sp)| st == stratum && **sp == s)
                    .count()
            };
            assert_eq!(
                (of(Split::Train), of(Split::Validation), of(Split::Test)),
                (400, 50, 50)
            );
        }
    }

    #[test]
    fn same_seed_same_split_regardless_of_order() {
        let a = items(200, 3);
        let mut b = a.clone();
        b.reverse();
        let sa = stratified_split(&a, (0.8, 0.1, 0.1), 7);
        let sb = stratified_split(&b, (0.8, 0.1, 0.1), 7);
        for (i, item) in a.iter().enumerate() {
            let j = b.iter().position(|x| x == item).unwrap();
            assert_eq!(sa[i], sb[j]);
        }
        let other = stratified_split(&a, (0.8, 0.1, 0.1), 8);
        assert_ne!(sa, other, "a different seed gives a different split");
    }
}
