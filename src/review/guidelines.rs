//! Labelling guidelines: one text per label, versioned (a new text is the next version), and
//! the version each annotation was made under (`annotations.guideline_version`).
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::ReviewError;

/// Longest guideline text, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Guideline {
    pub label: String,
    pub version: i32,
    pub text: String,
    pub author: String,
    pub created_at: DateTime<Utc>,
}

fn from_row(row: &sqlx::postgres::PgRow) -> Guideline {
    Guideline {
        label: row.get("label"),
        version: row.get("version"),
        text: row.get("text"),
        author: row.get("author"),
        created_at: row.get("created_at"),
    }
}

/// The latest version of each label's guideline, by label; only `labels` when given.
pub async fn latest(
    pool: &PgPool,
    labels: Option<&[String]>,
) -> Result<Vec<Guideline>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (label) label, version, text, author, created_at
         FROM guidelines
         WHERE $1::text[] IS NULL OR label = ANY($1)
         ORDER BY label, version DESC",
    )
    .bind(labels)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Every version of one label's guideline, newest first.
pub async fn history(pool: &PgPool, label: &str) -> Result<Vec<Guideline>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT label, version, text, author, created_at FROM guidelines
         WHERE label = $1 ORDER BY version DESC",
    )
    .bind(label)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Writes `text` as the next version of `label`'s guideline. Two writers of one label are
/// serialized by a transaction-scoped advisory lock, so versions have no gaps or clashes.
pub async fn publish(
    pool: &PgPool,
    label: &str,
    text: &str,
    author: &str,
) -> Result<Guideline, ReviewError> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(ReviewError::Unprocessable {
            code: "invalid_guideline",
            message: format!("a guideline is 1 to {MAX_TEXT_CHARS} characters, not all whitespace"),
            param: "text",
        });
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('guideline:' || $1, 0))")
        .bind(label)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(
        "INSERT INTO guidelines (label, version, text, author)
         SELECT $1, COALESCE(max(version), 0) + 1, $2, $3 FROM guidelines WHERE label = $1
         RETURNING label, version, text, author, created_at",
    )
    .bind(label)
    .bind(text)
    .bind(author)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(from_row(&row))
}
