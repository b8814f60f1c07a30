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

use crate::telemetry::LogFormat;

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
    pub scoring: ScoringSettings,
    #[serde(default)]
    pub review: ReviewSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub auth: AuthSettings,
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
    /// Expensive requests (model, dataset and scoring exports, the review queue) one API
    /// process runs at once; more are answered 503 `busy` with `Retry-After`.
    #[serde(default = "default_heavy_requests")]
    pub max_concurrent_heavy_requests: usize,
}

fn default_heavy_requests() -> usize {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a query waits for a pooled connection (or for a new one while Postgres is
    /// unreachable) before the request is answered 503.
    #[serde(default = "default_acquire_timeout_secs")]
    pub acquire_timeout_secs: f64,
}

fn default_acquire_timeout_secs() -> f64 {
    2.0
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
    /// After SIGTERM a worker takes no new jobs and gives running ones this long to finish;
    /// then it hands what is left back to the queue and exits 0.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: f64,
    /// A worker process reads the cancel flags of the jobs it runs and writes their progress
    /// this often, for all of them in one statement each (a cancel is seen this late at most).
    #[serde(default = "default_tracker_interval_ms")]
    pub tracker_interval_ms: u64,
    pub retention_hours: f64,
}

/// When API tokens are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Required, unless `serve` listens on a loopback address only (then off, said loudly).
    Auto,
    Required,
    Off,
}

/// Whether inference (`/predict`, `/batch`, `…/models/{name}/predict|batch`) and
/// `/v1/embeddings` + `/v1/models` need a token with the `predict` scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferenceAccess {
    Public,
    Token,
}

/// `[auth]`: tokens, per-token rate limits and CORS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub inference: InferenceAccess,
    /// `/metrics` without a token (Prometheus scrapers usually carry none).
    pub public_metrics: bool,
    /// A verified token is trusted this long before it is checked again (revocation delay).
    pub token_cache_secs: f64,
    /// While the database is unreachable, a token verified this recently keeps working.
    pub outage_grace_secs: f64,
    /// Requests per second per token (and per client address for requests without one);
    /// 0 turns rate limiting off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Origins allowed by CORS (exact, e.g. `https://app.example.com`); empty = no CORS.
    /// `*` is allowed only with `cors_allow_credentials = false`.
    pub cors_origins: Vec<String>,
    pub cors_allow_credentials: bool,
    /// With auth off, the Host names answered besides loopback ones (a DNS-rebinding page
    /// sends its own site's name); empty = loopback names only.
    pub open_allowed_hosts: Vec<String>,
    /// Requests per second per client address (IPv6 by /64), checked before any token lookup;
    /// 0 turns it off.
    pub ip_rate_limit_per_second: u32,
    pub ip_rate_limit_burst: u32,
    /// Proxies (IP addresses) whose `X-Forwarded-For` names the client; from anyone else the
    /// header is ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::Auto,
            inference: InferenceAccess::Token,
            public_metrics: true,
            token_cache_secs: 5.0,
            outage_grace_secs: 300.0,
            rate_limit_per_second: 100,
            rate_limit_burst: 200,
            cors_origins: Vec::new(),
            cors_allow_credentials: false,
            open_allowed_hosts: Vec::new(),
            ip_rate_limit_per_second: 1000,
            ip_rate_limit_burst: 2000,
            trusted_proxies: Vec::new(),
        }
    }
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
    /// Hosts (names or IP addresses) a run's webhook may reach although they are internal
    /// (loopback, private, link-local); the operator's own `webhook_url` may reach anything.
    pub webhook_allowed_hosts: Vec<String>,
    /// The environment variable holding the key (base64 of 32 random bytes) that seals a
    /// run's webhook `Authorization` before it is stored; the same on API and workers.
    /// Unset: runs may not carry webhook credentials.
    pub secrets_key_env: String,
    /// Seconds between progress writes to `training_runs`.
    pub progress_interval_secs: f64,
    /// MiB of stored vectors a head run keeps in memory per split; a larger split is spilled
    /// to a temporary file and read a batch at a time.
    #[serde(default = "default_head_vectors_in_memory_mb")]
    pub head_vectors_in_memory_mb: usize,
}

fn default_head_vectors_in_memory_mb() -> usize {
    128
}

/// `queue.shutdown_grace_secs` when a config file predates it.
fn default_shutdown_grace_secs() -> f64 {
    30.0
}

fn default_tracker_interval_ms() -> u64 {
    250
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            threads: 0,
            webhook_url: String::new(),
            webhook_authorization_env: String::new(),
            webhook_allowed_hosts: Vec::new(),
            secrets_key_env: "TRAINYARD_SECRETS_KEY".into(),
            progress_interval_secs: 1.0,
            head_vectors_in_memory_mb: default_head_vectors_in_memory_mb(),
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

/// The review queue's rankings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewSettings {
    /// `uncertain`, `disagreement` and `uncovered` are ranked in the request when the source
    /// (every source when none is named) holds at most this many documents; a larger one is
    /// ranked by a `review_rank` job and the request answers 202 meanwhile.
    pub inline_max_documents: i64,
    /// `suspect_label`: most rows each label's out-of-fold models are fitted on (a per-class
    /// proportional sample chosen by a seeded hash of the document id); every document is
    /// still scored, by the model of the folds that exclude it.
    pub suspect_fit_max_rows: usize,
    /// `suspect_label`: MiB of vectors kept in memory; more are spilled to a temporary file.
    pub vectors_in_memory_mb: usize,
    /// Labelling (`/api/v1/labelling/next`): seconds a person holds the document they were
    /// given before anyone else may get it (renewed each time they ask again), 10 to 3,600.
    pub lease_secs: u64,
}

impl Default for ReviewSettings {
    fn default() -> Self {
        ReviewSettings {
            inline_max_documents: 20_000,
            suspect_fit_max_rows: 50_000,
            vectors_in_memory_mb: 128,
            lease_secs: 120,
        }
    }
}

/// Batch scoring jobs on the workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringSettings {
    /// Documents per `score` chunk job (the unit a worker claims, retries and counts).
    pub chunk_size: usize,
    /// Model replicas of a version loaded for scoring (each single-threaded on CPU); 0 = all
    /// cores.
    pub threads: i32,
}

impl Default for ScoringSettings {
    fn default() -> Self {
        ScoringSettings {
            chunk_size: 1000,
            threads: 0,
        }
    }
}

/// Logs and metrics. Trace and OTLP export are configured by the standard `OTEL_*` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `text` or `json` (overridden by `--log-format` or `TRAINYARD_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Where a worker serves Prometheus `/metrics` ("" = off; `serve` always has `/metrics`).
    pub worker_metrics_listen: String,
    /// Seconds between samples of the queue-wide gauges (by one process of the deployment).
    pub queue_sample_secs: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            log_format: LogFormat::Text,
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
    pub device: DeviceSetting,
}

/// `local_model.device`: where local models run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSetting {
    /// The first CUDA device when there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceSetting::Auto => "auto",
            DeviceSetting::Cpu => "cpu",
            DeviceSetting::Cuda => "cuda",
        }
    }
}

impl std::fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeviceSetting {
    type Err = String;

    /// `auto`, `cpu` or `cuda` (as a training run's `device` is stored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSetting::Auto),
            "cpu" => Ok(DeviceSetting::Cpu),
            "cuda" => Ok(DeviceSetting::Cuda),
            other => Err(format!("`{other}` is not auto, cpu or cuda")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSource {
    pub documents_sql: String,
    pub annotations_sql: String,
    #[serde(default)]
    pub database_url: Option<String>,
}

/// One `[models.NAME]` of `embedding_models.toml`: what every model has, and its `type` with
/// the keys that type takes (a key of another type is refused by name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingModelConfig {
    pub name: String,
    pub dimensions: usize,
    pub max_tokens: usize,
    pub max_batch_size: usize,
    /// `type = "…"` and that type's keys.
    #[serde(flatten)]
    pub provider: EmbeddingProvider,
}

/// An embedding model's `type`. A new type is a variant here (with its keys), its client in
/// `src/embedding/`, and one line of `embedding::Embedders::provider`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EmbeddingProvider {
    /// Run in-process with the local encoder.
    #[serde(rename = "local")]
    Local(LocalProvider),
    /// `POST {api_endpoint}/embeddings` with the key from `api_key_env`.
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible(OpenAiCompatibleProvider),
}

/// The keys of a `type = "local"` model.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalProvider {
    /// The checkpoint folder (`config.json`, `tokenizer.json`, `model.safetensors`); `${VAR}`
    /// is replaced by the environment variable. Absent: `local_model.dir` (the
    /// all-MiniLM-L6-v2 weights).
    #[serde(default)]
    pub dir: Option<String>,
    /// `mean` or `cls`. Absent: the folder's sentence-transformers `1_Pooling/config.json`,
    /// else `mean`.
    #[serde(default)]
    pub pooling: Option<crate::ml::encoder::Pooling>,
    /// L2-normalise embeddings. Absent: whether the folder's `modules.json` lists a
    /// `Normalize` module (true when the folder has no `modules.json`).
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Texts longer than `max_tokens` are cut there (`truncate`, the default) or embedded as
    /// overlapping windows whose vectors are averaged, weighted by their text tokens
    /// (`windows`).
    #[serde(default)]
    pub long_texts: LongTexts,
    /// `long_texts = "windows"`: tokens two consecutive windows share. Default a quarter of
    /// a window's text tokens.
    #[serde(default)]
    pub window_overlap: Option<usize>,
    /// `long_texts = "windows"`: most windows per text (the rest is cut). Default 16.
    #[serde(default)]
    pub max_windows: Option<usize>,
}

/// The keys of a `type = "openai-compatible"` model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiCompatibleProvider {
    /// The API's base URL; requests go to `{api_endpoint}/embeddings`.
    pub api_endpoint: String,
    /// The environment variable holding the API key (absent: no key is sent).
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

impl EmbeddingProvider {
    /// The `type` as written in `embedding_models.toml`.
    pub fn type_name(&self) -> &'static str {
        match self {
            EmbeddingProvider::Local(_) => "local",
            EmbeddingProvider::OpenAiCompatible(_) => "openai-compatible",
        }
    }

    /// A remote provider's base URL (`None` for a local model).
    pub fn api_endpoint(&self) -> Option<&str> {
        match self {
            EmbeddingProvider::Local(_) => None,
            EmbeddingProvider::OpenAiCompatible(p) => Some(&p.api_endpoint),
        }
    }

    /// The environment variable holding a remote provider's API key, when it needs one.
    pub fn api_key_env(&self) -> Option<&str> {
        match self {
            EmbeddingProvider::Local(_) => None,
            EmbeddingProvider::OpenAiCompatible(p) => p.api_key_env.as_deref(),
        }
    }

    /// Requests a remote provider has in flight at once from one worker (`None` for a local
    /// model, which runs in-process).
    pub fn max_concurrency(&self) -> Option<usize> {
        match self {
            EmbeddingProvider::Local(_) => None,
            EmbeddingProvider::OpenAiCompatible(p) => Some(p.max_concurrency),
        }
    }
}

impl EmbeddingModelConfig {
    /// The keys of a `type = "local"` model; `None` for any other type.
    pub fn local(&self) -> Option<&LocalProvider> {
        match &self.provider {
            EmbeddingProvider::Local(local) => Some(local),
            _ => None,
        }
    }

    pub fn local_mut(&mut self) -> Option<&mut LocalProvider> {
        match &mut self.provider {
            EmbeddingProvider::Local(local) => Some(local),
            _ => None,
        }
    }

    /// Whether the model runs in-process (`type = "local"`): only such a model serves
    /// `/v1/embeddings`, starts finetunes and has heads served on its vectors.
    pub fn is_local(&self) -> bool {
        self.local().is_some()
    }

    /// `embedding_models.KEY`: what serde cannot check.
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let at = |field: &str| format!("embedding_models.{key}.{field}");
        if self.dimensions == 0 {
            return Err(invalid(&at("dimensions"), "must be > 0"));
        }
        if self.max_batch_size == 0 {
            return Err(invalid(&at("max_batch_size"), "must be > 0"));
        }
        if let Some(local) = self.local() {
            if local.max_windows == Some(0) {
                return Err(invalid(&at("max_windows"), "must be > 0"));
            }
        }
        Ok(())
    }
}

/// What a local embedding model does with a text longer than its `max_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongTexts {
    #[default]
    Truncate,
    Windows,
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

    /// Each section in turn; the first problem stops start-up, naming its key.
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate()?;
        self.scoring.validate()?;
        self.review.validate()?;
        self.server.validate()?;
        self.auth.validate()?;
        self.database.validate()?;
        self.inference.validate()?;
        self.queue.validate()?;
        self.datasets.validate(&self.embedding_models)?;
        for (key, model) in &self.embedding_models {
            model.validate(key)?;
        }
        Ok(())
    }
}

/// The API document declares hard limits (`api::limits`); configuration may lower them, never
/// raise them, or the document would promise less than the server accepts.
fn within_api_limit(key: &str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value == 0 || value > max {
        return Err(invalid(
            key,
            format!(
                "must be between 1 and {max} (the limit the API document declares; \
                 configuration may only lower it), got {value}"
            ),
        ));
    }
    Ok(())
}

impl ServerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        use crate::api::limits::*;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("`{}` is not host:port", self.listen),
            ));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        within_api_limit("server.max_body_bytes", self.max_body_bytes, MAX_BODY_BYTES)?;
        within_api_limit(
            "server.max_inputs_per_request",
            self.max_inputs_per_request,
            MAX_INPUTS_PER_REQUEST,
        )?;
        within_api_limit("server.max_text_chars", self.max_text_chars, MAX_TEXT_CHARS)?;
        within_api_limit(
            "server.page_size_max",
            usize::try_from(self.page_size_max).unwrap_or(0),
            PAGE_SIZE_MAX as usize,
        )
    }
}

impl DatabaseSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be > 0"));
        }
        if !(self.acquire_timeout_secs >= 0.05 && self.acquire_timeout_secs <= 3600.0) {
            return Err(invalid(
                "database.acquire_timeout_secs",
                "must be between 0.05 and 3600 seconds",
            ));
        }
        if !self.url.starts_with("postgres") {
            return Err(invalid("database.url", "must be a postgres:// URL"));
        }
        Ok(())
    }
}

impl QueueSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_secs == 0 || self.missed_heartbeats == 0 {
            return Err(invalid(
                "queue.heartbeat_secs",
                "heartbeat and missed_heartbeats must be > 0",
            ));
        }
        if self.fetch_batch == 0 {
            return Err(invalid("queue.fetch_batch", "must be > 0"));
        }
        if self.max_attempts < 1 {
            return Err(invalid("queue.max_attempts", "must be >= 1"));
        }
        if !(self.retry_base_secs >= 0.0 && self.retry_max_secs >= self.retry_base_secs) {
            return Err(invalid(
                "queue.retry_base_secs",
                "need 0 <= retry_base_secs <= retry_max_secs",
            ));
        }
        if !(self.shutdown_grace_secs >= 0.0 && self.shutdown_grace_secs <= 86_400.0) {
            return Err(invalid(
                "queue.shutdown_grace_secs",
                "must be between 0 and 86400 seconds",
            ));
        }
        Ok(())
    }
}

impl AuthSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.token_cache_secs.is_finite() && (0.0..=3600.0).contains(&self.token_cache_secs)) {
            return Err(invalid(
                "auth.token_cache_secs",
                "must be between 0 and 3600",
            ));
        }
        if !(self.outage_grace_secs.is_finite() && self.outage_grace_secs >= 0.0) {
            return Err(invalid("auth.outage_grace_secs", "must be >= 0"));
        }
        if self.rate_limit_per_second > 0 && self.rate_limit_burst == 0 {
            return Err(invalid(
                "auth.rate_limit_burst",
                "must be > 0 when rate limits are on",
            ));
        }
        for origin in &self.cors_origins {
            if origin == "*" && self.cors_allow_credentials {
                return Err(invalid(
                    "auth.cors_origins",
                    "`*` cannot be combined with cors_allow_credentials = true; list the origins",
                ));
            }
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    "auth.cors_origins",
                    format!("`{origin}` is not an origin like https://app.example.com"),
                ));
            }
        }
        Ok(())
    }
}

impl DatasetSettings {
    /// `default_embedding_model` must be one of `models` (from `embedding_models.toml`).
    fn validate(&self, models: &BTreeMap<String, EmbeddingModelConfig>) -> Result<(), ConfigError> {
        if self.embed_batch_size == 0 {
            return Err(invalid("datasets.embed_batch_size", "must be > 0"));
        }
        if !models.contains_key(&self.default_embedding_model) {
            return Err(invalid(
                "datasets.default_embedding_model",
                format!(
                    "`{}` is not in embedding_models.toml",
                    self.default_embedding_model
                ),
            ));
        }
        Ok(())
    }
}

impl InferenceSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        within_api_limit(
            "inference.max_batch_texts",
            self.max_batch_texts,
            crate::api::limits::MAX_BATCH_TEXTS,
        )
    }
}

impl ReviewSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(10..=3600).contains(&self.lease_secs) {
            return Err(invalid(
                "review.lease_secs",
                "must be between 10 and 3600 seconds",
            ));
        }
        Ok(())
    }
}

impl ScoringSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.chunk_size) {
            return Err(invalid(
                "scoring.chunk_size",
                "must be between 1 and 100000 documents",
            ));
        }
        Ok(())
    }
}

impl TelemetrySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let listen = &self.worker_metrics_listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "telemetry.worker_metrics_listen",
                format!("`{listen}` is not host:port"),
            ));
        }
        if self.queue_sample_secs.is_nan() || self.queue_sample_secs < 0.5 {
            return Err(invalid(
                "telemetry.queue_sample_secs",
                "must be at least 0.5 seconds",
            ));
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

    /// `Settings::load` of the shipped config with `embedding_models.toml` edited by `edit`;
    /// the error it gives.
    fn models_error(name: &str, edit: impl Fn(&str) -> String) -> String {
        let dir = std::env::temp_dir().join(format!("ty-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_config(&dir, "");
        let text = std::fs::read_to_string(dir.join("embedding_models.toml")).unwrap();
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit changed nothing");
        std::fs::write(dir.join("embedding_models.toml"), edited).unwrap();
        let err = Settings::load(&dir).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        err
    }

    #[test]
    fn shipped_config_loads() {
        let settings = Settings::load(&Settings::default_dir()).unwrap();
        let minilm = &settings.embedding_models["all-MiniLM-L6-v2"];
        assert_eq!(minilm.dimensions, 384);
        assert!(minilm.is_local());
        assert_eq!(minilm.local().unwrap().long_texts, LongTexts::Truncate);
        let openai = &settings.embedding_models["text-embedding-3-small"];
        assert_eq!(openai.provider.type_name(), "openai-compatible");
        assert_eq!(
            openai.provider.api_endpoint(),
            Some("https://api.openai.com/v1")
        );
        assert_eq!(openai.provider.api_key_env(), Some("OPENAI_API_KEY"));
        assert_eq!(
            openai.provider.max_concurrency(),
            Some(default_concurrency())
        );
        assert_eq!(settings.telemetry.log_format, LogFormat::Text);
        assert_eq!(settings.local_model.device, DeviceSetting::Auto);
        assert_eq!(settings.auth.mode, AuthMode::Auto);
        assert!(settings.sources.contains_key("bilibili"));
    }

    #[test]
    fn a_local_model_with_an_api_endpoint_is_refused_naming_the_key() {
        let err = models_error("local-endpoint", |text| {
            text.replacen(
                "\ntype = \"local\"\n",
                "\ntype = \"local\"\napi_endpoint = \"https://example.com/v1\"\n",
                1,
            )
        });
        assert!(
            err.contains("embedding_models") && err.contains("unknown field `api_endpoint`"),
            "{err}"
        );
    }

    #[test]
    fn an_openai_compatible_model_with_windows_is_refused_naming_the_key() {
        for (name, key) in [
            ("openai-windows", "long_texts = \"windows\""),
            ("openai-max-windows", "max_windows = 4"),
            ("openai-dir", "dir = \"/models/x\""),
        ] {
            let err = models_error(name, |text| {
                text.replacen(
                    "\ntype = \"openai-compatible\"\n",
                    &format!("\ntype = \"openai-compatible\"\n{key}\n"),
                    1,
                )
            });
            let field = key.split(' ').next().unwrap();
            assert!(
                err.contains("embedding_models")
                    && err.contains(&format!("unknown field `{field}`")),
                "{key}: {err}"
            );
        }
    }

    #[test]
    fn an_openai_compatible_model_needs_an_api_endpoint_and_a_known_type() {
        let err = models_error("openai-no-endpoint", |text| {
            text.replacen("api_endpoint = \"https://api.openai.com/v1\"\n", "", 1)
        });
        assert!(err.contains("missing field `api_endpoint`"), "{err}");
        let err = models_error("unknown-type", |text| {
            text.replacen("\ntype = \"local\"\n", "\ntype = \"remote\"\n", 1)
        });
        assert!(
            err.contains("embedding_models") && err.contains("remote"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_log_format_or_device_is_refused_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("ty-config-enums-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_config(&dir, "");
        let text = std::fs::read_to_string(dir.join("trainyard.toml")).unwrap();
        for (from, to, key) in [
            (
                "log_format = \"text\"",
                "log_format = \"xml\"",
                "telemetry.log_format",
            ),
            (
                "device = \"auto\"",
                "device = \"gpu\"",
                "local_model.device",
            ),
        ] {
            assert!(text.contains(from), "{from}");
            std::fs::write(dir.join("trainyard.toml"), text.replace(from, to)).unwrap();
            let err = Settings::load(&dir).unwrap_err().to_string();
            assert!(err.contains(key), "{to}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn device_settings_read_as_they_are_written() {
        for device in [DeviceSetting::Auto, DeviceSetting::Cpu, DeviceSetting::Cuda] {
            assert_eq!(device.to_string().parse::<DeviceSetting>(), Ok(device));
        }
        assert!("gpu".parse::<DeviceSetting>().is_err());
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
    fn acquire_timeout_is_read_bounded_and_defaulted() {
        let shipped = Settings::load(&Settings::default_dir()).unwrap();
        assert_eq!(shipped.database.acquire_timeout_secs, 2.0);
        let dir = std::env::temp_dir().join(format!("ty-config-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_config(&dir, "");
        let text = std::fs::read_to_string(dir.join("trainyard.toml")).unwrap();
        let with = |line: &str| text.replace("acquire_timeout_secs = 2.0", line);
        std::fs::write(
            dir.join("trainyard.toml"),
            with("acquire_timeout_secs = 0.5"),
        )
        .unwrap();
        assert_eq!(
            Settings::load(&dir).unwrap().database.acquire_timeout_secs,
            0.5
        );
        // An older config file without the key gets the default.
        std::fs::write(dir.join("trainyard.toml"), with("")).unwrap();
        assert_eq!(
            Settings::load(&dir).unwrap().database.acquire_timeout_secs,
            2.0
        );
        for bad in ["acquire_timeout_secs = 0.0", "acquire_timeout_secs = -1.0"] {
            std::fs::write(dir.join("trainyard.toml"), with(bad)).unwrap();
            let err = Settings::load(&dir).unwrap_err().to_string();
            assert!(
                err.contains("database.acquire_timeout_secs"),
                "{bad}: {err}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
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
