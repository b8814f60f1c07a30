//! `trainyard token create|list|revoke`: manage API tokens directly in the database (how the
//! first admin token is made; afterwards `POST /api/v1/tokens` works too).
use anyhow::Context;

use crate::auth::{self, Scope};

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// Who or what the token is for.
        #[arg(long)]
        name: String,
        /// Comma-separated: read, submit (includes read), predict, admin (includes all).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Days until it stops working (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Print only the token (for scripts: `TOKEN=$(trainyard token create … --quiet)`).
        #[arg(long)]
        quiet: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id (or by its full text).
    Revoke { id: String },
}

pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let (_, pool) = crate::start(true).await?;
    match args.command {
        TokenCommand::Create {
            name,
            scopes,
            expires_in_days,
            quiet,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).with_context(|| {
                        format!("unknown scope `{s}` (read, submit, predict, admin)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| super::exit::exit_error(super::exit::USAGE, format!("{e:#}")))?;
            let created = auth::create(&pool, &name, &scopes, expires_in_days).await?;
            if quiet {
                println!("{}", created.token);
            } else {
                let scopes: Vec<&str> = created.info.scopes.iter().map(|s| s.as_str()).collect();
                eprintln!(
                    "created token {} `{}` with scopes {}{}; it is shown once, store it now:",
                    created.info.id,
                    created.info.name,
                    scopes.join(","),
                    created
                        .info
                        .expires_at
                        .map(|t| format!(", expires {}", t.format("%Y-%m-%d %H:%M UTC")))
                        .unwrap_or_default()
                );
                println!("{}", created.token);
            }
        }
        TokenCommand::List { json } => {
            let tokens = auth::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
                return Ok(());
            }
            println!(
                "{:<12}  {:<24}  {:<22}  {:<16}  {:<16}  state",
                "id", "name", "scopes", "created", "last used"
            );
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "-".into())
            };
            for t in tokens {
                let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                let state = match (t.revoked_at, t.expires_at) {
                    (Some(r), _) => format!("revoked {}", r.format("%Y-%m-%d %H:%M")),
                    (None, Some(e)) if e <= chrono::Utc::now() => "expired".into(),
                    (None, Some(e)) => format!("active until {}", e.format("%Y-%m-%d")),
                    (None, None) => "active".into(),
                };
                let name: String = t.name.chars().take(24).collect();
                println!(
                    "{:<12}  {:<24}  {:<22}  {:<16}  {:<16}  {state}",
                    t.id,
                    name,
                    scopes.join(","),
                    when(Some(t.created_at)),
                    when(t.last_used_at),
                );
            }
        }
        TokenCommand::Revoke { id } => match auth::revoke(&pool, &id).await {
            Ok(t) => eprintln!(
                "revoked token {} `{}` (every API process stops accepting it within auth.token_cache_secs)",
                t.id, t.name
            ),
            Err(auth::AuthError::NotFound(id)) => {
                return Err(super::exit::exit_error(
                    super::exit::NOT_FOUND,
                    format!("no token with id {id}"),
                ))
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
}
