//! RoBERTa and the families that are RoBERTa (XLM-RoBERTa: multilingual-e5, bge-m3,
//! paraphrase-multilingual-*; CamemBERT): BERT's layers and tensor names under a `roberta.`
//! task prefix, one token type, and positions that start after the padding index and skip
//! padding (`max_position_embeddings` 514 for 512 tokens). The forward pass is `bert.rs`'s.
use serde_json::Value;
use tch::nn;

use super::bert::{BertConfig, BertEncoder, Positions, Style, BERT_LAYER};
use super::encoder::{Encoder, Shape};
use super::families::Family;

pub static FAMILY: Family = Family {
    name: "RoBERTa",
    model_types: &["roberta", "xlm-roberta", "camembert"],
    checkpoint_prefix: "roberta.",
    layer_prefix: "encoder.layer.",
    top_params: &[],
    read,
    build,
};

const STYLE: Style = Style {
    positions: Positions::AfterPadding,
    default_pad_token_id: 1,
    layer: BERT_LAYER,
};

fn read(json: &Value) -> anyhow::Result<Shape> {
    BertConfig::parse(json).map(|c| c.shape(&STYLE))
}

fn build(root: &nn::Path, json: &Value) -> anyhow::Result<Box<dyn Encoder>> {
    let config = BertConfig::parse(json)?;
    Ok(Box::new(BertEncoder::new(root, &config, &STYLE)))
}
