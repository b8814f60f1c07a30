//! gpu_check section (g): every encoder family on the device. For each small random model that
//! tests/python/make_family_model.py wrote (staged by `gpu_check.sh --prepare`): token states
//! on the device against the CPU in fp32, and under bf16 / fp16 autocast against fp32; then a
//! few finetune steps through `Trainer` in bf16 and in fp16 (loss scaling) whose loss must fall.
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use trainyard::ml::classifier::TrainMode;
use trainyard::ml::encoder::load_encoder;
use trainyard::ml::precision::{autocast, Precision};
use trainyard::ml::text_encoder::load_tokenizer;
use trainyard::ml::trainer::{Hyperparameters, SplitData, SplitInputs, Trainer};

use super::training::{labelled_texts, spec};
use super::{round, Args, Report, FP32_TOLERANCE, HALF_MIN_COSINE};

/// Largest |half - fp32| accepted for token states of these small models (states are
/// LayerNorm-ed, so of order 1; bf16 keeps 8 bits of mantissa).
const HALF_MAX_ABS: [(Precision, f64); 2] = [(Precision::Bf16, 0.25), (Precision::Fp16, 0.05)];

/// Token states of `sentences` (one padded batch) on `device`, under each of `precisions` (the
/// model loaded and the batch tokenized once), as fp32 on the CPU, with the mask.
fn states(
    dir: &Path,
    device: Device,
    precisions: &[Precision],
    sentences: &[String],
) -> Result<(Vec<Tensor>, Tensor)> {
    let (_vs, encoder, config) = load_encoder(dir, device)?;
    let tokenizer = load_tokenizer(dir, config.shape.max_input_tokens as usize)?;
    let rows: Vec<Vec<i64>> = sentences
        .iter()
        .map(|s| {
            tokenizer
                .encode(s.as_str(), true)
                .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))
        })
        .collect::<Result<_>>()?;
    let width = rows.iter().map(Vec::len).max().unwrap_or(1);
    // Padding is masked (position ids come from the mask), so its id does not matter.
    let pad = 0i64;
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in &rows {
        ids.extend(
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(pad, width - r.len())),
        );
        mask.extend((0..width).map(|i| i64::from(i < r.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
    let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
    let hidden = precisions
        .iter()
        .map(|&precision| {
            tch::no_grad(|| {
                autocast(precision, device, || {
                    encoder.hidden_states(&ids, &mask, true)
                })
            })
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
        })
        .collect();
    Ok((hidden, mask.to_device(Device::Cpu)))
}

/// Max abs difference and smallest per-token cosine over real (unpadded) tokens.
fn compare(a: &Tensor, b: &Tensor, mask: &Tensor) -> (f64, f64) {
    let keep = mask.to_kind(Kind::Bool).view([-1]);
    let width = a.size()[2];
    let a = a
        .view([-1, width])
        .index_select(0, &keep.nonzero().view([-1]));
    let b = b
        .view([-1, width])
        .index_select(0, &keep.nonzero().view([-1]));
    let max_abs = (&a - &b).abs().max().double_value(&[]);
    let cos = Tensor::cosine_similarity(&a, &b, 1, 1e-8)
        .min()
        .double_value(&[]);
    (max_abs, cos)
}

pub fn families_section(r: &mut Report, args: &Args, families_dir: &Path) -> Result<Value> {
    let mut out = serde_json::Map::new();
    let mut names: Vec<_> = std::fs::read_dir(families_dir)
        .with_context(|| format!("reading {}", families_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("base/config.json").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    r.say(format!("  {} families: {}", names.len(), names.join(", ")));
    for name in names {
        let dir = families_dir.join(&name).join("base");
        let reference: Value = serde_json::from_str(&std::fs::read_to_string(
            families_dir.join(&name).join("reference.json"),
        )?)?;
        let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone())?;
        let mut row = serde_json::Map::new();
        let (cpu, mask) = states(&dir, Device::Cpu, &[Precision::Fp32], &sentences)?;
        let precisions = [Precision::Fp32, HALF_MAX_ABS[0].0, HALF_MAX_ABS[1].0];
        let (on_device, _) = states(&dir, args.device, &precisions, &sentences)?;
        let (cpu, dev) = (&cpu[0], &on_device[0]);
        let (d, _) = compare(dev, cpu, &mask);
        r.check(
            d <= FP32_TOLERANCE,
            format!(
                "{name}: fp32 token states, device vs CPU, max abs {d:.2e} (<= {FP32_TOLERANCE:e})"
            ),
        );
        row.insert("fp32_device_vs_cpu_max_abs".into(), json!(d));
        for ((precision, max_abs), half) in HALF_MAX_ABS.into_iter().zip(&on_device[1..]) {
            let (d, cos) = compare(half, dev, &mask);
            r.check(
                d <= max_abs && cos >= HALF_MIN_COSINE,
                format!(
                    "{name}: {} autocast token states vs fp32 on the device: max abs {d:.2e} (<= {max_abs}), smallest cosine {cos:.5} (>= {HALF_MIN_COSINE})",
                    precision.name()
                ),
            );
            row.insert(
                format!("{}_vs_fp32", precision.name()),
                json!({"max_abs": d, "min_cosine": cos}),
            );
        }
        // A few finetune steps in each half precision: the loss falls.
        let (texts, targets) = labelled_texts(32);
        let data = SplitData {
            inputs: SplitInputs::Texts(texts.clone()),
            targets,
        };
        let config = trainyard::ml::encoder::EncoderConfig::from_file(&dir.join("config.json"))?;
        for precision in [Precision::Bf16, Precision::Fp16] {
            let mut hp = Hyperparameters::defaults_for(TrainMode::Finetune);
            // Small random models learn the labels slowly: 60 full-batch steps (a fraction of
            // a second each), whatever --finetune-steps says for MiniLM.
            hp.epochs = 60;
            hp.batch_size = texts.len();
            hp.learning_rate = 1e-2;
            hp.encoder_learning_rate = 5e-3;
            hp.dropout = 0.0;
            hp.warmup_ratio = 0.0;
            hp.precision = precision;
            let started = Instant::now();
            let mut trainer = Trainer::new(
                spec(TrainMode::Finetune, config.shape.hidden_size, 64),
                hp.clone(),
                &data,
                Some(&dir),
                args.device,
            )?;
            let mut losses = Vec::new();
            for epoch in 1..=hp.epochs {
                trainer.run_epoch(epoch, &mut |info| {
                    losses.push(info.loss);
                    true
                })?;
            }
            // The first step's loss against the mean of the last three.
            let first = losses[0];
            let tail = &losses[losses.len().saturating_sub(3)..];
            let last = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
            r.check(
                last < first,
                format!(
                    "{name}: {} finetune, {} steps in {:.2}s: loss {first:.4} -> {last:.4}",
                    precision.name(),
                    losses.len(),
                    started.elapsed().as_secs_f64()
                ),
            );
            row.insert(
                format!("{}_finetune", precision.name()),
                json!({"first_loss": first, "last_loss": last, "steps": losses.len(),
                       "seconds": round(started.elapsed().as_secs_f64(), 3)}),
            );
        }
        out.insert(name, Value::Object(row));
    }
    Ok(Value::Object(out))
}
