//! The `dataset_build` job: select documents, combine text, consensus labels, splits, then fan
//! out `embed` jobs for the checksums the dataset's model has not stored yet.
//!
//! Idempotent: records, batches and embed jobs are written in one transaction, and a re-run
//! of a build whose fan-out already committed does nothing but report.
use std::collections::{BTreeMap, HashSet};

use serde_json::json;
use sqlx::Row;
use trainyard_jobs::{DatasetBuildArgs, EmbedArgs, JobKind};

use super::consensus;
use super::splits::{stratified_split, Split};
use super::text::{checksum, combine_text};
use super::{store, DatasetSpec, TaskType};
use crate::embedding::store::stored_checksums;
use crate::queue::{self, NewJob};
use crate::queue::{JobContext, JobError};
use crate::worker_state::WorkerState;

struct Record {
    document_id: i64,
    source: String,
    external_id: String,
    text: String,
    checksum: String,
    labels: BTreeMap<String, Option<u8>>,
    votes: serde_json::Value,
    disagreement: bool,
    split: Split,
}

/// The `dataset_build` handler: builds, and fails the dataset when this failure ends the job.
pub async fn handle_build(
    state: &WorkerState,
    ctx: &JobContext,
    args: DatasetBuildArgs,
) -> Result<serde_json::Value, JobError> {
    tracing::info!(job = %ctx.id, dataset = %args.dataset_id, "dataset_build started");
    let result = run_build(state, ctx, &args).await;
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, error = %e, "dataset_build failed");
        fail_dataset_if_final(ctx, args.dataset_id, e).await;
    }
    result
}

/// When this was the job's last attempt (or the error is fatal), the dataset fails with it.
pub(crate) async fn fail_dataset_if_final(
    ctx: &JobContext,
    dataset_id: uuid::Uuid,
    error: &JobError,
) {
    if matches!(error, JobError::Cancelled) || !ctx.is_last_attempt(error).await {
        return;
    }
    let message = format!("job {} failed: {error}", ctx.id);
    let update = sqlx::query(
        "UPDATE datasets SET status = 'failed', error = $2, updated_at = now()
         WHERE id = $1 AND status NOT IN ('ready', 'cancelled')",
    )
    .bind(dataset_id)
    .bind(&message)
    .execute(&ctx.pool)
    .await;
    if let Err(e) = update {
        tracing::error!(dataset = %dataset_id, "could not mark dataset failed: {e}");
    }
}

pub async fn run_build(
    state: &WorkerState,
    ctx: &JobContext,
    args: &DatasetBuildArgs,
) -> Result<serde_json::Value, JobError> {
    let pool = &state.pool;
    let dataset = store::get(pool, args.dataset_id)
        .await?
        .ok_or_else(|| JobError::Fatal(format!("dataset {} no longer exists", args.dataset_id)))?;
    match dataset.status.as_str() {
        "cancelled" => return Err(JobError::Cancelled),
        "embedding" | "ready" => {
            return Ok(
                json!({"dataset_id": dataset.id, "status": dataset.status, "batches": dataset.batches_total}),
            )
        }
        _ => {}
    }
    if ctx.cancel_requested() {
        mark(pool, dataset.id, "cancelled", None).await?;
        return Err(JobError::Cancelled);
    }
    let spec: DatasetSpec = dataset
        .spec()
        .map_err(|e| JobError::Fatal(format!("stored request unreadable: {e}")))?;
    mark(pool, dataset.id, "building", None).await?;

    // External sources are copied in first, so the rest reads one shape of data.
    for name in spec
        .selection
        .sources
        .iter()
        .chain(spec.selection.source.iter())
    {
        if let Some(external) = state.settings.sources.get(name) {
            crate::datasets::external_source::import_source(pool, name, external)
                .await
                .map_err(|e| {
                    JobError::Retryable(format!("reading external source {name}: {e:#}"))
                })?;
        }
    }

    let (records, mut stats) = select_records(state, &spec, dataset.id).await?;
    if records.is_empty() {
        let message = "the selection has no labelled documents with text";
        mark(pool, dataset.id, "failed", Some(message)).await?;
        return Err(JobError::Fatal(message.into()));
    }

    let model = state
        .embedders
        .model(&spec.embedding_model)
        .map_err(|e| JobError::Fatal(e.to_string()))?
        .clone();
    // Unique texts of this dataset, in first-seen order: duplicates are embedded once.
    let mut seen = HashSet::new();
    let unique: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| seen.insert(r.checksum.as_str()))
        .map(|r| (r.checksum.as_str(), r.text.as_str()))
        .collect();
    let checksums: Vec<&str> = unique.iter().map(|u| u.0).collect();
    let stored: HashSet<String> = if spec.force_regenerate {
        HashSet::new()
    } else {
        stored_checksums(pool, &model.name, model.dimensions as i32, &checksums).await?
    };
    let missing: Vec<(&str, &str)> = unique
        .iter()
        .copied()
        .filter(|(c, _)| !stored.contains(*c))
        .collect();
    let batch_size = state.settings.datasets.embed_batch_size;
    let batches: Vec<&[(&str, &str)]> = missing.chunks(batch_size).collect();
    stats["unique_texts"] = json!(unique.len());
    stats["embed_batches"] = json!(batches.len());

    let mut tx = pool.begin().await?;
    // Lock the dataset row: concurrent re-runs of this job serialise here.
    let status: String = sqlx::query_scalar("SELECT status FROM datasets WHERE id = $1 FOR UPDATE")
        .bind(dataset.id)
        .fetch_one(&mut *tx)
        .await?;
    if status != "building" {
        return Ok(json!({"dataset_id": dataset.id, "status": status}));
    }
    sqlx::query("DELETE FROM dataset_records WHERE dataset_id = $1")
        .bind(dataset.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM embed_batches WHERE dataset_id = $1")
        .bind(dataset.id)
        .execute(&mut *tx)
        .await?;
    for (chunk_no, chunk) in records.chunks(5000).enumerate() {
        let offset = (chunk_no * 5000) as i32;
        sqlx::query(
            "INSERT INTO dataset_records (dataset_id, position, document_id, source, external_id, checksum, text, split, labels, votes, disagreement)
             SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::jsonb[], $11::bool[])",
        )
        .bind(dataset.id)
        .bind((0..chunk.len() as i32).map(|i| offset + i).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.document_id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.source.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.external_id.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.checksum.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.text.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.split.as_str()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| json!(r.labels)).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.votes.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.disagreement).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    for (no, batch) in batches.iter().enumerate() {
        sqlx::query("INSERT INTO embed_batches (dataset_id, batch_no, checksums, texts) VALUES ($1, $2, $3, $4)")
            .bind(dataset.id)
            .bind(no as i32)
            .bind(batch.iter().map(|b| b.0).collect::<Vec<_>>())
            .bind(batch.iter().map(|b| b.1).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
    }
    let jobs: Vec<NewJob<EmbedArgs>> = (0..batches.len())
        .map(|no| NewJob {
            kind: JobKind::Embed,
            args: EmbedArgs {
                dataset_id: dataset.id,
                batch_no: no as i32,
            },
            dataset_id: Some(dataset.id),
            scoring_job_id: None,
            progress_total: batches[no].len() as i64,
        })
        .collect();
    queue::enqueue(&mut tx, jobs, state.settings.queue.max_attempts).await?;
    let final_status = if batches.is_empty() {
        "ready"
    } else {
        "embedding"
    };
    sqlx::query(
        "UPDATE datasets SET status = $2, batches_total = $3, batches_done = 0, new_embeddings = 0,
                reused_embeddings = $4, stats = $5, updated_at = now(),
                ready_at = CASE WHEN $2 = 'ready' THEN now() END
         WHERE id = $1",
    )
    .bind(dataset.id)
    .bind(final_status)
    .bind(batches.len() as i32)
    .bind((unique.len() - missing.len()) as i32)
    .bind(&stats)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE job_info SET progress_done = 1, progress_total = 1 WHERE job_id = $1")
        .bind(&ctx.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(dataset = %dataset.id, records = records.len(), batches = batches.len(), "dataset built; embedding fanned out");
    Ok(
        json!({"dataset_id": dataset.id, "status": final_status, "records": records.len(), "batches": batches.len()}),
    )
}

async fn mark(
    pool: &sqlx::PgPool,
    id: uuid::Uuid,
    status: &str,
    error: Option<&str>,
) -> Result<(), JobError> {
    sqlx::query("UPDATE datasets SET status = $2, error = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// Reads the selected documents with their votes and turns them into records plus stats.
#[tracing::instrument(name = "db.select_records", skip_all, fields(db.system.name = "postgresql"))]
async fn select_records(
    state: &WorkerState,
    spec: &DatasetSpec,
    dataset_id: uuid::Uuid,
) -> Result<(Vec<Record>, serde_json::Value), JobError> {
    let sel = &spec.selection;
    let rows = sqlx::query(
        "SELECT d.id, d.source, d.external_id, d.title, d.description, d.tags, d.body,
                coalesce(jsonb_agg(jsonb_build_object('a', a.annotator, 'l', a.label, 'v', a.value, 't', a.annotated_at))
                         FILTER (WHERE a.id IS NOT NULL), '[]'::jsonb) AS votes
         FROM documents d LEFT JOIN annotations a ON a.document_id = d.id
         WHERE d.source = ANY($1) OR d.id = ANY($2) OR (d.source = $3 AND d.external_id = ANY($4))
         GROUP BY d.id ORDER BY d.source, d.external_id",
    )
    .bind(&sel.sources)
    .bind(&sel.document_ids)
    .bind(&sel.source)
    .bind(&sel.external_ids)
    .fetch_all(&state.pool)
    .await?;
    let (mut empty_text, mut unlabelled, mut ties, mut disagreements) =
        (0usize, 0usize, 0u32, 0usize);
    let mut records = Vec::new();
    for row in &rows {
        let tags: Vec<String> = row.get("tags");
        let text = combine_text(
            row.get::<Option<&str>, _>("title"),
            row.get::<Option<&str>, _>("description"),
            row.get::<Option<&str>, _>("body"),
            &tags,
            spec.max_text_chars,
        );
        if text.is_empty() {
            empty_text += 1;
            continue;
        }
        let raw: serde_json::Value = row.get("votes");
        let votes = consensus::votes_from_json(&raw);
        let c = match spec.task_type {
            TaskType::MultiClass => consensus::multi_class(&votes, &spec.labels),
            TaskType::Binary | TaskType::MultiLabel => {
                consensus::multi_label(&votes, &spec.labels, spec.tie_rule)
            }
        };
        ties += c.ties;
        if c.disagreement {
            disagreements += 1;
        }
        if c.labels.values().all(Option::is_none) && !c.disagreement {
            unlabelled += 1;
            continue;
        }
        records.push(Record {
            document_id: row.get("id"),
            source: row.get("source"),
            external_id: row.get("external_id"),
            checksum: checksum(&text),
            text,
            labels: c.labels,
            votes: json!(c.votes),
            disagreement: c.disagreement,
            split: Split::Train,
        });
    }
    // Stratify on the label vector (masked labels included), keyed by document.
    let items: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let stratum = r
                .labels
                .values()
                .map(|v| v.map_or("-".to_string(), |x| x.to_string()))
                .collect::<Vec<_>>()
                .join(",");
            (format!("{}/{}", r.source, r.external_id), stratum)
        })
        .collect();
    let r = &spec.splits;
    let splits = stratified_split(&items, (r.train, r.validation, r.test), r.seed);
    for (record, split) in records.iter_mut().zip(splits) {
        record.split = split;
    }
    let mut distribution = serde_json::Map::new();
    for split in [Split::Train, Split::Validation, Split::Test] {
        let mut per_label = serde_json::Map::new();
        for label in &spec.labels {
            let values = records
                .iter()
                .filter(|r| r.split == split)
                .map(|r| r.labels[label]);
            let (mut pos, mut neg, mut masked) = (0, 0, 0);
            for v in values {
                match v {
                    Some(1) => pos += 1,
                    Some(_) => neg += 1,
                    None => masked += 1,
                }
            }
            per_label.insert(
                label.clone(),
                json!({"positive": pos, "negative": neg, "masked": masked}),
            );
        }
        let count = records.iter().filter(|r| r.split == split).count();
        distribution.insert(
            split.as_str().into(),
            json!({"records": count, "labels": per_label}),
        );
    }
    tracing::debug!(dataset = %dataset_id, documents = rows.len(), records = records.len(), "records selected");
    let stats = json!({
        "documents_selected": rows.len(),
        "records": records.len(),
        "excluded_empty_text": empty_text,
        "excluded_unlabelled": unlabelled,
        "inconsistent_labels": disagreements,
        "ties": ties,
        "splits": distribution,
    });
    Ok((records, stats))
}
