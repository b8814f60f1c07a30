//! The `train` client verb: start a training run through the API, follow it with a progress
//! bar, print its test metrics, and optionally promote the new version.
use anyhow::Context;
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
    /// Print the finished run as JSON on stdout instead of the metrics table.
    #[arg(long)]
    pub json: bool,
}

pub async fn train(args: TrainArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
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
    let run = super::follow::follow_run(&args.api, &id).await?;
    let status = run["status"].as_str().unwrap_or("?");
    if super::exit::for_status(status) != 0 {
        return Err(super::exit::exit_error(
            super::exit::for_status(status),
            format!(
                "training run ended {status}: {}",
                run["error"].as_str().unwrap_or("")
            ),
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
        if args.promote {
            promote(&client, &args, &run).await?;
        }
        return Ok(());
    }
    if run["validation_metrics"]["validation_split"] == "empty" {
        // No validation figures: say how the run chose its epoch and thresholds instead.
        println!(
            "no validation split (the dataset's validation split is empty): no validation metrics; early stopping followed the training loss and every threshold is 0.5"
        );
    }
    let test = &run["test_metrics"];
    if test.get("macro_f1").is_none() {
        // The dataset's test split had no annotated record: there are no test metrics.
        println!(
            "model {} version {}: best epoch {}, no test split (the dataset's test split is empty; no test metrics)",
            args.model_name, run["model_version"], run["best_epoch"]
        );
    } else {
        print_test_metrics(&args.model_name, &run, test);
    }
    println!(
        "curves: {}/api/v1/training-runs/{id}/curves.svg",
        args.api.url
    );
    if args.promote {
        promote(&client, &args, &run).await?;
        println!(
            "promoted {} version {}",
            args.model_name, run["model_version"]
        );
    }
    Ok(())
}

fn print_test_metrics(model_name: &str, run: &Value, test: &Value) {
    println!(
        "model {} version {}: best epoch {}, test macro-F1 {:.3}, micro-F1 {:.3}, macro ROC-AUC {}",
        model_name,
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
}

async fn promote(client: &reqwest::Client, args: &TrainArgs, run: &Value) -> anyhow::Result<()> {
    {
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
    }
    Ok(())
}
