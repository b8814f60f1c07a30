//! MPNet (all-mpnet-base-v2, the most used sentence-transformers model): BERT-shaped
//! post-norm layers named `attention.attn.{q,k,v,o}` and `attention.LayerNorm`, no token
//! types, RoBERTa's positions (after padding index 1, which `transformers` fixes whatever the
//! config says), and a relative position bias shared by every layer: T5-style buckets of
//! `key − query` (32 buckets, 16 per direction, exact below 8, log-spaced to 128) looked up in
//! `encoder.relative_attention_bias` and added to every head's attention scores.
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::bert::{BertConfig, BertEncoder, LayerNames, Positions, Style};
use super::encoder::{field, Encoder, Shape};
use super::families::Family;

pub static FAMILY: Family = Family {
    name: "MPNet",
    model_types: &["mpnet"],
    checkpoint_prefix: "mpnet.",
    layer_prefix: "encoder.layer.",
    top_params: &[],
    read,
    build,
};

const STYLE: Style = Style {
    positions: Positions::AfterPadding,
    default_pad_token_id: 1,
    layer: LayerNames {
        query: "attention.attn.q",
        key: "attention.attn.k",
        value: "attention.attn.v",
        attn_out: "attention.attn.o",
        attn_norm: "attention.LayerNorm",
        intermediate: "intermediate.dense",
        output: "output.dense",
        out_norm: "output.LayerNorm",
    },
};

/// `transformers` buckets with these whatever `relative_attention_num_buckets` says (that
/// only sizes the table).
const BUCKETS: i64 = 32;
const MAX_DISTANCE: f64 = 128.0;

fn parse(json: &Value) -> anyhow::Result<(BertConfig, i64)> {
    let mut c = BertConfig::parse(json)?;
    // `MPNetEmbeddings` pads at 1 and counts positions after it, whatever the config says.
    c.pad_token_id = Some(1);
    c.type_vocab_size = 0;
    let table: i64 = field(json, "relative_attention_num_buckets").unwrap_or(32);
    if table < BUCKETS {
        anyhow::bail!(
            "relative_attention_num_buckets {table} is less than the {BUCKETS} buckets MPNet looks up"
        );
    }
    Ok((c, table))
}

fn read(json: &Value) -> anyhow::Result<Shape> {
    parse(json).map(|(c, _)| c.shape(&STYLE))
}

fn build(root: &nn::Path, json: &Value) -> anyhow::Result<Box<dyn Encoder>> {
    let (c, table) = parse(json)?;
    Ok(Box::new(MpnetEncoder {
        inner: BertEncoder::new(root, &c, &STYLE),
        relative_attention_bias: nn::embedding(
            root / "encoder" / "relative_attention_bias",
            table,
            c.num_attention_heads,
            Default::default(),
        ),
    }))
}

struct MpnetEncoder {
    inner: BertEncoder,
    relative_attention_bias: nn::Embedding,
}

/// The bucket of each relative position (`key − query`), as `transformers` computes it (the
/// same float32 logarithm, truncated).
fn relative_buckets(relative: &Tensor) -> Tensor {
    let half = BUCKETS / 2;
    let max_exact = half / 2;
    let n = -relative;
    let sign = n.lt(0).to_kind(Kind::Int64) * half;
    let n = n.abs();
    let is_small = n.lt(max_exact);
    let large = ((n.to_kind(Kind::Float) / max_exact as f64).log()
        / (MAX_DISTANCE / max_exact as f64).ln()
        * (half - max_exact) as f64)
        .to_kind(Kind::Int64)
        + max_exact;
    let large = large.clamp_max(half - 1);
    sign + n.where_self(&is_small, &large)
}

impl MpnetEncoder {
    /// [1, heads, seq, seq]: the bias every layer adds to its attention scores.
    fn position_bias(&self, seq: i64, kind: Kind, device: tch::Device) -> Tensor {
        let positions = Tensor::arange(seq, (Kind::Int64, device));
        let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
        self.relative_attention_bias
            .forward(&relative_buckets(&relative))
            .permute([2, 0, 1])
            .unsqueeze(0)
            .to_kind(kind)
    }
}

impl Encoder for MpnetEncoder {
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, padded: bool) -> Tensor {
        let x = self.inner.embeddings.forward(input_ids, attention_mask);
        let bias = self.position_bias(input_ids.size()[1], x.kind(), x.device());
        self.inner
            .layers_forward(x, attention_mask, padded, Some(bias))
    }

    fn fuse_for_inference(&mut self) {
        self.inner.fuse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets as `MPNetEncoder.relative_position_bucket` gives them (computed in Python with
    /// transformers 5.25 for these offsets).
    #[test]
    fn relative_buckets_match_transformers() {
        let offsets = [
            -200i64, -128, -100, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 100, 128, 200,
        ];
        let got = Vec::<i64>::try_from(relative_buckets(&Tensor::from_slice(&offsets))).unwrap();
        let want = [
            15, 15, 15, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 31, 31, 31,
        ];
        assert_eq!(got, want);
    }
}
