//! BERT, and the post-norm layers every BERT-shaped family reuses (RoBERTa, DistilBERT, MPNet
//! name the same parts differently): embeddings with optional token types and either
//! numbering of positions, and self-attention + GELU feed-forward layers with residual
//! LayerNorms after each.
//!
//! Parameter paths match the safetensors names of Hugging Face `BertModel` checkpoints
//! (`embeddings.word_embeddings.weight`, `encoder.layer.N.attention.self.query.weight`, ...),
//! so a checkpoint fills the model directly (the `bert.` task prefix is stripped). Pipeline:
//! token types all 0, positions 0, 1, 2, …, erf GELU (or the tanh approximation for
//! `gelu_new`), LayerNorm eps from the config (1e-12 for BERT).
use serde::Deserialize;
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::encoder::{Encoder, Shape};
use super::families::Family;

pub static FAMILY: Family = Family {
    name: "BERT",
    model_types: &["bert"],
    checkpoint_prefix: "bert.",
    layer_prefix: "encoder.layer.",
    top_params: &[],
    read,
    build,
};

const STYLE: Style = Style {
    positions: Positions::FromZero,
    default_pad_token_id: 0,
    layer: BERT_LAYER,
};

fn read(json: &Value) -> anyhow::Result<Shape> {
    BertConfig::parse(json).map(|c| c.shape(&STYLE))
}

fn build(root: &nn::Path, json: &Value) -> anyhow::Result<Box<dyn Encoder>> {
    let config = BertConfig::parse(json)?;
    Ok(Box::new(BertEncoder::new(root, &config, &STYLE)))
}

/// How a family numbers token positions for its absolute position embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, … whatever the padding (BERT, DistilBERT).
    FromZero,
    /// Attended tokens count from `padding_idx + 1`; padded ones sit at `padding_idx`
    /// (RoBERTa's and MPNet's `create_position_ids_from_input_ids`, computed here from the
    /// attention mask).
    AfterPadding,
}

impl Positions {
    /// Position ids, [batch, seq] int64, for a batch with this attention mask (1/0).
    pub fn ids(self, attention_mask: &Tensor, padding_idx: i64) -> Tensor {
        match self {
            Positions::FromZero => {
                let seq = attention_mask.size()[1];
                Tensor::arange(seq, (Kind::Int64, attention_mask.device()))
                    .unsqueeze(0)
                    .expand_as(attention_mask)
            }
            Positions::AfterPadding => {
                let mask = attention_mask.to_kind(Kind::Int64);
                mask.cumsum(1, Kind::Int64) * &mask + padding_idx
            }
        }
    }

    /// How many positions are spent before the first token: the longest input is
    /// `max_position_embeddings` minus this.
    pub fn offset(self, padding_idx: i64) -> i64 {
        match self {
            Positions::FromZero => 0,
            Positions::AfterPadding => padding_idx + 1,
        }
    }
}

/// The names of one post-norm layer's parts, relative to the layer (dotted).
#[derive(Debug, Clone, Copy)]
pub struct LayerNames {
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attn_out: &'static str,
    pub attn_norm: &'static str,
    pub intermediate: &'static str,
    pub output: &'static str,
    pub out_norm: &'static str,
}

pub const BERT_LAYER: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attn_out: "attention.output.dense",
    attn_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    out_norm: "output.LayerNorm",
};

/// What sets a BERT-shaped family apart from BERT.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub positions: Positions,
    /// `pad_token_id` when the config does not say.
    pub default_pad_token_id: i64,
    pub layer: LayerNames,
}

/// A BERT-shaped `config.json` (BERT, RoBERTa, MPNet use these names).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    /// Absent: 2, as `transformers` defaults it (MPNet has no token types and ignores it).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Where positions start after (the family's default when absent).
    #[serde(default)]
    pub pad_token_id: Option<i64>,
}

fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    pub fn parse(json: &Value) -> anyhow::Result<BertConfig> {
        let config: BertConfig = serde_json::from_value(json.clone())?;
        Activation::named(&config.hidden_act)?;
        if config.hidden_size % config.num_attention_heads != 0 {
            anyhow::bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size,
                config.num_attention_heads
            );
        }
        Ok(config)
    }

    pub fn padding_idx(&self, style: &Style) -> i64 {
        self.pad_token_id.unwrap_or(style.default_pad_token_id)
    }

    pub fn shape(&self, style: &Style) -> Shape {
        Shape {
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            max_input_tokens: self.max_position_embeddings
                - style.positions.offset(self.padding_idx(style)),
        }
    }
}

/// The feed-forward activation (`hidden_act`, DistilBERT's `activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// erf GELU (`gelu`).
    Gelu,
    /// tanh-approximated GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn named(name: &str) -> anyhow::Result<Activation> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => anyhow::bail!(
                "hidden_act `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ),
        })
    }

    /// Applied in place when no gradient is needed (saves a [tokens, intermediate] buffer).
    pub fn apply(self, mut x: Tensor) -> Tensor {
        let in_place = !x.requires_grad();
        match (self, in_place) {
            (Activation::Gelu, false) => x.gelu("none"),
            (Activation::Gelu, true) => x.gelu_("none"),
            (Activation::GeluTanh, false) => x.gelu("tanh"),
            (Activation::GeluTanh, true) => x.gelu_("tanh"),
            (Activation::Relu, false) => x.relu(),
            (Activation::Relu, true) => x.relu_(),
        }
    }
}

/// `p` followed by a dotted relative name.
pub fn at<'a>(p: &nn::Path<'a>, dotted: &str) -> nn::Path<'a> {
    let mut parts = dotted.split('.');
    let mut q = p.sub(parts.next().expect("a name"));
    for part in parts {
        q = q.sub(part);
    }
    q
}

pub fn layer_norm(path: nn::Path, size: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        path,
        vec![size],
        nn::LayerNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// Word + position (+ token type 0) embeddings, then LayerNorm.
pub struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: Option<nn::Embedding>,
    norm: nn::LayerNorm,
    positions: Positions,
    padding_idx: i64,
}

/// The sizes an embedding block is built with.
pub struct EmbeddingSizes {
    pub vocab: i64,
    pub hidden: i64,
    pub max_positions: i64,
    /// 0: no token-type embeddings (DistilBERT, MPNet).
    pub token_types: i64,
    pub eps: f64,
    pub positions: Positions,
    pub padding_idx: i64,
}

impl Embeddings {
    pub fn new(p: nn::Path, s: &EmbeddingSizes) -> Self {
        let cfg = Default::default();
        Embeddings {
            word: nn::embedding(&p / "word_embeddings", s.vocab, s.hidden, cfg),
            position: nn::embedding(&p / "position_embeddings", s.max_positions, s.hidden, cfg),
            token_type: (s.token_types > 0)
                .then(|| nn::embedding(&p / "token_type_embeddings", s.token_types, s.hidden, cfg)),
            norm: layer_norm(&p / "LayerNorm", s.hidden, s.eps),
            positions: s.positions,
            padding_idx: s.padding_idx,
        }
    }

    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let positions = self.positions.ids(attention_mask, self.padding_idx);
        let mut x = self.word.forward(input_ids) + self.position.forward(&positions);
        if let Some(token_type) = &self.token_type {
            x += token_type.forward(&input_ids.zeros_like());
        }
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

/// One post-norm layer: x = LN(x + attention(x)); x = LN(x + W2·act(W1·x)).
pub struct Layer {
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
    act: Activation,
}

/// The sizes a layer is built with.
pub struct LayerSizes {
    pub hidden: i64,
    pub heads: i64,
    pub intermediate: i64,
    pub eps: f64,
    pub act: Activation,
}

impl Layer {
    pub fn new(p: &nn::Path, names: &LayerNames, s: &LayerSizes) -> Self {
        let h = s.hidden;
        let lin = Default::default();
        Layer {
            fused_qkv: None,
            query: nn::linear(at(p, names.query), h, h, lin),
            key: nn::linear(at(p, names.key), h, h, lin),
            value: nn::linear(at(p, names.value), h, h, lin),
            attn_out: nn::linear(at(p, names.attn_out), h, h, lin),
            attn_norm: layer_norm(at(p, names.attn_norm), h, s.eps),
            intermediate: nn::linear(at(p, names.intermediate), h, s.intermediate, lin),
            output: nn::linear(at(p, names.output), s.intermediate, h, lin),
            out_norm: layer_norm(at(p, names.out_norm), h, s.eps),
            heads: s.heads,
            act: s.act,
        }
    }

    fn fuse_qkv(&mut self) {
        let fused = tch::no_grad(|| {
            fn bias(l: &nn::Linear) -> &Tensor {
                l.bs.as_ref().expect("the projections have a bias")
            }
            FusedQkv {
                weight: Tensor::cat(&[&self.query.ws, &self.key.ws, &self.value.ws], 0),
                bias: Tensor::cat(&[bias(&self.query), bias(&self.key), bias(&self.value)], 0),
            }
        });
        self.fused_qkv = Some(fused);
    }

    /// `attn_bias`: added to the attention scores, broadcast to [batch, heads, seq, seq]
    /// (the padding mask, MPNet's relative position bias). `None`: libtorch picks its fastest
    /// kernel.
    pub fn forward(&self, x: &Tensor, attn_bias: Option<&Tensor>) -> Tensor {
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
            Tensor::scaled_dot_product_attention(&q, &k, &v, attn_bias, 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).contiguous().view([b, s, h]);
        let x = self.attn_norm.forward(&(self.attn_out.forward(&ctx) + x));
        let inner = self.act.apply(self.intermediate.forward(&x));
        self.out_norm.forward(&(self.output.forward(&inner) + x))
    }
}

/// [batch, 1, 1, seq]: 0 where attended, a large negative where padded.
pub fn padding_bias(attention_mask: &Tensor, kind: Kind) -> Tensor {
    let mask = attention_mask.to_kind(kind);
    ((mask.ones_like() - mask) * -1e4).view([
        attention_mask.size()[0],
        1,
        1,
        attention_mask.size()[1],
    ])
}

/// Embeddings and a stack of post-norm layers.
pub struct BertEncoder {
    pub embeddings: Embeddings,
    pub layers: Vec<Layer>,
}

impl BertEncoder {
    /// A BERT-shaped encoder: `embeddings.*` and `encoder.layer.N.*` (names from `style`).
    pub fn new(root: &nn::Path, c: &BertConfig, style: &Style) -> Self {
        let embeddings = Embeddings::new(
            root / "embeddings",
            &EmbeddingSizes {
                vocab: c.vocab_size,
                hidden: c.hidden_size,
                max_positions: c.max_position_embeddings,
                token_types: c.type_vocab_size,
                eps: c.layer_norm_eps,
                positions: style.positions,
                padding_idx: c.padding_idx(style),
            },
        );
        let sizes = LayerSizes {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            eps: c.layer_norm_eps,
            act: Activation::named(&c.hidden_act).expect("checked when parsed"),
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::new(&(root / "encoder" / "layer" / i), &style.layer, &sizes))
            .collect();
        BertEncoder { embeddings, layers }
    }

    /// The layers over `x` with the padding mask (when `padded`) plus `extra_bias`.
    pub fn layers_forward(
        &self,
        mut x: Tensor,
        attention_mask: &Tensor,
        padded: bool,
        extra_bias: Option<Tensor>,
    ) -> Tensor {
        let mask = padded.then(|| padding_bias(attention_mask, x.kind()));
        let bias = match (mask, extra_bias) {
            (Some(m), Some(e)) => Some(e + m),
            (m, e) => m.or(e),
        };
        for layer in &self.layers {
            x = layer.forward(&x, bias.as_ref());
        }
        x
    }

    pub fn fuse(&mut self) {
        for layer in &mut self.layers {
            layer.fuse_qkv();
        }
    }
}

impl Encoder for BertEncoder {
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, padded: bool) -> Tensor {
        let x = self.embeddings.forward(input_ids, attention_mask);
        self.layers_forward(x, attention_mask, padded, None)
    }

    fn fuse_for_inference(&mut self) {
        self.fuse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RoBERTa's positions from a right-padded batch: the same as `transformers` computes from
    /// the ids (`(cumsum(ids != pad) * (ids != pad)) + pad`).
    #[test]
    fn positions_after_padding_skip_padding() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
        let p = Vec::<i64>::try_from(Positions::AfterPadding.ids(&mask, 1).view([-1])).unwrap();
        assert_eq!(p, vec![2, 3, 4, 5, 2, 3, 1, 1]);
        assert_eq!(Positions::AfterPadding.offset(1), 2);
        let p = Vec::<i64>::try_from(Positions::FromZero.ids(&mask, 0).contiguous().view([-1]))
            .unwrap();
        assert_eq!(p, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }
}
