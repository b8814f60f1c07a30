//! The encoder families trainyard runs, chosen from `config.json`'s `model_type` in this one
//! place. A family says how its checkpoints name their tensors (the task prefix of its
//! `*For*` classes) and how token positions are numbered; a `model_type` that is not listed is
//! refused rather than run as something it is not.
//!
//! Adding a BERT-shaped family (same layers, its own embeddings) is a file beside `roberta.rs`
//! and a line in [`FAMILIES`].
use tch::{Kind, Tensor};

/// How a family numbers token positions for its absolute position embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, … whatever the padding (BERT).
    FromZero,
    /// Attended tokens count from `padding_idx + 1`; padded ones sit at `padding_idx`
    /// (RoBERTa's `create_position_ids_from_input_ids`, computed here from the attention mask).
    AfterPadding,
}

/// One encoder family.
#[derive(Debug)]
pub struct Family {
    /// The name trainyard shows (`doctor`, errors).
    pub name: &'static str,
    /// The `model_type` values of its `config.json` (the first is the family's own).
    pub model_types: &'static [&'static str],
    /// The prefix its task classes (`*ForSequenceClassification`, …) put before the encoder's
    /// tensor names, stripped when a checkpoint is read.
    pub checkpoint_prefix: &'static str,
    pub positions: Positions,
    /// `pad_token_id` when the config does not say.
    pub default_pad_token_id: i64,
}

/// Every family, in the order `doctor` lists them.
pub static FAMILIES: &[&Family] = &[&super::bert::FAMILY, &super::roberta::FAMILY];

impl Family {
    /// The family of a `model_type` (absent: BERT, as old BERT configs omit it), or why not.
    pub fn of(model_type: Option<&str>) -> Result<&'static Family, String> {
        let model_type = model_type.unwrap_or("bert");
        FAMILIES
            .iter()
            .copied()
            .find(|f| f.model_types.contains(&model_type))
            .ok_or_else(|| {
                let known: Vec<&str> = FAMILIES
                    .iter()
                    .flat_map(|f| f.model_types.iter().copied())
                    .collect();
                format!(
                    "model_type `{model_type}` is not supported (trainyard runs {})",
                    known.join(", ")
                )
            })
    }

    /// Position ids, [batch, seq] int64, for a batch with this attention mask (1/0).
    pub fn position_ids(&self, attention_mask: &Tensor, padding_idx: i64) -> Tensor {
        match self.positions {
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

    /// How many positions the family spends before the first token: the longest input is
    /// `max_position_embeddings` minus this.
    pub fn position_offset(&self, padding_idx: i64) -> i64 {
        match self.positions {
            Positions::FromZero => 0,
            Positions::AfterPadding => padding_idx + 1,
        }
    }
}

/// A checkpoint tensor's name without any family's task prefix (`bert.`, `roberta.`).
pub fn strip_task_prefix(name: &str) -> &str {
    FAMILIES
        .iter()
        .find_map(|f| name.strip_prefix(f.checkpoint_prefix))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_types_map_to_one_family_each() {
        assert_eq!(Family::of(None).unwrap().name, "BERT");
        assert_eq!(Family::of(Some("bert")).unwrap().name, "BERT");
        for t in ["roberta", "xlm-roberta", "camembert"] {
            assert_eq!(Family::of(Some(t)).unwrap().name, "RoBERTa", "{t}");
        }
        let err = Family::of(Some("deberta-v2")).unwrap_err();
        assert!(err.contains("`deberta-v2` is not supported"), "{err}");
        assert!(err.contains("xlm-roberta"), "{err}");
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            for t in f.model_types {
                assert!(seen.insert(*t), "{t} listed twice");
            }
        }
        assert_eq!(
            strip_task_prefix("roberta.encoder.layer.0.output.dense.weight"),
            "encoder.layer.0.output.dense.weight"
        );
        assert_eq!(strip_task_prefix("bert.embeddings.x"), "embeddings.x");
        assert_eq!(strip_task_prefix("classifier.weight"), "classifier.weight");
    }

    /// RoBERTa's positions from a right-padded batch: the same as `transformers` computes from
    /// the ids (`(cumsum(ids != pad) * (ids != pad)) + pad`).
    #[test]
    fn roberta_positions_skip_padding() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
        let roberta = Family::of(Some("roberta")).unwrap();
        let p = Vec::<i64>::try_from(roberta.position_ids(&mask, 1).view([-1])).unwrap();
        assert_eq!(p, vec![2, 3, 4, 5, 2, 3, 1, 1]);
        assert_eq!(roberta.position_offset(1), 2);
        let bert = Family::of(None).unwrap();
        let p = Vec::<i64>::try_from(bert.position_ids(&mask, 0).contiguous().view([-1])).unwrap();
        assert_eq!(p, vec![0, 1, 2, 3, 0, 1, 2, 3]);
    }
}
