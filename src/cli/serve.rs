//! `trainyard serve` and `trainyard worker`.
use std::time::Duration;

use anyhow::Context;
use trainyard_jobs::JobKind;

use crate::api::{self, AppState};
use crate::embedding::Embedders;
use crate::job_registry::run_workers;
use crate::queue::worker::{shutdown_signal, WorkerOptions};
use crate::worker_state::WorkerState;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Listen address (default from config: 127.0.0.1:8322).
    #[arg(long)]
    pub listen: Option<String>,
    /// Also run a worker on every queue with this concurrency, in this process (quick start).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Comma-separated queues: dataset_build, embed, train, score, evaluate, review_rank.
    #[arg(long, value_delimiter = ',', default_value = "dataset_build,embed")]
    pub queues: Vec<String>,
    /// Jobs run at once per queue.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Jobs claimed per fetch (default: the concurrency).
    #[arg(long)]
    pub fetch_batch: Option<usize>,
    /// Prefix of the worker's unique name.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve Prometheus `/metrics` on this address (default: config
    /// `telemetry.worker_metrics_listen`; off when empty).
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// Starts the queue-wide gauge sampler (only one process of the deployment reports).
fn spawn_queue_gauges(pool: &sqlx::PgPool, settings: &crate::config::Settings) {
    let q = &settings.queue;
    crate::queue::gauges::spawn_sampler(
        pool.clone(),
        Duration::from_secs_f64(settings.telemetry.queue_sample_secs),
        (q.heartbeat_secs * q.missed_heartbeats as u64) as f64,
    );
}

fn parse_queues(names: &[String]) -> anyhow::Result<Vec<JobKind>> {
    names
        .iter()
        .map(|n| {
            JobKind::from_queue(n.trim())
                .with_context(|| format!("unknown queue `{n}` (dataset_build, embed, train, score, evaluate, review_rank)"))
        })
        .collect()
}

/// Deletes old finished jobs now and then.
fn spawn_pruner(pool: sqlx::PgPool, hours: f64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            match crate::queue::prune_finished(&pool, hours).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "old finished jobs deleted"),
                Err(e) => tracing::warn!("pruning finished jobs failed: {e}"),
            }
        }
    });
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (settings, pool) = crate::start(true).await?;
    let listen = args
        .listen
        .unwrap_or_else(|| settings.server.listen.clone());
    // Auth "auto" decides by the address actually bound.
    let mut bound = (*settings).clone();
    bound.server.listen = listen.clone();
    let settings = std::sync::Arc::new(bound);
    let state = AppState::new(pool.clone(), settings.clone());
    log_auth_policy(&state, &listen);
    let embedders = state.embedders.clone();
    spawn_pruner(pool.clone(), settings.queue.retention_hours);
    spawn_queue_gauges(&pool, &settings);
    if args.workers > 0 {
        let worker_state = WorkerState {
            pool: pool.clone(),
            settings: settings.clone(),
            embedders,
            scorers: Default::default(),
        };
        let options = WorkerOptions {
            queues: JobKind::ALL.to_vec(),
            concurrency: args.workers,
            fetch_batch: None,
            name_prefix: Some("serve".into()),
        };
        tokio::spawn(async move {
            if let Err(e) = run_workers(worker_state, options, std::future::pending()).await {
                tracing::error!("in-process worker stopped: {e:#}");
            }
        });
    }
    tracing::info!("trainyard listening on http://{listen} (Swagger UI at /docs)");
    api::serve(&listen, state, async {
        let _ = shutdown_signal().await;
    })
    .await?;
    Ok(())
}

/// Says at start-up, loudly when it is off, whether tokens are required.
fn log_auth_policy(state: &AppState, listen: &str) {
    let policy = state.gate.policy;
    if !policy.enabled {
        tracing::warn!(
            "AUTHENTICATION IS OFF: every client that reaches {listen} can read, submit, delete, \
             promote and manage tokens (auth.mode = {:?}; \"auto\" turns it off only for loopback \
             addresses). Set TRAINYARD_AUTH__MODE=required to require tokens. Meanwhile only \
             requests addressed to a loopback name (localhost, 127.0.0.1, [::1]{}) are answered, \
             and requests carrying X-Forwarded-*/Forwarded (a proxy) are refused.",
            state.settings.auth.mode,
            state
                .settings
                .auth
                .open_allowed_hosts
                .iter()
                .map(|h| format!(", {h}"))
                .collect::<String>()
        );
    } else {
        tracing::info!(
            inference_public = policy.inference_public,
            "API tokens required on {listen} (create one with `trainyard token create --name NAME --scopes admin`)"
        );
    }
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let queues = parse_queues(&args.queues)?;
    let (settings, pool) = crate::start(true).await?;
    spawn_pruner(pool.clone(), settings.queue.retention_hours);
    spawn_queue_gauges(&pool, &settings);
    let metrics_listen = args
        .metrics_listen
        .unwrap_or_else(|| settings.telemetry.worker_metrics_listen.clone());
    if !metrics_listen.is_empty() {
        tokio::spawn(async move {
            if let Err(e) = api::http_telemetry::serve_metrics_only(metrics_listen).await {
                tracing::error!("the metrics listener stopped: {e:#}");
            }
        });
    }
    let state = WorkerState {
        pool,
        settings: settings.clone(),
        embedders: Embedders::new(settings),
        scorers: Default::default(),
    };
    let options = WorkerOptions {
        queues,
        concurrency: args.concurrency,
        fetch_batch: args.fetch_batch,
        name_prefix: args.name,
    };
    run_workers(state, options, shutdown_signal()).await?;
    // Every job this process held is finished or handed back: exit now rather than wait for a
    // model thread still busy past the grace (dropping the runtime would). `_exit`, not `exit`:
    // libtorch's static destructors must not run under a thread that is still using it (seen:
    // a model load failing mid-teardown, and its job failing the dataset after the hand-back).
    crate::telemetry::shutdown();
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: ends the process at once; nothing after this point needs to run.
    unsafe { libc::_exit(0) }
}
