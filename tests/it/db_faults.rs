//! Database faults: a real restart of a real (private) PostgreSQL in the middle of a dataset
//! build with `trainyard serve` and two `trainyard worker` processes running, and connection
//! pool exhaustion. Requests that need the database answer 503 fast while it is away; nothing
//! is restarted by hand; the build finishes with every job done once and every embedding
//! stored once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::private_pg::PrivatePg;
use crate::support::processes::{spawn_serve, spawn_worker, Answer, Remote};
use crate::support::*;
use serde_json::json;

/// "Fast": an answer during the outage must come within this (the processes run with the
/// shipped `database.acquire_timeout_secs`, 2 s).
const FAST: Duration = Duration::from_secs(3);
/// The health endpoints' database check waits at most 0.5 s (not the 2 s acquire timeout);
/// this leaves room for a loaded machine.
const PROBE_BOUND: Duration = Duration::from_millis(1500);

fn assert_database_unavailable(what: &str, a: &Answer) {
    assert_eq!(a.status, 503, "{what}: {a:?}");
    assert_eq!(
        a.body["error"]["code"], "database_unavailable",
        "{what}: {a:?}"
    );
    assert_eq!(a.body["error"]["type"], "server_error", "{what}: {a:?}");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("database") && m.contains("retry")),
        "{what}: {a:?}"
    );
    assert!(a.elapsed < FAST, "{what} took {:?}", a.elapsed);
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_a_postgres_restart() {
    quiet_init();
    let pg = PrivatePg::start();
    let (url, pool) = pg.create_database("trainyard").await;
    let logs = pg.dir().to_path_buf();
    let (mut serve, api) = spawn_serve(&url, "api", &[], &logs).await;
    let mut workers = vec![
        spawn_worker(&url, "dataset_build,embed", "w1", &[], &logs),
        spawn_worker(&url, "dataset_build,embed", "w2", &[], &logs),
    ];
    let pids: Vec<u32> = std::iter::once(serve.pid())
        .chain(workers.iter().map(|w| w.pid()))
        .collect();

    let texts = sentences(600, "restart");
    let (docs, anns) = labelled_docs("r", &texts);
    assert_eq!(api.post("/api/v1/documents", docs).await.status, 200);
    assert_eq!(api.post("/api/v1/annotations", anns).await.status, 200);
    let d = api
        .post(
            "/api/v1/datasets",
            json!({"name": "r", "selection": {"sources": ["r"]},
                                          "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    assert_eq!(d.status, 200, "{d:?}");
    let id = d.body["id"].as_str().unwrap().to_string();

    // Mid-build: a few embed batches stored, most still to do.
    let started = Instant::now();
    let done_before = loop {
        let done = count(
            &pool,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'embed' AND status = 'Done'",
        )
        .await;
        if done >= 2 {
            break done;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no embed job finished:\n{}",
            workers[0].log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    pool.close().await;

    // The restart: stop (every session is terminated), a few seconds away, start.
    let outage = Instant::now();
    pg.stop_server();
    let stopped_in = outage.elapsed();

    // During the outage: what needs the database answers 503 fast, with a clear message.
    let mut seen: Vec<(&str, Answer)> = Vec::new();
    let a = api.get(&format!("/api/v1/datasets/{id}")).await;
    assert_database_unavailable("GET dataset", &a);
    seen.push(("GET /api/v1/datasets/{id}", a));
    let a = api.get("/api/v1/jobs").await;
    assert_database_unavailable("GET jobs", &a);
    seen.push(("GET /api/v1/jobs", a));
    let (more, _) = labelled_docs("late", &sentences(3, "late"));
    let a = api.post("/api/v1/documents", more.clone()).await;
    assert_database_unavailable("POST documents", &a);
    seen.push(("POST /api/v1/documents", a));
    let a = api
        .post(
            "/api/v1/datasets",
            json!({"name": "x", "selection": {"sources": ["r"]},
                                          "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    assert_database_unavailable("POST datasets", &a);
    seen.push(("POST /api/v1/datasets", a));
    // Several at once: each still bounded (they wait in parallel, not in a queue).
    let burst = futures::future::join_all((0..8).map(|_| api.get("/api/v1/datasets"))).await;
    for a in &burst {
        assert_database_unavailable("GET datasets (8 at once)", a);
    }
    let slowest = burst.iter().map(|a| a.elapsed).max().unwrap();
    // Liveness (the second seed's shape) stays 200, since the process still serves from memory,
    // but says the database is unavailable, after a short bounded check. It goes first: no
    // earlier health check's cached result answers for it.
    let live = api.get("/health").await;
    assert_eq!(live.status, 200, "{live:?}");
    assert_eq!(live.body["status"], "degraded", "{live:?}");
    assert_eq!(live.body["database"], "unavailable", "{live:?}");
    assert!(
        live.elapsed < PROBE_BOUND,
        "/health took {:?}",
        live.elapsed
    );
    seen.push(("GET /health", live));
    // Readiness says so too, without waiting on every query.
    let h = api.get("/api/v1/health").await;
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.body["database"], "unavailable", "{h:?}");
    assert_eq!(h.body["status"], "degraded", "{h:?}");
    assert!(h.body["database_latency_ms"].is_null(), "{h:?}");
    assert!(
        h.elapsed < PROBE_BOUND,
        "/api/v1/health took {:?}",
        h.elapsed
    );
    seen.push(("GET /api/v1/health", h));
    // A burst of probes shares one bounded check.
    let probes = futures::future::join_all((0..8).map(|_| api.get("/health"))).await;
    for p in &probes {
        assert_eq!(p.body["database"], "unavailable", "{p:?}");
        assert!(
            p.elapsed < PROBE_BOUND,
            "/health (8 at once) took {:?}",
            p.elapsed
        );
    }
    // Embeddings from the local model need no database either.
    let e = api
        .post(
            "/v1/embeddings",
            json!({"input": "still here", "model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(e.status, 200, "{e:?}");
    assert_eq!(
        e.body["data"][0]["embedding"].as_array().map(|v| v.len()),
        Some(384)
    );
    seen.push(("POST /v1/embeddings", e));
    let away = Duration::from_secs(4);
    if outage.elapsed() < away {
        tokio::time::sleep(away - outage.elapsed()).await;
    }
    let restart_at = Instant::now();
    pg.start_server();
    let outage_secs = outage.elapsed().as_secs_f64();
    let start_secs = restart_at.elapsed().as_secs_f64();

    // After the restart, with no trainyard process restarted: new requests succeed at once.
    let first = api.get(&format!("/api/v1/datasets/{id}")).await;
    assert_eq!(first.status, 200, "{first:?}");
    let a = api.post("/api/v1/documents", more).await;
    assert_eq!(a.status, 200, "{a:?}");
    // Liveness says ok again once its next check (at most a second later) finds the database.
    let recovered = Instant::now();
    let live = loop {
        let live = api.get("/health").await;
        assert_eq!(live.status, 200, "{live:?}");
        if live.body["database"] == "ok" {
            break live;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(10),
            "/health still says {} after the restart",
            live.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(live.body["status"], "ok", "{live:?}");
    let health_ok_after = recovered.elapsed().as_secs_f64();

    // The build finishes.
    let ready_wait = Instant::now();
    let mut resumed_after = None;
    let d = loop {
        let a = api.get(&format!("/api/v1/datasets/{id}")).await;
        assert_eq!(a.status, 200, "{a:?}");
        let batches_done = a.body["progress"]["batches_done"].as_i64().unwrap_or(0);
        if resumed_after.is_none() && batches_done > done_before {
            resumed_after = Some(restart_at.elapsed().as_secs_f64());
        }
        if matches!(
            a.body["status"].as_str(),
            Some("ready" | "failed" | "cancelled")
        ) {
            break a.body;
        }
        assert!(
            ready_wait.elapsed() < Duration::from_secs(300),
            "build stuck after the restart: {}\n{}\n{}",
            a.body,
            workers[0].log_tail(30),
            workers[1].log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let ready_after = ready_wait.elapsed().as_secs_f64();
    // The workers resume soon after the restart (a restart pause that froze every worker of a
    // process once kept them failing for 1-2 minutes after Postgres was back).
    let resumed_after = resumed_after.unwrap_or(ready_after);
    assert!(
        resumed_after < 45.0,
        "the first batch after the restart took {resumed_after:.1} s"
    );
    assert_eq!(d["status"], "ready", "{d}");
    let total = d["progress"]["batches_total"].as_i64().unwrap();
    assert_eq!(total, 38, "600 texts in batches of 16");
    assert_eq!(d["progress"]["batches_done"], total, "{d}");

    // Nothing lost, nothing done twice.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (model, checksum)) FROM embeddings")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (600, 600), "each embedding stored once");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM embed_batches WHERE NOT done").await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT sum(new_count)::bigint FROM embed_batches").await,
        600,
        "no batch counted twice"
    );
    // A job whose batch was stored but whose acknowledgement was lost with the connection is
    // still `Running` under its old worker's name; it is handed out again once that worker has
    // missed its heartbeats (3 s here) and then finds its batch done. Wait for that.
    let settle = Instant::now();
    let statuses = loop {
        let statuses: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT job_type, status, count(*) FROM apalis.jobs GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if statuses.iter().all(|s| s.1 == "Done") || settle.elapsed() > Duration::from_secs(60) {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settled_after = settle.elapsed().as_secs_f64();
    assert_eq!(
        statuses,
        vec![
            ("dataset_build".to_string(), "Done".to_string(), 1),
            ("embed".to_string(), "Done".to_string(), 38)
        ],
        "every job done exactly once, none lost"
    );
    let rerun = count(&pool, "SELECT count(*) FROM apalis.jobs WHERE attempts > 1").await;

    // The same processes ran throughout.
    assert!(serve.is_running(), "serve exited:\n{}", serve.log_tail(40));
    for w in &mut workers {
        assert!(w.is_running(), "a worker exited:\n{}", w.log_tail(40));
    }
    let after: Vec<u32> = std::iter::once(serve.pid())
        .chain(workers.iter().map(|w| w.pid()))
        .collect();
    assert_eq!(pids, after);
    // How the workers got through it: apalis workers whose backend failed were restarted
    // inside the same process by the monitor.
    let restarts: usize = workers
        .iter()
        .map(|w| {
            std::fs::read_to_string(&w.log)
                .unwrap_or_default()
                .matches("restarting")
                .count()
        })
        .sum();

    eprintln!(
        "postgres restart mid-build: {done_before}/38 embed jobs done at the stop; stop took \
         {:.2} s, outage {outage_secs:.1} s (start took {start_secs:.2} s); first request \
         after the start answered {} in {:.0} ms; first batch stored {:.1} s and the dataset \
         ready {ready_after:.1} s after the restart, every job done {settled_after:.1} s \
         later; {restarts} in-process apalis worker \
         restart(s); {rerun} job(s) ran more than once (idempotent re-runs); 8 concurrent GETs \
         during the outage: slowest {:.0} ms; /health said ok again {health_ok_after:.1} s after \
         the first request that succeeded",
        stopped_in.as_secs_f64(),
        first.status,
        first.elapsed.as_secs_f64() * 1000.0,
        resumed_after,
        slowest.as_secs_f64() * 1000.0,
    );
    for (what, a) in &seen {
        eprintln!(
            "  during the outage: {what:<28} {} in {:>5.0} ms {}",
            a.status,
            a.elapsed.as_secs_f64() * 1000.0,
            if a.status == 503 {
                a.body["error"]["message"].to_string()
            } else {
                String::new()
            }
        );
    }
    pool.close().await;
    // The processes' logs die with the private server's folder unless asked for.
    if let Ok(keep) = std::env::var("TRAINYARD_TEST_KEEP_LOGS") {
        std::fs::create_dir_all(&keep).unwrap();
        for p in std::iter::once(&serve).chain(&workers) {
            let _ = std::fs::copy(
                &p.log,
                std::path::Path::new(&keep).join(p.log.file_name().unwrap()),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_exhaustion_answers_503_in_bounded_time() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.database.max_connections = 3;
    settings.database.acquire_timeout_secs = 1.0;
    let timeout = Duration::from_secs_f64(settings.database.acquire_timeout_secs);
    let pool = trainyard::db::connect(&settings.database).await.unwrap();
    let app = spawn_api(pool.clone(), Arc::new(settings)).await;
    let api = Remote::new(app.base.clone());
    assert_eq!(api.get("/api/v1/datasets").await.status, 200);

    // Slow queries through the API's own pool take every connection it may open.
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let p = pool.clone();
            tokio::spawn(async move { sqlx::query("SELECT pg_sleep(6)").execute(&p).await })
        })
        .collect();
    let start = Instant::now();
    while !(pool.size() == 3 && pool.num_idle() == 0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pool never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_since = Instant::now();

    let alone = api.get("/api/v1/datasets").await;
    let burst = futures::future::join_all((0..6).map(|i| {
        api.get(if i % 2 == 0 {
            "/api/v1/datasets"
        } else {
            "/api/v1/jobs"
        })
    }))
    .await;
    assert!(
        held_since.elapsed() < Duration::from_secs(5),
        "the pool was still full for every request"
    );
    for a in std::iter::once(&alone).chain(&burst) {
        assert_eq!(a.status, 503, "{a:?}");
        assert_eq!(a.body["error"]["code"], "database_unavailable", "{a:?}");
        // It waited for a connection (the configured bound), and not much longer.
        assert!(
            a.elapsed >= timeout.mul_f64(0.9) && a.elapsed <= timeout + Duration::from_secs(1),
            "answered after {:?} with acquire timeout {timeout:?}",
            a.elapsed
        );
    }
    let slowest = burst.iter().map(|a| a.elapsed).max().unwrap();

    // Once the slow queries end, the same pool serves again.
    for h in holders {
        let _ = h.await;
    }
    let after = api.get("/api/v1/datasets").await;
    assert_eq!(after.status, 200, "{after:?}");
    eprintln!(
        "pool exhaustion (3 connections, acquire timeout {timeout:?}): alone 503 in {:.0} ms, \
         6 at once: slowest 503 in {:.0} ms; after release 200 in {:.0} ms",
        alone.elapsed.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0,
        after.elapsed.as_secs_f64() * 1000.0
    );
    drop(app);
    let _ = tokio::time::timeout(Duration::from_secs(5), pool.close()).await;
    db.drop_db().await;
}
