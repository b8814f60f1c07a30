//! `GET /api/v1/review-queue`: what to label next. Documents ranked for annotators by one of
//! four strategies, each with its reason (the ranking is `crate::review`).
use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags, Union};

use super::errors::ApiError;
use super::{page_bounds, AppState};
use crate::review::{self, PageStatus, Reason, ReviewError, ReviewRequest, Strategy};

#[derive(Tags)]
enum ApiTags {
    /// What to label next: documents ranked for annotators, each with its reason.
    Review,
}

/// How to rank: `uncertain` (stored score nearest the threshold, unannotated first),
/// `disagreement` (annotators' latest votes disagree), `suspect_label` (the consensus is
/// confidently contradicted by out-of-fold predictions), `uncovered` (labels nobody annotated
/// on the source; needs `source`).
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ReviewStrategy {
    Uncertain,
    Disagreement,
    SuspectLabel,
    Uncovered,
}

impl From<ReviewStrategy> for Strategy {
    fn from(s: ReviewStrategy) -> Strategy {
        match s {
            ReviewStrategy::Uncertain => Strategy::Uncertain,
            ReviewStrategy::Disagreement => Strategy::Disagreement,
            ReviewStrategy::SuspectLabel => Strategy::SuspectLabel,
            ReviewStrategy::Uncovered => Strategy::Uncovered,
        }
    }
}

/// `uncertain`, binary and multi-label: the label whose score is nearest its threshold.
#[derive(Debug, Object)]
pub struct NearThresholdReason {
    pub label: String,
    /// The stored score of this version for the document's current text.
    pub score: f32,
    pub threshold: f32,
    /// |score − threshold|.
    pub distance: f32,
    /// Someone already annotated this label on the document (such documents come after the
    /// unannotated ones).
    pub annotated: bool,
}

/// `uncertain`, multi-class: the two most probable classes.
#[derive(Debug, Object)]
pub struct SmallMarginReason {
    pub top_class: String,
    pub top_score: f32,
    pub second_class: String,
    pub second_score: f32,
    /// top_score − second_score.
    pub margin: f32,
    /// Someone already annotated a class on the document.
    pub annotated: bool,
}

/// One annotator's latest answer.
#[derive(Debug, Object)]
pub struct AnnotatorVoteOut {
    pub annotator: String,
    /// Binary and multi-label: the latest value on the label.
    #[oai(skip_serializing_if_is_none)]
    pub value: Option<bool>,
    /// Multi-class: the latest positive class.
    #[oai(skip_serializing_if_is_none)]
    pub class: Option<String>,
}

/// `disagreement`: each annotator's latest answer on the most split label.
#[derive(Debug, Object)]
pub struct DisagreementReason {
    /// The label (absent for a multi-class model: the disagreement is over the class).
    #[oai(skip_serializing_if_is_none)]
    pub label: Option<String>,
    pub annotators: Vec<AnnotatorVoteOut>,
    /// Share of the latest votes against the majority (0.5: an even split).
    pub minority_share: f64,
    /// Latest votes (one per annotator).
    pub votes: u32,
}

/// `suspect_label`: the consensus and the out-of-fold probabilities that contradict it.
#[derive(Debug, Object)]
pub struct SuspectLabelReason {
    /// Binary and multi-label: the label; multi-class: the consensus class.
    pub label: String,
    /// Binary and multi-label: the consensus value (absent for multi-class).
    #[oai(skip_serializing_if_is_none)]
    pub consensus: Option<bool>,
    /// Out-of-fold probability of the consensus (self-confidence).
    pub probability: f32,
    /// The contradicting answer: `true`/`false` for a label, a class for multi-class.
    pub other: String,
    /// Out-of-fold probability of `other`.
    pub other_probability: f32,
    /// Mean out-of-fold probability of `other` over the documents whose consensus is `other`.
    pub other_threshold: f32,
    /// `other_probability >= other_threshold`: the consensus is confidently contradicted.
    pub suspect: bool,
}

/// `uncovered`: a label nobody annotated on the source.
#[derive(Debug, Object)]
pub struct UncoveredReason {
    pub label: String,
    /// The stored score of this version for the current text (absent when unscored).
    #[oai(skip_serializing_if_is_none)]
    pub score: Option<f32>,
    pub threshold: f32,
    #[oai(skip_serializing_if_is_none)]
    pub distance: Option<f32>,
}

/// Why the document is in the queue (`kind` says which shape).
#[derive(Debug, Union)]
#[oai(discriminator_name = "kind")]
pub enum ReviewReason {
    #[oai(mapping = "near_threshold")]
    NearThreshold(NearThresholdReason),
    #[oai(mapping = "small_margin")]
    SmallMargin(SmallMarginReason),
    #[oai(mapping = "disagreement")]
    Disagreement(DisagreementReason),
    #[oai(mapping = "suspect_label")]
    SuspectLabel(SuspectLabelReason),
    #[oai(mapping = "uncovered")]
    Uncovered(UncoveredReason),
}

impl From<Reason> for ReviewReason {
    fn from(r: Reason) -> ReviewReason {
        match r {
            Reason::NearThreshold {
                label,
                score,
                threshold,
                distance,
                annotated,
            } => ReviewReason::NearThreshold(NearThresholdReason {
                label,
                score,
                threshold,
                distance,
                annotated,
            }),
            Reason::SmallMargin {
                top_class,
                top_score,
                second_class,
                second_score,
                margin,
                annotated,
            } => ReviewReason::SmallMargin(SmallMarginReason {
                top_class,
                top_score,
                second_class,
                second_score,
                margin,
                annotated,
            }),
            Reason::Disagreement {
                label,
                annotators,
                minority_share,
                votes,
            } => ReviewReason::Disagreement(DisagreementReason {
                label,
                annotators: annotators
                    .into_iter()
                    .map(|a| AnnotatorVoteOut {
                        annotator: a.annotator,
                        value: a.value,
                        class: a.class,
                    })
                    .collect(),
                minority_share,
                votes,
            }),
            Reason::SuspectLabel(s) => ReviewReason::SuspectLabel(SuspectLabelReason {
                label: s.label,
                consensus: s.consensus,
                probability: s.probability,
                other: s.other,
                other_probability: s.other_probability,
                other_threshold: s.other_threshold,
                suspect: s.suspect,
            }),
            Reason::Uncovered {
                label,
                score,
                threshold,
                distance,
            } => ReviewReason::Uncovered(UncoveredReason {
                label,
                score,
                threshold,
                distance,
            }),
        }
    }
}

#[derive(Debug, Object)]
pub struct ReviewItemOut {
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    /// The document's text as trainyard builds it (title, description, body, tags), cut to
    /// 500 characters.
    pub text: String,
    /// The text was cut.
    pub text_truncated: bool,
    pub reason: ReviewReason,
    /// The reason in one line, for a person.
    pub explanation: String,
}

/// What was and could not be considered. A count the strategy does not compute is absent
/// (never 0).
#[derive(Debug, Object)]
pub struct ReviewCounts {
    /// Documents of the source (every source without one) with text.
    #[oai(skip_serializing_if_is_none)]
    pub documents: Option<i64>,
    /// Documents left out because they have no text.
    #[oai(skip_serializing_if_is_none)]
    pub empty_text: Option<i64>,
    /// `uncertain`, `uncovered`: documents without a stored score of this version for their
    /// current text (not ranked by score; see `hint`).
    #[oai(skip_serializing_if_is_none)]
    pub unscored: Option<i64>,
    /// Of `unscored`, those whose stored score is for an older text.
    #[oai(skip_serializing_if_is_none)]
    pub stale_scores: Option<i64>,
    /// `disagreement`, `suspect_label`: documents with votes on the model's labels.
    #[oai(skip_serializing_if_is_none)]
    pub annotated: Option<i64>,
    /// `suspect_label`: annotated documents without a consensus on the considered labels
    /// (ties excluded by `datasets.tie_rule`).
    #[oai(skip_serializing_if_is_none)]
    pub without_consensus: Option<i64>,
    /// `suspect_label`: documents with a consensus but no stored embedding of the version's
    /// embedding model for their current text.
    #[oai(skip_serializing_if_is_none)]
    pub without_embedding: Option<i64>,
}

#[derive(Debug, Object)]
pub struct SkippedLabelOut {
    pub label: String,
    pub reason: String,
}

/// Whether the ranking the page is of is of the current data.
#[derive(Debug, Clone, Copy, Enum, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum RankingStatus {
    /// Ranked from the current votes, documents, scores and embeddings.
    Ready,
    /// The current data are being ranked — by a `review_rank` job (`job_id`), or by another
    /// request (no `job_id`); the page is of the previous ranking (`stale: true`), or empty
    /// when there is none. Ask again shortly.
    Computing,
}

#[derive(Debug, Object)]
pub struct ReviewQueue {
    pub model: String,
    pub version: i32,
    pub strategy: ReviewStrategy,
    pub status: RankingStatus,
    /// The page is of a ranking of older data (votes, documents, scores or embeddings changed
    /// since it was computed).
    pub stale: bool,
    /// `computing`: the `review_rank` job (`GET /api/v1/jobs/{id}`); absent when another
    /// request is computing the ranking.
    #[oai(skip_serializing_if_is_none)]
    pub job_id: Option<String>,
    /// When the ranking was computed (absent while none is).
    #[oai(skip_serializing_if_is_none)]
    pub computed_at: Option<chrono::DateTime<chrono::Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub source: Option<String>,
    /// The labels the strategy looked at (`label`, or all of the version's; `uncovered`: the
    /// uncovered ones among them).
    pub labels: Vec<String>,
    pub items: Vec<ReviewItemOut>,
    /// Items in the whole queue (0 while `computing` with no previous ranking).
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    pub counts: ReviewCounts,
    /// `uncovered`: the version's labels nobody annotated on the source.
    #[oai(skip_serializing_if_is_none)]
    pub uncovered_labels: Option<Vec<String>>,
    /// `suspect_label`: labels that could not be checked (too few documents of a class).
    #[oai(skip_serializing_if_is_none)]
    pub skipped_labels: Option<Vec<SkippedLabelOut>>,
    /// What would let more documents be considered (a scoring job to run, a dataset to build).
    #[oai(skip_serializing_if_is_none)]
    pub hint: Option<String>,
}

impl From<ReviewError> for ApiError {
    fn from(e: ReviewError) -> ApiError {
        match e {
            ReviewError::Unprocessable {
                code,
                message,
                param,
            } => ApiError::unprocessable(code, message, Some(param)),
            ReviewError::Database(e) => e.into(),
            ReviewError::Busy => ApiError::unavailable(ReviewError::Busy.to_string()),
            e @ ReviewError::JobFailed { .. } => ApiError::unavailable(e.to_string()),
            ReviewError::Internal(e) => ApiError::internal(e),
        }
    }
}

#[derive(ApiResponse)]
pub enum ReviewQueueResponse {
    /// A page of the ranking of the current data.
    #[oai(status = 200)]
    Ready(Json<ReviewQueue>),
    /// The ranking of the current data is being computed (by a `review_rank` job, `job_id`,
    /// or by another request): the page is of the previous ranking of the same request
    /// (`stale: true`), or empty.
    #[oai(status = 202)]
    Computing(Json<ReviewQueue>),
}

pub struct ReviewApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Review")]
impl ReviewApi {
    /// What to label next: documents ranked by a strategy, each with its reason. A ranking is
    /// computed once per (version, strategy, source, label, state of the votes, documents,
    /// scores and embeddings it reads) and kept; pages are read from it. `uncertain`,
    /// `disagreement` and `uncovered` are ranked in the first request that needs them when
    /// the source holds at most `review.inline_max_documents` documents (20,000 by default);
    /// `suspect_label` (five small out-of-fold models per label), and the others on a larger
    /// source, are ranked by a `review_rank` job: until it is done the answer is 202 with
    /// `status: computing`, its `job_id`, and the previous ranking's page (`stale: true`) if
    /// there is one.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/review-queue", method = "get")]
    async fn review_queue(
        &self,
        state: Data<&AppState>,
        /// A model in the registry.
        #[oai(validator(min_length = 1, max_length = 200))]
        model: Query<String>,
        strategy: Query<ReviewStrategy>,
        /// Only this source's documents (required by `uncovered`; all sources without it).
        #[oai(validator(min_length = 1, max_length = 512))]
        source: Query<Option<String>>,
        /// The version (>= 1); absent = the served one.
        #[oai(validator(minimum(value = "1")))]
        version: Query<Option<i32>>,
        /// Only this label of the version.
        #[oai(validator(min_length = 1, max_length = 512))]
        label: Query<Option<String>>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<ReviewQueueResponse, ApiError> {
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        // It reads a source's documents: one of the requests bounded per process.
        let _permit = state.heavy_permit("exports and review queues")?;
        let resolved = review::resolve_version(&state.pool, &model.0, version.0).await?;
        let request = ReviewRequest {
            strategy: strategy.0.into(),
            source: source.0.clone(),
            label: label.0.clone(),
            limit: limit as usize,
            offset: offset as usize,
            reuse_within_secs: None,
        };
        let page = review::page(&state.pool, &state.settings, &resolved, &request).await?;
        let ranking = page.ranking;
        let c = ranking.counts;
        let body = ReviewQueue {
            model: resolved.model,
            version: resolved.version,
            strategy: strategy.0,
            status: match page.status {
                PageStatus::Ready => RankingStatus::Ready,
                PageStatus::Computing => RankingStatus::Computing,
            },
            stale: page.stale,
            job_id: page.job_id,
            computed_at: page.computed_at,
            source: source.0,
            labels: ranking.labels,
            items: page
                .items
                .into_iter()
                .map(|i| ReviewItemOut {
                    document_id: i.document_id,
                    source: i.source,
                    external_id: i.external_id,
                    text: i.text,
                    text_truncated: i.text_truncated,
                    reason: i.reason.into(),
                    explanation: i.explanation,
                })
                .collect(),
            total: page.total,
            limit,
            offset,
            counts: ReviewCounts {
                documents: c.documents,
                empty_text: c.empty_text,
                unscored: c.unscored,
                stale_scores: c.stale_scores,
                annotated: c.annotated,
                without_consensus: c.without_consensus,
                without_embedding: c.without_embedding,
            },
            uncovered_labels: ranking.uncovered_labels,
            skipped_labels: (request.strategy == Strategy::SuspectLabel).then(|| {
                ranking
                    .skipped_labels
                    .into_iter()
                    .map(|s| SkippedLabelOut {
                        label: s.label,
                        reason: s.reason,
                    })
                    .collect()
            }),
            hint: ranking.hint,
        };
        Ok(match page.status {
            PageStatus::Ready => ReviewQueueResponse::Ready(Json(body)),
            PageStatus::Computing => ReviewQueueResponse::Computing(Json(body)),
        })
    }
}
