//! The local sentence encoder: tokenizer + BERT on one dedicated thread, fed by a channel.
//!
//! A tch `Tensor` is `Send` but not `Sync`, so the model lives on its own OS thread; callers
//! send texts and await a oneshot reply. Requests waiting in the channel are coalesced, and
//! texts are sorted by token length and cut into batches under a token budget, so padding
//! (and wasted compute) stays small.
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::bert::{load_encoder, BertEncoder};

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("local model could not be loaded: {0}")]
    Load(String),
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error("model failed: {0}")]
    Model(String),
    #[error("the local model's thread has stopped")]
    Stopped,
}

#[derive(Debug, Clone)]
pub struct EncoderOptions {
    pub model_dir: PathBuf,
    /// Tokens per text after truncation (256 for all-MiniLM-L6-v2, special tokens included).
    pub max_tokens: usize,
    /// Upper bound on padded tokens (batch rows × longest row) per forward pass.
    pub max_tokens_per_batch: usize,
    /// Intra-op threads for libtorch; 0 keeps libtorch's default.
    pub threads: i32,
    pub device: Device,
}

/// What one call returns: one L2-normalised vector per text, and its token count.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub vectors: Vec<Vec<f32>>,
    pub token_counts: Vec<usize>,
}

/// Rows of one exact length worth a batch of their own (no padding, no attention mask).
const MIN_UNPADDED_ROWS: usize = 8;

struct Request {
    texts: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Encoded, EncoderError>>,
}

/// Cloneable handle to the encoder thread.
#[derive(Clone)]
pub struct TextEncoder {
    sender: mpsc::Sender<Request>,
    pub dimensions: usize,
    pub device: Device,
}

/// Resolves `auto|cpu|cuda` to a tch device.
pub fn pick_device(setting: &str) -> Device {
    match setting {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => Device::cuda_if_available(),
    }
}

impl TextEncoder {
    /// Loads the tokenizer and weights on a new thread; returns once the model is ready.
    pub fn start(options: EncoderOptions) -> Result<TextEncoder, EncoderError> {
        let (sender, receiver) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let device = options.device;
        std::thread::Builder::new()
            .name("text-encoder".into())
            .spawn(move || {
                if options.threads > 0 {
                    tch::set_num_threads(options.threads);
                }
                let model = match LoadedModel::load(&options) {
                    Ok(model) => {
                        let _ = ready_tx.send(Ok(model.encoder.config.hidden_size as usize));
                        model
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(model, receiver);
            })
            .map_err(|e| EncoderError::Load(e.to_string()))?;
        let dimensions = ready_rx.recv().map_err(|_| EncoderError::Stopped)??;
        Ok(TextEncoder {
            sender,
            dimensions,
            device,
        })
    }

    pub async fn encode(&self, texts: Vec<String>) -> Result<Encoded, EncoderError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.sender
            .send(Request { texts, reply })
            .map_err(|_| EncoderError::Stopped)?;
        rx.await.map_err(|_| EncoderError::Stopped)?
    }

    /// Blocking variant for callers outside a runtime (benchmarks, tests).
    pub fn encode_blocking(&self, texts: Vec<String>) -> Result<Encoded, EncoderError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.sender
            .send(Request { texts, reply })
            .map_err(|_| EncoderError::Stopped)?;
        rx.blocking_recv().map_err(|_| EncoderError::Stopped)?
    }
}

struct LoadedModel {
    tokenizer: Tokenizer,
    _vs: tch::nn::VarStore,
    encoder: BertEncoder,
    options: EncoderOptions,
}

impl LoadedModel {
    fn load(options: &EncoderOptions) -> Result<LoadedModel, EncoderError> {
        let dir: &Path = &options.model_dir;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| {
            EncoderError::Load(format!("{}: {e}", dir.join("tokenizer.json").display()))
        })?;
        // The shipped tokenizer.json truncates at 128 and pads to a fixed 128; the model's
        // pipeline truncates at 256 and we pad per batch ourselves.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: options.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| EncoderError::Load(e.to_string()))?;
        tokenizer.with_padding(None::<PaddingParams>);
        let (vs, encoder) =
            load_encoder(dir, options.device).map_err(|e| EncoderError::Load(format!("{e:#}")))?;
        Ok(LoadedModel {
            tokenizer,
            _vs: vs,
            encoder,
            options: options.clone(),
        })
    }

    fn encode(&self, texts: &[String]) -> Result<Encoded, EncoderError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EncoderError::Tokenize(e.to_string()))?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let token_counts: Vec<usize> = ids.iter().map(|i| i.len()).collect();
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut vectors = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            // Longest first: the first row fixes the padded width of this batch.
            let width = ids[order[start]].len().max(1);
            let rows = (self.options.max_tokens_per_batch / width).max(1);
            let mut end = (start + rows).min(order.len());
            // When enough rows share this exact length, end the batch where the length
            // changes: no padding at all, and attention runs without a mask.
            let same = order[start..end]
                .iter()
                .take_while(|&&i| ids[i].len() == width)
                .count();
            if same >= MIN_UNPADDED_ROWS && same < end - start {
                end = start + same;
            }
            let batch = &order[start..end];
            let padded = batch.iter().any(|&i| ids[i].len() != width);
            let out = tch::no_grad(|| {
                self.forward(batch.iter().map(|&i| ids[i]), batch.len(), width, padded)
            })?;
            for (row, &i) in batch.iter().enumerate() {
                vectors[i] = out[row].clone();
            }
            start = end;
        }
        Ok(Encoded {
            vectors,
            token_counts,
        })
    }

    fn forward<'a>(
        &self,
        rows: impl Iterator<Item = &'a [u32]>,
        n: usize,
        width: usize,
        padded: bool,
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        let mut input = vec![0i64; n * width];
        let mut mask = vec![0i64; n * width];
        for (r, row) in rows.enumerate() {
            for (c, &id) in row.iter().enumerate() {
                input[r * width + c] = id as i64;
                mask[r * width + c] = 1;
            }
        }
        let device = self.options.device;
        let input = Tensor::from_slice(&input)
            .view([n as i64, width as i64])
            .to_device(device);
        let mask = Tensor::from_slice(&mask)
            .view([n as i64, width as i64])
            .to_device(device);
        let out = self
            .encoder
            .sentence_embeddings(&input, &mask, padded)
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous();
        let dims = out.size()[1] as usize;
        let flat =
            Vec::<f32>::try_from(out.view([-1])).map_err(|e| EncoderError::Model(e.to_string()))?;
        Ok(flat.chunks(dims).map(|c| c.to_vec()).collect())
    }
}

fn serve(model: LoadedModel, receiver: mpsc::Receiver<Request>) {
    while let Ok(first) = receiver.recv() {
        // Coalesce everything already waiting into one pass.
        let mut pending = vec![first];
        while let Ok(more) = receiver.try_recv() {
            pending.push(more);
            if pending.iter().map(|r| r.texts.len()).sum::<usize>() >= 4096 {
                break;
            }
        }
        let all: Vec<String> = pending
            .iter()
            .flat_map(|r| r.texts.iter().cloned())
            .collect();
        match model.encode(&all) {
            Ok(encoded) => {
                let mut offset = 0;
                for request in pending {
                    let n = request.texts.len();
                    let part = Encoded {
                        vectors: encoded.vectors[offset..offset + n].to_vec(),
                        token_counts: encoded.token_counts[offset..offset + n].to_vec(),
                    };
                    offset += n;
                    let _ = request.reply.send(Ok(part));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for request in pending {
                    let _ = request
                        .reply
                        .send(Err(EncoderError::Model(message.clone())));
                }
            }
        }
    }
}
