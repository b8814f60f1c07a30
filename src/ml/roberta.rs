//! RoBERTa and the families that are RoBERTa (XLM-RoBERTa: multilingual-e5, bge-m3,
//! paraphrase-multilingual-*; CamemBERT): BERT's layers and tensor names under a `roberta.`
//! task prefix, one token type, and positions that start after the padding index and skip
//! padding (`max_position_embeddings` 514 for 512 tokens). The forward pass is `bert.rs`'s.
use super::families::{Family, Positions};

pub static FAMILY: Family = Family {
    name: "RoBERTa",
    model_types: &["roberta", "xlm-roberta", "camembert"],
    checkpoint_prefix: "roberta.",
    positions: Positions::AfterPadding,
    default_pad_token_id: 1,
};
