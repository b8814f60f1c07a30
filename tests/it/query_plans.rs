//! The queries that run per batch or per page probe indexes whatever the planner's statistics
//! say: each is EXPLAINed (custom and generic plans) against tables bulk-loaded with no
//! statistics, and against tables whose statistics were taken when they were small; a
//! sequential or bitmap scan of a table that grows with the corpus fails the test.

use crate::support::*;
use serde_json::Value;
use sqlx::PgPool;

/// Tables whose size follows the corpus.
const GROWING: &[&str] = &[
    "documents",
    "annotations",
    "embeddings",
    "dataset_records",
    "scoring_job_documents",
    "document_scores",
    "embed_batches",
    "scoring_chunks",
];

const DATASET: &str = "00000000-0000-0000-0000-00000000000d";
const SCORING_JOB: &str = "00000000-0000-0000-0000-000000000005";

/// Writes `rows` documents with two votes each, their vectors, a dataset of them and a scoring
/// job with their scores, all with plain INSERTs (no ANALYZE; autovacuum off on these tables).
async fn bulk_load(pool: &PgPool, from: i64, rows: i64) {
    let statements = [
        "INSERT INTO documents (id, source, external_id, title)
         SELECT i, 'src', 'doc-' || i, 'title ' || i FROM generate_series($1, $2) i",
        "INSERT INTO annotations (document_id, annotator, label, value, annotated_at)
         SELECT i, a, 'spam', (i + length(a)) % 2 = 0, now() FROM generate_series($1, $2) i, unnest(ARRAY['ann', 'bob']) a",
        "INSERT INTO embeddings (model, dimensions, checksum, vector)
         SELECT 'tiny', 4, md5(i::text), '\\x00000000000000000000000000000000'::bytea FROM generate_series($1, $2) i",
        "INSERT INTO dataset_records (dataset_id, position, document_id, source, external_id, checksum, text,
                                      split, labels, votes, split_position)
         SELECT '00000000-0000-0000-0000-00000000000d', i - 1, i, 'src', 'doc-' || i, md5(i::text), 'text ' || i,
                CASE WHEN i % 10 = 0 THEN 'test' ELSE 'train' END, '{\"spam\": 1}', '{}', (i - 1) / 2
         FROM generate_series($1, $2) i",
        "INSERT INTO scoring_job_documents (scoring_job_id, position, document_id, checksum)
         SELECT '00000000-0000-0000-0000-000000000005'::uuid, i - 1, i, md5(i::text) FROM generate_series($1, $2) i",
        "INSERT INTO document_scores (model_name, version, document_id, checksum, scores)
         SELECT 'm', 1, i, md5(i::text), ARRAY[0.5]::real[] FROM generate_series($1, $2) i",
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from)
            .bind(from + rows - 1)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn prepare(pool: &PgPool) {
    for table in GROWING {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO datasets (id, name, embedding_model, dimensions, request) VALUES ('{DATASET}', 'd', 'tiny', 4, '{{}}')"
    )))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO scoring_jobs (id, model_name, version, labels, thresholds, threshold_source, request)
         VALUES ('{SCORING_JOB}', 'm', 1, ARRAY['spam'], ARRAY[0.5]::real[], 'stored', '{{}}')"
    )))
    .execute(pool)
    .await
    .unwrap();
}

/// One query run per batch or per page, with parameters as the code binds them.
struct Probe {
    name: &'static str,
    sql: &'static str,
    binds: fn(
        sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    /// Tables this query may read whole (the dataset's own records, for a build-time query).
    may_scan: &'static [&'static str],
}

fn checksums() -> Vec<String> {
    (1..=1000).map(md5_hex).collect()
}

/// md5 of the decimal text of `i`, as Postgres's md5() writes it.
fn md5_hex(i: i64) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(i.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn dataset_id() -> uuid::Uuid {
    DATASET.parse().unwrap()
}

fn probes() -> Vec<Probe> {
    vec![
        Probe {
            name: "embedding::store::STORED_CHECKSUMS (per embed batch)",
            sql: trainyard::embedding::store::STORED_CHECKSUMS,
            binds: |q| q.bind("tiny").bind(4).bind(checksums()),
            may_scan: &[],
        },
        Probe {
            name: "datasets::store::RECORDS_PAGE_ALL (records page, export page)",
            sql: trainyard::datasets::store::RECORDS_PAGE_ALL,
            binds: |q| {
                q.bind(dataset_id())
                    .bind("tiny")
                    .bind(4)
                    .bind(40_000)
                    .bind(50i64)
                    .bind(true)
            },
            may_scan: &[],
        },
        Probe {
            name: "datasets::store::RECORDS_PAGE_SPLIT (records page of one split)",
            sql: trainyard::datasets::store::RECORDS_PAGE_SPLIT,
            binds: |q| {
                q.bind(dataset_id())
                    .bind("tiny")
                    .bind(4)
                    .bind(20_000)
                    .bind(50i64)
                    .bind(true)
                    .bind("train")
            },
            may_scan: &[],
        },
        Probe {
            name: "scoring::store::RESULTS_PAGE (results page, export page)",
            sql: trainyard::scoring::store::RESULTS_PAGE,
            binds: |q| {
                q.bind(SCORING_JOB.parse::<uuid::Uuid>().unwrap())
                    .bind("m")
                    .bind(1)
                    .bind(40_000)
                    .bind(20_000i64)
            },
            may_scan: &[],
        },
        Probe {
            name: "datasets::build::WRITE_EMBED_BATCHES (stored vectors of a build)",
            sql: trainyard::datasets::build::WRITE_EMBED_BATCHES,
            binds: |q| {
                q.bind(dataset_id())
                    .bind("tiny")
                    .bind(4)
                    .bind(1024i64)
                    .bind(false)
            },
            may_scan: &["dataset_records"],
        },
    ]
}

/// EXPLAINs every probe (custom and generic plan) and returns what scanned a growing table.
async fn violations(pool: &PgPool, state: &str) -> Vec<String> {
    let mut found = Vec::new();
    for generic in [false, true] {
        let mut conn = pool.acquire().await.unwrap();
        let mode = if generic {
            "force_generic_plan"
        } else {
            "auto"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut *conn)
            .await
            .unwrap();
        for probe in probes() {
            let sql = format!("EXPLAIN (FORMAT JSON) {}", probe.sql);
            let query = (probe.binds)(sqlx::query(sqlx::AssertSqlSafe(sql)));
            let plan: Value = sqlx::Row::get(
                &query
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", probe.name)),
                0,
            );
            for (node, relation) in plans::scans(&plan[0]["Plan"]) {
                let whole = matches!(node.as_str(), "Seq Scan" | "Bitmap Heap Scan");
                if whole
                    && GROWING.contains(&relation.as_str())
                    && !probe.may_scan.contains(&relation.as_str())
                {
                    found.push(format!(
                        "{} ({state}, {mode}): {node} on {relation}\n{}",
                        probe.name,
                        serde_json::to_string_pretty(&plan).unwrap()
                    ));
                }
            }
        }
        sqlx::query("RESET plan_cache_mode")
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_page_queries_probe_indexes_whatever_the_statistics() {
    // 1. Bulk-loaded, never analyzed.
    let db = fresh_db().await;
    prepare(&db.pool).await;
    bulk_load(&db.pool, 1, 60_000).await;
    let mut problems = violations(&db.pool, "no statistics").await;
    db.drop_db().await;

    // 2. Analyzed while small (20 rows), then bulk-loaded: the statistics say 20 rows.
    let db = fresh_db().await;
    prepare(&db.pool).await;
    bulk_load(&db.pool, 1, 20).await;
    for table in GROWING {
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    bulk_load(&db.pool, 21, 60_000).await;
    problems.extend(violations(&db.pool, "statistics of 20 rows").await);

    // 3. Analyzed at full size.
    for table in GROWING {
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    problems.extend(violations(&db.pool, "fresh statistics").await);
    db.drop_db().await;
    assert!(
        problems.is_empty(),
        "{} plans scan a table that grows with the corpus:\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// The same probe written as `checksum = ANY($3)` (the build's lookup before issue 18) is caught
/// by the check above: the test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_catches_the_old_any_lookup() {
    let db = fresh_db().await;
    prepare(&db.pool).await;
    bulk_load(&db.pool, 1, 20).await;
    sqlx::query("ANALYZE embeddings")
        .execute(&db.pool)
        .await
        .unwrap();
    bulk_load(&db.pool, 21, 60_000).await;
    let plan: Value = sqlx::Row::get(
        &sqlx::query(
            "EXPLAIN (FORMAT JSON) SELECT checksum FROM embeddings WHERE model = $1 AND dimensions = $2 AND checksum = ANY($3)",
        )
        .bind("tiny")
        .bind(4)
        .bind(checksums())
        .fetch_one(&db.pool)
        .await
        .unwrap(),
        0,
    );
    let seen = plans::scans(&plan[0]["Plan"]);
    db.drop_db().await;
    assert!(
        seen.iter().any(
            |(n, r)| r == "embeddings" && matches!(n.as_str(), "Seq Scan" | "Bitmap Heap Scan")
        ),
        "expected the old lookup to scan embeddings: {seen:?}"
    );
}

/// Two transactions writing documents at once (an import and an annotator, say) do not queue
/// on the corpus generation: each bumps its own backend's shard. A second writer waiting on
/// the first's row lock fails the test (lock_timeout). The generation read afterwards counts
/// both, and a snapshot taken between them sees exactly the committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_do_not_queue_on_the_corpus_generation() {
    use sqlx::Connection;
    let db = fresh_db().await;
    let generation = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT sum(n)::bigint FROM corpus_generations WHERE scope = 'corpus'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = generation(db.pool.clone()).await;
    // Two connections whose backends bump different shards.
    let mut first = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let first_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut first)
        .await
        .unwrap();
    let mut second = loop {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut c)
            .await
            .unwrap();
        if pid % 16 != first_pid % 16 {
            break c;
        }
    };
    let insert = "INSERT INTO documents (source, external_id, title) VALUES ('s', $1, 't')";
    let mut tx1 = first.begin().await.unwrap();
    sqlx::query(insert)
        .bind("one")
        .execute(&mut *tx1)
        .await
        .unwrap();
    let mut tx2 = second.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *tx2)
        .await
        .unwrap();
    sqlx::query(insert)
        .bind("two")
        .execute(&mut *tx2)
        .await
        .expect("the second writer waited on the first's generation row");
    tx2.commit().await.unwrap();
    // Between the commits: the second's write is counted, the first's is not yet.
    assert_eq!(generation(db.pool.clone()).await, before + 1);
    tx1.commit().await.unwrap();
    assert_eq!(generation(db.pool.clone()).await, before + 2);
    db.drop_db().await;
}
