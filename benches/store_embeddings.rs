//! Benchmark 2: storing 100k 384-d embeddings the way trainyard's embed job does
//! (binary COPY of a batch per asynchronously committed transaction) against one INSERT per row as the first seed did, on the
//! same database, side by side. Prints rows/s for both and the ratio.
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use trainyard::embedding::store::{begin_batch_write, insert_embeddings};
use trainyard::embedding::vector_to_bytes;

fn vector(i: usize) -> Vec<f32> {
    (0..384)
        .map(|d| ((i * 31 + d * 7) % 1000) as f32 / 1000.0)
        .collect()
}

/// Removes the benchmark's rows, then `settle`s.
async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM embeddings WHERE model LIKE 'bench-%'")
        .execute(pool)
        .await?;
    settle(pool).await
}

/// Gives each timed phase the same starting point: no dead tuples to step over and no
/// checkpoint owed (a checkpoint landing inside one phase was the largest source of noise).
async fn settle(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("VACUUM embeddings").execute(pool).await?;
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(100_000), |s| s.parse())?;
    let baseline_n: usize = std::env::args().nth(2).map_or(Ok(n), |s| s.parse())?;
    let url = std::env::var("DATABASE_URL")?;
    let pool = PgPool::connect(&url).await?;
    trainyard::db::migrate(&pool).await?;
    reset(&pool).await?;
    let checksums: Vec<String> = (0..n)
        .map(|i| trainyard::datasets::text::checksum(&format!("bench text {i}")))
        .collect();

    // trainyard: exactly what an embed job does with its batch (`dataset.embed_batch_size`,
    // 1,024 by default): one transaction per batch, opened by `begin_batch_write`.
    let batch: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1024);
    // Concurrent writers = embed jobs running at once (one per worker slot).
    let writers: usize = std::env::var("WRITERS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let floats: Vec<Vec<f32>> = (0..n).map(vector).collect();
    let start = Instant::now();
    let batches: Vec<(&[String], &[Vec<f32>])> =
        checksums.chunks(batch).zip(floats.chunks(batch)).collect();
    futures::stream::iter(batches)
        .map(|(cs, vs)| {
            let pool = pool.clone();
            async move {
                let rows: Vec<(&str, &[f32])> = cs
                    .iter()
                    .zip(vs)
                    .map(|(c, v)| (c.as_str(), v.as_slice()))
                    .collect();
                let mut tx = begin_batch_write(&pool).await?;
                insert_embeddings(&mut tx, "bench-batched", 384, &rows, false).await?;
                tx.commit().await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(writers)
        .try_collect::<Vec<()>>()
        .await?;
    let batched = start.elapsed().as_secs_f64();
    settle(&pool).await?;

    // The first seed: one INSERT (and one commit) per row.
    let start = Instant::now();
    for (i, checksum) in checksums.iter().enumerate().take(baseline_n) {
        let floats = vector(i);
        sqlx::query(
            "INSERT INTO embeddings (model, dimensions, checksum, vector)
             VALUES ('bench-per-row', 384, $1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(checksum)
        .bind(vector_to_bytes(&floats))
        .execute(&pool)
        .await?;
    }
    let per_row = start.elapsed().as_secs_f64();
    let stored: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE model = 'bench-batched'), count(*) FILTER (WHERE model = 'bench-per-row') FROM embeddings",
    )
    .fetch_one(&pool)
    .await?;
    anyhow::ensure!(
        stored == (n as i64, baseline_n as i64),
        "row counts {stored:?}"
    );
    reset(&pool).await?;
    let (a, b) = (n as f64 / batched, baseline_n as f64 / per_row);
    println!("store {n} x 384-d embeddings");
    println!("  trainyard (embed job's path: binary COPY, {batch} rows/tx, async commit, {writers} writer(s)): {batched:8.2} s  {a:10.0} rows/s");
    println!("  one INSERT per row (first seed)            : {per_row:8.2} s  {b:10.0} rows/s  ({baseline_n} rows)");
    println!("  ratio: {:.1}x", a / b);
    Ok(())
}
