//! Hot reload across processes: two `trainyard serve` processes behind one (private) Postgres,
//! under steady `/predict` load, both swap to each promoted version; Postgres is restarted
//! under the same load (the models keep answering from memory) and both processes pick up the
//! next promotions over their reconnected LISTEN connections; a corrupt version is reported
//! by both while they keep serving the one they had. Not one request may fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::private_pg::PrivatePg;
use crate::support::processes::{spawn_serve, spawn_worker, Answer, Remote};
use crate::support::*;
use serde_json::{json, Value};

/// One `/predict` answer of the load: which process, when (since the load started), status.
#[derive(Debug, Clone)]
struct Hit {
    process: usize,
    at: Duration,
    status: u16,
    elapsed: Duration,
    body: Value,
}

/// Polls each process's `/api/v1/models` until it says it serves `version` from memory;
/// returns how long each took.
async fn wait_loaded(apis: &[&Remote], version: i64, timeout: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut took = vec![None; apis.len()];
    while took.iter().any(Option::is_none) {
        for (i, api) in apis.iter().enumerate() {
            if took[i].is_some() {
                continue;
            }
            let a = api.get("/api/v1/models").await;
            let loaded = a
                .body
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == "moderation"))
                .map(|m| m["loaded_version"].clone());
            if loaded == Some(json!(version)) {
                took[i] = Some(start.elapsed());
            }
        }
        assert!(
            start.elapsed() < timeout,
            "version {version} not loaded by every process within {timeout:?}: {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    took.into_iter().map(Option::unwrap).collect()
}

async fn promote(api: &Remote, version: i64) -> Answer {
    api.post(
        &format!("/api/v1/models/moderation/versions/{version}/promote"),
        json!({}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_swap_and_survive_a_postgres_restart() {
    quiet_init();
    let pg = PrivatePg::start();
    let (url, pool) = pg.create_database("trainyard").await;
    let logs = pg.dir().to_path_buf();
    let worker = spawn_worker(&url, "dataset_build,embed,train", "w", &[], &logs);
    // The registry poll is pushed far out: within this test only LISTEN/NOTIFY (and the
    // reload after a reconnection) can bring a promotion to a process.
    let env = [("TRAINYARD_INFERENCE__RELOAD_POLL_SECS", "600")];
    let (mut serve_a, a) = spawn_serve(&url, "a", &env, &logs).await;
    let (mut serve_b, b) = spawn_serve(&url, "b", &env, &logs).await;
    let pids = (serve_a.pid(), serve_b.pid());

    // A head model, trained for real on a small dataset, is version 1; versions 2 and 3 are
    // copies of its row, sharing its weights artifact (each promotion still loads a fresh model
    // in every process).
    let texts = sentences(160, "swap");
    let (docs, anns) = labelled_docs("s", &texts);
    assert_eq!(a.post("/api/v1/documents", docs).await.status, 200);
    assert_eq!(a.post("/api/v1/annotations", anns).await.status, 200);
    let d = a
        .post(
            "/api/v1/datasets",
            json!({"name": "s", "selection": {"sources": ["s"]},
                                          "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    assert_eq!(d.status, 200, "{d:?}");
    let dataset = d.body["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let d = a.get(&format!("/api/v1/datasets/{dataset}")).await;
        if d.body["status"] == "ready" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240) && d.body["status"] != "failed",
            "{d:?}\n{}",
            worker.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = a
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": "moderation",
              "mode": "head", "hyperparameters": {"epochs": 4, "seed": 3}}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    let run = r.body["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let r = a.get(&format!("/api/v1/training-runs/{run}")).await;
        match r.body["status"].as_str() {
            Some("succeeded") => break,
            Some("failed" | "cancelled") => panic!("{r:?}\n{}", worker.log_tail(30)),
            _ => {}
        }
        assert!(start.elapsed() < Duration::from_secs(240), "{r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for v in [2, 3] {
        sqlx::query(
            "INSERT INTO model_versions (name, version, spec, embedding_model, thresholds, metrics,
                                         weights, weights_artifact, weights_size)
             SELECT name, $1, spec, embedding_model, thresholds, metrics,
                    weights, weights_artifact, weights_size FROM model_versions
             WHERE name = 'moderation' AND version = 1",
        )
        .bind(v)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    assert_eq!(promote(&a, 1).await.status, 200);
    wait_loaded(&[&a, &b], 1, Duration::from_secs(120)).await;

    // Steady load: 2 clients on each process, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let load_start = Instant::now();
    let mut clients = Vec::new();
    for (process, base) in [a.base.clone(), b.base.clone()].into_iter().enumerate() {
        for client in 0..2 {
            let (stop, hits, remote) = (stop.clone(), hits.clone(), Remote::new(base.clone()));
            clients.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let text = format!("client {client} request {i}: win a free prize now");
                    let r = remote.post("/predict", json!({"text": text})).await;
                    hits.lock().unwrap().push(Hit {
                        process,
                        at: load_start.elapsed(),
                        status: r.status,
                        elapsed: r.elapsed,
                        body: r.body,
                    });
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Swaps under load, each announced through one process and picked up by both.
    let mut report = Vec::new();
    for (via, version) in [(&a, 2), (&b, 1)] {
        let t = load_start.elapsed();
        let p = promote(via, version).await;
        assert_eq!(p.status, 200, "{p:?}");
        let took = wait_loaded(&[&a, &b], version, Duration::from_secs(60)).await;
        report.push(format!(
            "v{version} at {t:.1?}: a {:?}, b {:?}",
            took[0], took[1]
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Postgres restarts under the same load.
    let outage_from = load_start.elapsed();
    pg.stop_server();
    let during = [
        (
            "POST /api/v1/models/moderation/predict",
            a.post(
                "/api/v1/models/moderation/predict",
                json!({"text": "outage"}),
            )
            .await,
        ),
        (
            "POST /batch",
            b.post("/batch", json!({"texts": ["outage one", "outage two"]}))
                .await,
        ),
        ("GET /health", a.get("/health").await),
        ("GET /api/v1/models", a.get("/api/v1/models").await),
        ("POST .../versions/3/promote", promote(&b, 3).await),
    ];
    assert_eq!(during[0].1.status, 200, "{:?}", during[0]);
    assert_eq!(during[1].1.status, 200, "{:?}", during[1]);
    assert_eq!(during[1].1.body["count"], 2, "{:?}", during[1]);
    assert_eq!(during[2].1.body["model"], "moderation", "{:?}", during[2]);
    for (what, r) in &during[3..] {
        assert_eq!(r.status, 503, "{what}: {r:?}");
        assert_eq!(
            r.body["error"]["code"], "database_unavailable",
            "{what}: {r:?}"
        );
        assert!(r.elapsed < Duration::from_secs(3), "{what}: {r:?}");
    }
    let away = Duration::from_secs(5);
    let elapsed = load_start.elapsed() - outage_from;
    if elapsed < away {
        tokio::time::sleep(away - elapsed).await;
    }
    pg.start_server();
    let outage_to = load_start.elapsed();

    // The next promotions reach both processes (no process was restarted).
    for (via, version) in [(&a, 3), (&b, 2)] {
        let t = load_start.elapsed();
        let p = promote(via, version).await;
        assert_eq!(p.status, 200, "{p:?}");
        let took = wait_loaded(&[&a, &b], version, Duration::from_secs(30)).await;
        report.push(format!(
            "v{version} at {t:.1?} (after the restart): a {:?}, b {:?}",
            took[0], took[1]
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A version that cannot load (corrupt weights) is reported by both processes, each of
    // which keeps serving the version it had.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO model_versions (name, version, spec, embedding_model, thresholds, metrics, weights)
         SELECT name, 4, spec, embedding_model, thresholds, metrics, '\\x00'::bytea FROM model_versions
         WHERE name = 'moderation' AND version = 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(promote(&a, 4).await.status, 200);
    let start = Instant::now();
    for api in [&a, &b] {
        loop {
            let m = api.get("/api/v1/models").await;
            let model = m.body.as_array().and_then(|m| m.first()).cloned();
            if let Some(model) = model.filter(|m| m["load_error"].is_string()) {
                assert_eq!(model["loaded_version"], 2, "{model}");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{m:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let hits = hits.lock().unwrap().clone();
    let failed: Vec<&Hit> = hits.iter().filter(|h| h.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}\n{}\n{}",
        failed.len(),
        hits.len(),
        failed.first(),
        serve_a.log_tail(20),
        serve_b.log_tail(20)
    );
    assert!(hits
        .iter()
        .all(|h| h.body["predictions"]["spam"].is_number()));
    let in_outage: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.at >= outage_from && h.at <= outage_to)
        .collect();
    for process in 0..2 {
        assert!(
            in_outage.iter().filter(|h| h.process == process).count() >= 5,
            "process {process} answered during the outage"
        );
    }
    let mut latencies: Vec<Duration> = hits.iter().map(|h| h.elapsed).collect();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    assert!(serve_a.is_running() && serve_b.is_running());
    assert_eq!(pids, (serve_a.pid(), serve_b.pid()));
    eprintln!(
        "hot reload across 2 serve processes: {} /predict requests over {:.1?}, 0 failed, \
         p99 {p99:.0?}; {} answered during the {:.1?} Postgres outage",
        hits.len(),
        load_start.elapsed(),
        in_outage.len(),
        outage_to - outage_from
    );
    for line in &report {
        eprintln!("  swap {line}");
    }
    for (what, r) in &during {
        eprintln!(
            "  during the outage: {what:<40} {} in {:.0} ms",
            r.status,
            r.elapsed.as_secs_f64() * 1000.0
        );
    }
    drop(worker);
}
