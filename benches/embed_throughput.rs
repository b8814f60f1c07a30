//! Benchmark 1: local embedding throughput of trainyard's tch encoder on a sentence file
//! (length-sorted, token-budget batches). Prints one JSON line; benches/embed_throughput.sh
//! runs it beside sentence-transformers and prints the ratio.
use std::time::Instant;

use trainyard::ml::text_encoder::{pick_device, EncoderOptions, TextEncoder};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let file = args.get(1).expect(
        "usage: embed_throughput SENTENCES_FILE [THREADS] [REPEATS] [DEVICE] [TOKENS_PER_BATCH]",
    );
    let threads: i32 = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let repeats: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let device = pick_device(
        args.get(4)
            .map_or("cpu", String::as_str)
            .parse()
            .unwrap_or_default(),
    );
    let budget: usize = args.get(5).map_or(Ok(2048), |s| s.parse())?;
    let sentences: Vec<String> = std::fs::read_to_string(file)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let encoder = TextEncoder::start(EncoderOptions {
        model_dir: std::env::var("TRAINYARD_LOCAL_MODEL_DIR")?.into(),
        max_tokens: 256,
        max_tokens_per_batch: budget,
        threads,
        device,
        pooling: Default::default(),
        classifier: None,
        batch_wait: std::time::Duration::ZERO,
        windows: None,
    })?;
    encoder.encode_blocking(sentences[..64.min(sentences.len())].to_vec())?;
    let mut best = f64::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        let out = encoder.encode_blocking(sentences.clone())?;
        assert_eq!(out.vectors.len(), sentences.len());
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({"impl": "trainyard (tch)", "device": format!("{device:?}"), "sentences": sentences.len(),
                           "best_seconds": best, "sentences_per_second": sentences.len() as f64 / best})
    );
    Ok(())
}
