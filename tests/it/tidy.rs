//! The README's invariants that a reading of the source can check, checked on every run:
//! each dependency that one module owns is named only there (tch in `src/ml/`, apalis and
//! the queue's tables in `src/queue/`, OpenTelemetry in `src/telemetry/`, poem in `src/api/`),
//! `src/api/` runs no SQL itself, and every Rust file starts with a `//!` line saying what it
//! is for. Modelled on rust-analyzer's tidy tests: plain text scans, no build needed.
use std::path::{Path, PathBuf};

/// (what is owned, the patterns that name it, the one folder that may).
const OWNERS: &[(&str, &[&str], &str)] = &[
    ("tch", &[r"\btch::", r"\buse tch\b"], "src/ml/"),
    (
        "apalis",
        &[
            r"\bapalis(_postgres|_core|_sql)?::",
            r"\buse apalis",
            r"\bapalis\.(jobs|workers)\b",
            r"\bjob_info\b",
        ],
        "src/queue/",
    ),
    (
        "OpenTelemetry",
        &[
            r"\b(opentelemetry|opentelemetry_sdk|opentelemetry_otlp|opentelemetry_prometheus|tracing_opentelemetry)::",
            r"\buse (opentelemetry|tracing_opentelemetry)",
        ],
        "src/telemetry/",
    ),
    ("poem", &[r"\bpoem(_openapi)?::", r"\buse poem"], "src/api/"),
];

/// What running SQL looks like.
const SQL: &[&str] = &[
    r"\bsqlx::query",
    r"\bquery_as\b",
    r"\bquery_scalar\b",
    r"\bQueryBuilder\b",
    r"\.(execute|fetch|fetch_one|fetch_all|fetch_optional)\(",
    r"\.begin\(\)",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if !matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("node_modules" | "target" | "fixtures")
            ) {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code without its comments (line comments and doc comments; block comments are not
/// used in this code base), line by line with their numbers.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let code = match line.find("//") {
                // `//` inside a string ("http://...") keeps the line whole.
                Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
                _ => line,
            };
            (i + 1, code.to_string())
        })
        .collect()
}

/// `path: line: text` for each line of `text` that matches one of `patterns`.
fn matches(path: &str, text: &str, patterns: &[&str]) -> Vec<String> {
    let regexes: Vec<regex::Regex> = patterns
        .iter()
        .map(|p| regex::Regex::new(p).unwrap())
        .collect();
    code_lines(text)
        .into_iter()
        .filter(|(_, code)| regexes.iter().any(|r| r.is_match(code)))
        .map(|(n, code)| format!("{path}:{n}: {}", code.trim()))
        .collect()
}

/// Every violation of the ownership rules in one source file (`path` relative to the root).
fn ownership_violations(path: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (what, patterns, owner) in OWNERS {
        if !path.starts_with(owner) {
            out.extend(
                matches(path, text, patterns)
                    .into_iter()
                    .map(|m| format!("{m}   ({what} belongs to {owner})")),
            );
        }
    }
    if path.starts_with("src/api/") {
        out.extend(
            matches(path, text, SQL)
                .into_iter()
                .map(|m| format!("{m}   (src/api/ runs no SQL: call the domain module)")),
        );
    }
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

#[test]
fn each_dependency_is_named_only_by_its_owner_and_the_api_runs_no_sql() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(files.len() > 50, "found the sources ({})", files.len());
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        violations.extend(ownership_violations(&relative(file), &text));
    }
    assert!(
        violations.is_empty(),
        "the README's invariants are broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let mut files = Vec::new();
    for dir in ["src", "jobs", "tests", "benches"] {
        rust_files(&root().join(dir), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| relative(f))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` first line: {missing:?}"
    );
}

/// The scans catch what they are for (a tidy test that cannot fail guards nothing).
#[test]
fn the_scans_catch_each_kind_of_violation() {
    let caught = |path: &str, text: &str| !ownership_violations(path, text).is_empty();
    assert!(caught("src/training/epochs.rs", "use tch::Tensor;"));
    assert!(caught(
        "src/cli/doctor.rs",
        "let x = tch::Cuda::device_count();"
    ));
    assert!(caught(
        "src/db.rs",
        "apalis_postgres::PostgresStorage::<()>::setup(pool)"
    ));
    assert!(caught(
        "src/scoring/plan.rs",
        r#"sqlx::query("UPDATE job_info SET progress_done = 1")"#
    ));
    assert!(caught(
        "src/queue/worker.rs",
        r#"let a = opentelemetry::KeyValue::new("outcome", o);"#
    ));
    assert!(caught("src/cli/serve.rs", "poem::Server::new(listener)"));
    assert!(caught(
        "src/api/models.rs",
        r#"let row = sqlx::query("SELECT 1").fetch_one(&pool).await?;"#
    ));
    assert!(caught(
        "src/api/scoring.rs",
        "let mut tx = state.pool.begin().await?;"
    ));
    // The owners themselves, comments and look-alike words are fine.
    assert!(!caught("src/ml/bert.rs", "use tch::Tensor;"));
    assert!(!caught("src/queue/mod.rs", "UPDATE job_info SET x = 1"));
    assert!(!caught(
        "src/training/webhook.rs",
        "let (tx, rx) = watch::channel(false);"
    ));
    assert!(!caught(
        "src/training/run.rs",
        "// the tensors live in tch:: land"
    ));
    assert!(!caught(
        "src/telemetry/mod.rs",
        r#"EnvFilter::new("info,apalis=warn,opentelemetry=warn")"#
    ));
    assert!(!caught(
        "src/api/datasets.rs",
        "crate::datasets::store::get(&state.pool, id)"
    ));
}
