//! Every PromQL expression of the Grafana dashboard and the alert rules, run against a real
//! Prometheus (Debian's `prometheus`) that scrapes a running `trainyard serve` and a worker
//! while a dataset is built, a head is trained and promoted, and predictions are served: each
//! must return data.

use crate::compose_stack;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

fn spawn(db_url: &str, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args(args)
            .env("DATABASE_URL", db_url)
            .env("TRAINYARD_TELEMETRY__QUEUE_SAMPLE_SECS", "1")
            .env("TRAINYARD_QUEUE__HEARTBEAT_SECS", "1")
            .env("TRAINYARD_QUEUE__POLL_INTERVAL_MS", "200")
            .env("TRAINYARD_DATASETS__EMBED_BATCH_SIZE", "16")
            .env("TRAINYARD_LOCAL_MODEL__THREADS", "1")
            .env("TRAINYARD_TRAINING__THREADS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(url).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if ok(&v) {
                    return v;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_returns_data() {
    let db = fresh_db().await;
    let (api_port, worker_port, prom_port) = (free_port(), free_port(), free_port());
    let api = format!("127.0.0.1:{api_port}");
    let worker_metrics = format!("127.0.0.1:{worker_port}");
    let _serve = spawn(&db.url, &["serve", "--listen", &api]);
    let _worker = spawn(
        &db.url,
        &[
            "worker",
            "--queues",
            "dataset_build,embed,train",
            "--concurrency",
            "1",
            "--metrics-listen",
            &worker_metrics,
        ],
    );
    let dir = std::env::temp_dir().join(format!("ty-prom-{}", db.name));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: trainyard\n    static_configs:\n      - targets: ['{api}', '{worker_metrics}']\n"
        ),
    )
    .unwrap();
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .args([
                &format!("--config.file={}", dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's prometheus (scripts/test.sh installs it)"),
    );
    let client = reqwest::Client::new();
    let base = format!("http://{api}");
    wait_for(&client, &format!("{base}/api/v1/health"), "the API", |v| {
        v["database"] == "ok"
    })
    .await;

    // A build, a training run, a promotion and predictions: the work the dashboard shows.
    let (docs, anns) = labelled_docs("p", &sentences(48, "prom"));
    for (path, body) in [("/api/v1/documents", docs), ("/api/v1/annotations", anns)] {
        assert!(client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .is_success());
    }
    let d: Value = client
        .post(format!("{base}/api/v1/datasets"))
        .json(&json!({"name": "p", "selection": {"sources": ["p"]},
                      "label_schema": {"type": "binary", "labels": ["spam"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = d["id"].as_str().unwrap().to_string();
    wait_for(
        &client,
        &format!("{base}/api/v1/datasets/{id}"),
        "dataset ready",
        |v| v["status"] == "ready",
    )
    .await;
    let r: Value = client
        .post(format!("{base}/api/v1/training-runs"))
        .json(
            &json!({"dataset_id": id, "model_name": "dash", "mode": "head",
                      "hyperparameters": {"epochs": 4, "patience": 0}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = r["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let done = wait_for(
        &client,
        &format!("{base}/api/v1/training-runs/{run}"),
        "run finished",
        |v| matches!(v["status"].as_str(), Some("succeeded" | "failed")),
    )
    .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let promoted = client
        .post(format!("{base}/api/v1/models/dash/versions/1/promote"))
        .send()
        .await
        .unwrap();
    assert!(promoted.status().is_success());
    wait_for(&client, &format!("{base}/health"), "model loaded", |v| {
        v["model"] == "dash"
    })
    .await;
    for i in 0..10 {
        let p = client
            .post(format!("{base}/predict"))
            .json(&json!({"text": format!("free money number {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(p.status(), 200);
    }
    // A few scrapes after the last event, so that every rate() has two samples.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut empty = Vec::new();
    for (place, expr) in compose_stack::all_expressions() {
        let v: Value = client
            .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
            .query(&[("query", expr.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{place}: `{expr}`: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{place}: `{expr}`"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}
