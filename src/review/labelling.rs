//! Labelling by people: the review queue handed out one document at a time. A person asks for
//! the next document of a queue (model, strategy, source, label) and holds it under a short
//! lease, so two people never get the same document at once; a document leaves the queue once
//! the source's `overlap` people decided it there; nobody gets a document they already answered
//! (in the queue, or on its labels by any other way). Decisions are written as annotations
//! under the person's name with the guideline version they were made under; undo removes the
//! latest one.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Row};

use super::guidelines::{self, Guideline};
use super::{
    resolve_version, PageStatus, Reason, ReviewError, ReviewRequest, ReviewVersion, Strategy,
};
use crate::config::Settings;
use crate::datasets::TaskType;

/// Characters of a document's text a labelling item carries.
pub const ITEM_TEXT_CHARS: usize = 20_000;

/// A queue's ranking is computed again at most this often while people label (each answer
/// changes the votes; what they answered is filtered out of the older ranking meanwhile).
const RERANK_SECS: i64 = 30;

/// Candidates examined per query while looking for a document nobody holds.
const CANDIDATES: i64 = 50;

/// Positions of a ranking one search query reads at most: every query over a ranking is a
/// bounded range of its primary key, whatever plan the statistics of the moment give it.
const WINDOW: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum LabellingError {
    #[error(transparent)]
    Review(#[from] ReviewError),
    /// The request cannot be done in the queue's current state.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
}

impl From<sqlx::Error> for LabellingError {
    fn from(e: sqlx::Error) -> LabellingError {
        LabellingError::Review(ReviewError::Database(e))
    }
}

fn invalid(code: &'static str, param: &'static str, message: String) -> LabellingError {
    LabellingError::Review(ReviewError::Unprocessable {
        code,
        message,
        param,
    })
}

/// One labelling queue: the review queue's key without its version (answers and overlap carry
/// over when a new version is served).
#[derive(Debug, Clone)]
pub struct QueueKey {
    pub model: String,
    pub strategy: Strategy,
    pub source: String,
    pub label: Option<String>,
}

impl QueueKey {
    /// The queue's name as stored in leases and answers.
    pub fn name(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.model,
            self.strategy.as_str(),
            self.source,
            self.label.as_deref().unwrap_or("")
        )
    }
}

/// A label to decide, with its current guideline.
#[derive(Debug, Clone)]
pub struct LabelToDecide {
    pub name: String,
    pub guideline: Option<Guideline>,
}

/// The document handed to a person.
#[derive(Debug, Clone)]
pub struct LeasedItem {
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub text: String,
    pub text_truncated: bool,
    /// Why it is in the queue (absent when the current ranking no longer holds it: a document
    /// given back by undo).
    pub reason: Option<Reason>,
    pub explanation: Option<String>,
    pub lease_expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStatus {
    /// `item` is the person's document.
    Ready,
    /// The ranking of the queue is being computed; ask again shortly.
    Computing,
    /// Nothing is left for this person.
    Empty,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Documents this person decided in the queue (skips not counted).
    pub answered: i64,
    pub skipped: i64,
    /// Documents of the ranking not yet decided by `overlap` people in the queue nor answered
    /// by this person there (those held by others included; documents they annotated outside
    /// labelling, which they will not be given, too).
    pub left: i64,
}

#[derive(Debug, Clone)]
pub struct Next {
    pub status: NextStatus,
    pub version: ReviewVersion,
    pub labels: Vec<LabelToDecide>,
    pub overlap: i32,
    pub item: Option<LeasedItem>,
    pub progress: Progress,
    pub hint: Option<String>,
}

/// The labels a person decides in a queue: every class of a multi-class version (one is
/// chosen), else the queue's label or all of the version's.
pub fn labels_to_decide(version: &ReviewVersion, label: Option<&str>) -> Vec<String> {
    match (version.task, label) {
        (TaskType::MultiClass, _) | (_, None) => version.labels.clone(),
        (_, Some(l)) => vec![l.to_string()],
    }
}

/// How many people must decide a document of `source`; 1 when nobody set it.
pub async fn overlap(pool: &PgPool, source: &str) -> Result<i32, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT overlap FROM source_settings WHERE source = $1")
            .bind(source)
            .fetch_optional(pool)
            .await?
            .unwrap_or(1),
    )
}

/// A source, its documents and its overlap.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub source: String,
    pub documents: i64,
    pub overlap: i32,
}

/// Every source with documents, by name.
pub async fn sources(pool: &PgPool) -> Result<Vec<SourceInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT d.source, d.n, COALESCE(s.overlap, 1) AS overlap
         FROM (SELECT source, count(*) AS n FROM documents GROUP BY source) d
         LEFT JOIN source_settings s ON s.source = d.source
         ORDER BY d.source",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| SourceInfo {
            source: r.get("source"),
            documents: r.get("n"),
            overlap: r.get("overlap"),
        })
        .collect())
}

/// Sets how many people must decide each document of `source` (1 to 10). None when the
/// source has no documents.
pub async fn set_overlap(
    pool: &PgPool,
    source: &str,
    overlap: i32,
) -> Result<Option<SourceInfo>, LabellingError> {
    if !(1..=10).contains(&overlap) {
        return Err(invalid(
            "invalid_overlap",
            "overlap",
            format!("overlap must be 1 to 10 people, got {overlap}"),
        ));
    }
    let documents: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE source = $1")
        .bind(source)
        .fetch_one(pool)
        .await?;
    if documents == 0 {
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO source_settings (source, overlap) VALUES ($1, $2)
         ON CONFLICT (source) DO UPDATE SET overlap = EXCLUDED.overlap, updated_at = now()",
    )
    .bind(source)
    .bind(overlap)
    .execute(pool)
    .await?;
    Ok(Some(SourceInfo {
        source: source.to_string(),
        documents,
        overlap,
    }))
}

/// The documents of ranking `$1` at positions `$2` to `$7` (excluded) that `$3` (a person) could
/// get in queue `$4`: not answered by them in the queue, not annotated by them on the labels
/// `$5`, decided there by fewer than `$6` people. In ranking order.
const OPEN_ITEMS: &str = "
    FROM review_ranking_items i
    WHERE i.ranking_id = $1 AND i.position >= $2 AND i.position < $7
      AND NOT EXISTS (SELECT 1 FROM label_answers a
                      WHERE a.queue = $4 AND a.document_id = i.document_id AND a.annotator = $3)
      AND NOT EXISTS (SELECT 1 FROM annotations n
                      WHERE n.document_id = i.document_id AND n.annotator = $3
                        AND n.label = ANY($5))
      AND (SELECT count(*) FROM label_answers a
           WHERE a.queue = $4 AND a.document_id = i.document_id AND NOT a.skipped) < $6";

/// The next document for `annotator` in `key`'s queue, leased to them for
/// `review.lease_secs`. Their live lease in the queue, if any, is renewed and given again (a
/// reload, or the document undo gave back).
pub async fn next(
    pool: &PgPool,
    settings: &Settings,
    key: &QueueKey,
    version: Option<i32>,
    annotator: &str,
) -> Result<Next, LabellingError> {
    let version = resolve_version(pool, &key.model, version).await?;
    let labels = labels_to_decide(&version, key.label.as_deref());
    let overlap = overlap(pool, &key.source).await?;
    let shown = guidelines::latest(pool, Some(&labels)).await?;
    let labels: Vec<LabelToDecide> = labels
        .into_iter()
        .map(|name| LabelToDecide {
            guideline: shown.iter().find(|g| g.label == name).cloned(),
            name,
        })
        .collect();
    let names: Vec<String> = labels.iter().map(|l| l.name.clone()).collect();
    let queue = key.name();
    let lease_secs = settings.review.lease_secs as f64;
    let mut progress = answered(pool, &queue, annotator).await?;
    let request = ReviewRequest {
        strategy: key.strategy,
        source: Some(key.source.clone()),
        label: key.label.clone(),
        limit: 1,
        offset: 0,
        reuse_within_secs: Some(RERANK_SECS),
    };
    // A ranking replaced by a newer one while it was being read (its items are deleted with
    // it) is read again from the newer one.
    let mut attempts = 0;
    let (ranking_id, total, chosen, hint) = loop {
        attempts += 1;
        let page = super::page(pool, settings, &version, &request).await?;
        let Some(ranking_id) = page.ranking_id else {
            let mut result = Next {
                status: NextStatus::Empty,
                version,
                labels,
                overlap,
                item: None,
                progress,
                hint: page.ranking.hint.clone(),
            };
            if page.status == PageStatus::Computing {
                result.status = NextStatus::Computing;
                result.hint = Some(
                    "the queue is being ranked (a review_rank job); ask again in a few seconds"
                        .into(),
                );
            }
            return Ok(result);
        };
        let from = cursor(pool, ranking_id, page.total, &queue, overlap).await?;
        let chosen = choose(
            pool,
            (ranking_id, from, page.total),
            &queue,
            annotator,
            &names,
            overlap,
            lease_secs,
        )
        .await?;
        let replaced = chosen.is_none()
            && !sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM review_rankings WHERE id = $1)",
            )
            .bind(ranking_id)
            .fetch_one(pool)
            .await?;
        if !replaced || attempts >= 3 {
            break (ranking_id, page.total, chosen, page.ranking.hint);
        }
    };
    let mut result = Next {
        status: NextStatus::Empty,
        version,
        labels,
        overlap,
        item: None,
        progress,
        hint,
    };
    // What is gone from the queue, counted from its answers (they grow with the work done,
    // not with the corpus), each probed in the ranking by key.
    let gone: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT document_id FROM label_answers WHERE queue = $1
             GROUP BY document_id
             HAVING count(*) FILTER (WHERE NOT skipped) >= $2 OR bool_or(annotator = $3)) g
         WHERE EXISTS (SELECT 1 FROM review_ranking_items i
                       WHERE i.ranking_id = $4 AND i.document_id = g.document_id)",
    )
    .bind(&queue)
    .bind(i64::from(overlap))
    .bind(annotator)
    .bind(ranking_id)
    .fetch_one(pool)
    .await?;
    progress.left = (total - gone).max(0);
    result.progress = progress;
    if let Some(document_id) = chosen {
        result.item = Some(item(pool, settings, ranking_id, document_id, annotator).await?);
        result.status = NextStatus::Ready;
    }
    Ok(result)
}

/// The first position of the ranking whose document `overlap` people have not all decided in
/// the queue: everything before it is gone for everyone, so a search starts there. Kept per
/// (ranking, queue, overlap) in `label_cursors` and moved forward over the documents decided
/// since, so each decided document is stepped over once per ranking, not once per request.
async fn cursor(
    pool: &PgPool,
    ranking_id: i64,
    total: i64,
    queue: &str,
    overlap: i32,
) -> Result<i64, sqlx::Error> {
    let stored: i64 = sqlx::query_scalar(
        "SELECT position FROM label_cursors WHERE ranking_id = $1 AND queue = $2 AND overlap = $3",
    )
    .bind(ranking_id)
    .bind(queue)
    .bind(overlap)
    .fetch_optional(pool)
    .await?
    .unwrap_or(0);
    let mut from = stored;
    let position = loop {
        if from >= total {
            break total;
        }
        let first_open: Option<i64> = sqlx::query_scalar(
            "SELECT i.position FROM review_ranking_items i
             WHERE i.ranking_id = $1 AND i.position >= $2 AND i.position < $5
               AND (SELECT count(*) FROM label_answers a
                    WHERE a.queue = $3 AND a.document_id = i.document_id AND NOT a.skipped) < $4
             ORDER BY i.position LIMIT 1",
        )
        .bind(ranking_id)
        .bind(from)
        .bind(queue)
        .bind(i64::from(overlap))
        .bind(from + WINDOW)
        .fetch_optional(pool)
        .await?;
        match first_open {
            Some(position) => break position,
            None => from += WINDOW,
        }
    };
    if position > stored {
        // Answers are never taken back below it except by undo, which resets the queue's
        // cursors; concurrent movers only ever raise it.
        sqlx::query(
            "INSERT INTO label_cursors (ranking_id, queue, overlap, position)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (ranking_id, queue, overlap)
             DO UPDATE SET position = GREATEST(label_cursors.position, EXCLUDED.position)",
        )
        .bind(ranking_id)
        .bind(queue)
        .bind(overlap)
        .bind(position)
        .execute(pool)
        .await?;
    }
    Ok(position)
}

/// The person's live lease in the queue, renewed; else the first open document of the ranking
/// that they manage to lease.
/// `ranking`: its id, the position to search from and its total.
async fn choose(
    pool: &PgPool,
    (ranking_id, from, total): (i64, i64, i64),
    queue: &str,
    annotator: &str,
    names: &[String],
    overlap: i32,
    lease_secs: f64,
) -> Result<Option<i64>, sqlx::Error> {
    let held: Option<i64> = sqlx::query_scalar(
        "UPDATE label_leases SET expires_at = now() + make_interval(secs => $3)
         WHERE annotator = $1 AND queue = $2 AND expires_at > now()
         RETURNING document_id",
    )
    .bind(annotator)
    .bind(queue)
    .bind(lease_secs)
    .fetch_optional(pool)
    .await?;
    if held.is_some() {
        return Ok(held);
    }
    sqlx::query("DELETE FROM label_leases WHERE annotator = $1 AND queue = $2")
        .bind(annotator)
        .bind(queue)
        .execute(pool)
        .await?;
    let mut from = from;
    while from < total {
        let end = from + WINDOW;
        let rows: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT i.position, i.document_id {OPEN_ITEMS}
               AND NOT EXISTS (SELECT 1 FROM label_leases l
                               WHERE l.document_id = i.document_id AND l.annotator <> $3
                                 AND l.expires_at > now())
             ORDER BY i.position LIMIT {CANDIDATES}"
        )))
        .bind(ranking_id)
        .bind(from)
        .bind(annotator)
        .bind(queue)
        .bind(names)
        .bind(i64::from(overlap))
        .bind(end)
        .fetch_all(pool)
        .await?;
        let Some(&(last, _)) = rows.last() else {
            from = end;
            continue;
        };
        for (_, document_id) in rows {
            if take(pool, document_id, annotator, queue, lease_secs).await?
                && still_open(pool, document_id, annotator, queue, names, overlap).await?
            {
                return Ok(Some(document_id));
            }
            // Held by someone else since, or decided meanwhile: give it up, try the next.
            release(pool, document_id, annotator).await?;
        }
        from = last + 1;
    }
    Ok(None)
}

/// Leases `document_id` to `annotator` unless someone else holds it; true when they now do.
async fn take(
    pool: &PgPool,
    document_id: i64,
    annotator: &str,
    queue: &str,
    lease_secs: f64,
) -> Result<bool, sqlx::Error> {
    // ON CONFLICT re-checks the condition on the row's latest version under its lock: of two
    // people racing for a free document exactly one gets it.
    let taken: Option<i64> = sqlx::query_scalar(
        "INSERT INTO label_leases (document_id, annotator, queue, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         ON CONFLICT (document_id) DO UPDATE
             SET annotator = EXCLUDED.annotator, queue = EXCLUDED.queue,
                 expires_at = EXCLUDED.expires_at
             WHERE label_leases.expires_at <= now()
                OR label_leases.annotator = EXCLUDED.annotator
         RETURNING document_id",
    )
    .bind(document_id)
    .bind(annotator)
    .bind(queue)
    .bind(lease_secs)
    .fetch_optional(pool)
    .await?;
    Ok(taken.is_some())
}

async fn release(pool: &PgPool, document_id: i64, annotator: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM label_leases WHERE document_id = $1 AND annotator = $2")
        .bind(document_id)
        .bind(annotator)
        .execute(pool)
        .await?;
    Ok(())
}

/// Checked after the lease is taken, in a later statement: an answer committed before the
/// lease (which deleted the answerer's lease) is seen here.
async fn still_open(
    pool: &PgPool,
    document_id: i64,
    annotator: &str,
    queue: &str,
    labels: &[String],
    overlap: i32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM label_answers
                            WHERE queue = $2 AND document_id = $1 AND annotator = $3)
            AND NOT EXISTS (SELECT 1 FROM annotations
                            WHERE document_id = $1 AND annotator = $3 AND label = ANY($4))
            AND (SELECT count(*) FROM label_answers
                 WHERE queue = $2 AND document_id = $1 AND NOT skipped) < $5",
    )
    .bind(document_id)
    .bind(queue)
    .bind(annotator)
    .bind(labels)
    .bind(i64::from(overlap))
    .fetch_one(pool)
    .await
}

async fn answered(pool: &PgPool, queue: &str, annotator: &str) -> Result<Progress, sqlx::Error> {
    let (answered, skipped): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT skipped), count(*) FILTER (WHERE skipped)
         FROM label_answers WHERE queue = $1 AND annotator = $2",
    )
    .bind(queue)
    .bind(annotator)
    .fetch_one(pool)
    .await?;
    Ok(Progress {
        answered,
        skipped,
        ..Progress::default()
    })
}

async fn item(
    pool: &PgPool,
    settings: &Settings,
    ranking_id: i64,
    document_id: i64,
    annotator: &str,
) -> Result<LeasedItem, sqlx::Error> {
    let row = sqlx::query(
        "SELECT d.id, d.source, d.external_id, d.title, d.description, d.body, d.tags,
                l.expires_at, i.reason, i.explanation
         FROM documents d
         JOIN label_leases l ON l.document_id = d.id AND l.annotator = $3
         LEFT JOIN LATERAL (SELECT reason, explanation FROM review_ranking_items
                            WHERE ranking_id = $1 AND document_id = d.id LIMIT 1) i ON true
         WHERE d.id = $2",
    )
    .bind(ranking_id)
    .bind(document_id)
    .bind(annotator)
    .fetch_one(pool)
    .await?;
    let text = super::document_text(&row, settings.server.max_text_chars);
    let (text, text_truncated) = match text.char_indices().nth(ITEM_TEXT_CHARS) {
        Some((cut, _)) => (text[..cut].to_string(), true),
        None => (text, false),
    };
    let reason: Option<Value> = row.get("reason");
    Ok(LeasedItem {
        document_id,
        source: row.get("source"),
        external_id: row.get("external_id"),
        text,
        text_truncated,
        reason: reason.and_then(|r| serde_json::from_value(r).ok()),
        explanation: row.get("explanation"),
        lease_expires_at: row.get("expires_at"),
    })
}

/// What a person answered about a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Skip,
    /// label -> value for every label to decide.
    Labels(BTreeMap<String, bool>),
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub document_id: i64,
    pub decision: Decision,
    /// The guideline versions the person saw, per label; a decided label left out is recorded
    /// under its current version (none when it has no guideline).
    pub guideline_versions: BTreeMap<String, i32>,
}

#[derive(Debug, Clone)]
pub struct Answered {
    pub document_id: i64,
    pub skipped: bool,
    /// Annotation rows written (0 for a skip, and for a repeated identical answer).
    pub annotations: u64,
}

/// Records `annotator`'s answer on a document of `key`'s queue: the annotations (one per label,
/// with its guideline version) and the answer, in one transaction that also ends their lease.
/// Refused with `lease_lost` when someone else holds the document now. Sending the same answer
/// again changes nothing (a retried request); a different one is `already_answered`.
pub async fn answer(
    pool: &PgPool,
    key: &QueueKey,
    version: Option<i32>,
    annotator: &str,
    answer: &Answer,
) -> Result<Answered, LabellingError> {
    let version = resolve_version(pool, &key.model, version).await?;
    let to_decide = labels_to_decide(&version, key.label.as_deref());
    if let Decision::Labels(values) = &answer.decision {
        check_decision(version.task, &to_decide, values)?;
    }
    let queue = key.name();
    let source: Option<String> = sqlx::query_scalar("SELECT source FROM documents WHERE id = $1")
        .bind(answer.document_id)
        .fetch_optional(pool)
        .await?;
    if source.as_deref() != Some(key.source.as_str()) {
        return Err(invalid(
            "not_in_source",
            "document_id",
            format!(
                "document {} is not a document of source `{}`",
                answer.document_id, key.source
            ),
        ));
    }
    let decided: Vec<&String> = match &answer.decision {
        Decision::Labels(values) => values.keys().collect(),
        Decision::Skip => Vec::new(),
    };
    for (label, v) in &answer.guideline_versions {
        if !decided.contains(&label) {
            return Err(invalid(
                "unknown_label",
                "guideline_versions",
                format!("guideline_versions names `{label}`, which this answer does not decide"),
            ));
        }
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM guidelines WHERE label = $1 AND version = $2)",
        )
        .bind(label)
        .bind(v)
        .fetch_one(pool)
        .await?;
        if !exists {
            return Err(invalid(
                "unknown_guideline",
                "guideline_versions",
                format!("label `{label}` has no guideline version {v}"),
            ));
        }
    }
    let mut tx = pool.begin().await?;
    let holder: Option<(String, bool)> = sqlx::query_as(
        "SELECT annotator, expires_at > now() FROM label_leases WHERE document_id = $1 FOR UPDATE",
    )
    .bind(answer.document_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((other, true)) = &holder {
        if other != annotator {
            return Err(LabellingError::Conflict {
                code: "lease_lost",
                message: format!(
                    "document {} was given to someone else after your lease ran out; your answer \
                     was not recorded",
                    answer.document_id
                ),
            });
        }
    }
    let labels_json = match &answer.decision {
        Decision::Labels(values) => serde_json::to_value(values).unwrap_or_default(),
        Decision::Skip => Value::Object(Default::default()),
    };
    let skipped = answer.decision == Decision::Skip;
    let previous: Option<(bool, Value)> = sqlx::query_as(
        "SELECT skipped, labels FROM label_answers
         WHERE queue = $1 AND document_id = $2 AND annotator = $3",
    )
    .bind(&queue)
    .bind(answer.document_id)
    .bind(annotator)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((was_skipped, was_labels)) = previous {
        if was_skipped == skipped && was_labels == labels_json {
            return Ok(Answered {
                document_id: answer.document_id,
                skipped,
                annotations: 0,
            });
        }
        return Err(LabellingError::Conflict {
            code: "already_answered",
            message: format!(
                "you already answered document {} in this queue; undo it first to change it",
                answer.document_id
            ),
        });
    }
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *tx)
        .await?;
    let mut written = 0;
    if let Decision::Labels(values) = &answer.decision {
        let labels: Vec<&String> = values.keys().collect();
        let current = guidelines_now(&mut tx, &labels).await?;
        for (label, value) in values {
            let shown = answer
                .guideline_versions
                .get(label)
                .copied()
                .or_else(|| current.get(label.as_str()).copied());
            written += sqlx::query(
                "INSERT INTO annotations
                     (document_id, annotator, label, value, annotated_at, guideline_version)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(answer.document_id)
            .bind(annotator)
            .bind(label)
            .bind(value)
            .bind(now)
            .bind(shown)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
    }
    sqlx::query(
        "INSERT INTO label_answers (queue, document_id, annotator, skipped, labels, annotated_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&queue)
    .bind(answer.document_id)
    .bind(annotator)
    .bind(skipped)
    .bind(&labels_json)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM label_leases WHERE document_id = $1 AND annotator = $2")
        .bind(answer.document_id)
        .bind(annotator)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Answered {
        document_id: answer.document_id,
        skipped,
        annotations: written,
    })
}

async fn guidelines_now(
    tx: &mut sqlx::PgConnection,
    labels: &[&String],
) -> Result<BTreeMap<String, i32>, sqlx::Error> {
    let labels: Vec<&str> = labels.iter().map(|l| l.as_str()).collect();
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT label, max(version) FROM guidelines WHERE label = ANY($1) GROUP BY label",
    )
    .bind(&labels)
    .fetch_all(tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// A decision names every label to decide and nothing else; a multi-class one chooses exactly
/// one class.
pub fn check_decision(
    task: TaskType,
    to_decide: &[String],
    values: &BTreeMap<String, bool>,
) -> Result<(), LabellingError> {
    if let Some(extra) = values.keys().find(|l| !to_decide.contains(l)) {
        return Err(invalid(
            "unknown_label",
            "labels",
            format!(
                "`{extra}` is not a label of this queue (its labels: {})",
                to_decide.join(", ")
            ),
        ));
    }
    let missing: Vec<&str> = to_decide
        .iter()
        .filter(|l| !values.contains_key(*l))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(invalid(
            "undecided_labels",
            "labels",
            format!(
                "decide every label of the queue; missing: {}",
                missing.join(", ")
            ),
        ));
    }
    if task == TaskType::MultiClass {
        let chosen = values.values().filter(|v| **v).count();
        if chosen != 1 {
            return Err(invalid(
                "one_class",
                "labels",
                format!(
                    "a multi-class decision chooses exactly one class; this one chooses {chosen}"
                ),
            ));
        }
    }
    Ok(())
}

/// What undo took back.
#[derive(Debug, Clone)]
pub struct Undone {
    pub document_id: i64,
    pub skipped: bool,
    pub labels: BTreeMap<String, bool>,
}

/// Takes back `annotator`'s latest answer in the queue: its annotations and the answer go, and
/// the document is leased to them again (unless someone else holds it now), so their next
/// `next` gives it back.
pub async fn undo(
    pool: &PgPool,
    settings: &Settings,
    key: &QueueKey,
    annotator: &str,
) -> Result<Undone, LabellingError> {
    let queue = key.name();
    let mut tx = pool.begin().await?;
    let latest: Option<(i64, i64, bool, Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, document_id, skipped, labels, annotated_at FROM label_answers
         WHERE queue = $1 AND annotator = $2 ORDER BY id DESC LIMIT 1 FOR UPDATE",
    )
    .bind(&queue)
    .bind(annotator)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, document_id, skipped, labels, at)) = latest else {
        return Err(LabellingError::Conflict {
            code: "nothing_to_undo",
            message: "you have no answer in this queue to undo".into(),
        });
    };
    let labels: BTreeMap<String, bool> = serde_json::from_value(labels).unwrap_or_default();
    let names: Vec<&String> = labels.keys().collect();
    sqlx::query(
        "DELETE FROM annotations
         WHERE document_id = $1 AND annotator = $2 AND annotated_at = $3 AND label = ANY($4)",
    )
    .bind(document_id)
    .bind(annotator)
    .bind(at)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM label_answers WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    // The document may be open again below a cursor of the queue.
    sqlx::query("DELETE FROM label_cursors WHERE queue = $1")
        .bind(&queue)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM label_leases WHERE annotator = $1 AND queue = $2")
        .bind(annotator)
        .bind(&queue)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    take(
        pool,
        document_id,
        annotator,
        &queue,
        settings.review.lease_secs as f64,
    )
    .await?;
    Ok(Undone {
        document_id,
        skipped,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
        pairs.iter().map(|(l, v)| (l.to_string(), *v)).collect()
    }

    #[test]
    fn a_decision_names_every_label_and_one_class() {
        let labels = vec!["a".to_string(), "b".to_string()];
        assert!(check_decision(
            TaskType::MultiLabel,
            &labels,
            &decision(&[("a", true), ("b", true)])
        )
        .is_ok());
        let missing = check_decision(TaskType::MultiLabel, &labels, &decision(&[("a", true)]));
        assert!(matches!(
            missing,
            Err(LabellingError::Review(ReviewError::Unprocessable {
                code: "undecided_labels",
                ..
            }))
        ));
        let extra = check_decision(
            TaskType::MultiLabel,
            &labels,
            &decision(&[("a", true), ("b", false), ("c", true)]),
        );
        assert!(matches!(
            extra,
            Err(LabellingError::Review(ReviewError::Unprocessable {
                code: "unknown_label",
                ..
            }))
        ));
        let two = check_decision(
            TaskType::MultiClass,
            &labels,
            &decision(&[("a", true), ("b", true)]),
        );
        assert!(matches!(
            two,
            Err(LabellingError::Review(ReviewError::Unprocessable {
                code: "one_class",
                ..
            }))
        ));
        assert!(check_decision(
            TaskType::MultiClass,
            &labels,
            &decision(&[("a", false), ("b", true)])
        )
        .is_ok());
    }

    #[test]
    fn queue_names_differ_by_every_part() {
        let key = |m: &str, s: Strategy, src: &str, l: Option<&str>| QueueKey {
            model: m.into(),
            strategy: s,
            source: src.into(),
            label: l.map(str::to_string),
        };
        let names = [
            key("m", Strategy::Uncertain, "s", None).name(),
            key("m2", Strategy::Uncertain, "s", None).name(),
            key("m", Strategy::Disagreement, "s", None).name(),
            key("m", Strategy::Uncertain, "s2", None).name(),
            key("m", Strategy::Uncertain, "s", Some("l")).name(),
        ];
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
