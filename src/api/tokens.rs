//! `/api/v1/tokens` (scope `admin`): create (the token is shown once), list and revoke tokens.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};

use super::errors::ApiError;
use super::AppState;
use crate::auth::{self, AuthError, Scope};

#[derive(Tags)]
enum ApiTags {
    /// API tokens (scope `admin`).
    Tokens,
}

/// A scope a token can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TokenScope {
    Read,
    Submit,
    Predict,
    Admin,
}

impl From<TokenScope> for Scope {
    fn from(s: TokenScope) -> Scope {
        match s {
            TokenScope::Read => Scope::Read,
            TokenScope::Submit => Scope::Submit,
            TokenScope::Predict => Scope::Predict,
            TokenScope::Admin => Scope::Admin,
        }
    }
}

impl From<Scope> for TokenScope {
    fn from(s: Scope) -> TokenScope {
        match s {
            Scope::Read => TokenScope::Read,
            Scope::Submit => TokenScope::Submit,
            Scope::Predict => TokenScope::Predict,
            Scope::Admin => TokenScope::Admin,
        }
    }
}

#[derive(Debug, Object)]
pub struct CreateToken {
    /// Who or what the token is for (shown in listings).
    #[oai(validator(
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    ))]
    pub name: String,
    /// `read`, `submit` (includes read), `predict`, `admin` (includes all).
    #[oai(validator(min_items = 1, max_items = 4))]
    pub scopes: Vec<TokenScope>,
    /// Days until the token stops working; absent = never.
    #[oai(validator(minimum(value = "1"), maximum(value = "3650")))]
    pub expires_in_days: Option<u32>,
}

/// A token's public facts; its secret is never shown again.
#[derive(Debug, Object)]
pub struct Token {
    /// The public part of the token (`ty_<id>_…`).
    #[oai(validator(pattern = "^[0-9a-f]{12}$"))]
    pub id: String,
    pub name: String,
    pub scopes: Vec<TokenScope>,
    pub created_at: DateTime<Utc>,
    #[oai(skip_serializing_if_is_none)]
    pub expires_at: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<auth::TokenInfo> for Token {
    fn from(t: auth::TokenInfo) -> Token {
        Token {
            id: t.id,
            name: t.name,
            scopes: t.scopes.into_iter().map(Into::into).collect(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct CreatedToken {
    /// The token to send as `Authorization: Bearer <token>`. Shown only in this answer:
    /// trainyard keeps only its hash.
    pub token: String,
    #[oai(flatten)]
    pub info: Token,
}

#[derive(Debug, Object)]
pub struct TokenList {
    pub items: Vec<Token>,
}

#[derive(ApiResponse)]
enum CreateResponse {
    #[oai(status = 201)]
    Created(Json<CreatedToken>),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Database(db) => db.into(),
            // Schema-valid but refused (e.g. control characters in a name): 422.
            AuthError::Invalid(m) => ApiError::unprocessable("invalid_token_request", m, None),
            AuthError::NotFound(id) => ApiError::not_found("token", id),
        }
    }
}

pub struct TokensApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Tokens")]
impl TokensApi {
    /// Create an API token. The answer carries the token itself, once; store it now.
    #[oai(path = "/tokens", method = "post")]
    async fn create_token(
        &self,
        state: Data<&AppState>,
        body: Json<CreateToken>,
    ) -> Result<CreateResponse, ApiError> {
        let scopes: Vec<Scope> = body.scopes.iter().map(|&s| s.into()).collect();
        let created = auth::create(&state.pool, &body.name, &scopes, body.expires_in_days).await?;
        tracing::info!(token.id = %created.info.id, token.name = %created.info.name, "API token created");
        Ok(CreateResponse::Created(Json(CreatedToken {
            token: created.token,
            info: created.info.into(),
        })))
    }

    /// List API tokens (revoked ones included), newest first. Secrets are never listed.
    #[oai(path = "/tokens", method = "get")]
    async fn list_tokens(&self, state: Data<&AppState>) -> Result<Json<TokenList>, ApiError> {
        let items = auth::list(&state.pool).await?;
        Ok(Json(TokenList {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    /// Revoke a token by id. Takes effect in every API process within `auth.token_cache_secs`.
    #[oai(path = "/tokens/:id", method = "delete")]
    async fn revoke_token(
        &self,
        state: Data<&AppState>,
        /// The token's id (12 hex digits).
        #[oai(validator(pattern = "^[0-9a-f]{12}$"))]
        id: Path<String>,
    ) -> Result<Json<Token>, ApiError> {
        let revoked = auth::revoke(&state.pool, &id.0).await?;
        state.gate.forget(&revoked.id);
        tracing::info!(token.id = %revoked.id, "API token revoked");
        Ok(Json(revoked.into()))
    }
}
