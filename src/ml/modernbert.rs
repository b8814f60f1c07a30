//! ModernBERT (answerdotai/ModernBERT-base and -large, 8,192 tokens): pre-norm layers without
//! biases (by default), rotary position embeddings with one base for global layers (160,000)
//! and another for local ones (10,000), global attention every `global_attn_every_n_layers`
//! layers (the first included) and a sliding window elsewhere (a token sees the tokens at most
//! `local_attention / 2` away), a GeGLU feed-forward (`Wi` → value, gate; `act(value) · gate` →
//! `Wo`), no attention norm before the first layer, and a final norm. Names as
//! `ModernBertModel` saves them (`embeddings.tok_embeddings`, `layers.N.attn.Wqkv`,
//! `layers.N.mlp.Wi`, `final_norm`); task checkpoints prefix them with `model.`.
//!
//! Configs in both shapes `transformers` writes are read: `layer_types` + `rope_parameters`, or
//! `global_attn_every_n_layers` + `global_rope_theta` / `local_rope_theta`. Any other rope
//! type (scaled rotary) is refused.
use serde::Deserialize;
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::bert::Activation;
use super::encoder::{Encoder, Shape};
use super::families::Family;

pub static FAMILY: Family = Family {
    name: "ModernBERT",
    model_types: &["modernbert"],
    checkpoint_prefix: "model.",
    layer_prefix: "layers.",
    top_params: &["final_norm."],
    read,
    build,
};

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "d_vocab")]
    vocab_size: i64,
    #[serde(default = "d_hidden")]
    hidden_size: i64,
    #[serde(default = "d_intermediate")]
    intermediate_size: i64,
    #[serde(default = "d_layers")]
    num_hidden_layers: i64,
    #[serde(default = "d_heads")]
    num_attention_heads: i64,
    #[serde(default = "d_act")]
    hidden_activation: String,
    #[serde(default = "d_positions")]
    max_position_embeddings: i64,
    #[serde(default = "d_eps")]
    norm_eps: f64,
    #[serde(default)]
    norm_bias: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "d_local")]
    local_attention: i64,
    #[serde(default = "d_every")]
    global_attn_every_n_layers: i64,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    global_rope_theta: Option<f64>,
    #[serde(default)]
    local_rope_theta: Option<f64>,
}

fn d_vocab() -> i64 {
    50368
}
fn d_hidden() -> i64 {
    768
}
fn d_intermediate() -> i64 {
    1152
}
fn d_layers() -> i64 {
    22
}
fn d_heads() -> i64 {
    12
}
fn d_act() -> String {
    "gelu".into()
}
fn d_positions() -> i64 {
    8192
}
fn d_eps() -> f64 {
    1e-5
}
fn d_local() -> i64 {
    128
}
fn d_every() -> i64 {
    3
}

/// What the encoder is built from, checked.
struct ModernBertConfig {
    raw: RawConfig,
    act: Activation,
    /// Per layer: `true` for global attention.
    global: Vec<bool>,
    global_theta: f64,
    local_theta: f64,
}

fn parse(json: &Value) -> anyhow::Result<ModernBertConfig> {
    let raw: RawConfig = serde_json::from_value(json.clone())?;
    let act = Activation::named(&raw.hidden_activation)?;
    if raw.hidden_size % raw.num_attention_heads != 0 {
        anyhow::bail!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            raw.hidden_size,
            raw.num_attention_heads
        );
    }
    let global: Vec<bool> = match &raw.layer_types {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                "full_attention" => Ok(true),
                "sliding_attention" => Ok(false),
                other => Err(anyhow::anyhow!("layer type `{other}` is not supported")),
            })
            .collect::<anyhow::Result<_>>()?,
        None => (0..raw.num_hidden_layers)
            .map(|i| i % raw.global_attn_every_n_layers.max(1) == 0)
            .collect(),
    };
    if global.len() as i64 != raw.num_hidden_layers {
        anyhow::bail!(
            "layer_types lists {} layers, num_hidden_layers is {}",
            global.len(),
            raw.num_hidden_layers
        );
    }
    let theta = |kind: &str, legacy: Option<f64>, default: f64| -> anyhow::Result<f64> {
        match raw.rope_parameters.as_ref().and_then(|p| p.get(kind)) {
            Some(p) => {
                let rope_type = p
                    .get("rope_type")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if rope_type != "default" {
                    anyhow::bail!("rope_type `{rope_type}` is not supported (default rotary only)");
                }
                Ok(p.get("rope_theta")
                    .and_then(Value::as_f64)
                    .or(legacy)
                    .unwrap_or(default))
            }
            None => Ok(legacy.unwrap_or(default)),
        }
    };
    if json.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        anyhow::bail!("rope_scaling is not supported (default rotary only)");
    }
    let global_theta = theta("full_attention", raw.global_rope_theta, 160_000.0)?;
    let local_theta = theta("sliding_attention", raw.local_rope_theta, 10_000.0)?;
    Ok(ModernBertConfig {
        raw,
        act,
        global,
        global_theta,
        local_theta,
    })
}

fn read(json: &Value) -> anyhow::Result<Shape> {
    let c = parse(json)?;
    Ok(Shape {
        hidden_size: c.raw.hidden_size,
        num_layers: c.raw.num_hidden_layers,
        max_input_tokens: c.raw.max_position_embeddings,
    })
}

/// LayerNorm with a weight and, when the config says, a bias.
struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl Norm {
    fn new(p: nn::Path, c: &RawConfig) -> Norm {
        let h = c.hidden_size;
        Norm {
            weight: p.var("weight", &[h], nn::Init::Const(1.0)),
            bias: c
                .norm_bias
                .then(|| p.var("bias", &[h], nn::Init::Const(0.0))),
            eps: c.norm_eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.weight.size()[0];
        x.layer_norm([h], Some(&self.weight), self.bias.as_ref(), self.eps, true)
    }
}

fn linear(p: nn::Path, inputs: i64, outputs: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        inputs,
        outputs,
        nn::LinearConfig {
            bias,
            ..Default::default()
        },
    )
}

struct Layer {
    attn_norm: Option<Norm>,
    wqkv: nn::Linear,
    attn_out: nn::Linear,
    mlp_norm: Norm,
    wi: nn::Linear,
    mlp_out: nn::Linear,
    heads: i64,
    global: bool,
    act: Activation,
}

impl Layer {
    fn new(p: nn::Path, c: &ModernBertConfig, index: usize) -> Layer {
        let r = &c.raw;
        let h = r.hidden_size;
        Layer {
            attn_norm: (index > 0).then(|| Norm::new(&p / "attn_norm", r)),
            wqkv: linear(&p / "attn" / "Wqkv", h, 3 * h, r.attention_bias),
            attn_out: linear(&p / "attn" / "Wo", h, h, r.attention_bias),
            mlp_norm: Norm::new(&p / "mlp_norm", r),
            wi: linear(&p / "mlp" / "Wi", h, 2 * r.intermediate_size, r.mlp_bias),
            mlp_out: linear(&p / "mlp" / "Wo", r.intermediate_size, h, r.mlp_bias),
            heads: r.num_attention_heads,
            global: c.global[index],
            act: c.act,
        }
    }

    /// `rotary`: (cos, sin) for this layer's base, [seq, head_dim]; `bias`: the attention bias
    /// for this layer's kind, broadcast to [batch, heads, seq, seq].
    fn forward(&self, x: &Tensor, rotary: &(Tensor, Tensor), bias: Option<&Tensor>) -> Tensor {
        let (b, s, h) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let d = h / self.heads;
        let normed = match &self.attn_norm {
            Some(norm) => norm.forward(x),
            None => x.shallow_clone(),
        };
        let qkv = self.wqkv.forward(&normed).view([b, s, 3, self.heads, d]);
        let part = |i: i64| qkv.select(2, i).transpose(1, 2);
        let (q, k, v) = (part(0), part(1), part(2));
        let (q, k) = (rotate(&q, rotary), rotate(&k, rotary));
        let ctx = Tensor::scaled_dot_product_attention(&q, &k, &v, bias, 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).contiguous().view([b, s, h]);
        let x = x + self.attn_out.forward(&ctx);
        let inner = self.wi.forward(&self.mlp_norm.forward(&x));
        let halves = inner.chunk(2, -1);
        let gated = self.act.apply(halves[0].shallow_clone()) * &halves[1];
        x + self.mlp_out.forward(&gated)
    }
}

/// `x · cos + rotate_half(x) · sin` in float32, as `apply_rotary_pos_emb` computes it.
fn rotate(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Tensor {
    let kind = x.kind();
    let x = x.to_kind(Kind::Float);
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[-x2, x1], 3);
    (&x * cos + rotated * sin).to_kind(kind)
}

struct ModernBertEncoder {
    tok_embeddings: nn::Embedding,
    embed_norm: Norm,
    layers: Vec<Layer>,
    final_norm: Norm,
    head_dim: i64,
    global_theta: f64,
    local_theta: f64,
    /// A local layer's token sees those at most this far away.
    window: i64,
}

fn build(root: &nn::Path, json: &Value) -> anyhow::Result<Box<dyn Encoder>> {
    let c = parse(json)?;
    let r = &c.raw;
    Ok(Box::new(ModernBertEncoder {
        tok_embeddings: nn::embedding(
            root / "embeddings" / "tok_embeddings",
            r.vocab_size,
            r.hidden_size,
            Default::default(),
        ),
        embed_norm: Norm::new(root / "embeddings" / "norm", r),
        layers: (0..r.num_hidden_layers as usize)
            .map(|i| Layer::new(root / "layers" / i, &c, i))
            .collect(),
        final_norm: Norm::new(root / "final_norm", r),
        head_dim: r.hidden_size / r.num_attention_heads,
        global_theta: c.global_theta,
        local_theta: c.local_theta,
        window: r.local_attention / 2,
    }))
}

impl ModernBertEncoder {
    /// (cos, sin), [seq, head_dim] float32, for positions 0..seq and this base.
    fn rotary(&self, seq: i64, base: f64, device: tch::Device) -> (Tensor, Tensor) {
        let d = self.head_dim;
        let inv_freq: Vec<f32> = (0..d)
            .step_by(2)
            .map(|i| (1.0 / base.powf(i as f64 / d as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_slice(&inv_freq).to_device(device);
        let positions = Tensor::arange(seq, (Kind::Float, device));
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], 1);
        (emb.cos(), emb.sin())
    }
}

impl Encoder for ModernBertEncoder {
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, padded: bool) -> Tensor {
        let mut x = self
            .embed_norm
            .forward(&self.tok_embeddings.forward(input_ids));
        let (batch, seq) = (input_ids.size()[0], input_ids.size()[1]);
        let device = x.device();
        let kind = x.kind();
        let global_rotary = self.rotary(seq, self.global_theta, device);
        let local_rotary = self.rotary(seq, self.local_theta, device);
        let padding = padded.then(|| super::bert::padding_bias(attention_mask, kind));
        // Local layers: keys further than the window are masked as padding is.
        let local_bias = (seq > self.window + 1).then(|| {
            let p = Tensor::arange(seq, (Kind::Int64, device));
            let far = (p.unsqueeze(0) - p.unsqueeze(1)).abs().gt(self.window);
            let band = (far.to_kind(kind) * -1e4).view([1, 1, seq, seq]);
            match &padding {
                Some(pad) => band + pad,
                None => band.expand([batch, 1, seq, seq], false),
            }
        });
        let local_bias = local_bias.or_else(|| padding.as_ref().map(Tensor::shallow_clone));
        for layer in &self.layers {
            x = if layer.global {
                layer.forward(&x, &global_rotary, padding.as_ref())
            } else {
                layer.forward(&x, &local_rotary, local_bias.as_ref())
            };
        }
        self.final_norm.forward(&x)
    }
}
