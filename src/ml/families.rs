//! The encoder families trainyard runs, chosen from `config.json`'s `model_type` in this one
//! place. A family reads its config's shape, builds its encoder (`encoder::Encoder`), and says
//! how its checkpoints name their tensors (the task prefix of its `*For*` classes, where its
//! layers sit); a `model_type` that is not listed is refused rather than run as something it is
//! not.
//!
//! Adding a family is a file beside `bert.rs` (its `FAMILY` and forward pass) and a line in
//! [`FAMILIES`].
use serde_json::Value;
use tch::nn;

use super::encoder::{Encoder, Shape};

/// One encoder family.
pub struct Family {
    /// The name trainyard shows (`doctor`, errors).
    pub name: &'static str,
    /// The `model_type` values of its `config.json` (the first is the family's own).
    pub model_types: &'static [&'static str],
    /// The prefix its task classes (`*ForSequenceClassification`, …) put before the encoder's
    /// tensor names, stripped when a checkpoint is read.
    pub checkpoint_prefix: &'static str,
    /// Where layer N's tensors sit (`encoder.layer.` + N), for layer-wise learning rates.
    pub layer_prefix: &'static str,
    /// Tensors above the last layer (a final norm), which train at the top layer's rate.
    pub top_params: &'static [&'static str],
    /// The shape its config describes, or why trainyard would not run it.
    pub read: fn(&Value) -> anyhow::Result<Shape>,
    /// Its encoder, parameters created under the path.
    pub build: fn(&nn::Path, &Value) -> anyhow::Result<Box<dyn Encoder>>,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every family, in the order `doctor` lists them.
pub static FAMILIES: &[&Family] = &[
    &super::bert::FAMILY,
    &super::roberta::FAMILY,
    &super::distilbert::FAMILY,
    &super::mpnet::FAMILY,
    &super::modernbert::FAMILY,
    &super::deberta::FAMILY,
];

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
}

/// A checkpoint tensor's name without any family's task prefix (`bert.`, `roberta.`, …).
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
        assert_eq!(Family::of(Some("distilbert")).unwrap().name, "DistilBERT");
        assert_eq!(Family::of(Some("mpnet")).unwrap().name, "MPNet");
        assert_eq!(Family::of(Some("modernbert")).unwrap().name, "ModernBERT");
        assert_eq!(
            Family::of(Some("deberta-v2")).unwrap().name,
            "DeBERTa-v2/v3"
        );
        let err = Family::of(Some("electra")).unwrap_err();
        assert!(err.contains("`electra` is not supported"), "{err}");
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
        assert_eq!(
            strip_task_prefix("distilbert.transformer.layer.1.ffn.lin1.weight"),
            "transformer.layer.1.ffn.lin1.weight"
        );
        assert_eq!(strip_task_prefix("classifier.weight"), "classifier.weight");
    }
}
