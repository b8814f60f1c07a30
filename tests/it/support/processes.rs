//! Real `trainyard serve` and `trainyard worker` processes whose logs go to files (so that a
//! test can show them when it fails), and a small HTTP client for a served API that measures
//! how long each answer took.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::free_port;
use super::KillOnDrop;

/// The test timings (as `test_settings` and `spawn_worker_process` use), as environment.
const TEST_ENV: [(&str, &str); 9] = [
    ("TRAINYARD_QUEUE__HEARTBEAT_SECS", "1"),
    ("TRAINYARD_QUEUE__MISSED_HEARTBEATS", "3"),
    ("TRAINYARD_QUEUE__POLL_INTERVAL_MS", "200"),
    ("TRAINYARD_QUEUE__RETRY_BASE_SECS", "0.2"),
    ("TRAINYARD_QUEUE__RETRY_MAX_SECS", "1.0"),
    ("TRAINYARD_DATASETS__EMBED_BATCH_SIZE", "16"),
    ("TRAINYARD_LOCAL_MODEL__THREADS", "1"),
    ("TRAINYARD_TRAINING__THREADS", "2"),
    ("TRAINYARD_INFERENCE__THREADS", "1"),
];

/// A `trainyard` process: killed when dropped; its stderr (RUST_LOG=warn) in `log`.
pub struct TrainyardProcess {
    pub process: KillOnDrop,
    pub log: PathBuf,
}

impl TrainyardProcess {
    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether it is still running (it was never restarted: the same process).
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.0.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

fn spawn(args: &[&str], url: &str, env: &[(&str, &str)], log: &Path) -> TrainyardProcess {
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_trainyard"));
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    for (k, v) in TEST_ENV.iter().chain(env) {
        command.env(k, v);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn trainyard");
    TrainyardProcess {
        process: KillOnDrop(child),
        log: log.to_path_buf(),
    }
}

/// A `trainyard worker` on `queues` (comma-separated), test timings plus `env`.
pub fn spawn_worker(
    url: &str,
    queues: &str,
    name: &str,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> TrainyardProcess {
    spawn(
        &[
            "worker",
            "--queues",
            queues,
            "--concurrency",
            "2",
            "--name",
            name,
        ],
        url,
        env,
        &log_dir.join(format!("worker-{name}.log")),
    )
}

/// A served API in another process.
pub struct Remote {
    pub base: String,
    pub client: reqwest::Client,
}

/// One answer: status (0 when no HTTP answer came at all), JSON body, time taken.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub elapsed: Duration,
}

impl Remote {
    pub fn new(base: String) -> Remote {
        Remote {
            base,
            // A generous bound: a request that hangs fails the test instead of hanging it.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let start = Instant::now();
        match request.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.json().await.unwrap_or(Value::Null);
                Answer {
                    status,
                    body,
                    elapsed: start.elapsed(),
                }
            }
            Err(e) => Answer {
                status: 0,
                body: Value::String(e.to_string()),
                elapsed: start.elapsed(),
            },
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.client.post(format!("{}{path}", self.base)).json(&body))
            .await
    }
}

/// A `trainyard serve` on a free port, test timings plus `env`; returns once `/health`
/// answers (it migrates first).
pub async fn spawn_serve(
    url: &str,
    name: &str,
    env: &[(&str, &str)],
    log_dir: &Path,
) -> (TrainyardProcess, Remote) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut process = spawn(
        &["serve", "--listen", &listen],
        url,
        env,
        &log_dir.join(format!("serve-{name}.log")),
    );
    let remote = Remote::new(format!("http://{listen}"));
    let start = Instant::now();
    loop {
        if remote.get("/health").await.status == 200 {
            return (process, remote);
        }
        assert!(
            process.is_running() && start.elapsed() < Duration::from_secs(90),
            "serve {name} did not come up:\n{}",
            process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
