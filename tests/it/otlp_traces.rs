//! One trace across processes: an OTLP/gRPC receiver inside the test collects the spans that a
//! real `trainyard serve` and a real `trainyard worker` export while a dataset is built, and the
//! test checks the tree: API request → `dataset_build` job → every `embed` job → its
//! `embed_batch` span, with parent links crossing the two processes. A second test puts the
//! `rotel` collector (from PyPI) between trainyard (OTLP over HTTP) and the receiver.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;

#[derive(Debug, Clone)]
struct SpanRecord {
    name: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    start_ns: u64,
    end_ns: u64,
    attrs: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(SpanRecord {
                        name: s.name.clone(),
                        service: service.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_id: hex::encode(&s.parent_span_id),
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port (gzip accepted); returns it and the port.
async fn start_receiver() -> (Receiver, u16) {
    let receiver = Receiver::default();
    let port = free_port();
    let service = TraceServiceServer::new(receiver.clone())
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr)
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    (receiver, port)
}

/// A real trainyard process (`serve` or `worker`) exporting traces as `otel` says.
fn spawn_traced(
    db_url: &str,
    args: &[&str],
    service: &str,
    otel: &[(&str, String)],
    json_log: Option<&std::path::Path>,
) -> KillOnDrop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainyard"));
    cmd.args(args)
        .env("DATABASE_URL", db_url)
        .env("OTEL_SERVICE_NAME", service)
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("TRAINYARD_QUEUE__HEARTBEAT_SECS", "1")
        .env("TRAINYARD_QUEUE__POLL_INTERVAL_MS", "200")
        .env("TRAINYARD_DATASETS__EMBED_BATCH_SIZE", "16")
        .env("TRAINYARD_LOCAL_MODEL__THREADS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(path) = json_log {
        cmd.args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(path).unwrap());
    }
    for (k, v) in otel {
        cmd.env(k, v);
    }
    KillOnDrop(cmd.spawn().expect("spawn trainyard"))
}

/// Builds a 40-text dataset through a traced API + worker and returns the spans of its trace.
async fn build_and_collect(
    receiver: &Receiver,
    otel: Vec<(&'static str, String)>,
) -> (Vec<SpanRecord>, i64) {
    let db = fresh_db().await;
    let log_path = std::env::temp_dir().join(format!("ty-worker-{}.jsonl", db.name));
    let api_port = free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let _api = spawn_traced(
        &db.url,
        &["serve", "--listen", &listen],
        "trainyard-api",
        &otel,
        None,
    );
    let _worker = spawn_traced(
        &db.url,
        &[
            "worker",
            "--queues",
            "dataset_build,embed",
            "--concurrency",
            "1",
        ],
        "trainyard-worker",
        &otel,
        Some(&log_path),
    );
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "API never came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let texts = sentences(40, "otlp");
    let (docs, anns) = labelled_docs("o", &texts);
    for (path, body) in [("/api/v1/documents", docs), ("/api/v1/annotations", anns)] {
        let r = client
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let d: serde_json::Value = client
        .post(format!("{base}/api/v1/datasets"))
        .json(&json!({"name": "o", "selection": {"sources": ["o"]},
                      "label_schema": {"type": "binary", "labels": ["spam"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = d["id"].as_str().expect("dataset id").to_string();
    let ready = loop {
        let d: serde_json::Value = client
            .get(format!("{base}/api/v1/datasets/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if d["status"] == "ready" {
            break d;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not ready: {d}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let batches = ready["progress"]["batches_total"].as_i64().unwrap();
    // Wait for the whole tree to arrive (the batch exporters flush every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let embed_batches = spans.iter().filter(|s| s.name == "embed_batch").count() as i64;
        let http = spans.iter().any(|s| s.name == "POST /api/v1/datasets");
        if (http && embed_batches >= batches) || Instant::now() > deadline {
            db.drop_db().await;
            check_json_log(&log_path, &spans);
            return (spans, batches);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The worker's JSON log: every line inside a job carries the job's id and kind, and the
/// trace and span ids of the exported spans.
fn check_json_log(path: &std::path::Path, spans: &[SpanRecord]) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let in_jobs: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("dataset_build started"))
        })
        .collect();
    assert!(!in_jobs.is_empty(), "the build's start was logged: {text}");
    for l in in_jobs {
        assert_eq!(l["fields"]["job.kind"], "dataset_build", "{l}");
        assert!(
            l["fields"]["job.id"]
                .as_str()
                .is_some_and(|id| id.len() == 26),
            "{l}"
        );
        let trace = l["trace_id"].as_str().expect("trace_id in the JSON line");
        assert!(
            spans.iter().any(|s| s.trace_id == trace),
            "the log's trace id is an exported trace"
        );
        assert_eq!(l["span_id"].as_str().map(str::len), Some(16), "{l}");
    }
    let _ = std::fs::remove_file(path);
}

/// Checks the tree and prints it with timings.
fn check_tree(spans: &[SpanRecord], batches: i64) {
    let mut names: Vec<String> = spans
        .iter()
        .map(|s| format!("{} [{}]", s.name, s.service))
        .collect();
    names.sort();
    names.dedup();
    eprintln!("{} spans received; names: {names:?}", spans.len());
    let http = spans
        .iter()
        .find(|s| s.name == "POST /api/v1/datasets")
        .expect("the API request's span arrived");
    assert_eq!(http.service, "trainyard-api");
    assert_eq!(
        http.attrs.get("http.route").map(String::as_str),
        Some("/api/v1/datasets")
    );
    assert!(http
        .attrs
        .get("http.response.status_code")
        .is_some_and(|c| c.starts_with('2')));
    // Every request span is named by its route template, never by a raw path with ids.
    let polls: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| {
            s.attrs.get("http.request.method").map(String::as_str) == Some("GET")
                && s.attrs
                    .get("url.path")
                    .is_some_and(|p| p.starts_with("/api/v1/datasets/"))
        })
        .collect();
    assert!(!polls.is_empty());
    for s in polls {
        assert_eq!(s.name, "GET /api/v1/datasets/{id}", "{:?}", s.attrs);
        assert_eq!(
            s.attrs.get("http.route").map(String::as_str),
            Some("/api/v1/datasets/{id}")
        );
    }
    let trace: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.trace_id == http.trace_id)
        .collect();
    let build = trace
        .iter()
        .find(|s| s.name == "dataset_build")
        .expect("the dataset_build job span is in the request's trace");
    assert_eq!(
        build.service, "trainyard-worker",
        "ran in the other process"
    );
    assert_eq!(
        build.parent_id, http.span_id,
        "dataset_build is a child of the request"
    );
    let embeds: Vec<&&SpanRecord> = trace.iter().filter(|s| s.name == "embed").collect();
    assert_eq!(
        embeds.len() as i64,
        batches,
        "one embed job span per batch, all in this trace"
    );
    for e in &embeds {
        assert_eq!(
            e.parent_id, build.span_id,
            "embed jobs are children of the build"
        );
        assert_eq!(e.attrs.get("job.kind").map(String::as_str), Some("embed"));
        let inner: Vec<&&SpanRecord> = trace
            .iter()
            .filter(|s| s.name == "embed_batch" && s.parent_id == e.span_id)
            .collect();
        assert_eq!(inner.len(), 1, "each embed job has its embed_batch span");
        assert_eq!(
            inner[0].attrs.get("embedding.model").map(String::as_str),
            Some("all-MiniLM-L6-v2")
        );
        assert!(inner[0]
            .attrs
            .get("tokens")
            .is_some_and(|t| t.parse::<u64>().unwrap_or(0) > 0));
    }
    // The tree, for people reading the test output.
    let t0 = http.start_ns;
    let ms = |ns: u64| ns.saturating_sub(t0) as f64 / 1e6;
    let mut lines = Vec::new();
    fn walk<'a>(
        s: &'a SpanRecord,
        all: &[&'a SpanRecord],
        depth: usize,
        lines: &mut Vec<String>,
        ms: &dyn Fn(u64) -> f64,
    ) {
        let extra = ["texts", "tokens", "job.id"]
            .iter()
            .filter_map(|k| s.attrs.get(*k).map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" ");
        lines.push(format!(
            "{:indent$}{} [{}] {:.1}–{:.1} ms {}",
            "",
            s.name,
            s.service,
            ms(s.start_ns),
            ms(s.end_ns),
            extra,
            indent = depth * 2
        ));
        let mut children: Vec<&&SpanRecord> =
            all.iter().filter(|c| c.parent_id == s.span_id).collect();
        children.sort_by_key(|c| c.start_ns);
        for c in children {
            walk(c, all, depth + 1, lines, ms);
        }
    }
    walk(http, &trace, 0, &mut lines, &ms);
    eprintln!("trace {}:\n{}", http.trace_id, lines.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_dataset_build_across_processes() {
    let (receiver, port) = start_receiver().await;
    let otel = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_string()),
    ];
    let (spans, batches) = build_and_collect(&receiver, otel).await;
    assert_eq!(batches, 3, "40 texts in batches of 16");
    check_tree(&spans, batches);
}

/// Where `pip install --pre rotel` put the collector (the venv's bin, or PATH).
fn rotel_binary() -> Option<std::path::PathBuf> {
    // The wheel ships the collector binary inside the package: rotel/rotel-agent.
    let venv = std::env::var("TRAINYARD_VENV").unwrap_or_else(|_| ".venv".into());
    let lib = std::path::Path::new(&venv).join("lib");
    for entry in std::fs::read_dir(&lib).into_iter().flatten().flatten() {
        let candidate = entry.path().join("site-packages/rotel/rotel-agent");
        if candidate.exists() {
            return Some(candidate);
        }
    }
    Command::new("which")
        .arg("rotel")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_passes_through_the_rotel_collector_over_otlp_http() {
    let rotel =
        rotel_binary().expect("rotel installed by scripts/test.sh (pip install --pre rotel)");
    let (receiver, port) = start_receiver().await;
    let http_port = free_port();
    let grpc_port = free_port();
    let _collector = KillOnDrop(
        Command::new(rotel)
            .args([
                "start",
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{http_port}"),
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc_port}"),
                "--exporter",
                "otlp",
                "--otlp-exporter-endpoint",
                &format!("http://127.0.0.1:{port}"),
                "--otlp-exporter-protocol",
                "grpc",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rotel"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "rotel never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let otel = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{http_port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_string()),
    ];
    let (spans, batches) = build_and_collect(&receiver, otel).await;
    check_tree(&spans, batches);
}
