//! A stored version's weights as Hugging Face files: the encoder as a `BertModel`
//! `model.safetensors` and the head as `head.safetensors` (float32, `{"format": "pt"}`).
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};

use super::classifier::blob_to_tensors;
use super::encoder::read_checkpoint;

/// The safetensors files of one version.
pub struct ExportedWeights {
    /// `BertModel` weights (finetuned versions only): the trained encoder, plus the base
    /// checkpoint's pooler (unused by trainyard, expected by `AutoModel`).
    pub encoder: Option<Vec<u8>>,
    /// The head: `hidden.weight`, `hidden.bias` (when it has a hidden layer), `out.weight`,
    /// `out.bias`, as `torch.nn.Linear` stores them ([out, in] weights).
    pub head: Vec<u8>,
    /// The head's tensor names and shapes, in file order.
    pub head_shapes: Vec<(String, Vec<i64>)>,
}

/// Splits a version's weight blob into encoder and head files. `base_dir`: the base model's
/// folder, whose tensors the blob lacks (the pooler) are copied from it; needed for finetuned
/// versions only.
pub fn export_weights(blob: &[u8], base_dir: Option<&Path>) -> anyhow::Result<ExportedWeights> {
    let tensors = blob_to_tensors(blob, Device::Cpu)?;
    let mut head: Vec<(String, Tensor)> = Vec::new();
    let mut encoder: Vec<(String, Tensor)> = Vec::new();
    for (name, tensor) in tensors {
        match name.strip_prefix("classifier.") {
            Some(rest) => head.push((rest.to_string(), tensor)),
            None => encoder.push((name, tensor)),
        }
    }
    if head.is_empty() {
        anyhow::bail!("the version's weights hold no classifier head");
    }
    head.sort_by(|a, b| a.0.cmp(&b.0));
    let head_shapes = head.iter().map(|(n, t)| (n.clone(), t.size())).collect();
    let encoder = if encoder.is_empty() {
        None
    } else {
        if let Some(dir) = base_dir {
            for (name, tensor) in read_checkpoint(dir)? {
                if name.starts_with("pooler.") && !encoder.iter().any(|(n, _)| *n == name) {
                    encoder.push((name, tensor));
                }
            }
        }
        encoder.sort_by(|a, b| a.0.cmp(&b.0));
        Some(to_safetensors(&encoder)?)
    };
    Ok(ExportedWeights {
        encoder,
        head: to_safetensors(&head)?,
        head_shapes,
    })
}

/// Float32 safetensors bytes with the metadata `transformers` checks (`format: pt`).
pub fn to_safetensors(named: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(named.len());
    for (name, tensor) in named {
        let t = tensor
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(t.view([-1]))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("safetensors: {e:?}"))?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize(views, &metadata)
        .map_err(|e| anyhow::anyhow!("safetensors: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_encoder_split_and_round_trip() {
        let named = vec![
            (
                "classifier.out.weight".to_string(),
                Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).view([2, 3]),
            ),
            (
                "classifier.out.bias".to_string(),
                Tensor::from_slice(&[0.5f32, -0.5]),
            ),
            (
                "embeddings.LayerNorm.bias".to_string(),
                Tensor::from_slice(&[7f32, 8.]),
            ),
        ];
        let blob = super::super::classifier::tensors_to_blob(&named).unwrap();
        let out = export_weights(&blob, None).unwrap();
        assert_eq!(
            out.head_shapes,
            vec![
                ("out.bias".to_string(), vec![2]),
                ("out.weight".to_string(), vec![2, 3])
            ]
        );
        let head = safetensors::SafeTensors::deserialize(&out.head).unwrap();
        let w = head.tensor("out.weight").unwrap();
        assert_eq!(w.shape(), &[2, 3]);
        let values: Vec<f32> = w
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(values, vec![1., 2., 3., 4., 5., 6.]);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&out.head).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        let encoder = out.encoder.expect("an encoder tensor was in the blob");
        let encoder = safetensors::SafeTensors::deserialize(&encoder).unwrap();
        assert_eq!(encoder.names(), vec!["embeddings.LayerNorm.bias"]);
    }
}
