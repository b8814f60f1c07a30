//! The `embed` job: embeds one stored batch with the dataset's model and upserts the vectors.
//!
//! Idempotent: vectors are unique per (model, dimensions, checksum) and inserted with
//! ON CONFLICT; the batch is marked done and the dataset's counter advanced in the same
//! transaction, guarded by `NOT done`, so a batch counts once however often it runs. The
//! transaction that brings `batches_done` to `batches_total` marks the dataset ready.
use serde_json::json;
use sqlx::Row;
use trainyard_jobs::EmbedArgs;

use super::{store, DatasetError};
use crate::embedding::store::{begin_batch_write, insert_embeddings, stored_checksums};
use crate::queue::{JobContext, JobError};
use crate::worker_state::WorkerState;
use tracing::Instrument;

/// Texts embedded between two progress writes (about a second of the local model on 2 cores).
const EMBED_PROGRESS_SLICE: usize = 128;

/// The `embed` handler: embeds one batch, and fails the dataset when this failure ends the job.
/// The batch's [`DatasetError`] becomes the queue's [`JobError`] here, once.
pub async fn handle_embed(
    state: &WorkerState,
    ctx: &JobContext,
    args: EmbedArgs,
) -> Result<serde_json::Value, JobError> {
    let result = run_embed(state, ctx, &args).await.map_err(JobError::from);
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, dataset = %args.dataset_id, batch = args.batch_no, error = %e, "embed failed");
        super::build::fail_dataset_if_final(ctx, args.dataset_id, e).await;
    }
    result
}

pub async fn run_embed(
    state: &WorkerState,
    ctx: &JobContext,
    args: &EmbedArgs,
) -> Result<serde_json::Value, DatasetError> {
    let pool = &state.pool;
    if ctx.cancel_requested() {
        return Err(DatasetError::Cancelled);
    }
    let Some(dataset) = store::get(pool, args.dataset_id).await? else {
        return Err(DatasetError::Invalid(format!(
            "dataset {} no longer exists",
            args.dataset_id
        )));
    };
    if dataset.status == store::DatasetStatus::Cancelled {
        return Err(DatasetError::Cancelled);
    }
    let spec = dataset
        .spec()
        .map_err(|e| DatasetError::Invalid(e.to_string()))?;
    let row = sqlx::query(
        "SELECT checksums, texts, done FROM embed_batches WHERE dataset_id = $1 AND batch_no = $2",
    )
    .bind(args.dataset_id)
    .bind(args.batch_no)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        DatasetError::Invalid(format!(
            "batch {} of dataset {} does not exist",
            args.batch_no, args.dataset_id
        ))
    })?;
    if row.get::<bool, _>("done") {
        return Ok(json!({"batch_no": args.batch_no, "already_done": true}));
    }
    let checksums: Vec<String> = row.get("checksums");
    let texts: Vec<String> = row.get("texts");
    let model = state.embedders.model(&spec.embedding_model)?.clone();

    // Another dataset may have embedded some of these since the build.
    let todo: Vec<usize> = if spec.force_regenerate {
        (0..checksums.len()).collect()
    } else {
        let wanted: Vec<&str> = checksums.iter().map(String::as_str).collect();
        let present = stored_checksums(pool, &model.name, model.dimensions as i32, &wanted).await?;
        (0..checksums.len())
            .filter(|&i| !present.contains(&checksums[i]))
            .collect()
    };
    // Embedded in slices, longest texts together (the encoder pads less), with the job's
    // progress written after each slice: a dataset's progress moves every second or two
    // instead of once per batch.
    let reused = (checksums.len() - todo.len()) as i64;
    let mut order = todo.clone();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    // A remote provider has `max_concurrency` requests of `max_batch_size` texts in flight.
    let slice = match model.provider.max_concurrency() {
        None => EMBED_PROGRESS_SLICE,
        Some(requests) => (model.max_batch_size * requests.max(1)).max(EMBED_PROGRESS_SLICE),
    };
    let span = tracing::info_span!(
        "embed_batch",
        embedding.model = %model.name,
        texts = checksums.len(),
        texts_embedded = todo.len(),
        tokens = tracing::field::Empty,
    );
    let mut by_index: std::collections::HashMap<usize, Vec<f32>> =
        std::collections::HashMap::with_capacity(todo.len());
    let mut tokens_total: Option<u64> = Some(0);
    let metrics = crate::telemetry::metrics();
    let model_attr = [crate::telemetry::instruments::model(&model.name)];
    if reused > 0 {
        metrics.embeddings_reused.add(reused as u64, &model_attr);
    }
    for chunk in order.chunks(slice) {
        let (vectors, tokens) = state
            .embedders
            .embed_counted(
                &model.name,
                chunk.iter().map(|&i| texts[i].clone()).collect(),
            )
            .instrument(span.clone())
            .await?;
        if vectors.len() != chunk.len() {
            break; // reported below as a count mismatch
        }
        metrics
            .embeddings_computed
            .add(chunk.len() as u64, &model_attr);
        if let Some(t) = tokens {
            metrics.embedding_tokens.add(t, &model_attr);
        }
        tokens_total = tokens_total.zip(tokens).map(|(a, b)| a + b);
        by_index.extend(chunk.iter().copied().zip(vectors));
        ctx.set_progress(reused + by_index.len() as i64, None);
        if ctx.cancel_requested() {
            return Err(DatasetError::Cancelled);
        }
    }
    if let Some(t) = tokens_total {
        span.record("tokens", t);
    }
    let vectors: Vec<Vec<f32>> = todo.iter().filter_map(|i| by_index.remove(i)).collect();
    if vectors.len() != todo.len() || vectors.iter().any(|v| v.len() != model.dimensions) {
        return Err(DatasetError::Invalid(format!(
            "provider returned {} vectors for {} texts or a wrong dimension count",
            vectors.len(),
            todo.len()
        )));
    }
    if ctx.cancel_requested() {
        return Err(DatasetError::Cancelled);
    }

    let mut tx = begin_batch_write(pool).await?;
    let rows: Vec<(&str, &[f32])> = todo
        .iter()
        .zip(&vectors)
        .map(|(&i, v)| (checksums[i].as_str(), v.as_slice()))
        .collect();
    let inserted = insert_embeddings(
        &mut tx,
        &model.name,
        model.dimensions as i32,
        &rows,
        spec.force_regenerate,
    )
    .await? as i32;
    let first_time = sqlx::query(
        "UPDATE embed_batches SET done = true, new_count = $3 WHERE dataset_id = $1 AND batch_no = $2 AND NOT done",
    )
    .bind(args.dataset_id)
    .bind(args.batch_no)
    .bind(inserted)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let mut ready = false;
    if first_time {
        let reused = checksums.len() as i32 - inserted;
        let (done, total): (i32, i32) = sqlx::query_as(
            "UPDATE datasets SET batches_done = batches_done + 1, new_embeddings = new_embeddings + $2,
                    reused_embeddings = reused_embeddings + $3, updated_at = now()
             WHERE id = $1 RETURNING batches_done, batches_total",
        )
        .bind(args.dataset_id)
        .bind(inserted)
        .bind(reused)
        .fetch_one(&mut *tx)
        .await?;
        if done >= total {
            sqlx::query("UPDATE datasets SET status = 'ready', ready_at = now() WHERE id = $1 AND status = 'embedding'")
                .bind(args.dataset_id)
                .execute(&mut *tx)
                .await?;
            ready = true;
        }
    }
    ctx.progress_complete(&mut tx).await?;
    tx.commit().await?;
    if ready {
        tracing::info!(dataset = %args.dataset_id, "dataset ready");
    }
    Ok(
        json!({"batch_no": args.batch_no, "texts": checksums.len(), "new_embeddings": inserted, "dataset_ready": ready}),
    )
}

/// The `embed` kind's registration: retrying a failed batch puts its dataset back to embedding.
pub struct EmbedJob;

impl crate::job_kind::RegisteredKind for EmbedJob {
    const KIND: trainyard_jobs::JobKind = trainyard_jobs::JobKind::Embed;
    type Args = EmbedArgs;

    fn handle(
        state: &WorkerState,
        ctx: &JobContext,
        args: EmbedArgs,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, JobError>> + Send {
        handle_embed(state, ctx, args)
    }

    async fn retrying(
        conn: &mut sqlx::PgConnection,
        job: &crate::queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        if let Some(dataset) = job.dataset_id {
            store::job_retrying(conn, dataset).await?;
        }
        Ok(())
    }
}
