//! The BERT encoder in tch, and the forward pass of every BERT-shaped family (`families.rs`:
//! BERT — all-MiniLM-L6-v2, bge-small, … — and RoBERTa/XLM-RoBERTa/CamemBERT), with mean or
//! CLS pooling and optional L2 normalisation.
//!
//! Parameter paths match the safetensors names of Hugging Face `BertModel` checkpoints
//! (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`, ...),
//! which `RobertaModel` shares, so `VarStore::load` fills the model directly (a family's task
//! prefix, `bert.` or `roberta.`, is stripped). Pipeline: token types all 0, positions as the
//! family numbers them, erf GELU, LayerNorm eps from config (1e-12 for BERT, 1e-5 for
//! RoBERTa), then mean over the attention mask (denominator clamped at 1e-9) or the first
//! token's state, then L2 normalisation when the model's pipeline has it.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::families::{strip_task_prefix, Family, Positions};

pub static FAMILY: Family = Family {
    name: "BERT",
    model_types: &["bert"],
    checkpoint_prefix: "bert.",
    positions: Positions::FromZero,
    default_pad_token_id: 0,
};

#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// The family (`families.rs`; absent is taken as bert); one trainyard does not run is
    /// refused rather than run wrongly.
    #[serde(default)]
    pub model_type: Option<String>,
    /// RoBERTa's positions start after it (the family's default when absent).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

/// How token states become one sentence vector (sentence-transformers' `1_Pooling` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over attended tokens (all-MiniLM-L6-v2).
    #[default]
    Mean,
    /// The first (`[CLS]`) token's state (bge-small-en-v1.5).
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// How a sentence vector is made from an encoder's token states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolingSpec {
    pub pooling: Pooling,
    /// L2-normalise the pooled vector.
    pub normalize: bool,
}

impl Default for PoolingSpec {
    fn default() -> Self {
        PoolingSpec {
            pooling: Pooling::Mean,
            normalize: true,
        }
    }
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<BertConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Family::of(config.model_type.as_deref())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_new") {
            anyhow::bail!(
                "{}: hidden_act `{}` is not supported (gelu or gelu_new)",
                path.display(),
                config.hidden_act
            );
        }
        if config.max_input_tokens() < 1 {
            anyhow::bail!(
                "{}: max_position_embeddings {} leaves no room for a token",
                path.display(),
                config.max_position_embeddings
            );
        }
        Ok(config)
    }

    /// The encoder's family (the config was checked when read).
    pub fn family(&self) -> &'static Family {
        Family::of(self.model_type.as_deref()).unwrap_or(&FAMILY)
    }

    /// The padding index positions are counted from (RoBERTa).
    pub fn padding_idx(&self) -> i64 {
        self.pad_token_id
            .unwrap_or(self.family().default_pad_token_id)
    }

    /// The longest input the position embeddings cover (512 for BERT and RoBERTa).
    pub fn max_input_tokens(&self) -> i64 {
        self.max_position_embeddings - self.family().position_offset(self.padding_idx())
    }
}

fn layer_norm(path: nn::Path, size: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        path,
        vec![size],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
    family: &'static Family,
    padding_idx: i64,
}

impl Embeddings {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let cfg = Default::default();
        Embeddings {
            word: nn::embedding(&p / "word_embeddings", c.vocab_size, c.hidden_size, cfg),
            position: nn::embedding(
                &p / "position_embeddings",
                c.max_position_embeddings,
                c.hidden_size,
                cfg,
            ),
            token_type: nn::embedding(
                &p / "token_type_embeddings",
                c.type_vocab_size,
                c.hidden_size,
                cfg,
            ),
            norm: layer_norm(&p / "LayerNorm", c.hidden_size, c.layer_norm_eps),
            family: c.family(),
            padding_idx: c.padding_idx(),
        }
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let positions = self.family.position_ids(attention_mask, self.padding_idx);
        let token_types = input_ids.zeros_like();
        let x = self.word.forward(input_ids)
            + self.position.forward(&positions)
            + self.token_type.forward(&token_types);
        self.norm.forward(&x)
    }
}

/// Query, key and value projections concatenated into one [3·hidden, hidden] weight: one
/// GEMM that packs its input once instead of three. Built from the (frozen) separate weights
/// for inference only; training keeps the separate variables it updates.
struct FusedQkv {
    weight: Tensor,
    bias: Tensor,
}

struct Layer {
    fused_qkv: Option<FusedQkv>,
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
    heads: i64,
    gelu: &'static str,
}

impl Layer {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let h = c.hidden_size;
        let lin = Default::default();
        let att = &p / "attention";
        Layer {
            fused_qkv: None,
            query: nn::linear(&att / "self" / "query", h, h, lin),
            key: nn::linear(&att / "self" / "key", h, h, lin),
            value: nn::linear(&att / "self" / "value", h, h, lin),
            attn_out: nn::linear(&att / "output" / "dense", h, h, lin),
            attn_norm: layer_norm(&att / "output" / "LayerNorm", h, c.layer_norm_eps),
            intermediate: nn::linear(&p / "intermediate" / "dense", h, c.intermediate_size, lin),
            output: nn::linear(&p / "output" / "dense", c.intermediate_size, h, lin),
            out_norm: layer_norm(&p / "output" / "LayerNorm", h, c.layer_norm_eps),
            heads: c.num_attention_heads,
            gelu: if c.hidden_act == "gelu_new" {
                "tanh"
            } else {
                "none"
            },
        }
    }

    fn fuse_qkv(&mut self) {
        let fused = tch::no_grad(|| {
            fn bias(l: &nn::Linear) -> &Tensor {
                l.bs.as_ref().expect("BERT projections have a bias")
            }
            FusedQkv {
                weight: Tensor::cat(&[&self.query.ws, &self.key.ws, &self.value.ws], 0),
                bias: Tensor::cat(&[bias(&self.query), bias(&self.key), bias(&self.value)], 0),
            }
        });
        self.fused_qkv = Some(fused);
    }

    /// `mask_bias`: [batch, 1, 1, seq], 0 where attended and a large negative where padded.
    /// `None` for `mask_bias` when no row is padded: libtorch then picks its fastest kernel.
    fn forward(&self, x: &Tensor, mask_bias: Option<&Tensor>) -> Tensor {
        let (b, s, h) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let d = h / self.heads;
        let (q, k, v) = match &self.fused_qkv {
            Some(f) => {
                // [b, s, 3, heads, d]: q, k and v are strided views of one output.
                let qkv = x
                    .linear(&f.weight, Some(&f.bias))
                    .view([b, s, 3, self.heads, d]);
                let part = |i: i64| qkv.select(2, i).transpose(1, 2);
                (part(0), part(1), part(2))
            }
            None => {
                let split = |t: Tensor| t.view([b, s, self.heads, d]).transpose(1, 2);
                (
                    split(self.query.forward(x)),
                    split(self.key.forward(x)),
                    split(self.value.forward(x)),
                )
            }
        };
        let ctx =
            Tensor::scaled_dot_product_attention(&q, &k, &v, mask_bias, 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).contiguous().view([b, s, h]);
        let x = self.attn_norm.forward(&(self.attn_out.forward(&ctx) + x));
        let mut inner = self.intermediate.forward(&x);
        // In place when no gradient is needed: saves a [tokens, intermediate] buffer per layer.
        let inner = if inner.requires_grad() {
            inner.gelu(self.gelu)
        } else {
            inner.gelu_(self.gelu)
        };
        self.out_norm.forward(&(self.output.forward(&inner) + x))
    }
}

/// The encoder; parameters live in the `VarStore` it was built on.
pub struct BertEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pub config: BertConfig,
}

impl BertEncoder {
    pub fn new(root: &nn::Path, config: BertConfig) -> Self {
        let embeddings = Embeddings::new(root / "embeddings", &config);
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(root / "encoder" / "layer" / i, &config))
            .collect();
        BertEncoder {
            embeddings,
            layers,
            config,
        }
    }

    /// Switches every layer to fused query/key/value weights. Only for a frozen encoder: the
    /// fused copies do not follow later updates of the separate variables.
    pub fn fuse_for_inference(&mut self) {
        for layer in &mut self.layers {
            layer.fuse_qkv();
        }
    }

    /// Token-level hidden states, [batch, seq, hidden]. `attention_mask` is 1/0, [batch, seq].
    /// `padded`: whether any row has padding; when none has, attention runs unmasked.
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        padded: bool,
    ) -> Tensor {
        let mut x = self.embeddings.forward(input_ids, attention_mask);
        let dtype = x.kind();
        let mask_bias = padded.then(|| {
            ((attention_mask.to_kind(dtype).ones_like() - attention_mask.to_kind(dtype)) * -1e4)
                .view([attention_mask.size()[0], 1, 1, attention_mask.size()[1]])
        });
        for layer in &self.layers {
            x = layer.forward(&x, mask_bias.as_ref());
        }
        x
    }

    /// Sentence embeddings, pooled as `pooling` says. [batch, hidden], f32.
    pub fn sentence_embeddings(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        padded: bool,
        pooling: PoolingSpec,
    ) -> Tensor {
        let hidden = self
            .hidden_states(input_ids, attention_mask, padded)
            .to_kind(Kind::Float);
        pool(&hidden, attention_mask, pooling)
    }
}

/// One vector per row of `hidden` ([batch, seq, hidden]): mean or CLS, then L2 if asked.
pub fn pool(hidden: &Tensor, attention_mask: &Tensor, spec: PoolingSpec) -> Tensor {
    let pooled = match spec.pooling {
        Pooling::Mean => {
            let mask = attention_mask.to_kind(Kind::Float).unsqueeze(-1);
            let summed = (hidden * &mask).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
            let counts = mask
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
                .clamp_min(1e-9);
            summed / counts
        }
        Pooling::Cls => hidden.select(1, 0),
    };
    if spec.normalize {
        let norm = pooled
            .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
            .clamp_min(1e-12);
        pooled / norm
    } else {
        pooled
    }
}

/// Mean pooling over the mask (denominator clamped at 1e-9) followed by L2 normalisation.
pub fn mean_pool_normalize(hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
    pool(hidden, attention_mask, PoolingSpec::default())
}

/// Builds the encoder on `device`, loads its checkpoint from `dir`, freezes it and fuses its
/// attention projections for inference.
pub fn load_encoder(dir: &Path, device: Device) -> anyhow::Result<(nn::VarStore, BertEncoder)> {
    let config = BertConfig::from_file(&dir.join("config.json"))?;
    let mut vs = nn::VarStore::new(device);
    let mut encoder = BertEncoder::new(&vs.root(), config);
    let missing = load_checkpoint_into(&mut vs, dir, "")?;
    if let Some(name) = missing.first() {
        anyhow::bail!("{} lacks `{name}`", dir.display());
    }
    vs.freeze();
    encoder.fuse_for_inference();
    Ok((vs, encoder))
}

/// What a sentence-transformers folder says about pooling: `1_Pooling/config.json`'s mode
/// (mean or CLS; `None` without that file) and whether `modules.json` lists a `Normalize`
/// module (`None` without `modules.json`). A pipeline trainyard would run differently (another
/// pooling mode, a `Dense` or other module) is an error, not a silent mean.
pub fn folder_pooling(dir: &Path) -> Result<(Option<Pooling>, Option<bool>), String> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    let modules = read("modules.json");
    let pooling_dir = modules
        .as_ref()
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .find(|m| m["type"].as_str().is_some_and(|t| t.ends_with(".Pooling")))
        .and_then(|m| m["path"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1_Pooling".into());
    if let Some(other) = modules
        .as_ref()
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["type"].as_str())
        .find(|t| {
            ![".Transformer", ".Pooling", ".Normalize"]
                .iter()
                .any(|k| t.ends_with(k))
        })
    {
        return Err(format!(
            "{}/modules.json has a `{other}` module, which trainyard does not run",
            dir.display()
        ));
    }
    let pooling = match read(&format!("{pooling_dir}/config.json")) {
        None => None,
        Some(c) => {
            let on: Vec<&str> = c
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, v)| {
                            k.starts_with("pooling_mode_") && v.as_bool() == Some(true)
                        })
                        .map(|(k, _)| k.as_str())
                        .collect()
                })
                .unwrap_or_default();
            match on.as_slice() {
                ["pooling_mode_cls_token"] => Some(Pooling::Cls),
                ["pooling_mode_mean_tokens"] => Some(Pooling::Mean),
                _ => {
                    return Err(format!(
                        "{}/{pooling_dir}/config.json asks for {on:?}; trainyard pools by mean or CLS only \
                         (set `pooling` and `normalize` on the model to override)",
                        dir.display()
                    ))
                }
            }
        }
    };
    let normalize = modules.map(|m| {
        m.as_array().is_some_and(|a| {
            a.iter().any(|m| {
                m["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(".Normalize"))
            })
        })
    });
    Ok((pooling, normalize))
}

/// The weights file of a checkpoint folder: `model.safetensors` (a folder with only a pickled
/// `pytorch_model.bin` must be converted first; libtorch's C++ loader cannot read pickles).
pub fn checkpoint_file(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("model.safetensors");
    if path.is_file() {
        return Ok(path);
    }
    if dir.join("pytorch_model.bin").is_file() {
        anyhow::bail!(
            "{} has only pytorch_model.bin: save it as model.safetensors (Python: \
             transformers' `AutoModel.from_pretrained(dir).save_pretrained(dir)`)",
            dir.display()
        )
    }
    anyhow::bail!("{} has no model.safetensors", dir.display())
}

/// The checkpoint's tensors by name, with a family's task prefix (`bert.` from `BertFor*`,
/// `roberta.` from `RobertaFor*` checkpoints) stripped so that names match `BertModel`'s.
pub fn read_checkpoint(dir: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    let path = checkpoint_file(dir)?;
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| (strip_task_prefix(&name).to_string(), t))
        .collect())
}

/// Copies a checkpoint folder's encoder weights into the variables of `vs` (names under
/// `prefix`); returns the encoder variables the checkpoint lacked. Variables outside the
/// encoder (`classifier.*`) are left alone; a shape mismatch is an error.
pub fn load_checkpoint_into(
    vs: &mut nn::VarStore,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let loaded: std::collections::HashMap<String, Tensor> =
        read_checkpoint(dir)?.into_iter().collect();
    let mut missing = Vec::new();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if name.starts_with("classifier.") {
                continue;
            }
            let key = name.strip_prefix(prefix).unwrap_or(&name);
            match loaded.get(key) {
                Some(t) if t.size() == var.size() => {
                    var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
                }
                Some(t) => anyhow::bail!(
                    "{}: `{key}` has shape {:?}, the config says {:?}",
                    dir.display(),
                    t.size(),
                    var.size()
                ),
                None => missing.push(name.clone()),
            }
        }
        Ok(())
    })?;
    missing.sort();
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_normalises() {
        // Two tokens [3,4] and [0,0] with the second padded: mean is [3,4], normalised [0.6,0.8].
        let hidden = Tensor::from_slice(&[3.0f32, 4.0, 100.0, 100.0]).view([1, 2, 2]);
        let mask = Tensor::from_slice(&[1i64, 0]).view([1, 2]);
        let out = mean_pool_normalize(&hidden, &mask);
        let v: Vec<f32> = Vec::<f32>::try_from(out.view([-1])).unwrap();
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
    }
}
