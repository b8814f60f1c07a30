//! Stored rankings of the review queue: computed once per (model version, strategy, source,
//! label, fingerprint) and kept in `review_rankings` / `review_ranking_items`, so that a page
//! is a range of positions read by primary key, never a new ranking.
//!
//! The fingerprint names the generations of what a ranking was computed from (documents and
//! annotations, the version's stored scores, stored embeddings; see the migration
//! `20261206000002_review_rankings.sql`): one O(1) read per request. A computation reads its
//! inputs in one `REPEATABLE READ` snapshot (the reader) and writes through a second
//! connection (the writer): items are staged in a temporary table as they are ranked, a batch
//! at a time, and numbered by Postgres's sort (`row_number() OVER (ORDER BY key)`), so the
//! process never holds a whole ranking.
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

use super::{Ranked, Ranking, Reason, ReviewItem, ReviewVersion, Strategy, ITEM_TEXT_CHARS};
use crate::config::Settings;

/// Rows staged per statement while a ranking is computed (the writer's memory bound).
pub const STAGE_BATCH: usize = 2_000;

/// What a ranking is of: the key of `review_rankings` (without the fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankingKey {
    pub model: String,
    pub version: i32,
    pub strategy: Strategy,
    pub source: Option<String>,
    pub label: Option<String>,
}

impl RankingKey {
    /// The source as stored: '' for every source.
    pub fn source_key(&self) -> &str {
        self.source.as_deref().unwrap_or("")
    }

    /// The label as stored: '' for every label of the version.
    pub fn label_key(&self) -> &str {
        self.label.as_deref().unwrap_or("")
    }

    /// One string for the key and a purpose, for a transaction-scoped advisory lock.
    fn lock_name(&self, purpose: &str) -> String {
        format!(
            "review-{purpose}:{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.model,
            self.version,
            self.strategy.as_str(),
            self.source_key(),
            self.label_key()
        )
    }
}

/// The fingerprint a ranking of `key` would be computed at now: the generations its strategy
/// reads, and the settings that change its result. One indexed read of 33 small rows (the
/// corpus and embeddings generations are sums of 16 shards each; migration
/// `20261206000004_generation_shards.sql`).
pub async fn fingerprint(
    conn: &mut PgConnection,
    settings: &Settings,
    version: &ReviewVersion,
    strategy: Strategy,
) -> Result<String, sqlx::Error> {
    let (corpus, embeddings, scores): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT sum(n)::bigint FROM corpus_generations WHERE scope = 'corpus'),
                (SELECT sum(n)::bigint FROM corpus_generations WHERE scope = 'embeddings'),
                COALESCE((SELECT n FROM review_score_generations
                          WHERE model_name = $1 AND version = $2), 0)",
    )
    .bind(&version.model)
    .bind(version.version)
    .fetch_one(conn)
    .await?;
    let text = settings.server.max_text_chars;
    Ok(match strategy {
        Strategy::Uncertain | Strategy::Uncovered => {
            format!("corpus={corpus};scores={scores};text={text}")
        }
        Strategy::Disagreement => format!("corpus={corpus}"),
        Strategy::SuspectLabel => format!(
            "corpus={corpus};embeddings={embeddings};text={text};tie={:?}",
            settings.datasets.tie_rule
        ),
    })
}

crate::db::text_enum! {
    /// A stored ranking's state (`review_rankings.status`): `computing` while its
    /// `review_rank` job runs, then `ready` or `failed`.
    pub enum RankingState {
        Computing = "computing",
        Ready = "ready",
        Failed = "failed",
    }
}

/// One row of `review_rankings`.
#[derive(Debug, Clone)]
pub struct StoredRanking {
    pub id: i64,
    pub fingerprint: String,
    pub status: RankingState,
    pub job_id: Option<String>,
    pub total: i64,
    pub summary: Ranking,
    pub error: Option<String>,
    pub requested_at: DateTime<Utc>,
    pub computed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, fingerprint, status, job_id, total, summary, error, requested_at, computed_at";

fn stored(row: &sqlx::postgres::PgRow) -> StoredRanking {
    let summary: Option<Value> = row.get("summary");
    StoredRanking {
        id: row.get("id"),
        fingerprint: row.get("fingerprint"),
        status: row.get("status"),
        job_id: row.get("job_id"),
        total: row.get("total"),
        summary: summary
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default(),
        error: row.get("error"),
        requested_at: row.get("requested_at"),
        computed_at: row.get("computed_at"),
    }
}

/// The latest row of `key` in `status` (`ready` and `computing` have at most one each).
pub async fn find(
    conn: &mut PgConnection,
    key: &RankingKey,
    status: RankingState,
) -> Result<Option<StoredRanking>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM review_rankings
         WHERE model_name = $1 AND version = $2 AND strategy = $3 AND source = $4 AND label = $5
           AND status = $6
         ORDER BY requested_at DESC LIMIT 1"
    )))
    .bind(&key.model)
    .bind(key.version)
    .bind(key.strategy.as_str())
    .bind(key.source_key())
    .bind(key.label_key())
    .bind(status)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(stored))
}

/// A row by id.
pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Option<StoredRanking>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM review_rankings WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(stored))
}

/// Serializes what one key does for one purpose (`compute`: computations; `enqueue`: job
/// requests), until the transaction ends.
pub async fn lock_key(
    conn: &mut PgConnection,
    key: &RankingKey,
    purpose: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(key.lock_name(purpose))
        .execute(conn)
        .await?;
    Ok(())
}

/// [`lock_key`] if no other transaction holds it: false when one does.
pub async fn try_lock_key(
    conn: &mut PgConnection,
    key: &RankingKey,
    purpose: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
        .bind(key.lock_name(purpose))
        .fetch_one(conn)
        .await
}

/// The page query ($1 ranking, $2 offset, $3 limit); see [`read_page`].
pub const PAGE_SQL: &str = "SELECT i.document_id, i.reason, i.explanation,
                d.source, d.external_id, d.title, d.description, d.tags, d.body
         FROM (SELECT position, document_id, reason, explanation FROM review_ranking_items
               WHERE ranking_id = $1 AND position >= $2 AND position < $2 + $3) i
         CROSS JOIN LATERAL (SELECT source, external_id, title, description, tags, body
                             FROM documents WHERE id = i.document_id LIMIT 1) d
         ORDER BY i.position";

/// One page of a stored ranking: positions are dense (0..total), so the page is the range
/// `offset <= position < offset + limit` of the primary key (at most `limit` rows whatever
/// plan reads them), each item joined to its document by a probe of its primary key (the
/// `LIMIT 1` keeps the lateral lookup from being flattened into a join of whole tables; a
/// document deleted since is left out).
pub async fn read_page(
    pool: &PgPool,
    settings: &Settings,
    ranking_id: i64,
    offset: i64,
    limit: i64,
) -> Result<Vec<ReviewItem>, sqlx::Error> {
    let rows = sqlx::query(PAGE_SQL)
        .bind(ranking_id)
        .bind(offset)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let reason: Value = row.get("reason");
        let Ok(reason) = serde_json::from_value::<Reason>(reason) else {
            continue;
        };
        let text = super::document_text(row, settings.server.max_text_chars);
        let (text, text_truncated) = match text.char_indices().nth(ITEM_TEXT_CHARS) {
            Some((cut, _)) => (text[..cut].to_string(), true),
            None => (text, false),
        };
        items.push(ReviewItem {
            document_id: row.get("document_id"),
            source: row.get("source"),
            external_id: row.get("external_id"),
            text,
            text_truncated,
            reason,
            explanation: row.get("explanation"),
        });
    }
    Ok(items)
}

/// A ranked item and its sort key: items are numbered by `key` ascending, compared as
/// [`compare_keys`] does (the same order in Rust and in Postgres's `ORDER BY`).
#[derive(Debug, Clone)]
pub struct Keyed {
    pub key: SortKey,
    pub item: Ranked,
}

/// (group, value, tie, tie): a smallint, a float8 (never NaN in practice; Postgres sorts NaN
/// last, as `total_cmp` sorts positive NaN), then two bigints.
pub type SortKey = (i16, f64, i64, i64);

/// The order of [`SortKey`]s, as `ORDER BY k1, k2, k3, k4` sorts them.
pub fn compare_keys(a: &SortKey, b: &SortKey) -> std::cmp::Ordering {
    a.0.cmp(&b.0)
        .then(a.1.total_cmp(&b.1))
        .then(a.2.cmp(&b.2))
        .then(a.3.cmp(&b.3))
}

/// Sorts keyed items in memory (the pure rankers, for tests and small inputs).
pub fn sort_keyed(mut items: Vec<Keyed>) -> Vec<Ranked> {
    items.sort_by(|a, b| compare_keys(&a.key, &b.key));
    items.into_iter().map(|k| k.item).collect()
}

/// Items of a ranking being computed, staged a batch at a time in a temporary table of the
/// writer's transaction.
pub struct Stager<'c> {
    conn: &'c mut PgConnection,
    buffer: Vec<Keyed>,
    pub total: i64,
}

impl<'c> Stager<'c> {
    pub async fn begin(conn: &'c mut PgConnection) -> Result<Stager<'c>, sqlx::Error> {
        sqlx::query(
            "CREATE TEMP TABLE review_staging (
                 k1 SMALLINT NOT NULL, k2 DOUBLE PRECISION NOT NULL, k3 BIGINT NOT NULL,
                 k4 BIGINT NOT NULL, document_id BIGINT NOT NULL, reason JSONB NOT NULL,
                 explanation TEXT NOT NULL
             ) ON COMMIT DROP",
        )
        .execute(&mut *conn)
        .await?;
        Ok(Stager {
            conn,
            buffer: Vec::with_capacity(STAGE_BATCH),
            total: 0,
        })
    }

    pub async fn push(&mut self, item: Keyed) -> Result<(), sqlx::Error> {
        self.buffer.push(item);
        if self.buffer.len() >= STAGE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), sqlx::Error> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let n = self.buffer.len();
        let (mut k1, mut k2, mut k3, mut k4) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut ids, mut reasons, mut explanations) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for k in self.buffer.drain(..) {
            k1.push(k.key.0);
            k2.push(k.key.1);
            k3.push(k.key.2);
            k4.push(k.key.3);
            ids.push(k.item.document_id);
            reasons.push(serde_json::to_value(&k.item.reason).unwrap_or(Value::Null));
            explanations.push(k.item.explanation);
        }
        sqlx::query(
            "INSERT INTO review_staging
             SELECT * FROM UNNEST($1::smallint[], $2::float8[], $3::bigint[], $4::bigint[],
                                  $5::bigint[], $6::jsonb[], $7::text[])",
        )
        .bind(&k1)
        .bind(&k2)
        .bind(&k3)
        .bind(&k4)
        .bind(&ids)
        .bind(&reasons)
        .bind(&explanations)
        .execute(&mut *self.conn)
        .await?;
        self.total += n as i64;
        Ok(())
    }

    /// Numbers the staged items into `review_ranking_items` and makes the ranking `ready`:
    /// `ticket` (a job's `computing` row) becomes it, or a new row is written. Older ready and
    /// failed rankings of the key are deleted (with their items). The caller commits.
    pub async fn finish(
        mut self,
        key: &RankingKey,
        fingerprint: &str,
        summary: &Ranking,
        ticket: Option<i64>,
    ) -> Result<i64, sqlx::Error> {
        self.flush().await?;
        let conn = self.conn;
        sqlx::query(
            "DELETE FROM review_rankings
             WHERE model_name = $1 AND version = $2 AND strategy = $3 AND source = $4 AND label = $5
               AND status IN ('ready', 'failed') AND id IS DISTINCT FROM $6",
        )
        .bind(&key.model)
        .bind(key.version)
        .bind(key.strategy.as_str())
        .bind(key.source_key())
        .bind(key.label_key())
        .bind(ticket)
        .execute(&mut *conn)
        .await?;
        let summary = serde_json::to_value(summary).unwrap_or(Value::Null);
        let updated: Option<i64> = match ticket {
            Some(id) => {
                sqlx::query_scalar(
                    "UPDATE review_rankings SET status = 'ready', fingerprint = $2, total = $3,
                        summary = $4, error = NULL, computed_at = now()
                 WHERE id = $1 RETURNING id",
                )
                .bind(id)
                .bind(fingerprint)
                .bind(self.total)
                .bind(&summary)
                .fetch_optional(&mut *conn)
                .await?
            }
            None => None,
        };
        let id = match updated {
            Some(id) => id,
            None => {
                sqlx::query_scalar(
                    "INSERT INTO review_rankings (model_name, version, strategy, source, label,
                                              fingerprint, status, total, summary, computed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'ready', $7, $8, now()) RETURNING id",
                )
                .bind(&key.model)
                .bind(key.version)
                .bind(key.strategy.as_str())
                .bind(key.source_key())
                .bind(key.label_key())
                .bind(fingerprint)
                .bind(self.total)
                .bind(&summary)
                .fetch_one(&mut *conn)
                .await?
            }
        };
        sqlx::query(
            "INSERT INTO review_ranking_items (ranking_id, position, document_id, reason, explanation)
             SELECT $1, row_number() OVER (ORDER BY k1, k2, k3, k4) - 1, document_id, reason, explanation
             FROM review_staging",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        Ok(id)
    }
}
