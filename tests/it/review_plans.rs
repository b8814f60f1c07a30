//! The review queue's queries that run per page or per batch probe indexes whatever the
//! planner's statistics say: EXPLAIN of each, as trainyard runs it, against tables bulk-loaded
//! with 20,000 rows and never analyzed, has no sequential or bitmap scan of a table that grows
//! with the corpus (the page's range of a stored ranking and its documents, a batch of vectors,
//! each streamed document's scores and votes).

use crate::support::*;
use serde_json::Value;
use trainyard::review::{documents_sql, store::PAGE_SQL, suspect::VECTORS_SQL, DocColumns};

/// Fails on a sequential or bitmap scan of any of `growing`.
fn assert_probes(what: &str, plan: &Value, growing: &[&str]) {
    let found = plans::scans(&plan[0]["Plan"]);
    for (node, relation) in &found {
        assert!(
            !(growing.contains(&relation.as_str())
                && (node == "Seq Scan" || node.starts_with("Bitmap"))),
            "{what}: {node} on {relation}: {plan:#}"
        );
    }
    println!("PLAN {what}: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_page_and_per_batch_queries_probe_indexes_without_statistics() {
    let db = fresh_db().await;
    let pool = &db.pool;
    for sql in [
        "INSERT INTO documents (source, external_id, body)
         SELECT 's' || (i % 2), 'e' || i, 'text number ' || i FROM generate_series(1, 20000) i",
        "INSERT INTO annotations (document_id, annotator, label, value, annotated_at)
         SELECT id, 'ann', 'spam', id % 3 = 0, now() FROM documents",
        "INSERT INTO document_scores (model_name, version, document_id, checksum, scores)
         SELECT 'm', 1, id, md5(body), ARRAY[0.5]::real[] FROM documents",
        "INSERT INTO embeddings (model, dimensions, checksum, vector)
         SELECT 'e', 4, md5(body), decode(repeat('00', 16), 'hex') FROM documents",
        "INSERT INTO review_rankings (model_name, version, strategy, source, label, fingerprint,
                                      status, total)
         VALUES ('m', 1, 'uncertain', '', '', 'x', 'ready', 20000)",
        "INSERT INTO review_ranking_items (ranking_id, position, document_id, reason, explanation)
         SELECT (SELECT id FROM review_rankings), row_number() OVER (ORDER BY id) - 1, id,
                '{}'::jsonb, '' FROM documents",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    let ranking: i64 = sqlx::query_scalar("SELECT id FROM review_rankings")
        .fetch_one(pool)
        .await
        .unwrap();
    let explain = |sql: &str| sqlx::AssertSqlSafe(format!("EXPLAIN (FORMAT JSON) {sql}"));

    for offset in [0i64, 10_000, 19_990] {
        let plan: Value = sqlx::query_scalar(explain(PAGE_SQL))
            .bind(ranking)
            .bind(offset)
            .bind(50i64)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_probes(
            &format!("page at {offset}"),
            &plan,
            &["review_ranking_items", "documents"],
        );
    }

    let checksums: Vec<String> =
        sqlx::query_scalar("SELECT md5(body) FROM documents ORDER BY id DESC LIMIT 2000")
            .fetch_all(pool)
            .await
            .unwrap();
    let plan: Value = sqlx::query_scalar(explain(VECTORS_SQL))
        .bind("e")
        .bind(4i32)
        .bind(&checksums)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_probes("a batch of 2,000 vectors", &plan, &["embeddings"]);

    // The stream reads every document of the source (that is its job); each one's scores and
    // votes must be probes, never a scan of those tables.
    let labels = vec!["spam".to_string()];
    for source in [true, false] {
        let columns = DocColumns {
            scores: true,
            votes: true,
        };
        let mut query = sqlx::query_scalar::<_, Value>(explain(&documents_sql(source, columns)))
            .bind("m")
            .bind(1i32)
            .bind(&labels);
        if source {
            query = query.bind("s1");
        }
        let plan = query.fetch_one(pool).await.unwrap();
        assert_probes(
            &format!("documents stream (source: {source})"),
            &plan,
            &["document_scores", "annotations"],
        );
    }
    db.drop_db().await;
}
