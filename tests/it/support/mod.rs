//! Test support: a fresh Postgres database per test, the API on port 0, workers in-process or
//! as real `trainyard worker` processes.
#![allow(dead_code)]
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;
use trainyard::api::AppState;
use trainyard::config::Settings;
use trainyard::job_registry::run_workers;
use trainyard::queue::worker::WorkerOptions;
use trainyard::worker_state::WorkerState;
use trainyard_jobs::JobKind;

pub mod families;
pub mod plans;
pub mod private_pg;
pub mod processes;

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
}

/// Process set-up for tests: TLS provider, and logs at `warn` unless RUST_LOG says otherwise.
pub fn quiet_init() {
    if std::env::var("RUST_LOG").is_err() {
        // SAFETY: tests call this before they start other threads that read the environment.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    trainyard::init_process(trainyard::telemetry::LogFormat::Text);
}

/// A fresh database `ty_test_<random>` with every migration applied (a copy of
/// [`migrated_template`]).
pub async fn fresh_db() -> TestDb {
    quiet_init();
    let template = migrated_template().await;
    let admin = PgPool::connect(ADMIN_URL)
        .await
        .expect("Postgres at 127.0.0.1:5432 (run scripts/setup.sh)");
    let name = format!(
        "ty_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} TEMPLATE {template}"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let pool = PgPool::connect(&url).await.unwrap();
    TestDb { pool, url, name }
}

/// The fully migrated database every test database is copied from (`CREATE DATABASE …
/// TEMPLATE`, a file copy instead of every migration per test). It is named after a hash of
/// `migrations/` and `Cargo.lock` (which pins the queue's own migrations), built once per
/// machine under an advisory lock and renamed into place only when complete, so concurrent
/// test processes agree and a half-migrated template is never cloned; stale ones are dropped.
pub async fn migrated_template() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(name) = NAME.get() {
        return name.clone();
    }
    use sha2::Digest;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.push(root.join("Cargo.lock"));
    let mut hash = sha2::Sha256::new();
    for file in &files {
        hash.update(file.file_name().unwrap().as_encoded_bytes());
        hash.update(std::fs::read(file).unwrap());
    }
    let name = format!("ty_template_{}", &hex::encode(hash.finalize())[..16]);

    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(ADMIN_URL)
        .await
        .expect("Postgres at 127.0.0.1:5432 (run scripts/setup.sh)");
    sqlx::query("SELECT pg_advisory_lock(hashtext('trainyard test template'))")
        .execute(&mut admin)
        .await
        .unwrap();
    let present: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !present {
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'ty\\_template\\_%'",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        for old in stale {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {old} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
        let building = format!("{name}_building");
        for sql in [
            format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
            format!("CREATE DATABASE {building}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let pool = PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{building}"))
            .await
            .unwrap();
        trainyard::db::migrate(&pool).await.unwrap();
        pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {building} RENAME TO {name}"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('trainyard test template'))")
        .execute(&mut admin)
        .await
        .unwrap();
    let _ = admin.close().await;
    NAME.get_or_init(|| name).clone()
}

impl TestDb {
    /// Drops the database (terminating whatever still holds a connection to it).
    pub async fn drop_db(self) {
        // Closing waits for checked-out connections; give in-process workers a moment.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.pool.close()).await;
        let admin = PgPool::connect(ADMIN_URL).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await;
    }
}

/// The shipped config, pointed at `url`, with short timings for tests.
pub fn test_settings(url: &str) -> Settings {
    let mut s = Settings::load(&Settings::default_dir()).expect("config/ loads");
    s.database.url = url.to_string();
    s.queue.heartbeat_secs = 1;
    s.queue.missed_heartbeats = 3;
    s.queue.poll_interval_ms = 200;
    s.queue.retry_base_secs = 0.2;
    s.queue.retry_max_secs = 1.0;
    s.queue.max_attempts = 3;
    s.datasets.embed_batch_size = 16;
    s.local_model.threads = 1;
    s.training.secrets_key_env = test_secrets_key().into();
    s
}

/// The variable holding the tests' key for sealed webhook credentials, set once per process.
pub fn test_secrets_key() -> &'static str {
    const VAR: &str = "TRAINYARD_TEST_SECRETS_KEY";
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // base64 of 32 bytes 0x2a: a fixed test key.
        std::env::set_var(VAR, "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=");
    });
    VAR
}

pub struct TestApp {
    pub base: String,
    pub state: AppState,
    pub client: reqwest::Client,
}

/// Serves the API on 127.0.0.1:0 inside this process.
pub async fn spawn_api(pool: PgPool, settings: Arc<Settings>) -> TestApp {
    use poem::listener::{Acceptor, Listener};
    let state = AppState::new(pool, settings);
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().cloned().unwrap();
    let app = trainyard::api::app(state.clone());
    tokio::spawn(async move {
        let _ = poem::Server::new_with_acceptor(acceptor).run(app).await;
    });
    TestApp {
        base: format!("http://{addr}"),
        state,
        client: reqwest::Client::new(),
    }
}

/// Runs a worker on every queue inside this process until the returned sender is dropped.
pub fn spawn_inprocess_worker(
    app: &TestApp,
    concurrency: usize,
) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = WorkerState {
        pool: app.state.pool.clone(),
        settings: app.state.settings.clone(),
        embedders: app.state.embedders.clone(),
        scorers: Default::default(),
    };
    let options = WorkerOptions {
        queues: JobKind::ALL.to_vec(),
        concurrency,
        fetch_batch: None,
        name_prefix: Some("test".into()),
    };
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
            Ok(())
        };
        run_workers(state, options, shutdown).await.unwrap();
    });
    tx
}

/// A child process that is killed when dropped (also when a test panics).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `trainyard worker` process on `url` (queues dataset_build and embed), with the test
/// timings.
pub fn spawn_worker_process(url: &str, name: &str, concurrency: usize) -> KillOnDrop {
    spawn_worker_process_on(url, "dataset_build,embed", name, concurrency)
}

/// A real `trainyard worker` process on the given queues (comma-separated).
pub fn spawn_worker_process_on(
    url: &str,
    queues: &str,
    name: &str,
    concurrency: usize,
) -> KillOnDrop {
    spawn_worker_process_with(url, queues, name, concurrency, &[])
}

impl TestApp {
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Polls a dataset until it leaves the building states or `timeout` passes.
    pub async fn wait_dataset(&self, id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (_, d) = self.get(&format!("/api/v1/datasets/{id}")).await;
            if matches!(d["status"].as_str(), Some("ready" | "failed" | "cancelled"))
                || start.elapsed() > timeout
            {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `n` distinct pseudo-sentences, deterministic.
pub fn sentences(n: usize, salt: &str) -> Vec<String> {
    const WORDS: [&str; 24] = [
        "river", "market", "quiet", "engine", "orange", "winter", "paper", "silver", "garden",
        "window", "travel", "music", "summer", "letter", "bright", "forest", "coffee", "simple",
        "yellow", "planet", "secret", "morning", "station", "friendly",
    ];
    (0..n)
        .map(|i| {
            let mut x = (i as u64 + 1)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(salt.len() as u64);
            let words: Vec<&str> = (0..8)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    WORDS[(x >> 33) as usize % WORDS.len()]
                })
                .collect();
            format!("{salt} {i} {}", words.join(" "))
        })
        .collect()
}

/// Documents with one annotation each: label `spam` = i % 3 == 0.
pub fn labelled_docs(source: &str, texts: &[String]) -> (Value, Value) {
    let docs: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"source": source, "external_id": format!("d{i}"), "text": t}))
        .collect();
    let anns: Vec<Value> = (0..texts.len())
        .map(|i| json!({"source": source, "external_id": format!("d{i}"), "annotator": "alice", "labels": {"spam": i % 3 == 0}}))
        .collect();
    (json!({"documents": docs}), json!({"annotations": anns}))
}

// ---- Worker faults (SIGKILL chaos, SIGTERM): real worker processes with chosen settings. ----

/// A real `trainyard worker` process on `queues` with the test timings of
/// [`spawn_worker_process_on`], plus `env` (e.g. `TRAINYARD_QUEUE__SHUTDOWN_GRACE_SECS`),
/// which overrides them.
pub fn spawn_worker_process_with(
    url: &str,
    queues: &str,
    name: &str,
    concurrency: usize,
    env: &[(&str, &str)],
) -> KillOnDrop {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainyard"));
    command
        .args([
            "worker",
            "--queues",
            queues,
            "--concurrency",
            &concurrency.to_string(),
            "--name",
            name,
        ])
        .env("DATABASE_URL", url)
        .env("TRAINYARD_QUEUE__HEARTBEAT_SECS", "1")
        .env("TRAINYARD_QUEUE__MISSED_HEARTBEATS", "3")
        .env("TRAINYARD_QUEUE__POLL_INTERVAL_MS", "200")
        .env("TRAINYARD_QUEUE__RETRY_BASE_SECS", "0.2")
        .env("TRAINYARD_QUEUE__MAX_ATTEMPTS", "3")
        .env("TRAINYARD_DATASETS__EMBED_BATCH_SIZE", "16")
        .env("TRAINYARD_LOCAL_MODEL__THREADS", "1")
        .env("TRAINYARD_TRAINING__THREADS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    KillOnDrop(command.spawn().expect("spawn trainyard worker"))
}

/// Sends SIGTERM (a polite stop, as an orchestrator does) to a child process.
pub fn sigterm(child: &Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM) failed");
}

/// Waits for a child to exit, up to `timeout`: its exit status and how long it took, or None.
pub async fn wait_exit(
    child: &mut Child,
    timeout: Duration,
) -> Option<(std::process::ExitStatus, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some((status, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `apalis.jobs` rows by (job_type, status), sorted: the queue's state at a glance.
pub async fn job_states(pool: &PgPool) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT job_type, status, count(*) FROM apalis.jobs GROUP BY 1, 2 ORDER BY 1, 2")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Polls until no job is `Queued`/`Running`/`Pending`/retrying, or `timeout` passes; returns
/// the final states (apalis writes a job's end just after its handler returns).
pub async fn wait_queue_settled(pool: &PgPool, timeout: Duration) -> Vec<(String, String, i64)> {
    let start = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running')
                OR (status = 'Failed' AND attempts < max_attempts)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if open == 0 || start.elapsed() > timeout {
            return job_states(pool).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` documents of `source` whose `spam` label follows the text (every third one carries a
/// spam phrase), so that a classifier can learn it and F1 means something.
pub fn spam_docs(source: &str, n: usize) -> (Value, Value) {
    const SPAM: [&str; 6] = [
        "win a free prize now, click the link",
        "claim your cash reward today, limited offer",
        "cheap pills, no prescription, order now",
        "you have been selected for a lottery payout",
        "urgent: verify your bank account to unlock funds",
        "earn money fast from home, guaranteed income",
    ];
    let plain = sentences(n, source);
    let texts: Vec<String> = plain
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i % 3 == 0 {
                format!("{} {t}", SPAM[i % SPAM.len()])
            } else {
                t.clone()
            }
        })
        .collect();
    labelled_docs(source, &texts)
}

/// Runs a worker on the given queues inside this process until the returned sender is dropped.
pub fn spawn_inprocess_worker_on(
    app: &TestApp,
    queues: &[JobKind],
    concurrency: usize,
) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let state = WorkerState {
        pool: app.state.pool.clone(),
        settings: app.state.settings.clone(),
        embedders: app.state.embedders.clone(),
        scorers: Default::default(),
    };
    let options = WorkerOptions {
        queues: queues.to_vec(),
        concurrency,
        fetch_batch: None,
        name_prefix: Some("test".into()),
    };
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = rx.await;
            Ok(())
        };
        run_workers(state, options, shutdown).await.unwrap();
    });
    tx
}

/// Creates a binary `spam` dataset of `source` through the API; returns its id.
pub async fn start_spam_dataset(app: &TestApp, name: &str, source: &str) -> String {
    let (status, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": name, "selection": {"sources": [source]},
                   "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    d["id"].as_str().unwrap().to_string()
}

/// Imports [`spam_docs`] of `source` through the API.
pub async fn import_spam_docs(app: &TestApp, source: &str, n: usize) {
    let (docs, anns) = spam_docs(source, n);
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
}

/// Polls a training run until it ends or `timeout` passes.
pub async fn wait_training_run(app: &TestApp, id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (_, r) = app.get(&format!("/api/v1/training-runs/{id}")).await;
        if matches!(
            r["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) || start.elapsed() > timeout
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Epoch numbers stored for a run, in order (`training_epochs`, keyed by run and epoch).
pub async fn stored_epochs(pool: &PgPool, run: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT epoch FROM training_epochs WHERE run_id = $1::uuid ORDER BY epoch")
        .bind(run)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Waits until this API process serves `version` of `name` from memory (`loaded_version`).
pub async fn wait_loaded(app: &TestApp, name: &str, version: i64) {
    let start = Instant::now();
    loop {
        let (_, models) = app.get("/api/v1/models").await;
        let loaded = models
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name))
            .map(|m| m["loaded_version"].clone());
        if loaded == Some(json!(version)) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "version {version} never loaded: {models}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a training run (202) and waits for it to succeed; returns the run.
pub async fn train_to_success(app: &TestApp, body: Value) -> Value {
    let (status, run) = app.post("/api/v1/training-runs", body).await;
    assert_eq!(status, 202, "{run}");
    let run = wait_training_run(app, run["id"].as_str().unwrap(), Duration::from_secs(600)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    run
}

/// A tar's files (directories left out): path -> bytes.
pub fn untar(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut files = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(bytes).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    files
}

/// Scores `source` with `version` of `model` (the served one when None) through the API and
/// waits until the scoring job is done.
pub async fn score_source(app: &TestApp, model: &str, source: &str, version: Option<i64>) {
    let mut body = json!({"model": model, "selection": {"sources": [source]}});
    if let Some(v) = version {
        body["version"] = json!(v);
    }
    let (status, job) = app.post("/api/v1/scoring-jobs", body).await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/api/v1/scoring-jobs/{}", job["id"].as_str().unwrap());
    let start = Instant::now();
    loop {
        let job = app.get(&path).await.1;
        if job["status"] == "done" {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300) && job["status"] != "failed",
            "{job}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
