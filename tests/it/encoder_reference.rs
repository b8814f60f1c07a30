//! The local MiniLM encoder against sentence-transformers' reference embeddings (committed in
//! tests/fixtures, made by scripts/make_minilm_reference.py): max abs difference below 1e-4.
//! And each family without public weights here (RoBERTa, XLM-RoBERTa, DistilBERT, MPNet) against
//! `transformers` on a small random model that tests/python/make_family_model.py writes:
//! token ids, token states and pooled vectors within 1e-5.
use crate::support::families;

use std::path::Path;

use families::{make_family_model, run_python, RANDOM_FAMILIES};
use trainyard::ml::encoder::{load_encoder, Pooling, PoolingSpec};
use trainyard::ml::text_encoder::{load_tokenizer, EncoderOptions, TextEncoder};

fn encoder(max_tokens_per_batch: usize) -> TextEncoder {
    let dir = std::env::var("TRAINYARD_LOCAL_MODEL_DIR")
        .expect("TRAINYARD_LOCAL_MODEL_DIR (source scripts/env.sh)");
    TextEncoder::start(EncoderOptions {
        model_dir: dir.into(),
        max_tokens: 256,
        max_tokens_per_batch,
        threads: 2,
        device: tch::Device::Cpu,
        pooling: Default::default(),
        classifier: None,
        batch_wait: std::time::Duration::ZERO,
        windows: None,
    })
    .expect("local model loads")
}

fn reference() -> (Vec<String>, Vec<Vec<f32>>, Vec<usize>) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/minilm_reference.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sentences = serde_json::from_value(v["sentences"].clone()).unwrap();
    let embeddings = serde_json::from_value(v["embeddings"].clone()).unwrap();
    let counts = serde_json::from_value(v["token_counts"].clone()).unwrap();
    (sentences, embeddings, counts)
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn matches_sentence_transformers_within_1e_4() {
    let (sentences, expected, counts) = reference();
    let enc = encoder(8192);
    let got = enc.encode_blocking(sentences.clone()).unwrap();
    assert_eq!(
        got.token_counts, counts,
        "tokenisation (truncation at 256) matches"
    );
    assert!(got.vectors.iter().all(|v| v.len() == 384));
    let diff = max_abs_diff(&got.vectors, &expected);
    println!("max abs diff vs sentence-transformers: {diff:e}");
    assert!(diff < 1e-4, "max abs diff {diff}");
}

#[test]
fn batching_does_not_change_results() {
    let (sentences, expected, _) = reference();
    // A budget of 300 tokens forces one text per pass for the long ones and mixes the rest.
    let small = encoder(300);
    let one_by_one: Vec<Vec<f32>> = sentences
        .iter()
        .map(|s| {
            small
                .encode_blocking(vec![s.clone()])
                .unwrap()
                .vectors
                .remove(0)
        })
        .collect();
    let batched = small.encode_blocking(sentences.clone()).unwrap().vectors;
    assert!(max_abs_diff(&one_by_one, &batched) < 1e-5);
    assert!(max_abs_diff(&batched, &expected) < 1e-4);
    for v in &batched {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "L2-normalised, got {norm}");
    }
}

fn family_encoder(dir: &Path, max_tokens: usize) -> Result<TextEncoder, String> {
    TextEncoder::start(EncoderOptions {
        model_dir: dir.into(),
        max_tokens,
        max_tokens_per_batch: 4096,
        threads: 1,
        device: tch::Device::Cpu,
        pooling: PoolingSpec {
            pooling: Pooling::Mean,
            normalize: false,
        },
        classifier: None,
        batch_wait: std::time::Duration::ZERO,
        windows: None,
    })
    .map_err(|e| e.to_string())
}

#[test]
fn encoder_families_match_transformers() {
    for &family in RANDOM_FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        let reference = make_family_model(family, tmp.path());
        let sentences: Vec<String> =
            serde_json::from_value(reference["sentences"].clone()).unwrap();
        let ids: Vec<Vec<u32>> = serde_json::from_value(reference["ids"].clone()).unwrap();
        let hidden: Vec<Vec<Vec<f32>>> =
            serde_json::from_value(reference["hidden"].clone()).unwrap();
        let means: Vec<Vec<f32>> = serde_json::from_value(reference["mean"].clone()).unwrap();
        assert!(reference["batch_hidden_max_abs_diff"].as_f64().unwrap() < 1e-5);
        let base = tmp.path().join("base");

        // The same ids from trainyard's tokenizer.
        let tokenizer = load_tokenizer(&base, 64).unwrap();
        for (s, want) in sentences.iter().zip(&ids) {
            let got = tokenizer.encode(s.as_str(), true).unwrap();
            assert_eq!(got.get_ids(), want.as_slice(), "{family}: ids of {s:?}");
        }

        // Token states of a right-padded batch (padded with 0, as trainyard pads), from the
        // encoder folder and from the `*ForSequenceClassification` folder (`roberta.` names).
        let width = ids.iter().map(Vec::len).max().unwrap();
        let mut input = vec![0i64; ids.len() * width];
        let mut mask = vec![0i64; ids.len() * width];
        for (r, row) in ids.iter().enumerate() {
            for (c, id) in row.iter().enumerate() {
                input[r * width + c] = *id as i64;
                mask[r * width + c] = 1;
            }
        }
        let shape = [ids.len() as i64, width as i64];
        let input = tch::Tensor::from_slice(&input).view(shape);
        let mask = tch::Tensor::from_slice(&mask).view(shape);
        for folder in ["base", "classifier"] {
            let (_vs, encoder, _config) = load_encoder(&tmp.path().join(folder), tch::Device::Cpu)
                .unwrap_or_else(|e| panic!("{family} {folder}: {e}"));
            let states = encoder.hidden_states(&input, &mask, true);
            let mut worst = 0f32;
            for (r, rows) in hidden.iter().enumerate() {
                for (c, want) in rows.iter().enumerate() {
                    let got = Vec::<f32>::try_from(states.get(r as i64).get(c as i64)).unwrap();
                    for (g, w) in got.iter().zip(want) {
                        worst = worst.max((g - w).abs());
                    }
                }
            }
            println!("{family} {folder}: token states max abs diff {worst:e}");
            assert!(
                worst < 1e-5,
                "{family} {folder}: token states differ by {worst}"
            );
        }

        // Pooled vectors through the serving path (batched, padded, mean without L2).
        let encoder = family_encoder(&base, 64).unwrap();
        let got = encoder.encode_blocking(sentences.clone()).unwrap();
        assert_eq!(
            got.token_counts,
            ids.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let diff = max_abs_diff(&got.vectors, &means);
        println!("{family}: mean-pooled max abs diff {diff:e}");
        assert!(diff < 1e-5, "{family}: pooled vectors differ by {diff}");

        // 64 tokens at most (RoBERTa and MPNet spend two of their 66 positions on padding), 65
        // refused.
        let err = family_encoder(&base, 65)
            .err()
            .expect("65 tokens are refused");
        assert!(err.contains("max_tokens 65 is more than 64"), "{err}");

        // Without tokenizer.json (a SentencePiece folder ships `spm.model`): refused, with
        // the command that writes one.
        std::fs::remove_file(base.join("tokenizer.json")).unwrap();
        let err = family_encoder(&base, 64)
            .err()
            .expect("no tokenizer.json is refused");
        assert!(
            err.contains("has no tokenizer.json: write one with python -c")
                && err.contains("save_pretrained"),
            "{err}"
        );
    }
}

/// Named tensors, as a checkpoint or a `VarStore` lists them.
type Named = Vec<(String, tch::Tensor)>;

/// One finetune step from the same weights on the same batch (dropout off): the loss and every
/// updated weight equal a plain PyTorch loop's (tests/python/finetune_step.py) within 1e-4, with
/// layer-wise learning-rate decay, weight decay (none on biases and norms) and clipping on, for
/// BERT (the real MiniLM) and every random family. The same step as 3 accumulated batches of 2
/// under a 24-token budget (micro-batches of one text) gives the same weights.
#[test]
fn one_finetune_step_matches_pytorch() {
    use trainyard::ml::trainer::Trainer;
    let fixture = StepFixture::new();
    let data = &fixture.data;
    for (family, dir) in &fixture.folders {
        let spec = step_spec(dir);
        let mut hp = step_hyperparameters();
        let layouts = [(6usize, 1u32, 4096usize), (2, 3, 24)];
        // (loss, weights after the step, weights after the step without layer decay)
        let mut reference: Option<(f64, Named, Named)> = None;
        for (batch, accumulate, budget) in layouts {
            hp.batch_size = batch;
            hp.gradient_accumulation_steps = accumulate;
            hp.max_batch_tokens = budget;
            let mut trainer =
                Trainer::new(spec.clone(), hp.clone(), data, Some(dir), tch::Device::Cpu).unwrap();
            assert_eq!(trainer.steps_per_epoch, 1, "one optimizer step");
            if reference.is_none() {
                let out = fixture.pytorch_step(family, dir, &trainer, &hp);
                let loss: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(out.join("step.json")).unwrap())
                        .unwrap();
                let read = |name: &str| tch::Tensor::read_safetensors(out.join(name)).unwrap();
                reference = Some((
                    loss["loss"].as_f64().unwrap(),
                    read("after.safetensors"),
                    read("after_no_decay.safetensors"),
                ));
            }
            let (want_loss, after, plain) = reference.as_ref().unwrap();
            let loss = trainer.run_epoch(1, &mut |_| true).unwrap();
            let mine: std::collections::HashMap<String, tch::Tensor> =
                trainer.model.saved_variables().into_iter().collect();
            let worst = |other: &[(String, tch::Tensor)]| -> (f64, String) {
                let mut worst = (0f64, String::new());
                let mut compared = 0;
                for (name, want) in other {
                    let Some(got) = mine.get(name) else {
                        continue; // the pooler trainyard does not run
                    };
                    compared += 1;
                    let d = (got - want).abs().max().double_value(&[]);
                    if d > worst.0 {
                        worst = (d, name.clone());
                    }
                }
                assert_eq!(
                    compared,
                    mine.len(),
                    "{family}: every trainyard tensor compared"
                );
                worst
            };
            let (diff, at) = worst(after);
            let (plain_diff, _) = worst(plain);
            println!(
                "{family} (batch {batch} x {accumulate}, {budget} tokens): loss {loss:.6} vs {want_loss:.6}, \
                 weights max abs diff {diff:e} ({at}); against the step without layer decay {plain_diff:e}"
            );
            assert!(
                (loss - want_loss).abs() < 1e-4,
                "{family}: loss {loss} vs {want_loss}"
            );
            assert!(diff < 1e-4, "{family}: `{at}` differs by {diff}");
            assert!(
                plain_diff > 1e-3,
                "{family}: the layer decay shows in the weights ({plain_diff})"
            );
        }
    }
}

/// The models, sentences and targets of the one-step tests: the real MiniLM and every random
/// family, six sentences, two labels.
struct StepFixture {
    tmp: tempfile::TempDir,
    folders: Vec<(String, std::path::PathBuf)>,
    sentences: Vec<String>,
    targets: Vec<Vec<Option<bool>>>,
    data: trainyard::ml::trainer::SplitData,
}

impl StepFixture {
    fn new() -> StepFixture {
        let minilm = std::env::var("TRAINYARD_LOCAL_MODEL_DIR").expect("TRAINYARD_LOCAL_MODEL_DIR");
        let tmp = tempfile::tempdir().unwrap();
        let mut folders = vec![("bert".to_string(), std::path::PathBuf::from(minilm))];
        let mut sentences: Vec<String> = Vec::new();
        for &family in RANDOM_FAMILIES {
            let out = tmp.path().join(family);
            let reference = make_family_model(family, &out);
            sentences = serde_json::from_value(reference["sentences"].clone()).unwrap();
            folders.push((family.to_string(), out.join("base")));
        }
        let targets: Vec<Vec<Option<bool>>> = [[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]]
            .iter()
            .map(|r| r.iter().map(|&v| Some(v == 1)).collect())
            .collect();
        let data = trainyard::ml::trainer::SplitData {
            inputs: trainyard::ml::trainer::SplitInputs::Texts(sentences.clone()),
            targets: targets.clone(),
        };
        StepFixture {
            tmp,
            folders,
            sentences,
            targets,
            data,
        }
    }

    /// Runs tests/python/finetune_step.py from `trainer`'s initial head with `hp`; returns the
    /// folder it wrote into.
    fn pytorch_step(
        &self,
        family: &str,
        dir: &Path,
        trainer: &trainyard::ml::trainer::Trainer,
        hp: &trainyard::ml::trainer::Hyperparameters,
    ) -> std::path::PathBuf {
        let vars = trainer.model.vs.variables();
        let as_json = |name: &str| -> serde_json::Value {
            let t = &vars[name];
            let flat = Vec::<f32>::try_from(t.view([-1])).unwrap();
            match t.size().as_slice() {
                [rows, cols] => serde_json::json!(flat
                    .chunks(*cols as usize)
                    .take(*rows as usize)
                    .map(|c| c.to_vec())
                    .collect::<Vec<_>>()),
                _ => serde_json::json!(flat),
            }
        };
        let out = self
            .tmp
            .path()
            .join(format!("{family}-step-{}", hp.precision.name()));
        std::fs::create_dir_all(&out).unwrap();
        let step = serde_json::json!({
            "model_dir": dir,
            "texts": self.sentences,
            "targets": self.targets.iter().map(|r| r.iter().map(|v| u8::from(*v == Some(true))).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "head": {"weight": as_json("classifier.out.weight"), "bias": as_json("classifier.out.bias")},
            "max_tokens": 64,
            "learning_rate": hp.learning_rate,
            "encoder_learning_rate": hp.encoder_learning_rate,
            "layer_lr_decay": hp.layer_lr_decay,
            "weight_decay": hp.weight_decay,
            "max_grad_norm": hp.max_grad_norm,
            "precision": hp.precision.name(),
        });
        let spec_path = out.join("spec.json");
        std::fs::write(&spec_path, step.to_string()).unwrap();
        run_python(
            "finetune_step.py",
            &[spec_path.as_os_str(), out.as_os_str()],
        );
        out
    }
}

/// A linear multi-label head on mean-pooled states of `dir`'s encoder, dropout off.
fn step_spec(dir: &Path) -> trainyard::ml::classifier::ClassifierSpec {
    use trainyard::ml::classifier::{ClassifierSpec, TrainMode};
    let config =
        trainyard::ml::encoder::EncoderConfig::from_file(&dir.join("config.json")).unwrap();
    ClassifierSpec {
        mode: TrainMode::Finetune,
        task: trainyard::datasets::TaskType::MultiLabel,
        labels: vec!["a".into(), "b".into()],
        input_dim: config.shape.hidden_size,
        hidden_size: 0,
        dropout: 0.0,
        max_tokens: 64,
        pooling: Default::default(),
        base_model: None,
    }
}

/// One epoch of one step, with decay, clipping and layer-wise decay on.
fn step_hyperparameters() -> trainyard::ml::trainer::Hyperparameters {
    use trainyard::ml::classifier::TrainMode;
    let mut hp = trainyard::ml::trainer::Hyperparameters::defaults_for(TrainMode::Finetune);
    hp.epochs = 1;
    hp.warmup_ratio = 0.0;
    hp.pos_weight = false;
    // Adam's first step moves a weight by about the learning rate whatever its gradient,
    // so a gradient that is zero up to rounding can move it either way: 2e-3 keeps that
    // noise (about 1% of the rate) well under the tolerance.
    hp.learning_rate = 2e-3;
    hp.encoder_learning_rate = 2e-3;
    hp.weight_decay = 0.1;
    hp.max_grad_norm = 1.0;
    hp.layer_lr_decay = 0.5;
    hp.max_tokens = 64;
    hp.batch_size = 6;
    hp
}

/// `precision = bf16 | fp16` (CPU autocast here; the same code path as CUDA's): for the real
/// MiniLM and every random family, one step's loss and every gradient the optimizer sees
/// (unscaled and clipped) equal transformers' under `torch.autocast` + `GradScaler`
/// (tests/python/finetune_step.py) within bf16's and fp16's rounding, while differing from the
/// fp32 step's gradients (autocast really ran); then a few steps in each lower the loss.
#[test]
fn mixed_precision_steps_match_pytorch_autocast() {
    use trainyard::ml::precision::Precision;
    use trainyard::ml::trainer::Trainer;
    let fixture = StepFixture::new();
    let grads = |trainer: &Trainer| -> std::collections::HashMap<String, tch::Tensor> {
        trainer
            .model
            .saved_variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad()))
            .collect()
    };
    for (family, dir) in &fixture.folders {
        let spec = step_spec(dir);
        let mut hp = step_hyperparameters();
        let mut fp32 = Trainer::new(
            spec.clone(),
            hp.clone(),
            &fixture.data,
            Some(dir),
            tch::Device::Cpu,
        )
        .unwrap();
        fp32.run_epoch(1, &mut |_| true).unwrap();
        let fp32_grads = grads(&fp32);
        // Measured 2026-12-07 (2-core dev machine): loss within 5.6e-5 (bf16) and 5e-6 (fp16),
        // gradients within 5.3e-3 and 1.7e-3 of the largest entry.
        for (precision, loss_tol, grad_tol) in
            [(Precision::Bf16, 1e-3, 2e-2), (Precision::Fp16, 1e-4, 1e-2)]
        {
            hp.precision = precision;
            let mut trainer = Trainer::new(
                spec.clone(),
                hp.clone(),
                &fixture.data,
                Some(dir),
                tch::Device::Cpu,
            )
            .unwrap();
            let out = fixture.pytorch_step(family, dir, &trainer, &hp);
            let want: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("step.json")).unwrap())
                    .unwrap();
            let want_loss = want["loss"].as_f64().unwrap();
            let loss = trainer.run_epoch(1, &mut |_| true).unwrap();
            let reference = tch::Tensor::read_safetensors(out.join("grads.safetensors")).unwrap();
            let mine = grads(&trainer);
            // Errors relative to the largest gradient entry of the model (a gradient that is
            // zero but for rounding, such as a key bias's, has no scale of its own).
            let size = reference
                .iter()
                .map(|(_, g)| g.abs().max().double_value(&[]))
                .fold(1e-12, f64::max);
            let (mut worst, mut worst_at, mut from_fp32) = (0f64, String::new(), 0f64);
            let mut compared = 0;
            for (name, want) in &reference {
                let Some(got) = mine.get(name) else { continue };
                compared += 1;
                let d = (got - want).abs().max().double_value(&[]) / size;
                if d > worst {
                    (worst, worst_at) = (d, name.clone());
                }
                let f = (&fp32_grads[name] - want).abs().max().double_value(&[]) / size;
                from_fp32 = from_fp32.max(f);
            }
            println!(
                "{family} {}: loss {loss:.6} vs {want_loss:.6}; gradients within {worst:.2e} of \
                 PyTorch's relative to the largest entry ({worst_at}), fp32's within \
                 {from_fp32:.2e}; PyTorch skipped: {}",
                precision.name(),
                want["skipped"]
            );
            assert_eq!(compared, mine.len(), "{family}: every gradient compared");
            assert_eq!(
                want["skipped"], false,
                "{family}: PyTorch's scaler kept the step"
            );
            assert!(
                (loss - want_loss).abs() < loss_tol,
                "{family} {precision:?}: loss {loss} vs {want_loss}"
            );
            assert!(
                worst < grad_tol,
                "{family} {precision:?}: `{worst_at}` off by {worst}"
            );
            assert!(
                from_fp32 > 1e-4,
                "{family} {precision:?}: autocast left the gradients fp32's ({from_fp32})"
            );
        }
    }
    // A few steps on the real MiniLM in each precision: the loss falls.
    let (_, minilm) = &fixture.folders[0];
    for precision in [Precision::Bf16, Precision::Fp16] {
        let mut hp = step_hyperparameters();
        hp.precision = precision;
        hp.epochs = 8;
        hp.batch_size = 3;
        hp.learning_rate = 1e-2;
        hp.encoder_learning_rate = 1e-4;
        let mut trainer = Trainer::new(
            step_spec(minilm),
            hp,
            &fixture.data,
            Some(minilm),
            tch::Device::Cpu,
        )
        .unwrap();
        let losses: Vec<f64> = (1..=8)
            .map(|epoch| trainer.run_epoch(epoch, &mut |_| true).unwrap())
            .collect();
        println!("MiniLM {}: epoch losses {losses:.4?}", precision.name());
        assert!(
            losses[7] < losses[0] * 0.7,
            "{precision:?}: the loss falls: {losses:?}"
        );
    }
}

/// `long_texts = "windows"` on the real MiniLM, cut to 16 tokens so that ordinary sentences
/// span several windows: each text's vector equals plain `transformers` run window by window
/// (tests/python/window_reference.py) within 1e-4; a text that fits one window is embedded as
/// when cutting; the windowed vector of a long text differs from its cut one.
#[test]
fn long_texts_as_windows_match_transformers() {
    use trainyard::ml::text_encoder::Windows;
    let dir = std::env::var("TRAINYARD_LOCAL_MODEL_DIR").expect("TRAINYARD_LOCAL_MODEL_DIR");
    let texts: Vec<String> = vec![
        "ok".into(),
        "The parcel arrived two weeks late and the box was crushed on one side, so I asked for a refund and waited another month for it.".into(),
        "Quarterly numbers look fine; revenue grew 4% while costs stayed flat across every region we track, except the north, where a new warehouse opened.".repeat(3),
    ];
    let windows = Windows {
        overlap: 4,
        max_windows: 5,
    };
    let start = |windows: Option<Windows>| {
        TextEncoder::start(EncoderOptions {
            model_dir: dir.clone().into(),
            max_tokens: 16,
            max_tokens_per_batch: 4096,
            threads: 1,
            device: tch::Device::Cpu,
            pooling: PoolingSpec::default(),
            classifier: None,
            batch_wait: std::time::Duration::ZERO,
            windows,
        })
        .unwrap()
    };
    let windowed = start(Some(windows)).encode_blocking(texts.clone()).unwrap();
    let cut = start(None).encode_blocking(texts.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (inp, out) = (tmp.path().join("in.json"), tmp.path().join("out.json"));
    std::fs::write(&inp, serde_json::to_string(&texts).unwrap()).unwrap();
    run_python(
        "window_reference.py",
        &[
            std::ffi::OsStr::new(&dir),
            "16".as_ref(),
            "4".as_ref(),
            "5".as_ref(),
            inp.as_os_str(),
            out.as_os_str(),
        ],
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(reference["vectors"].clone()).unwrap();
    let counts: Vec<usize> = serde_json::from_value(reference["windows"].clone()).unwrap();
    assert_eq!(counts[0], 1);
    assert!(
        counts[1] >= 2 && counts[2] == 5,
        "windows per text: {counts:?}"
    );
    let diff = max_abs_diff(&windowed.vectors, &want);
    println!("windows {counts:?}: max abs diff vs transformers {diff:e}");
    assert!(diff < 1e-4, "windowed vectors differ by {diff}");
    let one = max_abs_diff(&windowed.vectors[..1], &cut.vectors[..1]);
    assert!(
        one < 1e-5,
        "one window is the cut text (up to batching: {one})"
    );
    let far = max_abs_diff(&windowed.vectors[1..], &cut.vectors[1..]);
    assert!(
        far > 1e-2,
        "long texts are more than their first window ({far})"
    );
}
