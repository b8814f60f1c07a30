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
//!
//! Cost per document is flat in the corpus: the vectors are held once (whatever the number of
//! labels), in memory up to `review.vectors_in_memory_mb` and in a temporary file past it;
//! each fold's model is fitted on at most `review.suspect_fit_max_rows` rows (a per-class
//! proportional sample, the first rows of each class in the fold order below), and every
//! document is then predicted, a batch at a time, by the model of the folds without it. The
//! ranking is sorted by Postgres as it is stored (`store::Stager`), not in memory.
use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use sqlx::{PgConnection, Row};

use super::{
    f3, store, stream_documents_into, unprocessable, Counts, DocColumns, Ranked, Ranking, Reason,
    ReviewError, ReviewVersion, SkippedLabel, SuspectReason,
};
use crate::config::Settings;
use crate::datasets::consensus;
use crate::datasets::TaskType;
use crate::ml::out_of_fold::{out_of_fold_probabilities, FoldInput};
use crate::ml::vector_rows::VectorRows;

/// A task's class of a document: none.
const NO_CLASS: u16 = u16::MAX;

/// An annotated document with a consensus, compactly (a million of them are held while their
/// vectors are read): id, the MD5 of its current text, its class in each task (`NO_CLASS`).
struct WithConsensus {
    id: i64,
    checksum: u128,
    classes: Box<[u16]>,
}

/// Checksums whose vectors are read per statement.
const VECTOR_BATCH: usize = 2_000;

/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// Seed of the fold assignment.
pub const FOLD_SEED: u64 = 0x005E_ED0F_F01D;
/// A class keeps at least this many rows (or all it has) in a sampled fit.
pub const MIN_FIT_PER_CLASS: usize = 100;

/// One label's (or the multi-class task's) documents with a consensus class and a vector.
#[derive(Debug, Clone)]
pub struct LabelData {
    /// The label (multi-class: empty, the classes are the labels).
    pub label: String,
    /// Class names: `["false", "true"]` for a label, the classes for multi-class.
    pub classes: Vec<String>,
    pub document_ids: Vec<i64>,
    pub given: Vec<usize>,
    /// Each document's row in the shared vectors.
    pub rows: Vec<usize>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Each class's rows ordered by a seeded hash of their document id (then id): the order that
/// deals folds and picks a fit sample, the same whatever the rows' order.
fn hash_order(document_ids: &[i64], given: &[usize], seed: u64) -> BTreeMap<usize, Vec<usize>> {
    let mut by_class: BTreeMap<usize, Vec<(u64, i64, usize)>> = BTreeMap::new();
    for (row, (id, class)) in document_ids.iter().zip(given).enumerate() {
        let key = splitmix64(seed ^ splitmix64(*id as u64));
        by_class.entry(*class).or_default().push((key, *id, row));
    }
    by_class
        .into_iter()
        .map(|(class, mut members)| {
            members.sort_unstable();
            (class, members.into_iter().map(|(_, _, row)| row).collect())
        })
        .collect()
}

/// Stratified folds: inside each class, documents in hash order are dealt to folds 0, 1, …,
/// k−1, 0, … (the same documents get the same folds whatever their order).
pub fn assign_folds(document_ids: &[i64], given: &[usize], k: usize, seed: u64) -> Vec<usize> {
    let mut folds = vec![0; document_ids.len()];
    for members in hash_order(document_ids, given, seed).values() {
        for (rank, row) in members.iter().enumerate() {
            folds[*row] = rank % k;
        }
    }
    folds
}

/// Which rows the out-of-fold models are fitted on: all of them up to `max_rows`; past it,
/// each class's first rows in hash order, in proportion to the class's share (rounded up, at
/// least [`MIN_FIT_PER_CLASS`] or the whole class), so that the sample keeps the classes'
/// priors and is spread evenly over the folds. Deterministic, independent of row order.
pub fn fit_sample(document_ids: &[i64], given: &[usize], max_rows: usize, seed: u64) -> Vec<bool> {
    let n = document_ids.len();
    if n <= max_rows {
        return vec![true; n];
    }
    let mut keep = vec![false; n];
    for members in hash_order(document_ids, given, seed).values() {
        let m = members.len();
        let quota = (m * max_rows).div_ceil(n).max(MIN_FIT_PER_CLASS).min(m);
        for row in &members[..quota] {
            keep[*row] = true;
        }
    }
    keep
}

/// One document's verdict for one label (compact: the names are the task's).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub document_id: i64,
    /// The task (index into the labels' data) and, in its classes, the consensus and the
    /// contradicting class.
    pub task: usize,
    pub given: usize,
    pub other: usize,
    /// Out-of-fold probability of the consensus (the self-confidence).
    pub probability: f32,
    pub other_probability: f32,
    pub other_threshold: f32,
    pub suspect: bool,
}

impl Verdict {
    /// Where it ranks: suspects first, then by self-confidence ascending, ties by document id
    /// (the order Postgres sorts the stored ranking in).
    pub fn sort_key(&self) -> store::SortKey {
        (
            i16::from(!self.suspect),
            f64::from(self.probability),
            self.document_id,
            0,
        )
    }

    /// The verdict as the API shows it.
    pub fn reason(&self, tasks: &[LabelData]) -> SuspectReason {
        let data = &tasks[self.task];
        let binary = !data.label.is_empty() && data.classes.len() == 2;
        SuspectReason {
            label: if binary {
                data.label.clone()
            } else {
                data.classes[self.given].clone()
            },
            consensus: binary.then_some(self.given == 1),
            probability: self.probability,
            other: data.classes[self.other].clone(),
            other_probability: self.other_probability,
            other_threshold: self.other_threshold,
            suspect: self.suspect,
        }
    }

    /// The ranked item: the reason and its explanation.
    pub fn ranked(&self, tasks: &[LabelData]) -> Ranked {
        let r = self.reason(tasks);
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
            document_id: self.document_id,
            reason: Reason::SuspectLabel(r),
            explanation,
        }
    }
}

/// Confident learning on out-of-fold probabilities (`n × classes`, row-major) of task `task`:
/// per-class thresholds, then each row's self-confidence and the class that contradicts it
/// most.
pub fn verdicts(data: &LabelData, task: usize, probabilities: &[f32]) -> Vec<Verdict> {
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
                task,
                given: *g,
                other,
                probability: p[*g],
                other_probability: p[other],
                other_threshold: thresholds[other].unwrap_or(1.0),
                suspect: over.is_some(),
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

/// Checks every label (blocking: trains `FOLDS` small models per label, each on at most
/// `max_fit_rows` rows). Returns the verdicts and the labels that could not be checked.
pub fn check_labels(
    vectors: &VectorRows,
    labels: &[LabelData],
    max_fit_rows: usize,
) -> Result<(Vec<Verdict>, Vec<SkippedLabel>), ReviewError> {
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    for (task, data) in labels.iter().enumerate() {
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
        let in_fit = fit_sample(&data.document_ids, &data.given, max_fit_rows, FOLD_SEED);
        let targets: Vec<i64> = data.given.iter().map(|g| *g as i64).collect();
        let probabilities = out_of_fold_probabilities(&FoldInput {
            vectors,
            rows: &data.rows,
            classes: data.classes.len(),
            targets: &targets,
            fold_of: &fold_of,
            in_fit: &in_fit,
            folds: FOLDS,
        })
        .map_err(|e| ReviewError::Internal(format!("out-of-fold training: {e}")))?;
        all.extend(verdicts(data, task, &probabilities));
    }
    Ok((all, skipped))
}

/// One verdict per document: its most suspect label (the first in ranking order).
pub fn most_suspect_per_document(mut verdicts: Vec<Verdict>) -> Vec<Verdict> {
    verdicts.sort_unstable_by(|a, b| {
        let (ka, kb) = (a.sort_key(), b.sort_key());
        a.document_id
            .cmp(&b.document_id)
            .then(ka.0.cmp(&kb.0))
            .then(ka.1.total_cmp(&kb.1))
            .then(a.task.cmp(&b.task))
    });
    verdicts.dedup_by_key(|v| v.document_id);
    verdicts
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
fn empty_tasks(version: &ReviewVersion, labels: &[String]) -> Vec<LabelData> {
    let blank = |label: String, classes: Vec<String>| LabelData {
        label,
        classes,
        document_ids: Vec::new(),
        given: Vec::new(),
        rows: Vec::new(),
    };
    match version.task {
        TaskType::MultiClass => vec![blank(String::new(), version.labels.clone())],
        TaskType::Binary | TaskType::MultiLabel => labels
            .iter()
            .map(|l| blank(l.clone(), vec!["false".into(), "true".into()]))
            .collect(),
    }
}

/// A document's class in each task (`NO_CLASS` where it has none) from its consensus.
fn task_classes(
    tasks: &[LabelData],
    version: &ReviewVersion,
    consensus: &BTreeMap<String, Option<u8>>,
) -> Box<[u16]> {
    tasks
        .iter()
        .map(|data| {
            let class = match version.task {
                TaskType::MultiClass => version
                    .labels
                    .iter()
                    .position(|l| consensus.get(l) == Some(&Some(1))),
                TaskType::Binary | TaskType::MultiLabel => match consensus.get(&data.label) {
                    Some(Some(value)) => Some(usize::from(*value == 1)),
                    _ => None,
                },
            };
            class.map_or(NO_CLASS, |c| c as u16)
        })
        .collect()
}

/// The vectors of a batch of checksums ($1 model, $2 dimensions, $3 checksums); see
/// [`add_vectors`].
pub const VECTORS_SQL: &str = "SELECT c.checksum, v.vector
             FROM unnest($3::text[]) AS c(checksum)
             CROSS JOIN LATERAL (SELECT e.vector FROM embeddings e
                                 WHERE e.model = $1 AND e.dimensions = $2
                                   AND e.checksum = c.checksum LIMIT 1) v";

/// Reads the vectors of `docs`' checksums, a batch at a time, each by a probe of the
/// embeddings' primary key (`unnest` of the batch joined laterally; the `LIMIT 1` keeps the
/// planner from flattening the lookup into a hash join over every vector of the model, which
/// it does without it), appends each found vector once to `vectors` and the document to each
/// task it has a class in. Returns how many documents had no vector.
async fn add_vectors(
    reader: &mut PgConnection,
    version: &ReviewVersion,
    docs: &[WithConsensus],
    vectors: &mut VectorRows,
    tasks: &mut [LabelData],
) -> Result<i64, ReviewError> {
    let mut without = 0i64;
    for batch in docs.chunks(VECTOR_BATCH) {
        let mut checksums: Vec<String> = batch
            .iter()
            .map(|d| format!("{:032x}", d.checksum))
            .collect();
        checksums.sort_unstable();
        checksums.dedup();
        let mut found: HashMap<u128, Vec<u8>> = HashMap::with_capacity(checksums.len());
        let mut stream = sqlx::query(VECTORS_SQL)
            .bind(&version.embedding_model)
            .bind(vectors.dims() as i32)
            .bind(&checksums)
            .fetch(&mut *reader);
        while let Some(row) = stream.try_next().await? {
            let checksum: String = row.get("checksum");
            if let Ok(key) = u128::from_str_radix(&checksum, 16) {
                found.insert(key, row.get("vector"));
            }
        }
        drop(stream);
        for doc in batch {
            let Some(vector) = found.get(&doc.checksum) else {
                without += 1;
                continue;
            };
            let row = vectors.len();
            vectors
                .push(&crate::embedding::bytes_to_vector(vector))
                .map_err(|e| ReviewError::Internal(format!("spilling vectors: {e}")))?;
            for (data, class) in tasks.iter_mut().zip(doc.classes.iter()) {
                if *class != NO_CLASS {
                    data.document_ids.push(doc.id);
                    data.given.push(usize::from(*class));
                    data.rows.push(row);
                }
            }
        }
    }
    vectors
        .finish()
        .map_err(|e| ReviewError::Internal(format!("spilling vectors: {e}")))?;
    Ok(without)
}

/// What `suspect_label` read from one snapshot: the vectors (one row per document), each
/// label's fitting inputs, and the counts.
pub struct Loaded {
    pub vectors: VectorRows,
    pub tasks: Vec<LabelData>,
    pub counts: Counts,
}

/// Streams the source's documents with their votes, keeps those with a consensus and reads
/// their vectors by key. Memory: about 50 bytes per document with a consensus while its vector
/// is read, then its vector (past `review.vectors_in_memory_mb`, in a temporary file) and 24
/// bytes per label it has a class for; never the source's texts or the model's other vectors.
pub(super) async fn load(
    reader: &mut PgConnection,
    settings: &Settings,
    version: &ReviewVersion,
    source: Option<&str>,
    labels: &[String],
) -> Result<Loaded, ReviewError> {
    let dims = embedding_dimensions(settings, version)?;
    let tie = settings.datasets.tie_rule;
    let mut tasks = empty_tasks(version, labels);
    let (mut documents, mut empty, mut annotated, mut without_consensus) = (0i64, 0, 0, 0);
    let mut unreadable = 0i64;
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
        // Multi-class: every class is fitted, whatever `label` asks for (one class alone
        // cannot be fitted); the verdicts are filtered after.
        let classes = task_classes(&tasks, version, &c.labels);
        if classes.iter().all(|c| *c == NO_CLASS) {
            without_consensus += 1;
            return Vec::new();
        }
        match u128::from_str_radix(&checksum, 16) {
            Ok(checksum) => with_consensus.push(WithConsensus {
                id: doc.id,
                checksum,
                classes,
            }),
            // Checksums are MD5 hex; one that is not cannot have a stored vector.
            Err(_) => unreadable += 1,
        }
        Vec::new()
    })
    .await?;
    let cap = settings.review.vectors_in_memory_mb.saturating_mul(1 << 20);
    let mut vectors = VectorRows::new(dims, cap);
    let without_embedding =
        add_vectors(reader, version, &with_consensus, &mut vectors, &mut tasks).await? + unreadable;
    drop(with_consensus);
    if vectors.spilled() {
        tracing::info!(
            rows = vectors.len(),
            dims,
            cap_mb = settings.review.vectors_in_memory_mb,
            "suspect_label: vectors past review.vectors_in_memory_mb spilled to a temporary file"
        );
    }
    Ok(Loaded {
        vectors,
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

/// A fitted `suspect_label` ranking: one verdict per document, unordered (Postgres sorts them
/// by [`Verdict::sort_key`] as they are stored), and the labels' names they refer to.
pub struct Fitted {
    pub verdicts: Vec<Verdict>,
    pub tasks: Vec<LabelData>,
}

impl Fitted {
    /// The items to stage, each with its sort key.
    pub fn items(&self) -> impl Iterator<Item = store::Keyed> + '_ {
        self.verdicts.iter().map(|v| store::Keyed {
            key: v.sort_key(),
            item: v.ranked(&self.tasks),
        })
    }
}

/// Fits out of fold (on a blocking thread): the verdicts and the summary.
pub(super) async fn fit(
    settings: &Settings,
    version: &ReviewVersion,
    labels: &[String],
    loaded: Loaded,
) -> Result<(Fitted, Ranking), ReviewError> {
    let started = std::time::Instant::now();
    let Loaded {
        vectors,
        tasks,
        counts,
    } = loaded;
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
    let max_fit_rows = settings.review.suspect_fit_max_rows.max(FOLDS * 2);
    let (verdicts, skipped, tasks) = tokio::task::spawn_blocking(move || {
        crate::ml::out_of_fold::set_threads(threads);
        let (verdicts, skipped) = check_labels(&vectors, &tasks, max_fit_rows)?;
        Ok::<_, ReviewError>((verdicts, skipped, tasks))
    })
    .await
    .map_err(|e| ReviewError::Internal(format!("out-of-fold task: {e}")))??;
    let mut verdicts = most_suspect_per_document(verdicts);
    if version.task == TaskType::MultiClass {
        // `label` asked: the documents whose consensus, or whose contradicting class, it is.
        verdicts.retain(|v| {
            let classes = &tasks[v.task].classes;
            labels.contains(&classes[v.given]) || labels.contains(&classes[v.other])
        });
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
        Fitted { verdicts, tasks },
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
            rows: vec![0, 1, 2, 3],
        };
        // p(true): 0.1, 0.9 (labelled false, looks true), 0.8, 0.6.
        let p = [0.9, 0.1, 0.1, 0.9, 0.2, 0.8, 0.4, 0.6];
        let v = verdicts(&data, 0, &p);
        // t_true = (0.8 + 0.6) / 2 = 0.7; t_false = (0.9 + 0.1) / 2 = 0.5.
        assert!((v[1].other_threshold - 0.7).abs() < 1e-6);
        assert!(v[1].suspect, "{v:?}");
        let tasks = [data];
        assert_eq!(v[1].reason(&tasks).consensus, Some(false));
        assert!(!v[0].suspect);
        // Document 4: p(false) = 0.4 < t_false 0.5: not a suspect.
        assert!(!v[3].suspect);
        let mut ranked = most_suspect_per_document(v);
        ranked.sort_by(|a, b| {
            let (ka, kb) = (a.sort_key(), b.sort_key());
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(ka.2.cmp(&kb.2))
        });
        let ids: Vec<i64> = ranked.iter().map(|r| r.document_id).collect();
        // Suspect 2 first; then by self-confidence: 4 (0.6), 3 (0.8), 1 (0.9).
        assert_eq!(ids, vec![2, 4, 3, 1]);
        assert!(ranked[0].ranked(&tasks).explanation.contains(">= 0.700"));
    }

    #[test]
    fn a_sampled_fit_keeps_class_shares_and_is_order_independent() {
        let ids: Vec<i64> = (1..=10_000).collect();
        // 9% positives.
        let given: Vec<usize> = ids.iter().map(|i| usize::from(i % 11 == 0)).collect();
        let keep = fit_sample(&ids, &given, 2_000, FOLD_SEED);
        let kept = |class: usize| {
            keep.iter()
                .zip(&given)
                .filter(|(k, g)| **k && **g == class)
                .count()
        };
        let positives = given.iter().filter(|g| **g == 1).count();
        assert_eq!(kept(1), (positives * 2_000).div_ceil(10_000));
        assert_eq!(kept(0), ((10_000 - positives) * 2_000).div_ceil(10_000));
        // Spread over the folds like the rest.
        let folds = assign_folds(&ids, &given, FOLDS, FOLD_SEED);
        let mut per_fold = [0usize; FOLDS];
        for (k, f) in keep.iter().zip(&folds) {
            if *k {
                per_fold[*f] += 1;
            }
        }
        assert!(per_fold.iter().max().unwrap() - per_fold.iter().min().unwrap() <= 2);
        let rev_ids: Vec<i64> = ids.iter().rev().copied().collect();
        let rev_given: Vec<usize> = given.iter().rev().copied().collect();
        let rev: Vec<bool> = fit_sample(&rev_ids, &rev_given, 2_000, FOLD_SEED)
            .into_iter()
            .rev()
            .collect();
        assert_eq!(keep, rev);
        // A rare class keeps MIN_FIT_PER_CLASS rows; a small input keeps everything.
        let rare: Vec<usize> = ids.iter().map(|i| usize::from(i % 500 == 0)).collect();
        let keep = fit_sample(&ids, &rare, 1_000, FOLD_SEED);
        let rare_kept = keep
            .iter()
            .zip(&rare)
            .filter(|(k, g)| **k && **g == 1)
            .count();
        assert_eq!(
            rare_kept, 20,
            "all 20 of the rare class (fewer than the minimum)"
        );
        assert!(fit_sample(&ids[..500], &given[..500], 1_000, FOLD_SEED)
            .iter()
            .all(|k| *k));
    }

    /// 4,000 documents in two clusters, 40 labelled against their cluster, the fits capped at
    /// 400 rows (a tenth): the 40 still come first, the suspects are all flipped ones, and the
    /// vectors spilled to a file give the same verdicts as in memory.
    #[test]
    fn a_capped_fit_on_spilled_vectors_still_finds_the_flipped_labels() {
        let (n, dims) = (4_000usize, 8usize);
        let mut flat = Vec::with_capacity(n * dims);
        let mut given = Vec::with_capacity(n);
        let mut flipped = Vec::new();
        for i in 0..n {
            let class = i % 2;
            let sign = if class == 1 { 1.0f32 } else { -1.0 };
            for j in 0..dims {
                let jitter = ((i * 31 + j * 7) as f32 * 0.013).sin() * 0.6;
                flat.push(sign * 0.5 * ((j % 3) as f32 + 0.5) + jitter);
            }
            let wrong = i % 100 == 37;
            if wrong {
                flipped.push(i as i64 + 1);
            }
            given.push(if wrong { 1 - class } else { class });
        }
        let data = LabelData {
            label: "spam".into(),
            classes: vec!["false".into(), "true".into()],
            document_ids: (1..=n as i64).collect(),
            given,
            rows: (0..n).collect(),
        };
        let in_memory = VectorRows::from_flat(dims, flat.clone());
        let mut spilled = VectorRows::new(dims, 1_000 * dims * 4);
        for row in flat.chunks(dims) {
            spilled.push(row).unwrap();
        }
        spilled.finish().unwrap();
        assert!(spilled.spilled());
        let tasks = vec![data];
        let (a, skipped) = check_labels(&in_memory, &tasks, 400).unwrap();
        assert!(skipped.is_empty());
        let (b, _) = check_labels(&spilled, &tasks, 400).unwrap();
        assert_eq!(a, b, "spilled vectors give the same verdicts");
        let mut ranked = most_suspect_per_document(a);
        assert_eq!(ranked.len(), n);
        ranked.sort_by(|x, y| x.sort_key().partial_cmp(&y.sort_key()).unwrap());
        let mut top: Vec<i64> = ranked[..flipped.len()]
            .iter()
            .map(|v| v.document_id)
            .collect();
        top.sort_unstable();
        assert_eq!(top, flipped, "the flipped labels come first");
        // Every suspect is a flipped label, and most flipped labels are suspects (the
        // thresholds, class means of p, are high on data this well separated).
        let suspects: Vec<i64> = ranked
            .iter()
            .filter(|v| v.suspect)
            .map(|v| v.document_id)
            .collect();
        assert!(
            suspects.iter().all(|id| flipped.contains(id)),
            "{suspects:?}"
        );
        assert!(suspects.len() * 2 >= flipped.len(), "{suspects:?}");
        assert!(ranked[flipped.len()].probability > ranked[flipped.len() - 1].probability);
    }
}
