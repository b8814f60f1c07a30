//! Benchmark 3: trivial jobs per second, trainyard's job machinery against raw apalis-postgres in
//! the same run, in alternating rounds.
//!
//! raw: apalis-postgres 1.0 at its best settings (fetch batch, LISTEN/NOTIFY pubsub, the same
//! poll interval), its own database holding only apalis's schema, a handler that returns Ok.
//! trainyard: `queue::worker::run_workers` (the worker path every `trainyard worker` runs: job
//! span, metrics, typed errors, the backoff trigger on `apalis.jobs`) with a registered
//! handler that does what every real handler does before its work (a cancel check and a
//! progress write through its `JobContext`, which the process's job tracker turns into one
//! cancel-flag query and one progress statement per tick for all its jobs) and returns Ok;
//! jobs enqueued with `queue::enqueue` (so each has its `job_info` row). "trainyard-bare" is the same worker path
//! with a handler that returns Ok at once: the difference shows what the handler's own
//! queries cost. Each side runs the same number of workers (each with its own name and
//! heartbeat, as separate processes would), concurrency and fetch batch, in this process.
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{Config as PgConfig, PostgresStorage};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use trainyard::queue::worker::{run_workers, JobHandler, JobHandlers, WorkerOptions};
use trainyard::queue::{JobError, NewJob};
use trainyard_jobs::JobKind;

const RAW_QUEUE: &str = "bench_raw";

struct Params {
    n: usize,
    concurrency: usize,
    fetch: usize,
    workers: usize,
    poll: Duration,
}

async fn raw_handler(_args: serde_json::Value) -> Result<serde_json::Value, BoxDynError> {
    Ok(serde_json::Value::Null)
}

/// Waits until `n` jobs of `queue` are Done; the elapsed time from `start`.
async fn wait_done(pool: &PgPool, queue: &str, n: usize, start: Instant) -> anyhow::Result<f64> {
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
        )
        .bind(queue)
        .fetch_one(pool)
        .await?;
        if done as usize >= n {
            return Ok(start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "only {done} of {n} {queue} jobs done after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn raw_round(pool: &PgPool, p: &Params) -> anyhow::Result<f64> {
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(RAW_QUEUE)
        .execute(pool)
        .await?;
    let tasks = (0..p.n)
        .map(|i| {
            let bytes = serde_json::to_vec(&serde_json::json!({"batch_no": i})).unwrap();
            TaskBuilder::new(bytes).max_attempts(3).build()
        })
        .collect();
    let mut conn = pool.acquire().await?;
    apalis_postgres::queries::push_tasks(&mut *conn, RAW_QUEUE, tasks).await?;
    drop(conn);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let mut monitor = Monitor::new().shutdown_timeout(Duration::from_secs(30));
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    for w in 0..p.workers {
        let config = PgConfig::default()
            .queue(RAW_QUEUE)
            .batch_size(p.fetch)
            .heartbeat_interval(Duration::from_secs(5));
        let (pool, poll, concurrency) = (pool.clone(), p.poll, p.concurrency);
        let name = format!("raw-{suffix}-{w}");
        monitor = monitor.register(move |run| {
            let backend = PostgresStorage::<serde_json::Value>::new(&pool)
                .with_config(config.clone())
                .with_pubsub()
                .poll_with_interval(poll);
            WorkerBuilder::new(format!("{name}-{run}"))
                .backend(backend)
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .build(raw_handler)
        });
    }
    let running = tokio::spawn(monitor.run_with_signal(async move {
        let _ = stopped.await;
        Ok(())
    }));
    let elapsed = wait_done(pool, RAW_QUEUE, p.n, start).await?;
    let _ = stop.send(());
    running.await??;
    Ok(p.n as f64 / elapsed)
}

/// What the trivial handler does through its `JobContext` before returning Ok.
#[derive(Clone, Copy, PartialEq)]
enum HandlerWork {
    Nothing,
    CancelCheck,
    Progress,
    CancelCheckAndProgress,
}

fn trivial_handler(work: HandlerWork) -> JobHandler {
    use HandlerWork::*;
    Arc::new(move |ctx, _args| {
        Box::pin(async move {
            if matches!(work, CancelCheck | CancelCheckAndProgress) && ctx.cancel_requested() {
                return Err(JobError::Cancelled);
            }
            if matches!(work, Progress | CancelCheckAndProgress) {
                ctx.set_progress(1, Some(1));
            }
            Ok(serde_json::Value::Null)
        })
    })
}

async fn trainyard_round(
    pool: &PgPool,
    settings: &trainyard::config::QueueSettings,
    p: &Params,
    work: HandlerWork,
) -> anyhow::Result<f64> {
    let kind = JobKind::Embed;
    sqlx::query("DELETE FROM job_info WHERE kind = $1")
        .bind(kind.queue())
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(kind.queue())
        .execute(pool)
        .await?;
    let jobs: Vec<NewJob<serde_json::Value>> = (0..p.n)
        .map(|i| NewJob {
            kind,
            args: serde_json::json!({"batch_no": i}),
            dataset_id: None,
            scoring_job_id: None,
            progress_total: 1,
        })
        .collect();
    let mut tx = pool.begin().await?;
    trainyard::queue::enqueue(&mut tx, jobs, 3).await?;
    tx.commit().await?;

    let start = Instant::now();
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for w in 0..p.workers {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        let handlers: JobHandlers = [(kind, trivial_handler(work))].into();
        let options = WorkerOptions {
            queues: vec![kind],
            concurrency: p.concurrency,
            fetch_batch: Some(p.fetch),
            name_prefix: Some(format!("bench-{w}")),
        };
        running.push(tokio::spawn(run_workers(
            pool.clone(),
            settings.clone(),
            handlers,
            options,
            async move {
                let _ = stopped.await;
                Ok(())
            },
        )));
    }
    let elapsed = wait_done(pool, kind.queue(), p.n, start).await?;
    for stop in stops {
        let _ = stop.send(());
    }
    for r in running {
        r.await??;
    }
    Ok(p.n as f64 / elapsed)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn best(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(std::env::args().nth(i).map_or(Ok(default), |s| s.parse())?)
    };
    let p = Params {
        n: arg(1, 5000)?,
        concurrency: arg(2, 8)?,
        fetch: arg(3, 100)?,
        workers: arg(4, 2)?,
        poll: Duration::from_millis(arg(5, 1000)? as u64),
    };
    let rounds = arg(6, 3)?;
    let diagnose = std::env::var("QUEUE_BENCH_DIAGNOSE").is_ok_and(|v| v == "1");
    trainyard::init_process(trainyard::telemetry::LogFormat::Text);

    let mut settings =
        trainyard::config::Settings::load(&trainyard::config::Settings::default_dir())?;
    settings.database.url = std::env::var("DATABASE_URL")?;
    settings.database.max_connections = settings.database.max_connections.max(20);
    settings.queue.poll_interval_ms = p.poll.as_millis() as u64;
    let ty_pool = trainyard::db::connect(&settings.database).await?;
    trainyard::db::migrate(&ty_pool).await?;
    let raw_url = std::env::var("RAW_DATABASE_URL")?;
    let raw_pool = PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .connect(&raw_url)
        .await?;
    PostgresStorage::<()>::setup(&raw_pool).await?;

    println!(
        "queue: {} trivial jobs per round, {} workers x concurrency {}, fetch batch {}, pubsub on, poll {:?}, pool {} connections, {rounds} alternating rounds",
        p.n, p.workers, p.concurrency, p.fetch, p.poll, settings.database.max_connections
    );
    let (mut raw, mut ty, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let r = raw_round(&raw_pool, &p).await?;
        let t = trainyard_round(
            &ty_pool,
            &settings.queue,
            &p,
            HandlerWork::CancelCheckAndProgress,
        )
        .await?;
        let b = trainyard_round(&ty_pool, &settings.queue, &p, HandlerWork::Nothing).await?;
        println!(
            "  round {round}: raw apalis {r:>7.0} jobs/s | trainyard {t:>7.0} jobs/s (ratio {:.3}) | trainyard-bare {b:>7.0} jobs/s (ratio {:.3})",
            t / r,
            b / r
        );
        if diagnose {
            // Which of the handler's two queries costs what.
            let c =
                trainyard_round(&ty_pool, &settings.queue, &p, HandlerWork::CancelCheck).await?;
            let g = trainyard_round(&ty_pool, &settings.queue, &p, HandlerWork::Progress).await?;
            println!(
                "  round {round} (diagnosis): cancel check only {c:>7.0} jobs/s (ratio {:.3}) | progress write only {g:>7.0} jobs/s (ratio {:.3})",
                c / r,
                g / r
            );
        }
        raw.push(r);
        ty.push(t);
        bare.push(b);
    }
    println!(
        "  best  : raw {:.0}, trainyard {:.0}, bare {:.0} jobs/s; trainyard/raw {:.3} (bare/raw {:.3})",
        best(&raw),
        best(&ty),
        best(&bare),
        best(&ty) / best(&raw),
        best(&bare) / best(&raw)
    );
    println!(
        "  median: raw {:.0}, trainyard {:.0}, bare {:.0} jobs/s; trainyard/raw {:.3} (bare/raw {:.3})",
        median(&raw),
        median(&ty),
        median(&bare),
        median(&ty) / median(&raw),
        median(&bare) / median(&raw)
    );
    let ratio = median(&ty) / median(&raw);
    println!(
        "  goal trainyard >= 0.9 x raw (median): {}",
        if ratio >= 0.9 { "met" } else { "NOT met" }
    );
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(RAW_QUEUE)
        .execute(&raw_pool)
        .await?;
    sqlx::query("DELETE FROM job_info WHERE kind = 'embed'")
        .execute(&ty_pool)
        .await?;
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = 'embed'")
        .execute(&ty_pool)
        .await?;
    Ok(())
}
