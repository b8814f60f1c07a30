//! What to label next: the review queue. Ranks a source's documents for annotators by one of
//! four strategies (near the threshold, annotators who disagree, labels that out-of-fold
//! predictions contradict, labels never annotated on the source), each item with its reason.
//!
//! Nothing is stored: every request reads documents, annotations, stored scores and stored
//! embeddings from Postgres and ranks them (`suspect_label` also fits its small out-of-fold
//! models, in `crate::ml::out_of_fold`, on a blocking thread). The ranking functions are pure
//! (`rank_*`), so they are tested without a database.
pub mod disagreement;
pub mod suspect;
pub mod uncertain;
pub mod uncovered;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::config::Settings;
use crate::datasets::consensus::{self, Vote};
use crate::datasets::text::{checksum, combine_text};
use crate::datasets::TaskType;

/// Characters of a document's text an item carries (`text_truncated` says when it was cut).
pub const ITEM_TEXT_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Uncertain,
    Disagreement,
    SuspectLabel,
    Uncovered,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Uncertain => "uncertain",
            Strategy::Disagreement => "disagreement",
            Strategy::SuspectLabel => "suspect_label",
            Strategy::Uncovered => "uncovered",
        }
    }
}

/// A request the review queue cannot answer: the parameter at fault and why (the API turns
/// it into a 422 naming `param`).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        param: &'static str,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Another `suspect_label` ranking kept this process busy for a minute.
    #[error("another suspect_label ranking is running in this process; ask again shortly")]
    Busy,
    #[error("{0}")]
    Internal(String),
}

fn unprocessable(code: &'static str, param: &'static str, message: String) -> ReviewError {
    ReviewError::Unprocessable {
        code,
        message,
        param,
    }
}

/// What the queue needs to know about a model version.
#[derive(Debug, Clone)]
pub struct ReviewVersion {
    pub model: String,
    pub version: i32,
    pub task: TaskType,
    pub labels: Vec<String>,
    pub thresholds: Vec<f32>,
    pub embedding_model: String,
}

/// The version a request names, or the served one.
pub async fn resolve_version(
    pool: &PgPool,
    model: &str,
    version: Option<i32>,
) -> Result<ReviewVersion, ReviewError> {
    let served = crate::registry::served_version(pool, model)
        .await?
        .ok_or_else(|| {
            unprocessable(
                "unknown_model",
                "model",
                format!("no model named `{model}` in the registry"),
            )
        })?;
    let Some(version) = version.or(served) else {
        return Err(unprocessable(
            "no_served_version",
            "version",
            format!("model `{model}` serves no version: name one with `version`"),
        ));
    };
    let meta = crate::registry::version_meta(pool, model, version)
        .await?
        .ok_or_else(|| {
            unprocessable(
                "unknown_version",
                "version",
                format!("model `{model}` has no version {version}"),
            )
        })?;
    let spec: serde_json::Value =
        sqlx::query_scalar("SELECT spec FROM model_versions WHERE name = $1 AND version = $2")
            .bind(model)
            .bind(version)
            .fetch_one(pool)
            .await?;
    let task: TaskType = serde_json::from_value(spec["task"].clone()).map_err(|e| {
        ReviewError::Internal(format!(
            "version {version} of `{model}`: task unreadable: {e}"
        ))
    })?;
    Ok(ReviewVersion {
        model: model.to_string(),
        version,
        task,
        labels: meta.labels,
        thresholds: meta.thresholds,
        embedding_model: meta.embedding_model,
    })
}

/// A review-queue request, once the version is resolved.
#[derive(Debug, Clone)]
pub struct ReviewRequest {
    pub strategy: Strategy,
    pub source: Option<String>,
    /// Only this label of the version (checked against its labels).
    pub label: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

/// Why a document is in the queue; one shape per strategy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// `uncertain`, binary and multi-label: the label whose score is nearest its threshold.
    NearThreshold {
        label: String,
        score: f32,
        threshold: f32,
        distance: f32,
        /// Someone already annotated this label on the document.
        annotated: bool,
    },
    /// `uncertain`, multi-class: the two most probable classes and their margin.
    SmallMargin {
        top_class: String,
        top_score: f32,
        second_class: String,
        second_score: f32,
        margin: f32,
        annotated: bool,
    },
    /// `disagreement`: the most split label and each annotator's latest value (binary and
    /// multi-label) or latest class (multi-class, `label` absent).
    Disagreement {
        label: Option<String>,
        annotators: Vec<AnnotatorVote>,
        /// Share of the latest votes that went against the majority (0.5 = an even split).
        minority_share: f64,
        votes: u32,
    },
    /// `suspect_label`: the consensus and its out-of-fold probability.
    SuspectLabel(SuspectReason),
    /// `uncovered`: a label nobody annotated on the source, and the document's stored score.
    Uncovered {
        label: String,
        score: Option<f32>,
        threshold: f32,
        distance: Option<f32>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnotatorVote {
    pub annotator: String,
    /// Binary and multi-label: the latest value on the label.
    pub value: Option<bool>,
    /// Multi-class: the latest positive class.
    pub class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuspectReason {
    /// Binary and multi-label: the label; multi-class: the consensus class.
    pub label: String,
    /// Binary and multi-label: the consensus value (multi-class: absent, `label` is it).
    pub consensus: Option<bool>,
    /// Out-of-fold probability of the consensus (the self-confidence).
    pub probability: f32,
    /// The contradicting class: `true`/`false` for a label, a class name for multi-class.
    pub other: String,
    /// Out-of-fold probability of `other`.
    pub other_probability: f32,
    /// `other`'s threshold: mean out-of-fold probability of `other` over documents whose
    /// consensus is `other`.
    pub other_threshold: f32,
    /// `other_probability >= other_threshold`.
    pub suspect: bool,
}

/// One ranked document before its text is attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub document_id: i64,
    pub reason: Reason,
    pub explanation: String,
}

/// One item of the queue as the API shows it.
#[derive(Debug, Clone)]
pub struct ReviewItem {
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    /// The document's text by the dataset rules, cut to [`ITEM_TEXT_CHARS`].
    pub text: String,
    pub text_truncated: bool,
    pub reason: Reason,
    pub explanation: String,
}

/// What could not be considered, and what was. `None` = not computed by this strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Documents of the source (all sources without one) with text.
    pub documents: Option<i64>,
    /// Documents left out because they have no text.
    pub empty_text: Option<i64>,
    /// Documents without a stored score of this version for their current text.
    pub unscored: Option<i64>,
    /// Of those, documents whose stored score is for an older text.
    pub stale_scores: Option<i64>,
    /// Documents with annotations on the considered labels.
    pub annotated: Option<i64>,
    /// Annotated documents without a consensus on any considered label (ties excluded).
    pub without_consensus: Option<i64>,
    /// Annotated documents without a stored embedding of the version's embedding model for
    /// their current text.
    pub without_embedding: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedLabel {
    pub label: String,
    pub reason: String,
}

/// A ranked queue, all of it (the API pages it).
#[derive(Debug, Clone, Default)]
pub struct Ranking {
    pub items: Vec<Ranked>,
    pub counts: Counts,
    /// Labels the strategy looked at.
    pub labels: Vec<String>,
    /// `uncovered`: the labels nobody annotated on the source.
    pub uncovered_labels: Option<Vec<String>>,
    /// `suspect_label`: labels that could not be checked, and why.
    pub skipped_labels: Vec<SkippedLabel>,
    /// What to do so that more can be considered (run a scoring job, build a dataset).
    pub hint: Option<String>,
}

/// One page of the queue.
#[derive(Debug, Clone)]
pub struct ReviewPage {
    pub items: Vec<ReviewItem>,
    pub total: usize,
    pub ranking: Ranking,
}

/// A document of the source with its current text's checksum (texts are not kept).
#[derive(Debug, Clone)]
pub(crate) struct SourceDoc {
    pub id: i64,
    pub checksum: String,
}

/// The source's documents with text, in (source, external id) order, and how many had none.
pub(crate) async fn source_documents(
    pool: &PgPool,
    settings: &Settings,
    source: Option<&str>,
) -> Result<(Vec<SourceDoc>, i64), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, title, description, tags, body FROM documents
         WHERE $1::text IS NULL OR source = $1 ORDER BY source, external_id",
    )
    .bind(source)
    .fetch_all(pool)
    .await?;
    let mut empty = 0;
    let mut docs = Vec::with_capacity(rows.len());
    for row in &rows {
        let text = document_text(row, settings.server.max_text_chars);
        if text.is_empty() {
            empty += 1;
            continue;
        }
        docs.push(SourceDoc {
            id: row.get("id"),
            checksum: checksum(&text),
        });
    }
    Ok((docs, empty))
}

fn document_text(row: &sqlx::postgres::PgRow, max_chars: usize) -> String {
    let tags: Vec<String> = row.get("tags");
    combine_text(
        row.get::<Option<&str>, _>("title"),
        row.get::<Option<&str>, _>("description"),
        row.get::<Option<&str>, _>("body"),
        &tags,
        max_chars,
    )
}

/// Every vote on `labels` of the source's documents: document id -> votes (in insertion order,
/// so that equal times resolve as a dataset build resolves them).
pub(crate) async fn source_votes(
    pool: &PgPool,
    source: Option<&str>,
    labels: &[String],
) -> Result<BTreeMap<i64, Vec<Vote>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT a.document_id,
                jsonb_agg(jsonb_build_object('a', a.annotator, 'l', a.label, 'v', a.value, 't', a.annotated_at)
                          ORDER BY a.id) AS votes
         FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE ($1::text IS NULL OR d.source = $1) AND a.label = ANY($2)
         GROUP BY a.document_id",
    )
    .bind(source)
    .bind(labels)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let raw: serde_json::Value = r.get("votes");
            (r.get("document_id"), consensus::votes_from_json(&raw))
        })
        .collect())
}

/// Stored scores of the version for these documents, keyed by (document, checksum).
pub(crate) async fn stored_scores(
    pool: &PgPool,
    version: &ReviewVersion,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<(String, Vec<f32>)>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT document_id, checksum, scores FROM document_scores
         WHERE model_name = $1 AND version = $2 AND document_id = ANY($3)",
    )
    .bind(&version.model)
    .bind(version.version)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<i64, Vec<(String, Vec<f32>)>> = HashMap::new();
    for r in rows {
        out.entry(r.get("document_id"))
            .or_default()
            .push((r.get("checksum"), r.get("scores")));
    }
    Ok(out)
}

/// A document and its stored score for its current text (None: unscored).
pub(crate) type DocScore<'a> = (&'a SourceDoc, Option<&'a [f32]>);

/// Each document's score for its current text, and the (unscored, stale) counts.
pub(crate) fn current_scores<'a>(
    docs: &'a [SourceDoc],
    stored: &'a HashMap<i64, Vec<(String, Vec<f32>)>>,
) -> (Vec<DocScore<'a>>, i64, i64) {
    let (mut unscored, mut stale) = (0, 0);
    let out = docs
        .iter()
        .map(|d| {
            let rows = stored.get(&d.id);
            let score = rows.and_then(|rows| {
                rows.iter()
                    .find(|(c, _)| *c == d.checksum)
                    .map(|(_, s)| s.as_slice())
            });
            if score.is_none() {
                unscored += 1;
                if rows.is_some() {
                    stale += 1;
                }
            }
            (d, score)
        })
        .collect();
    (out, unscored, stale)
}

/// The hint for documents without a score of this version.
pub(crate) fn scoring_hint(version: &ReviewVersion, source: Option<&str>, unscored: i64) -> String {
    let selection = match source {
        Some(s) => format!("{{\"sources\": [{}]}}", serde_json::json!(s)),
        None => "{\"sources\": [...]}".to_string(),
    };
    format!(
        "{unscored} document(s) have no score of version {} for their current text and were not considered: \
         run a scoring job (POST /api/v1/scoring-jobs {{\"model\": {}, \"version\": {}, \"selection\": {selection}}}) and ask again",
        version.version,
        serde_json::json!(version.model),
        version.version,
    )
}

/// Ranks the queue for one request (everything, unpaged).
pub async fn rank(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    request: &ReviewRequest,
) -> Result<Ranking, ReviewError> {
    if let Some(label) = &request.label {
        if !version.labels.contains(label) {
            return Err(unprocessable(
                "unknown_label",
                "label",
                format!(
                    "version {} of `{}` has no label `{label}` (it has {:?})",
                    version.version, version.model, version.labels
                ),
            ));
        }
    }
    if let Some(source) = &request.source {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM documents WHERE source = $1)")
                .bind(source)
                .fetch_one(pool)
                .await?;
        if !exists {
            return Err(unprocessable(
                "unknown_source",
                "source",
                format!("no document has source `{source}`"),
            ));
        }
    }
    let labels: Vec<String> = match &request.label {
        Some(l) => vec![l.clone()],
        None => version.labels.clone(),
    };
    let source = request.source.as_deref();
    match request.strategy {
        Strategy::Uncertain => uncertain::rank(pool, settings, version, source, &labels).await,
        Strategy::Disagreement => disagreement::rank(pool, version, source, &labels).await,
        Strategy::SuspectLabel => suspect::rank(pool, settings, version, source, &labels).await,
        Strategy::Uncovered => {
            let Some(source) = source else {
                return Err(unprocessable(
                    "source_required",
                    "source",
                    "strategy `uncovered` needs a `source`: the labels never annotated on it"
                        .into(),
                ));
            };
            uncovered::rank(pool, settings, version, source, &labels).await
        }
    }
}

/// Ranks and returns one page, with the page's documents' texts.
pub async fn page(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    request: &ReviewRequest,
) -> Result<ReviewPage, ReviewError> {
    let mut ranking = rank(pool, settings, version, request).await?;
    let total = ranking.items.len();
    let page: Vec<Ranked> = ranking
        .items
        .drain(..)
        .skip(request.offset)
        .take(request.limit)
        .collect();
    let ids: Vec<i64> = page.iter().map(|r| r.document_id).collect();
    let rows = sqlx::query(
        "SELECT id, source, external_id, title, description, tags, body FROM documents WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let by_id: HashMap<i64, &sqlx::postgres::PgRow> =
        rows.iter().map(|r| (r.get::<i64, _>("id"), r)).collect();
    let mut items = Vec::with_capacity(page.len());
    for r in page {
        // A document deleted since it was ranked is left out of the page.
        let Some(row) = by_id.get(&r.document_id) else {
            continue;
        };
        let text = document_text(row, settings.server.max_text_chars);
        let (text, text_truncated) = match text.char_indices().nth(ITEM_TEXT_CHARS) {
            Some((cut, _)) => (text[..cut].to_string(), true),
            None => (text, false),
        };
        items.push(ReviewItem {
            document_id: r.document_id,
            source: row.get("source"),
            external_id: row.get("external_id"),
            text,
            text_truncated,
            reason: r.reason,
            explanation: r.explanation,
        });
    }
    Ok(ReviewPage {
        items,
        total,
        ranking,
    })
}

/// `x` with 3 decimals, for explanations.
pub(crate) fn f3(x: f64) -> String {
    format!("{x:.3}")
}
