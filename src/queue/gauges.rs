//! Queue-wide gauges (jobs waiting and running, age of the oldest waiting job, live workers,
//! per queue), sampled from Postgres by one process of the whole deployment.
//!
//! Every `serve` and worker process runs the sampler, but only the one holding a Postgres
//! advisory lock queries and reports; the others report nothing for these gauges, so a sum
//! over all scraped processes counts each queue once. The lock lives on the sampler's own
//! connection: a process that dies or loses its connection frees it, and another process
//! takes over at its next tick.
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool, Row};
use trainyard_jobs::JobKind;

/// The advisory lock key of the sampler ("trainyard queue gauges").
const LOCK_KEY: i64 = 0x7472_6169_6e79_6761;

#[derive(Debug, Clone, Default)]
pub struct QueueSample {
    pub queue: String,
    pub waiting: i64,
    pub running: i64,
    pub oldest_waiting_secs: f64,
    pub live_workers: i64,
}

struct Snapshot {
    taken: Instant,
    queues: Vec<QueueSample>,
}

type Shared = Arc<Mutex<Option<Snapshot>>>;

static SHARED: OnceLock<(Shared, Duration)> = OnceLock::new();

/// One sample of every queue, read in one query. Workers count as live when seen within
/// `live_within_secs` (the orphan window).
pub async fn sample(
    conn: &mut PgConnection,
    live_within_secs: f64,
) -> Result<Vec<QueueSample>, sqlx::Error> {
    let queues: Vec<String> = JobKind::ALL.iter().map(|k| k.queue().to_string()).collect();
    let rows = sqlx::query(
        "SELECT q.queue,
                (SELECT count(*) FROM apalis.jobs j WHERE j.job_type = q.queue
                   AND (j.status IN ('Pending', 'Queued') OR (j.status = 'Failed' AND j.attempts < j.max_attempts))) AS waiting,
                (SELECT count(*) FROM apalis.jobs j WHERE j.job_type = q.queue AND j.status = 'Running') AS running,
                coalesce((SELECT extract(epoch FROM now() - min(j.run_at))::float8 FROM apalis.jobs j
                   WHERE j.job_type = q.queue AND j.run_at <= now()
                     AND (j.status IN ('Pending', 'Queued') OR (j.status = 'Failed' AND j.attempts < j.max_attempts))), 0) AS oldest,
                (SELECT count(*) FROM apalis.workers w WHERE w.worker_type = q.queue
                   AND w.last_seen > now() - make_interval(secs => $2)) AS live
         FROM unnest($1::text[]) AS q(queue)",
    )
    .bind(&queues)
    .bind(live_within_secs)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| QueueSample {
            queue: r.get("queue"),
            waiting: r.get("waiting"),
            running: r.get("running"),
            oldest_waiting_secs: r.get::<f64, _>("oldest").max(0.0),
            live_workers: r.get("live"),
        })
        .collect())
}

fn register_gauges(shared: Shared, interval: Duration) {
    // A snapshot older than three intervals (the leader stalled) is not reported.
    crate::telemetry::instruments::register_queue_gauges(move || match &*shared.lock().unwrap() {
        Some(s) if s.taken.elapsed() < interval * 3 => s
            .queues
            .iter()
            .map(|q| crate::telemetry::instruments::QueueFigures {
                queue: q.queue.clone(),
                waiting: q.waiting as f64,
                running: q.running as f64,
                oldest_waiting_secs: q.oldest_waiting_secs,
                live_workers: q.live_workers as f64,
            })
            .collect(),
        _ => Vec::new(),
    });
}

/// Starts the sampler of this process (once; later calls do nothing).
pub fn spawn_sampler(pool: PgPool, interval: Duration, live_within_secs: f64) {
    let mut started = false;
    let (shared, _) = SHARED.get_or_init(|| {
        started = true;
        (Arc::new(Mutex::new(None)), interval)
    });
    if !started {
        return;
    }
    let shared = shared.clone();
    crate::telemetry::prometheus_registry();
    register_gauges(shared.clone(), interval);
    tokio::spawn(async move {
        let mut leader: Option<PgConnection> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if leader.is_none() {
                leader = try_lead(&pool).await;
            }
            let Some(conn) = leader.as_mut() else {
                *shared.lock().unwrap() = None;
                continue;
            };
            match sample(conn, live_within_secs).await {
                Ok(queues) => {
                    *shared.lock().unwrap() = Some(Snapshot {
                        taken: Instant::now(),
                        queues,
                    })
                }
                Err(e) => {
                    tracing::warn!("queue gauges: sampling failed, giving up the lead: {e}");
                    leader = None;
                    *shared.lock().unwrap() = None;
                }
            }
        }
    });
}

/// A connection holding the sampler's lock, or `None` when another process holds it.
async fn try_lead(pool: &PgPool) -> Option<PgConnection> {
    let options = pool.connect_options();
    let mut conn = PgConnection::connect_with(&options).await.ok()?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut conn)
        .await
        .ok()?;
    if got {
        tracing::info!("queue gauges: this process samples the queues");
        Some(conn)
    } else {
        let _ = conn.close().await;
        None
    }
}
