//! Training telemetry webhook: progress events POSTed, in order, to an optional HTTP endpoint
//! by a background task, so that a slow or failing webhook never stalls or fails training.
//!
//! The training loop (a plain OS thread) hands events to a bounded queue with `try_send`; it
//! never waits. A single sender task on the tokio runtime POSTs them one at a time, retrying
//! connection errors, timeouts, 408, 429 and 5xx with a short exponential backoff; other 4xx
//! are given up at once. Every event ends up counted exactly once: `sent`, `failed` (gave up
//! after its attempts) or `dropped` (queue full, or still pending when [`Telemetry::finish`]'s
//! deadline passed). The first failure or drop is logged as a warning; later ones are not.
//!
//! A webhook URL comes from an API caller, so where it may point is this server's to decide
//! ([`AddressPolicy`]): loopback, private, link-local (cloud metadata), CGNAT, multicast and
//! unspecified addresses are refused after resolution, at every connection (a name that
//! rebinds to 127.0.0.1 between two events is caught), unless `training.webhook_allowed_hosts`
//! lists the host; redirects are not followed.
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};

/// First retry delay; doubles each attempt up to `MAX_RETRY_DELAY`.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

fn default_queue_capacity() -> usize {
    1024
}

fn default_max_attempts() -> u32 {
    3
}

fn default_timeout_ms() -> u64 {
    2000
}

/// Where and how to send telemetry. Missing numeric fields take their defaults when
/// deserialized.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    /// Sent verbatim as the `Authorization` header value (e.g. `"Bearer abc"`).
    #[serde(default)]
    pub authorization: Option<String>,
    /// Events waiting to be sent; when full, new events are dropped (and counted).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Attempts per event, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Per request (connect, send and response).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Where it may connect: this server's policy, never stored with the run.
    #[serde(skip)]
    pub addresses: AddressPolicy,
}

/// Which addresses a webhook may reach: public ones, plus the hosts (names or IP addresses, as
/// written in the URL) this server allows. The default allows public addresses only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressPolicy {
    /// Every address (the operator's own `training.webhook_url`).
    pub allow_all: bool,
    /// Lower-case host names or IP literals allowed whatever they resolve to.
    pub allowed_hosts: Vec<String>,
}

impl AddressPolicy {
    pub fn allowing(hosts: &[String]) -> AddressPolicy {
        AddressPolicy {
            allow_all: false,
            allowed_hosts: hosts
                .iter()
                .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allow_all
            || self
                .allowed_hosts
                .iter()
                .any(|h| h == &host.trim_matches(['[', ']']).to_ascii_lowercase())
    }

    /// Addresses no webhook may reach unless its host is allowed: loopback, private (RFC 1918,
    /// unique local), link-local (169.254/16 holds cloud metadata services), CGNAT, this-network,
    /// multicast, broadcast and unspecified; IPv4-mapped IPv6 is judged as its IPv4 address.
    pub fn internal(ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_multicast()
                    || v4.is_broadcast()
                    || a == 0
                    || (a == 100 && (64..128).contains(&b))
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return AddressPolicy::internal(IpAddr::V4(v4));
                }
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
            }
        }
    }

    /// Checks what can be checked without a connection: the scheme, and an IP-literal host.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        self.parse_checked(url).map(|_| ())
    }

    /// `check_url`, returning the parsed URL.
    fn parse_checked(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        let Some(host) = parsed.host_str() else {
            return Err(format!("`{url}` has no host"));
        };
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            if AddressPolicy::internal(ip) && !self.host_allowed(&ip.to_string()) {
                return Err(format!(
                    "`{url}` points at {ip}, an internal address webhooks may not reach \
                     (training.webhook_allowed_hosts allows hosts)"
                ));
            }
        }
        Ok(parsed)
    }

    /// `check_url`, then the host's addresses now (a name that resolves only to internal
    /// addresses is refused at once rather than at the first event).
    pub async fn check_resolved(&self, url: &str) -> Result<(), String> {
        let parsed = self.parse_checked(url)?;
        let name = parsed.host_str().unwrap_or_default();
        if name.starts_with('[') || name.parse::<std::net::IpAddr>().is_ok() {
            return Ok(()); // an IP literal: judged by check_url
        }
        if self.host_allowed(name) {
            return Ok(());
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("`{name}` does not resolve: {e}"))?
            .collect();
        if addrs.iter().all(|a| AddressPolicy::internal(a.ip())) {
            return Err(format!(
                "`{name}` resolves only to internal addresses, which webhooks may not reach \
                 (training.webhook_allowed_hosts allows hosts)"
            ));
        }
        Ok(())
    }
}

/// The sender's resolver: a name's internal addresses are dropped at every lookup (every new
/// connection), so a name cannot rebind to one after the URL was checked.
struct GuardedResolver(AddressPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.host_allowed(&host);
            let usable: Vec<std::net::SocketAddr> = addrs
                .into_iter()
                .filter(|a| allowed || !AddressPolicy::internal(a.ip()))
                .collect();
            if usable.is_empty() {
                return Err(format!(
                    "`{host}` resolves only to internal addresses, which webhooks may not reach"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(usable.into_iter());
            Ok(addrs)
        })
    }
}

impl WebhookConfig {
    pub fn new(url: impl Into<String>, authorization: Option<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            authorization,
            queue_capacity: default_queue_capacity(),
            max_attempts: default_max_attempts(),
            timeout_ms: default_timeout_ms(),
            addresses: AddressPolicy::default(),
        }
    }

    /// The same, allowed to reach what `addresses` allows.
    pub fn with_addresses(mut self, addresses: AddressPolicy) -> Self {
        self.addresses = addresses;
        self
    }
}

/// Like a derived `Debug`, but the authorization value (a secret) is never printed.
impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("queue_capacity", &self.queue_capacity)
            .field("max_attempts", &self.max_attempts)
            .field("timeout_ms", &self.timeout_ms)
            .field("addresses", &self.addresses)
            .finish()
    }
}

/// What became of the events logged so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStats {
    /// Delivered (the webhook answered 2xx).
    pub sent: u64,
    /// Given up after the allowed attempts, or on a non-retryable answer.
    pub failed: u64,
    /// Never delivered: the queue was full, or the event was pending at the finish deadline.
    pub dropped: u64,
}

/// One progress event, as logged by the training loop.
struct Event {
    global_step: u64,
    epoch: u32,
    metrics: serde_json::Value,
    timestamp: DateTime<Utc>,
    is_eval: bool,
}

/// The JSON body of one POST.
#[derive(Serialize)]
struct Payload<'a> {
    experiment_id: &'a str,
    global_step: u64,
    epoch: u32,
    metrics: &'a serde_json::Value,
    timestamp: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    is_eval: bool,
}

/// Counters and the pending count, under one lock so that each event is counted exactly once
/// even when `finish` gives up while the sender is completing an event.
#[derive(Default)]
struct Counters {
    stats: WebhookStats,
    /// Accepted into the queue and not yet counted as sent, failed or dropped.
    pending: u64,
    /// Set by `finish`: nothing is sent or counted by the sender from then on.
    closed: bool,
}

/// State shared by the handles and the sender task.
struct Shared {
    counters: Mutex<Counters>,
    /// Flips to `true` when `finish` closes the telemetry; the sender stops at once.
    closed_tx: watch::Sender<bool>,
    /// Woken whenever the pending count reaches zero.
    drained: Notify,
    warned: AtomicBool,
}

impl Shared {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        // A panic while holding this lock leaves plain counters behind: still usable.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs the first failure or drop as a warning; later ones only at debug level.
    fn warn_once(&self, what: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "telemetry webhook: {what}; training continues (further problems are counted, not logged)"
            );
        } else {
            tracing::debug!("telemetry webhook: {what}");
        }
    }

    /// Counts an event the sender finished with, unless `finish` already counted it.
    fn resolve(&self, outcome: Outcome) {
        let mut c = self.counters();
        if c.closed {
            return;
        }
        match outcome {
            Outcome::Sent => c.stats.sent += 1,
            Outcome::Failed => c.stats.failed += 1,
        }
        c.pending = c.pending.saturating_sub(1);
        if c.pending == 0 {
            self.drained.notify_waiters();
        }
    }
}

enum Outcome {
    Sent,
    Failed,
}

struct Inner {
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

/// Handle to the telemetry sender: cheap to clone, `Send + Sync`. Built by [`Telemetry::start`];
/// without a webhook configured every method is a no-op.
#[derive(Clone)]
pub struct Telemetry {
    inner: Option<Arc<Inner>>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.inner.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Telemetry {
    /// Starts the background sender task on `runtime`. `None` config gives a no-op Telemetry.
    /// May be called from any thread, inside the runtime or not.
    pub fn start(
        config: Option<WebhookConfig>,
        experiment_id: String,
        runtime: &tokio::runtime::Handle,
    ) -> Telemetry {
        let Some(config) = config else {
            return Telemetry { inner: None };
        };
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (closed_tx, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            counters: Mutex::new(Counters::default()),
            closed_tx,
            drained: Notify::new(),
            warned: AtomicBool::new(false),
        });
        let sender = Sender {
            config,
            experiment_id,
            shared: shared.clone(),
        };
        runtime.spawn(sender.run(rx, closed_rx));
        Telemetry {
            inner: Some(Arc::new(Inner { tx, shared })),
        }
    }

    /// Queues a logging-step event. Never blocks: when the queue is full the event is dropped
    /// and counted. `metrics` should be a JSON object.
    pub fn log_step(&self, global_step: u64, epoch: u32, metrics: serde_json::Value) {
        self.log(global_step, epoch, metrics, false);
    }

    /// Queues an evaluation event (sent with `"is_eval": true`). Never blocks.
    pub fn log_eval(&self, global_step: u64, epoch: u32, metrics: serde_json::Value) {
        self.log(global_step, epoch, metrics, true);
    }

    fn log(&self, global_step: u64, epoch: u32, metrics: serde_json::Value, is_eval: bool) {
        let Some(inner) = &self.inner else {
            return;
        };
        let event = Event {
            global_step,
            epoch,
            metrics,
            timestamp: Utc::now(),
            is_eval,
        };
        let reason = {
            let mut c = inner.shared.counters();
            if c.closed {
                c.stats.dropped += 1;
                "event logged after finish; dropped"
            } else {
                match inner.tx.try_send(event) {
                    Ok(()) => {
                        c.pending += 1;
                        return;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        c.stats.dropped += 1;
                        "queue full (webhook too slow); dropping events"
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        c.stats.dropped += 1;
                        "sender task is gone; dropping events"
                    }
                }
            }
        };
        inner.shared.warn_once(reason);
    }

    /// Counts so far.
    pub fn stats(&self) -> WebhookStats {
        match &self.inner {
            Some(inner) => inner.shared.counters().stats,
            None => WebhookStats::default(),
        }
    }

    /// Waits until every queued event was sent or given up, or until `deadline` passes; what is
    /// still pending then (the event in flight included) is counted as dropped. Closes the
    /// telemetry: the sender stops, and events logged afterwards are dropped. Returns the final
    /// stats; calling it again returns them again.
    pub async fn finish(&self, deadline: Duration) -> WebhookStats {
        let Some(inner) = &self.inner else {
            return WebhookStats::default();
        };
        let shared = &inner.shared;
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let drained = shared.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a wake-up between the two is not lost.
            drained.as_mut().enable();
            {
                let c = shared.counters();
                if c.pending == 0 || c.closed {
                    break;
                }
            }
            tokio::select! {
                _ = &mut drained => {}
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let (stats, left) = {
            let mut c = shared.counters();
            let left = std::mem::take(&mut c.pending);
            c.stats.dropped += left;
            c.closed = true;
            (c.stats, left)
        };
        shared.closed_tx.send_replace(true);
        if left > 0 {
            shared.warn_once(&format!(
                "finish deadline passed; {left} pending events dropped"
            ));
        }
        stats
    }
}

/// The background task: one event at a time, in order.
struct Sender {
    config: WebhookConfig,
    experiment_id: String,
    shared: Arc<Shared>,
}

/// Why one attempt failed, and whether another may help.
struct AttemptError {
    message: String,
    retryable: bool,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Event>, mut closed_rx: watch::Receiver<bool>) {
        let timeout = Duration::from_millis(self.config.timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(GuardedResolver(self.config.addresses.clone()))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"));
        loop {
            let event = tokio::select! {
                biased;
                _ = closed_rx.wait_for(|closed| *closed) => return,
                event = rx.recv() => match event {
                    Some(event) => event,
                    // Every handle is gone.
                    None => return,
                },
            };
            let body = match serde_json::to_vec(&self.payload(&event)) {
                Ok(body) => body,
                Err(e) => {
                    self.shared
                        .warn_once(&format!("event could not be serialized: {e}"));
                    self.shared.resolve(Outcome::Failed);
                    continue;
                }
            };
            let outcome = match &http {
                Ok(http) => tokio::select! {
                    // `finish` counts the abandoned event as dropped.
                    _ = closed_rx.wait_for(|closed| *closed) => return,
                    r = self.send_with_retries(http, body) => r,
                },
                Err(e) => Err(e.clone()),
            };
            match outcome {
                Ok(()) => self.shared.resolve(Outcome::Sent),
                Err(message) => {
                    self.shared
                        .warn_once(&format!("giving up on an event: {message}"));
                    self.shared.resolve(Outcome::Failed);
                }
            }
        }
    }

    fn payload<'a>(&'a self, event: &'a Event) -> Payload<'a> {
        Payload {
            experiment_id: &self.experiment_id,
            global_step: event.global_step,
            epoch: event.epoch,
            metrics: &event.metrics,
            timestamp: event.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
            is_eval: event.is_eval,
        }
    }

    async fn send_with_retries(&self, http: &reqwest::Client, body: Vec<u8>) -> Result<(), String> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_RETRY_DELAY)
            .with_max_delay(MAX_RETRY_DELAY)
            .with_max_times(self.config.max_attempts.max(1) as usize - 1)
            .with_jitter();
        (|| self.send_once(http, body.clone()))
            .retry(backoff)
            .when(|e: &AttemptError| e.retryable)
            .notify(|e: &AttemptError, wait| {
                tracing::debug!(error = %e.message, ?wait, "telemetry webhook attempt failed; retrying")
            })
            .await
            .map_err(|e| e.message)
    }

    async fn send_once(&self, http: &reqwest::Client, body: Vec<u8>) -> Result<(), AttemptError> {
        // An IP-literal host is not resolved, so the resolver cannot judge it: here.
        self.config
            .addresses
            .check_url(&self.config.url)
            .map_err(|message| AttemptError {
                message,
                retryable: false,
            })?;
        let mut request = http
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(authorization) = &self.config.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        let response = request.send().await.map_err(|e| AttemptError {
            message: if e.is_timeout() {
                format!("webhook timed out after {} ms", self.config.timeout_ms)
            } else {
                format!("webhook unreachable: {}", error_chain(&e))
            },
            // A malformed URL or header value will not get better.
            retryable: !e.is_builder(),
        })?;
        let status = response.status();
        // Read the (small) body so the connection can be reused; its content does not matter.
        let _ = response.bytes().await;
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        Err(AttemptError {
            message: format!("webhook answered HTTP {code}"),
            retryable: code == 408 || code == 429 || status.is_server_error(),
        })
    }
}

/// An error and its sources, `: `-separated (reqwest's own message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::AddressPolicy;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "127.9.9.9",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "ff02::1",
        ] {
            assert!(
                AddressPolicy::internal(internal.parse().unwrap()),
                "{internal}"
            );
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2001:4860::8888",
        ] {
            assert!(
                !AddressPolicy::internal(public.parse().unwrap()),
                "{public}"
            );
        }
        let policy = AddressPolicy::allowing(&["[::1]".into(), "Hooks.Internal".into()]);
        assert!(policy.check_url("http://[::1]:8/x").is_ok());
        assert!(policy.check_url("http://127.0.0.1/x").is_err());
        assert!(policy.check_url("ftp://8.8.8.8/x").is_err());
        assert!(policy.check_url("http://8.8.8.8/x").is_ok());
        assert!(policy.host_allowed("hooks.internal"));
    }

    use super::*;

    #[test]
    fn config_defaults_and_redacted_debug() {
        let c = WebhookConfig::new("http://x/hook", Some("Bearer secret".into()));
        assert_eq!(
            (c.queue_capacity, c.max_attempts, c.timeout_ms),
            (1024, 3, 2000)
        );
        assert!(!format!("{c:?}").contains("secret"));
        let parsed: WebhookConfig =
            serde_json::from_value(serde_json::json!({"url": "http://x/hook"})).unwrap();
        assert_eq!(parsed, WebhookConfig::new("http://x/hook", None));
    }

    #[test]
    fn payload_omits_is_eval_for_steps() {
        let sender = Sender {
            config: WebhookConfig::new("http://x/hook", None),
            experiment_id: "exp".into(),
            shared: Arc::new(Shared {
                counters: Mutex::new(Counters::default()),
                closed_tx: watch::channel(false).0,
                drained: Notify::new(),
                warned: AtomicBool::new(false),
            }),
        };
        let mut event = Event {
            global_step: 12,
            epoch: 1,
            metrics: serde_json::json!({"loss": 0.5}),
            timestamp: Utc::now(),
            is_eval: false,
        };
        let step = serde_json::to_value(sender.payload(&event)).unwrap();
        assert_eq!(step["experiment_id"], "exp");
        assert_eq!(step["global_step"], 12);
        assert_eq!(step["metrics"]["loss"], 0.5);
        assert!(step.get("is_eval").is_none());
        assert!(DateTime::parse_from_rfc3339(step["timestamp"].as_str().unwrap()).is_ok());
        event.is_eval = true;
        let eval = serde_json::to_value(sender.payload(&event)).unwrap();
        assert_eq!(eval["is_eval"], true);
    }

    #[test]
    fn disabled_telemetry_is_a_no_op() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t = Telemetry::start(None, "exp".into(), rt.handle());
        t.log_step(1, 0, serde_json::json!({}));
        t.log_eval(1, 0, serde_json::json!({}));
        assert_eq!(
            rt.block_on(t.finish(Duration::from_secs(1))),
            WebhookStats::default()
        );
    }
}
