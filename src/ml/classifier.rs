//! The classifier: an MLP head on sentence embeddings, optionally behind a trainable encoder of
//! any family (`finetune`), its losses and weight blobs (AdamW is in `adamw.rs`).
//!
//! Variable names: the encoder sits at the root with the checkpoint's own names
//! (`embeddings.*`, `encoder.layer.N.*`), the head under `classifier.*`. A `head` model's blob
//! holds only `classifier.*`; a `finetune` model's blob holds everything.
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

use super::encoder::{load_checkpoint_into, pool, Encoder, EncoderConfig, PoolingSpec};
use crate::datasets::TaskType;

/// How a model is built: which mode, which task, what shape. Stored with every model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    /// `head` (MLP on stored embeddings) or `finetune` (encoder + head, end to end).
    pub mode: TrainMode,
    pub task: TaskType,
    pub labels: Vec<String>,
    /// Embedding size the head reads (384 for MiniLM).
    pub input_dim: i64,
    /// Hidden width of the head; 0 = a single linear layer.
    pub hidden_size: i64,
    pub dropout: f64,
    /// Tokens per text (finetune; head models use the embedding model's own limit).
    pub max_tokens: usize,
    /// How the encoder's token states become the head's input (the embedding model's
    /// pooling; versions stored before this field existed used mean + L2).
    #[serde(default)]
    pub pooling: PoolingSpec,
    /// Finetune: the local embedding model (key of embedding_models.toml) the encoder started
    /// from, whose folder serves it. `None` for heads and for versions trained before base
    /// models could be chosen (those started from `local_model.dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainMode {
    Head,
    Finetune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Binary cross-entropy (softmax cross-entropy for multi-class), optional pos_weight.
    Bce,
    /// Focal loss: cross-entropy scaled by (1 - p_t)^gamma.
    Focal,
    /// Asymmetric loss (multi-label / binary only): focusing gamma_neg on negatives,
    /// gamma_pos on positives, negatives' probabilities shifted down by `clip`.
    Asymmetric,
}

/// Loss settings, resolved from the hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossSpec {
    pub kind: LossKind,
    pub focal_gamma: f64,
    pub gamma_neg: f64,
    pub gamma_pos: f64,
    pub clip: f64,
}

struct MlpHead {
    hidden: Option<nn::Linear>,
    out: nn::Linear,
    dropout: f64,
}

impl MlpHead {
    fn new(p: nn::Path, spec: &ClassifierSpec) -> MlpHead {
        let outputs = spec.labels.len() as i64;
        let (hidden, out_in) = if spec.hidden_size > 0 {
            let layer = nn::linear(
                &p / "hidden",
                spec.input_dim,
                spec.hidden_size,
                Default::default(),
            );
            (Some(layer), spec.hidden_size)
        } else {
            (None, spec.input_dim)
        };
        MlpHead {
            hidden,
            out: nn::linear(&p / "out", out_in, outputs, Default::default()),
            dropout: spec.dropout,
        }
    }

    /// `rng`: Some while training (dropout on), None for inference.
    fn forward_t(&self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Tensor {
        let x = dropout(x, self.dropout, rng.as_deref_mut());
        match &self.hidden {
            Some(hidden) => {
                let h = dropout(&hidden.forward(&x).relu(), self.dropout, rng);
                self.out.forward(&h)
            }
            None => self.out.forward(&x),
        }
    }
}

/// Inverted dropout with a mask drawn from `rng` (not libtorch's process-wide generator, which
/// two runs in one process would share), so a seeded run is reproducible whatever runs beside it.
fn dropout(x: &Tensor, p: f64, rng: Option<&mut ChaCha8Rng>) -> Tensor {
    match rng {
        Some(rng) if p > 0.0 => {
            let keep = 1.0 - p;
            let scale = (1.0 / keep) as f32;
            let mask: Vec<f32> = (0..x.numel())
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            x * Tensor::from_slice(&mask)
                .view(x.size().as_slice())
                .to_device(x.device())
        }
        _ => x.shallow_clone(),
    }
}

/// A classifier on one device; lives on one thread (tensors are not `Sync`).
pub struct Classifier {
    pub vs: nn::VarStore,
    encoder: Option<Box<dyn Encoder>>,
    /// The encoder's config (family, depth), when the model has one.
    pub encoder_config: Option<EncoderConfig>,
    head: MlpHead,
    pub spec: ClassifierSpec,
}

/// The input of one forward pass.
pub enum ClassifierInput<'a> {
    /// Sentence embeddings, [batch, input_dim].
    Embeddings(&'a Tensor),
    /// Token ids and attention mask, [batch, seq]; `padded` when any row is padded.
    Tokens {
        ids: &'a Tensor,
        mask: &'a Tensor,
        padded: bool,
    },
}

impl Classifier {
    /// For serving a frozen model: fuses the encoder's attention projections (if it has one).
    pub fn fuse_for_inference(&mut self) {
        if let Some(encoder) = self.encoder.as_mut() {
            encoder.fuse_for_inference();
        }
    }

    /// A fresh model. With `base_dir` (required for finetune, optional for head) the encoder is
    /// built from the folder's `config.json` and its weights loaded from its checkpoint.
    pub fn new(
        spec: ClassifierSpec,
        device: Device,
        base_dir: Option<&Path>,
    ) -> anyhow::Result<Classifier> {
        let mut vs = nn::VarStore::new(device);
        let encoder_config = match base_dir {
            Some(dir) => Some(EncoderConfig::from_file(&dir.join("config.json"))?),
            None => None,
        };
        let encoder = match &encoder_config {
            Some(config) => Some(config.build(&vs.root())?),
            None => None,
        };
        if spec.mode == TrainMode::Finetune && encoder.is_none() {
            anyhow::bail!("a finetune model needs the base model's directory");
        }
        let head = MlpHead::new(vs.root() / "classifier", &spec);
        if let Some(dir) = base_dir {
            let missing = load_checkpoint_into(&mut vs, dir, "")?;
            if let Some(name) = missing.first() {
                anyhow::bail!("the checkpoint in {} lacks `{name}`", dir.display());
            }
        }
        if spec.mode == TrainMode::Head {
            // Only the head trains; the encoder (if any, for inference) stays fixed.
            for (name, var) in vs.variables() {
                if !name.starts_with("classifier.") {
                    let _ = var.set_requires_grad(false);
                }
            }
        }
        Ok(Classifier {
            vs,
            encoder,
            encoder_config,
            head,
            spec,
        })
    }

    /// Draws the head's initial weights from `rng`: uniform in ±1/sqrt(fan_in), libtorch's
    /// default range for linear layers, but from a generator this run owns.
    pub fn init_head(&mut self, rng: &mut ChaCha8Rng) {
        let vars = self.vs.variables();
        let mut names: Vec<&String> = vars
            .keys()
            .filter(|n| n.starts_with("classifier."))
            .collect();
        names.sort();
        tch::no_grad(|| {
            for name in names {
                let weight_name = name.replace(".bias", ".weight");
                let fan_in = vars[&weight_name].size()[1] as f64;
                let bound = (1.0 / fan_in.sqrt()) as f32;
                let mut var = vars[name].shallow_clone();
                let values: Vec<f32> = (0..var.numel())
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                var.copy_(&Tensor::from_slice(&values).view(var.size().as_slice()));
            }
        });
    }

    /// Raw scores, [batch, labels]. `rng`: Some while training (dropout), None otherwise.
    pub fn logits(&self, input: ClassifierInput<'_>, rng: Option<&mut ChaCha8Rng>) -> Tensor {
        let pooled = match input {
            ClassifierInput::Embeddings(x) => x.shallow_clone(),
            ClassifierInput::Tokens { ids, mask, padded } => {
                let encoder = self
                    .encoder
                    .as_ref()
                    .expect("token input needs the encoder");
                let hidden = encoder
                    .hidden_states(ids, mask, padded)
                    .to_kind(Kind::Float);
                pool(&hidden, mask, self.spec.pooling)
            }
        };
        self.head.forward_t(&pooled, rng)
    }

    /// Probabilities: softmax over labels for multi-class, independent sigmoids otherwise.
    pub fn probabilities(&self, logits: &Tensor) -> Tensor {
        match self.spec.task {
            TaskType::MultiClass => logits.softmax(-1, Kind::Float),
            _ => logits.sigmoid(),
        }
    }

    /// Named variables this model saves: the head alone for `head`, everything for `finetune`.
    pub fn saved_variables(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(name, _)| {
                self.spec.mode == TrainMode::Finetune || name.starts_with("classifier.")
            })
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The weights as one blob (libtorch's named-tensor format).
    pub fn weights_blob(&self) -> anyhow::Result<Vec<u8>> {
        tensors_to_blob(&self.saved_variables())
    }

    /// Copies a blob's tensors into this model; every saved variable must be present.
    pub fn load_weights_blob(&mut self, blob: &[u8]) -> anyhow::Result<()> {
        let loaded = blob_to_tensors(blob, self.vs.device())?;
        let mut vars = self.vs.variables();
        copy_into(&mut vars, &loaded, "")?;
        for (name, _) in self.saved_variables() {
            if !loaded.iter().any(|(n, _)| *n == name) {
                anyhow::bail!("model weights lack `{name}`");
            }
        }
        Ok(())
    }

    /// Parameters that train, by name (sorted, so optimizer state lines up across processes).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

/// Copies `loaded` tensors (names with `prefix` stripped) into `vars` of the same name.
fn copy_into(
    vars: &mut HashMap<String, Tensor>,
    loaded: &[(String, Tensor)],
    prefix: &str,
) -> anyhow::Result<()> {
    tch::no_grad(|| {
        for (name, tensor) in loaded {
            let Some(name) = name.strip_prefix(prefix) else {
                continue;
            };
            if let Some(var) = vars.get_mut(name) {
                if var.size() != tensor.size() {
                    anyhow::bail!(
                        "`{name}` has shape {:?}, expected {:?}",
                        tensor.size(),
                        var.size()
                    );
                }
                var.copy_(tensor);
            }
        }
        Ok(())
    })
}

pub fn tensors_to_blob(named: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let cpu: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu)))
        .collect();
    Tensor::save_multi_to_stream(&cpu, &mut bytes)?;
    Ok(bytes)
}

pub fn blob_to_tensors(blob: &[u8], device: Device) -> anyhow::Result<Vec<(String, Tensor)>> {
    Ok(Tensor::load_multi_from_stream_with_device(
        Cursor::new(blob),
        device,
    )?)
}

/// Targets and mask for a batch: [rows, labels] floats, 1/0 and 1 where annotated.
pub fn target_tensors(
    rows: &[&Vec<Option<bool>>],
    labels: usize,
    device: Device,
) -> (Tensor, Tensor) {
    let mut targets = Vec::with_capacity(rows.len() * labels);
    let mut mask = Vec::with_capacity(rows.len() * labels);
    for row in rows {
        for value in row.iter().take(labels) {
            targets.push(if *value == Some(true) { 1f32 } else { 0f32 });
            mask.push(if value.is_some() { 1f32 } else { 0f32 });
        }
    }
    let shape = [rows.len() as i64, labels as i64];
    (
        Tensor::from_slice(&targets).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// The masked loss of one batch: labels a record's source did not annotate contribute nothing;
/// the mean is over annotated cells (multi-class: over rows with exactly one positive).
pub fn masked_loss(
    task: TaskType,
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    loss: &LossSpec,
    pos_weight: Option<&Tensor>,
) -> Tensor {
    let (sum, terms) = masked_loss_sum(task, logits, targets, mask, loss, pos_weight);
    sum / terms.clamp_min(1.0)
}

/// Multi-class: rows with exactly one positive among their annotated labels, 1/0 per row.
fn counted_rows(targets: &Tensor, mask: &Tensor) -> Tensor {
    let positives = (targets * mask).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    positives.eq(1.0).to_kind(Kind::Float)
}

/// How many terms the masked loss of these targets averages over: annotated cells
/// (multi-class: rows with exactly one positive). A scalar on the targets' device: reading it
/// is the caller's choice (a sync on CUDA).
pub fn loss_terms(task: TaskType, targets: &Tensor, mask: &Tensor) -> Tensor {
    match task {
        TaskType::MultiClass => counted_rows(targets, mask).sum(Kind::Float),
        _ => mask.sum(Kind::Float),
    }
}

/// The masked loss summed over its terms, and how many terms (`loss_terms`): a step made of
/// several micro-batches divides each sum by the step's count.
pub fn masked_loss_sum(
    task: TaskType,
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    loss: &LossSpec,
    pos_weight: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let terms = loss_terms(task, targets, mask);
    let sum = match task {
        TaskType::MultiClass => {
            let row_mask = counted_rows(targets, mask);
            let class = (targets * mask).argmax(1, false);
            let log_p = logits.log_softmax(-1, Kind::Float);
            let nll = -log_p.gather(1, &class.unsqueeze(1), false).squeeze_dim(1);
            let per_row = match loss.kind {
                LossKind::Focal => {
                    let p_t: Tensor = (-&nll).exp();
                    let weight: Tensor = (-p_t + 1.0).pow_tensor_scalar(loss.focal_gamma);
                    weight * &nll
                }
                _ => nll,
            };
            (per_row * &row_mask).sum(Kind::Float)
        }
        _ => {
            let per_cell = match loss.kind {
                LossKind::Bce => logits.binary_cross_entropy_with_logits::<&Tensor>(
                    targets,
                    None,
                    pos_weight,
                    Reduction::None,
                ),
                LossKind::Focal => {
                    let ce = logits.binary_cross_entropy_with_logits::<&Tensor>(
                        targets,
                        None,
                        None,
                        Reduction::None,
                    );
                    let p = logits.sigmoid();
                    let p_t: Tensor = &p * targets + (1.0 - &p) * (1.0 - targets);
                    let weight: Tensor = (-p_t + 1.0).pow_tensor_scalar(loss.focal_gamma);
                    weight * ce
                }
                LossKind::Asymmetric => {
                    let p = logits.sigmoid();
                    let p_neg = (&p - loss.clip).clamp_min(0.0);
                    let eps = 1e-8;
                    let one_minus_p: Tensor = -&p + 1.0;
                    let one_minus_p_neg: Tensor = -&p_neg + 1.0;
                    let pos_term: Tensor = targets
                        * one_minus_p.pow_tensor_scalar(loss.gamma_pos)
                        * p.clamp_min(eps).log();
                    let neg_term: Tensor = (-targets + 1.0)
                        * p_neg.pow_tensor_scalar(loss.gamma_neg)
                        * one_minus_p_neg.clamp_min(eps).log();
                    -(pos_term + neg_term)
                }
            };
            (per_cell * mask).sum(Kind::Float)
        }
    };
    (sum, terms)
}

#[cfg(test)]
mod tests;
