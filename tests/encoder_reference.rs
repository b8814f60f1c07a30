//! The local MiniLM encoder against sentence-transformers' reference embeddings (committed in
//! tests/fixtures, made by scripts/make_minilm_reference.py): max abs difference below 1e-4.
use trainyard::ml::text_encoder::{EncoderOptions, TextEncoder};

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
