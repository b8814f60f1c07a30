//! trainyard's side of the finetune benchmark: samples/s of an encoder + head trained end to end.
//!
//! Usage: finetune_throughput --texts FILE --steps S --batch-size B --max-tokens T --threads N
//! --warmup W. The encoder is $TRAINYARD_LOCAL_MODEL_DIR, any family trainyard runs (MiniLM by
//! default; benches/encoder_families.sh points it at each family's folder), loaded the way a
//! finetune job loads it (`Trainer::new` -> `Classifier::new` -> `EncoderConfig` of its
//! config.json). Same model, batches, truncation, optimizer (AdamW), clipping and loss as
//! benches/train_peer.py; prints `{"samples_per_sec": x, "steps": S, "batch_size": B, "family": F}`.
use std::time::Instant;

use trainyard::datasets::TaskType;
use trainyard::ml::classifier::{ClassifierSpec, TrainMode};
use trainyard::ml::encoder::EncoderConfig;
use trainyard::ml::trainer::{Hyperparameters, SplitData, SplitInputs, Trainer};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let file = arg(&args, "--texts", "");
    let steps: u64 = arg(&args, "--steps", "20").parse()?;
    let batch: usize = arg(&args, "--batch-size", "16").parse()?;
    let max_tokens: usize = arg(&args, "--max-tokens", "128").parse()?;
    let threads: i32 = arg(&args, "--threads", "2").parse()?;
    let warmup: u64 = arg(&args, "--warmup", "3").parse()?;
    let dir = std::path::PathBuf::from(std::env::var("TRAINYARD_LOCAL_MODEL_DIR")?);
    // The head sits on the encoder's width, whatever the family.
    let config = EncoderConfig::from_file(&dir.join("config.json"))?;
    let texts: Vec<String> = std::fs::read_to_string(&file)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    // Exactly (warmup + steps) batches in file order, like the peer (one epoch, no shuffle
    // effect on cost: every batch has B texts of similar length).
    let needed = ((warmup + steps) as usize) * batch;
    let rows: Vec<String> = texts.iter().cycle().take(needed).cloned().collect();
    // Random 0/1 targets from a fixed linear congruential sequence (cost does not depend on them).
    let mut seed = 42u64;
    let targets: Vec<Vec<Option<bool>>> = (0..rows.len())
        .map(|_| {
            (0..2)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    Some(seed >> 63 == 1)
                })
                .collect()
        })
        .collect();
    tch::set_num_threads(threads);
    let mut hp = Hyperparameters::defaults_for(TrainMode::Finetune);
    hp.epochs = 1;
    hp.batch_size = batch;
    hp.max_tokens = max_tokens;
    hp.dropout = 0.0;
    hp.pos_weight = false;
    let spec = ClassifierSpec {
        mode: TrainMode::Finetune,
        task: TaskType::MultiLabel,
        labels: vec!["a".into(), "b".into()],
        input_dim: config.shape.hidden_size,
        hidden_size: 256,
        dropout: 0.0,
        max_tokens,
        pooling: Default::default(),
        base_model: None,
    };
    let data = SplitData {
        inputs: SplitInputs::Texts(rows),
        targets,
    };
    let mut trainer = Trainer::new(spec, hp, &data, Some(&dir), tch::Device::Cpu)?;
    let mut started: Option<Instant> = None;
    let mut timed_samples = 0usize;
    trainer.run_epoch(1, &mut |info| {
        if info.global_step == warmup {
            started = Some(Instant::now());
        } else if info.global_step > warmup {
            timed_samples += batch;
        }
        true
    })?;
    let elapsed = started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "samples_per_sec": timed_samples as f64 / elapsed,
            "steps": steps,
            "batch_size": batch,
            "family": config.family.name,
        })
    );
    Ok(())
}
