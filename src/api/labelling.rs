//! Labelling by people (what the web app at `/ui` calls): who the caller is, the next document
//! of a review queue under a short lease, answers and undo written under the caller's name,
//! versioned guidelines, each source's overlap, and the agreement between annotators
//! (`crate::review::{labelling, guidelines, agreement}`).
use std::collections::BTreeMap;

use poem::web::Data;
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};

use super::datasets::LabelTaskType;
use super::errors::{ApiError, ErrorBody, ErrorDetail};
use super::review::{ReviewReason, ReviewStrategy};
use super::AppState;
use crate::auth::{Principal, Scope};
use crate::datasets::TaskType;
use crate::review::agreement::{self, Agreement};
use crate::review::guidelines::{self, Guideline};
use crate::review::labelling::{self, Decision, LabellingError, NextStatus, QueueKey};

#[derive(Tags)]
enum ApiTags {
    /// Labelling by people: the next document under a lease, answers, undo, guidelines,
    /// overlap per source and agreement between annotators.
    Labelling,
}

impl From<LabellingError> for ApiError {
    fn from(e: LabellingError) -> ApiError {
        match e {
            LabellingError::Review(e) => e.into(),
            LabellingError::Conflict { code, message } => {
                ApiError::conflict_code(code, message, None)
            }
        }
    }
}

/// The caller, as the API sees it.
#[derive(Debug, Object)]
pub struct Me {
    /// Whether this server checks tokens. When false anyone may call anything and the web app
    /// asks for an annotator name instead of a token.
    pub auth_enabled: bool,
    /// The token's name: annotations made through the labelling calls are written under it.
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub token_id: Option<String>,
    /// What the caller may do (`admin` implies every scope, `submit` implies `read`); every
    /// scope when auth is off, none without a token when it is on.
    pub scopes: Vec<String>,
}

/// Which queue: the review queue's parameters, with a source (overlap is set per source).
#[derive(Debug, Object)]
pub struct QueueIn {
    /// A model in the registry.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub model: String,
    /// The version whose ranking is labelled; absent = the served one.
    #[oai(validator(minimum(value = "1")))]
    pub version: Option<i32>,
    pub strategy: ReviewStrategy,
    /// The source whose documents are labelled.
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub source: String,
    /// Only this label of the version (binary and multi-label; a multi-class queue always
    /// decides among all classes).
    #[oai(validator(min_length = 1, max_length = 512))]
    pub label: Option<String>,
    /// The annotator's name. Only with auth off (then required); with auth on the token's
    /// name is used and this must be absent or equal to it.
    #[oai(validator(min_length = 1, max_length = 100, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub annotator: Option<String>,
}

#[derive(Debug, Object)]
pub struct GuidelineOut {
    pub label: String,
    pub version: i32,
    pub text: String,
    pub author: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<Guideline> for GuidelineOut {
    fn from(g: Guideline) -> GuidelineOut {
        GuidelineOut {
            label: g.label,
            version: g.version,
            text: g.text,
            author: g.author,
            created_at: g.created_at,
        }
    }
}

/// A label to decide and the guideline shown for it.
#[derive(Debug, Object)]
pub struct LabelToDecideOut {
    pub name: String,
    #[oai(skip_serializing_if_is_none)]
    pub guideline: Option<GuidelineOut>,
}

/// The served version's score of one label for the document.
#[derive(Debug, Object)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
    pub threshold: f32,
    /// Binary and multi-label: score >= threshold; multi-class: the most probable class.
    pub above: bool,
}

#[derive(Debug, Object)]
pub struct LabellingItem {
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    /// The document's text as trainyard builds it, cut to 20,000 characters.
    pub text: String,
    pub text_truncated: bool,
    /// Why it is in the queue (absent for a document given back by undo that the current
    /// ranking no longer holds).
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<ReviewReason>,
    #[oai(skip_serializing_if_is_none)]
    pub explanation: Option<String>,
    /// Until then nobody else gets this document; asking for the next one renews it.
    pub lease_expires_at: chrono::DateTime<chrono::Utc>,
    /// The served version's scores (absent when this server serves no version of the model).
    #[oai(skip_serializing_if_is_none)]
    pub scores: Option<Vec<LabelScore>>,
    #[oai(skip_serializing_if_is_none)]
    pub scored_by_version: Option<i32>,
}

#[derive(Debug, Object)]
pub struct LabellingProgress {
    /// Documents you decided in this queue (skips not counted).
    pub answered_by_you: i64,
    pub skipped_by_you: i64,
    /// Documents of the queue not yet decided by the source's `overlap` people nor answered by
    /// you (some may be held by others now; documents you annotated outside labelling, which
    /// you will not be given, are counted too).
    pub left: i64,
}

#[derive(Debug, Clone, Copy, Enum, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum NextStatusOut {
    /// `item` is yours until `lease_expires_at`.
    Ready,
    /// The queue is being ranked; ask again in a few seconds.
    Computing,
    /// Nothing is left for you in this queue.
    Empty,
}

#[derive(Debug, Object)]
pub struct NextOut {
    pub status: NextStatusOut,
    pub model: String,
    pub version: i32,
    pub task: LabelTaskType,
    /// The labels to decide (multi-class: the classes, of which one is chosen).
    pub labels: Vec<LabelToDecideOut>,
    /// People who must decide each document of the source.
    pub overlap: i32,
    #[oai(skip_serializing_if_is_none)]
    pub item: Option<LabellingItem>,
    pub progress: LabellingProgress,
    #[oai(skip_serializing_if_is_none)]
    pub hint: Option<String>,
}

#[derive(Debug, Object)]
pub struct AnswerIn {
    #[oai(flatten)]
    pub queue: QueueIn,
    pub document_id: i64,
    /// label -> value for every label of the queue (multi-class: exactly one true). Absent
    /// with `skip`.
    pub labels: Option<BTreeMap<String, bool>>,
    /// Skip the document: you will not get it again in this queue; it stays for others.
    #[oai(default)]
    pub skip: bool,
    /// The guideline version shown for each label; a label left out is recorded under its
    /// current version.
    #[oai(default)]
    pub guideline_versions: BTreeMap<String, i32>,
}

#[derive(Debug, Object)]
pub struct AnswerOut {
    pub document_id: i64,
    pub annotator: String,
    pub skipped: bool,
    /// Annotation rows written (0 for a skip or a repeated identical answer).
    pub annotations: u64,
}

#[derive(Debug, Object)]
pub struct UndoOut {
    pub document_id: i64,
    pub skipped: bool,
    /// The decision taken back (empty for a skip).
    pub labels: BTreeMap<String, bool>,
}

#[derive(Debug, Object)]
pub struct GuidelineList {
    /// The latest version of each label's guideline.
    pub guidelines: Vec<GuidelineOut>,
}

#[derive(Debug, Object)]
pub struct GuidelineHistory {
    pub label: String,
    /// Newest first.
    pub versions: Vec<GuidelineOut>,
}

#[derive(Debug, Object)]
pub struct GuidelineIn {
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub label: String,
    /// 1 to 20,000 characters.
    #[oai(validator(min_length = 1, max_length = 20000))]
    pub text: String,
}

#[derive(Debug, Object)]
pub struct SourceOut {
    pub source: String,
    pub documents: i64,
    /// People who must decide each document before it leaves a labelling queue.
    pub overlap: i32,
}

#[derive(Debug, Object)]
pub struct SourceList {
    pub sources: Vec<SourceOut>,
}

#[derive(Debug, Object)]
pub struct SourceSettingsIn {
    /// 1 to 10 people.
    #[oai(validator(minimum(value = "1"), maximum(value = "10")))]
    pub overlap: i32,
}

#[derive(Debug, Object)]
pub struct AnnotatorAgreementOut {
    pub annotator: String,
    /// Documents this annotator voted on.
    pub documents: u64,
    /// Documents their kappa is computed on (others voted and the others' majority is clear).
    pub kappa_documents: u64,
    /// Cohen's kappa against the majority of the other annotators; absent when it cannot be
    /// computed (fewer than 2 documents, or no variation to expect).
    #[oai(skip_serializing_if_is_none)]
    pub kappa: Option<f64>,
}

#[derive(Debug, Object)]
pub struct GuidelineAgreementOut {
    /// Absent: votes made under no guideline.
    #[oai(skip_serializing_if_is_none)]
    pub guideline_version: Option<i32>,
    #[oai(skip_serializing_if_is_none)]
    pub alpha: Option<f64>,
    pub pairable_documents: u64,
    pub votes: u64,
}

#[derive(Debug, Object)]
pub struct AgreementGroupOut {
    pub label: String,
    pub source: String,
    /// Krippendorff's alpha (nominal) over every annotator; absent when it cannot be computed
    /// (no document with two votes, or every paired vote in one category).
    #[oai(skip_serializing_if_is_none)]
    pub alpha: Option<f64>,
    /// Documents with at least two votes.
    pub pairable_documents: u64,
    /// Latest votes (one per document and annotator).
    pub votes: u64,
    pub annotators: Vec<AnnotatorAgreementOut>,
    /// The same over the votes made under each guideline version.
    pub by_guideline_version: Vec<GuidelineAgreementOut>,
}

#[derive(Debug, Object)]
pub struct AgreementOut {
    /// One per (label, source), by label then source.
    pub groups: Vec<AgreementGroupOut>,
}

#[derive(ApiResponse)]
pub enum MeResponse {
    #[oai(status = 200)]
    Ok(Json<Me>),
    /// The token sent is not valid, revoked or expired.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum GuidelineCreated {
    /// The new version.
    #[oai(status = 201)]
    Created(Json<GuidelineOut>),
}

/// The name annotations are written under: the token's, or with auth off the body's.
fn annotator(req: &Request, given: Option<&str>) -> Result<String, ApiError> {
    match (req.data::<Principal>(), given) {
        (Some(p), None) => Ok(p.name.clone()),
        (Some(p), Some(g)) if g == p.name => Ok(p.name.clone()),
        (Some(p), Some(g)) => Err(ApiError::unprocessable(
            "annotator_mismatch",
            format!(
                "annotations are written under the token's name `{}`; leave `annotator` out \
                 (it names `{g}`)",
                p.name
            ),
            Some("annotator"),
        )),
        (None, Some(g)) if !super::limits::is_blank(g) => Ok(g.to_string()),
        (None, _) => Err(ApiError::unprocessable(
            "annotator_required",
            "with auth off, name the annotator in `annotator`",
            Some("annotator"),
        )),
    }
}

/// Postgres cannot store or compare text holding NUL: a parameter with one is a 400.
fn no_nul(value: Option<&str>, param: &str) -> Result<(), ApiError> {
    if value.is_some_and(|v| v.contains('\0')) {
        return Err(ApiError::bad_request(
            format!("`{param}` contains a NUL character (U+0000)"),
            Some(param),
        ));
    }
    Ok(())
}

fn queue_key(q: &QueueIn) -> QueueKey {
    QueueKey {
        model: q.model.clone(),
        strategy: q.strategy.into(),
        source: q.source.clone(),
        label: q.label.clone(),
    }
}

fn task_out(t: TaskType) -> LabelTaskType {
    match t {
        TaskType::Binary => LabelTaskType::Binary,
        TaskType::MultiClass => LabelTaskType::MultiClass,
        TaskType::MultiLabel => LabelTaskType::MultiLabel,
    }
}

/// The served version's scores of `text`, when this process serves a version of `model`.
async fn served_scores(
    state: &AppState,
    model: &str,
    text: &str,
) -> Option<(i32, Vec<LabelScore>)> {
    let loaded = state.models.get(model)?;
    let scores = loaded.scores(vec![text.to_string()]).await.ok()?.pop()?;
    let spec = &loaded.spec;
    let top = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    let out = spec
        .labels
        .iter()
        .zip(&scores)
        .enumerate()
        .map(|(i, (label, &score))| {
            let threshold = loaded.thresholds.get(i).copied().unwrap_or(0.5);
            LabelScore {
                label: label.clone(),
                score,
                threshold,
                above: if spec.task == TaskType::MultiClass {
                    Some(i) == top
                } else {
                    score >= threshold
                },
            }
        })
        .collect();
    Some((loaded.version, out))
}

fn agreement_out(a: &Agreement) -> (Option<f64>, u64) {
    (a.alpha, a.pairable_documents as u64)
}

pub struct LabellingApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Labelling")]
impl LabellingApi {
    /// Who the caller is: whether this server checks tokens, and the token's name and scopes
    /// (what the web app shows and allows). Needs no token: without one the answer says only
    /// whether auth is on (`scopes` empty when it is); a token that is not valid, revoked or
    /// expired is a 401.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, req: &Request, state: Data<&AppState>) -> MeResponse {
        let enabled = state.gate.policy.enabled;
        let scopes = |s: &[Scope]| s.iter().map(|s| s.as_str().to_string()).collect();
        match req.data::<Principal>() {
            Some(p) => MeResponse::Ok(Json(Me {
                auth_enabled: enabled,
                name: Some(p.name.clone()),
                token_id: Some(p.token_id.clone()),
                scopes: scopes(&p.scopes),
            })),
            None if enabled
                && req
                    .headers()
                    .contains_key(poem::http::header::AUTHORIZATION) =>
            {
                MeResponse::Unauthorized(Json(ErrorBody {
                    error: ErrorDetail {
                        code: "invalid_token".into(),
                        message: "the token is not valid, or it was revoked or has expired".into(),
                        kind: "authentication_error".into(),
                        param: None,
                    },
                }))
            }
            None => MeResponse::Ok(Json(Me {
                auth_enabled: enabled,
                name: None,
                token_id: None,
                scopes: if enabled {
                    Vec::new()
                } else {
                    scopes(&Scope::ALL)
                },
            })),
        }
    }

    /// The next document of a review queue for the caller, held for them (`review.lease_secs`,
    /// 120 s by default) so that nobody else gets it meanwhile; asking again renews the lease and
    /// gives the same document until it is answered. A document leaves the queue once the
    /// source's `overlap` people decided it; nobody gets a document they answered in the queue
    /// or annotated on its labels otherwise. `computing`: the queue is being ranked (a
    /// `review_rank` job); ask again shortly.
    #[oai(path = "/labelling/next", method = "post")]
    async fn next(
        &self,
        req: &Request,
        state: Data<&AppState>,
        body: Json<QueueIn>,
    ) -> Result<Json<NextOut>, ApiError> {
        let who = annotator(req, body.0.annotator.as_deref())?;
        let key = queue_key(&body.0);
        let next =
            labelling::next(&state.pool, &state.settings, &key, body.0.version, &who).await?;
        let mut item = None;
        if let Some(i) = next.item {
            let scored = served_scores(&state, &key.model, &i.text).await;
            item = Some(LabellingItem {
                document_id: i.document_id,
                source: i.source,
                external_id: i.external_id,
                text: i.text,
                text_truncated: i.text_truncated,
                reason: i.reason.map(Into::into),
                explanation: i.explanation,
                lease_expires_at: i.lease_expires_at,
                scored_by_version: scored.as_ref().map(|s| s.0),
                scores: scored.map(|s| s.1),
            });
        }
        Ok(Json(NextOut {
            status: match next.status {
                NextStatus::Ready => NextStatusOut::Ready,
                NextStatus::Computing => NextStatusOut::Computing,
                NextStatus::Empty => NextStatusOut::Empty,
            },
            model: next.version.model,
            version: next.version.version,
            task: task_out(next.version.task),
            labels: next
                .labels
                .into_iter()
                .map(|l| LabelToDecideOut {
                    name: l.name,
                    guideline: l.guideline.map(Into::into),
                })
                .collect(),
            overlap: next.overlap,
            item,
            progress: LabellingProgress {
                answered_by_you: next.progress.answered,
                skipped_by_you: next.progress.skipped,
                left: next.progress.left,
            },
            hint: next.hint,
        }))
    }

    /// Answer a document of a queue: a decision on every label of the queue (written as
    /// annotations under the caller's name, each with the guideline version it was made under)
    /// or a skip. 409 `lease_lost` when someone else holds the document now; sending the same
    /// answer again changes nothing, a different one is 409 `already_answered` (undo first).
    #[oai(path = "/labelling/answers", method = "post")]
    async fn answer(
        &self,
        req: &Request,
        state: Data<&AppState>,
        body: Json<AnswerIn>,
    ) -> Result<Json<AnswerOut>, ApiError> {
        let body = body.0;
        let who = annotator(req, body.queue.annotator.as_deref())?;
        let decision = match (body.skip, body.labels) {
            (true, None) => Decision::Skip,
            (false, Some(labels)) => Decision::Labels(labels),
            // A rule across fields: 422, as the document cannot state it.
            (true, Some(_)) => {
                return Err(ApiError::unprocessable(
                    "labels_or_skip",
                    "give `labels` or `skip: true`, not both",
                    Some("skip"),
                ))
            }
            (false, None) => {
                return Err(ApiError::unprocessable(
                    "labels_or_skip",
                    "give `labels` (a value for every label of the queue) or `skip: true`",
                    Some("labels"),
                ))
            }
        };
        let answered = labelling::answer(
            &state.pool,
            &queue_key(&body.queue),
            body.queue.version,
            &who,
            &labelling::Answer {
                document_id: body.document_id,
                decision,
                guideline_versions: body.guideline_versions,
            },
        )
        .await?;
        Ok(Json(AnswerOut {
            document_id: answered.document_id,
            annotator: who,
            skipped: answered.skipped,
            annotations: answered.annotations,
        }))
    }

    /// Take back the caller's latest answer in a queue (its annotations are deleted); the
    /// document is held for them again, so the next `labelling/next` gives it back. 409
    /// `nothing_to_undo` when they have none.
    #[oai(path = "/labelling/undo", method = "post")]
    async fn undo(
        &self,
        req: &Request,
        state: Data<&AppState>,
        body: Json<QueueIn>,
    ) -> Result<Json<UndoOut>, ApiError> {
        let who = annotator(req, body.0.annotator.as_deref())?;
        let undone =
            labelling::undo(&state.pool, &state.settings, &queue_key(&body.0), &who).await?;
        Ok(Json(UndoOut {
            document_id: undone.document_id,
            skipped: undone.skipped,
            labels: undone.labels,
        }))
    }

    /// The latest guideline of every label.
    #[oai(path = "/guidelines", method = "get")]
    async fn guidelines(&self, state: Data<&AppState>) -> Result<Json<GuidelineList>, ApiError> {
        let latest = guidelines::latest(&state.pool, None).await?;
        Ok(Json(GuidelineList {
            guidelines: latest.into_iter().map(Into::into).collect(),
        }))
    }

    /// Publish a label's guideline: the text becomes its next version, shown to annotators
    /// from now on and recorded with their answers.
    #[oai(path = "/guidelines", method = "post")]
    async fn publish_guideline(
        &self,
        req: &Request,
        state: Data<&AppState>,
        body: Json<GuidelineIn>,
    ) -> Result<GuidelineCreated, ApiError> {
        let author = req
            .data::<Principal>()
            .map_or_else(|| "anonymous".to_string(), |p| p.name.clone());
        let g = guidelines::publish(&state.pool, &body.0.label, &body.0.text, &author).await?;
        Ok(GuidelineCreated::Created(Json(g.into())))
    }

    /// Every version of one label's guideline, newest first (404 when it has none).
    #[oai(path = "/guidelines/:label", method = "get")]
    async fn guideline_history(
        &self,
        state: Data<&AppState>,
        #[oai(validator(min_length = 1, max_length = 512))] label: Path<String>,
    ) -> Result<Json<GuidelineHistory>, ApiError> {
        no_nul(Some(&label.0), "label")?;
        let versions = guidelines::history(&state.pool, &label.0).await?;
        if versions.is_empty() {
            return Err(ApiError::not_found("guideline of label", &label.0));
        }
        Ok(Json(GuidelineHistory {
            label: label.0,
            versions: versions.into_iter().map(Into::into).collect(),
        }))
    }

    /// Every source with documents, its document count and overlap.
    #[oai(path = "/sources", method = "get")]
    async fn sources(&self, state: Data<&AppState>) -> Result<Json<SourceList>, ApiError> {
        let sources = labelling::sources(&state.pool).await?;
        Ok(Json(SourceList {
            sources: sources
                .into_iter()
                .map(|s| SourceOut {
                    source: s.source,
                    documents: s.documents,
                    overlap: s.overlap,
                })
                .collect(),
        }))
    }

    /// Set how many people must decide each document of a source before it leaves a labelling
    /// queue (1 to 10).
    #[oai(path = "/sources/:source/settings", method = "post")]
    async fn set_source(
        &self,
        state: Data<&AppState>,
        #[oai(validator(min_length = 1, max_length = 512))] source: Path<String>,
        body: Json<SourceSettingsIn>,
    ) -> Result<Json<SourceOut>, ApiError> {
        no_nul(Some(&source.0), "source")?;
        let Some(s) = labelling::set_overlap(&state.pool, &source.0, body.0.overlap).await? else {
            return Err(ApiError::not_found("source", &source.0));
        };
        Ok(Json(SourceOut {
            source: s.source,
            documents: s.documents,
            overlap: s.overlap,
        }))
    }

    /// How far annotators agree, per label and source, over each annotator's latest vote per
    /// document: Krippendorff's alpha (nominal), each annotator's Cohen's kappa against the
    /// majority of the others, their counts, and the same per guideline version. A figure that
    /// cannot be computed is absent.
    #[oai(path = "/agreement", method = "get")]
    async fn agreement(
        &self,
        state: Data<&AppState>,
        /// Only this source.
        #[oai(validator(min_length = 1, max_length = 512))]
        source: Query<Option<String>>,
        /// Only this label.
        #[oai(validator(min_length = 1, max_length = 512))]
        label: Query<Option<String>>,
    ) -> Result<Json<AgreementOut>, ApiError> {
        no_nul(source.0.as_deref(), "source")?;
        no_nul(label.0.as_deref(), "label")?;
        // It reads every matching annotation: one of the requests bounded per process.
        let _permit = state.heavy_permit("exports and review queues")?;
        let groups =
            agreement::by_label_and_source(&state.pool, source.0.as_deref(), label.0.as_deref())
                .await?;
        Ok(Json(AgreementOut {
            groups: groups
                .into_iter()
                .map(|g| {
                    let (alpha, pairable) = agreement_out(&g.agreement);
                    AgreementGroupOut {
                        label: g.label,
                        source: g.source,
                        alpha,
                        pairable_documents: pairable,
                        votes: g.votes as u64,
                        annotators: g
                            .agreement
                            .annotators
                            .into_iter()
                            .map(|a| AnnotatorAgreementOut {
                                annotator: a.annotator,
                                documents: a.documents as u64,
                                kappa_documents: a.kappa_documents as u64,
                                kappa: a.kappa,
                            })
                            .collect(),
                        by_guideline_version: g
                            .by_guideline
                            .into_iter()
                            .map(|(version, votes, a)| {
                                let (alpha, pairable) = agreement_out(&a);
                                GuidelineAgreementOut {
                                    guideline_version: version,
                                    alpha,
                                    pairable_documents: pairable,
                                    votes: votes as u64,
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        }))
    }
}
