//! What to label next: the review queue. Ranks a source's documents for annotators by one of
//! four strategies (near the threshold, annotators who disagree, labels that out-of-fold
//! predictions contradict, labels never annotated on the source), each item with its reason.
//!
//! A ranking is computed once per (model version, strategy, source, label, fingerprint) and
//! kept (`store`): a page reads a range of its positions. `uncertain`, `disagreement` and
//! `uncovered` are computed in the request that first needs them, streaming the source's
//! documents (with their scores and votes, probed by key) in one snapshot, when the source
//! holds at most `review.inline_max_documents` documents; past that, and always for
//! `suspect_label` (whose out-of-fold fits, `crate::ml::out_of_fold`, take longer than a
//! request should), the ranking is a `review_rank` job (`job`), and until it is done the API
//! answers 202 with the previous ranking of the key, marked stale, if there is one. Each strategy's ranking of one document is
//! a pure function (`rank_*` sort them in memory), so they are tested without a database.
pub mod agreement;
pub mod disagreement;
pub mod guidelines;
pub mod job;
pub mod labelling;
pub mod store;
pub mod suspect;
pub mod uncertain;
pub mod uncovered;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};

use store::{RankingKey, Stager, StoredRanking};

use crate::config::Settings;
use crate::datasets::consensus::{self, Vote};
use crate::datasets::text::{checksum, combine_text};
use crate::datasets::TaskType;

/// Characters of a document's text an item carries (`text_truncated` says when it was cut).
pub const ITEM_TEXT_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

    pub fn from_name(name: &str) -> Option<Strategy> {
        [
            Strategy::Uncertain,
            Strategy::Disagreement,
            Strategy::SuspectLabel,
            Strategy::Uncovered,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Always ranked by a `review_rank` job rather than in the request (the others are too
    /// when their source is large: [`ranked_by_job`]).
    pub fn runs_as_job(self) -> bool {
        self == Strategy::SuspectLabel
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
    /// The `review_rank` job for the current data failed; it is not retried until the data
    /// (votes, documents, embeddings) change.
    #[error("the review_rank job {job_id} that ranked these data failed: GET /api/v1/jobs/{job_id} says why; a change of votes, documents or embeddings ranks again")]
    JobFailed { job_id: String },
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
    /// Take the key's ready ranking as it is when it was computed less than this many seconds
    /// ago, even if the data changed since (`stale`): labelling, where each answer changes the
    /// votes and the answered documents are filtered out anyway, re-ranks at most this often
    /// instead of once per answer. None: always the current data (the review-queue API).
    pub reuse_within_secs: Option<i64>,
}

/// Why a document is in the queue; one shape per strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotatorVote {
    pub annotator: String,
    /// Binary and multi-label: the latest value on the label.
    pub value: Option<bool>,
    /// Multi-class: the latest positive class.
    pub class: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedLabel {
    pub label: String,
    pub reason: String,
}

/// What a ranking says besides its items: stored with it (`review_rankings.summary`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
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

/// Whether the page is of a ranking of the current data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStatus {
    /// The ranking is of the current data.
    Ready,
    /// A `review_rank` job is ranking the current data; the page is of the previous ranking
    /// of the key (`stale`), or empty when there is none.
    Computing,
}

/// One page of the queue.
#[derive(Debug, Clone)]
pub struct ReviewPage {
    pub status: PageStatus,
    /// The page is of a ranking of older data (votes, documents, scores or embeddings have
    /// changed since it was computed).
    pub stale: bool,
    /// The `review_rank` job computing the current ranking.
    pub job_id: Option<String>,
    pub computed_at: Option<DateTime<Utc>>,
    pub items: Vec<ReviewItem>,
    pub total: i64,
    pub ranking: Ranking,
    /// The stored ranking the page is of (None while none is).
    pub ranking_id: Option<i64>,
}

pub(crate) fn document_text(row: &sqlx::postgres::PgRow, max_chars: usize) -> String {
    let tags: Vec<String> = row.get("tags");
    combine_text(
        row.get::<Option<&str>, _>("title"),
        row.get::<Option<&str>, _>("description"),
        row.get::<Option<&str>, _>("body"),
        &tags,
        max_chars,
    )
}

/// What a computation reads per document besides its text.
#[derive(Debug, Clone, Copy, Default)]
pub struct DocColumns {
    /// The version's stored scores of the document, one per text checksum.
    pub scores: bool,
    /// The document's votes on the version's labels.
    pub votes: bool,
}

/// One document as a computation reads it.
#[derive(Debug, Clone)]
pub(crate) struct StreamedDoc {
    pub id: i64,
    /// The checksum of its current text by the dataset rules; None: no text.
    pub checksum: Option<String>,
    /// (checksum, scores) of the version's stored scores.
    pub scores: Vec<(String, Vec<f32>)>,
    /// Votes on the version's labels, in insertion order.
    pub votes: Vec<Vote>,
}

impl StreamedDoc {
    /// The stored score of its current text.
    pub fn current_score(&self) -> Option<&[f32]> {
        let checksum = self.checksum.as_deref()?;
        self.scores
            .iter()
            .find(|(c, _)| c == checksum)
            .map(|(_, s)| s.as_slice())
    }
}

/// The documents stream ($1 model, $2 version, $3 the version's labels, $4 source when
/// `source`); see [`stream_documents_into`].
pub fn documents_sql(source: bool, columns: DocColumns) -> String {
    let mut select = String::from("SELECT d.id, d.title, d.description, d.tags, d.body");
    let mut joins = String::new();
    if columns.scores {
        select.push_str(", s.checksums, s.scores");
        joins.push_str(
            " LEFT JOIN LATERAL (SELECT array_agg(checksum) AS checksums, jsonb_agg(scores) AS scores
                                FROM document_scores
                                WHERE model_name = $1 AND version = $2 AND document_id = d.id) s ON true",
        );
    }
    if columns.votes {
        select.push_str(", v.votes");
        joins.push_str(
            " LEFT JOIN LATERAL (SELECT jsonb_agg(jsonb_build_object('a', a.annotator, 'l', a.label,
                                      'v', a.value, 't', a.annotated_at) ORDER BY a.id) AS votes
                                FROM annotations a
                                WHERE a.document_id = d.id AND a.label = ANY($3)) v ON true",
        );
    }
    let filter = if source { " WHERE d.source = $4" } else { "" };
    format!("{select} FROM documents d{joins}{filter} ORDER BY d.source, d.external_id")
}

fn streamed(row: &sqlx::postgres::PgRow, columns: DocColumns, max_chars: usize) -> StreamedDoc {
    let text = document_text(row, max_chars);
    let scores = if columns.scores {
        let checksums: Option<Vec<String>> = row.get("checksums");
        let values: Option<serde_json::Value> = row.get("scores");
        let values: Vec<Vec<f32>> = values
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        checksums
            .unwrap_or_default()
            .into_iter()
            .zip(values)
            .collect()
    } else {
        Vec::new()
    };
    let votes = if columns.votes {
        row.get::<Option<serde_json::Value>, _>("votes")
            .map(|raw| consensus::votes_from_json(&raw))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    StreamedDoc {
        id: row.get("id"),
        checksum: (!text.is_empty()).then(|| checksum(&text)),
        scores,
        votes,
    }
}

/// Streams the source's documents (every source without one) in (source, external id) order,
/// each with its scores and votes read by a keyed probe (a lateral lookup on the primary key
/// of `document_scores` and on `annotations (document_id)`, so that no plan reads a whole
/// table of scores or votes to join them), and stages the items `each` returns for it (several
/// for `uncovered`, one per uncovered label; `stager` None: it returns none). One document at
/// a time: memory does not grow with the corpus.
pub(crate) async fn stream_documents_into<F>(
    reader: &mut PgConnection,
    mut stager: Option<&mut Stager<'_>>,
    settings: &Settings,
    version: &ReviewVersion,
    source: Option<&str>,
    columns: DocColumns,
    mut each: F,
) -> Result<(), ReviewError>
where
    F: FnMut(StreamedDoc) -> Vec<store::Keyed>,
{
    let sql = documents_sql(source.is_some(), columns);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&version.model)
        .bind(version.version)
        .bind(&version.labels);
    if let Some(source) = source {
        query = query.bind(source);
    }
    let mut rows = query.fetch(&mut *reader);
    let max_chars = settings.server.max_text_chars;
    while let Some(row) = rows.try_next().await? {
        let items = each(streamed(&row, columns, max_chars));
        if let Some(stager) = stager.as_deref_mut() {
            for item in items {
                stager.push(item).await?;
            }
        }
    }
    Ok(())
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

/// Checks what a request names (label, source, what the strategy needs) before anything is
/// ranked or enqueued.
pub async fn validate(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    request: &ReviewRequest,
) -> Result<(), ReviewError> {
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
        // A probe of the (source, external_id) index.
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
    match request.strategy {
        Strategy::Uncovered if request.source.is_none() => Err(unprocessable(
            "source_required",
            "source",
            "strategy `uncovered` needs a `source`: the labels never annotated on it".into(),
        )),
        Strategy::SuspectLabel => suspect::embedding_dimensions(settings, version).map(|_| ()),
        _ => Ok(()),
    }
}

/// Computes the ranking of `key` from one snapshot of the data and stores it (`ticket`: the
/// job's `computing` row, which becomes the ranking). Computations of one key run one at a
/// time; one that finds the ranking it was asked for already stored (computed by a request
/// that held the key before it) returns that. `wait` false: None when another computation of
/// the key is running (the caller serves the previous ranking instead of holding a
/// connection while it waits).
pub async fn compute(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    key: &RankingKey,
    ticket: Option<i64>,
    wait: bool,
) -> Result<Option<StoredRanking>, ReviewError> {
    if key.strategy == Strategy::SuspectLabel {
        return compute_suspects(pool, settings, version, key, ticket)
            .await
            .map(Some);
    }
    let mut writer = pool.begin().await?;
    if wait {
        store::lock_key(&mut writer, key, "compute").await?;
    } else if !store::try_lock_key(&mut writer, key, "compute").await? {
        return Ok(None);
    }
    if ticket.is_none() {
        let now = store::fingerprint(&mut writer, settings, version, key.strategy).await?;
        if let Some(ready) = store::find(&mut writer, key, store::RankingState::Ready).await? {
            if ready.fingerprint == now {
                writer.commit().await?;
                return Ok(Some(ready));
            }
        }
    }
    let started = std::time::Instant::now();
    let mut reader = begin_snapshot(pool).await?;
    let fingerprint = store::fingerprint(&mut reader, settings, version, key.strategy).await?;
    let labels = considered_labels(version, key);
    let source = key.source.as_deref();
    let mut stager = Stager::begin(&mut writer).await?;
    let summary = match key.strategy {
        Strategy::Uncertain => {
            uncertain::compute(
                &mut reader,
                Some(&mut stager),
                settings,
                version,
                source,
                &labels,
            )
            .await?
        }
        Strategy::Disagreement => {
            disagreement::compute(
                &mut reader,
                Some(&mut stager),
                settings,
                version,
                source,
                &labels,
            )
            .await?
        }
        Strategy::SuspectLabel => unreachable!("ranked by compute_suspects"),
        Strategy::Uncovered => {
            let Some(source) = source else {
                return Err(unprocessable(
                    "source_required",
                    "source",
                    "strategy `uncovered` needs a `source`".into(),
                ));
            };
            uncovered::compute(
                &mut reader,
                Some(&mut stager),
                settings,
                version,
                source,
                &labels,
            )
            .await?
        }
    };
    reader.rollback().await?;
    let id = stager.finish(key, &fingerprint, &summary, ticket).await?;
    let stored = store::get(&mut writer, id)
        .await?
        .ok_or_else(|| ReviewError::Internal(format!("ranking {id} vanished")))?;
    writer.commit().await?;
    log_computed(key, &stored, started);
    Ok(Some(stored))
}

fn considered_labels(version: &ReviewVersion, key: &RankingKey) -> Vec<String> {
    match &key.label {
        Some(l) => vec![l.clone()],
        None => version.labels.clone(),
    }
}

/// A transaction reading one snapshot.
async fn begin_snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut reader = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *reader)
        .await?;
    Ok(reader)
}

/// `suspect_label`: reads in one snapshot, then fits holding no connection (a fit can take
/// minutes), then stores.
async fn compute_suspects(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    key: &RankingKey,
    ticket: Option<i64>,
) -> Result<StoredRanking, ReviewError> {
    let started = std::time::Instant::now();
    let labels = considered_labels(version, key);
    let mut reader = begin_snapshot(pool).await?;
    let fingerprint = store::fingerprint(&mut reader, settings, version, key.strategy).await?;
    let loaded = suspect::load(
        &mut reader,
        settings,
        version,
        key.source.as_deref(),
        &labels,
    )
    .await?;
    reader.rollback().await?;
    let (fitted, summary) = suspect::fit(settings, version, &labels, loaded).await?;
    let mut writer = pool.begin().await?;
    store::lock_key(&mut writer, key, "compute").await?;
    let mut stager = Stager::begin(&mut writer).await?;
    for item in fitted.items() {
        stager.push(item).await?;
    }
    drop(fitted);
    let id = stager.finish(key, &fingerprint, &summary, ticket).await?;
    let stored = store::get(&mut writer, id)
        .await?
        .ok_or_else(|| ReviewError::Internal(format!("ranking {id} vanished")))?;
    writer.commit().await?;
    log_computed(key, &stored, started);
    Ok(stored)
}

fn log_computed(key: &RankingKey, stored: &StoredRanking, started: std::time::Instant) {
    tracing::info!(
        model = %key.model,
        version = key.version,
        strategy = key.strategy.as_str(),
        source = key.source_key(),
        label = key.label_key(),
        items = stored.total,
        ms = started.elapsed().as_millis() as u64,
        "review ranking computed"
    );
}

/// Answers one page: from the stored ranking of the current data; else, for a ranking made in
/// the request (a small source's `uncertain`, `disagreement`, `uncovered`), computed now (or,
/// while another request computes it, the previous ranking marked stale); else (`suspect_label`,
/// or a source past `review.inline_max_documents`) a `review_rank` job is enqueued (once) and
/// the page is of the key's previous ranking, marked stale, if there is one.
pub async fn page(
    pool: &PgPool,
    settings: &Settings,
    version: &ReviewVersion,
    request: &ReviewRequest,
) -> Result<ReviewPage, ReviewError> {
    validate(pool, settings, version, request).await?;
    let key = RankingKey {
        model: version.model.clone(),
        version: version.version,
        strategy: request.strategy,
        source: request.source.clone(),
        label: request.label.clone(),
    };
    let (fingerprint, ready) = {
        let mut conn = pool.acquire().await?;
        let fingerprint = store::fingerprint(&mut conn, settings, version, key.strategy).await?;
        (
            fingerprint,
            store::find(&mut conn, &key, store::RankingState::Ready).await?,
        )
    };
    let current = ready.as_ref().is_some_and(|r| r.fingerprint == fingerprint);
    let recent = ready.as_ref().is_some_and(|r| {
        request.reuse_within_secs.is_some_and(|secs| {
            r.computed_at
                .is_some_and(|at| Utc::now() - at < chrono::Duration::seconds(secs))
        })
    });
    let as_job = !current && !recent && ranked_by_job(pool, settings, &key).await?;
    let (ranking, status, stale, job_id) = match ready {
        Some(r) if current => (Some(r), PageStatus::Ready, false, None),
        Some(r) if recent => (Some(r), PageStatus::Ready, true, None),
        ready if as_job => {
            let job_id = job::ensure(pool, &key, &fingerprint, settings).await?;
            (ready, PageStatus::Computing, true, Some(job_id))
        }
        // Another request is computing it: the previous ranking, marked stale, at once.
        Some(previous) => match compute(pool, settings, version, &key, None, false).await? {
            Some(r) => (Some(r), PageStatus::Ready, false, None),
            None => (Some(previous), PageStatus::Computing, true, None),
        },
        None => (
            compute(pool, settings, version, &key, None, true).await?,
            PageStatus::Ready,
            false,
            None,
        ),
    };
    let Some(ranking) = ranking else {
        return Ok(ReviewPage {
            status,
            stale: false,
            job_id,
            computed_at: None,
            items: Vec::new(),
            total: 0,
            ranking_id: None,
            ranking: Ranking {
                labels: request
                    .label
                    .clone()
                    .map_or_else(|| version.labels.clone(), |l| vec![l]),
                ..Ranking::default()
            },
        });
    };
    let items = store::read_page(
        pool,
        settings,
        ranking.id,
        request.offset as i64,
        request.limit as i64,
    )
    .await?;
    Ok(ReviewPage {
        status,
        stale,
        job_id,
        computed_at: ranking.computed_at,
        items,
        total: ranking.total,
        ranking_id: Some(ranking.id),
        ranking: ranking.summary,
    })
}

/// Whether `key` is ranked by a `review_rank` job rather than in the request: always for
/// `suspect_label`; for the others when the source (every source when none is named) holds
/// more than `review.inline_max_documents` documents, so that no request reads a large
/// corpus. Counts at most one document past the limit (an index range or a bounded scan).
pub async fn ranked_by_job(
    pool: &PgPool,
    settings: &Settings,
    key: &RankingKey,
) -> Result<bool, ReviewError> {
    if key.strategy.runs_as_job() {
        return Ok(true);
    }
    let limit = settings.review.inline_max_documents.max(0);
    let documents: i64 = match key.source.as_deref() {
        Some(source) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM documents WHERE source = $1 LIMIT $2) d",
            )
            .bind(source)
            .bind(limit + 1)
            .fetch_one(pool)
            .await?
        }
        None => {
            sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM documents LIMIT $1) d")
                .bind(limit + 1)
                .fetch_one(pool)
                .await?
        }
    };
    Ok(documents > limit)
}

/// `x` with 3 decimals, for explanations.
pub(crate) fn f3(x: f64) -> String {
    format!("{x:.3}")
}
