//! The training telemetry webhook against real HTTP servers on 127.0.0.1: a good one, one that
//! hangs, ones that answer 500, 429 then 200, or 400, and a port nobody listens on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::quiet_init;
use poem::listener::{Acceptor, Listener};
use poem::web::{Data, Path};
use poem::{handler, EndpointExt, Request, Response, Route};
use serde_json::{json, Value};
use trainyard::training::webhook::{AddressPolicy, Telemetry, WebhookConfig, WebhookStats};

/// The test servers listen on loopback, which a webhook may reach only when allowed.
fn loopback() -> AddressPolicy {
    AddressPolicy::allowing(&["127.0.0.1".to_string()])
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    fn bodies(&self, path: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

/// `/ok`: 200. `/hang`: sleeps 30 s. `/fail`: 500. `/flaky`: 429 on the first hit, then 200.
/// `/bad`: 400. Every request is recorded before it is answered.
#[handler]
async fn hook(
    req: &Request,
    Path(path): Path<String>,
    body: String,
    rec: Data<&Recorder>,
) -> Response {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let seen = Seen {
        path: path.clone(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
    };
    let hits_before = {
        let mut all = rec.seen.lock().unwrap();
        let before = all.iter().filter(|s| s.path == path).count();
        all.push(seen);
        before
    };
    let status = match path.as_str() {
        "ok" => 200,
        "hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            200
        }
        "fail" => 500,
        "flaky" if hits_before == 0 => 429,
        "flaky" => 200,
        "bad" => 400,
        _ => 404,
    };
    Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .body(r#"{"ok":true}"#)
}

/// Serves `hook` on 127.0.0.1:0; returns the base URL.
async fn webhook_server(rec: Recorder) -> String {
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().cloned().unwrap();
    let app = Route::new().at("/:path", poem::post(hook)).data(rec);
    tokio::spawn(async move { poem::Server::new_with_acceptor(acceptor).run(app).await });
    format!("http://{addr}")
}

fn config(url: String, max_attempts: u32, timeout_ms: u64) -> WebhookConfig {
    WebhookConfig {
        max_attempts,
        timeout_ms,
        ..WebhookConfig::new(url, None).with_addresses(loopback())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_steps_and_evals_in_order_with_exact_fields() {
    quiet_init();
    let rec = Recorder::default();
    let base = webhook_server(rec.clone()).await;
    let cfg = WebhookConfig::new(format!("{base}/ok"), Some("Bearer abc".into()))
        .with_addresses(loopback());
    assert_eq!(
        (cfg.queue_capacity, cfg.max_attempts, cfg.timeout_ms),
        (1024, 3, 2000)
    );
    let t = Telemetry::start(
        Some(cfg),
        "exp-42".into(),
        &tokio::runtime::Handle::current(),
    );
    let before = chrono::Utc::now();
    t.log_step(10, 0, json!({"loss": 0.9, "lr": 0.001}));
    t.log_step(20, 0, json!({"loss": 0.7, "lr": 0.001}));
    t.log_step(30, 1, json!({"loss": 0.5, "lr": 0.0005}));
    t.log_eval(30, 1, json!({"eval_loss": 0.6, "accuracy": 0.8}));
    let stats = t.finish(Duration::from_secs(5)).await;
    assert_eq!(
        stats,
        WebhookStats {
            sent: 4,
            failed: 0,
            dropped: 0
        }
    );
    let seen = rec.bodies("ok");
    assert_eq!(seen.len(), 4, "{seen:?}");
    let expected = [
        (10, 0, json!({"loss": 0.9, "lr": 0.001}), false),
        (20, 0, json!({"loss": 0.7, "lr": 0.001}), false),
        (30, 1, json!({"loss": 0.5, "lr": 0.0005}), false),
        (30, 1, json!({"eval_loss": 0.6, "accuracy": 0.8}), true),
    ];
    let mut keys_step = vec![
        "epoch",
        "experiment_id",
        "global_step",
        "metrics",
        "timestamp",
    ];
    keys_step.sort();
    for (s, (step, epoch, metrics, is_eval)) in seen.iter().zip(expected) {
        assert_eq!(s.authorization.as_deref(), Some("Bearer abc"));
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
        let body = s.body.as_object().expect("a JSON object body");
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort();
        if is_eval {
            let mut with_eval = keys_step.clone();
            with_eval.push("is_eval");
            with_eval.sort();
            assert_eq!(keys, with_eval);
            assert_eq!(body["is_eval"], json!(true));
        } else {
            assert_eq!(keys, keys_step, "no is_eval key on steps");
        }
        assert_eq!(body["experiment_id"], json!("exp-42"));
        assert_eq!(body["global_step"], json!(step));
        assert_eq!(body["epoch"], json!(epoch));
        assert_eq!(body["metrics"], metrics);
        let ts = chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap())
            .expect("RFC 3339 timestamp");
        assert_eq!(ts.offset().local_minus_utc(), 0, "UTC");
        let ts = ts.with_timezone(&chrono::Utc);
        assert!(ts >= before - chrono::Duration::milliseconds(1) && ts <= chrono::Utc::now());
    }
    // Closed by finish: later events are counted as dropped, never sent.
    t.log_step(40, 1, json!({"loss": 0.4}));
    assert_eq!(t.stats().dropped, 1);
    assert_eq!(rec.hits("ok"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_webhook_never_stalls_training() {
    quiet_init();
    let rec = Recorder::default();
    let base = webhook_server(rec.clone()).await;
    let cfg = WebhookConfig {
        queue_capacity: 16,
        ..config(format!("{base}/hang"), 3, 500)
    };
    let handle = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // The training loop: a plain OS thread with only a runtime handle.
    std::thread::spawn(move || {
        let t = Telemetry::start(Some(cfg), "exp-hang".into(), &handle);
        let started = Instant::now();
        for step in 0..5_000u64 {
            t.log_step(
                step,
                (step / 1000) as u32,
                json!({"loss": 1.0 / (step + 1) as f64}),
            );
        }
        let _ = done_tx.send((t, started.elapsed()));
    });
    let (t, logging) = done_rx.await.unwrap();
    assert!(
        logging < Duration::from_millis(200),
        "5,000 log_step calls took {logging:?}"
    );
    let mid = t.stats();
    assert!(mid.dropped > 0, "queue of 16 must overflow: {mid:?}");
    let started = Instant::now();
    let stats = t.finish(Duration::from_secs(1)).await;
    let finishing = started.elapsed();
    assert!(
        finishing < Duration::from_secs(3),
        "finish(1 s) took {finishing:?}"
    );
    assert_eq!(stats.sent, 0, "{stats:?}");
    assert_eq!(
        stats.sent + stats.failed + stats.dropped,
        5_000,
        "every event counted once: {stats:?}"
    );
    assert!(rec.hits("hang") >= 1, "the webhook was tried");
    assert_eq!(t.stats(), stats, "nothing counted after finish returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_transient_answers_and_not_client_errors() {
    quiet_init();
    let rec = Recorder::default();
    let base = webhook_server(rec.clone()).await;
    let handle = tokio::runtime::Handle::current();
    let run = |path: &str| {
        let t = Telemetry::start(
            Some(config(format!("{base}/{path}"), 3, 2000)),
            format!("exp-{path}"),
            &handle,
        );
        t.log_step(1, 0, json!({"loss": 1.0}));
        t
    };
    let (fail, flaky, bad) = (run("fail"), run("flaky"), run("bad"));
    let deadline = Duration::from_secs(5);
    let (fail, flaky, bad) = tokio::join!(
        fail.finish(deadline),
        flaky.finish(deadline),
        bad.finish(deadline)
    );

    assert_eq!(rec.hits("fail"), 3, "500 retried up to max_attempts");
    assert_eq!(
        fail,
        WebhookStats {
            sent: 0,
            failed: 1,
            dropped: 0
        }
    );

    assert_eq!(rec.hits("flaky"), 2, "429 retried once, then 200");
    assert_eq!(
        flaky,
        WebhookStats {
            sent: 1,
            failed: 0,
            dropped: 0
        }
    );

    assert_eq!(rec.hits("bad"), 1, "400 is not retried");
    assert_eq!(
        bad,
        WebhookStats {
            sent: 0,
            failed: 1,
            dropped: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_webhook_counts_failures() {
    quiet_init();
    // A port that was bound, then closed: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = Telemetry::start(
        Some(config(format!("http://127.0.0.1:{port}/hook"), 2, 500)),
        "exp-gone".into(),
        &tokio::runtime::Handle::current(),
    );
    t.log_step(1, 0, json!({"loss": 1.0}));
    t.log_eval(1, 0, json!({"accuracy": 0.5}));
    let stats = t.finish(Duration::from_secs(5)).await;
    assert_eq!(
        stats,
        WebhookStats {
            sent: 0,
            failed: 2,
            dropped: 0
        }
    );
}
