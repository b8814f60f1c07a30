//! `suspect_label` on a multi-class model against the real Postgres and MiniLM: every class is
//! fitted out of fold, wrongly annotated documents come first, and `label=` keeps the
//! documents whose consensus or contradicting class is that label (one class alone cannot be
//! fitted, so the filter applies to the verdicts, not to the fit).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

const CLASSES: [&str; 3] = ["sports", "cooking", "finance"];

fn phrases(class: usize) -> [&'static str; 5] {
    match class {
        0 => [
            "the striker scored twice in the second half of the football match",
            "our team won the basketball final after overtime",
            "the tennis champion lost in straight sets at the open",
            "the marathon runners crossed the finish line in record time",
            "the coach praised the defence after the league game",
        ],
        1 => [
            "simmer the tomato sauce with garlic and fresh basil",
            "bake the bread at two hundred degrees until golden",
            "whisk the eggs with sugar before folding in the flour",
            "season the roast chicken with rosemary and lemon",
            "chop the onions and fry them slowly in butter",
        ],
        _ => [
            "the central bank raised interest rates by a quarter point",
            "shares fell sharply after the quarterly earnings report",
            "the fund rebalanced its bond portfolio toward treasuries",
            "inflation data pushed the currency lower against the dollar",
            "the company issued new stock to pay down its debt",
        ],
    }
}

/// 150 documents, 50 per class; every 25th (starting at 7) is annotated with the next class.
fn corpus() -> (Value, Value, BTreeSet<(String, usize, usize)>) {
    let noise = sentences(150, "mc");
    let mut docs = Vec::new();
    let mut anns = Vec::new();
    let mut flipped = BTreeSet::new();
    for (i, tail) in noise.iter().enumerate() {
        let class = i % 3;
        let id = format!("m{i}");
        docs.push(json!({"source": "news", "external_id": id,
                         "text": format!("{}. {tail}", phrases(class)[(i / 3) % 5])}));
        let given = if i % 25 == 7 {
            let wrong = (class + 1) % 3;
            flipped.insert((id.clone(), class, wrong));
            wrong
        } else {
            class
        };
        anns.push(
            json!({"source": "news", "external_id": id, "annotator": "alice",
                         "labels": {CLASSES[given]: true}}),
        );
    }
    (
        json!({"documents": docs}),
        json!({"annotations": anns}),
        flipped,
    )
}

/// The page of the current data: a 202 (a `review_rank` job computing) is asked again.
async fn queue(app: &TestApp, query: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, page) = app
            .get(&format!("/api/v1/review-queue?{query}&limit=1000"))
            .await;
        if status == 202 && start.elapsed() < Duration::from_secs(600) {
            assert_eq!(page["status"], "computing", "{page}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["status"], "ready", "{page}");
        return page;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_class_suspects_with_and_without_a_label() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    let (docs, anns, flipped) = corpus();
    assert_eq!(flipped.len(), 6);
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
    let (status, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "topics", "selection": {"sources": ["news"]},
                   "label_schema": {"type": "multi_class", "labels": CLASSES}}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let dataset = d["id"].as_str().unwrap().to_string();
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let (status, run) = app
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": "topics", "auto_promote": true,
                   "hyperparameters": {"epochs": 10, "seed": 1}}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let run = wait_training_run(&app, run["id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let start = Instant::now();
    while app.get("/api/v1/models").await.1[0]["served_version"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every class: the 6 wrongly annotated documents are suspects and lead the queue.
    let page = queue(&app, "model=topics&strategy=suspect_label&source=news").await;
    assert_eq!(page["total"], 150, "{}", page["counts"]);
    let items = page["items"].as_array().unwrap();
    let suspects: Vec<&Value> = items
        .iter()
        .filter(|i| i["reason"]["suspect"] == true)
        .collect();
    let flipped_ids: BTreeSet<&str> = flipped.iter().map(|(id, _, _)| id.as_str()).collect();
    let leading: Vec<&str> = items[..15]
        .iter()
        .map(|i| i["external_id"].as_str().unwrap())
        .collect();
    let found = leading
        .iter()
        .filter(|id| flipped_ids.contains(*id))
        .count();
    eprintln!(
        "multi-class suspect_label: {} suspects, {found}/6 flipped in the first 15 of 150",
        suspects.len()
    );
    assert!(
        found >= 5,
        "flipped in the first 10%: {found}; leading {leading:?}"
    );
    for (id, truth, given) in &flipped {
        let item = items.iter().find(|i| i["external_id"] == *id).unwrap();
        assert_eq!(item["reason"]["label"], CLASSES[*given], "{item}");
        if item["reason"]["suspect"] == true {
            assert_eq!(item["reason"]["other"], CLASSES[*truth], "{item}");
        }
    }

    // `label=cooking`: only verdicts about cooking, and the flipped ones about it are there.
    let page = queue(
        &app,
        "model=topics&strategy=suspect_label&source=news&label=cooking",
    )
    .await;
    assert_eq!(page["labels"], json!(["cooking"]));
    assert!(
        page.get("skipped_labels").is_none() || page["skipped_labels"] == json!([]),
        "{page}"
    );
    let items = page["items"].as_array().unwrap();
    assert!(
        !items.is_empty() && items.len() < 150,
        "{} items",
        items.len()
    );
    for item in items {
        let r = &item["reason"];
        assert!(r["label"] == "cooking" || r["other"] == "cooking", "{item}");
    }
    for (id, truth, given) in &flipped {
        if CLASSES[*given] == "cooking" {
            assert!(
                items.iter().any(|i| i["external_id"] == *id),
                "{id} (annotated cooking, truly {}) is listed",
                CLASSES[*truth]
            );
        }
    }
    db.drop_db().await;
}
