//! Prometheus `/metrics` on `serve` and on a worker: request durations by route template, and
//! the queue-wide gauges reported by exactly one of the processes, with the right values.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

fn spawn(db_url: &str, args: &[&str]) -> KillOnDrop {
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args(args)
            .env("DATABASE_URL", db_url)
            .env("TRAINYARD_TELEMETRY__QUEUE_SAMPLE_SECS", "0.5")
            .env("TRAINYARD_QUEUE__HEARTBEAT_SECS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// The value of the sample `name{labels}` (labels as written, e.g. `queue="embed"`), if any.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_serve_and_worker_with_one_queue_sampler() {
    let db = fresh_db().await;
    let (api_port, worker_port) = (free_port(), free_port());
    let api = format!("127.0.0.1:{api_port}");
    let _serve = spawn(&db.url, &["serve", "--listen", &api]);
    // A worker on the train queue only: the dataset_build job below stays waiting.
    let worker_metrics = format!("127.0.0.1:{worker_port}");
    let _worker = spawn(
        &db.url,
        &[
            "worker",
            "--queues",
            "train",
            "--metrics-listen",
            &worker_metrics,
        ],
    );
    let client = reqwest::Client::new();
    let base = format!("http://{api}");
    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (docs, anns) = labelled_docs("m", &sentences(5, "metrics"));
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
    let d: serde_json::Value = client
        .post(format!("{base}/api/v1/datasets"))
        .json(&json!({"name": "m", "selection": {"sources": ["m"]},
                      "label_schema": {"type": "binary", "labels": ["spam"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = d["id"].as_str().unwrap();
    let _ = client
        .get(format!("{base}/api/v1/datasets/{id}"))
        .send()
        .await
        .unwrap();

    // Poll both /metrics until the sampler has seen the waiting job and the live worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (serve_text, worker_text) = loop {
        let a = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // The worker process may not be listening yet: nothing seen, poll again.
        let w = match client
            .get(format!("http://{worker_metrics}/metrics"))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let depth = |t: &str| sample(t, "trainyard_queue_depth", r#"queue="dataset_build""#);
        let live = |t: &str| sample(t, "trainyard_workers_live", r#"queue="train""#);
        let seen = [depth(&a), depth(&w)].iter().flatten().any(|&v| v == 1.0)
            && [live(&a), live(&w)].iter().flatten().any(|&v| v == 1.0);
        if seen || Instant::now() > deadline {
            break (a, w);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let reporters: Vec<&str> = [("serve", &serve_text), ("worker", &worker_text)]
        .iter()
        .filter(|(_, t)| t.contains("trainyard_queue_depth{"))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        reporters.len(),
        1,
        "exactly one process reports queue gauges: {reporters:?}"
    );
    let queues = if reporters[0] == "serve" {
        &serve_text
    } else {
        &worker_text
    };
    assert_eq!(
        sample(queues, "trainyard_queue_depth", r#"queue="dataset_build""#),
        Some(1.0)
    );
    assert_eq!(
        sample(queues, "trainyard_queue_depth", r#"queue="embed""#),
        Some(0.0)
    );
    assert_eq!(
        sample(queues, "trainyard_workers_live", r#"queue="train""#),
        Some(1.0)
    );
    assert_eq!(
        sample(queues, "trainyard_workers_live", r#"queue="dataset_build""#),
        Some(0.0)
    );
    assert!(sample(
        queues,
        "trainyard_queue_oldest_waiting_age_seconds",
        r#"queue="dataset_build""#
    )
    .is_some());
    // Requests by route template and status; the enqueue counted by kind.
    assert_eq!(
        sample(
            &serve_text,
            "http_server_request_duration_seconds_count",
            r#"http_route="/api/v1/datasets/{id}""#
        ),
        Some(1.0),
        "{serve_text}"
    );
    assert!(serve_text.contains(r#"http_request_method="POST",http_response_status_code="202",http_route="/api/v1/datasets""#)
        || serve_text.contains(r#"http_route="/api/v1/datasets""#));
    assert_eq!(
        sample(
            &serve_text,
            "trainyard_jobs_enqueued_total",
            r#"job_kind="dataset_build""#
        ),
        Some(1.0)
    );
    assert!(
        worker_text.contains("target_info{"),
        "the worker serves its own metrics"
    );
    eprintln!(
        "--- /metrics sample (serve) ---\n{}",
        serve_text
            .lines()
            .filter(|l| l.starts_with("trainyard_")
                || l.starts_with("http_server_request_duration_seconds_count"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    db.drop_db().await;
}
