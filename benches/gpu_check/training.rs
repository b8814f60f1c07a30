//! gpu_check sections (b)-(d): `head` and `finetune` training through `Trainer` on the device,
//! and the same weights and batch on CPU and on the device.
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};
use trainyard::datasets::TaskType;
use trainyard::ml::classifier::{Classifier, ClassifierInput, ClassifierSpec, TrainMode};
use trainyard::ml::encoder::{load_encoder, EncoderConfig};
use trainyard::ml::trainer::{Hyperparameters, SplitData, SplitInputs, Trainer};

use super::{round, Args, Report, COMPARED_SENTENCES, FP32_TOLERANCE};

/// Seeded synthetic embeddings (unit rows) with two labels from two random directions; label b
/// is masked (not annotated) on every 8th row.
fn synthetic_embeddings(rows: usize, dims: usize) -> (Vec<f32>, Vec<Vec<Option<bool>>>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (w_a, w_b) = (uniform(dims), uniform(dims));
    let mut flat = Vec::with_capacity(rows * dims);
    let mut targets = Vec::with_capacity(rows);
    for i in 0..rows {
        let mut x = uniform(dims);
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        x.iter_mut().for_each(|v| *v /= norm);
        let dot = |w: &[f32]| x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
        targets.push(vec![
            Some(dot(&w_a) > 0.0),
            (i % 8 != 0).then(|| dot(&w_b) > 0.0),
        ]);
        flat.extend(x);
    }
    (flat, targets)
}

/// Short texts whose labels follow words: `a` = a positive adjective, `b` = a question.
pub fn labelled_texts(n: usize) -> (Vec<String>, Vec<Vec<Option<bool>>>) {
    let good = ["wonderful", "great", "happy", "lovely"];
    let bad = ["terrible", "awful", "sad", "broken"];
    let nouns = [
        "film", "meal", "trip", "phone", "book", "hotel", "game", "song",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    (0..n)
        .map(|i| {
            let positive = i % 2 == 0;
            let question = (i / 2) % 2 == 0;
            let adjective = if positive { good[i % 4] } else { bad[i % 4] };
            let noun = nouns[rng.random_range(0..nouns.len())];
            let text = if question {
                format!("was the {noun} really {adjective} for you and your friends?")
            } else {
                format!("the {noun} was {adjective} for me and my friends.")
            };
            (text, vec![Some(positive), Some(question)])
        })
        .unzip()
}

pub fn spec(mode: TrainMode, input_dim: i64, max_tokens: usize) -> ClassifierSpec {
    ClassifierSpec {
        mode,
        task: TaskType::MultiLabel,
        labels: vec!["a".into(), "b".into()],
        input_dim,
        hidden_size: 256,
        dropout: 0.1,
        max_tokens,
        pooling: Default::default(),
        base_model: None,
    }
}

/// Trains for `steps` epochs of one step each; returns (start loss, end loss, step losses).
fn train_steps(
    trainer: &mut Trainer,
    data: &SplitData,
    steps: u32,
) -> Result<(f64, f64, Vec<f64>)> {
    let (_, start) = trainer.evaluate(&trainer.prepare(data)?)?;
    let mut losses = Vec::new();
    for epoch in 1..=steps {
        trainer.run_epoch(epoch, &mut |info| {
            losses.push(info.loss);
            true
        })?;
    }
    let (_, end) = trainer.evaluate(&trainer.prepare(data)?)?;
    Ok((start, end, losses))
}

fn report_losses(
    r: &mut Report,
    what: &str,
    start: f64,
    end: f64,
    losses: &[f64],
    secs: f64,
) -> Value {
    let first = losses.first().copied().unwrap_or(f64::NAN);
    let last = losses.last().copied().unwrap_or(f64::NAN);
    r.say(format!(
        "  {} steps in {secs:.2}s: evaluation loss {start:.4} -> {end:.4}, step loss {first:.4} -> {last:.4}",
        losses.len()
    ));
    r.check(end < start && last < first, format!("{what}: loss fell"));
    json!({"steps": losses.len(), "loss_start": start, "loss_end": end, "first_step_loss": first,
           "last_step_loss": last, "fell": end < start && last < first,
           "train_seconds": round(secs, 3)})
}

/// The models (b) and (c) trained, for (d) and (e).
pub struct Trained {
    pub head_spec: ClassifierSpec,
    pub head_blob: Vec<u8>,
    pub head_inputs: Vec<f32>,
    pub ft_spec: ClassifierSpec,
    pub ft_blob: Vec<u8>,
    pub ft_texts: Vec<String>,
    pub ft_probabilities: Vec<Vec<f32>>,
}

pub fn head_section(r: &mut Report, args: &Args, trained: &mut Option<Trained>) -> Result<Value> {
    let (rows, dims) = (256, 384);
    let (flat, targets) = synthetic_embeddings(rows, dims);
    let data = SplitData {
        inputs: SplitInputs::Embeddings(std::sync::Arc::new(
            trainyard::ml::trainer::VectorRows::from_flat(dims, flat.clone()),
        )),
        targets,
    };
    let mut hp = Hyperparameters::defaults_for(TrainMode::Head);
    hp.epochs = args.head_steps;
    hp.batch_size = rows;
    hp.learning_rate = 3e-3;
    let head_spec = spec(TrainMode::Head, dims as i64, 256);
    r.say(format!(
        "  {rows} seeded embeddings x {dims}, 2 labels (b masked on 1 row in 8), batch {rows}, lr 3e-3, on {:?}",
        args.device
    ));
    let started = Instant::now();
    let mut trainer = Trainer::new(head_spec.clone(), hp, &data, None, args.device)?;
    let (start, end, losses) = train_steps(&mut trainer, &data, args.head_steps)?;
    let v = report_losses(
        r,
        "head",
        start,
        end,
        &losses,
        started.elapsed().as_secs_f64(),
    );
    *trained = Some(Trained {
        head_spec,
        head_blob: trainer.model.weights_blob()?,
        head_inputs: flat[..64 * dims].to_vec(),
        ft_spec: spec(TrainMode::Finetune, 0, 0),
        ft_blob: Vec::new(),
        ft_texts: Vec::new(),
        ft_probabilities: Vec::new(),
    });
    Ok(v)
}

pub fn finetune_section(r: &mut Report, args: &Args, trained: &mut Trained) -> Result<Value> {
    let config = EncoderConfig::from_file(&args.model_dir.join("config.json"))?;
    let (texts, targets) = labelled_texts(32);
    let data = SplitData {
        inputs: SplitInputs::Texts(texts.clone()),
        targets,
    };
    let mut hp = Hyperparameters::defaults_for(TrainMode::Finetune);
    hp.epochs = args.finetune_steps;
    hp.batch_size = texts.len();
    hp.learning_rate = 3e-3;
    hp.encoder_learning_rate = 1e-4;
    let ft_spec = spec(TrainMode::Finetune, config.shape.hidden_size, 128);
    r.say(format!(
        "  {} labelled texts, batch {}, head lr 3e-3, encoder lr 1e-4, on {:?}",
        texts.len(),
        texts.len(),
        args.device
    ));
    let started = Instant::now();
    let mut trainer = Trainer::new(
        ft_spec.clone(),
        hp,
        &data,
        Some(&args.model_dir),
        args.device,
    )?;
    let probe = "encoder.layer.0.attention.self.query.weight";
    let before = trainer.model.vs.variables()[probe]
        .to_device(Device::Cpu)
        .copy();
    let (start, end, losses) = train_steps(&mut trainer, &data, args.finetune_steps)?;
    let mut v = report_losses(
        r,
        "finetune",
        start,
        end,
        &losses,
        started.elapsed().as_secs_f64(),
    );
    let after = trainer.model.vs.variables()[probe].to_device(Device::Cpu);
    let moved = (after - before).abs().max().double_value(&[]);
    r.check(
        moved > 0.0,
        format!("finetune: encoder weights moved (max |delta| of {probe} = {moved:.3e})"),
    );
    v["encoder_max_abs_delta"] = json!(moved);
    let (probabilities, _) = trainer.evaluate(&trainer.prepare(&data)?)?;
    trained.ft_spec = ft_spec;
    trained.ft_blob = trainer.model.weights_blob()?;
    trained.ft_texts = texts;
    trained.ft_probabilities = probabilities;
    Ok(v)
}

pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let mut tokenizer =
        Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| anyhow!("{e}"))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("{e}"))?;
    tokenizer.with_padding(None::<PaddingParams>);
    Ok(tokenizer)
}

/// Token ids and mask padded to the longest row: ([rows, width] tensors on CPU, any padding).
fn pad(tokenizer: &Tokenizer, texts: &[String]) -> Result<(Tensor, Tensor, bool)> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| anyhow!("{e}"))?;
    let width = encodings
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut ids = vec![0i64; texts.len() * width];
    let mut mask = vec![0i64; texts.len() * width];
    for (r, e) in encodings.iter().enumerate() {
        for (c, &id) in e.get_ids().iter().enumerate() {
            ids[r * width + c] = id as i64;
            mask[r * width + c] = 1;
        }
    }
    let padded = encodings.iter().any(|e| e.get_ids().len() != width);
    let shape = [texts.len() as i64, width as i64];
    Ok((
        Tensor::from_slice(&ids).view(shape),
        Tensor::from_slice(&mask).view(shape),
        padded,
    ))
}

/// Embeddings, finetune logits and head logits for fixed inputs on one device (CPU results).
fn outputs_on(args: &Args, device: Device, t: &Trained, texts: &[String]) -> Result<[Tensor; 3]> {
    let tokenizer = load_tokenizer(&args.model_dir, 256)?;
    let (ids, mask, padded) = pad(&tokenizer, texts)?;
    let (ids, mask) = (ids.to_device(device), mask.to_device(device));
    let (_vs, encoder, _) = load_encoder(&args.model_dir, device)?;
    let mut ft = Classifier::new(t.ft_spec.clone(), device, Some(&args.model_dir))?;
    ft.load_weights_blob(&t.ft_blob)?;
    let mut head = Classifier::new(t.head_spec.clone(), device, None)?;
    head.load_weights_blob(&t.head_blob)?;
    let x = Tensor::from_slice(&t.head_inputs)
        .view([-1, t.head_spec.input_dim])
        .to_device(device);
    Ok(tch::no_grad(|| {
        let cpu = |x: Tensor| x.to_kind(Kind::Float).to_device(Device::Cpu);
        [
            cpu(encoder.sentence_embeddings(&ids, &mask, padded, Default::default())),
            cpu(ft.logits(
                ClassifierInput::Tokens {
                    ids: &ids,
                    mask: &mask,
                    padded,
                },
                None,
            )),
            cpu(head.logits(ClassifierInput::Embeddings(&x), None)),
        ]
    }))
}

pub fn agreement_section(
    r: &mut Report,
    args: &Args,
    t: &Trained,
    sentences: &[String],
) -> Result<Value> {
    let texts: Vec<String> = sentences.iter().take(COMPARED_SENTENCES).cloned().collect();
    let (mode, reference, other) = if args.cuda {
        tch::set_num_threads(args.threads);
        let reference = outputs_on(args, Device::Cpu, t, &texts)?;
        (
            "cpu_vs_cuda",
            reference,
            outputs_on(args, args.device, t, &texts)?,
        )
    } else {
        r.skip("CPU/CUDA agreement: no CUDA on this run; compared CPU with 1 thread against CPU with --threads threads instead".into());
        tch::set_num_threads(1);
        let reference = outputs_on(args, Device::Cpu, t, &texts)?;
        tch::set_num_threads(args.threads);
        (
            "cpu_1_thread_vs_cpu_n_threads",
            reference,
            outputs_on(args, Device::Cpu, t, &texts)?,
        )
    };
    let label = if args.cuda {
        format!("cpu ({} threads) vs cuda", args.threads)
    } else {
        format!("cpu (1 thread) vs cpu ({} threads)", args.threads)
    };
    r.say(format!("  same weights, same {} padded sentences / 64 embeddings: {label}, fp32, tolerance {FP32_TOLERANCE:e}", texts.len()));
    let names = ["embeddings", "finetune_logits", "head_logits"];
    let mut v = json!({"mode": mode, "tolerance": FP32_TOLERANCE, "threads": args.threads,
                       "cuda_compared": args.cuda});
    for ((name, a), b) in names.iter().zip(&reference).zip(&other) {
        let diff = (a - b).abs().max().double_value(&[]);
        r.check(
            diff <= FP32_TOLERANCE,
            format!("{name}: max abs diff {diff:.3e} ({label})"),
        );
        v[format!("{name}_max_abs_diff")] = json!(diff);
    }
    Ok(v)
}
