//! The CPU half of the GPU readiness check: `bash scripts/gpu_check.sh --cpu` builds, strips and
//! stages the gpu_check example exactly as for a GPU machine, then runs it on CPU against a random
//! BERT of MiniLM's shape beside the Python peer. Asserts on both JSON reports; the parts that need
//! CUDA (CPU/GPU agreement, fp16/bf16 throughput) must be listed as skipped, not silently passed;
//! section (g) runs every encoder family in fp32, bf16 and fp16 (CPU autocast).
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{} is empty: see the summary above", path.display()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()))
}

fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v}"))
}

#[test]
fn gpu_check_runs_on_cpu_and_says_what_it_skipped() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("gpu_check_cpu_test_{}", std::process::id()));
    let started = std::time::Instant::now();
    let status = Command::new("bash")
        .args(["scripts/gpu_check.sh", "--cpu"])
        .current_dir(root)
        .env("GPU_CHECK_OUT", &out)
        .env_remove("OUT")
        .status()
        .expect("bash runs");
    println!(
        "gpu_check.sh --cpu took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The summary says why a side wrote no report (its time limit, a crash) before any assert.
    if let Ok(summary) = std::fs::read_to_string(out.join("summary.txt")) {
        println!("{summary}");
    }
    let ours = read_json(&out.join("trainyard.json"));
    let peer = read_json(&out.join("peer.json"));
    assert!(status.success(), "gpu_check.sh --cpu failed: {ours}");
    assert_eq!(ours["ok"], true, "failures: {}", ours["failures"]);
    assert_eq!(ours["device"], "cpu");

    // (b) and (c): the loss fell, and finetuning moved the encoder.
    for section in ["head", "finetune"] {
        let (start, end) = (
            num(&ours, &format!("/{section}/loss_start")),
            num(&ours, &format!("/{section}/loss_end")),
        );
        assert!(end < start, "{section}: loss {start} -> {end}");
        assert_eq!(ours[section]["fell"], true, "{section}");
    }
    assert!(num(&ours, "/finetune/encoder_max_abs_delta") > 0.0);

    // (d) without CUDA: CPU against CPU with another thread count, and said so.
    assert_eq!(ours["agreement"]["mode"], "cpu_1_thread_vs_cpu_n_threads");
    assert_eq!(ours["agreement"]["cuda_compared"], false);
    for key in [
        "embeddings_max_abs_diff",
        "finetune_logits_max_abs_diff",
        "head_logits_max_abs_diff",
    ] {
        assert!(num(&ours, &format!("/agreement/{key}")) <= 1e-4, "{key}");
    }

    // (e) the serve path answered every text of the batch.
    for model in ["finetune", "head"] {
        let entry = &ours["inference"][model];
        assert_eq!(entry["returned"], entry["requested"], "{model}: {entry}");
        assert!(entry["requested"].as_u64().unwrap() > 0);
        assert_eq!(entry["probabilities_in_range"], true);
    }
    assert!(num(&ours, "/inference/finetune/max_abs_diff_vs_trainer") <= 1e-4);

    // (f) fp32 throughput is a positive number on both paths; fp16/bf16 only as a smoke test.
    let results = ours["throughput"]["results"].as_array().expect("results");
    for path in ["serve", "fixed_batches"] {
        let fp32 = results
            .iter()
            .find(|r| r["path"] == path && r["dtype"] == "fp32")
            .unwrap_or_else(|| panic!("no fp32 {path} result"));
        let sps = fp32["sentences_per_second"].as_f64().unwrap();
        assert!(sps.is_finite() && sps > 0.0, "{path}: {sps}");
        assert_eq!(fp32["smoke"], false);
    }
    assert!(results
        .iter()
        .filter(|r| r["dtype"] != "fp32")
        .all(|r| r["smoke"] == true));

    // (g) every other family: fp32 CPU vs CPU, bf16/fp16 autocast against fp32, and the loss of
    // a half-precision finetune falls.
    let families = ours["families"].as_object().expect("families section");
    let names: Vec<&str> = families.keys().map(String::as_str).collect();
    for family in [
        "roberta",
        "xlm-roberta",
        "distilbert",
        "mpnet",
        "modernbert",
        "deberta-v3",
        "deberta-v2",
    ] {
        let f = &ours["families"][family];
        assert!(f.is_object(), "{family} missing from {names:?}");
        assert!(
            num(f, "/fp32_device_vs_cpu_max_abs") <= 1e-4,
            "{family}: {f}"
        );
        for precision in ["bf16", "fp16"] {
            assert!(
                num(f, &format!("/{precision}_vs_fp32/min_cosine")) >= 0.99,
                "{family}: {f}"
            );
            let first = num(f, &format!("/{precision}_finetune/first_loss"));
            let last = num(f, &format!("/{precision}_finetune/last_loss"));
            assert!(last < first, "{family} {precision}: loss {first} -> {last}");
        }
    }

    // What was skipped for want of CUDA is listed, not passed over.
    let skipped: Vec<&str> = ours["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    println!("skipped without CUDA: {skipped:#?}");
    assert!(skipped.iter().any(|s| s.contains("CPU/CUDA agreement")));
    assert!(skipped.iter().any(|s| s.contains("fp16/bf16 throughput")));

    // The peer ran on the same weights and agrees with trainyard's embeddings.
    assert_eq!(peer["compare"]["ok"], true, "{peer}");
    let peer_sps = num(&peer, "/results/0/sentences_per_second");
    assert!(peer_sps > 0.0);

    // What would be carried to a GPU machine fits one device call.
    let binary = Path::new(root).join(".gpu_check/bin/gpu_check");
    let size = std::fs::metadata(&binary).expect("staged binary").len();
    println!(
        "stripped gpu_check: {:.1} MiB",
        size as f64 / (1 << 20) as f64
    );
    assert!(size < 48 << 20, "stripped binary {size} bytes");
    let _ = std::fs::remove_dir_all(&out);
}
