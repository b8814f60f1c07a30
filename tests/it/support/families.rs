//! Small random models of each encoder family, written by `transformers` in the project venv
//! (tests/python/make_family_model.py), for the parity, finetune and export tests.
#![allow(dead_code)]
use std::path::Path;

/// Every family trainyard runs that has no weights in the registries. `deberta-v3` and
/// `deberta-v2` are both `model_type` `deberta-v2`, with v3's and v2's options.
pub const RANDOM_FAMILIES: &[&str] = &[
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "modernbert",
    "deberta-v3",
    "deberta-v2",
];

/// The `model_type` a random family's config.json has.
pub fn model_type(family: &str) -> &str {
    if family.starts_with("deberta") {
        "deberta-v2"
    } else {
        family
    }
}

/// The venv's python.
pub fn python() -> String {
    let venv = std::env::var("TRAINYARD_VENV").expect("TRAINYARD_VENV (source scripts/env.sh)");
    format!("{venv}/bin/python")
}

/// Runs a script of tests/python with `args`; panics with its stderr when it fails.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) {
    let out = std::process::Command::new(python())
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/python")
                .join(script),
        )
        .args(args)
        .output()
        .expect("the venv's python runs");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a random `family` model into `out` (`base/`, `classifier/`, `reference.json`) and
/// returns the reference outputs.
pub fn make_family_model(family: &str, out: &Path) -> serde_json::Value {
    run_python("make_family_model.py", &[family.as_ref(), out.as_os_str()]);
    let text = std::fs::read_to_string(out.join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}
