//! The agreement figures (`trainyard::review::agreement`) against the Python references: every
//! Krippendorff's alpha against the `krippendorff` package and every annotator's Cohen's kappa
//! against scikit-learn's `cohen_kappa_score` (tests/python/agreement_reference.py), on seeded
//! random vote sets, within 1e-9 (None where they answer nan or refuse).
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use trainyard::review::agreement::agreement;

fn python() -> PathBuf {
    std::env::var_os("TRAINYARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv")))
        .join("bin/python")
}

/// One vote set to compare.
struct Case {
    name: String,
    votes: Vec<(i64, String, u32)>,
}

/// `annotators` annotators on `documents` documents with `categories` categories: each document
/// has a true category, each annotator skips it with probability `missing`, else gives the true
/// category with probability `accuracy` and a uniformly random one otherwise. `constant`
/// annotators (the first ones) always answer category 1.
#[allow(clippy::too_many_arguments)]
fn random_case(
    name: &str,
    seed: u64,
    annotators: usize,
    documents: i64,
    categories: u32,
    missing: f64,
    accuracy: f64,
    constant: usize,
) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut votes = Vec::new();
    for document in 0..documents {
        let truth = rng.random_range(0..categories);
        for annotator in 0..annotators {
            if rng.random_bool(missing) {
                continue;
            }
            let value = if annotator < constant {
                1
            } else if rng.random_bool(accuracy) {
                truth
            } else {
                rng.random_range(0..categories)
            };
            votes.push((document * 7 + 3, format!("annotator-{annotator}"), value));
        }
    }
    Case {
        name: format!("{name} (seed {seed})"),
        votes,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for seed in 1..=4 {
        cases.push(random_case(
            "2 annotators, 5 documents, binary",
            seed,
            2,
            5,
            2,
            0.1,
            0.7,
            0,
        ));
        cases.push(random_case(
            "2 annotators, 12 documents, 3 categories",
            seed,
            2,
            12,
            3,
            0.0,
            0.6,
            0,
        ));
        cases.push(random_case(
            "3 annotators, 20 documents, binary",
            seed,
            3,
            20,
            2,
            0.3,
            0.75,
            0,
        ));
        cases.push(random_case(
            "4 annotators, 40 documents, 3 categories",
            seed,
            4,
            40,
            3,
            0.4,
            0.6,
            0,
        ));
        cases.push(random_case(
            "5 annotators, 60 documents, binary",
            seed,
            5,
            60,
            2,
            0.5,
            0.8,
            0,
        ));
        cases.push(random_case(
            "5 annotators, 60 documents, 3 categories",
            seed,
            5,
            60,
            3,
            0.3,
            0.5,
            0,
        ));
        cases.push(random_case(
            "3 annotators, 15 documents, chance only",
            seed,
            3,
            15,
            2,
            0.2,
            0.0,
            0,
        ));
        cases.push(random_case(
            "perfect agreement, binary",
            seed,
            3,
            15,
            2,
            0.3,
            1.0,
            0,
        ));
        cases.push(random_case(
            "perfect agreement, 3 categories",
            seed,
            4,
            25,
            3,
            0.3,
            1.0,
            0,
        ));
        cases.push(random_case("a constant rater", seed, 3, 30, 2, 0.2, 0.8, 1));
        cases.push(random_case(
            "two constant raters",
            seed,
            2,
            10,
            2,
            0.0,
            0.8,
            2,
        ));
        cases.push(random_case(
            "mostly single votes",
            seed,
            3,
            20,
            2,
            0.8,
            0.7,
            0,
        ));
    }
    cases
}

fn same(name: &str, what: &str, ours: Option<f64>, theirs: &Value, largest: &mut f64) {
    match (ours, theirs.as_f64()) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            let difference = (a - b).abs();
            *largest = largest.max(difference);
            assert!(difference < 1e-9, "{name}: {what}: ours {a}, reference {b}");
        }
        (a, _) => panic!("{name}: {what}: ours {a:?}, reference {theirs}"),
    }
}

#[test]
fn agreement_matches_krippendorff_and_scikit_learn() {
    let cases = cases();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("votes.json");
    let payload: Vec<Value> = cases
        .iter()
        .map(|case| json!({"name": case.name, "votes": case.votes}))
        .collect();
    std::fs::write(&input, serde_json::to_vec(&payload).unwrap()).unwrap();
    let out = std::process::Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/agreement_reference.py"
        ))
        .arg(&input)
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "agreement_reference.py failed (scripts/test.sh installs krippendorff): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reference.len(), cases.len());

    let (mut largest, mut alphas, mut kappas, mut undefined) = (0.0f64, 0, 0, 0);
    for (case, theirs) in cases.iter().zip(&reference) {
        let name = &case.name;
        let ours = agreement(&case.votes);
        same(name, "alpha", ours.alpha, &theirs["alpha"], &mut largest);
        alphas += usize::from(ours.alpha.is_some());
        undefined += usize::from(ours.alpha.is_none());
        let annotators = theirs["annotators"].as_object().unwrap();
        assert_eq!(
            ours.annotators.len(),
            annotators.len(),
            "{name}: annotators"
        );
        for row in &ours.annotators {
            let them = &annotators[&row.annotator];
            let who = format!("{} of {name}", row.annotator);
            assert_eq!(
                row.documents as u64,
                them["documents"].as_u64().unwrap(),
                "{who}"
            );
            assert_eq!(
                row.kappa_documents as u64,
                them["kappa_documents"].as_u64().unwrap(),
                "{who}"
            );
            same(&who, "kappa", row.kappa, &them["kappa"], &mut largest);
            kappas += usize::from(row.kappa.is_some());
            undefined += usize::from(row.kappa.is_none());
        }
    }
    eprintln!(
        "{} cases: {alphas} alphas and {kappas} kappas agree within {largest:e}; {undefined} undefined on both sides",
        cases.len()
    );
    // The sets exercise both defined and undefined figures.
    assert!(alphas > 30 && kappas > 100 && undefined > 0);
}
