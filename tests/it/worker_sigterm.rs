//! SIGTERM to a real worker process: it takes no new jobs, finishes or hands back what it holds
//! within `queue.shutdown_grace_secs`, and exits 0; the job it held is never lost and never left
//! `Running`, and another worker finishes it (a training run resumes from its last epoch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;
use trainyard_jobs::JobKind;

/// Waits until `worker` (a name prefix) is running a job of `kind` and at least `done` jobs of
/// that kind are done.
async fn wait_running(db: &TestDb, kind: &str, worker: &str, done: i64) {
    let start = Instant::now();
    loop {
        let (running, finished): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'Running' AND lock_by LIKE $2 || '-%'),
                    count(*) FILTER (WHERE status = 'Done')
             FROM apalis.jobs WHERE job_type = $1",
        )
        .bind(kind)
        .bind(worker)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if running > 0 && finished >= done {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{worker} never ran a {kind} job: {:?}",
            job_states(&db.pool).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn db_now(db: &TestDb) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Jobs still claimed by `worker` (Queued or Running under its name).
async fn held_by(db: &TestDb, worker: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running') AND lock_by LIKE $1 || '-%'",
    )
    .bind(worker)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Embeddings stored exactly once, every batch done once, every job done.
async fn assert_build_exact(db: &TestDb, texts: i64) {
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (model, dimensions, checksum)) FROM embeddings",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((rows, distinct), (texts, texts));
    let (undone, new_sum): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT done), sum(new_count) FROM embed_batches",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (undone, new_sum),
        (0, Some(texts)),
        "no batch counted twice"
    );
    let states = wait_queue_settled(&db.pool, Duration::from_secs(30)).await;
    assert!(
        states.iter().all(|(_, status, _)| status == "Done"),
        "every job done: {states:?}"
    );
}

/// A build with many batches; SIGTERM while the worker embeds: it finishes the batches it is
/// running, starts none after the signal, puts its prefetched ones back, and exits 0 well
/// within the grace. A second worker completes the build, each embedding stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_build_finishes_running_jobs_and_exits_0() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    import_spam_docs(&app, "t", 640).await;
    let grace = 20;
    let grace_env = grace.to_string();
    let env = [("TRAINYARD_QUEUE__SHUTDOWN_GRACE_SECS", grace_env.as_str())];
    let mut first = spawn_worker_process_with(&db.url, "dataset_build,embed", "first", 2, &env);
    let id = start_spam_dataset(&app, "t", "t").await;
    wait_running(&db, "embed", "first", 2).await;

    let signalled_at = db_now(&db).await;
    sigterm(&first.0);
    let (status, took) = wait_exit(&mut first.0, Duration::from_secs(grace + 15))
        .await
        .expect("the worker exits after SIGTERM");
    eprintln!("sigterm during build: exit {status} after {took:?} (grace {grace} s)");
    assert_eq!(status.code(), Some(0), "exit code after SIGTERM");
    assert!(
        took < Duration::from_secs(grace),
        "embed batches are short: finished well within the grace, took {took:?}"
    );
    assert_eq!(held_by(&db, "first").await, 0, "nothing left claimed");
    // It finished at most what it was running (concurrency 2) after the signal.
    let after: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE status = 'Done' AND lock_by LIKE 'first-%' AND done_at > $1",
    )
    .bind(signalled_at)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        after <= 2,
        "{after} jobs finished after SIGTERM with concurrency 2"
    );
    let states = job_states(&db.pool).await;
    eprintln!(
        "sigterm during build: jobs after exit {states:?}, finished after the signal {after}"
    );
    assert!(
        states.iter().all(|(_, s, _)| s == "Done" || s == "Pending"),
        "every job done or back in the queue: {states:?}"
    );
    let pending: i64 = states
        .iter()
        .filter(|(_, s, _)| s == "Pending")
        .map(|r| r.2)
        .sum();
    assert!(
        pending > 0,
        "the build was cut mid-way (nothing left to test otherwise)"
    );

    let _second = spawn_worker_process_with(&db.url, "dataset_build,embed", "second", 2, &[]);
    let d = app.wait_dataset(&id, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    assert_build_exact(&db, 640).await;
    db.drop_db().await;
}

/// A job that outlasts the grace (one large embed batch, grace 1 s): the worker hands it back
/// (pending, attempt not counted), exits 0 right after the grace, and another worker does it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_hands_the_job_back() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    import_spam_docs(&app, "g", 600).await;
    // Batches of 300 texts take seconds each on one thread.
    let env = [
        ("TRAINYARD_QUEUE__SHUTDOWN_GRACE_SECS", "1"),
        ("TRAINYARD_DATASETS__EMBED_BATCH_SIZE", "300"),
    ];
    let mut first = spawn_worker_process_with(&db.url, "dataset_build,embed", "slow", 1, &env);
    let id = start_spam_dataset(&app, "g", "g").await;
    wait_running(&db, "embed", "slow", 0).await;
    let held: String = sqlx::query_scalar(
        "SELECT id FROM apalis.jobs WHERE job_type = 'embed' AND status = 'Running' AND lock_by LIKE 'slow-%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    sigterm(&first.0);
    let (status, took) = wait_exit(&mut first.0, Duration::from_secs(15))
        .await
        .expect("the worker exits after SIGTERM");
    eprintln!("sigterm past the grace: exit {status} after {took:?} (grace 1 s)");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(8),
        "bounded by the grace: {took:?}"
    );
    let (job_status, attempts, lock): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempts, lock_by FROM apalis.jobs WHERE id = $1")
            .bind(&held)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    eprintln!("sigterm past the grace: held job {held} now {job_status}, attempts {attempts}");
    // Done if the batch happened to end inside the grace; otherwise handed back untouched.
    assert!(
        job_status == "Done" || (job_status == "Pending" && lock.is_none() && attempts == 0),
        "{job_status} attempts {attempts} lock {lock:?}"
    );
    assert_eq!(held_by(&db, "slow").await, 0);

    let _second = spawn_worker_process_with(
        &db.url,
        "dataset_build,embed",
        "finisher",
        1,
        &[("TRAINYARD_DATASETS__EMBED_BATCH_SIZE", "300")],
    );
    let d = app.wait_dataset(&id, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    assert_build_exact(&db, 600).await;
    db.drop_db().await;
}

/// SIGTERM in the middle of a finetune's second epoch: the run stops at its next step, the job
/// goes back to the queue with its attempt not counted, the process exits 0 long before the
/// grace; the next worker resumes after epoch 1 and every epoch is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_training_hands_back_and_the_run_resumes() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    import_spam_docs(&app, "ft", 120).await;
    let builder = spawn_inprocess_worker_on(&app, &[JobKind::DatasetBuild, JobKind::Embed], 2);
    let dataset = start_spam_dataset(&app, "ft", "ft").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    drop(builder);

    let grace = 60;
    let grace_env = grace.to_string();
    let env = [
        ("TRAINYARD_QUEUE__SHUTDOWN_GRACE_SECS", grace_env.as_str()),
        ("TRAINYARD_TRAINING__PROGRESS_INTERVAL_SECS", "0.2"),
    ];
    let mut first = spawn_worker_process_with(&db.url, "train", "trainer-a", 1, &env);
    let (status, r) = app
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": "sigterm", "mode": "finetune",
                   "hyperparameters": {"epochs": 3, "batch_size": 8, "max_tokens": 32,
                                        "patience": 0, "seed": 5}}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let run = r["id"].as_str().unwrap().to_string();
    // Into epoch 2: epoch 1 is stored and a few steps of the next one are done.
    let start = Instant::now();
    loop {
        let (epoch, step, total, epochs): (i32, i64, i64, i32) = sqlx::query_as(
            "SELECT epoch, global_step, total_steps, total_epochs FROM training_runs WHERE id = $1::uuid",
        )
        .bind(&run)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let per_epoch = if epochs > 0 { total / epochs as i64 } else { 0 };
        let stored = stored_epochs(&db.pool, &run).await;
        if stored == vec![1] && epoch == 2 && per_epoch > 0 && step >= per_epoch + 2 {
            eprintln!("sigterm during training: signal at step {step} of {total} (epoch 2)");
            break;
        }
        assert!(
            stored.len() < 2,
            "epoch 2 ended before the signal could be sent"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "training never reached epoch 2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job: String = sqlx::query_scalar("SELECT job_id FROM training_runs WHERE id = $1::uuid")
        .bind(&run)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    sigterm(&first.0);
    let (status, took) = wait_exit(&mut first.0, Duration::from_secs(grace + 15))
        .await
        .expect("the worker exits after SIGTERM");
    eprintln!("sigterm during training: exit {status} after {took:?} (grace {grace} s)");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(30),
        "training stops at its next step, not at the end of the grace: {took:?}"
    );
    let (job_status, attempts, lock): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempts, lock_by FROM apalis.jobs WHERE id = $1")
            .bind(&job)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    eprintln!("sigterm during training: job {job_status}, attempts {attempts}");
    assert_eq!(
        (job_status.as_str(), attempts, lock),
        ("Pending", 0, None),
        "handed back as it was: pending, no attempt used, unlocked"
    );
    let (_, r) = app.get(&format!("/api/v1/training-runs/{run}")).await;
    assert_ne!(
        r["status"], "failed",
        "an interrupted run is not failed: {r}"
    );
    assert_eq!(stored_epochs(&db.pool, &run).await, vec![1]);

    let _second = spawn_worker_process_with(&db.url, "train", "trainer-b", 1, &[]);
    let r = wait_training_run(&app, &run, Duration::from_secs(400)).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["resumed_from"], 1, "resumed after the stored epoch: {r}");
    assert_eq!(stored_epochs(&db.pool, &run).await, vec![1, 2, 3]);
    let f1 = r["test_metrics"]["macro_f1"].as_f64().expect("test F1");
    assert!(f1.is_finite(), "{r}");
    let states = wait_queue_settled(&db.pool, Duration::from_secs(30)).await;
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM apalis.jobs WHERE id = $1")
        .bind(&job)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    eprintln!("sigterm during training: resumed, test macro-F1 {f1:.3}, job attempts {attempts}, jobs {states:?}");
    assert_eq!(attempts, 1, "the handed-back attempt was not counted");
    assert!(states.iter().all(|(_, s, _)| s == "Done"), "{states:?}");
    db.drop_db().await;
}
