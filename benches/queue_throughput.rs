//! Benchmark 3: trivial jobs per second through the `embed` queue with 2 worker processes.
//! Each job is a real embed job whose batch is already done (so it does its database reads
//! and returns): what is measured is the queue (fetch, lock, run, ack), not the model.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use trainyard_jobs::{EmbedArgs, JobKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(5000), |s| s.parse())?;
    let concurrency: usize = std::env::args().nth(2).map_or(Ok(8), |s| s.parse())?;
    let fetch: usize = std::env::args().nth(3).map_or(Ok(100), |s| s.parse())?;
    let url = std::env::var("DATABASE_URL")?;
    let pool = PgPool::connect(&url).await?;
    trainyard::db::migrate(&pool).await?;
    let dataset = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO datasets (id, name, status, embedding_model, dimensions, request)
         VALUES ($1, 'queue bench', 'ready', 'all-MiniLM-L6-v2', 384, $2)",
    )
    .bind(dataset)
    .bind(serde_json::json!({"selection": {}, "embedding_model": "all-MiniLM-L6-v2", "force_regenerate": false,
        "task_type": "binary", "labels": ["x"], "splits": {"train": 1.0, "validation": 0.0, "test": 0.0, "seed": 1},
        "tie_rule": "exclude", "max_text_chars": 100}))
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO embed_batches (dataset_id, batch_no, checksums, texts, done)
         SELECT $1, g, '{}', '{}', true FROM generate_series(0, $2 - 1) g",
    )
    .bind(dataset)
    .bind(n as i32)
    .execute(&pool)
    .await?;
    let jobs: Vec<trainyard::queue::NewJob<EmbedArgs>> = (0..n)
        .map(|i| trainyard::queue::NewJob {
            kind: JobKind::Embed,
            args: EmbedArgs {
                dataset_id: dataset,
                batch_no: i as i32,
            },
            dataset_id: Some(dataset),
            progress_total: 0,
        })
        .collect();
    let start = Instant::now();
    let mut tx = pool.begin().await?;
    let ids = trainyard::queue::enqueue(&mut tx, jobs, 3).await?;
    tx.commit().await?;
    let enqueue = start.elapsed().as_secs_f64();

    let binary = std::env::var("TRAINYARD_BIN")?;
    let start = Instant::now();
    let mut workers: Vec<_> = (0..2)
        .map(|i| {
            Command::new(&binary)
                .args([
                    "worker",
                    "--queues",
                    "embed",
                    "--concurrency",
                    &concurrency.to_string(),
                    "--fetch-batch",
                    &fetch.to_string(),
                    "--name",
                    &format!("bench-{i}"),
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE id = ANY($1) AND status = 'Done'",
        )
        .bind(&ids)
        .fetch_one(&pool)
        .await?;
        if done as usize == n {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "only {done} of {n} jobs done after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = start.elapsed().as_secs_f64();
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    sqlx::query("DELETE FROM apalis.jobs WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM job_info WHERE job_id = ANY($1)")
        .bind(&ids)
        .execute(&pool)
        .await?;
    sqlx::query("DELETE FROM datasets WHERE id = $1")
        .bind(dataset)
        .execute(&pool)
        .await?;
    println!("queue: {n} trivial embed jobs, 2 worker processes x concurrency {concurrency}, fetch batch {fetch}");
    println!(
        "  enqueue (one transaction, bulk): {enqueue:.2} s = {:.0} jobs/s",
        n as f64 / enqueue
    );
    println!(
        "  run (includes worker start-up) : {run:.2} s = {:.0} jobs/s",
        n as f64 / run
    );
    Ok(())
}
