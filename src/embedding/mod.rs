//! Embedding providers behind one type: local BERT-family checkpoints (tch; all-MiniLM-L6-v2
//! by default, any folder named in embedding_models.toml) or a remote API (each `type` of
//! `config::EmbeddingProvider` but `local` has its client in a file of its own here, e.g.
//! `openai_compatible`, and one line in `Embedders::provider`).
pub mod openai_compatible;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::config::{EmbeddingModelConfig, EmbeddingProvider, LongTexts, Settings};
use crate::ml::encoder::{folder_pooling, PoolingSpec};
use crate::ml::text_encoder::{pick_device, EncoderOptions, TextEncoder, Windows};
use openai_compatible::OpenAiCompatibleClient;

/// A `type = "local"` model's checkpoint folder and how its embeddings are made.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalCheckpoint {
    pub dir: PathBuf,
    pub pooling: PoolingSpec,
    /// Tokens per text, special tokens included (the model's `max_tokens`).
    pub max_tokens: usize,
    /// `long_texts = "windows"`: how long texts become windows (`None`: cut).
    pub windows: Option<Windows>,
}

/// Resolves the local model `key` of `embedding_models.toml`: its folder (`dir` with
/// `${VAR}` expanded, else `local_model.dir`) and its pooling (the entry's, else the folder's
/// sentence-transformers files, else mean + L2). Fails with a message naming the key when the
/// model is not local or the folder has no `config.json`.
pub fn local_checkpoint(settings: &Settings, key: &str) -> Result<LocalCheckpoint, EmbedError> {
    let model = settings
        .embedding_models
        .get(key)
        .ok_or_else(|| EmbedError::UnknownModel(key.to_string()))?;
    let Some(local) = model.local() else {
        return Err(EmbedError::Fatal(format!(
            "embedding model `{key}` is not a local model"
        )));
    };
    let dir = match &local.dir {
        Some(dir) => shellexpand::env(dir)
            .map_err(|e| {
                EmbedError::Fatal(format!(
                    "embedding_models.{key}.dir: ${{{}}} is not set",
                    e.var_name
                ))
            })?
            .into_owned(),
        None => settings.local_model.dir.clone(),
    };
    if dir.is_empty() {
        return Err(EmbedError::Fatal(format!(
            "embedding model `{key}` has no folder: set its `dir` or local_model.dir"
        )));
    }
    let dir = PathBuf::from(dir);
    if !dir.join("config.json").is_file() {
        return Err(EmbedError::Fatal(format!(
            "embedding model `{key}`: {} has no config.json",
            dir.display()
        )));
    }
    // An explicit `pooling` and `normalize` override the folder's files (even ones trainyard
    // could not follow); otherwise the folder decides, and an unsupported pipeline is refused.
    let (folder_mode, folder_normalize) = match (local.pooling, local.normalize) {
        (Some(_), Some(_)) => (None, None),
        _ => folder_pooling(&dir)
            .map_err(|e| EmbedError::Fatal(format!("embedding model `{key}`: {e}")))?,
    };
    let pooling = PoolingSpec {
        pooling: local.pooling.or(folder_mode).unwrap_or_default(),
        normalize: local.normalize.or(folder_normalize).unwrap_or(true),
    };
    let windows = (local.long_texts == LongTexts::Windows).then(|| Windows {
        // A quarter of the text tokens of a window (its special tokens are about 2).
        overlap: local
            .window_overlap
            .unwrap_or(model.max_tokens.saturating_sub(2) / 4),
        max_windows: local.max_windows.unwrap_or(16),
    });
    Ok(LocalCheckpoint {
        dir,
        pooling,
        max_tokens: model.max_tokens,
        windows,
    })
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    /// Worth trying again later (timeouts, 429, 5xx, garbage bodies).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way every time (misconfiguration, wrong dimensions, 4xx).
    #[error("{0}")]
    Fatal(String),
    #[error("unknown embedding model `{0}`")]
    UnknownModel(String),
}

impl EmbedError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, EmbedError::Retryable(_))
    }
}

/// Vectors, in the order of the texts, and the tokens embedded when the provider counted them.
pub type Embedded = (Vec<Vec<f32>>, Option<u64>);

/// The client of a remote embedding API (every `type` but `local`).
pub trait RemoteProvider: Send + Sync {
    /// Embeds all `texts` (batched and retried as the provider's keys say); every vector has
    /// the model's dimensions.
    fn embed_texts<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Embedded, EmbedError>>;
}

#[derive(Clone)]
pub enum Provider {
    Local(TextEncoder),
    Remote(Arc<dyn RemoteProvider>),
}

type EncoderCell = Arc<tokio::sync::OnceCell<TextEncoder>>;

/// The configured models; each local model's encoder is started on first use and then shared.
#[derive(Clone)]
pub struct Embedders {
    settings: Arc<Settings>,
    local: Arc<Mutex<BTreeMap<String, EncoderCell>>>,
}

impl Embedders {
    pub fn new(settings: Arc<Settings>) -> Self {
        Embedders {
            settings,
            local: Default::default(),
        }
    }

    pub fn models(&self) -> &BTreeMap<String, EmbeddingModelConfig> {
        &self.settings.embedding_models
    }

    pub fn model(&self, name: &str) -> Result<&EmbeddingModelConfig, EmbedError> {
        self.settings
            .embedding_models
            .get(name)
            .ok_or_else(|| EmbedError::UnknownModel(name.to_string()))
    }

    /// The encoder of local model `key` (loaded once per process, on its own threads); checks
    /// that it outputs the configured number of dimensions.
    pub async fn local_encoder(&self, key: &str) -> Result<TextEncoder, EmbedError> {
        let cell = self
            .local
            .lock()
            .expect("the encoder map's lock is never poisoned")
            .entry(key.to_string())
            .or_default()
            .clone();
        if let Some(encoder) = cell.get() {
            return Ok(encoder.clone());
        }
        let checkpoint = local_checkpoint(&self.settings, key)?;
        let dimensions = self.model(key)?.dimensions;
        let settings = self.settings.clone();
        let key = key.to_string();
        cell.get_or_try_init(|| async move {
            let options = EncoderOptions {
                model_dir: checkpoint.dir,
                max_tokens: checkpoint.max_tokens,
                max_tokens_per_batch: settings.local_model.max_tokens_per_batch,
                threads: settings.local_model.threads,
                device: pick_device(settings.local_model.device),
                pooling: checkpoint.pooling,
                classifier: None,
                batch_wait: std::time::Duration::ZERO,
                windows: checkpoint.windows,
            };
            let encoder = tokio::task::spawn_blocking(move || TextEncoder::start(options))
                .await
                .map_err(|e| EmbedError::Fatal(e.to_string()))?
                .map_err(|e| EmbedError::Fatal(e.to_string()))?;
            if encoder.dimensions != dimensions {
                return Err(EmbedError::Fatal(format!(
                    "embedding model `{key}` outputs {} dimensions; embedding_models.toml says {dimensions}",
                    encoder.dimensions
                )));
            }
            Ok(encoder)
        })
        .await
        .cloned()
    }

    /// The model's provider: its local encoder, or a client of its `type`'s API.
    pub async fn provider(&self, name: &str) -> Result<Provider, EmbedError> {
        fn remote(client: impl RemoteProvider + 'static) -> Provider {
            Provider::Remote(Arc::new(client))
        }
        let model = self.model(name)?.clone();
        Ok(match &model.provider {
            EmbeddingProvider::Local(_) => Provider::Local(self.local_encoder(name).await?),
            EmbeddingProvider::OpenAiCompatible(_) => remote(OpenAiCompatibleClient::new(model)?),
        })
    }

    /// Embeds texts with the named model; every vector has the model's dimensions.
    pub async fn embed(&self, name: &str, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(self.embed_counted(name, texts).await?.0)
    }

    /// As `embed`, plus the tokens embedded: counted by the local tokenizer (after
    /// truncation), or as the provider reported them (`None` when it did not).
    pub async fn embed_counted(
        &self,
        name: &str,
        texts: Vec<String>,
    ) -> Result<Embedded, EmbedError> {
        match self.provider(name).await? {
            Provider::Local(encoder) => encoder
                .encode(texts)
                .await
                .map(|e| {
                    let tokens = e.token_counts.iter().map(|&n| n as u64).sum();
                    (e.vectors, Some(tokens))
                })
                .map_err(|e| EmbedError::Fatal(e.to_string())),
            Provider::Remote(client) => client.embed_texts(&texts).await,
        }
    }
}

/// Little-endian f32 bytes, the storage format of `embeddings.vector`.
pub fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bytes_to_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
