//! Client verbs that talk to a running API: build a dataset and follow it, list jobs; the
//! API helpers every verb uses (answer checks with exit codes).
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Api {
    /// Base URL of the trainyard API.
    #[arg(long, env = "TRAINYARD_URL", default_value = "http://127.0.0.1:8322")]
    pub url: String,
    /// API token sent as `Authorization: Bearer` (needed unless the server's auth is off).
    #[arg(long, env = "TRAINYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Api {
    /// An HTTP client that sends the token, when there is one, with every request.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = self.token.as_deref().filter(|t| !t.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    super::exit::exit_error(
                        super::exit::USAGE,
                        "the token is not valid header text",
                    )
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(reqwest::Client::builder()
            .default_headers(headers)
            .build()?)
    }
}

#[derive(clap::Args)]
pub struct BuildDatasetArgs {
    #[command(flatten)]
    pub api: Api,
    #[arg(long)]
    pub name: String,
    /// Comma-separated whole sources.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Comma-separated label names.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// binary | multi_label | multi_class
    #[arg(long = "type", default_value = "multi_label")]
    pub task_type: String,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub force_regenerate: bool,
    /// Return at once instead of watching.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub api: Api,
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// The API's JSON page instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The body of a 2xx answer; otherwise the API's error message, with the exit code for it
/// (404 → not found, other refusals → refused).
pub async fn check(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        let hint = match status {
            reqwest::StatusCode::UNAUTHORIZED => " (pass a token with --token or TRAINYARD_TOKEN)",
            reqwest::StatusCode::FORBIDDEN => " (this token's scopes do not allow it)",
            _ => "",
        };
        let code = if status == reqwest::StatusCode::NOT_FOUND {
            super::exit::NOT_FOUND
        } else {
            super::exit::REFUSED
        };
        return Err(super::exit::exit_error(
            code,
            format!("API answered {status}: {message}{hint}"),
        ));
    }
    Ok(body)
}

/// GET `path` under the API and check the answer; an unreachable server is exit code 5.
pub async fn get_json(api: &Api, path: &str) -> anyhow::Result<Value> {
    let response = api
        .client()?
        .get(format!("{}{path}", api.url))
        .send()
        .await
        .map_err(|e| unreachable(api, e))?;
    check(response).await
}

/// The error for a server that did not answer.
pub fn unreachable(api: &Api, e: reqwest::Error) -> anyhow::Error {
    super::exit::exit_error(
        super::exit::UNREACHABLE,
        format!(
            "no trainyard API at {} ({e}); is `trainyard serve` running? (set --url or TRAINYARD_URL)",
            api.url
        ),
    )
}

pub async fn build_dataset(args: BuildDatasetArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let mut body = json!({
        "name": args.name,
        "selection": {"sources": args.sources},
        "label_schema": {"type": args.task_type, "labels": args.labels},
        "force_regenerate": args.force_regenerate,
    });
    if let Some(model) = args.model {
        body["embedding_model"] = json!(model);
    }
    let created = check(
        client
            .post(format!("{}/api/v1/datasets", args.api.url))
            .json(&body)
            .send()
            .await
            .context("is `trainyard serve` running?")?,
    )
    .await?;
    let id = created["id"]
        .as_str()
        .context("no dataset id in the answer")?
        .to_string();
    // Status lines go to stderr; stdout carries only the final JSON (for scripts).
    eprintln!(
        "dataset {id} (build job {})",
        created["build_job_id"].as_str().unwrap_or("?")
    );
    if args.no_wait {
        return Ok(());
    }
    let dataset = follow_dataset(&args.api, &id).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "id": dataset["id"], "status": dataset["status"], "error": dataset["error"],
            "new_embeddings": dataset["new_embeddings"], "reused_embeddings": dataset["reused_embeddings"],
            "stats": dataset["stats"],
        }))?
    );
    let status = dataset["status"].as_str().unwrap_or("?");
    match super::exit::for_status(status) {
        0 => Ok(()),
        code => Err(super::exit::exit_error(
            code,
            format!(
                "dataset ended {status}: {}",
                dataset["error"].as_str().unwrap_or("")
            ),
        )),
    }
}

/// `95 s` or `3 m 05 s`.
fn format_secs(secs: f64) -> String {
    let s = secs.round().max(0.0) as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} m {:02} s", s / 60, s % 60)
    }
}

/// A dataset's progress bar (texts, rate, ETA) until it is ready, failed or cancelled;
/// returns its final state.
pub async fn follow_dataset(api: &Api, dataset_id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:10} [{elapsed_precise}] [{bar:40}] {pos}/{len} texts {prefix}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let mut last_line = String::new();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(60);
    let dataset = loop {
        let d = get_json(api, &format!("/api/v1/datasets/{dataset_id}")).await?;
        let status = d["status"].as_str().unwrap_or("?").to_string();
        let p = &d["progress"];
        bar.set_length(p["texts_total"].as_u64().unwrap_or(0));
        bar.set_position(p["texts_done"].as_u64().unwrap_or(0));
        bar.set_message(status.clone());
        // Rate and ETA as the server measured them (absent until embedding has started).
        let rate = match (p["texts_per_second"].as_f64(), p["eta_seconds"].as_f64()) {
            (Some(r), Some(eta)) => format!("{r:.0}/s, ETA {}", format_secs(eta)),
            _ => String::new(),
        };
        bar.set_prefix(rate.clone());
        // Not a terminal (a log, CI): a plain line whenever the state changes, at most every
        // 5 s while texts move.
        let line = format!(
            "{status} {}/{} texts, {}/{} batches {rate}",
            bar.position(),
            bar.length().unwrap_or(0),
            p["batches_done"],
            p["batches_total"],
        );
        let due = last_print.elapsed() >= Duration::from_secs(5)
            || !line.starts_with(last_line.split(' ').next().unwrap_or(""));
        if !std::io::stderr().is_terminal() && line != last_line && due {
            last_print = std::time::Instant::now();
            eprintln!("[{:>5.1}s] {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        if matches!(status.as_str(), "ready" | "failed" | "cancelled") {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bar.tick();
    };
    bar.finish();
    Ok(dataset)
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(k) = args.kind {
        query.push(("kind", k));
    }
    if let Some(s) = args.status {
        query.push(("status", s));
    }
    let page = check(
        client
            .get(format!("{}/api/v1/jobs", args.api.url))
            .query(&query)
            .send()
            .await?,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    println!(
        "{:<28} {:<14} {:<10} {:>8} {:>12}  error",
        "id", "kind", "status", "attempts", "progress"
    );
    for job in page["items"].as_array().into_iter().flatten() {
        println!(
            "{:<28} {:<14} {:<10} {:>5}/{:<2} {:>6}/{:<6} {}",
            job["id"].as_str().unwrap_or(""),
            job["kind"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            job["attempts"],
            job["max_attempts"],
            job["progress"]["done"],
            job["progress"]["total"],
            job["last_error"].as_str().unwrap_or("")
        );
    }
    println!("{} jobs in all", page["total"]);
    Ok(())
}
