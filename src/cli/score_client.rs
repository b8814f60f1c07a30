//! `trainyard score`: start a batch scoring job, follow it with a progress bar (documents,
//! rate, ETA), and optionally download its results as JSON Lines or Parquet.
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::client::{check, get_json, unreachable, Api};
use super::exit::{exit_error, CANCELLED, FAILED, USAGE};

#[derive(clap::Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub api: Api,
    /// The model in the registry.
    #[arg(long)]
    pub model: String,
    /// The version; default the served one.
    #[arg(long)]
    pub version: Option<i32>,
    /// Comma-separated whole sources to score.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Score a dataset's records instead (its texts as built).
    #[arg(long)]
    pub dataset: Option<String>,
    /// With --dataset: train | validation | test.
    #[arg(long)]
    pub split: Option<String>,
    /// One threshold for every label (default: the version's tuned ones).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Write every result here when done: `.jsonl` or `.parquet`.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// Return at once instead of following the job.
    #[arg(long)]
    pub no_wait: bool,
}

pub async fn score(args: ScoreArgs) -> anyhow::Result<()> {
    let format = match &args.output {
        None => None,
        Some(path) => match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Some("jsonl"),
            Some("parquet") => Some("parquet"),
            _ => {
                return Err(exit_error(
                    USAGE,
                    format!("--output {} must end in .jsonl or .parquet", path.display()),
                ))
            }
        },
    };
    let selection = match (&args.dataset, args.sources.is_empty()) {
        (Some(dataset), true) => json!({"dataset_id": dataset, "split": args.split}),
        (None, false) => json!({"sources": args.sources}),
        _ => {
            return Err(exit_error(
                USAGE,
                "give either --sources or --dataset (with an optional --split)",
            ))
        }
    };
    let mut body = json!({"model": args.model, "selection": selection});
    if let Some(v) = args.version {
        body["version"] = json!(v);
    }
    if let Some(t) = args.threshold {
        body["threshold"] = json!(t);
    }
    let client = args.api.client()?;
    let created = check(
        client
            .post(format!("{}/api/v1/scoring-jobs", args.api.url))
            .json(&body)
            .send()
            .await
            .map_err(|e| unreachable(&args.api, e))?,
    )
    .await?;
    let id = created["id"]
        .as_str()
        .context("no scoring job id in the answer")?
        .to_string();
    eprintln!(
        "scoring job {id}: model {} version {} (plan job {})",
        created["model"].as_str().unwrap_or("?"),
        created["version"],
        created["plan_job_id"].as_str().unwrap_or("?")
    );
    if args.no_wait {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(());
    }
    let job = follow(&args.api, &id).await?;
    let status = job["status"].as_str().unwrap_or("?").to_string();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "id": job["id"], "status": status, "model": job["model"], "version": job["version"],
            "documents": job["documents"], "scored": job["scored"], "reused": job["reused"],
            "excluded_empty_text": job["excluded_empty_text"], "error": job["error"],
        }))?
    );
    match status.as_str() {
        "done" => {}
        "cancelled" => return Err(exit_error(CANCELLED, "the scoring job was cancelled")),
        _ => {
            return Err(exit_error(
                FAILED,
                format!(
                    "the scoring job ended {status}: {}",
                    job["error"].as_str().unwrap_or("")
                ),
            ))
        }
    }
    if let (Some(path), Some(format)) = (&args.output, format) {
        let response = client
            .get(format!("{}/api/v1/scoring-jobs/{id}/export", args.api.url))
            .query(&[("format", format)])
            .send()
            .await
            .map_err(|e| unreachable(&args.api, e))?;
        if !response.status().is_success() {
            check(response).await?;
            return Ok(());
        }
        let bytes = response.bytes().await?;
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
    }
    Ok(())
}

/// Follows a scoring job until it ends: a bar in documents with the server's rate and ETA at
/// a terminal, a plain line at most every 5 s elsewhere.
async fn follow(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:8} [{elapsed_precise}] [{bar:40}] {pos}/{len} documents {prefix}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let terminal = std::io::stderr().is_terminal();
    if !terminal {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(60);
    let mut last_status = String::new();
    loop {
        let job = get_json(api, &format!("/api/v1/scoring-jobs/{id}")).await?;
        let status = job["status"].as_str().unwrap_or("?").to_string();
        let p = &job["progress"];
        bar.set_length(p["texts_total"].as_u64().unwrap_or(0));
        bar.set_position(p["texts_done"].as_u64().unwrap_or(0));
        bar.set_message(status.clone());
        let rate = match (p["texts_per_second"].as_f64(), p["eta_seconds"].as_f64()) {
            (Some(r), Some(eta)) => format!("{r:.0}/s, ETA {:.0} s", eta),
            _ => String::new(),
        };
        bar.set_prefix(rate.clone());
        if !terminal && (status != last_status || last_print.elapsed() >= Duration::from_secs(5)) {
            eprintln!(
                "[{:>6.1}s] {status} {}/{} documents, {}/{} chunks {rate}",
                started.elapsed().as_secs_f64(),
                bar.position(),
                bar.length().unwrap_or(0),
                p["chunks_done"],
                p["chunks_total"],
            );
            last_print = std::time::Instant::now();
            last_status = status.clone();
        }
        if matches!(status.as_str(), "done" | "failed" | "cancelled") {
            bar.finish();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
