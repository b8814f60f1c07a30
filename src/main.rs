//! The `trainyard` binary: serve, worker, migrate, doctor, import, and client verbs (exit
//! codes: 0 done, 1 failed, 2 usage, 3 cancelled, 4 not found, 5 server unreachable, 6 refused).
use clap::{Parser, Subcommand};
use trainyard::cli;

#[derive(Parser)]
#[command(
    name = "trainyard",
    version,
    about = "Labelled text in, served classifiers out."
)]
struct Cli {
    /// Log lines as `text` or `json` (default: config `telemetry.log_format`).
    #[arg(long, global = true, env = "TRAINYARD_LOG_FORMAT")]
    log_format: Option<trainyard::telemetry::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP API and Swagger UI (add --workers N for a one-process quick start).
    Serve(cli::serve::ServeArgs),
    /// Consume jobs from the given queues.
    Worker(cli::serve::WorkerArgs),
    /// Apply database migrations (apalis's and trainyard's).
    Migrate,
    /// Report libtorch, CUDA, database, migrations and embedding models.
    Doctor,
    /// Import documents and annotations from JSONL or CSV.
    Import(cli::import::ImportArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Build a dataset through the API and watch it with a progress bar.
    BuildDataset(cli::client::BuildDatasetArgs),
    /// Follow a dataset, training run or job (by id) until it ends, with a progress bar.
    Watch(cli::follow::WatchArgs),
    /// Score a corpus (sources or a dataset) with a model version on the workers, follow it
    /// with a progress bar, optionally save the results (.jsonl or .parquet).
    Score(cli::score_client::ScoreArgs),
    /// Download a model version as a folder other tools load: the finetuned encoder for
    /// Hugging Face transformers, the head as safetensors, labels/thresholds/pooling as JSON.
    Export(cli::export_client::ExportArgs),
    /// List recent jobs through the API.
    Jobs(cli::client::JobsArgs),
    /// List datasets as a table (or --json).
    Datasets(cli::follow::ListArgs),
    /// List training runs as a table (or --json).
    Runs(cli::follow::ListArgs),
    /// List registered models as a table (or --json).
    Models(cli::follow::ListArgs),
    /// Create, list and revoke API tokens (directly in the database).
    Token(cli::token::TokenArgs),
    /// Train a model on a ready dataset through the API, with a progress bar; optionally promote it.
    Train(cli::train_client::TrainArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let log_format = cli.log_format.unwrap_or_else(|| {
        trainyard::config::Settings::load(&trainyard::config::Settings::default_dir())
            .map(|s| s.telemetry.log_format)
            .unwrap_or_default()
    });
    trainyard::init_process(log_format);
    let result = match cli.command {
        Command::Serve(args) => cli::serve::serve(args).await,
        Command::Worker(args) => cli::serve::worker(args).await,
        Command::Migrate => cli::doctor::migrate().await,
        Command::Doctor => cli::doctor::doctor().await,
        Command::Import(args) => cli::import::import(args).await,
        Command::Openapi => {
            println!("{}", trainyard::api::openapi_json());
            Ok(())
        }
        Command::BuildDataset(args) => cli::client::build_dataset(args).await,
        Command::Watch(args) => cli::follow::watch(args).await,
        Command::Score(args) => cli::score_client::score(args).await,
        Command::Export(args) => cli::export_client::export(args).await,
        Command::Datasets(args) => cli::follow::datasets(args).await,
        Command::Runs(args) => cli::follow::runs(args).await,
        Command::Models(args) => cli::follow::models(args).await,
        Command::Jobs(args) => cli::client::jobs(args).await,
        Command::Train(args) => cli::train_client::train(args).await,
        Command::Token(args) => cli::token::token(args).await,
    };
    trainyard::telemetry::shutdown();
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        // Documented in src/cli/exit.rs: 1 failed, 3 cancelled, 4 not found, 5 unreachable.
        std::process::exit(cli::exit::code_of(&e));
    }
}
