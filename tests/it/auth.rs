//! API tokens against a real `trainyard serve` and Postgres: 401/403 and `WWW-Authenticate`,
//! scopes, the token never stored nor logged, revocation through the API and the CLI, expiry,
//! per-token rate limits (429 + Retry-After), CORS, and the document declaring it all.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};
use sha2::Digest;
use trainyard::config::AuthMode;

/// `trainyard token …` against `url`; (exit code, stdout, stderr).
fn token_cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .arg("token")
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run trainyard token");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The secret part of `ty_<id>_<secret>` (the secret may itself contain `_`).
fn secret_of(token: &str) -> &str {
    token.splitn(3, '_').nth(2).unwrap()
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn status(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> u16 {
        self.call(method, path, token, body).await.status().as_u16()
    }
}

/// Asserts a 401 with the bearer challenge and a JSON error; returns the error code.
async fn expect_401(r: reqwest::Response) -> String {
    assert_eq!(r.status().as_u16(), 401);
    let challenge = r
        .headers()
        .get("www-authenticate")
        .expect("401 carries WWW-Authenticate")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"trainyard\""),
        "{challenge}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    body["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_revocation_against_a_real_server() {
    let db = fresh_db().await;
    // The first admin token, made the way an operator makes it.
    let (code, admin, err) = token_cli(
        &db.url,
        &["create", "--name", "ops", "--scopes", "admin", "--quiet"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(admin.starts_with("ty_"), "{admin}");
    let (code, _, err) = token_cli(&db.url, &["create", "--name", "x", "--scopes", "root"]);
    assert_eq!(code, 2, "an unknown scope is a usage error: {err}");
    assert!(err.contains("unknown scope `root`"), "{err}");

    // Only the SHA-256 of the secret is stored; no column holds the token or its secret.
    let secret = secret_of(&admin).to_string();
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, '|') FROM api_tokens t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!dump.contains(&secret), "the secret is not stored");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM api_tokens")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, sha2::Sha256::digest(secret.as_bytes()).to_vec());

    let port = free_port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("TRAINYARD_AUTH__MODE", "required")
        .env("TRAINYARD_AUTH__TOKEN_CACHE_SECS", "0.5")
        // Everything at debug: the test then checks no token text reached the log.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serve.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut s).ok();
        s
    });
    let serve = KillOnDrop(serve);
    let c = Client {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
    };
    let start = Instant::now();
    while c
        .http
        .get(format!("{}/health", c.base))
        .send()
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Public: health, the document, Swagger UI.
    for path in ["/health", "/api/v1/health", "/openapi.json", "/docs/"] {
        assert_eq!(c.status("GET", path, None, None).await, 200, "{path}");
    }
    // The served document declares the scheme and each operation's scope.
    let doc: Value = c
        .call("GET", "/openapi.json", None, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let build = &doc["paths"]["/api/v1/datasets"]["post"];
    assert_eq!(build["x-required-scope"], "submit");
    assert_eq!(build["security"], json!([{"bearerAuth": []}]));
    assert!(build["responses"]["401"].is_object() && build["responses"]["403"].is_object());
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([]));

    // No token, a malformed header, a made-up token: 401 with the challenge.
    assert_eq!(
        expect_401(c.call("GET", "/api/v1/datasets", None, None).await).await,
        "missing_token"
    );
    let r = c
        .http
        .get(format!("{}/api/v1/datasets", c.base))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_401(r).await, "invalid_token");
    let made_up = format!("ty_0123456789ab_{}", "A".repeat(43));
    assert_eq!(
        expect_401(
            c.call("GET", "/api/v1/datasets", Some(&made_up), None)
                .await
        )
        .await,
        "invalid_token"
    );
    // The right id with a wrong secret is refused too (constant-time compare of the hash).
    let wrong_secret = format!("ty_{}_{}", admin.split('_').nth(1).unwrap(), "B".repeat(43));
    assert_eq!(
        expect_401(
            c.call("GET", "/api/v1/datasets", Some(&wrong_secret), None)
                .await
        )
        .await,
        "invalid_token"
    );
    // A body is not read before the token is checked: 8 MiB without a token is a quick 401.
    let big =
        json!({"documents": [{"source": "s", "external_id": "1", "text": "x".repeat(8 << 20)}]});
    // (The server may close the connection before the client finishes sending: also a refusal.)
    let sent = c
        .http
        .post(format!("{}/api/v1/documents", c.base))
        .json(&big)
        .send()
        .await;
    if let Ok(r) = sent {
        assert_eq!(r.status().as_u16(), 401);
    }

    // The admin makes scoped tokens through the API; the answer carries the token once.
    let mut tokens = std::collections::HashMap::new();
    for (name, scopes) in [
        ("reader", json!(["read"])),
        ("writer", json!(["submit"])),
        ("scorer", json!(["predict"])),
    ] {
        let r = c
            .call(
                "POST",
                "/api/v1/tokens",
                Some(&admin),
                Some(json!({"name": name, "scopes": scopes})),
            )
            .await;
        assert_eq!(r.status().as_u16(), 201, "create {name}");
        let body: Value = r.json().await.unwrap();
        tokens.insert(
            name,
            (
                body["id"].as_str().unwrap().to_string(),
                body["token"].as_str().unwrap().to_string(),
            ),
        );
    }
    let (reader_id, reader) = tokens["reader"].clone();
    let (writer_id, writer) = tokens["writer"].clone();
    let (_, scorer) = tokens["scorer"].clone();
    let listed: Value = c
        .call("GET", "/api/v1/tokens", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{listed}");
    assert!(
        items.iter().all(|t| t.get("token").is_none()),
        "listings never carry a token"
    );
    assert!(
        !listed.to_string().contains(&reader),
        "listings never carry a secret"
    );
    // Bad creation requests are 400s that say what is wrong.
    for bad in [
        json!({"name": "", "scopes": ["read"]}),
        json!({"name": "  ", "scopes": ["read"]}),
        json!({"name": "a\nb", "scopes": ["read"]}),
        json!({"name": "n", "scopes": []}),
        json!({"name": "n", "scopes": ["root"]}),
    ] {
        let r = c
            .call("POST", "/api/v1/tokens", Some(&admin), Some(bad.clone()))
            .await;
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }

    // 403 for a valid token without the scope; the message names the scope needed.
    let dataset = json!({"name": "d", "selection": {"sources": ["s"]}, "label_schema": {"type": "binary", "labels": ["spam"]}});
    let some_id = uuid::Uuid::new_v4();
    let r = c
        .call(
            "POST",
            "/api/v1/datasets",
            Some(&reader),
            Some(dataset.clone()),
        )
        .await;
    assert_eq!(r.status().as_u16(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_scope");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`submit`"),
        "{body}"
    );
    let cases: Vec<(&str, String, &str, u16)> = vec![
        ("GET", "/api/v1/datasets".into(), reader.as_str(), 200),
        ("GET", "/api/v1/jobs".into(), writer.as_str(), 200), // submit includes read
        (
            "DELETE",
            format!("/api/v1/datasets/{some_id}"),
            writer.as_str(),
            403,
        ),
        (
            "POST",
            "/api/v1/models/m/rollback".into(),
            writer.as_str(),
            403,
        ),
        ("GET", "/api/v1/tokens".into(), writer.as_str(), 403),
        ("POST", "/predict".into(), reader.as_str(), 403),
        ("GET", "/api/v1/datasets".into(), scorer.as_str(), 403),
        (
            "DELETE",
            format!("/api/v1/datasets/{some_id}"),
            admin.as_str(),
            404,
        ),
    ];
    for (method, path, token, want) in &cases {
        let got = c.status(method, path, Some(token), None).await;
        assert_eq!(got, *want, "{method} {path}");
    }
    let r = c
        .call(
            "POST",
            "/api/v1/documents",
            Some(&writer),
            Some(json!({"documents": [{"source": "s", "external_id": "1", "text": "hello"}]})),
        )
        .await;
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    // predict scope passes the gate (no model is served: not a 401/403).
    let got = c
        .status(
            "POST",
            "/predict",
            Some(&scorer),
            Some(json!({"text": "hi"})),
        )
        .await;
    assert!(
        got != 401 && got != 403,
        "predict token passes the gate, got {got}"
    );

    // Revoked through the API: refused at once by this process.
    let r = c
        .call(
            "DELETE",
            &format!("/api/v1/tokens/{reader_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["revoked_at"].is_string(), "{body}");
    let r = c.call("GET", "/api/v1/datasets", Some(&reader), None).await;
    assert_eq!(expect_401(r).await, "invalid_token");
    // Revoked through the CLI (another process): refused within token_cache_secs (0.5 s).
    let (code, _, err) = token_cli(&db.url, &["revoke", &writer_id]);
    assert_eq!(code, 0, "{err}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        c.status("GET", "/api/v1/jobs", Some(&writer), None).await,
        401
    );
    let (code, _, _) = token_cli(&db.url, &["revoke", "ffffffffffff"]);
    assert_eq!(code, 4, "revoking an unknown id is not found");
    // Expired: refused, and `token list` says so.
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'scorer'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c
        .call(
            "POST",
            "/predict",
            Some(&scorer),
            Some(json!({"text": "hi"})),
        )
        .await;
    let body_code = expect_401(r).await;
    assert_eq!(body_code, "invalid_token");
    let (code, table, _) = token_cli(&db.url, &["list"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("revoked") && table.contains("expired") && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(&secret), "list never prints a secret");

    // Nothing the server logged holds a token's secret (RUST_LOG=debug).
    drop(serve);
    let log = log.join().unwrap();
    assert!(
        log.contains("API tokens required"),
        "start-up states the policy: {log}"
    );
    for t in [&admin, &reader, &writer, &scorer] {
        let secret = secret_of(t);
        assert!(!log.contains(secret), "a token secret reached the log");
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_rate_limit_answers_429_with_retry_after() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.auth.mode = AuthMode::Required;
    settings.auth.rate_limit_per_second = 2;
    settings.auth.rate_limit_burst = 3;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let scopes = [trainyard::auth::Scope::Read];
    let a = trainyard::auth::create(&db.pool, "a", &scopes, None)
        .await
        .unwrap()
        .token;
    let b = trainyard::auth::create(&db.pool, "b", &scopes, None)
        .await
        .unwrap()
        .token;
    let c = Client {
        base: app.base.clone(),
        http: reqwest::Client::new(),
    };
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = c.call("GET", "/api/v1/datasets", Some(&a), None).await;
        if r.status().as_u16() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(
        &statuses[..3],
        &[200, 200, 200],
        "the burst passes: {statuses:?}"
    );
    assert!(statuses.contains(&429), "then 429: {statuses:?}");
    let secs: u64 = retry_after
        .expect("429 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    // Another token has its own budget.
    assert_eq!(
        c.status("GET", "/api/v1/datasets", Some(&b), None).await,
        200
    );
    // After waiting what Retry-After said, the first token is served again.
    tokio::time::sleep(Duration::from_secs(secs) + Duration::from_millis(300)).await;
    assert_eq!(
        c.status("GET", "/api/v1/datasets", Some(&a), None).await,
        200
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origins() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.auth.mode = AuthMode::Required;
    settings.auth.cors_origins = vec!["https://labels.example.org".into()];
    settings.auth.cors_allow_credentials = true;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let preflight = |origin: &'static str| {
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1/datasets", app.base);
        async move {
            http.request(reqwest::Method::OPTIONS, url)
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send()
                .await
                .unwrap()
        }
    };
    let ok = preflight("https://labels.example.org").await;
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap()),
        Some("https://labels.example.org")
    );
    assert_eq!(
        ok.headers()
            .get("access-control-allow-credentials")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let other = preflight("https://evil.example.com").await;
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "an unlisted origin gets no CORS grant"
    );
    // `*` with credentials is refused at start-up.
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &db.url)
        .env("TRAINYARD_AUTH__CORS_ORIGINS", "[\"*\"]")
        .env("TRAINYARD_AUTH__CORS_ALLOW_CREDENTIALS", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.cors_origins"), "{err}");
    db.drop_db().await;
}

/// Every operation of the document has an entry in the scope table and vice versa, and with
/// auth on every operation but the health checks declares the bearer scheme.
#[test]
fn every_operation_has_a_declared_scope() {
    let generated: Value =
        serde_json::from_str(&trainyard::api::openapi_service("/").spec()).unwrap();
    let mut documented = Vec::new();
    for (path, ops) in generated["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let mut table: Vec<String> = trainyard::api::auth::OPERATIONS
        .iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    documented.sort();
    table.sort();
    assert_eq!(
        documented, table,
        "api::auth::OPERATIONS lists exactly the documented operations"
    );
    let committed: Value = serde_json::from_str(&trainyard::api::openapi_json()).unwrap();
    for (path, ops) in committed["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            // Health, and who-am-I (it tells a client whether it must sign in at all).
            let public = path.ends_with("/health") || path == "/api/v1/me";
            assert_eq!(
                op["security"].as_array().map(|a| a.is_empty()),
                Some(public),
                "{method} {path}: security"
            );
            assert!(
                op["responses"]["429"].is_object(),
                "{method} {path}: 429 declared"
            );
            if !public {
                assert!(op["x-required-scope"].is_string(), "{method} {path}");
                assert!(op["responses"]["401"]["headers"]["WWW-Authenticate"].is_object());
            }
        }
    }
}
