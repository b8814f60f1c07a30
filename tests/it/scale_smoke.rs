//! CI smoke test of `benches/scale.sh` (issue 18's proof harness) at 20,000 documents: every
//! step runs through the public API with `serve` and two workers and appears in the printed
//! table. No timing is asserted; the numbers are for people (`benches/scale/compare.py`).
use std::process::Command;

/// Every step the harness prints, in order (benches/scale/drive.py).
const STEPS: &[&str] = &[
    "import",
    "dataset_build",
    "rebuild",
    "head_training",
    "promote",
    "scoring_job",
    "dataset_export_parquet",
    "dataset_export_jsonl",
    "scoring_export_parquet",
    "scoring_export_jsonl",
    "records_page_first",
    "results_page_first",
    "records_page_end",
    "results_page_end",
    "review_uncertain_first",
    "review_uncertain_page2",
    "review_disagreement_first",
    "review_disagreement_page2",
    "review_suspect_label_first",
    "review_suspect_label_page2",
    "review_uncovered_first",
    "review_uncovered_page2",
    "metrics",
    "jobs_list",
    "jobs_list_end",
    "jobs_list_embed_succeeded",
    "other_lists",
];

#[test]
fn scale_bench_runs_every_step_at_20k() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("{}_{nanos}", std::process::id());
    let work = std::env::temp_dir().join(format!("ty_scale_smoke_{tag}"));
    let out = Command::new("bash")
        .args(["benches/scale.sh", "20000"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("TRAINYARD_BIN", env!("CARGO_BIN_EXE_trainyard"))
        .env("SCALE_DB", format!("ty_test_scale_{tag}"))
        .env("SCALE_DROP_DB", "1")
        .env("SCALE_WORK", &work)
        .env("SCALE_OUT", work.join("scale_20000.json"))
        .output()
        .expect("run bash benches/scale.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "benches/scale.sh 20000 exited {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status.code()
    );
    for step in STEPS {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {step} |")))
            .unwrap_or_else(|| panic!("no row for step `{step}` in the table:\n{stdout}"));
        assert!(
            !row.contains("FAILED") && !row.contains("SKIPPED"),
            "step `{step}`: {row}\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
