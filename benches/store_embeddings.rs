//! Benchmark 2: storing 100k 384-d embeddings the way trainyard's embed job does (UNNEST
//! upserts of a batch per statement) against one INSERT per row as the first seed did, on the
//! same database, side by side. Prints rows/s for both and the ratio.
use std::time::Instant;

use sqlx::PgPool;
use trainyard::embedding::vector_to_bytes;

fn vector(i: usize) -> Vec<f32> {
    (0..384).map(|d| ((i * 31 + d * 7) % 1000) as f32 / 1000.0).collect()
}

async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM embeddings WHERE model LIKE 'bench-%'").execute(pool).await?;
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
    let checksums: Vec<String> = (0..n).map(|i| trainyard::datasets::text::checksum(&format!("bench text {i}"))).collect();
    let vectors: Vec<Vec<u8>> = (0..n).map(|i| vector_to_bytes(&vector(i))).collect();

    // trainyard: batches of 256 rows (the embed job's default batch), one statement each.
    let start = Instant::now();
    for (cs, vs) in checksums.chunks(256).zip(vectors.chunks(256)) {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO embeddings (model, dimensions, checksum, vector)
             SELECT 'bench-batched', 384, * FROM UNNEST($1::text[], $2::bytea[])
             ON CONFLICT (model, dimensions, checksum) DO NOTHING",
        )
        .bind(cs)
        .bind(vs)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    let batched = start.elapsed().as_secs_f64();

    // The first seed: one INSERT (and one commit) per row, vector as a float array literal.
    let start = Instant::now();
    for i in 0..baseline_n {
        let floats = vector(i);
        sqlx::query(
            "INSERT INTO embeddings (model, dimensions, checksum, vector)
             VALUES ('bench-per-row', 384, $1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&checksums[i])
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
    anyhow::ensure!(stored == (n as i64, baseline_n as i64), "row counts {stored:?}");
    reset(&pool).await?;
    let (a, b) = (n as f64 / batched, baseline_n as f64 / per_row);
    println!("store {n} x 384-d embeddings");
    println!("  trainyard (UNNEST, 256 rows/statement): {batched:8.2} s  {a:10.0} rows/s");
    println!("  one INSERT per row (first seed)       : {per_row:8.2} s  {b:10.0} rows/s  ({baseline_n} rows)");
    println!("  ratio: {:.1}x", a / b);
    Ok(())
}
