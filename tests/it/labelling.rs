//! Labelling by people through the API, against the real Postgres and MiniLM: two annotators
//! asking at the same moment never get the same document; with `overlap = 2` each document
//! leaves the queue once both decided it and nobody gets a document twice; answers are
//! annotations under the annotator's name with the guideline version they saw; skip, undo,
//! a repeated answer, a lost lease and bad answers behave as documented; the agreement
//! endpoint's figures equal the `krippendorff` package's and scikit-learn's on the same votes.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

fn queue(annotator: &str) -> Value {
    json!({"model": "spam", "strategy": "uncertain", "source": "fresh", "annotator": annotator})
}

async fn next(app: &TestApp, annotator: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, body) = app.post("/api/v1/labelling/next", queue(annotator)).await;
        assert_eq!(status, 200, "{body}");
        if body["status"] != "computing" || start.elapsed() > Duration::from_secs(120) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn answer(
    app: &TestApp,
    annotator: &str,
    document: i64,
    spam: bool,
    extra: Value,
) -> (u16, Value) {
    let mut body = queue(annotator);
    body["document_id"] = json!(document);
    body["labels"] = json!({"spam": spam});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.post("/api/v1/labelling/answers", body).await
}

fn document_of(next: &Value) -> Option<i64> {
    next["item"]["document_id"].as_i64()
}

/// The spam model served (trained on `inbox`), and `fresh`'s 30 unannotated documents scored.
async fn served_spam_and_scored_fresh(app: &TestApp) {
    import_spam_docs(app, "inbox", 90).await;
    let (docs, _) = spam_docs("fresh", 30);
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    let dataset = start_spam_dataset(app, "inbox", "inbox").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let (status, run) = app
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": "spam", "auto_promote": true,
                   "hyperparameters": {"epochs": 20, "seed": 3}}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let run = wait_training_run(app, run["id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    score_source(app, "spam", "fresh", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_annotators_overlap_undo_guidelines_and_agreement() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    served_spam_and_scored_fresh(&app).await;

    // Settings and guidelines.
    let (s, b) = app
        .post("/api/v1/sources/fresh/settings", json!({"overlap": 2}))
        .await;
    assert_eq!((s, b["overlap"].as_i64()), (200, Some(2)), "{b}");
    let (s, b) = app
        .post("/api/v1/sources/nowhere/settings", json!({"overlap": 2}))
        .await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = app
        .post("/api/v1/sources/fresh/settings", json!({"overlap": 11}))
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, g1) = app
        .post(
            "/api/v1/guidelines",
            json!({"label": "spam", "text": "Unsolicited offers."}),
        )
        .await;
    assert_eq!((s, g1["version"].as_i64()), (201, Some(1)), "{g1}");
    let (s, g2) = app
        .post(
            "/api/v1/guidelines",
            json!({"label": "spam", "text": "Unsolicited offers, prizes and phishing."}),
        )
        .await;
    assert_eq!((s, g2["version"].as_i64()), (201, Some(2)), "{g2}");
    let (_, history) = app.get("/api/v1/guidelines/spam").await;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        2,
        "{history}"
    );
    assert_eq!(app.get("/api/v1/guidelines/ham").await.0, 404);

    // The first document: its guideline, scores of the served version, a lease renewed.
    let first = next(&app, "alice").await;
    assert_eq!(first["status"], "ready", "{first}");
    assert_eq!(first["task"], "binary");
    assert_eq!(first["overlap"], 2);
    assert_eq!(first["labels"][0]["guideline"]["version"], 2, "{first}");
    assert_eq!(first["item"]["scored_by_version"], 1, "{first}");
    assert_eq!(first["item"]["reason"]["kind"], "near_threshold", "{first}");
    assert_eq!(first["progress"]["left"], 30, "{first}");
    let a = document_of(&first).unwrap();
    assert_eq!(
        document_of(&next(&app, "alice").await),
        Some(a),
        "asking again gives the same document"
    );

    // Bad answers.
    let mut body = queue("alice");
    body["document_id"] = json!(a);
    body["labels"] = json!({});
    let (s, b) = app.post("/api/v1/labelling/answers", body.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("undecided_labels")),
        "{b}"
    );
    body["labels"] = json!({"spam": true, "ham": false});
    let (s, b) = app.post("/api/v1/labelling/answers", body.clone()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("unknown_label")),
        "{b}"
    );
    let (s, b) = answer(
        &app,
        "alice",
        a,
        true,
        json!({"guideline_versions": {"spam": 9}}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("unknown_guideline")),
        "{b}"
    );
    let mut nameless = body.clone();
    nameless.as_object_mut().unwrap().remove("annotator");
    nameless["labels"] = json!({"spam": true});
    let (s, b) = app.post("/api/v1/labelling/answers", nameless).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("annotator_required")),
        "{b}"
    );
    // Someone else answering the document alice holds loses.
    let (s, b) = answer(&app, "bob", a, true, json!({})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("lease_lost")),
        "{b}"
    );

    // Alice answers under guideline 1 (what she saw); the same answer again changes nothing,
    // a different one is refused.
    let (s, b) = answer(
        &app,
        "alice",
        a,
        true,
        json!({"guideline_versions": {"spam": 1}}),
    )
    .await;
    assert_eq!((s, b["annotations"].as_u64()), (200, Some(1)), "{b}");
    let (s, b) = answer(
        &app,
        "alice",
        a,
        true,
        json!({"guideline_versions": {"spam": 1}}),
    )
    .await;
    assert_eq!((s, b["annotations"].as_u64()), (200, Some(0)), "{b}");
    let (s, b) = answer(&app, "alice", a, false, json!({})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("already_answered")),
        "{b}"
    );
    let row: (String, bool, Option<i32>) = sqlx::query_as(
        "SELECT annotator, value, guideline_version FROM annotations WHERE document_id = $1",
    )
    .bind(a)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row, ("alice".to_string(), true, Some(1)));

    // Undo takes it back and gives the document again; a skip is never given again.
    let (s, b) = app.post("/api/v1/labelling/undo", queue("alice")).await;
    assert_eq!((s, b["document_id"].as_i64()), (200, Some(a)), "{b}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM annotations WHERE document_id = $1")
        .bind(a)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "undo deletes the annotation");
    assert_eq!(
        document_of(&next(&app, "alice").await),
        Some(a),
        "undo gives the document back"
    );
    let (s, b) = app.post("/api/v1/labelling/undo", queue("alice")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (409, Some("nothing_to_undo")),
        "{b}"
    );
    let mut skip = queue("carol");
    let c = document_of(&next(&app, "carol").await).unwrap();
    assert_ne!(c, a, "alice holds {a}");
    skip["document_id"] = json!(c);
    skip["skip"] = json!(true);
    let (s, b) = app.post("/api/v1/labelling/answers", skip).await;
    assert_eq!((s, b["skipped"].as_bool()), (200, Some(true)), "{b}");
    let after_skip = next(&app, "carol").await;
    assert_ne!(document_of(&after_skip), Some(c));
    assert_eq!(after_skip["progress"]["skipped_by_you"], 1);
    let (s, _) = app.post("/api/v1/labelling/undo", queue("carol")).await;
    assert_eq!(s, 200);
    assert_eq!(
        document_of(&next(&app, "carol").await),
        Some(c),
        "undo gives the skipped one back"
    );
    // Carol skips it again and asks for nothing more: she holds no document.
    let mut skip = queue("carol");
    skip["document_id"] = json!(c);
    skip["skip"] = json!(true);
    assert_eq!(app.post("/api/v1/labelling/answers", skip).await.0, 200);

    // Alice and bob label the whole source, asking at the same moments. Bob labels "spam" as
    // the texts say, alice disagrees on every fifth document.
    let spam_text = |t: &str| {
        [
            "free prize",
            "cash reward",
            "cheap pills",
            "lottery",
            "bank account",
            "earn money",
        ]
        .iter()
        .any(|s| t.contains(s))
    };
    let mut decided: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100, "the queue never emptied");
        let (na, nb) = tokio::join!(next(&app, "alice"), next(&app, "bob"));
        let (da, db_) = (document_of(&na), document_of(&nb));
        if let (Some(x), Some(y)) = (da, db_) {
            assert_ne!(x, y, "two annotators got document {x} at the same time");
        }
        if da.is_none() && db_.is_none() {
            assert_eq!(na["status"], "empty", "{na}");
            assert_eq!(nb["status"], "empty", "{nb}");
            break;
        }
        for (who, doc, n) in [("alice", da, &na), ("bob", db_, &nb)] {
            let Some(doc) = doc else { continue };
            assert!(
                decided.entry(who).or_default().insert(doc),
                "{who} got {doc} twice"
            );
            let mut value = spam_text(n["item"]["text"].as_str().unwrap());
            if who == "alice" && doc % 5 == 0 {
                value = !value;
            }
            let (s, b) = answer(&app, who, doc, value, json!({})).await;
            assert_eq!(s, 200, "{b}");
        }
    }
    let everything: BTreeSet<i64> =
        sqlx::query_scalar("SELECT id FROM documents WHERE source = 'fresh'")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        decided["alice"], everything,
        "alice decided every document once"
    );
    assert_eq!(
        decided["bob"], everything,
        "bob decided every document once"
    );
    let per_document: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM label_answers WHERE NOT skipped AND annotator IN ('alice', 'bob')
         GROUP BY document_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(per_document.iter().all(|n| *n == 2), "{per_document:?}");
    // Every document was decided by two people: nothing is left for carol either.
    let carol = next(&app, "carol").await;
    assert_eq!(carol["status"], "empty", "{carol}");
    let unrecorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE d.source = 'fresh' AND a.guideline_version IS DISTINCT FROM 2",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        unrecorded, 0,
        "every vote of the round carries the current guideline version"
    );

    // One vote under guideline 1 for the per-version figures; then the agreement endpoint
    // against krippendorff and scikit-learn on the votes as stored.
    sqlx::query("UPDATE annotations SET guideline_version = 1 WHERE annotator = 'alice' AND document_id % 2 = 0")
        .execute(&db.pool)
        .await
        .unwrap();
    let (s, agreement) = app.get("/api/v1/agreement?source=fresh&label=spam").await;
    assert_eq!(s, 200, "{agreement}");
    let group = &agreement["groups"][0];
    assert_eq!(
        agreement["groups"].as_array().unwrap().len(),
        1,
        "{agreement}"
    );
    assert_eq!(group["votes"], 60, "{group}");
    let votes: Vec<(i64, String, bool, Option<i32>)> = sqlx::query_as(
        "SELECT a.document_id, a.annotator, a.value, a.guideline_version
         FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE d.source = 'fresh' AND a.label = 'spam'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let case = |name: &str, of: Option<Option<i32>>| {
        let v: Vec<Value> = votes
            .iter()
            .filter(|v| of.is_none_or(|g| v.3 == g))
            .map(|(d, a, value, _)| json!([d, a, u32::from(*value)]))
            .collect();
        json!({"name": name, "votes": v})
    };
    let cases = json!([
        case("all", None),
        case("v1", Some(Some(1))),
        case("v2", Some(Some(2)))
    ]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("votes.json");
    std::fs::write(&input, serde_json::to_vec(&cases).unwrap()).unwrap();
    let out = std::process::Command::new(crate::support::families::python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/agreement_reference.py"
        ))
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let close = |ours: &Value, theirs: &Value, what: &str| match (ours.as_f64(), theirs.as_f64()) {
        (Some(x), Some(y)) => assert!((x - y).abs() < 1e-9, "{what}: {x} vs {y}"),
        (None, None) => {}
        _ => panic!("{what}: {ours} vs {theirs}"),
    };
    close(&group["alpha"], &reference[0]["alpha"], "alpha");
    assert!(
        group["alpha"].as_f64().unwrap() < 1.0,
        "alice disagrees on some: {group}"
    );
    for row in group["annotators"].as_array().unwrap() {
        let name = row["annotator"].as_str().unwrap();
        let theirs = &reference[0]["annotators"][name];
        close(&row["kappa"], &theirs["kappa"], name);
        assert_eq!(row["documents"], theirs["documents"], "{name}");
        assert_eq!(row["kappa_documents"], theirs["kappa_documents"], "{name}");
    }
    let by_version = group["by_guideline_version"].as_array().unwrap();
    assert_eq!(by_version.len(), 2, "{group}");
    for (row, theirs) in by_version.iter().zip(&reference[1..]) {
        close(&row["alpha"], &theirs["alpha"], &format!("alpha of {row}"));
    }
    db.drop_db().await;
}
