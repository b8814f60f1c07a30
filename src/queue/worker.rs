//! The worker process: one apalis worker per queue, bounded concurrency, LISTEN/NOTIFY wake-up
//! plus polling, heartbeats, graceful shutdown on SIGINT/SIGTERM. It knows no job kind's
//! meaning: it runs the handler it was given for each queue.
//!
//! Each process gets a unique name (host, pid, random suffix) so that a restarted worker never
//! inherits a dead one's identity; apalis hands a dead worker's jobs to others after
//! `heartbeat_secs × missed_heartbeats`.
//!
//! Shutdown (SIGTERM): apalis stops fetching and puts the jobs it had fetched but not started
//! back; every running job's [`StopFlag`] is set, so a long job (training) stops at its next
//! safe point and returns [`JobError::Interrupted`], which hands its row back to the queue
//! as it was (`Pending`, no attempt used). Jobs still running after `shutdown_grace_secs` are
//! handed back the same way by SQL, and the process exits: nothing it held stays `Running`.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config as PgConfig, PostgresStorage};
use futures::future::BoxFuture;
use sqlx::PgPool;
use trainyard_jobs::JobKind;

use super::job::{JobContext, JobError, StopFlag};
use super::tracker::JobTracker;
use crate::config::QueueSettings;

/// What a handler returns: the job's result (stored by apalis) or how it failed.
pub type HandlerFuture = BoxFuture<'static, Result<serde_json::Value, JobError>>;

/// A job handler: the job's context and its stored arguments (JSON) in, a result out. The
/// handlers live in their domain modules; `crate::job_registry` binds each kind to one.
pub type JobHandler = Arc<dyn Fn(JobContext, serde_json::Value) -> HandlerFuture + Send + Sync>;

/// Kind → handler, as the worker process was given it.
pub type JobHandlers = HashMap<JobKind, JobHandler>;

/// What the apalis worker of one queue carries to every job it runs.
#[derive(Clone)]
struct QueueEntry {
    kind: JobKind,
    pool: PgPool,
    handler: JobHandler,
    stopping: StopFlag,
    tracker: Arc<JobTracker>,
}

fn into_apalis(
    result: Result<serde_json::Value, JobError>,
) -> Result<serde_json::Value, BoxDynError> {
    match result {
        Ok(value) => Ok(value),
        Err(JobError::Retryable(message)) => Err(message.into()),
        // Already handed back (see `hand_back`): apalis's record of this attempt matches no
        // row locked by this worker and changes nothing.
        Err(e @ JobError::Interrupted) => Err(e.to_string().into()),
        Err(JobError::Fatal(message)) => Err(Box::new(AbortError::new(message))),
        Err(JobError::Cancelled) => Err(Box::new(AbortError::new("cancelled"))),
    }
}

/// Puts jobs this worker holds back in their queue as they were before it took them: pending,
/// runnable now, the attempt not counted. `jobs` = None: every job whose lock is held by an
/// apalis worker named `lock_prefix…`; otherwise only those ids. Returns how many went back.
async fn hand_back(
    pool: &PgPool,
    lock_prefix: &str,
    jobs: Option<&[String]>,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL,
                run_at = now(), last_result = '{\"Err\": \"handed back: the worker shut down\"}'::jsonb
         WHERE status IN ('Queued', 'Running') AND left(lock_by, length($1)) = $1
           AND ($2::text[] IS NULL OR id = ANY($2))",
    )
    .bind(lock_prefix)
    .bind(jobs)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

async fn run_one(
    args: serde_json::Value,
    id: TaskId,
    metadata: MetadataStore,
    entry: Data<QueueEntry>,
    worker: WorkerContext,
) -> Result<serde_json::Value, BoxDynError> {
    use tracing::Instrument;
    let context = JobContext {
        id: id.to_string(),
        kind: entry.kind,
        pool: entry.pool.clone(),
        stopping: entry.stopping.clone(),
        tracker: entry.tracker.clone(),
    };
    entry.tracker.start(&context.id);
    let queue = entry.kind.queue();
    // Every log line inside carries the job's id and kind; the span continues the trace of
    // whatever enqueued the job.
    let span =
        tracing::info_span!("job", otel.name = queue, job.id = %context.id, job.kind = queue);
    crate::telemetry::propagation::set_parent_from_map(&span, metadata.as_map());
    let metrics = crate::telemetry::metrics();
    let kind_attr = crate::telemetry::instruments::kind(queue);
    metrics
        .jobs_started
        .add(1, std::slice::from_ref(&kind_attr));
    let started = std::time::Instant::now();
    let result = (entry.handler)(context.clone(), args)
        .instrument(span)
        .await;
    entry.tracker.finish(&context.id, result.is_ok());
    if let Err(JobError::Interrupted) = &result {
        // Hand the job back before apalis records the attempt: its record then matches no row
        // locked by this worker, and the job is pending again with its attempts unchanged.
        match hand_back(
            &entry.pool,
            worker.name(),
            Some(std::slice::from_ref(&context.id)),
        )
        .await
        {
            Ok(n) => {
                tracing::info!(job.id = %context.id, handed_back = n, "job interrupted by shutdown, handed back")
            }
            Err(e) => {
                tracing::warn!(job.id = %context.id, "could not hand the job back (heartbeat expiry will): {e}")
            }
        }
    }
    let outcome = match &result {
        Ok(_) => "succeeded",
        Err(JobError::Interrupted) => "interrupted",
        Err(JobError::Cancelled) => "cancelled",
        Err(JobError::Fatal(_)) => "failed",
        Err(e) if context.is_last_attempt(e).await => "failed",
        Err(_) => "retried",
    };
    let attrs = [kind_attr, crate::telemetry::instruments::outcome(outcome)];
    metrics.jobs_finished.add(1, &attrs);
    metrics
        .job_duration
        .record(started.elapsed().as_secs_f64(), &attrs);
    into_apalis(result)
}

/// Options of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queues: Vec<JobKind>,
    pub concurrency: usize,
    /// Jobs claimed per fetch; defaults to `concurrency` so that one worker does not hoard
    /// the fan-out of a build while others sit idle.
    pub fetch_batch: Option<usize>,
    pub name_prefix: Option<String>,
}

/// A unique name for this process: host, pid and a random suffix.
pub fn unique_worker_name(prefix: Option<&str>) -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    match prefix {
        Some(p) => format!("{p}-{host}-{}-{suffix}", std::process::id()),
        None => format!("{host}-{}-{suffix}", std::process::id()),
    }
}

fn pg_config(settings: &QueueSettings, kind: JobKind, fetch_batch: usize) -> PgConfig {
    PgConfig::default()
        .queue(kind.queue())
        .batch_size(fetch_batch)
        .heartbeat_interval(Duration::from_secs(settings.heartbeat_secs))
        .missed_heartbeats(settings.missed_heartbeats)
}

/// Records the retry policy the backoff trigger reads.
pub async fn publish_retry_policy(
    pool: &PgPool,
    settings: &QueueSettings,
) -> Result<(), sqlx::Error> {
    for kind in JobKind::ALL {
        sqlx::query(
            "INSERT INTO queue_policy (queue, base_secs, max_secs) VALUES ($1, $2, $3)
             ON CONFLICT (queue) DO UPDATE SET base_secs = EXCLUDED.base_secs, max_secs = EXCLUDED.max_secs",
        )
        .bind(kind.queue())
        .bind(settings.retry_base_secs)
        .bind(settings.retry_max_secs)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Runs one apalis worker per queue in `options.queues` until `shutdown` resolves; then takes
/// no new jobs, asks running ones to stop at a safe point, lets them finish for up to
/// `settings.shutdown_grace_secs`, and hands back whatever is still held. Every queue must have
/// a handler in `handlers`.
pub async fn run_workers(
    pool: PgPool,
    settings: QueueSettings,
    handlers: JobHandlers,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    publish_retry_policy(&pool, &settings).await?;
    let name = unique_worker_name(options.name_prefix.as_deref());
    let concurrency = options.concurrency.max(1);
    let fetch_batch = options.fetch_batch.unwrap_or(concurrency).max(1);
    let poll = Duration::from_millis(settings.poll_interval_ms);
    tracing::info!(worker = %name, queues = ?options.queues, concurrency, fetch_batch, "worker starting");
    // A worker whose backend fails (Postgres restarted, network cut) is restarted under a new
    // name after a short, growing pause, so a database restart never needs a worker restart.
    let watched = pool.clone();
    let grace = Duration::from_secs_f64(settings.shutdown_grace_secs.max(0.0));
    let stopping = StopFlag::default();
    // One ledger per process: cancel flags and progress of all its jobs, one round trip each
    // per tick instead of one per checkpoint.
    let tracker = Arc::new(JobTracker::default());
    let (tracker_stop, tracker_stopped) = tokio::sync::oneshot::channel::<()>();
    let tracker_task = tokio::spawn(tracker.clone().run(
        pool.clone(),
        Duration::from_millis(settings.tracker_interval_ms.max(10)),
        async move {
            let _ = tracker_stopped.await;
        },
    ));
    let mut monitor = Monitor::new().shutdown_timeout(grace).should_restart(move |worker, error| {
        if watched.is_closed() {
            // The process is closing its pool: nothing to restart for.
            return false;
        }
        // The callback is synchronous and runs inside the monitor's future, which polls every
        // worker of this process: a pause here freezes them all (heartbeats, fetches and their
        // pending connection attempts). It must stay well under database.acquire_timeout_secs,
        // or the frozen workers' own attempts time out and they fail in turn, round after
        // round, long after the database is back (seen with 5 s pauses: minutes). During an
        // outage the restarts are paced anyway: each new worker waits out the acquire timeout
        // before it fails; the pause only slows a worker that fails at once.
        let pause = Duration::from_millis(100 * (worker.restarts() as u64 + 1).min(5));
        tracing::warn!(worker = %worker.name(), restarts = worker.restarts(), ?pause, "worker stopped on error, restarting: {error}");
        std::thread::sleep(pause);
        true
    });
    for kind in options.queues.iter().copied() {
        let handler = handlers
            .get(&kind)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no handler for queue {}", kind.queue()))?;
        let entry = QueueEntry {
            kind,
            pool: pool.clone(),
            handler,
            stopping: stopping.clone(),
            tracker: tracker.clone(),
        };
        let worker_name = format!("{name}-{}", kind.queue());
        let config = pg_config(&settings, kind, fetch_batch);
        monitor = monitor.register(move |run| {
            let backend = PostgresStorage::<serde_json::Value>::new(&entry.pool)
                .with_config(config.clone())
                .with_pubsub()
                .poll_with_interval(poll);
            WorkerBuilder::new(format!("{worker_name}-{run}"))
                .backend(backend)
                .data(entry.clone())
                .concurrency(concurrency)
                .parallelize(tokio::spawn)
                .build(run_one)
        });
    }
    let signal = {
        let stopping = stopping.clone();
        let name = name.clone();
        async move {
            let result = shutdown.await;
            stopping.set();
            tracing::info!(worker = %name, grace_secs = grace.as_secs_f64(), "shutting down: no new jobs; running jobs asked to stop");
            result
        }
    };
    monitor.run_with_signal(signal).await?;
    // Past the grace (or a job whose record apalis could not write): whatever this process's
    // apalis workers still hold goes back to its queue now, not after the heartbeat window.
    let prefix = format!("{name}-");
    match hand_back(&pool, &prefix, None).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::warn!(worker = %name, handed_back = n, "jobs still running at the end of the grace were handed back")
        }
        Err(e) => {
            tracing::error!(worker = %name, "could not hand back held jobs (heartbeat expiry will): {e}")
        }
    }
    // The last buffered progress of what ran or was handed back.
    let _ = tracker_stop.send(());
    if let Err(e) = tracker_task.await {
        tracing::warn!(worker = %name, "job tracker ended badly: {e}");
    }
    tracing::info!(worker = %name, "worker stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
