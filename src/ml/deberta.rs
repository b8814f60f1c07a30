//! DeBERTa-v2 and v3 (`model_type` `deberta-v2`; microsoft/deberta-v3-base and -large,
//! mDeBERTa-v3): BERT's post-norm layers (`attention.self.query_proj`, `key_proj`,
//! `value_proj`) with disentangled attention. Besides content-to-content scores, each query
//! scores the relative position of each key (c2p: `q_i · K_r[δ(i, j)]`) and each key the
//! relative position of each query (p2c: `k_j · Q_r[δ(i, j)]`), where δ = i − j, clamped, or
//! log-bucketed past `position_buckets / 2` (v3: 256 buckets over 512 positions), and K_r / Q_r
//! are the shared relative embeddings (`encoder.rel_embeddings`, LayerNorm-ed when
//! `norm_rel_ebd` says so) projected by the layer's own key / query projections
//! (`share_att_key`, v3) or by `pos_key_proj` / `pos_query_proj` (v2). Scores are scaled by
//! √(head size × the number of score kinds). v3 has no absolute positions
//! (`position_biased_input: false`) and no token types. The embeddings are zeroed at padding.
//!
//! Refused, as trainyard would run them wrongly: `relative_attention: false` configs with other
//! options unchecked here, a convolution after the first layer (`conv_kernel_size`, DeBERTa-v2
//! xlarge), an `attention_head_size` other than hidden / heads, `pos_att_type` entries other than
//! c2p and p2c.
use serde::Deserialize;
use serde_json::Value;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::bert::{at, layer_norm, padding_bias, Activation};
use super::encoder::{Encoder, Shape};
use super::families::Family;

pub static FAMILY: Family = Family {
    name: "DeBERTa-v2/v3",
    model_types: &["deberta-v2"],
    checkpoint_prefix: "deberta.",
    layer_prefix: "encoder.layer.",
    top_params: &[],
    read,
    build,
};

#[derive(Debug, Clone, Deserialize)]
struct DebertaConfig {
    hidden_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    intermediate_size: i64,
    vocab_size: i64,
    max_position_embeddings: i64,
    #[serde(default)]
    type_vocab_size: i64,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default)]
    embedding_size: Option<i64>,
    #[serde(default = "d_true")]
    position_biased_input: bool,
    #[serde(default)]
    relative_attention: bool,
    #[serde(default = "d_minus_one")]
    max_relative_positions: i64,
    #[serde(default = "d_minus_one")]
    position_buckets: i64,
    #[serde(default)]
    pos_att_type: Option<PosAttType>,
    #[serde(default)]
    share_att_key: bool,
    #[serde(default)]
    norm_rel_ebd: Option<String>,
    #[serde(default)]
    conv_kernel_size: Option<i64>,
    #[serde(default)]
    attention_head_size: Option<i64>,
}

/// `pos_att_type` is a list in v3 configs and a `|`-separated string in older ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PosAttType {
    List(Vec<String>),
    Joined(String),
}

fn d_eps() -> f64 {
    1e-7
}
fn d_act() -> String {
    "gelu".into()
}
fn d_true() -> bool {
    true
}
fn d_minus_one() -> i64 {
    -1
}

/// The checked options the encoder is built from.
struct Options {
    c: DebertaConfig,
    act: Activation,
    c2p: bool,
    p2c: bool,
    /// Rows of the relative table on each side (`att_span`).
    span: i64,
    /// Log buckets (`position_buckets`, `max_relative_positions`) or none.
    buckets: Option<(i64, i64)>,
    norm_rel: bool,
}

fn parse(json: &Value) -> anyhow::Result<Options> {
    let c: DebertaConfig = serde_json::from_value(json.clone())?;
    let act = Activation::named(&c.hidden_act)?;
    if c.hidden_size % c.num_attention_heads != 0 {
        anyhow::bail!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            c.hidden_size,
            c.num_attention_heads
        );
    }
    if let Some(size) = c.attention_head_size {
        if size != c.hidden_size / c.num_attention_heads {
            anyhow::bail!("attention_head_size {size} is not hidden_size / num_attention_heads");
        }
    }
    if c.conv_kernel_size.unwrap_or(0) > 0 {
        anyhow::bail!("conv_kernel_size (a convolution after the first layer) is not supported");
    }
    if !c.relative_attention {
        anyhow::bail!("relative_attention false is not supported (DeBERTa-v2/v3 configs set it)");
    }
    let kinds: Vec<String> = match &c.pos_att_type {
        Some(PosAttType::List(l)) => l.iter().map(|s| s.trim().to_lowercase()).collect(),
        Some(PosAttType::Joined(s)) => s.split('|').map(|s| s.trim().to_lowercase()).collect(),
        None => Vec::new(),
    };
    if let Some(other) = kinds.iter().find(|k| !matches!(k.as_str(), "c2p" | "p2c")) {
        anyhow::bail!("pos_att_type `{other}` is not supported (c2p, p2c)");
    }
    let norm_rel = match c.norm_rel_ebd.as_deref().map(str::to_lowercase) {
        None => false,
        Some(s) => {
            let parts: Vec<&str> = s.split('|').map(str::trim).collect();
            if let Some(other) = parts.iter().find(|p| !matches!(**p, "layer_norm" | "none")) {
                anyhow::bail!("norm_rel_ebd `{other}` is not supported (layer_norm, none)");
            }
            parts.contains(&"layer_norm")
        }
    };
    let max_relative = if c.max_relative_positions < 1 {
        c.max_position_embeddings
    } else {
        c.max_relative_positions
    };
    let (span, buckets) = if c.position_buckets > 0 {
        (c.position_buckets, Some((c.position_buckets, max_relative)))
    } else {
        (max_relative, None)
    };
    Ok(Options {
        act,
        c2p: kinds.iter().any(|k| k == "c2p"),
        p2c: kinds.iter().any(|k| k == "p2c"),
        span,
        buckets,
        norm_rel,
        c,
    })
}

fn read(json: &Value) -> anyhow::Result<Shape> {
    let o = parse(json)?;
    Ok(Shape {
        hidden_size: o.c.hidden_size,
        num_layers: o.c.num_hidden_layers,
        max_input_tokens: o.c.max_position_embeddings,
    })
}

struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    pos_key: Option<nn::Linear>,
    pos_query: Option<nn::Linear>,
    attn_out: nn::Linear,
    attn_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    out_norm: nn::LayerNorm,
}

struct DebertaEncoder {
    word: nn::Embedding,
    position: Option<nn::Embedding>,
    token_type: Option<nn::Embedding>,
    embed_proj: Option<nn::Linear>,
    embed_norm: nn::LayerNorm,
    rel_embeddings: nn::Embedding,
    rel_norm: Option<nn::LayerNorm>,
    layers: Vec<Layer>,
    heads: i64,
    act: Activation,
    c2p: bool,
    p2c: bool,
    span: i64,
    buckets: Option<(i64, i64)>,
    share_att_key: bool,
}

fn build(root: &nn::Path, json: &Value) -> anyhow::Result<Box<dyn Encoder>> {
    let o = parse(json)?;
    let c = &o.c;
    let h = c.hidden_size;
    let e = c.embedding_size.unwrap_or(h);
    let lin = Default::default();
    let emb = root / "embeddings";
    let layers = (0..c.num_hidden_layers)
        .map(|i| {
            let p = root / "encoder" / "layer" / i;
            Layer {
                query: nn::linear(at(&p, "attention.self.query_proj"), h, h, lin),
                key: nn::linear(at(&p, "attention.self.key_proj"), h, h, lin),
                value: nn::linear(at(&p, "attention.self.value_proj"), h, h, lin),
                pos_key: (!c.share_att_key && o.c2p)
                    .then(|| nn::linear(at(&p, "attention.self.pos_key_proj"), h, h, lin)),
                pos_query: (!c.share_att_key && o.p2c)
                    .then(|| nn::linear(at(&p, "attention.self.pos_query_proj"), h, h, lin)),
                attn_out: nn::linear(at(&p, "attention.output.dense"), h, h, lin),
                attn_norm: layer_norm(at(&p, "attention.output.LayerNorm"), h, c.layer_norm_eps),
                intermediate: nn::linear(at(&p, "intermediate.dense"), h, c.intermediate_size, lin),
                output: nn::linear(at(&p, "output.dense"), c.intermediate_size, h, lin),
                out_norm: layer_norm(at(&p, "output.LayerNorm"), h, c.layer_norm_eps),
            }
        })
        .collect();
    Ok(Box::new(DebertaEncoder {
        word: nn::embedding(
            &emb / "word_embeddings",
            c.vocab_size,
            e,
            Default::default(),
        ),
        position: c.position_biased_input.then(|| {
            nn::embedding(
                &emb / "position_embeddings",
                c.max_position_embeddings,
                e,
                Default::default(),
            )
        }),
        token_type: (c.type_vocab_size > 0).then(|| {
            nn::embedding(
                &emb / "token_type_embeddings",
                c.type_vocab_size,
                e,
                Default::default(),
            )
        }),
        embed_proj: (e != h).then(|| {
            nn::linear(
                &emb / "embed_proj",
                e,
                h,
                nn::LinearConfig {
                    bias: false,
                    ..Default::default()
                },
            )
        }),
        embed_norm: layer_norm(&emb / "LayerNorm", h, c.layer_norm_eps),
        rel_embeddings: nn::embedding(
            root / "encoder" / "rel_embeddings",
            2 * o.span,
            h,
            Default::default(),
        ),
        rel_norm: o
            .norm_rel
            .then(|| layer_norm(root / "encoder" / "LayerNorm", h, c.layer_norm_eps)),
        layers,
        heads: c.num_attention_heads,
        act: o.act,
        c2p: o.c2p,
        p2c: o.p2c,
        span: o.span,
        buckets: o.buckets,
        share_att_key: c.share_att_key,
    }))
}

/// `make_log_bucket_position`: distances below `buckets / 2` kept, longer ones log-spaced up to
/// `max_position`, in the same float32 operations as `transformers`.
fn log_buckets(relative: &Tensor, buckets: i64, max_position: i64) -> Tensor {
    let mid = buckets / 2;
    let sign = relative.sign();
    let near = relative.lt(mid).logical_and(&relative.gt(-mid));
    let abs_pos = relative
        .abs()
        .where_self(&near.logical_not(), &relative.full_like(mid - 1));
    let ratio = Tensor::from_slice(&[((max_position - 1) as f64 / mid as f64) as f32])
        .to_device(relative.device())
        .log();
    let log_pos = ((abs_pos.to_kind(Kind::Float) / mid as f64).log() / ratio * (mid - 1) as f64)
        .ceil()
        + mid as f64;
    let keep = abs_pos.le(mid);
    relative
        .to_kind(Kind::Float)
        .where_self(&keep, &(log_pos * sign))
        .to_kind(Kind::Int64)
}

impl DebertaEncoder {
    /// [seq, seq]: δ(i, j) = i − j, bucketed when the config says so.
    fn relative_positions(&self, seq: i64, device: tch::Device) -> Tensor {
        let p = Tensor::arange(seq, (Kind::Int64, device));
        let relative = p.unsqueeze(1) - p.unsqueeze(0);
        match self.buckets {
            Some((buckets, max_position)) => log_buckets(&relative, buckets, max_position),
            None => relative,
        }
    }

    fn embeddings(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let mut x = self.word.forward(input_ids);
        if let Some(position) = &self.position {
            let seq = input_ids.size()[1];
            x += position.forward(&Tensor::arange(seq, (Kind::Int64, x.device())).unsqueeze(0));
        }
        if let Some(token_type) = &self.token_type {
            x += token_type.forward(&input_ids.zeros_like());
        }
        if let Some(proj) = &self.embed_proj {
            x = proj.forward(&x);
        }
        let x = self.embed_norm.forward(&x);
        let mask = attention_mask.to_kind(x.kind()).unsqueeze(-1);
        x * mask
    }

    /// [batch, heads, seq, d] from [batch, seq, hidden].
    fn heads_of(&self, x: &Tensor) -> Tensor {
        let (b, s, h) = x.size3().expect("[batch, seq, hidden]");
        x.view([b, s, self.heads, h / self.heads]).transpose(1, 2)
    }

    /// [1, heads, 2·span, d] from the (normed) relative table through a projection.
    fn table_heads(&self, proj: &nn::Linear, table: &Tensor) -> Tensor {
        self.heads_of(&proj.forward(&table.unsqueeze(0)))
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        x: &Tensor,
        table: &Tensor,
        relative: &Tensor,
        padding: Option<&Tensor>,
    ) -> Tensor {
        let (b, s, h) = x.size3().expect("[batch, seq, hidden]");
        let d = h / self.heads;
        let q = self.heads_of(&layer.query.forward(x));
        let k = self.heads_of(&layer.key.forward(x));
        let v = self.heads_of(&layer.value.forward(x));
        let factor = 1 + i64::from(self.c2p) + i64::from(self.p2c);
        let scale = Tensor::from_slice(&[(d * factor) as f32]).sqrt();
        let scale = scale.double_value(&[0]);
        let mut bias: Option<Tensor> = None;
        let last = 2 * self.span - 1;
        if self.c2p {
            let proj = if self.share_att_key {
                &layer.key
            } else {
                layer.pos_key.as_ref().expect("built with c2p")
            };
            let pos_key = self.table_heads(proj, table);
            let index = (relative + self.span)
                .clamp(0, last)
                .expand([b, self.heads, s, s], false);
            let c2p = q
                .matmul(&pos_key.transpose(-1, -2))
                .gather(-1, &index, false)
                / scale;
            bias = Some(c2p);
        }
        if self.p2c {
            let proj = if self.share_att_key {
                &layer.query
            } else {
                layer.pos_query.as_ref().expect("built with p2c")
            };
            let pos_query = self.table_heads(proj, table);
            let index = (-relative + self.span)
                .clamp(0, last)
                .expand([b, self.heads, s, s], false);
            let p2c = k
                .matmul(&pos_query.transpose(-1, -2))
                .gather(-1, &index, false)
                .transpose(-1, -2)
                / scale;
            bias = Some(match bias {
                Some(c2p) => c2p + p2c,
                None => p2c,
            });
        }
        let bias = match (bias, padding) {
            (Some(r), Some(p)) => Some(r + p),
            (r, p) => r.or_else(|| p.map(Tensor::shallow_clone)),
        };
        let ctx = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            bias.as_ref(),
            0.0,
            false,
            Some(1.0 / scale),
            false,
        );
        let ctx = ctx.transpose(1, 2).contiguous().view([b, s, h]);
        let x = layer.attn_norm.forward(&(layer.attn_out.forward(&ctx) + x));
        let inner = self.act.apply(layer.intermediate.forward(&x));
        layer.out_norm.forward(&(layer.output.forward(&inner) + x))
    }
}

impl Encoder for DebertaEncoder {
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor, padded: bool) -> Tensor {
        let mut x = self.embeddings(input_ids, attention_mask);
        let seq = input_ids.size()[1];
        let relative = self.relative_positions(seq, x.device());
        let table = match &self.rel_norm {
            Some(norm) => norm.forward(&self.rel_embeddings.ws),
            None => self.rel_embeddings.ws.shallow_clone(),
        };
        let padding = padded.then(|| padding_bias(attention_mask, x.kind()));
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &table, &relative, padding.as_ref());
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets as `make_log_bucket_position(rel, 256, 512)` gives them (DeBERTa-v3's settings;
    /// computed in Python with transformers 5.25).
    #[test]
    fn log_buckets_match_transformers() {
        let offsets = [
            -511i64, -300, -200, -129, -128, -127, -5, 0, 5, 127, 128, 129, 200, 300, 511,
        ];
        let got =
            Vec::<i64>::try_from(log_buckets(&Tensor::from_slice(&offsets), 256, 512)).unwrap();
        let want = [
            -255, -207, -169, -129, -128, -127, -5, 0, 5, 127, 128, 129, 169, 207, 255,
        ];
        assert_eq!(got, want);
    }
}
