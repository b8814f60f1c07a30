//! `trainyard watch ID` for any id (dataset, training run or job) and the listing verbs
//! (`datasets`, `runs`, `models`, `jobs`): progress bars with rate and ETA for people at a
//! terminal, plain lines in logs, `--json` for scripts, and the exit codes of `exit.rs`.
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::{get_json, Api};
use super::exit::{exit_error, for_status, NOT_FOUND};

#[derive(clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub api: Api,
    /// A dataset id, a training run id (UUIDs) or a job id (ULID).
    pub id: String,
    /// Print only the final state as JSON on stdout (progress still on stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: Api,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// The API's JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn bar(unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg:24}} [{{elapsed_precise}}] [{{bar:36}}] {{pos}}/{{len}} {unit} {{prefix}}"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

fn eta_text(rate: Option<f64>, eta: Option<f64>, unit: &str) -> String {
    match (rate, eta) {
        (Some(r), Some(e)) => format!("{r:.1} {unit}/s, ETA {}", secs(e)),
        (Some(r), None) => format!("{r:.1} {unit}/s"),
        _ => String::new(),
    }
}

fn secs(s: f64) -> String {
    let s = s.round().max(0.0) as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} m {:02} s", s / 60, s % 60)
    }
}

/// Follows any id until it ends; the exit code says how it ended.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let id = args.id.trim().to_string();
    let (kind, last) = if uuid::Uuid::parse_str(&id).is_ok() {
        match get_json(&args.api, &format!("/api/v1/datasets/{id}")).await {
            Ok(_) => (
                "dataset",
                super::client::follow_dataset(&args.api, &id).await?,
            ),
            Err(e) if super::exit::code_of(&e) == NOT_FOUND => {
                match get_json(&args.api, &format!("/api/v1/training-runs/{id}")).await {
                    Ok(_) => ("training run", follow_run(&args.api, &id).await?),
                    Err(e) if super::exit::code_of(&e) == NOT_FOUND => {
                        return Err(exit_error(
                            NOT_FOUND,
                            format!("no dataset or training run {id}"),
                        ))
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    } else {
        ("job", follow_job(&args.api, &id).await?)
    };
    let status = last["status"].as_str().unwrap_or("?").to_string();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&last)?);
    } else {
        eprintln!("{kind} {id} ended {status}");
    }
    match for_status(&status) {
        0 => Ok(()),
        code => Err(exit_error(
            code,
            format!(
                "{kind} {id} ended {status}{}",
                last["error"]
                    .as_str()
                    .or(last["last_error"].as_str())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// A job's progress bar (done/total as the job reports it) until it finishes.
pub async fn follow_job(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = bar("");
    let started = std::time::Instant::now();
    let mut last_line = String::new();
    loop {
        let j = get_json(api, &format!("/api/v1/jobs/{id}")).await?;
        let status = j["status"].as_str().unwrap_or("?").to_string();
        bar.set_length(j["progress"]["total"].as_u64().unwrap_or(0));
        bar.set_position(j["progress"]["done"].as_u64().unwrap_or(0));
        bar.set_message(format!("{} {status}", j["kind"].as_str().unwrap_or("job")));
        let line = format!("{status} {}/{}", bar.position(), bar.length().unwrap_or(0));
        if !std::io::stderr().is_terminal() && line != last_line {
            eprintln!(
                "[{:>5.1}s] job {id} {line}",
                started.elapsed().as_secs_f64()
            );
            last_line = line;
        }
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            bar.finish();
            return Ok(j);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A training run's step bar, with each epoch's metrics printed as it is recorded.
pub async fn follow_run(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = bar("steps");
    let started = std::time::Instant::now();
    let mut epochs_shown = 0usize;
    let mut last_line = String::new();
    loop {
        let r = get_json(api, &format!("/api/v1/training-runs/{id}")).await?;
        let status = r["status"].as_str().unwrap_or("?").to_string();
        let p = &r["progress"];
        bar.set_length(p["total_steps"].as_u64().unwrap_or(0));
        bar.set_position(p["global_step"].as_u64().unwrap_or(0));
        bar.set_prefix(eta_text(
            p["samples_per_sec"].as_f64(),
            p["eta_secs"].as_f64(),
            "samples",
        ));
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
        // Live metrics: every epoch recorded since the last look, one line each.
        let series = get_json(api, &format!("/api/v1/training-runs/{id}/metrics")).await?;
        let epochs = series["epochs"].as_array().cloned().unwrap_or_default();
        for e in epochs.iter().skip(epochs_shown) {
            let line = epoch_line(e);
            bar.println(line.clone());
            if !std::io::stderr().is_terminal() {
                eprintln!("{line}");
            }
        }
        epochs_shown = epochs_shown.max(epochs.len());
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            bar.finish();
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints a page's items as a table of the given (header, JSON pointer) columns.
fn table(page: &Value, columns: &[(&str, &str)]) {
    let rows: Vec<Vec<String>> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            columns
                .iter()
                .map(|(_, ptr)| cell(item.pointer(ptr).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(columns.iter().map(|(h, _)| h.to_string()).collect())
    );
    for r in rows {
        println!("{}", line(r));
    }
    if let Some(total) = page["total"].as_i64() {
        println!(
            "({} of {total} shown)",
            page["items"].as_array().map_or(0, Vec::len)
        );
    }
}

async fn list(args: &ListArgs, path: &str, columns: &[(&str, &str)]) -> anyhow::Result<()> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut page = get_json(&args.api, &format!("{path}{sep}limit={}", args.limit)).await?;
    if page.is_array() {
        page = serde_json::json!({ "items": page });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
    } else {
        table(&page, columns);
    }
    Ok(())
}

pub async fn datasets(args: ListArgs) -> anyhow::Result<()> {
    list(
        &args,
        "/api/v1/datasets",
        &[
            ("id", "/id"),
            ("name", "/name"),
            ("status", "/status"),
            ("model", "/embedding_model"),
            ("batches", "/progress/batches_done"),
            ("of", "/progress/batches_total"),
            ("new", "/new_embeddings"),
            ("reused", "/reused_embeddings"),
            ("created", "/created_at"),
        ],
    )
    .await
}

pub async fn runs(args: ListArgs) -> anyhow::Result<()> {
    list(
        &args,
        "/api/v1/training-runs",
        &[
            ("id", "/id"),
            ("model", "/model_name"),
            ("mode", "/mode"),
            ("status", "/status"),
            ("epoch", "/progress/epoch"),
            ("of", "/progress/total_epochs"),
            ("best", "/best_epoch"),
            ("test macro-F1", "/test_metrics/macro_f1"),
            ("version", "/model_version"),
        ],
    )
    .await
}

pub async fn models(args: ListArgs) -> anyhow::Result<()> {
    list(
        &args,
        "/api/v1/models",
        &[
            ("name", "/name"),
            ("served", "/served_version"),
            ("latest", "/latest_version"),
            ("versions", "/versions"),
            ("updated", "/updated_at"),
        ],
    )
    .await
}

/// One recorded epoch, as `watch` and `train` print it while they follow a run.
fn epoch_line(e: &Value) -> String {
    let train_loss = e["train_loss"].as_f64().unwrap_or(f64::NAN);
    if e["metrics"]["validation_split"] == "empty" {
        return format!(
            "  epoch {:>3}: train loss {train_loss:.4}, no validation split",
            e["epoch"]
        );
    }
    let f1 = e["metrics"]["macro_f1"]
        .as_f64()
        .map_or("n/a".into(), |v| format!("{v:.3}"));
    let val_loss = e["val_loss"]
        .as_f64()
        .map_or("n/a".into(), |v| format!("{v:.4}"));
    format!(
        "  epoch {:>3}: train loss {train_loss:.4}, validation loss {val_loss}, validation macro-F1 {f1}",
        e["epoch"]
    )
}
