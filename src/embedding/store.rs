//! Writes to the shared `embeddings` table, inside the caller's transaction.
//!
//! Fast path: binary COPY straight into `embeddings` under a savepoint (no parameter arrays to
//! build or parse). Jobs check which checksums are stored before embedding, so a conflict only
//! happens when two datasets embed the same new text at the same moment; then the savepoint is
//! rolled back and the batch goes through `INSERT ... ON CONFLICT DO NOTHING`, which keeps the
//! first vector. `overwrite` (a dataset built with `force_regenerate`) always upserts.
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::vector_to_bytes;

/// Opens the transaction an embed job stores its batch in, with `synchronous_commit = off`.
///
/// Its COMMIT then returns without waiting for the WAL flush (on this machine a commit of a
/// 1,024-row batch spent ~10 ms in fsync, a third of the store time). This loses nothing that
/// matters: the job is acknowledged afterwards in apalis's own transaction, whose synchronous
/// commit flushes the WAL in order, so this batch is durable before the job counts as done. If
/// the server dies in between, the batch and its `done` mark vanish together and the job,
/// still unacknowledged, runs again (it is idempotent).
pub async fn begin_batch_write(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Which of `$3` (checksums) have a vector for model `$1` and dimension count `$2`.
///
/// One primary-key probe per checksum, whatever the planner's statistics say: the probe sits in
/// a LATERAL subquery with a LIMIT, which the planner cannot flatten into a join, so it is
/// always a nested loop over the array. Written as `checksum = ANY($3)` the same question was
/// planned (at 287k stored vectors, statistics from a small table) as a scan of every vector
/// of the model with the whole array compared against each row: quadratic in the corpus.
pub const STORED_CHECKSUMS: &str = "
SELECT c.checksum FROM unnest($3::text[]) AS c(checksum)
CROSS JOIN LATERAL (
    SELECT 1 FROM embeddings e
    WHERE e.model = $1 AND e.dimensions = $2 AND e.checksum = c.checksum LIMIT 1
) AS hit";

/// Which of `checksums` already have a vector for this model and dimension count.
#[tracing::instrument(name = "db.stored_checksums", skip_all, fields(db.system.name = "postgresql", texts = checksums.len()))]
pub async fn stored_checksums(
    pool: &sqlx::PgPool,
    model: &str,
    dimensions: i32,
    checksums: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let found: Vec<String> = sqlx::query_scalar(STORED_CHECKSUMS)
        .bind(model)
        .bind(dimensions)
        .bind(checksums)
        .fetch_all(pool)
        .await?;
    Ok(found.into_iter().collect())
}

/// PostgreSQL's binary COPY stream for (model, dimensions, checksum, vector) rows.
fn copy_binary(model: &str, dimensions: i32, rows: &[(&str, &[f32])]) -> Vec<u8> {
    let per_row = 2 + 4 + model.len() + 8 + 4 + 32 + 4 + 4 * dimensions as usize;
    let mut out = Vec::with_capacity(21 + rows.len() * per_row);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for (checksum, vector) in rows {
        out.extend_from_slice(&4i16.to_be_bytes());
        out.extend_from_slice(&(model.len() as i32).to_be_bytes());
        out.extend_from_slice(model.as_bytes());
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(&dimensions.to_be_bytes());
        out.extend_from_slice(&(checksum.len() as i32).to_be_bytes());
        out.extend_from_slice(checksum.as_bytes());
        out.extend_from_slice(&((vector.len() * 4) as i32).to_be_bytes());
        for x in vector.iter() {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

async fn upsert(
    conn: &mut PgConnection,
    model: &str,
    dimensions: i32,
    rows: &[(&str, &[f32])],
    overwrite: bool,
) -> Result<u64, sqlx::Error> {
    let conflict = if overwrite {
        "ON CONFLICT (model, dimensions, checksum) DO UPDATE SET vector = EXCLUDED.vector, created_at = now()"
    } else {
        "ON CONFLICT (model, dimensions, checksum) DO NOTHING"
    };
    let checksums: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let vectors: Vec<Vec<u8>> = rows.iter().map(|r| vector_to_bytes(r.1)).collect();
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO embeddings (model, dimensions, checksum, vector)
         SELECT $1, $2, * FROM UNNEST($3::text[], $4::bytea[]) {conflict}"
    )))
    .bind(model)
    .bind(dimensions)
    .bind(&checksums)
    .bind(&vectors)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Stores `(checksum, vector)` rows (checksums distinct); returns how many were written.
#[tracing::instrument(name = "db.insert_embeddings", skip_all, fields(db.system.name = "postgresql", rows = rows.len()))]
pub async fn insert_embeddings(
    conn: &mut PgConnection,
    model: &str,
    dimensions: i32,
    rows: &[(&str, &[f32])],
    overwrite: bool,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    if overwrite {
        return upsert(conn, model, dimensions, rows, true).await;
    }
    sqlx::query("SAVEPOINT embeddings_copy")
        .execute(&mut *conn)
        .await?;
    let copied = async {
        let mut copy = conn
            .copy_in_raw(
                "COPY embeddings (model, dimensions, checksum, vector) FROM STDIN (FORMAT binary)",
            )
            .await?;
        copy.send(copy_binary(model, dimensions, rows)).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(n) => {
            sqlx::query("RELEASE SAVEPOINT embeddings_copy")
                .execute(&mut *conn)
                .await?;
            Ok(n)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            sqlx::query("ROLLBACK TO SAVEPOINT embeddings_copy")
                .execute(&mut *conn)
                .await?;
            upsert(conn, model, dimensions, rows, false).await
        }
        Err(e) => Err(e),
    }
}
