//! Typed configuration: `config/trainyard.toml`, then `TRAINYARD_*` environment variables.
//!
//! Loaded once at start-up; a missing or bad value stops the process with a message that
//! names the key. Embedding models come from `config/embedding_models.toml` (first seed's
//! `[models.NAME]` format).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub queue: QueueSettings,
    pub datasets: DatasetSettings,
    pub local_model: LocalModelSettings,
    #[serde(default)]
    pub training: TrainingSettings,
    #[serde(default)]
    pub inference: InferenceSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub sources: BTreeMap<String, ExternalSource>,
    /// Filled from `embedding_models.toml`, not from `trainyard.toml`.
    #[serde(default)]
    pub embedding_models: BTreeMap<String, EmbeddingModelConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub max_body_bytes: usize,
    pub max_inputs_per_request: usize,
    pub max_text_chars: usize,
    pub page_size_max: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub heartbeat_secs: u64,
    pub missed_heartbeats: usize,
    pub fetch_batch: usize,
    pub poll_interval_ms: u64,
    pub max_attempts: i32,
    pub retry_base_secs: f64,
    pub retry_max_secs: f64,
    pub retention_hours: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieRule {
    Positive,
    Negative,
    Exclude,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSettings {
    pub embed_batch_size: usize,
    pub default_embedding_model: String,
    pub tie_rule: TieRule,
    pub split_seed: u64,
}

/// How `train` jobs run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSettings {
    /// Intra-op threads of one training run on CPU; 0 = all cores.
    pub threads: i32,
    /// Telemetry webhook for every run that names none: URL ("" = off) and the environment
    /// variable holding its Authorization header value.
    pub webhook_url: String,
    pub webhook_authorization_env: String,
    /// Seconds between progress writes to `training_runs`.
    pub progress_interval_secs: f64,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            threads: 0,
            webhook_url: String::new(),
            webhook_authorization_env: String::new(),
            progress_interval_secs: 1.0,
        }
    }
}

/// How promoted models are served.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceSettings {
    /// The model the root `/predict`, `/batch` and `/health` serve; "" = the most recently
    /// promoted one.
    pub default_model: String,
    /// How long the model thread waits after a request for others to batch with it.
    pub batch_wait_ms: u64,
    /// Model replicas (each single-threaded on CPU); 0 = all cores.
    pub threads: i32,
    /// Seconds between checks of the served versions (a backstop for missed notifications).
    pub reload_poll_secs: f64,
    /// Most texts in one `/batch` request.
    pub max_batch_texts: usize,
}

impl Default for InferenceSettings {
    fn default() -> Self {
        InferenceSettings {
            default_model: String::new(),
            batch_wait_ms: 2,
            threads: 0,
            reload_poll_secs: 5.0,
            max_batch_texts: 1024,
        }
    }
}

/// Logs and metrics. Trace and OTLP export are configured by the standard `OTEL_*` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `text` or `json` (overridden by `--log-format` or `TRAINYARD_LOG_FORMAT`).
    pub log_format: String,
    /// Where a worker serves Prometheus `/metrics` ("" = off; `serve` always has `/metrics`).
    pub worker_metrics_listen: String,
    /// Seconds between samples of the queue-wide gauges (by one process of the deployment).
    pub queue_sample_secs: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            log_format: "text".into(),
            worker_metrics_listen: String::new(),
            queue_sample_secs: 15.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalModelSettings {
    pub dir: String,
    pub threads: i32,
    pub max_tokens_per_batch: usize,
    pub device: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSource {
    pub documents_sql: String,
    pub annotations_sql: String,
    #[serde(default)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProviderType {
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingModelConfig {
    pub name: String,
    pub dimensions: usize,
    #[serde(rename = "type")]
    pub provider: ProviderType,
    #[serde(default)]
    pub api_endpoint: Option<String>,
    pub max_tokens: usize,
    pub max_batch_size: usize,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Concurrent requests to the provider from one worker.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Attempts per batch, including the first.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
}

fn default_concurrency() -> usize {
    4
}
fn default_attempts() -> u32 {
    5
}
fn default_timeout() -> f64 {
    60.0
}

#[derive(Deserialize)]
struct ModelsFile {
    models: BTreeMap<String, EmbeddingModelConfig>,
}

impl Settings {
    /// Loads `DIR/trainyard.toml` and `DIR/embedding_models.toml`, then the environment.
    pub fn load(config_dir: &Path) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new().merge(Toml::file(config_dir.join("trainyard.toml")));
        // Only TRAINYARD_<SECTION>__<KEY> variables are settings; the scripts' own
        // TRAINYARD_ROOT, TRAINYARD_URL, ... are not.
        figment = figment.merge(
            Env::prefixed("TRAINYARD_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            figment = figment.merge(Serialized::default("database.url", url));
        }
        if let Ok(dir) = std::env::var("TRAINYARD_LOCAL_MODEL_DIR") {
            let current: String = figment.extract_inner("local_model.dir").unwrap_or_default();
            if current.is_empty() {
                figment = figment.merge(Serialized::default("local_model.dir", dir));
            }
        }
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        let models_path = config_dir.join("embedding_models.toml");
        let text = std::fs::read_to_string(&models_path).map_err(|e| {
            invalid(
                "embedding_models",
                format!("{}: {e}", models_path.display()),
            )
        })?;
        let models: ModelsFile = toml::from_str(&text).map_err(|e| {
            invalid(
                "embedding_models",
                format!("{}: {e}", models_path.display()),
            )
        })?;
        settings.embedding_models = models.models;
        settings.validate()?;
        Ok(settings)
    }

    /// The config folder: `TRAINYARD_CONFIG_DIR`, else `./config`, else the one beside the repo.
    pub fn default_dir() -> PathBuf {
        if let Ok(dir) = std::env::var("TRAINYARD_CONFIG_DIR") {
            return PathBuf::from(dir);
        }
        let here = PathBuf::from("config");
        if here.join("trainyard.toml").exists() {
            return here;
        }
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    /// The API document declares hard limits (`api::limits`); configuration may lower them,
    /// never raise them, or the document would promise less than the server accepts.
    fn check_api_limits(&self) -> Result<(), ConfigError> {
        use crate::api::limits::*;
        let bounds: [(&str, usize, usize); 5] = [
            (
                "server.max_body_bytes",
                self.server.max_body_bytes,
                MAX_BODY_BYTES,
            ),
            (
                "server.max_inputs_per_request",
                self.server.max_inputs_per_request,
                MAX_INPUTS_PER_REQUEST,
            ),
            (
                "server.max_text_chars",
                self.server.max_text_chars,
                MAX_TEXT_CHARS,
            ),
            (
                "server.page_size_max",
                usize::try_from(self.server.page_size_max).unwrap_or(0),
                PAGE_SIZE_MAX as usize,
            ),
            (
                "inference.max_batch_texts",
                self.inference.max_batch_texts,
                MAX_BATCH_TEXTS,
            ),
        ];
        for (key, value, max) in bounds {
            if value == 0 || value > max {
                return Err(invalid(
                    key,
                    format!(
                        "must be between 1 and {max} (the limit the API document declares; \
                         configuration may only lower it), got {value}"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.telemetry.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "telemetry.log_format",
                format!("`{}` is not text or json", self.telemetry.log_format),
            ));
        }
        let listen = &self.telemetry.worker_metrics_listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "telemetry.worker_metrics_listen",
                format!("`{listen}` is not host:port"),
            ));
        }
        if self.telemetry.queue_sample_secs.is_nan() || self.telemetry.queue_sample_secs < 0.5 {
            return Err(invalid(
                "telemetry.queue_sample_secs",
                "must be at least 0.5 seconds",
            ));
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not host:port", self.server.listen),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        self.check_api_limits()?;
        if !self.database.url.starts_with("postgres") {
            return Err(invalid("database.url", "must be a postgres:// URL"));
        }
        if self.queue.heartbeat_secs == 0 || self.queue.missed_heartbeats == 0 {
            return Err(invalid(
                "queue.heartbeat_secs",
                "heartbeat and missed_heartbeats must be > 0",
            ));
        }
        if self.queue.fetch_batch == 0 {
            return Err(invalid("queue.fetch_batch", "must be > 0"));
        }
        if self.queue.max_attempts < 1 {
            return Err(invalid("queue.max_attempts", "must be >= 1"));
        }
        if !(self.queue.retry_base_secs >= 0.0
            && self.queue.retry_max_secs >= self.queue.retry_base_secs)
        {
            return Err(invalid(
                "queue.retry_base_secs",
                "need 0 <= retry_base_secs <= retry_max_secs",
            ));
        }
        if self.datasets.embed_batch_size == 0 {
            return Err(invalid("datasets.embed_batch_size", "must be > 0"));
        }
        if !self
            .embedding_models
            .contains_key(&self.datasets.default_embedding_model)
        {
            return Err(invalid(
                "datasets.default_embedding_model",
                format!(
                    "`{}` is not in embedding_models.toml",
                    self.datasets.default_embedding_model
                ),
            ));
        }
        if !matches!(self.local_model.device.as_str(), "auto" | "cpu" | "cuda") {
            return Err(invalid("local_model.device", "must be auto, cpu or cuda"));
        }
        for (key, model) in &self.embedding_models {
            let at = |field: &str| format!("embedding_models.{key}.{field}");
            if model.dimensions == 0 {
                return Err(invalid(&at("dimensions"), "must be > 0"));
            }
            if model.max_batch_size == 0 {
                return Err(invalid(&at("max_batch_size"), "must be > 0"));
            }
            if model.provider == ProviderType::OpenAiCompatible && model.api_endpoint.is_none() {
                return Err(invalid(
                    &at("api_endpoint"),
                    "required for type openai-compatible",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, extra: &str) {
        let base = std::fs::read_to_string(Settings::default_dir().join("trainyard.toml")).unwrap();
        std::fs::write(dir.join("trainyard.toml"), format!("{base}\n{extra}")).unwrap();
        std::fs::copy(
            Settings::default_dir().join("embedding_models.toml"),
            dir.join("embedding_models.toml"),
        )
        .unwrap();
    }

    #[test]
    fn shipped_config_loads() {
        let settings = Settings::load(&Settings::default_dir()).unwrap();
        assert_eq!(
            settings.embedding_models["all-MiniLM-L6-v2"].dimensions,
            384
        );
        assert!(settings.sources.contains_key("bilibili"));
    }

    #[test]
    fn bad_value_names_the_key() {
        let dir = std::env::temp_dir().join(format!("ty-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(Settings::default_dir().join("trainyard.toml")).unwrap();
        std::fs::write(
            dir.join("trainyard.toml"),
            text.replace("heartbeat_secs = 5", "heartbeat_secs = \"soon\""),
        )
        .unwrap();
        write_config(&dir, "");
        std::fs::write(
            dir.join("trainyard.toml"),
            text.replace("heartbeat_secs = 5", "heartbeat_secs = \"soon\""),
        )
        .unwrap();
        let err = Settings::load(&dir).unwrap_err().to_string();
        assert!(err.contains("heartbeat_secs"), "{err}");
        std::fs::write(
            dir.join("trainyard.toml"),
            text.replace("tie_rule = \"exclude\"", "tie_rule = \"coin\""),
        )
        .unwrap();
        let err = Settings::load(&dir).unwrap_err().to_string();
        assert!(err.contains("tie_rule"), "{err}");
    }

    #[test]
    fn limits_above_the_documented_bounds_are_refused() {
        let dir = std::env::temp_dir().join(format!("ty-config-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = std::fs::read_to_string(Settings::default_dir().join("trainyard.toml")).unwrap();
        write_config(&dir, "");
        for (from, to, key) in [
            (
                "max_text_chars = 100000",
                "max_text_chars = 100001",
                "server.max_text_chars",
            ),
            (
                "page_size_max = 1000",
                "page_size_max = 5000",
                "server.page_size_max",
            ),
            (
                "max_batch_texts = 1024",
                "max_batch_texts = 0",
                "inference.max_batch_texts",
            ),
            (
                "max_body_bytes = 16777216",
                "max_body_bytes = 16777217",
                "server.max_body_bytes",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            std::fs::write(dir.join("trainyard.toml"), text.replace(from, to)).unwrap();
            let err = Settings::load(&dir).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("may only lower"), "{err}");
        }
        // Lowering is fine.
        std::fs::write(
            dir.join("trainyard.toml"),
            text.replace("max_text_chars = 100000", "max_text_chars = 5000"),
        )
        .unwrap();
        assert_eq!(Settings::load(&dir).unwrap().server.max_text_chars, 5000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
