//! The `dataset_build` job: select documents, combine text, consensus labels, splits, then fan
//! out `embed` jobs for the checksums the dataset's model has not stored yet.
//!
//! Idempotent: records, batches and embed jobs are written in one transaction, and a re-run
//! of a build whose fan-out already committed does nothing but report.
use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;

use serde_json::json;
use sqlx::Row;
use trainyard_jobs::{DatasetBuildArgs, EmbedArgs, JobKind};

use super::consensus;
use super::splits::{cut_points, split_key, Split};
use super::store::{self, DatasetStatus};
use super::text::{checksum, combine_text};
use super::{DatasetError, DatasetSpec, TaskType};
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
}

/// The `dataset_build` handler: builds, and fails the dataset when this failure ends the job.
/// The build's [`DatasetError`] becomes the queue's [`JobError`] here, once.
pub async fn handle_build(
    state: &WorkerState,
    ctx: &JobContext,
    args: DatasetBuildArgs,
) -> Result<serde_json::Value, JobError> {
    tracing::info!(job = %ctx.id, dataset = %args.dataset_id, "dataset_build started");
    let result = run_build(state, ctx, &args).await.map_err(JobError::from);
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
) -> Result<serde_json::Value, DatasetError> {
    let pool = &state.pool;
    let dataset = store::get(pool, args.dataset_id).await?.ok_or_else(|| {
        DatasetError::Invalid(format!("dataset {} no longer exists", args.dataset_id))
    })?;
    match dataset.status {
        DatasetStatus::Cancelled => return Err(DatasetError::Cancelled),
        DatasetStatus::Embedding | DatasetStatus::Ready => {
            return Ok(
                json!({"dataset_id": dataset.id, "status": dataset.status, "batches": dataset.batches_total}),
            )
        }
        _ => {}
    }
    if ctx.cancel_requested() {
        mark(pool, dataset.id, DatasetStatus::Cancelled, None).await?;
        return Err(DatasetError::Cancelled);
    }
    let spec: DatasetSpec = dataset
        .spec()
        .map_err(|e| DatasetError::Invalid(format!("stored request unreadable: {e}")))?;
    mark(pool, dataset.id, DatasetStatus::Building, None).await?;

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
                    DatasetError::Transient(format!("reading external source {name}: {e:#}"))
                })?;
        }
    }
    let model = state.embedders.model(&spec.embedding_model)?.clone();

    // The corpus generation is read before any document is: a build labelled with it saw at
    // least that state (a change committed while it reads only makes a later build skip reuse).
    let generation = corpus_generation(pool).await?;
    let donor = match spec.force_regenerate {
        true => None,
        false => identical_build(pool, &dataset, generation).await?,
    };

    let mut tx = pool.begin().await?;
    // A ready donor's texts all have vectors (vectors are never deleted): nothing to look up.
    let mut all_stored: Option<i64> = None;
    let (records, mut stats) = match donor {
        // The same request over the same corpus: the records are the earlier build's.
        Some((donor, donor_stats, donor_status)) => {
            if !lock_building(&mut tx, dataset.id).await? {
                return Ok(json!({"dataset_id": dataset.id, "status": "superseded"}));
            }
            let copied = sqlx::query(COPY_RECORDS)
                .bind(dataset.id)
                .bind(donor)
                .execute(&mut *tx)
                .await?
                .rows_affected() as usize;
            tracing::info!(dataset = %dataset.id, from = %donor, records = copied, "records copied from an identical build of the same corpus");
            if donor_status == DatasetStatus::Ready {
                all_stored = donor_stats["unique_texts"].as_i64();
            }
            let mut stats = donor_stats;
            stats["records_from_dataset"] = json!(donor);
            (copied, stats)
        }
        // Records are staged in a temporary table (dropped at commit) as they stream in; the
        // split is then ranked and the records written by the database, so the worker holds
        // one chunk.
        None => {
            sqlx::query(CREATE_STAGING).execute(&mut *tx).await?;
            let staged = stage_records(state, ctx, &spec, &mut tx).await?;
            if staged.records == 0 {
                drop(tx);
                let message = "the selection has no labelled documents with text";
                mark(pool, dataset.id, DatasetStatus::Failed, Some(message)).await?;
                return Err(DatasetError::Invalid(message.into()));
            }
            if !lock_building(&mut tx, dataset.id).await? {
                return Ok(json!({"dataset_id": dataset.id, "status": "superseded"}));
            }
            let ratios = (spec.splits.train, spec.splits.validation, spec.splits.test);
            let cuts: Vec<(i32, i64, i64)> = staged
                .strata
                .iter()
                .map(|(id, _, n)| {
                    let (train_end, validation_end) = cut_points(*n, ratios);
                    (*id, train_end as i64, validation_end as i64)
                })
                .collect();
            sqlx::query(WRITE_RECORDS)
                .bind(dataset.id)
                .bind(cuts.iter().map(|c| c.0).collect::<Vec<_>>())
                .bind(cuts.iter().map(|c| c.1).collect::<Vec<_>>())
                .bind(cuts.iter().map(|c| c.2).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            (staged.records, staged.stats(&spec.labels, ratios))
        }
    };
    let (unique, batches): (i64, Vec<(i32, i32)>) = match all_stored {
        Some(unique) => (unique, Vec::new()),
        None => {
            let unique = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT DISTINCT checksum FROM dataset_records WHERE dataset_id = $1) u",
            )
            .bind(dataset.id)
            .fetch_one(&mut *tx)
            .await?;
            let batches = sqlx::query_as(WRITE_EMBED_BATCHES)
                .bind(dataset.id)
                .bind(&model.name)
                .bind(model.dimensions as i32)
                .bind(state.settings.datasets.embed_batch_size as i64)
                .bind(spec.force_regenerate)
                .fetch_all(&mut *tx)
                .await?;
            (unique, batches)
        }
    };
    let missing: i64 = batches.iter().map(|b| b.1 as i64).sum();
    stats["unique_texts"] = json!(unique);
    stats["embed_batches"] = json!(batches.len());

    let mut jobs: Vec<NewJob<EmbedArgs>> = batches
        .iter()
        .map(|&(no, size)| NewJob {
            kind: JobKind::Embed,
            args: EmbedArgs {
                dataset_id: dataset.id,
                batch_no: no,
            },
            dataset_id: Some(dataset.id),
            scoring_job_id: None,
            progress_total: size as i64,
        })
        .collect();
    jobs.sort_by_key(|j| j.args.batch_no);
    queue::enqueue(&mut tx, jobs, state.settings.queue.max_attempts).await?;
    let final_status = if batches.is_empty() {
        DatasetStatus::Ready
    } else {
        DatasetStatus::Embedding
    };
    sqlx::query(
        "UPDATE datasets SET status = $2, batches_total = $3, batches_done = 0, new_embeddings = 0,
                reused_embeddings = $4, stats = $5, corpus_generation = $6, updated_at = now(),
                ready_at = CASE WHEN $2 = 'ready' THEN now() END
         WHERE id = $1",
    )
    .bind(dataset.id)
    .bind(final_status)
    .bind(batches.len() as i32)
    .bind((unique - missing) as i32)
    .bind(&stats)
    .bind(generation)
    .execute(&mut *tx)
    .await?;
    ctx.progress_one_of_one(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(dataset = %dataset.id, records, batches = batches.len(), "dataset built; embedding fanned out");
    Ok(
        json!({"dataset_id": dataset.id, "status": final_status, "records": records, "batches": batches.len()}),
    )
}

/// Locks the dataset row (concurrent re-runs of this job serialise here), and clears what an
/// earlier attempt may have left; false when the dataset is no longer being built.
async fn lock_building(tx: &mut sqlx::PgConnection, id: uuid::Uuid) -> Result<bool, DatasetError> {
    let status: DatasetStatus =
        sqlx::query_scalar("SELECT status FROM datasets WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if status != DatasetStatus::Building {
        return Ok(false);
    }
    for table in ["dataset_records", "embed_batches"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE dataset_id = $1"
        )))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(true)
}

/// The corpus's generation: bumped in the same transaction as every write to documents and
/// annotations (a statement-level trigger), so equal generations mean the same corpus.
async fn corpus_generation(pool: &sqlx::PgPool) -> Result<i64, DatasetError> {
    Ok(
        sqlx::query_scalar("SELECT sum(n)::bigint FROM corpus_generations WHERE scope = 'corpus'")
            .fetch_one(pool)
            .await?,
    )
}

/// An earlier build of the same request (selection, labels, rules, splits, model) whose
/// records were written at this corpus generation: its id, stats and status.
async fn identical_build(
    pool: &sqlx::PgPool,
    dataset: &store::DatasetRow,
    generation: i64,
) -> Result<Option<(uuid::Uuid, serde_json::Value, DatasetStatus)>, DatasetError> {
    Ok(sqlx::query_as(
        "SELECT id, stats, status FROM datasets
         WHERE id <> $1 AND request = $2 AND embedding_model = $3 AND dimensions = $4
           AND corpus_generation = $5 AND status IN ('embedding', 'ready') AND stats IS NOT NULL
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(dataset.id)
    .bind(&dataset.request)
    .bind(&dataset.embedding_model)
    .bind(dataset.dimensions)
    .bind(generation)
    .fetch_optional(pool)
    .await?)
}

/// Another dataset's records, as they are, under a new dataset id.
const COPY_RECORDS: &str = "
INSERT INTO dataset_records (dataset_id, position, document_id, source, external_id, checksum,
                             text, split, labels, votes, disagreement, split_position)
SELECT $1, position, document_id, source, external_id, checksum, text, split, labels, votes,
       disagreement, split_position
FROM dataset_records WHERE dataset_id = $2";

/// The build's scratch table: one row per record, in record order (`seq`), with its stratum
/// (an id of the label vector) and its sort key inside the stratum.
const CREATE_STAGING: &str = "
CREATE TEMPORARY TABLE build_staging (
    seq          INTEGER NOT NULL,
    stratum      INTEGER NOT NULL,
    split_key    BYTEA   NOT NULL,
    document_id  BIGINT  NOT NULL,
    source       TEXT    NOT NULL,
    external_id  TEXT    NOT NULL,
    checksum     TEXT    NOT NULL,
    text         TEXT    NOT NULL,
    labels       JSONB   NOT NULL,
    votes        JSONB   NOT NULL,
    disagreement BOOLEAN NOT NULL
) ON COMMIT DROP";

/// Staged records into `dataset_records`: each stratum ranked by its sort key and cut at the
/// ($2 stratum, $3 train_end, $4 validation_end) points, as `splits::stratified_split` does;
/// `split_position` numbers each split's records in record order (pages of one split).
const WRITE_RECORDS: &str = "
INSERT INTO dataset_records (dataset_id, position, document_id, source, external_id, checksum,
                             text, split, labels, votes, disagreement, split_position)
SELECT $1, b.seq, b.document_id, b.source, b.external_id, b.checksum, b.text, s.split, b.labels,
       b.votes, b.disagreement, (row_number() OVER (PARTITION BY s.split ORDER BY b.seq) - 1)::int
FROM (
    SELECT r.seq, CASE WHEN r.rank < c.train_end THEN 'train'
                       WHEN r.rank < c.validation_end THEN 'validation'
                       ELSE 'test' END AS split
    FROM (SELECT seq, stratum, row_number() OVER (PARTITION BY stratum ORDER BY split_key) - 1 AS rank
          FROM build_staging) r
    JOIN unnest($2::int[], $3::bigint[], $4::bigint[]) AS c(stratum, train_end, validation_end)
      ON c.stratum = r.stratum
) s
JOIN build_staging b ON b.seq = s.seq";

/// The dataset's distinct texts whose vector model `$2` (dimensions `$3`) has not stored (all
/// of them when `$5`, force_regenerate), cut into batches of `$4` in first-seen order. The
/// stored check is one primary-key probe per text (a LATERAL subquery with a LIMIT cannot be
/// turned into a scan of the model's vectors, whatever the statistics).
pub const WRITE_EMBED_BATCHES: &str = "
WITH firsts AS (
    SELECT checksum, min(position) AS position FROM dataset_records
    WHERE dataset_id = $1 GROUP BY checksum
), missing AS (
    SELECT f.checksum, f.position FROM firsts f
    LEFT JOIN LATERAL (
        SELECT 1 AS hit FROM embeddings e
        WHERE e.model = $2 AND e.dimensions = $3 AND e.checksum = f.checksum LIMIT 1
    ) stored ON NOT $5
    WHERE stored.hit IS NULL
), numbered AS (
    SELECT m.checksum, m.position, ((row_number() OVER (ORDER BY m.position) - 1) / $4)::int AS batch_no
    FROM missing m
)
INSERT INTO embed_batches (dataset_id, batch_no, checksums, texts)
SELECT $1, n.batch_no, array_agg(n.checksum ORDER BY n.position), array_agg(r.text ORDER BY n.position)
FROM numbered n JOIN dataset_records r ON r.dataset_id = $1 AND r.position = n.position
GROUP BY n.batch_no
RETURNING batch_no, cardinality(checksums)";

/// What streaming the selection into the staging table counted.
#[derive(Default)]
struct Staged {
    records: usize,
    documents_selected: usize,
    empty_text: usize,
    unlabelled: usize,
    ties: u32,
    disagreements: usize,
    /// (stratum id, label values in label order, records).
    strata: Vec<(i32, Vec<Option<u8>>, usize)>,
}

impl Staged {
    /// The build's stats; each split's label counts follow from the strata's cut points.
    fn stats(&self, labels: &[String], ratios: (f64, f64, f64)) -> serde_json::Value {
        let mut distribution = serde_json::Map::new();
        for split in [Split::Train, Split::Validation, Split::Test] {
            let mut counts = vec![(0usize, 0usize, 0usize); labels.len()];
            let mut records = 0;
            for (_, values, n) in &self.strata {
                let (train_end, validation_end) = cut_points(*n, ratios);
                let in_split = match split {
                    Split::Train => train_end,
                    Split::Validation => validation_end - train_end,
                    Split::Test => n - validation_end,
                };
                records += in_split;
                for (c, v) in counts.iter_mut().zip(values) {
                    match v {
                        Some(1) => c.0 += in_split,
                        Some(_) => c.1 += in_split,
                        None => c.2 += in_split,
                    }
                }
            }
            let per_label: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .zip(counts)
                .map(|(l, (pos, neg, masked))| {
                    (
                        l.clone(),
                        json!({"positive": pos, "negative": neg, "masked": masked}),
                    )
                })
                .collect();
            distribution.insert(
                split.as_str().into(),
                json!({"records": records, "labels": per_label}),
            );
        }
        json!({
            "documents_selected": self.documents_selected,
            "records": self.records,
            "excluded_empty_text": self.empty_text,
            "excluded_unlabelled": self.unlabelled,
            "inconsistent_labels": self.disagreements,
            "ties": self.ties,
            "splits": distribution,
        })
    }
}

/// Documents read and staged at a time.
const STAGE_CHUNK: usize = 5000;

/// The selection's documents, each with every vote, in record order (source, external id).
/// Each document's votes are one index probe on `annotations (document_id)`.
const SELECT_DOCUMENTS: &str = "
SELECT d.id, d.source, d.external_id, d.title, d.description, d.tags, d.body,
       (SELECT coalesce(jsonb_agg(jsonb_build_object('a', a.annotator, 'l', a.label, 'v', a.value, 't', a.annotated_at)), '[]'::jsonb)
        FROM annotations a WHERE a.document_id = d.id) AS votes
FROM documents d
WHERE d.source = ANY($1) OR d.id = ANY($2) OR (d.source = $3 AND d.external_id = ANY($4))
ORDER BY d.source, d.external_id";

/// Streams the selected documents, turns them into records (text, checksum, consensus,
/// stratum) and stages them chunk by chunk; the worker never holds more than one chunk.
#[tracing::instrument(name = "db.stage_records", skip_all, fields(db.system.name = "postgresql"))]
async fn stage_records(
    state: &WorkerState,
    ctx: &JobContext,
    spec: &DatasetSpec,
    tx: &mut sqlx::PgConnection,
) -> Result<Staged, DatasetError> {
    let sel = &spec.selection;
    let mut rows = sqlx::query(SELECT_DOCUMENTS)
        .bind(&sel.sources)
        .bind(&sel.document_ids)
        .bind(&sel.source)
        .bind(&sel.external_ids)
        .fetch(&state.pool);
    let mut staged = Staged::default();
    let mut strata: HashMap<Vec<Option<u8>>, (i32, usize)> = HashMap::new();
    let mut chunk: Vec<(Record, i32, [u8; 16])> = Vec::with_capacity(STAGE_CHUNK);
    loop {
        let row = rows.try_next().await?;
        let done = row.is_none();
        if let Some(row) = row {
            staged.documents_selected += 1;
            if let Some(record) = to_record(spec, &row, &mut staged) {
                // The label vector in the request's label order (the stats read it so).
                let values: Vec<Option<u8>> = spec
                    .labels
                    .iter()
                    .map(|l| record.labels.get(l).copied().flatten())
                    .collect();
                let next_id = strata.len() as i32;
                let entry = strata.entry(values).or_insert((next_id, 0));
                entry.1 += 1;
                let key = split_key(
                    spec.splits.seed,
                    &format!("{}/{}", record.source, record.external_id),
                );
                chunk.push((record, entry.0, key));
            }
        }
        if chunk.len() == STAGE_CHUNK || (done && !chunk.is_empty()) {
            if ctx.cancel_requested() {
                return Err(DatasetError::Cancelled);
            }
            insert_staged(&mut *tx, staged.records as i32, &chunk).await?;
            staged.records += chunk.len();
            chunk.clear();
        }
        if done {
            break;
        }
    }
    staged.strata = strata
        .into_iter()
        .map(|(values, (id, n))| (id, values, n))
        .collect();
    staged.strata.sort_by_key(|s| s.0);
    tracing::debug!(
        documents = staged.documents_selected,
        records = staged.records,
        "records staged"
    );
    Ok(staged)
}

/// One document as a record, or None (counted) when it has no text or no label at all.
fn to_record(
    spec: &DatasetSpec,
    row: &sqlx::postgres::PgRow,
    staged: &mut Staged,
) -> Option<Record> {
    let tags: Vec<String> = row.get("tags");
    let text = combine_text(
        row.get::<Option<&str>, _>("title"),
        row.get::<Option<&str>, _>("description"),
        row.get::<Option<&str>, _>("body"),
        &tags,
        spec.max_text_chars,
    );
    if text.is_empty() {
        staged.empty_text += 1;
        return None;
    }
    let raw: serde_json::Value = row.get("votes");
    let votes = consensus::votes_from_json(&raw);
    let c = match spec.task_type {
        TaskType::MultiClass => consensus::multi_class(&votes, &spec.labels),
        TaskType::Binary | TaskType::MultiLabel => {
            consensus::multi_label(&votes, &spec.labels, spec.tie_rule)
        }
    };
    staged.ties += c.ties;
    if c.disagreement {
        staged.disagreements += 1;
    }
    if c.labels.values().all(Option::is_none) && !c.disagreement {
        staged.unlabelled += 1;
        return None;
    }
    Some(Record {
        document_id: row.get("id"),
        source: row.get("source"),
        external_id: row.get("external_id"),
        checksum: checksum(&text),
        text,
        labels: c.labels,
        votes: json!(c.votes),
        disagreement: c.disagreement,
    })
}

async fn insert_staged(
    conn: &mut sqlx::PgConnection,
    first_seq: i32,
    chunk: &[(Record, i32, [u8; 16])],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO build_staging (seq, stratum, split_key, document_id, source, external_id, checksum, text, labels, votes, disagreement)
         SELECT * FROM UNNEST($1::int[], $2::int[], $3::bytea[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::jsonb[], $11::bool[])",
    )
    .bind((0..chunk.len() as i32).map(|i| first_seq + i).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.2.to_vec()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.document_id).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.source.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.external_id.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.checksum.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.text.as_str()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| json!(c.0.labels)).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.votes.clone()).collect::<Vec<_>>())
    .bind(chunk.iter().map(|c| c.0.disagreement).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn mark(
    pool: &sqlx::PgPool,
    id: uuid::Uuid,
    status: DatasetStatus,
    error: Option<&str>,
) -> Result<(), DatasetError> {
    sqlx::query("UPDATE datasets SET status = $2, error = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// The `dataset_build` kind's registration: cancelling the build cancels the dataset (unless it
/// is ready); retrying it builds the dataset again.
pub struct DatasetBuildJob;

impl crate::job_kind::RegisteredKind for DatasetBuildJob {
    const KIND: JobKind = JobKind::DatasetBuild;
    type Args = DatasetBuildArgs;

    fn handle(
        state: &WorkerState,
        ctx: &JobContext,
        args: DatasetBuildArgs,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, JobError>> + Send {
        handle_build(state, ctx, args)
    }

    async fn cancelled(
        pool: &sqlx::PgPool,
        job: &queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        if let Some(dataset) = job.dataset_id {
            store::build_cancelled(pool, dataset).await?;
        }
        Ok(())
    }

    async fn retrying(
        conn: &mut sqlx::PgConnection,
        job: &queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        if let Some(dataset) = job.dataset_id {
            store::build_retrying(conn, dataset).await?;
        }
        Ok(())
    }
}
