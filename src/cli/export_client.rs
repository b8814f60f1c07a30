//! `trainyard export`: download a model version as a folder other tools load (a tar from
//! `GET /api/v1/models/{name}/versions/{v}/export`), written as the tar or unpacked.
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use super::client::{check, get_json, unreachable, Api};
use super::exit::{exit_error, NOT_FOUND, USAGE};

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub api: Api,
    /// The model in the registry.
    #[arg(long)]
    pub model: String,
    /// The version; default the served one.
    #[arg(long)]
    pub version: Option<i32>,
    /// Unpack into this directory (the folder `{model}-v{version}/` is created in it);
    /// default the current directory.
    #[arg(long, conflicts_with = "tar")]
    pub dir: Option<PathBuf>,
    /// Write the tar itself to this file instead of unpacking it.
    #[arg(long)]
    pub tar: Option<PathBuf>,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let version = match args.version {
        Some(v) if v < 1 => return Err(exit_error(USAGE, "--version must be >= 1")),
        Some(v) => v,
        None => {
            let models = get_json(&args.api, "/api/v1/models").await?;
            let model = models
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == json!(args.model)))
                .ok_or_else(|| {
                    exit_error(
                        NOT_FOUND,
                        format!("no model `{}` in the registry", args.model),
                    )
                })?;
            model["served_version"].as_i64().ok_or_else(|| {
                exit_error(
                    NOT_FOUND,
                    format!("model `{}` serves no version: pass --version", args.model),
                )
            })? as i32
        }
    };
    let response = args
        .api
        .client()?
        .get(format!(
            "{}/api/v1/models/{}/versions/{version}/export",
            args.api.url, args.model
        ))
        .send()
        .await
        .map_err(|e| unreachable(&args.api, e))?;
    if !response.status().is_success() {
        check(response).await?;
        return Ok(());
    }
    let bytes = response.bytes().await?;
    let folder = format!("{}-v{version}", args.model);
    let written = match &args.tar {
        Some(path) => {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            path.clone()
        }
        None => {
            let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let target = dir.join(&folder);
            if target.exists() {
                return Err(exit_error(
                    USAGE,
                    format!(
                        "{} already exists: remove it or pass another --dir",
                        target.display()
                    ),
                ));
            }
            tar::Archive::new(bytes.as_ref())
                .unpack(&dir)
                .with_context(|| format!("unpacking into {}", dir.display()))?;
            target
        }
    };
    if args.json {
        println!(
            "{}",
            json!({"model": args.model, "version": version, "path": written, "bytes": bytes.len()})
        );
    } else {
        eprintln!(
            "exported {} version {version} to {} ({:.1} MB)",
            args.model,
            written.display(),
            bytes.len() as f64 / 1e6
        );
    }
    Ok(())
}
