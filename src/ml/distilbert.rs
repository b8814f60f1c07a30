//! DistilBERT (distilbert-base-uncased, multi-qa-distilbert-cos-v1, …): BERT's post-norm
//! layers under other names (`transformer.layer.N.attention.q_lin`, `sa_layer_norm`,
//! `ffn.lin1`, `output_layer_norm`), no token types, positions from 0, LayerNorm eps fixed at
//! 1e-12, and its own config keys (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`).
//! `sinusoidal_pos_embds` changes only how position embeddings are initialised; a checkpoint
//! carries them either way.
use serde::Deserialize;
use serde_json::Value;
use tch::nn;

use super::bert::{
    Activation, BertEncoder, EmbeddingSizes, Embeddings, Layer, LayerNames, LayerSizes, Positions,
};
use super::encoder::{Encoder, Shape};
use super::families::Family;

pub static FAMILY: Family = Family {
    name: "DistilBERT",
    model_types: &["distilbert"],
    checkpoint_prefix: "distilbert.",
    layer_prefix: "transformer.layer.",
    top_params: &[],
    read,
    build,
};

const LAYER: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attn_out: "attention.out_lin",
    attn_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    out_norm: "output_layer_norm",
};

/// `transformers`' `DistilBertConfig`, with its defaults.
#[derive(Debug, Clone, Deserialize)]
struct DistilBertConfig {
    #[serde(default = "d_vocab")]
    vocab_size: i64,
    #[serde(default = "d_positions")]
    max_position_embeddings: i64,
    #[serde(default = "d_layers")]
    n_layers: i64,
    #[serde(default = "d_heads")]
    n_heads: i64,
    #[serde(default = "d_dim")]
    dim: i64,
    #[serde(default = "d_hidden")]
    hidden_dim: i64,
    #[serde(default = "d_act")]
    activation: String,
}

fn d_vocab() -> i64 {
    30522
}
fn d_positions() -> i64 {
    512
}
fn d_layers() -> i64 {
    6
}
fn d_heads() -> i64 {
    12
}
fn d_dim() -> i64 {
    768
}
fn d_hidden() -> i64 {
    4 * 768
}
fn d_act() -> String {
    "gelu".into()
}

const EPS: f64 = 1e-12;

fn parse(json: &Value) -> anyhow::Result<DistilBertConfig> {
    let c: DistilBertConfig = serde_json::from_value(json.clone())?;
    Activation::named(&c.activation)?;
    if c.dim % c.n_heads != 0 {
        anyhow::bail!("dim {} is not a multiple of n_heads {}", c.dim, c.n_heads);
    }
    Ok(c)
}

fn read(json: &Value) -> anyhow::Result<Shape> {
    let c = parse(json)?;
    Ok(Shape {
        hidden_size: c.dim,
        num_layers: c.n_layers,
        max_input_tokens: c.max_position_embeddings,
    })
}

fn build(root: &nn::Path, json: &Value) -> anyhow::Result<Box<dyn Encoder>> {
    let c = parse(json)?;
    let embeddings = Embeddings::new(
        root / "embeddings",
        &EmbeddingSizes {
            vocab: c.vocab_size,
            hidden: c.dim,
            max_positions: c.max_position_embeddings,
            token_types: 0,
            eps: EPS,
            positions: Positions::FromZero,
            padding_idx: 0,
        },
    );
    let sizes = LayerSizes {
        hidden: c.dim,
        heads: c.n_heads,
        intermediate: c.hidden_dim,
        eps: EPS,
        act: Activation::named(&c.activation)?,
    };
    let layers = (0..c.n_layers)
        .map(|i| Layer::new(&(root / "transformer" / "layer" / i), &LAYER, &sizes))
        .collect();
    Ok(Box::new(BertEncoder { embeddings, layers }))
}
