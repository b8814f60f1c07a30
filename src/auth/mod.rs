//! API tokens: scopes, creation (the secret shown once), listing, revocation and verification.
//!
//! A token reads `ty_<id>_<secret>`: `id` (12 hex digits) is public and finds the row; the
//! secret (32 random bytes, base64url) is stored only as its SHA-256 and compared in constant
//! time. Verified tokens are cached for a few seconds so that a request costs no query; while
//! the database is unreachable a token verified recently keeps working (revoking needs the
//! database too, so nothing can be revoked that the cache would miss). This module knows no
//! HTTP: `api::auth` maps its answers to 401/403.
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

/// What a token may do. `admin` implies every other scope; `submit` implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read datasets, runs, models, jobs.
    Read,
    /// Ingest documents and annotations, build datasets, start and cancel runs and jobs.
    Submit,
    /// Inference and embeddings (when `auth.inference = "token"`).
    Predict,
    /// Delete datasets, promote and roll back models, manage tokens.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Submit, Scope::Predict, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Predict => "predict",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s.trim())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a token holding `held` may do what needs `needed`.
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.iter()
        .any(|&h| h == needed || h == Scope::Admin || (h == Scope::Submit && needed == Scope::Read))
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("token {0} not found")]
    NotFound(String),
}

/// A token's public facts (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token just created: the only moment its full text exists outside the client.
pub struct CreatedToken {
    pub info: TokenInfo,
    pub token: String,
}

/// Who a verified request is.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
}

fn scopes_from_db(raw: Vec<String>) -> Vec<Scope> {
    raw.iter().filter_map(|s| Scope::parse(s)).collect()
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits `ty_<id>_<secret>`; None when the text cannot be a token.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("ty_")?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let secret_ok = (20..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// 1 to 100 characters, not all whitespace, no control characters: the `pattern` and
/// `maxLength` the API document declares for a token's name.
fn validate_name(name: &str) -> Result<(), AuthError> {
    if name.trim().is_empty() || name.chars().count() > 100 {
        return Err(AuthError::Invalid(
            "name must be 1 to 100 characters, not all whitespace".into(),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(AuthError::Invalid(
            "name must not contain control characters".into(),
        ));
    }
    Ok(())
}

/// Creates a token; its text is returned once and never stored.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[Scope],
    expires_in_days: Option<u32>,
) -> Result<CreatedToken, AuthError> {
    validate_name(name)?;
    if scopes.is_empty() {
        return Err(AuthError::Invalid(
            "at least one scope is needed (read, submit, predict, admin)".into(),
        ));
    }
    if expires_in_days == Some(0) || expires_in_days.is_some_and(|d| d > 3650) {
        return Err(AuthError::Invalid(
            "expires_in_days must be between 1 and 3650".into(),
        ));
    }
    let mut rng = rand::rngs::OsRng;
    let mut id_bytes = [0u8; 6];
    let mut secret_bytes = [0u8; 32];
    rng.try_fill_bytes(&mut id_bytes)
        .and_then(|_| rng.try_fill_bytes(&mut secret_bytes))
        .map_err(|e| AuthError::Invalid(format!("the system random source failed: {e}")))?;
    let id = hex::encode(id_bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret_bytes);
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let expires_at = expires_in_days.map(|d| Utc::now() + chrono::Duration::days(d as i64));
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO api_tokens (id, name, scopes, secret_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
    )
    .bind(&id)
    .bind(name.trim())
    .bind(&names)
    .bind(hash_secret(&secret).as_slice())
    .bind(expires_at)
    .fetch_one(pool)
    .await?;
    Ok(CreatedToken {
        token: format!("ty_{id}_{secret}"),
        info: TokenInfo {
            id,
            name: name.trim().to_string(),
            scopes,
            created_at,
            expires_at,
            last_used_at: None,
            revoked_at: None,
        },
    })
}

type TokenRow = (
    String,
    String,
    Vec<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

fn info_of(row: TokenRow) -> TokenInfo {
    let (id, name, scopes, created_at, expires_at, last_used_at, revoked_at) = row;
    TokenInfo {
        id,
        name,
        scopes: scopes_from_db(scopes),
        created_at,
        expires_at,
        last_used_at,
        revoked_at,
    }
}

const INFO_COLUMNS: &str =
    "id, name, scopes, created_at, expires_at, last_used_at, revoked_at FROM api_tokens";

/// Every token, newest first (revoked ones included, marked).
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, AuthError> {
    let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INFO_COLUMNS} ORDER BY created_at DESC, id"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(info_of).collect())
}

/// Revokes a token by id (or by its full text). Revoking twice keeps the first time.
pub async fn revoke(pool: &PgPool, id_or_token: &str) -> Result<TokenInfo, AuthError> {
    let id = split_token(id_or_token)
        .map(|(id, _)| id)
        .unwrap_or(id_or_token);
    let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
         RETURNING {}",
        INFO_COLUMNS.trim_end_matches(" FROM api_tokens")
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    if row.is_some() {
        // Every API process forgets the token now, and stops trusting a cached copy of it
        // during a later database outage (see `TokenVerifier`).
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REVOCATIONS)
            .bind(id)
            .execute(pool)
            .await?;
    }
    row.map(info_of)
        .ok_or_else(|| AuthError::NotFound(id.to_string()))
}

/// The channel revocations are announced on (payload: the token id).
pub const REVOCATIONS: &str = "trainyard_token_revoked";

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a trainyard token, unknown, or the secret does not match.
    Invalid,
    Revoked,
    Expired,
}

#[derive(Clone)]
struct Cached {
    secret_hash: Vec<u8>,
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    fetched: Instant,
}

/// Verifies presented tokens against the database, with a short cache. While the database is
/// unreachable, a token verified within `outage_grace` keeps working only if this process was
/// listening for revocations (`REVOCATIONS`) from that verification on: a token revoked before
/// the outage was then forgotten when the revocation was announced, so it cannot ride the
/// grace.
pub struct TokenVerifier {
    pool: PgPool,
    fresh_for: Duration,
    outage_grace: Duration,
    cache: Mutex<HashMap<String, Option<Cached>>>,
    unknown_seen: Mutex<HashMap<String, Instant>>,
    /// When the current LISTEN connection started (None before the first one).
    listening_since: Mutex<Option<Instant>>,
}

impl TokenVerifier {
    pub fn new(pool: PgPool, fresh_for: Duration, outage_grace: Duration) -> TokenVerifier {
        TokenVerifier {
            pool,
            fresh_for,
            outage_grace,
            cache: Mutex::new(HashMap::new()),
            unknown_seen: Mutex::new(HashMap::new()),
            listening_since: Mutex::new(None),
        }
    }

    /// Listens for revocations until the verifier is dropped or the pool closed; reconnects.
    pub fn spawn_revocation_listener(self: &std::sync::Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = std::sync::Arc::downgrade(self);
        let pool = self.pool.clone();
        runtime.spawn(async move {
            while !pool.is_closed() {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if listener.listen(REVOCATIONS).await.is_err() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                {
                    let Some(verifier) = weak.upgrade() else {
                        return;
                    };
                    *verifier.listening_since.lock().unwrap() = Some(Instant::now());
                }
                loop {
                    let note = listener.try_recv().await;
                    let Some(verifier) = weak.upgrade() else {
                        return;
                    };
                    match note {
                        Ok(Some(note)) => verifier.forget(note.payload()),
                        // Reconnected: revocations in between were missed, so what was cached
                        // before no longer qualifies for the outage grace.
                        Ok(None) => {
                            *verifier.listening_since.lock().unwrap() = Some(Instant::now())
                        }
                        Err(_) => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    /// A cached verification may stand in for the database during an outage: recent, and made
    /// while this process was already listening for revocations.
    fn graced(&self, c: &Cached) -> bool {
        c.fetched.elapsed() < self.outage_grace
            && self
                .listening_since
                .lock()
                .unwrap()
                .is_some_and(|since| since <= c.fetched)
    }

    /// Ok(Ok(principal)) accepted, Ok(Err(why)) refused, Err(database) cannot tell now.
    pub async fn verify(&self, token: &str) -> Result<Result<Principal, Rejection>, sqlx::Error> {
        let Some((id, secret)) = split_token(token) else {
            return Ok(Err(Rejection::Invalid));
        };
        let cached = self.cache.lock().unwrap().get(id).cloned().flatten();
        let mut fetched_now = false;
        let entry = match cached {
            Some(c) if c.fetched.elapsed() < self.fresh_for => Some(c),
            stale => {
                if self.recently_unknown(id) {
                    return Ok(Err(Rejection::Invalid));
                }
                match self.fetch(id).await {
                    Ok(fresh) => {
                        fetched_now = true;
                        fresh
                    }
                    Err(e) => match stale {
                        // The database is down: a token verified recently keeps working.
                        Some(c) if self.graced(&c) => Some(c),
                        _ => return Err(e),
                    },
                }
            }
        };
        let Some(entry) = entry else {
            self.unknown_seen
                .lock()
                .unwrap()
                .insert(id.to_string(), Instant::now());
            return Ok(Err(Rejection::Invalid));
        };
        let presented = hash_secret(secret);
        if !bool::from(presented.as_slice().ct_eq(entry.secret_hash.as_slice())) {
            return Ok(Err(Rejection::Invalid));
        }
        if entry.revoked {
            return Ok(Err(Rejection::Revoked));
        }
        if entry.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Ok(Err(Rejection::Expired));
        }
        // Only a token that passed every check counts as used (once per cache period).
        if fetched_now {
            let marked = sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await;
            if let Err(e) = marked {
                tracing::debug!("token {id}: last_used_at not updated: {e}");
            }
        }
        Ok(Ok(entry.principal))
    }

    /// Drops what is cached for a token (after this process revoked it).
    pub fn forget(&self, id: &str) {
        self.cache.lock().unwrap().remove(id);
    }

    /// An id looked up and not found in the last few seconds is not looked up again, so a
    /// flood of made-up tokens costs no queries.
    fn recently_unknown(&self, id: &str) -> bool {
        let mut seen = self.unknown_seen.lock().unwrap();
        seen.retain(|_, at| at.elapsed() < self.fresh_for);
        seen.contains_key(id)
    }

    async fn fetch(&self, id: &str) -> Result<Option<Cached>, sqlx::Error> {
        type Row = (String, Vec<String>, Vec<u8>, Option<DateTime<Utc>>, bool);
        let row: Option<Row> = sqlx::query_as(
            "SELECT name, scopes, secret_hash, expires_at, revoked_at IS NOT NULL
             FROM api_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let cached = row.map(|(name, scopes, secret_hash, expires_at, revoked)| Cached {
            secret_hash,
            principal: Principal {
                token_id: id.to_string(),
                name,
                scopes: scopes_from_db(scopes),
            },
            expires_at,
            revoked,
            fetched: Instant::now(),
        });
        let mut cache = self.cache.lock().unwrap();
        if cache.len() > 10_000 {
            cache.retain(|_, c| {
                c.as_ref()
                    .is_some_and(|c| c.fetched.elapsed() < self.outage_grace)
            });
        }
        cache.insert(id.to_string(), cached.clone());
        Ok(cached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_imply_what_they_should() {
        use Scope::*;
        assert!(grants(&[Admin], Read) && grants(&[Admin], Predict) && grants(&[Admin], Admin));
        assert!(grants(&[Submit], Read) && grants(&[Submit], Submit));
        assert!(!grants(&[Submit], Admin) && !grants(&[Submit], Predict));
        assert!(!grants(&[Read], Submit) && !grants(&[Predict], Read));
        assert!(!grants(&[], Read));
    }

    #[test]
    fn token_text_is_checked_before_any_lookup() {
        let secret = "A".repeat(43);
        assert_eq!(
            split_token(&format!("ty_0123456789ab_{secret}")),
            Some(("0123456789ab", secret.as_str()))
        );
        for bad in [
            "",
            "ty_",
            "Bearer x",
            "ty_0123456789ab",
            "ty_0123456789a_AAAAAAAAAAAAAAAAAAAAAAAA",
            "ty_0123456789ag_AAAAAAAAAAAAAAAAAAAAAAAA",
            "ty_0123456789ab_short",
            "ty_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAA AA",
        ] {
            assert_eq!(split_token(bad), None, "{bad:?}");
        }
    }
}
