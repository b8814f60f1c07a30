//! The HTTP edge of authorization: which scope each operation needs (one table), bearer
//! tokens checked before a body is read, 401/403 with `WWW-Authenticate`, per-token rate limits
//! (429 with `Retry-After`), CORS, and the security declarations added to the OpenAPI document.
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};
use serde_json::{json, Value};

use crate::auth::{grants, Principal, Rejection, Scope, TokenVerifier};
use crate::config::{AuthMode, InferenceAccess, Settings};

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Needs(Scope),
    /// `predict`, or nothing when `auth.inference = "public"`.
    Inference,
    /// Any valid token: paths that are no operation (they answer 404 to a token holder).
    AnyToken,
}

use Access::{AnyToken, Inference, Needs, Public};
use Scope::{Admin, Read, Submit};

/// Every operation of the API and what it needs (the route table, `routes.rs`, gives each
/// documented operation its entry). A documented operation missing here needs `admin` (fail
/// closed); a test keeps this table and the document equal.
pub const OPERATIONS: &[(&str, &str, Access)] = &[
    ("GET", "/health", Public),
    ("GET", "/api/v1/health", Public),
    ("GET", "/v1/health", Public),
    ("GET", "/api/v1/jobs", Needs(Read)),
    ("GET", "/api/v1/jobs/{id}", Needs(Read)),
    ("POST", "/api/v1/jobs/{id}/cancel", Needs(Submit)),
    ("POST", "/api/v1/jobs/{id}/retry", Needs(Submit)),
    ("POST", "/api/v1/documents", Needs(Submit)),
    ("POST", "/api/v1/annotations", Needs(Submit)),
    ("POST", "/api/v1/datasets", Needs(Submit)),
    ("GET", "/api/v1/datasets", Needs(Read)),
    ("GET", "/api/v1/datasets/{id}", Needs(Read)),
    ("DELETE", "/api/v1/datasets/{id}", Needs(Admin)),
    ("GET", "/api/v1/datasets/{id}/records", Needs(Read)),
    ("GET", "/api/v1/datasets/{id}/export", Needs(Read)),
    ("POST", "/api/v1/training-runs", Needs(Submit)),
    ("GET", "/api/v1/training-runs", Needs(Read)),
    ("GET", "/api/v1/training-runs/{id}", Needs(Read)),
    ("GET", "/api/v1/training-runs/{id}/metrics", Needs(Read)),
    ("GET", "/api/v1/training-runs/{id}/curves.svg", Needs(Read)),
    ("POST", "/api/v1/training-runs/{id}/cancel", Needs(Submit)),
    ("GET", "/api/v1/models", Needs(Read)),
    ("GET", "/api/v1/models/{name}/versions", Needs(Read)),
    (
        "GET",
        "/api/v1/models/{name}/versions/{version}",
        Needs(Read),
    ),
    (
        "GET",
        "/api/v1/models/{name}/versions/{version}/export",
        Needs(Read),
    ),
    (
        "POST",
        "/api/v1/models/{name}/versions/{version}/promote",
        Needs(Admin),
    ),
    ("POST", "/api/v1/models/{name}/rollback", Needs(Admin)),
    ("POST", "/api/v1/models/{name}/predict", Inference),
    ("POST", "/api/v1/models/{name}/batch", Inference),
    ("POST", "/predict", Inference),
    ("POST", "/batch", Inference),
    ("GET", "/v1/models", Inference),
    ("GET", "/v1/models/{model}", Inference),
    ("POST", "/v1/embeddings", Inference),
    ("GET", "/v1/models/embedding", Needs(Read)),
    ("POST", "/v1/dataset/build", Needs(Submit)),
    ("GET", "/v1/dataset/{dataset_id}", Needs(Read)),
    ("DELETE", "/v1/dataset/{dataset_id}", Needs(Admin)),
    ("GET", "/v1/datasets", Needs(Read)),
    ("POST", "/api/v1/tokens", Needs(Admin)),
    ("GET", "/api/v1/tokens", Needs(Admin)),
    ("DELETE", "/api/v1/tokens/{id}", Needs(Admin)),
    ("POST", "/api/v1/scoring-jobs", Needs(Submit)),
    ("GET", "/api/v1/scoring-jobs", Needs(Read)),
    ("GET", "/api/v1/scoring-jobs/{id}", Needs(Read)),
    ("GET", "/api/v1/scoring-jobs/{id}/results", Needs(Read)),
    ("GET", "/api/v1/scoring-jobs/{id}/export", Needs(Read)),
    ("POST", "/api/v1/scoring-jobs/{id}/cancel", Needs(Submit)),
    ("POST", "/api/v1/evaluations", Needs(Submit)),
    ("GET", "/api/v1/evaluations", Needs(Read)),
    ("GET", "/api/v1/evaluations/{id}", Needs(Read)),
    ("GET", "/api/v1/evaluations/{id}/disagreements", Needs(Read)),
    ("POST", "/api/v1/evaluations/{id}/cancel", Needs(Submit)),
    ("GET", "/api/v1/review-queue", Needs(Read)),
    ("GET", "/api/v1/me", Public),
    ("POST", "/api/v1/labelling/next", Needs(Submit)),
    ("POST", "/api/v1/labelling/answers", Needs(Submit)),
    ("POST", "/api/v1/labelling/undo", Needs(Submit)),
    ("GET", "/api/v1/guidelines", Needs(Read)),
    ("POST", "/api/v1/guidelines", Needs(Admin)),
    ("GET", "/api/v1/guidelines/{label}", Needs(Read)),
    ("GET", "/api/v1/sources", Needs(Read)),
    ("POST", "/api/v1/sources/{source}/settings", Needs(Admin)),
    ("GET", "/api/v1/agreement", Needs(Read)),
];

/// What the table says `method` (upper case) on `template` needs: `admin` when it has no entry
/// (fail closed). The route table and the document's declarations both read it here.
pub(crate) fn declared_access(method: &str, template: &str) -> Access {
    OPERATIONS
        .iter()
        .find(|(m, p, _)| m.eq_ignore_ascii_case(method) && *p == template)
        .map(|(_, _, a)| *a)
        .unwrap_or(Needs(Admin))
}

/// What a request needs by its operation: the most literal documented operation of its method
/// (`HEAD` runs the GET handler, so it needs what `GET` needs), leading slashes collapsed. None
/// when no operation matches, or when the match would take an empty segment as a parameter
/// (fail closed: such a path is treated as no operation).
fn operation_access(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let path = format!("/{}", path.trim_start_matches('/'));
    let route = super::routes::lookup(method.as_str(), &path)?.route?;
    if route
        .path
        .parameters(&path)
        .any(|(_, value)| value.is_empty())
    {
        return None;
    }
    Some(route.operation.access)
}

/// How this process treats requests, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub enabled: bool,
    pub inference_public: bool,
    pub metrics_public: bool,
}

impl Policy {
    /// `auth.mode = "auto"` turns auth off only for a loopback listen address.
    pub fn of(settings: &Settings) -> Policy {
        let loopback = settings
            .server
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        Policy {
            enabled: match settings.auth.mode {
                AuthMode::Required => true,
                AuthMode::Off => false,
                AuthMode::Auto => !loopback,
            },
            inference_public: settings.auth.inference == InferenceAccess::Public,
            metrics_public: settings.auth.public_metrics,
        }
    }

    /// The policy the committed document describes: tokens required, inference by token.
    pub fn documented() -> Policy {
        Policy {
            enabled: true,
            inference_public: false,
            metrics_public: true,
        }
    }

    /// None: no token needed; Some(None): any valid token; Some(Some(scope)).
    fn needed(&self, access: Access) -> Option<Option<Scope>> {
        match access {
            Public => None,
            Needs(s) => Some(Some(s)),
            Inference if self.inference_public => None,
            Inference => Some(Some(Scope::Predict)),
            AnyToken => Some(None),
        }
    }
}

/// Checks tokens and rate limits for one API process.
pub struct Gate {
    pub policy: Policy,
    verifier: Arc<TokenVerifier>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Per client address, before anything else.
    ip_limiter: Option<DefaultKeyedRateLimiter<String>>,
    trusted_proxies: Vec<std::net::IpAddr>,
    checks: AtomicU64,
    /// With auth off: Host names answered besides loopback ones.
    open_allowed_hosts: Vec<String>,
}

const REALM: &str = "Bearer realm=\"trainyard\"";

impl Gate {
    pub fn new(pool: sqlx::PgPool, settings: &Settings) -> Gate {
        let policy = Policy::of(settings);
        let auth = &settings.auth;
        // Read the document's routes now, not on the first request.
        super::routes::load();
        let limiter = NonZeroU32::new(auth.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(auth.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let ip_limiter = NonZeroU32::new(auth.ip_rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(auth.ip_rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Gate {
            policy,
            ip_limiter,
            trusted_proxies: auth
                .trusted_proxies
                .iter()
                .filter_map(|p| p.trim_matches(['[', ']']).parse().ok())
                .collect(),
            verifier: {
                let verifier = Arc::new(TokenVerifier::new(
                    pool,
                    Duration::from_secs_f64(auth.token_cache_secs),
                    Duration::from_secs_f64(auth.outage_grace_secs),
                ));
                if policy.enabled {
                    verifier.spawn_revocation_listener();
                }
                verifier
            },
            limiter,
            checks: AtomicU64::new(0),
            open_allowed_hosts: auth
                .open_allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Forgets a revoked token at once in this process (others within the cache time).
    pub fn forget(&self, id: &str) {
        self.verifier.forget(id);
    }

    /// What a request needs: by the operation table; `/metrics` by config; Swagger UI and the
    /// document are public; any other path needs a valid token (fail closed: a path spelled so
    /// that the table misses it is never open).
    fn access_of(&self, method: &Method, path: &str) -> Access {
        if path == "/metrics" {
            return if self.policy.metrics_public {
                Public
            } else {
                Needs(Read)
            };
        }
        if path == "/openapi.json"
            || path == "/docs"
            || path.starts_with("/docs/")
            || super::ui::is_ui_path(path)
        {
            return Public;
        }
        operation_access(method, path).unwrap_or(AnyToken)
    }

    /// The 429 to send when `key` (a token id or client address) is over its limit.
    fn rate_limited(&self, key: String) -> Option<Response> {
        self.limited_by(self.limiter.as_ref()?, key)
    }

    /// The per-address limit, checked first on every request.
    fn address_limited(&self, req: &Request) -> Option<Response> {
        let key = client_key(req, &self.trusted_proxies);
        self.limited_by(self.ip_limiter.as_ref()?, key)
    }

    fn limited_by(
        &self,
        limiter: &DefaultKeyedRateLimiter<String>,
        key: String,
    ) -> Option<Response> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).err().map(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "rate_limit_error",
                format!("too many requests; retry after {secs} s"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        })
    }
}

/// The error shape of `errors::ApiError`, for answers given before any handler runs.
fn error_response(status: StatusCode, code: &str, kind: &str, message: String) -> Response {
    let body = json!({"error": {"code": code, "message": message, "type": kind, "param": null}});
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

fn unauthorized(error: Option<&str>, message: String) -> Response {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        if error.is_some() {
            "invalid_token"
        } else {
            "missing_token"
        },
        "authentication_error",
        message,
    );
    let challenge = match error {
        Some(e) => format!("{REALM}, error=\"{e}\""),
        None => REALM.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// The bearer token of a request: Some(Ok(token)), Some(Err(why)) when the header is there but
/// unusable, None when absent.
fn bearer(req: &Request) -> Option<Result<String, &'static str>> {
    let value = req.headers().get(header::AUTHORIZATION)?;
    let Ok(text) = value.to_str() else {
        return Some(Err("the Authorization header is not ASCII"));
    };
    let (scheme, token) = text.trim().split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Some(Err("use `Authorization: Bearer <token>`"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Some(Err("the bearer token is empty"));
    }
    Some(Ok(token.to_string()))
}

/// With auth off, the server answers only what a local client sends: a request through a proxy
/// (X-Forwarded-*, Forwarded) or addressed to a name other than a loopback one (a page on another
/// site that rebinds its name to 127.0.0.1 sends its own name) is refused.
fn open_mode_refusal(req: &Request, allowed: &[String]) -> Option<Response> {
    let forwarded = req.headers().keys().find(|k| {
        let k = k.as_str();
        k.starts_with("x-forwarded-") || k == "forwarded" || k == "x-real-ip"
    });
    if let Some(header) = forwarded {
        return Some(error_response(
            StatusCode::FORBIDDEN,
            "proxied_request_refused",
            "permission_error",
            format!(
                "authentication is off on this server, so it answers only local clients; a request \
                 carrying `{header}` came through a proxy. Turn auth on (auth.mode = \"required\") \
                 to serve through a proxy"
            ),
        ));
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))?;
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host.as_str(), |(n, _)| n),
    }
    .to_ascii_lowercase();
    let loopback = name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || allowed.contains(&name) {
        return None;
    }
    Some(error_response(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        "permission_error",
        format!(
            "authentication is off on this server, so it answers only requests addressed to a \
             loopback name (localhost, 127.0.0.1, [::1]); Host `{host}` is not one. Add it to \
             auth.open_allowed_hosts or turn auth on"
        ),
    ))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that is not one.
pub fn client_address(req: &Request, trusted: &[std::net::IpAddr]) -> Option<std::net::IpAddr> {
    let peer = req.remote_addr().as_socket_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<std::net::IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().trim_matches(['[', ']']).parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|a| !trusted.contains(a))
            .unwrap_or(peer),
    )
}

/// A rate-limit bucket per address; IPv6 by /64 (one host usually holds a whole /64).
pub fn address_bucket(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        std::net::IpAddr::V6(v6) => format!("ip:{}", v6.to_ipv4_mapped().unwrap()),
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
    }
}

fn client_key(req: &Request, trusted: &[std::net::IpAddr]) -> String {
    client_address(req, trusted).map_or_else(|| "ip:unknown".into(), address_bucket)
}

/// The middleware: runs before the body is read, so an unauthenticated client cannot make the
/// server read a large body. The verified principal is attached to the request.
pub async fn around<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    gate: Arc<Gate>,
) -> poem::Result<Response> {
    if !gate.policy.enabled {
        if let Some(refusal) = open_mode_refusal(&req, &gate.open_allowed_hosts) {
            return Ok(refusal);
        }
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    if let Some(limited) = gate.address_limited(&req) {
        return Ok(limited);
    }
    if req.method() == Method::OPTIONS {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let access = gate.access_of(req.method(), req.uri().path());
    let Some(needed) = gate.policy.needed(access) else {
        if let Some(limited) = gate.rate_limited(client_key(&req, &gate.trusted_proxies)) {
            return Ok(limited);
        }
        // A public operation shows more to a valid token (the health details): attach it.
        if let Some(Ok(token)) = bearer(&req) {
            if let Ok(Ok(principal)) = gate.verifier.verify(&token).await {
                req.set_data(principal);
            }
        }
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    let token = match bearer(&req) {
        None => {
            let what = match needed {
                Some(scope) => format!("a token with scope `{scope}`"),
                None => "a token".to_string(),
            };
            return Ok(unauthorized(
                None,
                format!("this call needs {what}: send `Authorization: Bearer <token>`"),
            ));
        }
        Some(Err(why)) => return Ok(unauthorized(Some("invalid_request"), why.to_string())),
        Some(Ok(token)) => token,
    };
    let principal: Principal = match gate.verifier.verify(&token).await {
        Ok(Ok(p)) => p,
        Ok(Err(rejection)) => {
            if let Some(limited) = gate.rate_limited(client_key(&req, &gate.trusted_proxies)) {
                return Ok(limited);
            }
            let message = match rejection {
                Rejection::Invalid => "the token is not valid",
                Rejection::Revoked => "the token has been revoked",
                Rejection::Expired => "the token has expired",
            };
            return Ok(unauthorized(Some("invalid_token"), message.to_string()));
        }
        Err(e) => {
            tracing::warn!("token check: database unavailable: {e}");
            return Ok(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "server_error",
                "the token cannot be checked because the database is not reachable right now; retry shortly".into(),
            ));
        }
    };
    if let Some(limited) = gate.rate_limited(format!("token:{}", principal.token_id)) {
        return Ok(limited);
    }
    if let Some(needed) = needed.filter(|&n| !grants(&principal.scopes, n)) {
        let held: Vec<&str> = principal.scopes.iter().map(|s| s.as_str()).collect();
        return Ok(error_response(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "permission_error",
            format!(
                "this call needs scope `{needed}`; token {} has {}",
                principal.token_id,
                held.join(", ")
            ),
        ));
    }
    tracing::Span::current().record("auth.token", principal.token_id.as_str());
    req.set_data(principal);
    ep.call(req).await.map(IntoResponse::into_response)
}

/// For an option of a request that needs more than the operation's scope (`auto_promote`
/// promotes, an `admin` action): Ok when auth is off (no principal) or the token has `scope`.
pub fn require(req: &Request, scope: Scope, param: &str) -> Result<(), super::errors::ApiError> {
    let Some(principal) = req.data::<Principal>() else {
        return Ok(());
    };
    if grants(&principal.scopes, scope) {
        return Ok(());
    }
    let held: Vec<&str> = principal.scopes.iter().map(|s| s.as_str()).collect();
    Err(super::errors::ApiError::insufficient_scope(
        format!(
            "`{param}` needs scope `{scope}`; token {} has {}",
            principal.token_id,
            held.join(", ")
        ),
        Some(param),
    ))
}

/// CORS from `auth.cors_origins`: None when no origin is configured (no CORS headers at all).
pub fn cors(settings: &Settings) -> Option<poem::middleware::Cors> {
    let auth = &settings.auth;
    if auth.cors_origins.is_empty() {
        return None;
    }
    let mut cors = poem::middleware::Cors::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .allow_credentials(auth.cors_allow_credentials)
        .max_age(600);
    if !auth.cors_origins.iter().any(|o| o == "*") {
        cors = cors.allow_origins(auth.cors_origins.iter().map(String::as_str));
    }
    Some(cors)
}

fn error_content() -> Value {
    json!({"application/json; charset=utf-8": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}})
}

/// Adds the bearer scheme, each operation's scope (`security`, `x-required-scope`, a sentence
/// in its description) and the 401/403/429 answers to a generated document.
pub fn declare_security(doc: &mut Value, policy: Policy) {
    if policy.enabled {
        doc["components"]["securitySchemes"] = json!({
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "ty_<id>_<secret>",
                "description": "An API token from `trainyard token create` or `POST /api/v1/tokens`. Scopes: read, submit (includes read), predict, admin (includes all)."
            }
        });
    }
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, ops) in paths.iter_mut() {
        let Some(ops) = ops.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let access = declared_access(method, path);
            let needed = if policy.enabled {
                policy.needed(access).flatten()
            } else {
                None
            };
            if let Some(scope) = needed {
                op["security"] = json!([{"bearerAuth": []}]);
                op["x-required-scope"] = json!(scope.as_str());
                let sentence = format!("Requires a bearer token with scope `{scope}`.");
                op["description"] = match op["description"].as_str() {
                    Some(d) if !d.is_empty() => json!(format!("{d}\n\n{sentence}")),
                    _ => json!(sentence),
                };
                let responses = &mut op["responses"];
                responses["401"] = json!({
                    "description": "No token, or the token is invalid, revoked or expired.",
                    "headers": {"WWW-Authenticate": {"required": true, "schema": {"type": "string"}}},
                    "content": error_content()
                });
                responses["403"] = json!({
                    "description": format!("The token lacks scope `{scope}`."),
                    "content": error_content()
                });
                if responses.get("503").is_none() {
                    responses["503"] = json!({
                        "description": "The token cannot be checked: the database is not reachable.",
                        "content": error_content()
                    });
                }
            } else if policy.enabled {
                op["security"] = json!([]);
            }
            if policy.enabled {
                let responses = &mut op["responses"];
                responses["429"] = json!({
                    "description": "Rate limited (per token, or per client address without one).",
                    "headers": {"Retry-After": {"required": true, "schema": {"type": "integer", "minimum": 1}}},
                    "content": error_content()
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen: &str, mode: AuthMode) -> Settings {
        let mut s = Settings::load(&Settings::default_dir()).unwrap();
        s.server.listen = listen.into();
        s.auth.mode = mode;
        s
    }

    #[test]
    fn auto_mode_is_off_only_on_loopback() {
        for (listen, mode, enabled) in [
            ("127.0.0.1:8322", AuthMode::Auto, false),
            ("[::1]:8322", AuthMode::Auto, false),
            ("0.0.0.0:8322", AuthMode::Auto, true),
            ("[::]:8322", AuthMode::Auto, true),
            ("10.1.2.3:8322", AuthMode::Auto, true),
            ("127.0.0.1:8322", AuthMode::Required, true),
            ("0.0.0.0:8322", AuthMode::Off, false),
        ] {
            assert_eq!(
                Policy::of(&settings(listen, mode)).enabled,
                enabled,
                "{listen} {mode:?}"
            );
        }
    }

    #[test]
    fn paths_resolve_to_the_most_literal_operation() {
        let access = |method: Method, path: &str| operation_access(&method, path);
        assert_eq!(
            access(Method::GET, "/v1/models/embedding"),
            Some(Needs(Read))
        );
        assert_eq!(access(Method::GET, "/v1/models/anything"), Some(Inference));
        assert_eq!(
            access(Method::POST, "/api/v1/models/m/versions/3/promote"),
            Some(Needs(Admin))
        );
        assert_eq!(
            access(Method::DELETE, "/api/v1/datasets/x"),
            Some(Needs(Admin))
        );
        assert_eq!(access(Method::GET, "/api/v1/datasets/x"), Some(Needs(Read)));
        assert_eq!(access(Method::GET, "/api/v1/datasets//records"), None);
        assert_eq!(access(Method::GET, "/nothing/here"), None);
        assert_eq!(access(Method::GET, "/v1/models/"), None);
        assert_eq!(access(Method::GET, "//api/v1/jobs"), Some(Needs(Read)));
        assert_eq!(access(Method::PUT, "/api/v1/jobs"), None);
        // GET of a path whose literal template has only POST needs what the GET beside it needs.
        assert_eq!(access(Method::GET, "/v1/dataset/build"), Some(Needs(Read)));
    }

    #[test]
    fn head_needs_what_get_needs() {
        for path in [
            "/api/v1/jobs",
            "/v1/models/embedding",
            "/v1/models/m",
            "/health",
        ] {
            assert_eq!(
                operation_access(&Method::HEAD, path),
                operation_access(&Method::GET, path),
                "{path}"
            );
        }
        assert_eq!(operation_access(&Method::HEAD, "/predict"), None);
    }
}
