//! The training loop's tch half: batches, forward/backward, AdamW with warmup and linear decay,
//! gradient clipping, prediction, and checkpoint state. An optimizer step covers
//! `batch_size × gradient_accumulation_steps` texts, run as micro-batches of at most
//! `batch_size` texts and `max_batch_tokens` padded tokens each (memory is bounded by the
//! budget, not by the batch), with the loss normalised over the whole step so that the update is
//! the one a single batch of those texts would give. Encoder layers learn at
//! `encoder_learning_rate × layer_lr_decay^(layers above)`. Forward passes run in the run's
//! `precision` (`precision.rs`: autocast, fp16 loss scaling); weights stay fp32. Epoch bookkeeping, metrics, early
//! stopping and storage are the caller's (`training::run`).
//!
//! Determinism: the head's initial weights, each epoch's shuffle and every dropout mask come
//! from ChaCha8 generators seeded with (seed, stream): stream 0 for the initialisation, stream N
//! for epoch N. Nothing uses libtorch's process-wide generator, so a run gives the same numbers
//! whatever else runs in the process, and epoch N gives the same result whether the run started
//! at epoch 1 or resumed from a checkpoint of epoch N-1.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::adamw::AdamW;
use super::classifier::{
    blob_to_tensors, loss_terms, masked_loss_sum, target_tensors, tensors_to_blob, Classifier,
    ClassifierInput, ClassifierSpec, LossKind, LossSpec, TrainMode,
};
use super::precision::{autocast, LossScaler, Precision};
use super::text_encoder::load_tokenizer;
pub use super::vector_rows::VectorRows;
use crate::datasets::TaskType;

/// Hyperparameters of a run, every one with a documented default (see `defaults_for`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub epochs: u32,
    pub batch_size: usize,
    /// Learning rate of the classifier head.
    pub learning_rate: f64,
    /// Learning rate of the encoder (finetune only).
    pub encoder_learning_rate: f64,
    pub weight_decay: f64,
    /// Fraction of all steps spent warming the learning rate up from 0; then linear decay to 0.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip; 0 = off.
    pub max_grad_norm: f64,
    pub early_stopping_metric: EarlyStoppingMetric,
    /// Epochs without improvement before stopping; 0 = never stop early.
    pub patience: u32,
    pub seed: u64,
    pub loss: LossKind,
    /// BCE only: weight positives by negatives/positives per label (training split).
    pub pos_weight: bool,
    pub focal_gamma: f64,
    pub asymmetric_gamma_neg: f64,
    pub asymmetric_gamma_pos: f64,
    pub asymmetric_clip: f64,
    pub hidden_size: i64,
    pub dropout: f64,
    /// Finetune: tokens per text after truncation.
    pub max_tokens: usize,
    /// Telemetry: a step event every this many steps.
    pub log_every_steps: u64,
    /// Batches whose gradients add up before each optimizer step (effective batch:
    /// `batch_size ×` this).
    #[serde(default = "one_u32")]
    pub gradient_accumulation_steps: u32,
    /// Most padded tokens one forward pass takes (finetune): a batch is cut into micro-batches
    /// under it; a single text longer than the budget runs alone.
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// Layer-wise learning-rate decay (finetune): each encoder layer below the top learns at
    /// this factor of the one above, the embeddings at `factor^layers`; 1 = off.
    #[serde(default = "one_f64")]
    pub layer_lr_decay: f64,
    /// Number type of forward passes (autocast); fp16 adds dynamic loss scaling.
    #[serde(default)]
    pub precision: Precision,
}

fn one_u32() -> u32 {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn default_batch_tokens() -> usize {
    4096
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStoppingMetric {
    ValMacroF1,
    ValMicroF1,
    ValLoss,
}

impl Hyperparameters {
    /// Defaults: head 30 epochs × 64, lr 1e-3; finetune 3 epochs × 16, head lr 1e-3, encoder
    /// lr 2e-5; both: weight decay 0.01, warmup 10%, clip 1.0, early stopping on validation
    /// macro-F1 with patience 3, seed 42, BCE with pos_weight, head 256 wide, dropout 0.1, no
    /// gradient accumulation, 4,096 tokens per forward pass, no layer-wise decay.
    pub fn defaults_for(mode: TrainMode) -> Hyperparameters {
        let finetune = mode == TrainMode::Finetune;
        Hyperparameters {
            epochs: if finetune { 3 } else { 30 },
            batch_size: if finetune { 16 } else { 64 },
            learning_rate: 1e-3,
            encoder_learning_rate: 2e-5,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            max_grad_norm: 1.0,
            early_stopping_metric: EarlyStoppingMetric::ValMacroF1,
            patience: 3,
            seed: 42,
            loss: LossKind::Bce,
            pos_weight: true,
            focal_gamma: 2.0,
            asymmetric_gamma_neg: 4.0,
            asymmetric_gamma_pos: 1.0,
            asymmetric_clip: 0.05,
            hidden_size: 256,
            dropout: 0.1,
            max_tokens: 128,
            log_every_steps: 10,
            gradient_accumulation_steps: 1,
            max_batch_tokens: default_batch_tokens(),
            layer_lr_decay: 1.0,
            precision: Precision::Fp32,
        }
    }

    /// Texts per optimizer step.
    pub fn step_rows(&self) -> usize {
        self.batch_size.max(1) * self.gradient_accumulation_steps.max(1) as usize
    }

    pub fn loss_spec(&self) -> LossSpec {
        LossSpec {
            kind: self.loss,
            focal_gamma: self.focal_gamma,
            gamma_neg: self.asymmetric_gamma_neg,
            gamma_pos: self.asymmetric_gamma_pos,
            clip: self.asymmetric_clip,
        }
    }
}

/// One split's inputs: stored embeddings (head) or texts (finetune), and per-label targets.
pub struct SplitData {
    pub inputs: SplitInputs,
    /// Per record, per label: Some(true/false), or None where the label is masked.
    pub targets: Vec<Vec<Option<bool>>>,
}

pub enum SplitInputs {
    /// Stored vectors, in memory or spilled to a file (`VectorRows`).
    Embeddings(Arc<VectorRows>),
    Texts(Vec<String>),
}

impl SplitData {
    pub fn len(&self) -> usize {
        self.targets.len()
    }
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Inputs on the device, ready to batch.
enum Prepared {
    Embeddings(Tensor),
    /// Vectors spilled to a file: each batch's rows are read when it runs.
    Spilled(Arc<VectorRows>),
    Tokens(Vec<Vec<i64>>),
}

/// What one step reports to the caller.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    pub global_step: u64,
    pub total_steps: u64,
    pub epoch: u32,
    pub step_in_epoch: u64,
    pub steps_per_epoch: u64,
    pub loss: f64,
    pub learning_rate: f64,
    pub samples_per_sec: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

impl From<anyhow::Error> for TrainError {
    fn from(e: anyhow::Error) -> Self {
        TrainError::Failed(format!("{e:#}"))
    }
}

impl From<tch::TchError> for TrainError {
    fn from(e: tch::TchError) -> Self {
        TrainError::Failed(e.to_string())
    }
}

pub struct Trainer {
    pub model: Classifier,
    optimizer: AdamW,
    hp: Hyperparameters,
    train_inputs: Prepared,
    train_targets: Vec<Vec<Option<bool>>>,
    pos_weight: Option<Tensor>,
    device: Device,
    /// The local MiniLM folder (its tokenizer prepares finetune texts).
    base_dir: Option<PathBuf>,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: u64,
    /// Encoder layers (finetune; 0 for heads): the learning-rate groups are the head, then
    /// depths 0 ..= layers + 1.
    layers: i64,
    /// fp16's dynamic loss scale (None for fp32 and bf16).
    scaler: Option<LossScaler>,
}

/// A split ready to evaluate: inputs on the device (tokenized once), and its targets.
pub struct PreparedSplit<'a> {
    inputs: Prepared,
    targets: &'a [Vec<Option<bool>>],
}

impl Trainer {
    /// `base_dir`: the local MiniLM folder (finetune needs it; head ignores it).
    pub fn new(
        spec: ClassifierSpec,
        hp: Hyperparameters,
        train: &SplitData,
        base_dir: Option<&Path>,
        device: Device,
    ) -> Result<Trainer, TrainError> {
        if train.is_empty() {
            return Err(TrainError::Failed("the training split is empty".into()));
        }
        let finetune = spec.mode == TrainMode::Finetune;
        let mut model = Classifier::new(spec, device, if finetune { base_dir } else { None })?;
        model.init_head(&mut run_rng(hp.seed, 0));
        // Group 0 is the head; group 1 + d the encoder's parameters at depth d.
        let layers = model
            .encoder_config
            .as_ref()
            .filter(|_| finetune)
            .map_or(0, |c| c.shape.num_layers);
        let optimizer = {
            let config = model.encoder_config.clone();
            AdamW::new(model.trainable(), hp.weight_decay, move |name| match config
                .as_ref()
                .and_then(|c| c.depth(name))
            {
                Some(depth) => 1 + depth as usize,
                None => 0,
            })
        };
        let train_inputs = prepare(&train.inputs, &model.spec, base_dir, device)?;
        let labels = model.spec.labels.len();
        let pos_weight =
            (hp.loss == LossKind::Bce && hp.pos_weight && model.spec.task != TaskType::MultiClass)
                .then(|| {
                    let weights: Vec<f32> = (0..labels)
                        .map(|l| {
                            let pos = train.targets.iter().filter(|t| t[l] == Some(true)).count();
                            let neg = train.targets.iter().filter(|t| t[l] == Some(false)).count();
                            if pos == 0 {
                                1.0
                            } else {
                                (neg as f32 / pos as f32).clamp(0.1, 100.0)
                            }
                        })
                        .collect();
                    Tensor::from_slice(&weights).to_device(device)
                });
        let steps_per_epoch = train.len().div_ceil(hp.step_rows()) as u64;
        let scaler = (hp.precision == Precision::Fp16).then(LossScaler::default);
        Ok(Trainer {
            model,
            optimizer,
            hp,
            train_inputs,
            train_targets: train.targets.clone(),
            pos_weight,
            device,
            base_dir: base_dir.map(Path::to_path_buf),
            steps_per_epoch,
            layers,
            scaler,
        })
    }

    /// Prepares a split for `evaluate` (tokenizes texts, moves embeddings to the device); done
    /// once per split, not once per evaluation.
    pub fn prepare<'a>(&self, data: &'a SplitData) -> Result<PreparedSplit<'a>, TrainError> {
        Ok(PreparedSplit {
            inputs: prepare(
                &data.inputs,
                &self.model.spec,
                self.base_dir.as_deref(),
                self.device,
            )?,
            targets: &data.targets,
        })
    }

    /// A batch's masked loss, summed (not averaged), and how many terms it summed.
    fn batch_loss(&self, logits: &Tensor, targets: &[&Vec<Option<bool>>]) -> (Tensor, Tensor) {
        let labels = self.model.spec.labels.len();
        let (t, m) = target_tensors(targets, labels, self.device);
        masked_loss_sum(
            self.model.spec.task,
            logits,
            &t,
            &m,
            &self.hp.loss_spec(),
            self.pos_weight.as_ref(),
        )
    }

    /// The learning rate of each optimizer group at `scale` of the schedule: the head's, then
    /// the encoder's by depth (embeddings at `decay^layers`, the top layer and above at full).
    fn group_rates(&self, scale: f64) -> Vec<f64> {
        let mut lrs = vec![self.hp.learning_rate * scale];
        for depth in 0..=self.layers + 1 {
            let below_top = (self.layers - depth).max(0) as i32;
            lrs.push(
                self.hp.encoder_learning_rate * scale * self.hp.layer_lr_decay.powi(below_top),
            );
        }
        lrs
    }

    /// Cuts one step's rows into forward passes of at most `batch_size` texts and
    /// `max_batch_tokens` padded tokens (at least one text each), in order.
    fn micro_batches<'r>(&self, rows: &'r [i64]) -> Vec<&'r [i64]> {
        let limit = self.hp.batch_size.max(1);
        let lengths = match &self.train_inputs {
            Prepared::Tokens(ids) => Some(ids),
            _ => None,
        };
        let mut out = Vec::new();
        let mut start = 0;
        let mut longest = 0usize;
        for (i, &row) in rows.iter().enumerate() {
            let len = lengths.map_or(0, |ids| ids[row as usize].len());
            let taken = i - start;
            let over_tokens = lengths.is_some()
                && taken > 0
                && (taken + 1) * longest.max(len) > self.hp.max_batch_tokens;
            if taken == limit || over_tokens {
                out.push(&rows[start..i]);
                start = i;
                longest = 0;
            }
            longest = longest.max(len);
        }
        if start < rows.len() {
            out.push(&rows[start..]);
        }
        out
    }

    pub fn total_steps(&self) -> u64 {
        self.steps_per_epoch * self.hp.epochs as u64
    }

    fn schedule(&self, step: u64) -> f64 {
        let total = self.total_steps().max(1) as f64;
        let warmup = (self.hp.warmup_ratio * total).round();
        let s = step as f64;
        if warmup > 0.0 && s < warmup {
            (s + 1.0) / warmup
        } else {
            ((total - s) / (total - warmup).max(1.0)).clamp(0.0, 1.0)
        }
    }

    /// One epoch (1-based). `on_step` is called after every step; returning false cancels.
    /// Returns the mean training loss.
    pub fn run_epoch(
        &mut self,
        epoch: u32,
        on_step: &mut dyn FnMut(StepInfo) -> bool,
    ) -> Result<f64, TrainError> {
        // This epoch's own generator: the shuffle and every dropout mask come from it.
        let mut rng = run_rng(self.hp.seed, epoch as u64);
        let mut order: Vec<i64> = (0..self.train_targets.len() as i64).collect();
        order.shuffle(&mut rng);
        let mut total_loss = 0.0;
        let mut steps = 0u64;
        let started = Instant::now();
        let mut samples = 0usize;
        for chunk in order.chunks(self.hp.step_rows()) {
            let global_step = (epoch as u64 - 1) * self.steps_per_epoch + steps;
            let scale = self.schedule(global_step);
            let lrs = self.group_rates(scale);
            let targets: Vec<&Vec<Option<bool>>> = chunk
                .iter()
                .map(|&i| &self.train_targets[i as usize])
                .collect();
            // The step's loss is a mean over all its terms: each micro-batch adds its sum
            // divided by the step's count, so gradients add up to the single-batch gradient.
            let labels = self.model.spec.labels.len();
            let (t, m) = target_tensors(&targets, labels, Device::Cpu);
            let count = loss_terms(self.model.spec.task, &t, &m)
                .double_value(&[])
                .max(1.0);
            self.optimizer.zero_grad();
            let loss_scale = self.scaler.as_ref().map(|s| s.scale);
            let mut value = 0.0;
            for micro in self.micro_batches(chunk) {
                let micro_targets: Vec<&Vec<Option<bool>>> = micro
                    .iter()
                    .map(|&i| &self.train_targets[i as usize])
                    .collect();
                let logits = self.forward_rows(micro, &mut rng)?;
                let (sum, _) = self.batch_loss(&logits, &micro_targets);
                let part = sum / count;
                match loss_scale {
                    Some(scale) => (&part * scale).backward(),
                    None => part.backward(),
                }
                value += part.double_value(&[]);
            }
            // fp16: gradients are unscaled before clipping; a step whose gradients overflowed
            // is skipped and the scale halved (the schedule moves on, as with GradScaler).
            let finite = self
                .scaler
                .as_ref()
                .is_none_or(|s| s.unscale(&self.optimizer.grads()));
            if let Some(scaler) = self.scaler.as_mut() {
                scaler.update(finite);
            }
            if finite {
                if self.hp.max_grad_norm > 0.0 {
                    self.optimizer.clip_grad_norm(self.hp.max_grad_norm);
                }
                self.optimizer.step(&lrs);
            }
            if !value.is_finite() {
                return Err(TrainError::Failed(format!(
                    "the loss became {value} at epoch {epoch}, step {steps}; lower the learning rate"
                )));
            }
            total_loss += value;
            steps += 1;
            samples += chunk.len();
            let info = StepInfo {
                global_step: global_step + 1,
                total_steps: self.total_steps(),
                epoch,
                step_in_epoch: steps,
                steps_per_epoch: self.steps_per_epoch,
                loss: value,
                learning_rate: lrs[0],
                samples_per_sec: samples as f64 / started.elapsed().as_secs_f64().max(1e-9),
            };
            if !on_step(info) {
                return Err(TrainError::Cancelled);
            }
        }
        Ok(total_loss / steps.max(1) as f64)
    }

    fn forward_rows(&self, rows: &[i64], rng: &mut ChaCha8Rng) -> Result<Tensor, TrainError> {
        let rows: Vec<usize> = rows.iter().map(|&i| i as usize).collect();
        self.logits_for(&self.train_inputs, &rows, Some(rng))
    }

    /// Logits for some rows of prepared inputs; `rng` turns dropout on.
    fn logits_for(
        &self,
        inputs: &Prepared,
        rows: &[usize],
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor, TrainError> {
        match inputs {
            Prepared::Embeddings(x) => {
                let index: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
                let x = x.index_select(0, &Tensor::from_slice(&index).to_device(self.device));
                Ok(self.logits(ClassifierInput::Embeddings(&x), rng))
            }
            Prepared::Spilled(vectors) => {
                let flat = vectors
                    .gather(rows)
                    .map_err(|e| TrainError::Failed(format!("reading spilled vectors: {e}")))?;
                let x = Tensor::from_slice(&flat)
                    .view([rows.len() as i64, vectors.dims() as i64])
                    .to_device(self.device);
                Ok(self.logits(ClassifierInput::Embeddings(&x), rng))
            }
            Prepared::Tokens(ids) => {
                let batch: Vec<&Vec<i64>> = rows.iter().map(|&i| &ids[i]).collect();
                let (ids, mask, padded) = pad_batch(&batch, self.device);
                let input = ClassifierInput::Tokens {
                    ids: &ids,
                    mask: &mask,
                    padded,
                };
                Ok(self.logits(input, rng))
            }
        }
    }

    /// The model's logits in the run's precision, returned in fp32 (losses and probabilities
    /// are computed in fp32, as under PyTorch's autocast).
    fn logits(&self, input: ClassifierInput<'_>, rng: Option<&mut ChaCha8Rng>) -> Tensor {
        autocast(self.hp.precision, self.device, || {
            self.model.logits(input, rng)
        })
        .to_kind(Kind::Float)
    }

    /// Probabilities for a prepared split, and its masked loss. No gradients, no dropout.
    pub fn evaluate(&self, split: &PreparedSplit<'_>) -> Result<(Vec<Vec<f32>>, f64), TrainError> {
        let n = split.targets.len();
        if n == 0 {
            return Ok((Vec::new(), f64::NAN));
        }
        let labels = self.model.spec.labels.len();
        tch::no_grad(|| {
            let mut scores = vec![Vec::new(); n];
            let mut loss_sum = 0.0;
            let mut loss_weight = 0.0;
            // Texts are sorted by length so that padding stays small.
            let mut order: Vec<usize> = (0..n).collect();
            if let Prepared::Tokens(ids) = &split.inputs {
                order.sort_by_key(|&i| ids[i].len());
            }
            for chunk in order.chunks(64) {
                let logits = self.logits_for(&split.inputs, chunk, None)?;
                let targets: Vec<&Vec<Option<bool>>> =
                    chunk.iter().map(|&i| &split.targets[i]).collect();
                let (sum, weight) = self.batch_loss(&logits, &targets);
                loss_sum += sum.double_value(&[]);
                loss_weight += weight.double_value(&[]);
                let probs = self
                    .model
                    .probabilities(&logits)
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu)
                    .contiguous();
                let flat = Vec::<f32>::try_from(probs.view([-1]))?;
                for (row, &i) in chunk.iter().enumerate() {
                    scores[i] = flat[row * labels..(row + 1) * labels].to_vec();
                }
            }
            Ok((scores, loss_sum / loss_weight.max(1.0)))
        })
    }

    /// Weights and optimizer state: everything needed to continue exactly where this stopped.
    pub fn state_blob(&self) -> Result<Vec<u8>, TrainError> {
        let mut named = self.model.saved_variables();
        named.extend(self.optimizer.state());
        if let Some(scaler) = &self.scaler {
            named.extend(scaler.state());
        }
        Ok(tensors_to_blob(&named)?)
    }

    pub fn restore_state(&mut self, blob: &[u8]) -> Result<(), TrainError> {
        let named = blob_to_tensors(blob, self.device)?;
        let (amp, named): (Vec<_>, Vec<_>) =
            named.into_iter().partition(|(n, _)| n.starts_with("amp."));
        let (optimizer, weights): (Vec<_>, Vec<_>) = named
            .into_iter()
            .partition(|(n, _)| n.starts_with("adamw."));
        self.model.load_weights_blob(&tensors_to_blob(&weights)?)?;
        self.optimizer.restore(&optimizer)?;
        if let Some(scaler) = self.scaler.as_mut() {
            scaler.restore(&amp);
        }
        Ok(())
    }
}

/// The run's generators: stream 0 initialises the head, stream N drives epoch N.
fn run_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn prepare(
    inputs: &SplitInputs,
    spec: &ClassifierSpec,
    base_dir: Option<&Path>,
    device: Device,
) -> Result<Prepared, TrainError> {
    match inputs {
        SplitInputs::Embeddings(vectors) => {
            let dims = vectors.dims();
            if dims as i64 != spec.input_dim {
                return Err(TrainError::Failed(format!(
                    "embeddings have {dims} dimensions, the model expects {}",
                    spec.input_dim
                )));
            }
            Ok(match vectors.in_memory() {
                Some(flat) => Prepared::Embeddings(
                    Tensor::from_slice(flat)
                        .view([vectors.len() as i64, dims as i64])
                        .to_device(device),
                ),
                None => Prepared::Spilled(vectors.clone()),
            })
        }
        SplitInputs::Texts(texts) => {
            let dir = base_dir
                .ok_or_else(|| TrainError::Failed("finetune needs the base model".into()))?;
            let tokenizer = load_tokenizer(dir, spec.max_tokens)
                .map_err(|e| TrainError::Failed(e.to_string()))?;
            let encodings = tokenizer
                .encode_batch(texts.clone(), true)
                .map_err(|e| TrainError::Failed(format!("tokenizer: {e}")))?;
            Ok(Prepared::Tokens(
                encodings
                    .iter()
                    .map(|e| e.get_ids().iter().map(|&i| i as i64).collect())
                    .collect(),
            ))
        }
    }
}

/// Pads token rows to the longest: (ids, mask, any row padded).
fn pad_batch(rows: &[&Vec<i64>], device: Device) -> (Tensor, Tensor, bool) {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![0i64; rows.len() * width];
    let mut mask = vec![0i64; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        for (c, &id) in row.iter().enumerate() {
            ids[r * width + c] = id;
            mask[r * width + c] = 1;
        }
    }
    let padded = rows.iter().any(|r| r.len() != width);
    let shape = [rows.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
        padded,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::classifier::{ClassifierSpec, TrainMode};

    /// Seeded rows of 8 floats; label a = sign of the first, b = sign of the second (masked on
    /// every fifth row).
    fn data(rows: usize, memory_cap: usize) -> SplitData {
        let mut vectors = VectorRows::new(8, memory_cap);
        let mut targets = Vec::new();
        for i in 0..rows {
            let row: Vec<f32> = (0..8)
                .map(|j| (((i * 31 + j * 17) % 23) as f32 - 11.0) / 11.0)
                .collect();
            targets.push(vec![Some(row[0] > 0.0), (i % 5 != 0).then(|| row[1] > 0.0)]);
            vectors.push(&row).unwrap();
        }
        vectors.finish().unwrap();
        SplitData {
            inputs: SplitInputs::Embeddings(Arc::new(vectors)),
            targets,
        }
    }

    fn train(data: &SplitData) -> (Vec<f64>, Vec<Vec<f32>>) {
        let spec = ClassifierSpec {
            mode: TrainMode::Head,
            task: TaskType::MultiLabel,
            labels: vec!["a".into(), "b".into()],
            input_dim: 8,
            hidden_size: 16,
            dropout: 0.1,
            max_tokens: 16,
            pooling: Default::default(),
            base_model: None,
        };
        let mut hp = Hyperparameters::defaults_for(TrainMode::Head);
        hp.batch_size = 16;
        hp.epochs = 3;
        let mut trainer = Trainer::new(spec, hp, data, None, Device::Cpu).unwrap();
        let losses = (1..=3)
            .map(|epoch| trainer.run_epoch(epoch, &mut |_| true).unwrap())
            .collect();
        let (scores, _) = trainer.evaluate(&trainer.prepare(data).unwrap()).unwrap();
        (losses, scores)
    }

    #[test]
    fn a_head_trains_the_same_on_spilled_vectors() {
        let in_memory = data(200, usize::MAX);
        let spilled = data(200, 50 * 8 * 4);
        let SplitInputs::Embeddings(v) = &spilled.inputs else {
            unreachable!()
        };
        assert!(v.spilled(), "200 rows over a 50-row cap are spilled");
        let (a, b) = (train(&in_memory), train(&spilled));
        assert_eq!(a.0, b.0, "the same losses, epoch by epoch");
        assert_eq!(a.1, b.1, "the same probabilities");
        assert!(a.0[2] < a.0[0], "it learns: {:?}", a.0);
    }
}
