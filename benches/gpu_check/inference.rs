//! gpu_check sections (e) and (f): an inference batch through `TextEncoder` (the serve path) and
//! local embedding throughput in fp32, fp16 and bf16.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};
use tokenizers::Tokenizer;
use trainyard::ml::encoder::{load_encoder, Encoder, EncoderConfig};
use trainyard::ml::text_encoder::{ClassifierWeights, EncoderOptions, TextEncoder};

use super::training::{load_tokenizer, Trained};
use super::{round, Args, Report, COMPARED_SENTENCES, FP32_TOLERANCE, HALF_MIN_COSINE};

fn encoder_options(
    dir: &Path,
    args: &Args,
    max_tokens: usize,
    classifier: Option<Arc<ClassifierWeights>>,
) -> EncoderOptions {
    EncoderOptions {
        model_dir: dir.to_path_buf(),
        max_tokens,
        max_tokens_per_batch: args.token_budget,
        threads: args.threads,
        device: args.device,
        pooling: Default::default(),
        classifier,
        batch_wait: Duration::ZERO,
        windows: None,
    }
}

pub fn inference_section(
    r: &mut Report,
    args: &Args,
    t: &Trained,
    sentences: &[String],
) -> Result<Value> {
    let mut v = json!({});
    for (name, spec, blob) in [
        ("finetune", &t.ft_spec, &t.ft_blob),
        ("head", &t.head_spec, &t.head_blob),
    ] {
        let weights = Arc::new(ClassifierWeights {
            spec: spec.clone(),
            blob: blob.clone(),
        });
        let encoder = TextEncoder::start(encoder_options(
            &args.model_dir,
            args,
            spec.max_tokens,
            Some(weights),
        ))?;
        let mut texts = t.ft_texts.clone();
        texts.extend(sentences.iter().take(32).cloned());
        let started = Instant::now();
        let out = encoder.encode_blocking(texts.clone())?;
        let secs = started.elapsed().as_secs_f64();
        let widths_ok = out.vectors.iter().all(|p| p.len() == spec.labels.len());
        let in_range = out
            .vectors
            .iter()
            .flatten()
            .all(|p| (0.0..=1.0).contains(p));
        r.say(format!(
            "  {name} model served by TextEncoder on {:?}: {} texts in, {} results out, {secs:.3}s",
            args.device,
            texts.len(),
            out.vectors.len()
        ));
        r.check(
            out.vectors.len() == texts.len() && widths_ok,
            format!(
                "{name}: one result of {} labels per text",
                spec.labels.len()
            ),
        );
        r.check(in_range, format!("{name}: probabilities in [0, 1]"));
        let mut entry = json!({"requested": texts.len(), "returned": out.vectors.len(),
                               "labels": spec.labels.len(), "widths_ok": widths_ok,
                               "probabilities_in_range": in_range, "seconds": round(secs, 4)});
        if name == "finetune" {
            // The serve path against the trainer's own evaluation of the same texts and weights.
            let diff = max_abs_diff(&out.vectors[..t.ft_texts.len()], &t.ft_probabilities);
            r.check(
                diff <= FP32_TOLERANCE,
                format!("finetune: serve path vs Trainer::evaluate, max abs diff {diff:.3e}"),
            );
            entry["max_abs_diff_vs_trainer"] = json!(diff);
        }
        v[name] = entry;
    }
    Ok(v)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}

fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| (*p as f64) * (*q as f64))
                .sum();
            let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
            dot / (nx * ny).max(1e-12)
        })
        .fold(1.0, f64::min)
}

/// A copy of the model folder with its weights in `kind` (TextEncoder loads the file's dtype).
fn write_dtype_copy(model_dir: &Path, kind: Kind, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let config = EncoderConfig::from_file(&model_dir.join("config.json"))?;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _encoder = config.build(&vs.root())?;
    vs.load(model_dir.join("model.safetensors"))?;
    vs.set_kind(kind);
    vs.save(out.join("model.safetensors"))?;
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(model_dir.join(file), out.join(file))?;
    }
    Ok(())
}

/// Fixed batches of `batch` length-sorted texts through `BertEncoder` (tokenizing included),
/// in input order.
fn encode_fixed(
    tokenizer: &Tokenizer,
    encoder: &dyn Encoder,
    device: Device,
    texts: &[String],
    batch: usize,
) -> Result<Vec<Vec<f32>>> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| anyhow!("{e}"))?;
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
    let mut out = vec![Vec::new(); texts.len()];
    for chunk in order.chunks(batch.max(1)) {
        let width = encodings[chunk[0]].get_ids().len().max(1);
        let mut ids = vec![0i64; chunk.len() * width];
        let mut mask = vec![0i64; chunk.len() * width];
        for (r, &i) in chunk.iter().enumerate() {
            for (c, &id) in encodings[i].get_ids().iter().enumerate() {
                ids[r * width + c] = id as i64;
                mask[r * width + c] = 1;
            }
        }
        let padded = chunk.iter().any(|&i| encodings[i].get_ids().len() != width);
        let shape = [chunk.len() as i64, width as i64];
        let emb = tch::no_grad(|| {
            let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
            let mask = Tensor::from_slice(&mask).view(shape).to_device(device);
            encoder
                .sentence_embeddings(&ids, &mask, padded, Default::default())
                .to_device(Device::Cpu)
                .contiguous()
        });
        let flat = Vec::<f32>::try_from(emb.view([-1]))?;
        let dims = flat.len() / chunk.len();
        for (r, &i) in chunk.iter().enumerate() {
            out[i] = flat[r * dims..(r + 1) * dims].to_vec();
        }
    }
    Ok(out)
}

/// Best wall time of `repeats` runs after one warm-up run.
fn best_seconds(
    repeats: usize,
    mut run: impl FnMut() -> Result<usize>,
    expected: usize,
) -> Result<f64> {
    run()?;
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        let n = run()?;
        anyhow::ensure!(n == expected, "{n} embeddings for {expected} texts");
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(best)
}

pub fn throughput_section(
    r: &mut Report,
    args: &Args,
    sentences: &[String],
    work: &Path,
) -> Result<Value> {
    let mut results = Vec::new();
    let mut half = Vec::new();
    let mut reference: Option<Vec<Vec<f32>>> = None;
    let kinds = [
        ("fp32", Kind::Float),
        ("fp16", Kind::Half),
        ("bf16", Kind::BFloat16),
    ];
    let tokenizer = load_tokenizer(&args.model_dir, 256)?;
    for (dtype, kind) in kinds {
        let smoke = !args.cuda && kind != Kind::Float;
        let texts: &[String] = if smoke {
            &sentences[..args.half_smoke.min(sentences.len())]
        } else {
            sentences
        };
        if texts.is_empty() {
            r.skip(format!(
                "{dtype} throughput: CPU run (fp16/bf16 are measured on CUDA only; --half-smoke 0)"
            ));
            continue;
        }
        let repeats = if smoke { 1 } else { args.repeats };
        let dir = if kind == Kind::Float {
            args.model_dir.clone()
        } else {
            let dir = work.join(dtype);
            write_dtype_copy(&args.model_dir, kind, &dir)?;
            dir
        };
        let note = if smoke {
            " (CPU smoke test: dtype path only, not a throughput figure)"
        } else {
            ""
        };
        // Serve path: TextEncoder with token-budget batches (what `serve` and embed jobs use).
        let encoder = TextEncoder::start(encoder_options(&dir, args, 256, None))?;
        let mut served = Vec::new();
        let secs = best_seconds(
            repeats,
            || {
                served = encoder.encode_blocking(texts.to_vec())?.vectors;
                Ok(served.len())
            },
            texts.len(),
        )?;
        drop(encoder);
        let sps = texts.len() as f64 / secs;
        r.say(format!("  serve path (TextEncoder, token budget {}, {} replica(s)), {dtype}: {sps:.1} sentences/s on {} sentences{note}",
            args.token_budget, if args.cuda { 1 } else { args.threads }, texts.len()));
        results.push(json!({"path": "serve", "dtype": dtype, "token_budget": args.token_budget,
            "sentences": texts.len(), "best_seconds": secs, "sentences_per_second": sps, "smoke": smoke}));
        // Fixed batches of --batch-size through BertEncoder, like sentence-transformers' encode.
        tch::set_num_threads(args.threads);
        let (_vs, bert, _) = load_encoder(&dir, args.device)?;
        let mut fixed = Vec::new();
        let secs = best_seconds(
            repeats,
            || {
                fixed = encode_fixed(
                    &tokenizer,
                    bert.as_ref(),
                    args.device,
                    texts,
                    args.batch_size,
                )?;
                Ok(fixed.len())
            },
            texts.len(),
        )?;
        let sps = texts.len() as f64 / secs;
        r.say(format!("  fixed batches (BertEncoder, batch size {}, length-sorted), {dtype}: {sps:.1} sentences/s{note}", args.batch_size));
        results.push(json!({"path": "fixed_batches", "dtype": dtype, "batch_size": args.batch_size,
            "sentences": texts.len(), "best_seconds": secs, "sentences_per_second": sps, "smoke": smoke}));
        r.check(
            sps.is_finite() && sps > 0.0,
            format!("{dtype}: throughput is a positive number"),
        );
        let k = COMPARED_SENTENCES.min(texts.len());
        if kind == Kind::Float {
            let diff = max_abs_diff(&served[..k], &fixed[..k]);
            r.check(
                diff <= FP32_TOLERANCE,
                format!("fp32: serve path vs fixed batches, max abs diff {diff:.3e}"),
            );
            if let Some(path) = &args.dump {
                std::fs::write(
                    path,
                    json!({"sentences": &texts[..k], "embeddings": &served[..k]}).to_string(),
                )?;
            }
            reference = Some(served);
        } else if let Some(reference) = &reference {
            let (diff, cos) = (
                max_abs_diff(&served[..k], &reference[..k]),
                min_cosine(&served[..k], &reference[..k]),
            );
            r.check(cos >= HALF_MIN_COSINE, format!("{dtype} vs fp32 on {k} sentences: min cosine {cos:.5} (>= {HALF_MIN_COSINE}), max abs diff {diff:.3e}"));
            half.push(json!({"dtype": dtype, "sentences": k, "max_abs_diff_vs_fp32": diff,
                             "min_cosine_vs_fp32": cos, "min_cosine_required": HALF_MIN_COSINE, "smoke": smoke}));
        }
    }
    if !args.cuda {
        r.skip("fp16/bf16 throughput: no CUDA on this run (the half dtypes ran only as a CPU smoke test)".into());
    }
    Ok(json!({"results": results, "half_precision": half}))
}
