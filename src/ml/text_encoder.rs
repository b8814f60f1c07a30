//! The local sentence encoder: a tokenizer thread feeding one or more BERT replicas.
//!
//! A tch `Tensor` is `Send` but not `Sync`, so each model replica lives on its own OS thread.
//! Callers send texts to the coordinating thread and await a oneshot reply; it coalesces the
//! requests waiting in its channel, tokenizes them, sorts texts by token length and cuts them
//! into batches under a token budget (padding stays small; a run of equal lengths becomes an
//! unpadded batch that needs no attention mask), and hands batches to whichever replica is
//! free. On a CPU, `replicas` single-threaded copies of this small model beat one copy using
//! the same number of intra-op threads (less synchronisation per small matrix product).
//!
//! Dropping the last handle stops every thread: the coordinator's channel closes, it ends and
//! closes the replicas' channel, each replica drops its model and hands the freed memory back
//! to the OS (`allocator::release_free_memory`). A served model is replaced this way on every
//! promotion; [`ThreadWatch`] lets a test see that it happened.
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use super::classifier::{Classifier, ClassifierInput, ClassifierSpec, TrainMode};
use super::encoder::{load_encoder, Encoder, EncoderConfig, PoolingSpec};
use crate::config::DeviceSetting;

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
    /// Threads in all: on CPU, this many single-threaded replicas; 0 = all cores.
    pub threads: i32,
    pub device: Device,
    /// How token states become an embedding (without a classifier; a classifier pools as
    /// its spec says).
    pub pooling: PoolingSpec,
    /// A classifier on top: each replica outputs label probabilities instead of embeddings.
    pub classifier: Option<Arc<ClassifierWeights>>,
    /// After the first waiting request, how long to wait for more to batch with it.
    pub batch_wait: Duration,
    /// Texts longer than `max_tokens`: `None` cuts them there; `Some` embeds overlapping
    /// windows and pools them (embeddings, and a `head` classifier, which then runs on the
    /// pooled vector as it was trained; a finetuned classifier always cuts at its own
    /// `max_tokens`).
    pub windows: Option<Windows>,
}

/// How a long text becomes windows: each holds the tokenizer's special tokens and up to
/// `max_tokens` minus them of the text, consecutive windows share `overlap` tokens, and at
/// most `max_windows` are embedded (the rest of the text is cut). The text's vector is the
/// mean of its windows' vectors weighted by their text tokens, L2-normalised when the model's
/// pooling normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub overlap: usize,
    pub max_windows: usize,
}

/// A trained classifier to serve: its spec and weights blob (a `head` blob holds only the head;
/// the encoder then comes from `model_dir`).
pub struct ClassifierWeights {
    pub spec: ClassifierSpec,
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for ClassifierWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifierWeights")
            .field("spec", &self.spec)
            .field("blob_bytes", &self.blob.len())
            .finish()
    }
}

/// What one call returns: one L2-normalised vector per text, and its token count.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub vectors: Vec<Vec<f32>>,
    pub token_counts: Vec<usize>,
    /// The coalesced pass this call's texts ran in; set on the first call of each pass only,
    /// so that whoever counts passes counts each once.
    pub pass: Option<PassInfo>,
}

/// One coalesced forward pass: texts from every request it served, and how long it took
/// (tokenizing, forward passes on every replica, pooling).
#[derive(Debug, Clone, Copy)]
pub struct PassInfo {
    pub texts: usize,
    pub seconds: f64,
}

/// Most texts gathered into one coalesced pass.
const MAX_COALESCED_TEXTS: usize = 4096;

/// Rows of one exact length worth a batch of their own (no padding, no attention mask).
const MIN_UNPADDED_ROWS: usize = 8;

struct Request {
    texts: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Encoded, EncoderError>>,
}

/// A replica's answer: the batch number and its vectors.
type BatchResult = (usize, Result<Vec<Vec<f32>>, EncoderError>);

/// One forward pass for a replica: padded ids, and where to send the vectors.
struct BatchJob {
    input: Vec<i64>,
    mask: Vec<i64>,
    rows: usize,
    width: usize,
    padded: bool,
    reply: mpsc::Sender<BatchResult>,
    batch_no: usize,
}

/// Cloneable handle to the encoder.
#[derive(Clone)]
pub struct TextEncoder {
    sender: mpsc::Sender<Request>,
    pub dimensions: usize,
    pub device: Device,
    threads: ThreadWatch,
}

/// Counts an encoder's threads (coordinator and replicas) still running; outlives the encoder.
/// Each thread holds one strong reference to a token and drops it after its model.
#[derive(Clone, Debug)]
pub struct ThreadWatch(Weak<()>);

impl ThreadWatch {
    pub fn running(&self) -> usize {
        self.0.strong_count()
    }
}

/// Resolves `auto|cpu|cuda` to a tch device.
pub fn pick_device(setting: DeviceSetting) -> Device {
    match setting {
        DeviceSetting::Cpu => Device::Cpu,
        DeviceSetting::Cuda => Device::Cuda(0),
        DeviceSetting::Auto => Device::cuda_if_available(),
    }
}

/// The local model's tokenizer as the encoder uses it: truncation at `max_tokens`, no padding.
pub fn load_tokenizer(dir: &Path, max_tokens: usize) -> Result<Tokenizer, EncoderError> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        // DeBERTa-v3 and other SentencePiece folders ship `spm.model` only; `transformers`
        // writes the equivalent `tokenizer.json` when it saves the fast tokenizer.
        return Err(EncoderError::Load(format!(
            "{} has no tokenizer.json: write one with \
             python -c \"from transformers import AutoTokenizer; d = '{}'; AutoTokenizer.from_pretrained(d).save_pretrained(d)\"",
            dir.display(),
            dir.display()
        )));
    }
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| EncoderError::Load(format!("{}: {e}", path.display())))?;
    // The shipped tokenizer.json truncates at 128 and pads to a fixed 128; the model's
    // pipeline truncates at 256, and batches are padded here, to their longest row.
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| EncoderError::Load(e.to_string()))?;
    tokenizer.with_padding(None::<PaddingParams>);
    Ok(tokenizer)
}

impl TextEncoder {
    /// Loads the tokenizer and the model replicas; returns once every replica is ready.
    pub fn start(options: EncoderOptions) -> Result<TextEncoder, EncoderError> {
        // A head on windows: the replicas embed windows, the coordinator pools them and runs
        // the head on each text's pooled vector.
        let windowed_head = match (&options.windows, &options.classifier) {
            (Some(_), Some(c)) if c.spec.mode == TrainMode::Head => Some(c.clone()),
            _ => None,
        };
        let windows = match (options.windows, &options.classifier) {
            (Some(w), None) => Some(WindowPlan::new(&options, w)?),
            (Some(w), Some(_)) if windowed_head.is_some() => Some(WindowPlan::new(&options, w)?),
            _ => None,
        };
        let head = match &windowed_head {
            Some(weights) => {
                let mut head = Classifier::new(weights.spec.clone(), Device::Cpu, None)
                    .map_err(|e| EncoderError::Load(format!("{e:#}")))?;
                head.load_weights_blob(&weights.blob)
                    .map_err(|e| EncoderError::Load(format!("{e:#}")))?;
                head.vs.freeze();
                Some(head)
            }
            None => None,
        };
        let options = EncoderOptions {
            classifier: if windowed_head.is_some() {
                None
            } else {
                options.classifier
            },
            ..options
        };
        let tokenizer = match &windows {
            // Cut only past the last window.
            Some(plan) => load_tokenizer(&options.model_dir, plan.longest)?,
            None => load_tokenizer(&options.model_dir, options.max_tokens)?,
        };
        let threads = if options.threads > 0 {
            options.threads as usize
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        // A GPU gets one replica; a CPU one single-threaded replica per thread.
        let replicas = if options.device == Device::Cpu {
            threads
        } else {
            1
        };
        if options.device == Device::Cpu {
            tch::set_num_threads(1);
            super::allocator::tune_for_inference();
        }
        let (work_tx, work_rx) = mpsc::channel::<BatchJob>();
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (ready_tx, ready_rx) = mpsc::channel();
        let alive = Arc::new(());
        for replica in 0..replicas {
            let (work_rx, ready_tx, options) = (work_rx.clone(), ready_tx.clone(), options.clone());
            let alive = alive.clone();
            std::thread::Builder::new()
                .name(format!("text-encoder-{replica}"))
                .spawn(move || {
                    // OpenMP's thread count is per calling thread: set it in each replica.
                    if options.device == Device::Cpu {
                        tch::set_num_threads(1);
                    }
                    match ReplicaModel::load(&options) {
                        Ok((model, width)) => {
                            let _ = ready_tx.send(Ok(width));
                            run_replica(&model, options.device, &work_rx);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(EncoderError::Load(format!("{e:#}"))));
                        }
                    }
                    // The model (and its weights blob) is gone: without this its pages stay in
                    // this thread's malloc arena (see allocator.rs).
                    drop(options);
                    super::allocator::release_free_memory();
                    drop(alive);
                })
                .map_err(|e| EncoderError::Load(e.to_string()))?;
        }
        drop(ready_tx);
        let mut dimensions = 0;
        for _ in 0..replicas {
            dimensions = ready_rx.recv().map_err(|_| EncoderError::Stopped)??;
        }
        if let Some(head) = &head {
            dimensions = head.spec.labels.len();
        }
        let (sender, receiver) = mpsc::channel::<Request>();
        let budget = options.max_tokens_per_batch;
        let wait = options.batch_wait;
        let threads = ThreadWatch(Arc::downgrade(&alive));
        std::thread::Builder::new()
            .name("text-encoder".into())
            .spawn(move || {
                let front = Front {
                    tokenizer,
                    windows,
                    head,
                };
                coordinate(&front, budget, replicas, wait, &receiver, &work_tx);
                // The last handle is gone: free the tokenizer before the replicas (stopped by
                // closing their channel) trim the heap.
                drop(front);
                drop(work_tx);
                drop(alive);
            })
            .map_err(|e| EncoderError::Load(e.to_string()))?;
        Ok(TextEncoder {
            sender,
            dimensions,
            device: options.device,
            threads,
        })
    }

    /// Watches this encoder's threads: they all end once every handle is dropped.
    pub fn thread_watch(&self) -> ThreadWatch {
        self.threads.clone()
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

/// What a replica runs: the bare encoder, or a classifier (encoder + head).
enum ReplicaModel {
    /// The store owns the parameters the encoder uses: kept alive with it.
    Encoder(
        #[allow(dead_code)] tch::nn::VarStore,
        Box<dyn Encoder>,
        PoolingSpec,
    ),
    Classifier(Box<Classifier>),
}

impl ReplicaModel {
    /// The model and its output width (embedding dimensions or label count).
    fn load(options: &EncoderOptions) -> anyhow::Result<(ReplicaModel, usize)> {
        // Past its position embeddings a model would index out of range: refused here.
        let config = EncoderConfig::from_file(&options.model_dir.join("config.json"))?;
        if options.max_tokens as i64 > config.shape.max_input_tokens {
            anyhow::bail!(
                "max_tokens {} is more than {} (the longest input this {} model takes)",
                options.max_tokens,
                config.shape.max_input_tokens,
                config.family.name,
            );
        }
        match &options.classifier {
            None => {
                let (vs, encoder, config) = load_encoder(&options.model_dir, options.device)?;
                let width = config.shape.hidden_size as usize;
                Ok((ReplicaModel::Encoder(vs, encoder, options.pooling), width))
            }
            Some(weights) => {
                let mut model = Classifier::new(
                    weights.spec.clone(),
                    options.device,
                    Some(&options.model_dir),
                )?;
                model.load_weights_blob(&weights.blob)?;
                model.vs.freeze();
                model.fuse_for_inference();
                let width = weights.spec.labels.len();
                Ok((ReplicaModel::Classifier(Box::new(model)), width))
            }
        }
    }

    fn outputs(&self, input: &Tensor, mask: &Tensor, padded: bool) -> Tensor {
        match self {
            ReplicaModel::Encoder(_, encoder, pooling) => {
                encoder.sentence_embeddings(input, mask, padded, *pooling)
            }
            ReplicaModel::Classifier(model) => {
                let logits = model.logits(
                    ClassifierInput::Tokens {
                        ids: input,
                        mask,
                        padded,
                    },
                    None,
                );
                model.probabilities(&logits)
            }
        }
    }
}

fn run_replica(encoder: &ReplicaModel, device: Device, work: &Mutex<mpsc::Receiver<BatchJob>>) {
    loop {
        let job = match work.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let result = tch::no_grad(|| forward(encoder, device, &job));
        let _ = job.reply.send((job.batch_no, result));
    }
}

fn forward(
    encoder: &ReplicaModel,
    device: Device,
    job: &BatchJob,
) -> Result<Vec<Vec<f32>>, EncoderError> {
    let shape = [job.rows as i64, job.width as i64];
    let input = Tensor::from_slice(&job.input).view(shape).to_device(device);
    let mask = Tensor::from_slice(&job.mask).view(shape).to_device(device);
    let out = encoder
        .outputs(&input, &mask, job.padded)
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous();
    let dims = out.size()[1] as usize;
    let flat =
        Vec::<f32>::try_from(out.view([-1])).map_err(|e| EncoderError::Model(e.to_string()))?;
    Ok(flat.chunks(dims).map(|c| c.to_vec()).collect())
}

/// Length-sorted batches under the token budget: (text indices, padded width, padded?).
pub fn plan_batches(lengths: &[usize], budget: usize) -> Vec<(Vec<usize>, usize, bool)> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut start = 0;
    while start < order.len() {
        // Longest first: the first row fixes the padded width of this batch.
        let width = lengths[order[start]].max(1);
        let rows = (budget / width).max(1);
        let mut end = (start + rows).min(order.len());
        let same = order[start..end]
            .iter()
            .take_while(|&&i| lengths[i] == width)
            .count();
        if same >= MIN_UNPADDED_ROWS && same < end - start {
            end = start + same;
        }
        let batch = order[start..end].to_vec();
        let padded = batch.iter().any(|&i| lengths[i] != width);
        batches.push((batch, width, padded));
        start = end;
    }
    batches
}

/// Windows of one model: its special tokens around a window's text, and the sizes.
struct WindowPlan {
    /// Special tokens before and after the text (BERT: `[CLS]` … `[SEP]`).
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// Text tokens per window and the step between window starts.
    span: usize,
    step: usize,
    max_windows: usize,
    /// Tokens (special ones included) past which a text is cut.
    longest: usize,
    /// L2-normalise the pooled windows (as the model's pooling does).
    normalize: bool,
}

impl WindowPlan {
    fn new(options: &EncoderOptions, w: Windows) -> Result<WindowPlan, EncoderError> {
        let tokenizer = load_tokenizer(&options.model_dir, options.max_tokens)?;
        let tokenize = |special: bool| -> Result<Vec<u32>, EncoderError> {
            Ok(tokenizer
                .encode("a", special)
                .map_err(|e| EncoderError::Tokenize(e.to_string()))?
                .get_ids()
                .to_vec())
        };
        let (with, bare) = (tokenize(true)?, tokenize(false)?);
        let at = (0..=with.len().saturating_sub(bare.len()))
            .find(|&i| with[i..].starts_with(&bare))
            .ok_or_else(|| {
                EncoderError::Load(
                    "the tokenizer's special tokens are not a prefix and a suffix".into(),
                )
            })?;
        let (prefix, suffix) = (with[..at].to_vec(), with[at + bare.len()..].to_vec());
        let span = options
            .max_tokens
            .saturating_sub(prefix.len() + suffix.len());
        if span == 0 || w.overlap >= span || w.max_windows == 0 {
            return Err(EncoderError::Load(format!(
                "windows of {} tokens hold {span} of the text; an overlap of {} leaves no step",
                options.max_tokens, w.overlap
            )));
        }
        let step = span - w.overlap;
        Ok(WindowPlan {
            longest: prefix.len() + suffix.len() + span + step * (w.max_windows - 1),
            prefix,
            suffix,
            span,
            step,
            max_windows: w.max_windows,
            normalize: options.pooling.normalize,
        })
    }

    /// The rows a tokenized text becomes, and each row's text tokens (its weight).
    fn split(&self, ids: &[u32]) -> Vec<(Vec<u32>, usize)> {
        let body =
            &ids[self.prefix.len().min(ids.len())..ids.len().saturating_sub(self.suffix.len())];
        if body.len() <= self.span {
            return vec![(ids.to_vec(), body.len().max(1))];
        }
        let mut rows = Vec::new();
        let mut start = 0;
        while rows.len() < self.max_windows {
            let end = (start + self.span).min(body.len());
            let mut row = self.prefix.clone();
            row.extend_from_slice(&body[start..end]);
            row.extend_from_slice(&self.suffix);
            rows.push((row, end - start));
            if end == body.len() {
                break;
            }
            start += self.step;
        }
        rows
    }
}

fn encode(
    tokenizer: &Tokenizer,
    windows: Option<&WindowPlan>,
    budget: usize,
    replicas: usize,
    texts: &[String],
    work: &mpsc::Sender<BatchJob>,
) -> Result<Encoded, EncoderError> {
    let encodings = tokenizer
        .encode_batch(texts.to_vec(), true)
        .map_err(|e| EncoderError::Tokenize(e.to_string()))?;
    let Some(plan) = windows else {
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        return encode_rows(budget, replicas, &ids, work);
    };
    // Each text's windows are rows; their vectors are pooled back into one per text.
    let split: Vec<Vec<(Vec<u32>, usize)>> =
        encodings.iter().map(|e| plan.split(e.get_ids())).collect();
    let rows: Vec<&[u32]> = split
        .iter()
        .flatten()
        .map(|(row, _)| row.as_slice())
        .collect();
    let encoded = encode_rows(budget, replicas, &rows, work)?;
    let mut vectors = Vec::with_capacity(texts.len());
    let mut token_counts = Vec::with_capacity(texts.len());
    let mut next = 0;
    for windows in &split {
        let parts = &encoded.vectors[next..next + windows.len()];
        token_counts.push(
            encoded.token_counts[next..next + windows.len()]
                .iter()
                .sum(),
        );
        next += windows.len();
        if windows.len() == 1 {
            vectors.push(parts[0].clone());
            continue;
        }
        let total: f64 = windows.iter().map(|(_, n)| *n as f64).sum();
        let mut mean = vec![0f64; parts[0].len()];
        for (vector, (_, n)) in parts.iter().zip(windows) {
            for (m, v) in mean.iter_mut().zip(vector) {
                *m += *v as f64 * *n as f64 / total;
            }
        }
        if plan.normalize {
            let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|v| *v /= norm);
        }
        vectors.push(mean.into_iter().map(|v| v as f32).collect());
    }
    Ok(Encoded {
        pass: None,
        vectors,
        token_counts,
    })
}

/// A `head` classifier on pooled vectors (the windows case): label probabilities per text.
fn run_head(head: &Classifier, mut encoded: Encoded) -> Result<Encoded, EncoderError> {
    let Some(dims) = encoded.vectors.first().map(Vec::len) else {
        return Ok(encoded);
    };
    let flat: Vec<f32> = encoded.vectors.concat();
    let x = Tensor::from_slice(&flat).view([encoded.vectors.len() as i64, dims as i64]);
    let probs = tch::no_grad(|| {
        let logits = head.logits(ClassifierInput::Embeddings(&x), None);
        head.probabilities(&logits)
            .to_kind(Kind::Float)
            .contiguous()
    });
    let labels = head.spec.labels.len();
    let flat =
        Vec::<f32>::try_from(probs.view([-1])).map_err(|e| EncoderError::Model(e.to_string()))?;
    encoded.vectors = flat.chunks(labels).map(<[f32]>::to_vec).collect();
    Ok(encoded)
}

/// Embeds token rows in batches under the budget, spread over the replicas.
fn encode_rows(
    budget: usize,
    replicas: usize,
    ids: &[&[u32]],
    work: &mpsc::Sender<BatchJob>,
) -> Result<Encoded, EncoderError> {
    let token_counts: Vec<usize> = ids.iter().map(|i| i.len()).collect();
    // A pass smaller than replicas × budget (a few requests at inference time) is split evenly,
    // so that every replica gets a share instead of one taking it all.
    let total: usize = token_counts.iter().sum();
    let budget = budget.min(total.div_ceil(replicas.max(1)).max(1));
    let batches = plan_batches(&token_counts, budget);
    let (reply, results) = mpsc::channel();
    for (batch_no, (rows, width, padded)) in batches.iter().enumerate() {
        let mut input = vec![0i64; rows.len() * width];
        let mut mask = vec![0i64; rows.len() * width];
        for (r, &i) in rows.iter().enumerate() {
            for (c, &id) in ids[i].iter().enumerate() {
                input[r * width + c] = id as i64;
                mask[r * width + c] = 1;
            }
        }
        let job = BatchJob {
            input,
            mask,
            rows: rows.len(),
            width: *width,
            padded: *padded,
            reply: reply.clone(),
            batch_no,
        };
        work.send(job).map_err(|_| EncoderError::Stopped)?;
    }
    drop(reply);
    let mut vectors = vec![Vec::new(); ids.len()];
    for _ in 0..batches.len() {
        let (batch_no, out) = results.recv().map_err(|_| EncoderError::Stopped)?;
        for (row, vector) in out?.into_iter().enumerate() {
            vectors[batches[batch_no].0[row]] = vector;
        }
    }
    Ok(Encoded {
        pass: None,
        vectors,
        token_counts,
    })
}

/// What the coordinator runs around the replicas: tokenizing (and cutting into windows) before,
/// pooling windows and a windowed head after.
struct Front {
    tokenizer: Tokenizer,
    windows: Option<WindowPlan>,
    head: Option<Classifier>,
}

fn coordinate(
    front: &Front,
    budget: usize,
    replicas: usize,
    wait: Duration,
    receiver: &mpsc::Receiver<Request>,
    work: &mpsc::Sender<BatchJob>,
) {
    while let Ok(first) = receiver.recv() {
        // Coalesce everything already waiting into one pass.
        // With a batching wait, keep collecting until it passes or the batch is full.
        let mut pending = vec![first];
        let deadline = Instant::now() + wait;
        let mut waiting = pending[0].texts.len();
        while waiting < MAX_COALESCED_TEXTS {
            let more = match receiver.try_recv() {
                Ok(more) => more,
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match receiver.recv_timeout(left) {
                        Ok(more) => more,
                        Err(_) => break,
                    }
                }
            };
            waiting += more.texts.len();
            pending.push(more);
        }
        let all: Vec<String> = pending
            .iter()
            .flat_map(|r| r.texts.iter().cloned())
            .collect();
        let started = Instant::now();
        let encoded = encode(
            &front.tokenizer,
            front.windows.as_ref(),
            budget,
            replicas,
            &all,
            work,
        )
        .and_then(|e| match &front.head {
            Some(head) => run_head(head, e),
            None => Ok(e),
        });
        match encoded {
            Ok(encoded) => {
                let mut pass = Some(PassInfo {
                    texts: all.len(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                let mut offset = 0;
                for request in pending {
                    let n = request.texts.len();
                    let part = Encoded {
                        vectors: encoded.vectors[offset..offset + n].to_vec(),
                        token_counts: encoded.token_counts[offset..offset + n].to_vec(),
                        pass: pass.take(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_budget_and_cover_every_text() {
        let lengths = [5, 40, 40, 40, 40, 40, 40, 40, 40, 12, 12, 7, 300];
        let batches = plan_batches(&lengths, 100);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.0.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for (rows, width, padded) in &batches {
            assert!(
                rows.len() * width <= 100 || rows.len() == 1,
                "{rows:?} x {width}"
            );
            assert_eq!(*padded, rows.iter().any(|&i| lengths[i] != *width));
        }
        assert_eq!(
            batches[0],
            (vec![12], 300, false),
            "an over-long text goes alone"
        );
    }
}
