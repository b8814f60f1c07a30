//! `suspect_label`: consensus labels that out-of-fold predictions confidently contradict
//! (confident learning, the approach cleanlab made known).
//!
//! For each considered label (multi-class: the one class label), the source's documents with a
//! consensus (as the next dataset build would compute it: latest votes, majority, ties by
//! `datasets.tie_rule`) and a stored embedding of the version's embedding model for their
//! current text are cut into [`FOLDS`] folds (stratified on the consensus; inside a class,
//! ordered by a hash of the document id with [`FOLD_SEED`], dealt round-robin). A logistic
//! regression (`crate::ml::out_of_fold`) trained on the other folds gives each document's
//! class probabilities. Per class c, the threshold t_c is the mean out-of-fold probability of
//! c over the documents whose consensus is c. A document is a suspect when the probability of
//! another class c is `>=` t_c. Suspects come first, by self-confidence (the out-of-fold
//! probability of the consensus) ascending, then every other considered document by
//! self-confidence ascending; ties by document id. A document is listed once, under its most
//! suspect label.
use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use sqlx::{PgConnection, Row};

use super::{
    f3, stream_documents_into, unprocessable, Counts, DocColumns, Ranked, Ranking, Reason,
    ReviewError, ReviewVersion, SkippedLabel, SuspectReason,
};
use crate::config::Settings;
use crate::datasets::consensus;
use crate::datasets::TaskType;
use crate::ml::out_of_fold::{out_of_fold_probabilities, FoldInput};

/// An annotated document with a consensus: id, current checksum, label -> 0/1/masked.
type WithConsensus = (i64, String, BTreeMap<String, Option<u8>>);

/// Checksums whose vectors are read per statement.
const VECTOR_BATCH: usize = 2_000;

/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// Seed of the fold assignment.
pub const FOLD_SEED: u64 = 0x005E_ED0F_F01D;

/// One label's (or the multi-class task's) data: rows with a consensus class and a vector.
#[derive(Debug, Clone)]
pub struct LabelData {
    /// The label (multi-class: empty, the classes are the labels).
    pub label: String,
    /// Class names: `["false", "true"]` for a label, the classes for multi-class.
    pub classes: Vec<String>,
    pub document_ids: Vec<i64>,
    pub given: Vec<usize>,
    pub dims: usize,
    pub features: Vec<f32>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Stratified folds: inside each class, documents ordered by a seeded hash of their id are
/// dealt to folds 0, 1, …, k−1, 0, … (the same documents get the same folds whatever their
/// order).
pub fn assign_folds(document_ids: &[i64], given: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut by_class: BTreeMap<usize, Vec<(u64, i64, usize)>> = BTreeMap::new();
    for (row, (id, class)) in document_ids.iter().zip(given).enumerate() {
        let key = splitmix64(seed ^ splitmix64(*id as u64));
        by_class.entry(*class).or_default().push((key, *id, row));
    }
    let mut folds = vec![0; document_ids.len()];
    for members in by_class.values_mut() {
        members.sort_unstable();
        for (rank, (_, _, row)) in members.iter().enumerate() {
            folds[*row] = rank % k;
        }
    }
    folds
}

/// One document's verdict for one label.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub document_id: i64,
    pub reason: SuspectReason,
}

/// Confident learning on out-of-fold probabilities (`n × classes`, row-major): per-class
/// thresholds, then each row's self-confidence and the class that contradicts it most.
pub fn verdicts(data: &LabelData, probabilities: &[f32]) -> Vec<Verdict> {
    let c = data.classes.len();
    let thresholds: Vec<Option<f32>> = (0..c)
        .map(|class| {
            let (sum, n) = data
                .given
                .iter()
                .enumerate()
                .filter(|(_, g)| **g == class)
                .fold((0f64, 0usize), |(s, n), (row, _)| {
                    (s + probabilities[row * c + class] as f64, n + 1)
                });
            (n > 0).then(|| (sum / n as f64) as f32)
        })
        .collect();
    let binary = !data.label.is_empty() && c == 2;
    data.given
        .iter()
        .enumerate()
        .map(|(row, g)| {
            let p = &probabilities[row * c..(row + 1) * c];
            // The contradicting class: the most probable other class over its threshold, else
            // the most probable other class.
            let others = (0..c).filter(|o| o != g && thresholds[*o].is_some());
            let over = others
                .clone()
                .filter(|o| p[*o] >= thresholds[*o].unwrap_or(f32::INFINITY))
                .max_by(|a, b| p[*a].total_cmp(&p[*b]).then(b.cmp(a)));
            let other =
                over.or_else(|| others.max_by(|a, b| p[*a].total_cmp(&p[*b]).then(b.cmp(a))));
            // `unfit` guarantees another class with a threshold; the fallback is never used.
            let other = other.unwrap_or(usize::from(*g == 0));
            Verdict {
                document_id: data.document_ids[row],
                reason: SuspectReason {
                    label: if binary {
                        data.label.clone()
                    } else {
                        data.classes[*g].clone()
                    },
                    consensus: binary.then_some(*g == 1),
                    probability: p[*g],
                    other: data.classes[other].clone(),
                    other_probability: p[other],
                    other_threshold: thresholds[other].unwrap_or(1.0),
                    suspect: over.is_some(),
                },
            }
        })
        .collect()
}

/// Why a label cannot be checked, or None when it can.
pub fn unfit(data: &LabelData) -> Option<String> {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for g in &data.given {
        *counts.entry(*g).or_default() += 1;
    }
    if counts.is_empty() {
        return Some("no document of the source has a consensus on it".into());
    }
    if counts.len() < 2 {
        return Some(format!(
            "{} document(s) with a consensus, all of one class: nothing can contradict it",
            data.given.len()
        ));
    }
    if let Some((class, n)) = counts.iter().find(|(_, n)| **n < 2) {
        return Some(format!(
            "class `{}` has {n} document(s); out-of-fold predictions need at least 2",
            data.classes[*class]
        ));
    }
    if data.given.len() < FOLDS {
        return Some(format!(
            "{} document(s) with a consensus; {FOLDS} folds need at least {FOLDS}",
            data.given.len()
        ));
    }
    None
}

/// Checks every label (blocking: trains `FOLDS` small models per label). Returns the verdicts
/// and the labels that could not be checked.
pub fn check_labels(
    labels: &[LabelData],
) -> Result<(Vec<Verdict>, Vec<SkippedLabel>), ReviewError> {
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    for data in labels {
        if let Some(reason) = unfit(data) {
            skipped.push(SkippedLabel {
                label: if data.label.is_empty() {
                    "(classes)".into()
                } else {
                    data.label.clone()
                },
                reason,
            });
            continue;
        }
        let fold_of = assign_folds(&data.document_ids, &data.given, FOLDS, FOLD_SEED);
        let targets: Vec<i64> = data.given.iter().map(|g| *g as i64).collect();
        let probabilities = out_of_fold_probabilities(&FoldInput {
            dims: data.dims,
            features: &data.features,
            classes: data.classes.len(),
            targets: &targets,
            fold_of: &fold_of,
            folds: FOLDS,
        })
        .map_err(|e| ReviewError::Internal(format!("out-of-fold training: {e}")))?;
        all.extend(verdicts(data, &probabilities));
    }
    Ok((all, skipped))
}

/// Suspects first by self-confidence ascending, then the rest the same way; one item per
/// document (its most suspect label).
pub fn rank_suspects(verdicts: Vec<Verdict>) -> Vec<Ranked> {
    let key = |v: &Verdict| (!v.reason.suspect, v.reason.probability);
    let first = |a: &Verdict, b: &Verdict| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
    };
    let mut best: BTreeMap<i64, Verdict> = BTreeMap::new();
    for v in verdicts {
        let replace = best
            .get(&v.document_id)
            .is_none_or(|b| first(&v, b) == std::cmp::Ordering::Less);
        if replace {
            best.insert(v.document_id, v);
        }
    }
    let mut list: Vec<Verdict> = best.into_values().collect();
    list.sort_by(|a, b| first(a, b).then(a.document_id.cmp(&b.document_id)));
    list.into_iter()
        .map(|v| {
            let r = &v.reason;
            let given = match r.consensus {
                Some(value) => format!("consensus `{}` = {value}", r.label),
                None => format!("consensus class `{}`", r.label),
            };
            let explanation = if r.suspect {
                format!(
                    "{given}, but out-of-fold p({}) = {} >= {} (its class threshold); p(consensus) = {}",
                    r.other,
                    f3(r.other_probability as f64),
                    f3(r.other_threshold as f64),
                    f3(r.probability as f64)
                )
            } else {
                format!(
                    "{given} with out-of-fold probability {}; p({}) = {} is below its class threshold {}",
                    f3(r.probability as f64),
                    r.other,
                    f3(r.other_probability as f64),
                    f3(r.other_threshold as f64)
                )
            };
            Ranked {
                document_id: v.document_id,
                reason: Reason::SuspectLabel(v.reason),
                explanation,
            }
        })
        .collect()
}

/// Threads for the out-of-fold fits: `training.threads`, else half the cores (at least one),
/// so that serving keeps the rest.
fn fit_threads(settings: &Settings) -> i32 {
    if settings.training.threads > 0 {
        settings.training.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1) as i32)
    }
}

/// The dimensions of the version's embedding model, or why it cannot be read here.
pub(super) fn embedding_dimensions(
    settings: &Settings,
    version: &ReviewVersion,
) -> Result<usize, ReviewError> {
    match settings.embedding_models.get(&version.embedding_model) {
        Some(embedding) => Ok(embedding.dimensions),
        None => Err(unprocessable(
            "unknown_embedding_model",
            "model",
            format!(
                "version {} of `{}` reads `{}` embeddings, which this deployment does not configure",
                version.version, version.model, version.embedding_model
            ),
        )),
    }
}

/// Empty per-label (multi-class: one) fitting inputs.
fn empty_tasks(version: &ReviewVersion, labels: &[String], dims: usize) -> Vec<LabelData> {
    let blank = |label: String, classes: Vec<String>| LabelData {
        label,
        classes,
        document_ids: Vec::new(),
        given: Vec::new(),
        dims,
        features: Vec::new(),
    };
    match version.task {
        TaskType::MultiClass => vec![blank(String::new(), version.labels.clone())],
        TaskType::Binary | TaskType::MultiLabel => labels
            .iter()
            .map(|l| blank(l.clone(), vec!["false".into(), "true".into()]))
            .collect(),
    }
}

/// Adds one document with a consensus and its vector to each task it has a class in.
fn add_row(tasks: &mut [LabelData], version: &ReviewVersion, row: &WithConsensus, vector: &[u8]) {
    let (id, _, c) = row;
    for data in tasks.iter_mut() {
        let class = match version.task {
            TaskType::MultiClass => version
                .labels
                .iter()
                .position(|l| c.get(l) == Some(&Some(1))),
            TaskType::Binary | TaskType::MultiLabel => match c.get(&data.label) {
                Some(Some(value)) => Some(usize::from(*value == 1)),
                _ => None,
            },
        };
        let Some(class) = class else { continue };
        data.document_ids.push(*id);
        data.given.push(class);
        data.features
            .extend(crate::embedding::bytes_to_vector(vector));
    }
}

/// The vectors of a batch of checksums ($1 model, $2 dimensions, $3 checksums); see
/// [`add_vectors`].
pub const VECTORS_SQL: &str = "SELECT c.checksum, v.vector
             FROM unnest($3::text[]) AS c(checksum)
             CROSS JOIN LATERAL (SELECT e.vector FROM embeddings e
                                 WHERE e.model = $1 AND e.dimensions = $2
                                   AND e.checksum = c.checksum LIMIT 1) v";

/// Reads the vectors of `rows`' checksums, a batch at a time, each by a probe of the
/// embeddings' primary key (`unnest` of the batch joined laterally; the `LIMIT 1` keeps the
/// planner from flattening the lookup into a hash join over every vector of the model, which
/// it does without it), and adds each row to its tasks in order.
/// Returns how many rows had no vector.
async fn add_vectors(
    reader: &mut PgConnection,
    version: &ReviewVersion,
    dims: usize,
    rows: &[WithConsensus],
    tasks: &mut [LabelData],
) -> Result<i64, sqlx::Error> {
    let mut without = 0i64;
    for batch in rows.chunks(VECTOR_BATCH) {
        let mut checksums: Vec<&str> = batch.iter().map(|r| r.1.as_str()).collect();
        checksums.sort_unstable();
        checksums.dedup();
        let mut vectors: HashMap<String, Vec<u8>> = HashMap::with_capacity(checksums.len());
        let mut stream = sqlx::query(VECTORS_SQL)
            .bind(&version.embedding_model)
            .bind(dims as i32)
            .bind(&checksums)
            .fetch(&mut *reader);
        while let Some(row) = stream.try_next().await? {
            vectors.insert(row.get("checksum"), row.get("vector"));
        }
        drop(stream);
        for row in batch {
            match vectors.get(&row.1) {
                Some(vector) => add_row(tasks, version, row, vector),
                None => without += 1,
            }
        }
    }
    Ok(without)
}

/// What `suspect_label` read from one snapshot: the fitting inputs and the counts.
#[derive(Debug)]
pub struct Loaded {
    pub tasks: Vec<LabelData>,
    pub counts: Counts,
}

/// Streams the source's documents with their votes, keeps those with a consensus and reads
/// their vectors by key. Memory: the fitting inputs (documents with a consensus × dimensions
/// × 4 bytes per label, which the full-batch fits need), never the source's texts or the
/// model's other vectors.
pub(super) async fn load(
    reader: &mut PgConnection,
    settings: &Settings,
    version: &ReviewVersion,
    source: Option<&str>,
    labels: &[String],
) -> Result<Loaded, ReviewError> {
    let dims = embedding_dimensions(settings, version)?;
    let tie = settings.datasets.tie_rule;
    let (mut documents, mut empty, mut annotated, mut without_consensus) = (0i64, 0, 0, 0);
    let mut with_consensus: Vec<WithConsensus> = Vec::new();
    let columns = DocColumns {
        scores: false,
        votes: true,
    };
    stream_documents_into(reader, None, settings, version, source, columns, |doc| {
        let Some(checksum) = doc.checksum else {
            empty += 1;
            return Vec::new();
        };
        documents += 1;
        if doc.votes.is_empty() {
            return Vec::new();
        }
        annotated += 1;
        let v = &doc.votes;
        let c = match version.task {
            TaskType::MultiClass => consensus::multi_class(v, &version.labels),
            TaskType::Binary | TaskType::MultiLabel => consensus::multi_label(v, labels, tie),
        };
        let any = match version.task {
            // Multi-class: a consensus class exists. Every class is fitted, whatever `label`
            // asks for (one class alone cannot be fitted); the verdicts are filtered after.
            TaskType::MultiClass => c.labels.values().any(|v| *v == Some(1)),
            _ => labels
                .iter()
                .any(|l| c.labels.get(l).copied().flatten().is_some()),
        };
        if any {
            with_consensus.push((doc.id, checksum, c.labels));
        } else {
            without_consensus += 1;
        }
        Vec::new()
    })
    .await?;
    let mut tasks = empty_tasks(version, labels, dims);
    let without_embedding = add_vectors(reader, version, dims, &with_consensus, &mut tasks).await?;
    Ok(Loaded {
        tasks,
        counts: Counts {
            documents: Some(documents),
            empty_text: Some(empty),
            annotated: Some(annotated),
            without_consensus: Some(without_consensus),
            without_embedding: Some(without_embedding),
            ..Counts::default()
        },
    })
}

/// Fits out of fold (on a blocking thread) and ranks: the items in order and the summary.
pub(super) async fn fit(
    settings: &Settings,
    version: &ReviewVersion,
    labels: &[String],
    loaded: Loaded,
) -> Result<(Vec<Ranked>, Ranking), ReviewError> {
    let started = std::time::Instant::now();
    let Loaded { tasks, counts } = loaded;
    let rows: usize = tasks.iter().map(|t| t.given.len()).sum();
    // One ranking at a time per process, on a fixed thread count: the fits would otherwise
    // compete with each other and with the encoders that serve predictions, and a thread
    // count left over from another task on this pooled thread would change their speed.
    static FITTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let _permit = tokio::time::timeout(std::time::Duration::from_secs(60), FITTING.acquire())
        .await
        .map_err(|_| ReviewError::Busy)?
        .map_err(|e| ReviewError::Internal(e.to_string()))?;
    let threads = fit_threads(settings);
    let (mut verdicts, skipped) = tokio::task::spawn_blocking(move || {
        crate::ml::out_of_fold::set_threads(threads);
        check_labels(&tasks)
    })
    .await
    .map_err(|e| ReviewError::Internal(format!("out-of-fold task: {e}")))??;
    if version.task == TaskType::MultiClass {
        // `label` asked: the documents whose consensus, or whose contradicting class, it is.
        verdicts.retain(|v| labels.contains(&v.reason.label) || labels.contains(&v.reason.other));
    }
    tracing::debug!(
        rows,
        fit_ms = started.elapsed().as_millis() as u64,
        "suspect_label fitted"
    );
    let without_embedding = counts.without_embedding.unwrap_or(0);
    let hint = (without_embedding > 0).then(|| {
        format!(
            "{without_embedding} document(s) with a consensus have no stored `{}` embedding for their current text and were not considered: \
             build a dataset of them (POST /api/v1/datasets with embedding model `{}`) and ask again",
            version.embedding_model, version.embedding_model
        )
    });
    Ok((
        rank_suspects(verdicts),
        Ranking {
            counts,
            labels: labels.to_vec(),
            skipped_labels: skipped,
            hint,
            ..Ranking::default()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_and_independent_of_order() {
        let ids: Vec<i64> = (1..=50).collect();
        let given: Vec<usize> = ids.iter().map(|i| usize::from(i % 5 == 0)).collect();
        let folds = assign_folds(&ids, &given, 5, FOLD_SEED);
        for class in [0, 1] {
            let mut per_fold = [0; 5];
            for (f, g) in folds.iter().zip(&given) {
                if *g == class {
                    per_fold[*f] += 1;
                }
            }
            let (lo, hi) = (
                per_fold.iter().min().unwrap(),
                per_fold.iter().max().unwrap(),
            );
            assert!(hi - lo <= 1, "class {class}: {per_fold:?}");
        }
        let rev_ids: Vec<i64> = ids.iter().rev().copied().collect();
        let rev_given: Vec<usize> = given.iter().rev().copied().collect();
        let rev = assign_folds(&rev_ids, &rev_given, 5, FOLD_SEED);
        let rev: Vec<usize> = rev.into_iter().rev().collect();
        assert_eq!(folds, rev);
    }

    #[test]
    fn thresholds_are_class_means_and_suspects_come_first() {
        let data = LabelData {
            label: "spam".into(),
            classes: vec!["false".into(), "true".into()],
            document_ids: vec![1, 2, 3, 4],
            given: vec![0, 0, 1, 1],
            dims: 1,
            features: vec![0.0; 4],
        };
        // p(true): 0.1, 0.9 (labelled false, looks true), 0.8, 0.6.
        let p = [0.9, 0.1, 0.1, 0.9, 0.2, 0.8, 0.4, 0.6];
        let v = verdicts(&data, &p);
        // t_true = (0.8 + 0.6) / 2 = 0.7; t_false = (0.9 + 0.1) / 2 = 0.5.
        assert!((v[1].reason.other_threshold - 0.7).abs() < 1e-6);
        assert!(v[1].reason.suspect, "{v:?}");
        assert_eq!(v[1].reason.consensus, Some(false));
        assert!(!v[0].reason.suspect);
        // Document 4: p(false) = 0.4 < t_false 0.5: not a suspect.
        assert!(!v[3].reason.suspect);
        let ranked = rank_suspects(v);
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        // Suspect 2 first; then by self-confidence: 4 (0.6), 3 (0.8), 1 (0.9).
        assert_eq!(ids, vec![2, 4, 3, 1]);
    }
}
