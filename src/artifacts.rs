//! Large binary artifacts in Postgres: model weights and training checkpoints of any size,
//! stored as ordered chunks (`artifact_chunks`, 64 MiB each by default) far under `bytea`'s
//! 1 GB limit. An artifact is written inside the caller's transaction, so it commits (or
//! vanishes) with the row that references it, and read chunk by chunk into one buffer sized
//! up front: the process never holds two whole copies. Rows stored before chunking keep their
//! bytes inline; [`read_either`] reads both.
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// Bytes per chunk: 64 MiB, or `TRAINYARD_ARTIFACT_CHUNK_BYTES` (tests use small chunks).
pub fn chunk_bytes() -> usize {
    std::env::var("TRAINYARD_ARTIFACT_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(64 << 20)
}

/// Writes `bytes` as a new artifact in chunks of `chunk` bytes; returns its id. An empty
/// artifact has one empty chunk.
pub async fn write_chunked(
    conn: &mut PgConnection,
    bytes: &[u8],
    chunk: usize,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let mut seq = 0i32;
    let mut parts = bytes.chunks(chunk.max(1)).peekable();
    if parts.peek().is_none() {
        insert(conn, id, 0, &[]).await?;
    }
    for part in parts {
        insert(conn, id, seq, part).await?;
        seq += 1;
    }
    Ok(id)
}

/// [`write_chunked`] with [`chunk_bytes`].
pub async fn write(conn: &mut PgConnection, bytes: &[u8]) -> Result<Uuid, sqlx::Error> {
    write_chunked(conn, bytes, chunk_bytes()).await
}

async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    seq: i32,
    part: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO artifact_chunks (artifact_id, seq, bytes) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(seq)
        .bind(part)
        .execute(conn)
        .await?;
    Ok(())
}

/// The artifact's bytes, or `None` when it has no chunks.
pub async fn read(pool: &PgPool, id: Uuid) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT octet_length(bytes)::bigint FROM artifact_chunks WHERE artifact_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    if sizes.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(sizes.iter().sum::<i64>() as usize);
    for seq in 0..sizes.len() as i32 {
        let row =
            sqlx::query("SELECT bytes FROM artifact_chunks WHERE artifact_id = $1 AND seq = $2")
                .bind(id)
                .bind(seq)
                .fetch_one(pool)
                .await?;
        let part: &[u8] = row.try_get("bytes")?;
        out.extend_from_slice(part);
    }
    Ok(Some(out))
}

/// An artifact's bytes when `artifact` is set, else the row's inline bytes (rows stored before
/// chunking).
pub async fn read_either(
    pool: &PgPool,
    artifact: Option<Uuid>,
    inline: Option<Vec<u8>>,
) -> Result<Vec<u8>, sqlx::Error> {
    match artifact {
        Some(id) => read(pool, id).await?.ok_or(sqlx::Error::RowNotFound),
        None => inline.ok_or(sqlx::Error::RowNotFound),
    }
}

/// Deletes an artifact's chunks (inside the transaction that stops referencing it).
pub async fn delete(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM artifact_chunks WHERE artifact_id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
