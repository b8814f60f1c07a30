//! How far annotators agree on one label: Krippendorff's alpha (nominal) over all annotators
//! and, per annotator, Cohen's kappa against the consensus of the others. Pure functions over
//! votes (document, annotator, category); tests/it/agreement.rs compares every figure with the
//! `krippendorff` package and scikit-learn's `cohen_kappa_score`.
use std::collections::BTreeMap;

/// The agreement figures of one label's votes.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// Krippendorff's alpha, nominal metric, over every annotator; None when it cannot be
    /// computed (no document with two votes, or no disagreement to expect: one category only).
    pub alpha: Option<f64>,
    /// The number of documents with at least two votes (the units alpha pairs).
    pub pairable_documents: usize,
    /// One row per annotator, ordered by name.
    pub annotators: Vec<AnnotatorAgreement>,
}

/// One annotator's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotatorAgreement {
    pub annotator: String,
    /// The documents the annotator voted on.
    pub documents: usize,
    /// The documents the annotator's kappa is computed on: those where at least one other
    /// annotator voted and the others' votes have one most frequent category.
    pub kappa_documents: usize,
    /// Cohen's kappa between the annotator's votes and the consensus of the others, see
    /// [`agreement`]; None when fewer than 2 documents count or it is undefined.
    pub kappa: Option<f64>,
}

/// The agreement of `votes`, each (document, annotator, category) for one label; a binary
/// label's categories are 0 and 1. When an annotator voted twice on one document, the last vote
/// counts.
///
/// Alpha is Krippendorff's alpha with the nominal metric, computed from the coincidence matrix
/// of the documents with at least two votes (a document with a single vote pairs with nothing
/// and is left out): `o[c][k]` adds, for each such document with `m` votes of which `n_c` are
/// `c`, `n_c * (n_k - [c == k]) / (m - 1)`; with `n_c` the row sums and `n` their total, alpha
/// is `1 - D_o / D_e` where `D_o = sum over c != k of o[c][k]` and
/// `D_e = sum over c != k of n_c * n_k / (n - 1)`. None when no document has two votes or
/// `D_e` is 0 (every paired vote in one category): never 0.0 for "could not compute".
///
/// An annotator's kappa compares, on each document they voted on, their category with the
/// consensus of the other annotators who voted on it: the category most of those others chose.
/// A document no other annotator voted on, or where the others' most frequent categories tie
/// (one yes and one no, say), is left out of that annotator's kappa. Kappa is Cohen's:
/// `1 - sum over c != k of C[c][k] / sum over c != k of r_c * s_k / N` over the confusion matrix
/// `C` of the `N` documents left (`r`, `s` its row and column sums), as scikit-learn's
/// `cohen_kappa_score` computes it; None when fewer than 2 documents are left, or when the
/// expected disagreement is 0 (the annotator and the consensus always give the same single
/// category, where scikit-learn answers nan).
pub fn agreement<S: AsRef<str>>(votes: &[(i64, S, u32)]) -> Agreement {
    // document -> annotator -> category (the last vote of an annotator counts).
    let mut by_document: BTreeMap<i64, BTreeMap<&str, u32>> = BTreeMap::new();
    for (document, annotator, category) in votes {
        by_document
            .entry(*document)
            .or_default()
            .insert(annotator.as_ref(), *category);
    }
    let (alpha, pairable_documents) = krippendorff_alpha_nominal(&by_document);

    // annotator -> (their category, the others' consensus) on the documents that count.
    let mut documents: BTreeMap<&str, usize> = BTreeMap::new();
    let mut pairs: BTreeMap<&str, Vec<(u32, u32)>> = BTreeMap::new();
    for document in by_document.values() {
        for (&annotator, &category) in document {
            *documents.entry(annotator).or_default() += 1;
            let pairs = pairs.entry(annotator).or_default();
            let others = document
                .iter()
                .filter(|(other, _)| **other != annotator)
                .map(|(_, category)| *category);
            if let Some(consensus) = majority(others) {
                pairs.push((category, consensus));
            }
        }
    }
    let annotators = documents
        .into_iter()
        .map(|(annotator, documents)| {
            let pairs = &pairs[annotator];
            AnnotatorAgreement {
                annotator: annotator.to_string(),
                documents,
                kappa_documents: pairs.len(),
                kappa: if pairs.len() < 2 {
                    None
                } else {
                    cohen_kappa(pairs)
                },
            }
        })
        .collect();
    Agreement {
        alpha,
        pairable_documents,
        annotators,
    }
}

/// The category that occurs most often in `categories`; None when there is none or the most
/// frequent ones tie.
pub fn majority(categories: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for category in categories {
        *counts.entry(category).or_default() += 1;
    }
    let top = *counts.values().max()?;
    let mut at_top = counts.iter().filter(|(_, n)| **n == top);
    let (category, _) = at_top.next()?;
    if at_top.next().is_some() {
        None
    } else {
        Some(*category)
    }
}

/// Cohen's kappa of (rater 1, rater 2) category pairs, unweighted; None when the pairs are
/// empty or the expected disagreement is 0 (both raters give the same single category).
pub fn cohen_kappa(pairs: &[(u32, u32)]) -> Option<f64> {
    let mut categories: Vec<u32> = pairs.iter().flat_map(|(a, b)| [*a, *b]).collect();
    categories.sort_unstable();
    categories.dedup();
    let index = |c: u32| {
        categories
            .binary_search(&c)
            .expect("a category of the pairs")
    };
    let k = categories.len();
    let mut confusion = vec![vec![0.0f64; k]; k];
    for &(a, b) in pairs {
        confusion[index(a)][index(b)] += 1.0;
    }
    let total = pairs.len() as f64;
    if total == 0.0 {
        return None;
    }
    let rows: Vec<f64> = confusion.iter().map(|row| row.iter().sum()).collect();
    let columns: Vec<f64> = (0..k)
        .map(|j| confusion.iter().map(|row| row[j]).sum())
        .collect();
    let mut observed = 0.0;
    let mut expected = 0.0;
    for i in 0..k {
        for j in 0..k {
            if i != j {
                observed += confusion[i][j];
                expected += rows[i] * columns[j] / total;
            }
        }
    }
    if expected == 0.0 {
        None
    } else {
        Some(1.0 - observed / expected)
    }
}

/// Krippendorff's alpha (nominal) of the documents' votes and the number of pairable documents.
fn krippendorff_alpha_nominal(
    by_document: &BTreeMap<i64, BTreeMap<&str, u32>>,
) -> (Option<f64>, usize) {
    let mut categories: Vec<u32> = by_document
        .values()
        .filter(|votes| votes.len() >= 2)
        .flat_map(|votes| votes.values().copied())
        .collect();
    categories.sort_unstable();
    categories.dedup();
    let k = categories.len();
    let mut coincidences = vec![vec![0.0f64; k]; k];
    let mut pairable = 0;
    for votes in by_document.values() {
        let m = votes.len();
        if m < 2 {
            continue;
        }
        pairable += 1;
        let mut counts = vec![0.0f64; k];
        for category in votes.values() {
            counts[categories
                .binary_search(category)
                .expect("a paired category")] += 1.0;
        }
        let scale = (m - 1) as f64;
        for c in 0..k {
            for j in 0..k {
                let same = if c == j { 1.0 } else { 0.0 };
                coincidences[c][j] += counts[c] * (counts[j] - same) / scale;
            }
        }
    }
    if pairable == 0 {
        return (None, 0);
    }
    let totals: Vec<f64> = coincidences.iter().map(|row| row.iter().sum()).collect();
    let n: f64 = totals.iter().sum();
    let mut observed = 0.0;
    let mut expected = 0.0;
    for c in 0..k {
        for j in 0..k {
            if c != j {
                observed += coincidences[c][j];
                expected += totals[c] * totals[j] / (n - 1.0);
            }
        }
    }
    if expected == 0.0 {
        (None, pairable)
    } else {
        (Some(1.0 - observed / expected), pairable)
    }
}

/// The agreement on one label among the documents of one source.
#[derive(Debug, Clone)]
pub struct Group {
    pub label: String,
    pub source: String,
    /// Latest votes (one per document and annotator).
    pub votes: usize,
    pub agreement: Agreement,
    /// The same figures over the votes made under each guideline version (None: votes made
    /// under no guideline), ascending with None first.
    pub by_guideline: Vec<(Option<i32>, usize, Agreement)>,
}

/// Agreement per (label, source) over each annotator's latest vote per document and label,
/// only `source` and `label` when given; ordered by label, then source. Reads the matching
/// annotations once, in order, holding one group's votes at a time.
pub async fn by_label_and_source(
    pool: &sqlx::PgPool,
    source: Option<&str>,
    label: Option<&str>,
) -> Result<Vec<Group>, sqlx::Error> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<_, (String, String, i64, String, bool, Option<i32>)>(
        "SELECT DISTINCT ON (a.label, d.source, a.document_id, a.annotator)
                a.label, d.source, a.document_id, a.annotator, a.value, a.guideline_version
         FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE ($1::text IS NULL OR d.source = $1) AND ($2::text IS NULL OR a.label = $2)
         ORDER BY a.label, d.source, a.document_id, a.annotator, a.annotated_at DESC, a.id DESC",
    )
    .bind(source)
    .bind(label)
    .fetch(pool);
    let mut groups = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut votes: Vec<(i64, String, u32, Option<i32>)> = Vec::new();
    while let Some((label, source, document, annotator, value, guideline)) = rows.try_next().await?
    {
        let key = (label, source);
        if current.as_ref() != Some(&key) {
            if let Some((label, source)) = current.take() {
                groups.push(group(label, source, std::mem::take(&mut votes)));
            }
            current = Some(key);
        }
        votes.push((document, annotator, u32::from(value), guideline));
    }
    if let Some((label, source)) = current {
        groups.push(group(label, source, votes));
    }
    Ok(groups)
}

fn group(label: String, source: String, votes: Vec<(i64, String, u32, Option<i32>)>) -> Group {
    let all: Vec<(i64, &str, u32)> = votes
        .iter()
        .map(|(d, a, c, _)| (*d, a.as_str(), *c))
        .collect();
    let mut versions: Vec<Option<i32>> = votes.iter().map(|v| v.3).collect();
    versions.sort_unstable();
    versions.dedup();
    let by_guideline = versions
        .into_iter()
        .map(|version| {
            let of: Vec<(i64, &str, u32)> = votes
                .iter()
                .filter(|v| v.3 == version)
                .map(|(d, a, c, _)| (*d, a.as_str(), *c))
                .collect();
            (version, of.len(), agreement(&of))
        })
        .collect();
    Group {
        label,
        source,
        votes: all.len(),
        agreement: agreement(&all),
        by_guideline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("a figure");
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn alpha_of_two_annotators_hand_computed() {
        // Units: (0,0), (1,1), (0,1), (1,1). Coincidences: o00 = 2, o11 = 4, o01 = o10 = 1;
        // n0 = 3, n1 = 5, n = 8. D_o = 2, D_e = 2 * 3 * 5 / 7 = 30 / 7; alpha = 1 - 14 / 30.
        let votes = [
            (1, "a", 0),
            (1, "b", 0),
            (2, "a", 1),
            (2, "b", 1),
            (3, "a", 0),
            (3, "b", 1),
            (4, "a", 1),
            (4, "b", 1),
        ];
        let result = agreement(&votes);
        close(result.alpha, 1.0 - 14.0 / 30.0);
        assert_eq!(result.pairable_documents, 4);
    }

    #[test]
    fn single_votes_are_not_pairable_and_leave_alpha_unchanged() {
        let mut votes = vec![
            (1, "a", 0),
            (1, "b", 0),
            (2, "a", 1),
            (2, "b", 1),
            (3, "a", 0),
            (3, "b", 1),
            (4, "a", 1),
            (4, "b", 1),
        ];
        let before = agreement(&votes).alpha;
        votes.push((5, "c", 0));
        votes.push((6, "a", 1));
        let after = agreement(&votes);
        assert_eq!(after.alpha, before);
        assert_eq!(after.pairable_documents, 4);
    }

    #[test]
    fn alpha_of_three_annotators_with_three_categories() {
        // Unit 1: (0,0,1) m=3: o00 += 2*1/2 = 1, o01 += 2*1/2 = 1, o10 += 1. Unit 2: (2,2) m=2:
        // o22 += 2. Unit 3: (1,2) m=2: o12 += 1, o21 += 1. n0 = 2, n1 = 2, n2 = 3, n = 7.
        // D_o = 1 + 1 + 1 + 1 = 4; D_e = (2*2 + 2*3 + 2*3) * 2 / 6 = 32 / 6.
        let votes = [
            (1, "a", 0),
            (1, "b", 0),
            (1, "c", 1),
            (2, "a", 2),
            (2, "c", 2),
            (3, "b", 1),
            (3, "c", 2),
        ];
        close(agreement(&votes).alpha, 1.0 - 4.0 / (32.0 / 6.0));
    }

    #[test]
    fn alpha_is_none_without_pairs_or_without_expected_disagreement() {
        assert_eq!(agreement(&[(1, "a", 1), (2, "b", 0)]).alpha, None);
        assert_eq!(agreement::<&str>(&[]).alpha, None);
        let same = [
            (1, "a", 1),
            (1, "b", 1),
            (2, "a", 1),
            (2, "b", 1),
            (3, "c", 0),
        ];
        assert_eq!(agreement(&same).alpha, None);
    }

    #[test]
    fn perfect_agreement_gives_alpha_one() {
        let votes = [(1, "a", 1), (1, "b", 1), (2, "a", 0), (2, "b", 0)];
        close(agreement(&votes).alpha, 1.0);
    }

    #[test]
    fn kappa_hand_computed() {
        // Confusion [[2, 1], [0, 1]]: rows 3, 1; columns 2, 2; N = 4. Observed off-diagonal 1;
        // expected 3*2/4 + 1*2/4 = 2; kappa = 1 - 1/2.
        close(cohen_kappa(&[(0, 0), (0, 0), (0, 1), (1, 1)]), 0.5);
        close(cohen_kappa(&[(0, 1), (1, 0)]), -1.0);
        // Constant and different: expected disagreement 2, observed 2.
        close(cohen_kappa(&[(0, 1), (0, 1)]), 0.0);
        assert_eq!(cohen_kappa(&[(1, 1), (1, 1)]), None);
        assert_eq!(cohen_kappa(&[]), None);
    }

    #[test]
    fn majority_leaves_ties_out() {
        assert_eq!(majority([1, 1, 0]), Some(1));
        assert_eq!(majority([1, 0]), None);
        assert_eq!(majority([2, 2, 1, 1, 0]), None);
        assert_eq!(majority([2]), Some(2));
        assert_eq!(majority([]), None);
    }

    #[test]
    fn annotators_against_the_others_consensus() {
        // Three annotators on four documents; c voted only on 1 and 2.
        let votes = [
            (1, "a", 1),
            (1, "b", 1),
            (1, "c", 0),
            (2, "a", 0),
            (2, "b", 0),
            (2, "c", 0),
            (3, "a", 1),
            (3, "b", 0),
            (4, "a", 1),
            (4, "b", 1),
            (4, "b", 1),
        ];
        let result = agreement(&votes);
        let names: Vec<&str> = result
            .annotators
            .iter()
            .map(|a| a.annotator.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        let a = &result.annotators[0];
        // a against b and c: doc 1 others (1, 0) tie -> out; doc 2 (0,0); doc 3 (1,0); doc 4 (1,1).
        assert_eq!((a.documents, a.kappa_documents), (4, 3));
        // Confusion [[1, 0], [1, 1]]: rows 1, 2; columns 2, 1; expected 1*1/3 + 2*2/3 = 5/3.
        close(a.kappa, 1.0 - 1.0 / (5.0 / 3.0));
        let c = &result.annotators[2];
        // c against a and b: doc 1 consensus 1, doc 2 consensus 0; c says 0, 0.
        assert_eq!((c.documents, c.kappa_documents), (2, 2));
        close(c.kappa, 0.0);
    }

    #[test]
    fn kappa_needs_two_documents() {
        let votes = [(1, "a", 1), (1, "b", 0), (2, "a", 1)];
        let result = agreement(&votes);
        assert_eq!(result.annotators[0].kappa_documents, 1);
        assert_eq!(result.annotators[0].kappa, None);
    }
}
