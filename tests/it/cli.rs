//! The binary's verbs against a real database: import (JSONL and CSV), doctor, and start-up
//! errors that name the bad configuration key.

use std::process::Command;

use crate::support::*;

fn trainyard(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_jsonl_and_csv_then_doctor() {
    let db = fresh_db().await;
    let dir = std::env::temp_dir().join(format!("ty-import-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("docs.jsonl");
    std::fs::write(
        &jsonl,
        concat!(
            r#"{"source": "reviews", "external_id": "a1", "text": "great phone", "tags": ["amazon"], "annotations": [{"annotator": "x", "labels": {"positive": true}, "annotated_at": "2024-01-01T00:00:00Z"}]}"#,
            "\n\n",
            r#"{"source": "reviews", "external_id": "a2", "title": "meh", "annotations": [{"annotator": "x", "labels": {"positive": false, "spam": false}}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = trainyard(&db.url, &["import", jsonl.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("imported 2 documents (2 new, 0 updated) and 3 label rows"));

    let csv = dir.join("mails.csv");
    std::fs::write(&csv, "external_id,title,text,label:spam,label:urgent\nm1,Hi,\"buy now, cheap\",1,\nm2,Re: lunch,see you at noon,0,1\n").unwrap();
    let out = trainyard(
        &db.url,
        &[
            "import",
            csv.to_str().unwrap(),
            "--source",
            "mails",
            "--annotator",
            "ops",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labels: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT d.external_id, a.label, a.value FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE d.source = 'mails' ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        labels,
        vec![
            ("m1".into(), "spam".into(), true),
            ("m2".into(), "spam".into(), false),
            ("m2".into(), "urgent".into(), true)
        ],
        "an empty label cell means not annotated"
    );
    let body: String = sqlx::query_scalar("SELECT body FROM documents WHERE external_id = 'm1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(body, "buy now, cheap");

    // A CSV label that is not a boolean stops the import and names the row.
    std::fs::write(&csv, "external_id,text,label:spam\nm3,hello,perhaps\n").unwrap();
    let out = trainyard(
        &db.url,
        &["import", csv.to_str().unwrap(), "--source", "mails"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CSV row 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = trainyard(&db.url, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("libtorch     2.11"), "{text}");
    let n = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert!(
        text.contains(&format!("migrations   {n}/{n} applied")),
        "{text}"
    );
    assert!(text.contains("device       cpu for training"), "{text}");
    assert!(
        text.contains("all-MiniLM-L6-v2: 384 dims, local BERT (6 layers, width 384, longest input 512 tokens, max_tokens 256), mean pooling + L2, weights found"),
        "{text}"
    );
    db.drop_db().await;
}

#[test]
fn bad_configuration_names_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["migrate"])
        .env("TRAINYARD_QUEUE__HEARTBEAT_SECS", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("queue.heartbeat_secs"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["migrate"])
        .env("TRAINYARD_SERVER__LISTEN", "nowhere")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("server.listen"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["migrate"])
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/no_such_database_here",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("database.url"),
        "{err}"
    );
}

/// Client verbs keep their promises to scripts: exit codes (0 done, 4 not found, 5 server
/// unreachable), `watch` on a dataset and on its build job, tables and `--json` listings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_verbs_exit_codes_watch_and_listings() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), std::sync::Arc::new(test_settings(&db.url))).await;
    let _worker = spawn_inprocess_worker(&app, 1);
    let client = |args: &[&str], url: &str| {
        Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args(args)
            .env("TRAINYARD_URL", url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let nowhere = "http://127.0.0.1:9"; // discard port: nothing listens
    let out = client(&["datasets"], nowhere);
    assert_eq!(out.status.code(), Some(5), "unreachable server");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no trainyard API at"));
    let missing = uuid::Uuid::new_v4().to_string();
    let out = client(&["watch", &missing], &app.base);
    assert_eq!(
        out.status.code(),
        Some(4),
        "not found: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (docs, anns) = labelled_docs("c", &sentences(20, "cli"));
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
    let (_, d) = app
        .post(
            "/api/v1/datasets",
            serde_json::json!({"name": "cli", "selection": {"sources": ["c"]},
              "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    let id = d["id"].as_str().unwrap().to_string();
    let job = d["build_job_id"].as_str().unwrap().to_string();
    let base = app.base.clone();
    let (id2, base2) = (id.clone(), base.clone());
    let out = tokio::task::spawn_blocking(move || client(&["watch", &id2, "--json"], &base2))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(last["status"], "ready");
    assert_eq!(last["progress"]["texts_done"], 20);
    assert_eq!(last["progress"]["texts_total"], 20);
    let base3 = base.clone();
    let out = tokio::task::spawn_blocking(move || client(&["watch", &job], &base3))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the build job succeeded");
    let base4 = base.clone();
    let out = tokio::task::spawn_blocking(move || client(&["datasets"], &base4))
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("id ") && table.contains(&id) && table.contains("ready"),
        "{table}"
    );
    let out = tokio::task::spawn_blocking(move || client(&["jobs", "--json"], &base))
        .await
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        page["total"].as_i64().unwrap() >= 3,
        "build + embed jobs: {page}"
    );
    db.drop_db().await;
}
