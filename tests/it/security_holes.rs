//! The holes a security review found (issue 20), each against a real server and Postgres: every
//! documented operation × method (HEAD included) × scope answered by the scope table;
//! `auto_promote` / `promotion_gate` only for `admin`; HTTP/2 bodies read through the size limit;
//! with auth off only loopback Host names and no proxied requests; deployment details of
//! `/api/v1/health` only for `read`; security headers on Swagger UI; `last_used_at` only for a
//! token that passed; a token revoked before a database outage refused during it.

use std::sync::Arc;
use std::time::Duration;

use crate::support::private_pg::PrivatePg;
use crate::support::*;
use serde_json::{json, Value};
use trainyard::api::auth::{Access, OPERATIONS};
use trainyard::auth::Scope;
use trainyard::config::{AuthMode, Settings};

/// Settings with tokens required and no rate limit (the matrix sends a thousand requests).
fn auth_settings(url: &str) -> Settings {
    let mut s = test_settings(url);
    s.auth.mode = AuthMode::Required;
    s.auth.rate_limit_per_second = 0;
    s.auth.ip_rate_limit_per_second = 0;
    s
}

/// One token per scope, by name.
async fn tokens(pool: &sqlx::PgPool) -> Vec<(&'static str, Vec<Scope>, String)> {
    let mut out = Vec::new();
    for (name, scopes) in [
        ("read", vec![Scope::Read]),
        ("submit", vec![Scope::Submit]),
        ("predict", vec![Scope::Predict]),
        ("admin", vec![Scope::Admin]),
    ] {
        let created = trainyard::auth::create(pool, name, &scopes, None)
            .await
            .unwrap();
        out.push((name, scopes, created.token));
    }
    out
}

/// The token made for `name` by [`tokens`].
fn token(tokens: &[(&'static str, Vec<Scope>, String)], name: &str) -> String {
    tokens.iter().find(|t| t.0 == name).unwrap().2.clone()
}

/// A path template with every `{parameter}` filled.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{id}" | "{dataset_id}" => uuid::Uuid::new_v4().to_string(),
            "{version}" => "1".into(),
            s if s.starts_with('{') => "m".into(),
            s => s.into(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = app
        .client
        .request(method.parse().unwrap(), format!("{}{path}", app.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

/// Every documented operation with every token, its `GET`s also as `HEAD`: no token → 401
/// where a scope is needed, a token without it → 403, a token with it → neither; the scope is
/// read from `api::auth::OPERATIONS`, the table the document is checked against (tests/it/auth.rs).
/// Every other method on each operation's path: 401 without a token, never a success with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_method_and_scope_is_answered_by_the_scope_table() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(auth_settings(&db.url))).await;
    let tokens = tokens(&db.pool).await;
    let mut checked = 0;
    let mut templates: Vec<&str> = OPERATIONS.iter().map(|(_, p, _)| *p).collect();
    templates.sort();
    templates.dedup();
    for template in templates {
        let path = concrete(template);
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            let as_method = if method == "HEAD" { "GET" } else { method };
            let operation = OPERATIONS
                .iter()
                .find(|(m, p, _)| *m == as_method && *p == template);
            let (status, _, body) = send(&app, method, &path, None).await;
            let Some((_, _, access)) = operation else {
                assert_eq!(
                    status, 401,
                    "{method} {path} (no operation) without a token: {body}"
                );
                for (name, _, token) in &tokens {
                    let (status, _, body) = send(&app, method, &path, Some(token)).await;
                    assert!(
                        !(200..300).contains(&status),
                        "{method} {path} (no operation) with a `{name}` token: {status} {body}"
                    );
                    checked += 1;
                }
                continue;
            };
            let needed: Option<Scope> = match access {
                Access::Public => {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path} without a token: {status} {body}"
                    );
                    continue;
                }
                Access::Needs(s) => Some(*s),
                Access::Inference => Some(Scope::Predict),
                Access::AnyToken => None,
            };
            assert_eq!(status, 401, "{method} {path} without a token: {body}");
            for (name, scopes, token) in &tokens {
                let allowed = needed.is_none_or(|scope| trainyard::auth::grants(scopes, scope));
                let (status, _, body) = send(&app, method, &path, Some(token)).await;
                if allowed {
                    assert!(
                        status != 401 && status != 403,
                        "{method} {path} with a `{name}` token: {status} {body}"
                    );
                } else {
                    assert_eq!(status, 403, "{method} {path} with a `{name}` token: {body}");
                }
                checked += 1;
            }
        }
    }
    println!("{checked} (operation, method, token) answers checked against the scope table");
    db.drop_db().await;
}

/// Promotion is `admin`'s: a `submit` token cannot start a run that promotes itself, with or
/// without a promotion gate, and nothing is queued; an `admin` token passes that check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_promote_and_promotion_gates_need_admin() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(auth_settings(&db.url))).await;
    let tokens = tokens(&db.pool).await;
    let token = |name: &str| token(&tokens, name);
    let dataset = uuid::Uuid::new_v4();
    for (body, param) in [
        (
            json!({"dataset_id": dataset, "model_name": "m", "auto_promote": true}),
            "auto_promote",
        ),
        (
            json!({"dataset_id": dataset, "model_name": "m",
                   "promotion_gate": {"dataset_id": dataset}}),
            "promotion_gate",
        ),
    ] {
        let r = app
            .client
            .post(format!("{}/api/v1/training-runs", app.base))
            .bearer_auth(token("submit"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "insufficient_scope", "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("`admin`"),
            "{e}"
        );
        // With `admin`, the request gets past the scope check (to the unknown dataset).
        let r = app
            .client
            .post(format!("{}/api/v1/training-runs", app.base))
            .bearer_auth(token("admin"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 403, "{body}");
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM training_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(runs, 0);
    // Without auto_promote a `submit` token may train (here: refused for the unknown dataset).
    let r = app
        .client
        .post(format!("{}/api/v1/training-runs", app.base))
        .bearer_auth(token("submit"))
        .json(&json!({"dataset_id": dataset, "model_name": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    db.drop_db().await;
}

/// An HTTP/2 (h2c, prior knowledge) body carries no Content-Length: it is still read through
/// the limit, so an oversized JSON body is a 413, and a small one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_are_read_through_the_size_limit() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.server.max_body_bytes = 64 * 1024;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let post = |size: usize| {
        let addr = addr.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            let mut client = client.ready().await.unwrap();
            let request = poem::http::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/api/v1/documents"))
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            let (response, mut stream) = client.send_request(request, false).unwrap();
            let text = "x".repeat(size);
            let body = json!({"documents": [{"source": "h2", "external_id": "1", "text": text}]})
                .to_string()
                .into_bytes();
            for chunk in body.chunks(16 * 1024) {
                if stream
                    .send_data(bytes::Bytes::copy_from_slice(chunk), false)
                    .is_err()
                {
                    break; // the server answered and reset the stream
                }
            }
            let _ = stream.send_data(bytes::Bytes::new(), true);
            let response = response.await.unwrap();
            let has_length = response.headers().contains_key("content-length");
            (response.status().as_u16(), has_length)
        }
    };
    let (status, _) = post(1 << 20).await;
    assert_eq!(status, 413, "a 1 MiB HTTP/2 body over a 64 KiB limit");
    let (status, _) = post(100).await;
    assert_eq!(status, 200, "a small HTTP/2 body is served");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the small document was stored");
    db.drop_db().await;
}

/// With auth off (here `auth.mode = off`, as a loopback bind makes `auto`), a request addressed
/// to another name (DNS rebinding) or carrying proxy headers is refused with a JSON 403; local
/// names pass; `auth.open_allowed_hosts` adds names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_only_local_clients_are_answered() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.auth.mode = AuthMode::Off;
    settings.auth.open_allowed_hosts = vec!["Builder.Internal".into()];
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let port = app.base.rsplit(':').next().unwrap().to_string();
    let get = |host: String, extra: Option<(&'static str, &'static str)>| {
        let mut req = app
            .client
            .get(format!("{}/api/v1/datasets", app.base))
            .header("host", host);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_string(),
        format!("builder.internal:{port}"),
    ] {
        let (status, body) = get(host.clone(), None).await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    for host in [
        format!("evil.example:{port}"),
        "attacker.test".to_string(),
        format!("10.0.0.5:{port}"),
    ] {
        let (status, body) = get(host.clone(), None).await;
        assert_eq!(status, 403, "Host {host}: {body}");
        assert_eq!(body["error"]["code"], "host_not_allowed", "{body}");
    }
    for header in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9"),
        ("x-forwarded-host", "example.com"),
    ] {
        let (status, body) = get(format!("127.0.0.1:{port}"), Some(header)).await;
        assert_eq!(status, 403, "{header:?}: {body}");
        assert_eq!(body["error"]["code"], "proxied_request_refused", "{body}");
    }
    db.drop_db().await;
}

/// `/api/v1/health` is public, but host names, versions and load errors are for `read` tokens;
/// Swagger UI carries a content security policy, refuses framing; every answer says nosniff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_details_need_read_and_docs_carry_security_headers() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(auth_settings(&db.url))).await;
    let tokens = tokens(&db.pool).await;
    let token = |name: &str| token(&tokens, name);
    let details = [
        "queues",
        "live_workers",
        "embedding_models",
        "libtorch",
        "cuda_devices",
        "served_models",
    ];
    for (who, token) in [
        ("no token", None),
        ("a predict token", Some(token("predict"))),
        (
            "a made-up token",
            Some(format!("ty_0123456789ab_{}", "A".repeat(43))),
        ),
    ] {
        let (status, _, body) = send(&app, "GET", "/api/v1/health", token.as_deref()).await;
        assert_eq!(status, 200, "{who}: {body}");
        let health: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["database"], "ok");
        for key in details {
            assert!(health.get(key).is_none(), "{who} sees `{key}`: {health}");
        }
    }
    let (status, _, body) = send(&app, "GET", "/api/v1/health", Some(&token("read"))).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    for key in details {
        assert!(
            health.get(key).is_some(),
            "a read token sees `{key}`: {health}"
        );
    }

    let (status, headers, _) = send(&app, "GET", "/docs/", None).await;
    assert_eq!(status, 200);
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let (_, headers, _) = send(&app, "GET", "/api/v1/datasets", None).await;
    assert_eq!(headers["x-content-type-options"], "nosniff");
    db.drop_db().await;
}

/// `last_used_at` moves only for a token that passed every check; a token revoked just before
/// a database outage is refused during it, while one verified and not revoked keeps working
/// (the outage grace), on a private Postgres that the test stops. `/metrics` (behind `read`
/// here) needs no database, so only the token check decides its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_do_not_ride_the_outage_grace() {
    let pg = PrivatePg::start();
    let (url, pool) = pg.create_database("trainyard").await;
    let mut settings = auth_settings(&url);
    settings.auth.token_cache_secs = 0.5;
    settings.auth.public_metrics = false;
    let app_pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect(&url)
        .await
        .unwrap();
    let app = spawn_api(app_pool, Arc::new(settings)).await;
    let tokens = tokens(&pool).await;
    let token = |name: &str| token(&tokens, name);
    let id = |name: &str| token(name).split('_').nth(1).unwrap().to_string();
    let last_used = |name: &str| {
        let (pool, id) = (pool.clone(), id(name));
        async move {
            sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
                "SELECT last_used_at FROM api_tokens WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // A wrong secret for a real id: refused, and the token is not marked used.
    let wrong = format!("ty_{}_{}", id("read"), "B".repeat(43));
    assert_eq!(send(&app, "GET", "/metrics", Some(&wrong)).await.0, 401);
    assert!(
        last_used("read").await.is_none(),
        "a failed attempt is no use"
    );
    // Both tokens verified while the revocation listener runs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for name in ["read", "submit"] {
        assert_eq!(
            send(&app, "GET", "/metrics", Some(&token(name))).await.0,
            200
        );
        assert!(last_used(name).await.is_some(), "{name} marked used");
    }
    // Revoked by another process (the CLI's function on its own pool); then, with both cache
    // entries stale, the database goes away.
    trainyard::auth::revoke(&pool, &id("submit")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    pool.close().await;
    pg.stop_server();
    let (status, _, body) = send(&app, "GET", "/metrics", Some(&token("submit"))).await;
    assert!(
        status == 401 || status == 503,
        "the token revoked before the outage, during it: {status} {body}"
    );
    let (status, _, body) = send(&app, "GET", "/metrics", Some(&token("read"))).await;
    assert_eq!(
        status, 200,
        "a token verified before the outage keeps working: {body}"
    );
    pg.start_server();
    assert!(pg.wait_ready(Duration::from_secs(30)));
}

/// A run's webhook is an API caller's URL: internal addresses (loopback, private, link-local
/// metadata, a name resolving to loopback) are refused with a 422 naming `webhook.url`, unless
/// `training.webhook_allowed_hosts` lists the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_may_not_reach_internal_addresses() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let dataset = uuid::Uuid::new_v4();
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://192.168.0.10:8080/",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://0.0.0.0:9/",
        "file:///etc/passwd",
    ] {
        let (status, e) = app
            .post(
                "/api/v1/training-runs",
                json!({"dataset_id": dataset, "model_name": "m", "webhook": {"url": url}}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {e}");
        assert_eq!(e["error"]["param"], "webhook.url", "{url}: {e}");
    }
    // Allowed by the operator: the URL check passes (the dataset is what is missing then).
    let mut settings = test_settings(&db.url);
    settings.training.webhook_allowed_hosts = vec!["127.0.0.1".into(), "localhost".into()];
    let allowing = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    for url in ["http://127.0.0.1:9/hook", "http://localhost:9/hook"] {
        let (status, e) = allowing
            .post(
                "/api/v1/training-runs",
                json!({"dataset_id": dataset, "model_name": "m", "webhook": {"url": url}}),
            )
            .await;
        assert_eq!(e["error"]["code"], "unknown_dataset", "{url}: {status} {e}");
    }
    db.drop_db().await;
}

/// The sender checks again at every connection and follows no redirect: an allowed sink that
/// redirects to another server sends nothing there, and a name that resolves to loopback
/// (allowed as `127.0.0.1` only) is not reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_senders_follow_no_redirect_and_check_every_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use trainyard::training::webhook::{AddressPolicy, Telemetry, WebhookConfig};
    quiet_init();
    // Server B counts what reaches it; server A redirects every POST to B.
    let hits = Arc::new(AtomicUsize::new(0));
    let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b.local_addr().unwrap();
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = b.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = a.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = a.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 65536];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{b_addr}/stolen\r\ncontent-length: 0\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let loopback_only = AddressPolicy::allowing(&["127.0.0.1".to_string()]);
    let handle = tokio::runtime::Handle::current();
    for (url, what) in [
        (format!("http://{a_addr}/hook"), "a redirecting sink"),
        (
            format!("http://localhost:{}/hook", b_addr.port()),
            "a name resolving to loopback",
        ),
    ] {
        let config = WebhookConfig {
            max_attempts: 1,
            timeout_ms: 1000,
            ..WebhookConfig::new(url, None).with_addresses(loopback_only.clone())
        };
        let t = Telemetry::start(Some(config), "ssrf".into(), &handle);
        t.log_step(1, 1, json!({"loss": 0.5}));
        let stats = t.finish(Duration::from_secs(5)).await;
        assert_eq!((stats.sent, stats.failed), (0, 1), "{what}: {stats:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached server B");
}

/// The per-address limit comes before any token lookup: made-up tokens (each a different id,
/// so each a lookup before) from one address get 429 past its burst although the per-token
/// limit is far off. Behind a trusted proxy each forwarded client has its own budget; from an
/// untrusted peer `X-Forwarded-For` changes nothing. IPv6 addresses share a /64's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limit_comes_first_and_trusts_only_configured_proxies() {
    let db = fresh_db().await;
    let mut settings = auth_settings(&db.url);
    settings.auth.rate_limit_per_second = 1000;
    settings.auth.ip_rate_limit_per_second = 1;
    settings.auth.ip_rate_limit_burst = 5;
    let app = spawn_api(db.pool.clone(), Arc::new(settings.clone())).await;
    let made_up = |i: usize| format!("ty_{:012x}_{}", i, "A".repeat(43));
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(
            send(&app, "GET", "/api/v1/datasets", Some(&made_up(i)))
                .await
                .0,
        );
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    // Untrusted peer: a forged X-Forwarded-For does not buy a new budget.
    let r = app
        .client
        .get(format!("{}/health", app.base))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);

    settings.auth.trusted_proxies = vec!["127.0.0.1".into()];
    let behind_proxy = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    for client in ["198.51.100.7", "198.51.100.8"] {
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let r = behind_proxy
                .client
                .get(format!("{}/health", behind_proxy.base))
                .header("x-forwarded-for", format!("203.0.113.1, {client}"))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(&statuses[..5], &[200; 5], "{client}: {statuses:?}");
        assert_eq!(statuses[6], 429, "{client}: {statuses:?}");
    }
    use trainyard::api::auth::address_bucket;
    assert_eq!(
        address_bucket("2001:db8:1:2:aaaa::1".parse().unwrap()),
        address_bucket("2001:db8:1:2:ffff:1:2:3".parse().unwrap())
    );
    assert_ne!(
        address_bucket("2001:db8:1:2::1".parse().unwrap()),
        address_bucket("2001:db8:1:3::1".parse().unwrap())
    );
    assert_eq!(
        address_bucket("::ffff:192.0.2.1".parse().unwrap()),
        address_bucket("192.0.2.1".parse().unwrap())
    );
    db.drop_db().await;
}

/// Expensive requests are bounded per process: with every permit taken, an export or the
/// review queue is a 503 `busy` with `Retry-After`, before any work; with one free, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_requests_are_bounded_with_retry_after() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let taken = app
        .state
        .heavy
        .clone()
        .try_acquire_many_owned(app.state.settings.server.max_concurrent_heavy_requests as u32)
        .unwrap();
    let id = uuid::Uuid::new_v4();
    for path in [
        "/api/v1/models/m/versions/1/export".to_string(),
        format!("/api/v1/datasets/{id}/export"),
        format!("/api/v1/scoring-jobs/{id}/export"),
        "/api/v1/review-queue?model=m&strategy=uncertain".to_string(),
    ] {
        let (status, headers, body) = send(&app, "GET", &path, None).await;
        // Datasets and scoring jobs are looked up first (404 here); the others are refused.
        if status == 404 {
            continue;
        }
        assert_eq!(status, 503, "{path}: {body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["error"]["code"], "busy", "{path}: {e}");
        assert_eq!(headers["retry-after"], "2", "{path}");
    }
    drop(taken);
    let (status, _, body) = send(&app, "GET", "/api/v1/models/m/versions/1/export", None).await;
    assert_eq!(
        status, 404,
        "with a permit free the export runs (no such model): {body}"
    );
    db.drop_db().await;
}

/// A run's webhook `Authorization` is stored sealed (never in the clear) and refused when the
/// server has no key to seal it with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_credentials_are_stored_sealed() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.training.webhook_allowed_hosts = vec!["127.0.0.1".into()];
    // A dataset row is needed for the run to be created: the smallest ready one.
    let app = spawn_api(db.pool.clone(), Arc::new(settings.clone())).await;
    let _worker = spawn_inprocess_worker(&app, 1);
    import_spam_docs(&app, "mail", 40).await;
    let dataset = start_spam_dataset(&app, "sealed", "mail").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let body = json!({"dataset_id": dataset, "model_name": "m",
                      "hyperparameters": {"epochs": 1},
                      "webhook": {"url": "http://127.0.0.1:9/hook",
                                  "authorization": "Bearer very-secret-value"}});
    let (status, run) = app.post("/api/v1/training-runs", body.clone()).await;
    assert_eq!(status, 202, "{run}");
    let stored: String = sqlx::query_scalar("SELECT webhook::text FROM training_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!stored.contains("very-secret-value"), "{stored}");
    assert!(stored.contains("sealed:v1:"), "{stored}");

    settings.training.secrets_key_env = "TRAINYARD_UNSET_SECRETS_KEY_FOR_TEST".into();
    let keyless = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let (status, e) = keyless.post("/api/v1/training-runs", body).await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["code"], "secrets_key_missing", "{e}");
    assert_eq!(e["error"]["param"], "webhook.authorization", "{e}");
    db.drop_db().await;
}
