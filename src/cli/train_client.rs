//! The `train` client verb: start a training run through the API, follow it with a progress
//! bar, print its test metrics, and optionally promote the new version.
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::client::{check, Api};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub api: Api,
    /// A ready dataset's id.
    #[arg(long)]
    pub dataset: String,
    /// Registry name of the model.
    #[arg(long)]
    pub model_name: String,
    /// head | finetune
    #[arg(long, default_value = "head")]
    pub mode: String,
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Hyperparameters as a JSON object (merged under --epochs/--seed).
    #[arg(long)]
    pub hyperparameters: Option<String>,
    /// Promote the new version once the run succeeds.
    #[arg(long)]
    pub promote: bool,
}

pub async fn train(args: TrainArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut hp: Value = match &args.hyperparameters {
        Some(text) => serde_json::from_str(text).context("--hyperparameters is not JSON")?,
        None => json!({}),
    };
    if let Some(e) = args.epochs {
        hp["epochs"] = json!(e);
    }
    if let Some(s) = args.seed {
        hp["seed"] = json!(s);
    }
    let created = check(
        client
            .post(format!("{}/api/v1/training-runs", args.api.url))
            .json(
                &json!({"dataset_id": args.dataset, "model_name": args.model_name,
                          "mode": args.mode, "hyperparameters": hp}),
            )
            .send()
            .await
            .context("is `trainyard serve` running?")?,
    )
    .await?;
    let id = created["id"].as_str().context("no run id")?.to_string();
    eprintln!(
        "training run {id} ({} mode, job {})",
        args.mode,
        created["job_id"].as_str().unwrap_or("?")
    );
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:24} [{elapsed_precise}] [{bar:40}] {pos}/{len} steps ({eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut last_line = String::new();
    let run = loop {
        let r = check(
            client
                .get(format!("{}/api/v1/training-runs/{id}", args.api.url))
                .send()
                .await?,
        )
        .await?;
        let status = r["status"].as_str().unwrap_or("?").to_string();
        let p = &r["progress"];
        bar.set_length(p["total_steps"].as_u64().unwrap_or(0));
        bar.set_position(p["global_step"].as_u64().unwrap_or(0));
        let message = format!("{status} epoch {}/{}", p["epoch"], p["total_epochs"]);
        bar.set_message(message.clone());
        if !std::io::stderr().is_terminal() && message != last_line {
            eprintln!(
                "[{:>5.1}s] {message}, step {}/{}",
                started.elapsed().as_secs_f64(),
                bar.position(),
                bar.length().unwrap_or(0)
            );
            last_line = message;
        }
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bar.tick();
    };
    bar.finish();
    anyhow::ensure!(
        run["status"] == "succeeded",
        "training run ended {}: {}",
        run["status"],
        run["error"].as_str().unwrap_or("")
    );
    let test = &run["test_metrics"];
    println!(
        "model {} version {}: best epoch {}, test macro-F1 {:.3}, micro-F1 {:.3}, macro ROC-AUC {}",
        args.model_name,
        run["model_version"],
        run["best_epoch"],
        test["macro_f1"].as_f64().unwrap_or(f64::NAN),
        test["micro_f1"].as_f64().unwrap_or(f64::NAN),
        test["macro_roc_auc"]
            .as_f64()
            .map_or("n/a".into(), |v| format!("{v:.3}"))
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "label", "threshold", "precision", "recall", "f1", "roc_auc", "support"
    );
    for l in test["per_label"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>7}",
            l["label"].as_str().unwrap_or(""),
            l["threshold"].as_f64().unwrap_or(f64::NAN),
            l["precision"].as_f64().unwrap_or(f64::NAN),
            l["recall"].as_f64().unwrap_or(f64::NAN),
            l["f1"].as_f64().unwrap_or(f64::NAN),
            l["roc_auc"]
                .as_f64()
                .map_or("n/a".into(), |v| format!("{v:.3}")),
            l["support"]
        );
    }
    println!(
        "curves: {}/api/v1/training-runs/{id}/curves.svg",
        args.api.url
    );
    if args.promote {
        let version = run["model_version"].as_i64().context("no model version")?;
        check(
            client
                .post(format!(
                    "{}/api/v1/models/{}/versions/{version}/promote",
                    args.api.url, args.model_name
                ))
                .send()
                .await?,
        )
        .await?;
        println!("promoted {} version {version}", args.model_name);
    }
    Ok(())
}
