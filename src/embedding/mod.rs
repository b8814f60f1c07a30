//! Embedding providers behind one type: the local MiniLM (tch) or an OpenAI-compatible API.
pub mod openai_compatible;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{EmbeddingModelConfig, ProviderType, Settings};
use crate::ml::text_encoder::{pick_device, EncoderOptions, TextEncoder};
use openai_compatible::OpenAiCompatibleClient;

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

#[derive(Clone)]
pub enum Provider {
    Local(TextEncoder),
    OpenAiCompatible(OpenAiCompatibleClient),
}

/// The configured models; the local encoder is started on first use and then shared.
#[derive(Clone)]
pub struct Embedders {
    settings: Arc<Settings>,
    local: Arc<tokio::sync::OnceCell<TextEncoder>>,
}

impl Embedders {
    pub fn new(settings: Arc<Settings>) -> Self {
        Embedders {
            settings,
            local: Arc::new(tokio::sync::OnceCell::new()),
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

    /// The local encoder (loaded once per process, on its own thread).
    pub async fn local_encoder(&self) -> Result<TextEncoder, EmbedError> {
        let settings = self.settings.clone();
        self.local
            .get_or_try_init(|| async move {
                let local = settings
                    .embedding_models
                    .values()
                    .find(|m| m.provider == ProviderType::Local)
                    .ok_or_else(|| EmbedError::Fatal("no local model configured".into()))?;
                let options = EncoderOptions {
                    model_dir: settings.local_model.dir.clone().into(),
                    max_tokens: local.max_tokens,
                    max_tokens_per_batch: settings.local_model.max_tokens_per_batch,
                    threads: settings.local_model.threads,
                    device: pick_device(&settings.local_model.device),
                    classifier: None,
                    batch_wait: std::time::Duration::ZERO,
                };
                tokio::task::spawn_blocking(move || TextEncoder::start(options))
                    .await
                    .map_err(|e| EmbedError::Fatal(e.to_string()))?
                    .map_err(|e| EmbedError::Fatal(e.to_string()))
            })
            .await
            .cloned()
    }

    pub async fn provider(&self, name: &str) -> Result<Provider, EmbedError> {
        let model = self.model(name)?.clone();
        match model.provider {
            ProviderType::Local => Ok(Provider::Local(self.local_encoder().await?)),
            ProviderType::OpenAiCompatible => Ok(Provider::OpenAiCompatible(
                OpenAiCompatibleClient::new(model)?,
            )),
        }
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
    ) -> Result<(Vec<Vec<f32>>, Option<u64>), EmbedError> {
        match self.provider(name).await? {
            Provider::Local(encoder) => encoder
                .encode(texts)
                .await
                .map(|e| {
                    let tokens = e.token_counts.iter().map(|&n| n as u64).sum();
                    (e.vectors, Some(tokens))
                })
                .map_err(|e| EmbedError::Fatal(e.to_string())),
            Provider::OpenAiCompatible(client) => client.embed_with_usage(&texts).await,
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
