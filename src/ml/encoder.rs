//! The encoder every family implements (`Encoder`), the family-neutral facts of a model
//! folder (`EncoderConfig`: family, width, depth, longest input), how token states become a
//! sentence vector (`pool`, and what a sentence-transformers folder asks for), and reading a
//! checkpoint's tensors into a model whatever its family's task prefix.
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::families::{strip_task_prefix, Family};

/// One family's forward pass. Parameters live in the `VarStore` it was built on, under the
/// names of the family's `*Model` checkpoints (without a task prefix).
pub trait Encoder: Send {
    /// Token-level hidden states, [batch, seq, hidden]. `attention_mask` is 1/0, [batch, seq],
    /// right-padded. `padded`: whether any row has padding (when none has, attention may run
    /// unmasked).
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, padded: bool) -> Tensor;

    /// For a frozen encoder: precomputes what inference can share (fused projections). The
    /// result must not be trained afterwards.
    fn fuse_for_inference(&mut self) {}

    /// Sentence embeddings, pooled as `pooling` says. [batch, hidden], f32.
    fn sentence_embeddings(
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

/// What every family's `config.json` says, in trainyard's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub hidden_size: i64,
    pub num_layers: i64,
    /// The longest input the model takes (position embeddings, or the family's own limit).
    pub max_input_tokens: i64,
}

/// A model folder's `config.json`: its family (checked when read) and shape, and the JSON the
/// family builds its encoder from.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub family: &'static Family,
    pub shape: Shape,
    pub json: Value,
}

impl EncoderConfig {
    pub fn from_file(path: &Path) -> anyhow::Result<EncoderConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::from_json(json).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))
    }

    pub fn from_json(json: Value) -> anyhow::Result<EncoderConfig> {
        let family = Family::of(json.get("model_type").and_then(Value::as_str))
            .map_err(anyhow::Error::msg)?;
        let shape = (family.read)(&json)?;
        if shape.max_input_tokens < 1 {
            anyhow::bail!("the position embeddings leave no room for a token");
        }
        Ok(EncoderConfig {
            family,
            shape,
            json,
        })
    }

    /// The encoder, its parameters created under `root` (not loaded).
    pub fn build(&self, root: &nn::Path) -> anyhow::Result<Box<dyn Encoder>> {
        (self.family.build)(root, &self.json)
    }

    /// How deep a parameter sits, for layer-wise learning-rate decay: 0 for the embeddings
    /// (and what every layer shares), N + 1 for layer N, `num_layers` + 1 for what sits above
    /// the last layer. `None` for names outside the encoder (the head).
    pub fn depth(&self, name: &str) -> Option<i64> {
        if name.starts_with("classifier.") {
            return None;
        }
        if let Some(rest) = name.strip_prefix(self.family.layer_prefix) {
            let n: i64 = rest.split('.').next()?.parse().ok()?;
            return Some(n + 1);
        }
        if self.family.top_params.iter().any(|p| name.starts_with(p)) {
            return Some(self.shape.num_layers + 1);
        }
        Some(0)
    }
}

/// A JSON config field that must be there.
pub fn field<T: serde::de::DeserializeOwned>(json: &Value, name: &str) -> anyhow::Result<T> {
    let value = json
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("config.json lacks `{name}`"))?;
    serde_json::from_value(value.clone()).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))
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

/// Builds a folder's encoder on `device`, loads its checkpoint, freezes it and fuses it for
/// inference.
pub fn load_encoder(
    dir: &Path,
    device: Device,
) -> anyhow::Result<(nn::VarStore, Box<dyn Encoder>, EncoderConfig)> {
    let config = EncoderConfig::from_file(&dir.join("config.json"))?;
    let mut vs = nn::VarStore::new(device);
    let mut encoder = config.build(&vs.root())?;
    let missing = load_checkpoint_into(&mut vs, dir, "")?;
    if let Some(name) = missing.first() {
        anyhow::bail!("{} lacks `{name}`", dir.display());
    }
    vs.freeze();
    encoder.fuse_for_inference();
    Ok((vs, encoder, config))
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
