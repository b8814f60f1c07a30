//! The local MiniLM encoder against sentence-transformers' reference embeddings (committed in
//! tests/fixtures, made by scripts/make_minilm_reference.py): max abs difference below 1e-4.
//! And each BERT-shaped family without public weights here (RoBERTa, XLM-RoBERTa) against
//! `transformers` on a small random model that tests/python/make_family_model.py writes:
//! token ids, token states and pooled vectors within 1e-5.
use std::path::Path;

use trainyard::ml::bert::{load_encoder, Pooling, PoolingSpec};
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

/// Writes a random `family` model (base folder, classifier folder, reference outputs) into `out`.
fn make_family_model(family: &str, out: &Path) -> serde_json::Value {
    let venv = std::env::var("TRAINYARD_VENV").expect("TRAINYARD_VENV (source scripts/env.sh)");
    let status = std::process::Command::new(format!("{venv}/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/make_family_model.py"
        ))
        .arg(family)
        .arg(out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the venv's python runs");
    assert!(status.success(), "make_family_model.py {family} failed");
    let text = std::fs::read_to_string(out.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
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
    })
    .map_err(|e| e.to_string())
}

#[test]
fn roberta_families_match_transformers() {
    for family in ["roberta", "xlm-roberta"] {
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
            let (_vs, encoder) = load_encoder(&tmp.path().join(folder), tch::Device::Cpu)
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

        // 66 positions, the first two spent on padding: 64 tokens at most, 65 refused.
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
