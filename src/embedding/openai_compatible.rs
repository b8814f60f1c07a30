//! Client for OpenAI-compatible `/embeddings` endpoints: batching, bounded concurrency,
//! retries with exponential backoff that honour `Retry-After`, strict response checks.
//!
//! Retried: connection errors, timeouts, 408/409/429/5xx and unparseable bodies. Not retried:
//! other 4xx and well-formed answers of the wrong shape (count or dimensions), which mean a
//! misconfiguration. A batch that still fails fails the whole call; nothing is ever replaced
//! by a zero vector.
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;

use super::{EmbedError, Embedded, RemoteProvider};
use crate::config::{EmbeddingModelConfig, EmbeddingProvider, OpenAiCompatibleProvider};

/// A server's Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct OpenAiCompatibleClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: EmbeddingModelConfig,
    /// The model's `type = "openai-compatible"` keys.
    api: OpenAiCompatibleProvider,
    /// First retry delay; doubles each time up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Debug)]
struct AttemptError {
    error: EmbedError,
    retry_after: Option<Duration>,
    /// `error.type` of the provider-errors metric: timeout, unreachable, http_429, http_5xx,
    /// http_4xx, bad_body, invalid_response.
    kind: &'static str,
}

/// Vectors of one call and, when the provider reported it, the tokens it counted.
type Batch = Embedded;

impl OpenAiCompatibleClient {
    pub fn new(model: EmbeddingModelConfig) -> Result<Self, EmbedError> {
        let EmbeddingProvider::OpenAiCompatible(api) = &model.provider else {
            return Err(EmbedError::Fatal(format!(
                "model {} is not openai-compatible",
                model.name
            )));
        };
        let api = api.clone();
        let api_key = match &api.api_key_env {
            Some(var) => std::env::var(var).ok(),
            None => None,
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(api.timeout_secs))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| EmbedError::Fatal(format!("http client: {e}")))?;
        Ok(OpenAiCompatibleClient {
            http,
            url: format!("{}/embeddings", api.api_endpoint.trim_end_matches('/')),
            api_key,
            model,
            api,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        })
    }

    /// Embeds all texts, `max_batch_size` per request, `max_concurrency` requests at a time.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(self.embed_with_usage(texts).await?.0)
    }

    /// As `embed`, plus the prompt tokens the provider reported (`None` when any batch's
    /// answer had no `usage`).
    pub async fn embed_with_usage(&self, texts: &[String]) -> Result<Batch, EmbedError> {
        // Each request future owns its batch and client, so the stream's futures borrow
        // nothing (and stay `Send` for any lifetime).
        let batches: Vec<Vec<String>> = texts
            .chunks(self.model.max_batch_size)
            .map(|c| c.to_vec())
            .collect();
        let results: Vec<Batch> = futures::stream::iter(batches)
            .map(|batch| {
                let client = self.clone();
                async move { client.embed_batch_with_retries(&batch).await }
            })
            .buffered(self.api.max_concurrency.max(1))
            .try_collect()
            .await?;
        let tokens = results.iter().map(|(_, t)| *t).sum::<Option<u64>>();
        Ok((results.into_iter().flat_map(|(v, _)| v).collect(), tokens))
    }

    async fn embed_batch_with_retries(&self, batch: &[String]) -> Result<Batch, EmbedError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.api.max_attempts.saturating_sub(1) as usize)
            .with_jitter();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let result = (|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = self.embed_batch_once(batch).await;
            if let Err(e) = &result {
                crate::telemetry::metrics().embedding_provider_errors.add(
                    1,
                    &[
                        crate::telemetry::instruments::model(&self.model.name),
                        crate::telemetry::instruments::error_type(e.kind),
                    ],
                );
            }
            result
        })
        .retry(backoff)
        .when(|e: &AttemptError| e.error.is_retryable())
        .adjust(|e: &AttemptError, planned| planned.map(|d| e.retry_after.map_or(d, |ra| ra.min(MAX_RETRY_AFTER))))
        .notify(|e: &AttemptError, wait| {
            tracing::warn!(model = %self.model.name, error = %e.error, ?wait, "embedding request failed; retrying")
        })
        .await;
        result.map_err(|e| match e.error {
            EmbedError::Retryable(message) => EmbedError::Retryable(format!(
                "{message} (gave up after {} attempts)",
                attempts.load(std::sync::atomic::Ordering::Relaxed)
            )),
            other => other,
        })
    }

    async fn embed_batch_once(&self, batch: &[String]) -> Result<Batch, AttemptError> {
        let retryable = |m: String, kind: &'static str| AttemptError {
            error: EmbedError::Retryable(m),
            retry_after: None,
            kind,
        };
        let mut request = self.http.post(&self.url).json(&serde_json::json!({
            "model": self.model.name,
            "input": batch,
            "encoding_format": "float",
        }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                retryable("provider timed out".to_string(), "timeout")
            } else {
                retryable(format!("provider unreachable: {e}"), "unreachable")
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            let body = response.text().await.unwrap_or_default();
            let snippet: String = body.chars().take(200).collect();
            let message = format!("provider answered HTTP {}: {snippet}", status.as_u16());
            let code = status.as_u16();
            return Err(
                if code == 408 || code == 409 || code == 429 || status.is_server_error() {
                    AttemptError {
                        error: EmbedError::Retryable(message),
                        retry_after,
                        kind: match code {
                            429 => "http_429",
                            500..=599 => "http_5xx",
                            _ => "http_4xx",
                        },
                    }
                } else {
                    AttemptError {
                        error: EmbedError::Fatal(message),
                        retry_after: None,
                        kind: "http_4xx",
                    }
                },
            );
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| retryable(format!("reading provider body: {e}"), "bad_body"))?;
        let parsed: EmbeddingResponse = serde_json::from_slice(&body).map_err(|e| {
            retryable(
                format!("provider sent an unparseable body: {e}"),
                "bad_body",
            )
        })?;
        let tokens = parsed.usage.as_ref().and_then(|u| u.prompt_tokens);
        let vectors = self.check(batch.len(), parsed).map_err(|m| AttemptError {
            error: EmbedError::Fatal(m),
            retry_after: None,
            kind: "invalid_response",
        })?;
        Ok((vectors, tokens))
    }

    fn check(&self, expected: usize, parsed: EmbeddingResponse) -> Result<Vec<Vec<f32>>, String> {
        if parsed.data.len() != expected {
            return Err(format!(
                "provider returned {} embeddings for {expected} inputs",
                parsed.data.len()
            ));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; expected];
        for item in parsed.data {
            if item.embedding.len() != self.model.dimensions {
                return Err(format!(
                    "provider returned {} dimensions, model {} is configured for {}",
                    item.embedding.len(),
                    self.model.name,
                    self.model.dimensions
                ));
            }
            if item.embedding.iter().any(|x| !x.is_finite()) {
                return Err("provider returned a non-finite value".into());
            }
            match out.get_mut(item.index) {
                Some(slot @ None) => *slot = Some(item.embedding),
                _ => {
                    return Err(format!(
                        "provider returned a bad or repeated index {}",
                        item.index
                    ))
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every index filled once"))
            .collect())
    }
}

impl RemoteProvider for OpenAiCompatibleClient {
    fn embed_texts<'a>(
        &'a self,
        texts: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<Embedded, EmbedError>> {
        Box::pin(self.embed_with_usage(texts))
    }
}

/// A `Retry-After` value: delay-seconds (a non-negative number) or an HTTP-date, as a wait
/// from `now` (a date in the past means no wait). Anything else (negative, NaN, garbage) is
/// ignored, so the planned backoff applies instead. Seconds are capped here already because
/// `Duration::from_secs_f64` panics on values it cannot hold (`1e300`).
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64())));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date_and_ignores_garbage() {
        // 2026-12-02T10:00:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_796_205_600);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("100000", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 10:00:07 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 09:59:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means retry now"
        );
        assert_eq!(parse_retry_after("1e300", now), Some(MAX_RETRY_AFTER));
        for garbage in ["-5", "NaN", "inf", "soon", "", "1e400"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }
}
