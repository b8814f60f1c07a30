//! A model version as a folder other tools load (sent as a tar): a finetuned encoder that
//! Hugging Face `transformers` opens with `AutoModel.from_pretrained` (config, tokenizer,
//! `model.safetensors`; sentence-transformers' module files too), the head as
//! `head.safetensors`, and `trainyard.json` with labels, thresholds, pooling and truncation.
//! A head-only version exports its head and names the embedding model it reads.
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{PgPool, Row};

use crate::config::Settings;
use crate::datasets::TaskType;
use crate::ml::classifier::{ClassifierSpec, TrainMode};
use crate::ml::encoder::{EncoderConfig, Pooling, PoolingSpec};

/// The export's format, written into `trainyard.json`.
pub const FORMAT: &str = "trainyard-export/1";

/// Files copied from the base model's folder next to the finetuned weights (those present).
const TOKENIZER_FILES: [&str; 3] = ["vocab.txt", "special_tokens_map.json", "added_tokens.json"];

/// A version's export: the tar as pieces to send in order (headers, each file's bytes as built,
/// padding; never one copy of the whole tar), and the folder name inside it.
pub struct Export {
    pub folder: String,
    pub pieces: Vec<Vec<u8>>,
}

impl Export {
    /// The tar's length in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole tar in one buffer (tests, the CLI).
    pub fn into_bytes(self) -> Vec<u8> {
        self.pieces.concat()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The version cannot be exported here (its base model's folder is missing, ...).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

struct VersionRow {
    spec: ClassifierSpec,
    embedding_model: String,
    thresholds: Vec<f32>,
    weights: Vec<u8>,
    metrics: Value,
    dataset_id: Option<uuid::Uuid>,
    run_id: Option<uuid::Uuid>,
    created_at: DateTime<Utc>,
}

/// The export of `name` version `version`; `None` when there is no such version.
pub async fn export_version(
    pool: &PgPool,
    settings: &Settings,
    name: &str,
    version: i32,
) -> Result<Option<Export>, ExportError> {
    let Some(row) = sqlx::query(
        "SELECT spec, embedding_model, thresholds, weights, weights_artifact, metrics, dataset_id,
                run_id, created_at
         FROM model_versions WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let row = VersionRow {
        spec: serde_json::from_value(row.get("spec"))
            .map_err(|e| ExportError::Internal(format!("stored spec: {e}")))?,
        embedding_model: row.get("embedding_model"),
        thresholds: serde_json::from_value(row.get("thresholds")).unwrap_or_default(),
        weights: crate::artifacts::read_either(
            pool,
            row.get("weights_artifact"),
            row.get("weights"),
        )
        .await?,
        metrics: row.get("metrics"),
        dataset_id: row.get("dataset_id"),
        run_id: row.get("run_id"),
        created_at: row.get("created_at"),
    };
    let settings = settings.clone();
    let (name, folder) = (name.to_string(), format!("{name}-v{version}"));
    tokio::task::spawn_blocking(move || {
        let pieces = build(&settings, &name, version, &folder, row)?;
        Ok(Some(Export { folder, pieces }))
    })
    .await
    .map_err(|e| ExportError::Internal(e.to_string()))?
}

fn build(
    settings: &Settings,
    name: &str,
    version: i32,
    folder: &str,
    mut row: VersionRow,
) -> Result<Vec<Vec<u8>>, ExportError> {
    let spec = &row.spec;
    row.thresholds.resize(spec.labels.len(), 0.5);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // A finetuned encoder's folder: the base the weights were trained from.
    let base = match spec.mode {
        TrainMode::Finetune => Some(
            crate::inference::version_encoder(settings, spec, &row.embedding_model)
                .map_err(ExportError::Unavailable)?,
        ),
        TrainMode::Head => None,
    };
    if let Some(base) = &base {
        crate::ml::encoder::checkpoint_file(&base.dir)
            .map_err(|e| ExportError::Unavailable(e.to_string()))?;
    }
    let weights =
        crate::ml::export::export_weights(&row.weights, base.as_ref().map(|b| b.dir.as_path()))
            .map_err(|e| ExportError::Internal(format!("{e:#}")))?;
    // The stored blob is not needed past this point: one copy of the weights, not two.
    drop(std::mem::take(&mut row.weights));
    // Truncation: the run's for a finetune, the embedding model's (when configured) for a head.
    let max_tokens = match &base {
        Some(b) => Some(b.max_tokens),
        None => settings
            .embedding_models
            .get(&row.embedding_model)
            .map(|m| m.max_tokens),
    };
    let crate::ml::export::ExportedWeights {
        encoder,
        head,
        head_shapes,
    } = weights;
    if let Some(base) = &base {
        let encoder = encoder.ok_or_else(|| {
            ExportError::Internal("a finetuned version without encoder weights".into())
        })?;
        files.extend(encoder_files(&base.dir, base.max_tokens, spec)?);
        files.push(("model.safetensors".into(), encoder));
    }
    files.push(("head.safetensors".into(), head));
    let manifest = manifest(name, version, &row, &head_shapes, max_tokens, settings);
    files.push((
        "trainyard.json".into(),
        serde_json::to_vec_pretty(&manifest).expect("JSON serializes"),
    ));
    files.push(("README.md".into(), readme(name, version, spec).into_bytes()));

    let mtime = row.created_at.timestamp().max(0) as u64;
    let mut dirs: Vec<String> = vec![String::new()];
    for (path, _) in &files {
        if let Some((dir, _)) = path.rsplit_once('/') {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_string());
            }
        }
    }
    // A tar by hand so that each file's bytes are sent as they are: a 512-byte header (long
    // names get GNU's extension block from `tar::Builder`), the bytes, padding to 512.
    let header_of = |path: &str, size: u64, directory: bool| -> Result<Vec<u8>, ExportError> {
        let mut header = tar::Header::new_gnu();
        if directory {
            header.set_entry_type(tar::EntryType::Directory);
        }
        header.set_mode(if directory { 0o755 } else { 0o644 });
        header.set_mtime(mtime);
        header.set_size(size);
        let mut out = tar::Builder::new(Vec::new());
        out.append_data(&mut header, path, std::io::empty())
            .map_err(|e| ExportError::Internal(format!("tar: {e}")))?;
        // `append_data` wrote the header (and any long-name block) for an empty body: the
        // size field is what the reader follows.
        let mut bytes = out
            .into_inner()
            .map_err(|e| ExportError::Internal(format!("tar: {e}")))?;
        bytes.truncate(bytes.len() - 1024); // the two end-of-archive blocks
        Ok(bytes)
    };
    let mut pieces = Vec::with_capacity(dirs.len() + 3 * files.len() + 1);
    for dir in &dirs {
        let path = if dir.is_empty() {
            format!("{folder}/")
        } else {
            format!("{folder}/{dir}/")
        };
        pieces.push(header_of(&path, 0, true)?);
    }
    for (path, bytes) in files {
        pieces.push(header_of(
            &format!("{folder}/{path}"),
            bytes.len() as u64,
            false,
        )?);
        let padding = (512 - bytes.len() % 512) % 512;
        pieces.push(bytes);
        if padding > 0 {
            pieces.push(vec![0; padding]);
        }
    }
    pieces.push(vec![0; 1024]);
    Ok(pieces)
}

/// The finetuned encoder's companions: its config, the tokenizer as trainyard runs it
/// (truncation at `max_tokens`, no padding), and sentence-transformers' module files.
fn encoder_files(
    dir: &Path,
    max_tokens: usize,
    spec: &ClassifierSpec,
) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| ExportError::Unavailable(format!("{}: {e}", dir.join(name).display())))
    };
    let mut files = Vec::new();
    let config_bytes = read("config.json")?;
    let config = serde_json::from_slice(&config_bytes)
        .map_err(anyhow::Error::from)
        .and_then(EncoderConfig::from_json)
        .map_err(|e| ExportError::Unavailable(format!("{}/config.json: {e:#}", dir.display())))?;
    files.push(("config.json".to_string(), config_bytes));
    let tokenizer = crate::ml::text_encoder::load_tokenizer(dir, max_tokens)
        .map_err(|e| ExportError::Unavailable(e.to_string()))?;
    let tokenizer = tokenizer
        .to_string(true)
        .map_err(|e| ExportError::Internal(format!("tokenizer: {e}")))?;
    files.push(("tokenizer.json".into(), tokenizer.into_bytes()));
    let mut tokenizer_config: Value = std::fs::read(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        // Without the base's file: the class only. `tokenizer.json` carries the normalizer
        // (lower-casing, accents) that trainyard ran; guessing `do_lower_case` here could
        // make transformers rebuild a different one.
        .unwrap_or_else(|| json!({"tokenizer_class": "BertTokenizer"}));
    tokenizer_config["model_max_length"] = json!(max_tokens);
    files.push((
        "tokenizer_config.json".into(),
        serde_json::to_vec_pretty(&tokenizer_config).expect("JSON serializes"),
    ));
    for name in TOKENIZER_FILES {
        if dir.join(name).is_file() {
            files.push((name.to_string(), read(name)?));
        }
    }
    let pooling = spec.pooling;
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if pooling.normalize {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    let pretty = |v: Value| serde_json::to_vec_pretty(&v).expect("JSON serializes");
    files.push(("modules.json".into(), pretty(json!(modules))));
    files.push((
        "sentence_bert_config.json".into(),
        pretty(json!({"max_seq_length": max_tokens, "do_lower_case": false})),
    ));
    files.push((
        "1_Pooling/config.json".into(),
        pretty(json!({
            "word_embedding_dimension": config.shape.hidden_size,
            "pooling_mode_cls_token": pooling.pooling == Pooling::Cls,
            "pooling_mode_mean_tokens": pooling.pooling == Pooling::Mean,
            "pooling_mode_max_tokens": false,
            "pooling_mode_mean_sqrt_len_tokens": false,
            "pooling_mode_weightedmean_tokens": false,
            "pooling_mode_lasttoken": false,
            "include_prompt": true
        })),
    ));
    Ok(files)
}

fn pooling_json(p: PoolingSpec) -> Value {
    json!({"mode": p.pooling.as_str(), "normalize": p.normalize})
}

/// `trainyard.json`: everything needed to reproduce the version's scores elsewhere.
fn manifest(
    name: &str,
    version: i32,
    row: &VersionRow,
    head_shapes: &[(String, Vec<i64>)],
    max_tokens: Option<usize>,
    settings: &Settings,
) -> Value {
    let spec = &row.spec;
    let embedding = settings.embedding_models.get(&row.embedding_model);
    // A head on a `long_texts = "windows"` model was trained (and is served) on pooled windows.
    let windows = match spec.mode {
        TrainMode::Head => crate::embedding::local_checkpoint(settings, &row.embedding_model)
            .ok()
            .and_then(|c| c.windows),
        TrainMode::Finetune => None,
    };
    let activation = match spec.task {
        TaskType::MultiClass => "softmax",
        _ => "sigmoid",
    };
    let mut layers = Vec::new();
    if head_shapes.iter().any(|(n, _)| n == "hidden.weight") {
        layers
            .push(json!({"weight": "hidden.weight", "bias": "hidden.bias", "activation": "relu"}));
    }
    layers.push(json!({"weight": "out.weight", "bias": "out.bias", "activation": null}));
    let mode = match spec.mode {
        TrainMode::Head => "head",
        TrainMode::Finetune => "finetune",
    };
    json!({
        "format": FORMAT,
        "model": name,
        "version": version,
        "mode": mode,
        "task": spec.task,
        "labels": spec.labels,
        "thresholds": row.thresholds,
        "decision": "a label is positive when its score >= its threshold",
        "activation": activation,
        "encoder": match spec.mode {
            TrainMode::Finetune => json!({
                "path": ".",
                "loads_with": "transformers.AutoModel.from_pretrained(folder)",
                "base_model": row.embedding_model,
            }),
            TrainMode::Head => Value::Null,
        },
        "embedding_model": {
            "name": row.embedding_model,
            "type": embedding.map(|m| m.provider.type_name()),
            "model_name": embedding.map(|m| m.name.clone()),
            "dimensions": embedding.map(|m| m.dimensions),
        },
        // Only a local encoder's pooling is trainyard's to state: a head on a provider's
        // vectors reads them as the provider makes them.
        "pooling": match (spec.mode, embedding.map(|m| m.is_local())) {
            (TrainMode::Head, Some(true)) | (TrainMode::Finetune, _) => pooling_json(spec.pooling),
            _ => Value::Null,
        },
        "truncation": {
            "max_tokens": max_tokens,
            "side": "right",
            "special_tokens_included": true,
            "long_texts": match windows {
                None => json!("truncate"),
                Some(w) => json!({"windows": {
                    "overlap_tokens": w.overlap,
                    "max_windows": w.max_windows,
                    "pooled": "mean of the windows' vectors weighted by their text tokens, L2-normalised when the pooling normalises"
                }}),
            }
        },
        "token_type_ids": "all zeros",
        "head": {
            "file": "head.safetensors",
            "input_dim": spec.input_dim,
            "layers": layers,
            "tensors": head_shapes.iter().map(|(n, s)| json!({"name": n, "shape": s})).collect::<Vec<_>>(),
        },
        "metrics": row.metrics,
        "dataset_id": row.dataset_id,
        "run_id": row.run_id,
        "created_at": row.created_at,
        "exported_by": format!("trainyard {}", env!("CARGO_PKG_VERSION")),
    })
}

fn readme(name: &str, version: i32, spec: &ClassifierSpec) -> String {
    let folder = format!("{name}-v{version}");
    let pool = match spec.pooling.pooling {
        Pooling::Mean => "m = b[\"attention_mask\"].unsqueeze(-1).float()\n        x = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)",
        Pooling::Cls => "x = h[:, 0]",
    };
    let normalize = if spec.pooling.normalize {
        "\n        x = torch.nn.functional.normalize(x, dim=-1)"
    } else {
        ""
    };
    let activation = match spec.task {
        TaskType::MultiClass => "torch.softmax(logits, -1)",
        _ => "torch.sigmoid(logits)",
    };
    let encoder = match spec.mode {
        TrainMode::Finetune => format!(
            "tok = AutoTokenizer.from_pretrained(\"{folder}\")\nenc = AutoModel.from_pretrained(\"{folder}\").eval()\n\ndef embed(texts):\n    b = tok(texts, padding=True, truncation=True, return_tensors=\"pt\",\n            max_length=meta[\"truncation\"][\"max_tokens\"])\n    b[\"token_type_ids\"] = torch.zeros_like(b[\"input_ids\"])\n    with torch.no_grad():\n        h = enc(**b).last_hidden_state\n        {pool}{normalize}\n    return x\n"
        ),
        TrainMode::Head => "# This version is a head on the embedding model named in trainyard.json\n# (`embedding_model`); compute its embeddings (with its pooling and truncation) as `x`.\n".to_string(),
    };
    format!(
        "# {name} version {version}, exported by trainyard\n\n\
`trainyard.json` holds the labels, thresholds (a label is positive when its score is >= its\n\
threshold), pooling, truncation and metrics. `head.safetensors` is the classifier head\n\
(`torch.nn.Linear` layout). {finetune}\n\n\
```python\n\
import json, torch\n\
from safetensors.torch import load_file\n\
from transformers import AutoModel, AutoTokenizer\n\n\
meta = json.load(open(\"{folder}/trainyard.json\"))\n\
head = load_file(\"{folder}/head.safetensors\")\n\
{encoder}\n\
def scores(x):\n\
    if \"hidden.weight\" in head:\n\
        x = torch.relu(x @ head[\"hidden.weight\"].T + head[\"hidden.bias\"])\n\
    logits = x @ head[\"out.weight\"].T + head[\"out.bias\"]\n\
    return {activation}\n\
```\n",
        finetune = match spec.mode {
            TrainMode::Finetune => "The finetuned encoder is this folder itself: `AutoModel.from_pretrained` and\n`AutoTokenizer.from_pretrained` load it, and `SentenceTransformer` gives its pooled embeddings.",
            TrainMode::Head => "The encoder was not trained: the head reads the embedding model's vectors.",
        },
    )
}
