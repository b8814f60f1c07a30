//! Chaos: SIGKILL a random worker process every few seconds during a dataset build, a `head`
//! training run and a `finetune` run, starting a new worker as each one dies (two alive).
//! Everything must finish: every embedding stored once, every epoch stored once, no job left
//! `Running` after the heartbeat window, sane final metrics. The victims are picked by a seeded
//! generator (`CHAOS_SEED` overrides it; the seed is printed) so that a failure can be replayed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// Heartbeat of the chaos workers and the number missed before apalis hands their jobs on.
const HEARTBEAT_SECS: u64 = 1;
const MISSED_HEARTBEATS: u64 = 3;

/// A pool of real worker processes on every queue, kept at `alive` processes.
struct Chaos {
    url: String,
    alive: usize,
    workers: Vec<(String, KillOnDrop)>,
    rng: ChaCha8Rng,
    started: usize,
    kills: usize,
}

impl Chaos {
    fn new(url: &str, alive: usize, seed: u64) -> Chaos {
        let mut chaos = Chaos {
            url: url.to_string(),
            alive,
            workers: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            started: 0,
            kills: 0,
        };
        chaos.top_up();
        chaos
    }

    fn top_up(&mut self) {
        while self.workers.len() < self.alive {
            self.started += 1;
            let name = format!("chaos{}", self.started);
            let heartbeat = HEARTBEAT_SECS.to_string();
            let missed = MISSED_HEARTBEATS.to_string();
            let child = spawn_worker_process_with(
                &self.url,
                "dataset_build,embed,train",
                &name,
                1,
                &[
                    ("TRAINYARD_QUEUE__HEARTBEAT_SECS", heartbeat.as_str()),
                    ("TRAINYARD_QUEUE__MISSED_HEARTBEATS", missed.as_str()),
                    ("TRAINYARD_QUEUE__MAX_ATTEMPTS", "50"),
                    ("TRAINYARD_TRAINING__PROGRESS_INTERVAL_SECS", "0.5"),
                ],
            );
            self.workers.push((name, child));
        }
    }

    /// SIGKILLs one worker (`prefer` if it is alive, else one picked by the seeded generator)
    /// and starts its replacement. Returns the victim's name.
    fn kill_one(&mut self, prefer: Option<&str>) -> String {
        let drawn = self.rng.random_range(0..self.workers.len());
        let i = prefer
            .and_then(|p| self.workers.iter().position(|(name, _)| name == p))
            .unwrap_or(drawn);
        let (name, mut victim) = self.workers.swap_remove(i);
        victim.0.kill().expect("SIGKILL");
        let _ = victim.0.wait();
        self.kills += 1;
        self.top_up();
        name
    }

    /// A pause of `min..max` seconds, drawn from the seeded generator.
    fn pause(&mut self, min: f64, max: f64) -> Duration {
        Duration::from_secs_f64(self.rng.random_range(min..max))
    }
}

/// Whether the (dead) worker `victim` was running a job of `kind` when it died. Asked after the
/// kill: a dead process's claim stays `Running` until the heartbeat window hands it on, so the
/// answer cannot race with the job finishing the way a look taken before the kill can.
async fn held_at_death(db: &TestDb, kind: &str, victim: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM apalis.jobs
                        WHERE job_type = $1 AND status = 'Running' AND split_part(lock_by, '-', 1) = $2)",
    )
    .bind(kind)
    .bind(victim)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Which worker holds a running job of `kind` (its process name), if any.
async fn holder(db: &TestDb, kind: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT split_part(lock_by, '-', 1) FROM apalis.jobs WHERE job_type = $1 AND status = 'Running'",
    )
    .bind(kind)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

/// Kills a random worker every `min..max` seconds until `done` says the work is finished (or
/// `max_kills` were made; then the work finishes in peace). Returns the victims and whether
/// each held a job of `kind` at the time. So that a fast machine cannot finish before the
/// chaos starts, the first kill goes to a worker running a job of `kind` as soon as `gate` (a
/// SQL boolean: some of the work is saved) holds; the random kills follow. Chance may still
/// spare that worker later: if two random kills in a row miss it, the next goes to it.
#[allow(clippy::too_many_arguments)]
async fn kill_until<F, Fut>(
    chaos: &mut Chaos,
    db: &TestDb,
    kind: &str,
    gate: &str,
    (min, max): (f64, f64),
    max_kills: usize,
    timeout: Duration,
    mut done: F,
) -> Vec<(String, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut victims = Vec::new();
    while victims.len() < max_kills && !done().await {
        assert!(start.elapsed() < timeout, "the work never started");
        let holders = holder(db, kind).await;
        let saved: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(gate.to_string()))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if let (Some(first), true) = (holders.first(), saved) {
            // The job seen running may finish between that look and the kill: the first kill
            // is only done when the dead worker is found still holding one.
            let victim = chaos.kill_one(Some(first));
            let held = held_at_death(db, kind, &victim).await;
            eprintln!(
                "chaos: t={:.1}s SIGKILL {victim}{} (first kill)",
                start.elapsed().as_secs_f64(),
                if held {
                    format!(" (held a {kind} job)")
                } else {
                    " (its job had just ended; trying again)".to_string()
                }
            );
            victims.push((victim, held));
            if held {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut next = Instant::now() + chaos.pause(min, max);
    loop {
        if done().await {
            return victims;
        }
        assert!(
            start.elapsed() < timeout,
            "not finished after {timeout:?} and {} kills; jobs {:?}",
            victims.len(),
            job_states(&db.pool).await
        );
        if victims.len() < max_kills && Instant::now() >= next {
            let holders = holder(db, kind).await;
            let missed_so_far =
                victims.len() >= 2 && victims.iter().rev().take(2).all(|(_, held)| !held);
            let prefer = holders.first().filter(|_| missed_so_far).cloned();
            let victim = chaos.kill_one(prefer.as_deref());
            let held = held_at_death(db, kind, &victim).await;
            eprintln!(
                "chaos: t={:.1}s SIGKILL {victim}{}",
                start.elapsed().as_secs_f64(),
                if held {
                    format!(" (held a {kind} job)")
                } else {
                    String::new()
                }
            );
            victims.push((victim, held));
            next = Instant::now() + chaos.pause(min, max);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After the heartbeat window (plus slack) no job may still be claimed: every one is Done.
async fn assert_no_job_stuck(db: &TestDb) -> Vec<(String, String, i64)> {
    let window = Duration::from_secs(HEARTBEAT_SECS * MISSED_HEARTBEATS);
    tokio::time::sleep(window + Duration::from_secs(2)).await;
    let states = wait_queue_settled(&db.pool, Duration::from_secs(30)).await;
    assert!(
        states.iter().all(|(_, status, _)| status == "Done"),
        "after the heartbeat window every job is done, none stuck: {states:?}"
    );
    states
}

/// Attempts per job of `kind`: (jobs, max attempts, total attempts).
async fn attempts(db: &TestDb, kind: &str) -> (i64, i32, i64) {
    let row: (i64, Option<i32>, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(attempts), sum(attempts)::bigint FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(kind)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (row.0, row.1.unwrap_or(0), row.2.unwrap_or(0))
}

async fn run_status(app: &TestApp, run: &str) -> Value {
    app.get(&format!("/api/v1/training-runs/{run}")).await.1
}

/// A training run under chaos: it finishes, its epochs are stored once each (1..=epochs, no
/// gap, no duplicate), its metrics are finite with an F1. Returns the run.
#[allow(clippy::too_many_arguments)]
async fn train_under_chaos(
    chaos: &mut Chaos,
    app: &TestApp,
    db: &TestDb,
    dataset: &str,
    name: &str,
    body: Value,
    pause: (f64, f64),
    max_kills: usize,
) -> Value {
    let started = Instant::now();
    let mut request = body.clone();
    request["dataset_id"] = json!(dataset);
    request["model_name"] = json!(name);
    let (status, r) = app.post("/api/v1/training-runs", request).await;
    assert_eq!(status, 202, "{r}");
    let run = r["id"].as_str().unwrap().to_string();
    let gate = format!("SELECT count(*) >= 1 FROM training_epochs WHERE run_id = '{run}'");
    let victims = kill_until(
        chaos,
        db,
        "train",
        &gate,
        pause,
        max_kills,
        Duration::from_secs(900),
        || async {
            matches!(
                run_status(app, &run).await["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        },
    )
    .await;
    let r = run_status(app, &run).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let epochs = body["hyperparameters"]["epochs"].as_i64().unwrap() as i32;
    let stored = stored_epochs(&db.pool, &run).await;
    assert_eq!(
        stored,
        (1..=epochs).collect::<Vec<_>>(),
        "every epoch stored exactly once"
    );
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT epoch) FROM training_epochs WHERE run_id = $1::uuid",
    )
    .bind(&run)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows, distinct, "no duplicate epochs");
    let (_, m) = app
        .get(&format!("/api/v1/training-runs/{run}/metrics"))
        .await;
    let listed: Vec<i64> = m["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_i64().unwrap())
        .collect();
    assert_eq!(
        listed.len(),
        epochs as usize,
        "the API lists each epoch once: {m}"
    );
    for e in m["epochs"].as_array().unwrap() {
        assert!(e["train_loss"].as_f64().is_some_and(f64::is_finite), "{e}");
    }
    let test = &r["test_metrics"];
    let f1 = test["macro_f1"].as_f64().expect("test macro-F1 computed");
    assert!(f1.is_finite() && (0.0..=1.0).contains(&f1), "{test}");
    assert!(
        test["per_label"][0]["f1"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "per-label F1: {test}"
    );
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM model_versions WHERE run_id = $1::uuid")
            .bind(&run)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(versions, 1, "one model version per run");
    let hits = victims.iter().filter(|(_, held)| *held).count();
    assert!(hits >= 1, "no kill hit the training worker: {victims:?}");
    // The first kill came after epoch 1 was stored: every later attempt starts from a checkpoint.
    assert!(
        r["resumed_from"].as_i64().is_some_and(|e| e >= 1),
        "the run resumed from a checkpoint: {r}"
    );
    eprintln!(
        "chaos {name}: finished in {:.1}s, {} kills ({hits} of the training worker), resumed_from {}, epochs {stored:?}, test macro-F1 {f1:.3}",
        started.elapsed().as_secs_f64(),
        victims.len(),
        r["resumed_from"],
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_during_build_head_and_finetune() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    eprintln!("chaos: seed {seed} (set CHAOS_SEED to replay another)");
    let test_started = Instant::now();
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    // Jobs enqueued by the API (train) get the same generous budget as the workers' (embed):
    // every kill of a holder costs its job an attempt.
    settings.queue.max_attempts = 50;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let texts = 800;
    import_spam_docs(&app, "big", texts).await;
    import_spam_docs(&app, "tiny", 60).await;
    let mut chaos = Chaos::new(&db.url, 2, seed);

    // 1. A dataset build: 800 texts in 50 embed batches, a kill every 2-4 s.
    let build_started = Instant::now();
    let dataset = start_spam_dataset(&app, "big", "big").await;
    let victims = kill_until(
        &mut chaos,
        &db,
        "embed",
        "SELECT count(*) >= 1 FROM apalis.jobs WHERE job_type = 'embed' AND status = 'Done'",
        (2.0, 4.0),
        usize::MAX,
        Duration::from_secs(600),
        || async {
            let d = app.get(&format!("/api/v1/datasets/{dataset}")).await.1;
            matches!(d["status"].as_str(), Some("ready" | "failed" | "cancelled"))
        },
    )
    .await;
    let d = app.get(&format!("/api/v1/datasets/{dataset}")).await.1;
    assert_eq!(d["status"], "ready", "{d}");
    let build_secs = build_started.elapsed().as_secs_f64();
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (model, dimensions, checksum)) FROM embeddings",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct),
        (texts as i64, texts as i64),
        "every embedding once"
    );
    let (batches, undone, new_sum): (i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT done), sum(new_count) FROM embed_batches WHERE dataset_id = $1::uuid",
    )
    .bind(&dataset)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(batches, 50, "800 texts in batches of 16");
    assert_eq!(
        (undone, new_sum),
        (0, Some(texts as i64)),
        "no batch counted twice"
    );
    assert_eq!(d["progress"]["batches_done"], batches);
    assert_eq!(
        d["new_embeddings"].as_i64().unwrap() + d["reused_embeddings"].as_i64().unwrap(),
        texts as i64
    );
    let states = assert_no_job_stuck(&db).await;
    let (embed_jobs, embed_max, embed_sum) = attempts(&db, "embed").await;
    let (_, build_max, _) = attempts(&db, "dataset_build").await;
    assert!(
        victims.iter().any(|(_, held)| *held),
        "no kill hit an embedding worker: {victims:?}"
    );
    assert!(embed_sum > embed_jobs, "killed batches were run again");
    eprintln!(
        "chaos build: ready in {build_secs:.1}s, {} kills, embed jobs {embed_jobs} with {embed_sum} attempts (max {embed_max} for one), build attempts {build_max}, jobs {states:?}",
        victims.len()
    );

    // 2. A head run on that dataset (150 epochs, each checkpointed), a kill every 2-4 s.
    let head = train_under_chaos(
        &mut chaos,
        &app,
        &db,
        &dataset,
        "chaos-head",
        json!({"mode": "head", "hyperparameters": {"epochs": 150, "patience": 0, "seed": 7}}),
        (2.0, 4.0),
        12,
    )
    .await;
    let f1 = head["test_metrics"]["macro_f1"].as_f64().unwrap();
    assert!(
        f1 >= 0.8,
        "the spam phrases are easy to learn: head macro-F1 {f1}"
    );
    assert_no_job_stuck(&db).await;

    // 3. A tiny finetune (60 short texts, 3 epochs), a kill every 5-9 s: long enough for an
    //    epoch and its checkpoint to land now and then, so the run makes progress and resumes.
    let tiny = start_spam_dataset(&app, "tiny", "tiny").await;
    let d = app.wait_dataset(&tiny, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let finetune = train_under_chaos(
        &mut chaos,
        &app,
        &db,
        &tiny,
        "chaos-finetune",
        json!({"mode": "finetune", "hyperparameters": {"epochs": 3, "batch_size": 8,
               "max_tokens": 32, "patience": 0, "seed": 5}}),
        (5.0, 9.0),
        8,
    )
    .await;
    let states = assert_no_job_stuck(&db).await;
    let (train_jobs, train_max, train_sum) = attempts(&db, "train").await;
    eprintln!(
        "chaos: {} kills in all, {} workers started, train jobs {train_jobs} with {train_sum} attempts (max {train_max}), finetune resumed_from {}, jobs {states:?}, test took {:.1}s",
        chaos.kills,
        chaos.started,
        finetune["resumed_from"],
        test_started.elapsed().as_secs_f64()
    );
    let by_status: BTreeMap<String, i64> =
        states
            .iter()
            .fold(BTreeMap::new(), |mut acc, (_, status, n)| {
                *acc.entry(status.clone()).or_default() += n;
                acc
            });
    assert_eq!(by_status.len(), 1, "only Done: {by_status:?}");
    drop(chaos);
    db.drop_db().await;
}
