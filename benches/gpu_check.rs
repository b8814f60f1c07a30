//! GPU readiness check (issue 8 §7): runs trainyard's own ML code on one device and reports
//! whether it works there, as a readable report and one JSON line.
//!
//! Usage: gpu_check --device cpu|cuda --model-dir DIR [--sentences FILE] [--n 2000]
//!        [--batch-size 128] [--token-budget 16384] [--threads 2] [--repeats 3]
//!        [--head-steps 100] [--finetune-steps 20] [--half-smoke 8]
//!        [--dump-embeddings FILE] [--families-dir DIR] [--throughput-only] [--json]
//!
//! DIR holds config.json, tokenizer.json and model.safetensors (MiniLM, or a random BERT of its
//! shape written by scripts/gpu_check_peer.py). Sections:
//!   (a) CUDA as libtorch sees it (is_available, device count, cuDNN);
//!   (b) a `head` classifier trained through `Trainer` on a fixed seeded batch: loss must fall;
//!   (c) a few `finetune` steps (encoder + head) through `Trainer`: loss must fall, the encoder's
//!       weights must move;
//!   (d) agreement: the same weights and batch on CPU and on CUDA (embeddings, finetune logits,
//!       head logits), max abs difference within 1e-4 (fp32). Without CUDA it compares CPU with
//!       1 intra-op thread against CPU with --threads threads, and says so;
//!   (e) an inference batch through `TextEncoder` with the classifier on top, as `serve` runs it;
//!   (f) embedding throughput: the serve path (`TextEncoder`, token-budget batches) and fixed
//!       length-sorted batches of --batch-size (`BertEncoder` directly, like sentence-transformers'
//!       `encode`), fp32 and, on CUDA, fp16 and bf16 (weights converted with `VarStore::set_kind`
//!       and written as safetensors, so that `TextEncoder` loads them in that dtype). On CPU the
//!       half dtypes run only as a smoke test on --half-smoke sentences;
//!   (g) with --families-dir DIR (folders written by tests/python/make_family_model.py): every
//!       encoder family's token states on the device vs the CPU (fp32, 1e-4) and under bf16 /
//!       fp16 autocast vs fp32, and a few finetune steps in bf16 and fp16 whose loss must fall.
//! With --json the report goes to stderr and the JSON line to stdout. Exit status 1 when any
//! check that ran failed, 2 when --device cuda was asked for and libtorch sees no CUDA.
#[path = "gpu_check/families.rs"]
mod families;
#[path = "gpu_check/inference.rs"]
mod inference;
#[path = "gpu_check/training.rs"]
mod training;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tch::Device;

/// fp32 agreement tolerance (max abs difference) for embeddings and logits.
const FP32_TOLERANCE: f64 = 1e-4;
/// Half precision against fp32 on the same device: smallest cosine similarity accepted.
const HALF_MIN_COSINE: f64 = 0.99;
/// Sentences whose embeddings are compared (and dumped for the Python peer).
const COMPARED_SENTENCES: usize = 16;

struct Args {
    device: Device,
    cuda: bool,
    model_dir: PathBuf,
    sentences: Option<PathBuf>,
    n: usize,
    batch_size: usize,
    token_budget: usize,
    threads: i32,
    repeats: usize,
    head_steps: u32,
    finetune_steps: u32,
    half_smoke: usize,
    dump: Option<PathBuf>,
    families_dir: Option<PathBuf>,
    /// Only (a) and (f): the per-family throughput runs of gpu_check.sh.
    throughput_only: bool,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let cuda = match get("--device").as_deref().unwrap_or("cpu") {
        "cpu" => false,
        "cuda" => true,
        other => anyhow::bail!("--device must be cpu or cuda, not {other}"),
    };
    let num = |name: &str, cpu: usize, gpu: usize| -> Result<usize> {
        get(name).map_or(Ok(if cuda { gpu } else { cpu }), |s| {
            s.parse().map_err(|e| anyhow!("{name}: {e}"))
        })
    };
    let model_dir = get("--model-dir")
        .or_else(|| std::env::var("TRAINYARD_LOCAL_MODEL_DIR").ok())
        .ok_or_else(|| anyhow!("--model-dir DIR is required"))?;
    Ok(Args {
        device: if cuda { Device::Cuda(0) } else { Device::Cpu },
        cuda,
        model_dir: model_dir.into(),
        sentences: get("--sentences").map(PathBuf::from),
        n: num("--n", 200, 2000)?,
        batch_size: num("--batch-size", 32, 128)?,
        token_budget: num("--token-budget", 2048, 16384)?,
        threads: num("--threads", 2, 4)? as i32,
        repeats: num("--repeats", 2, 5)?,
        head_steps: num("--head-steps", 40, 100)? as u32,
        finetune_steps: num("--finetune-steps", 6, 20)? as u32,
        half_smoke: num("--half-smoke", 8, 0)?,
        dump: get("--dump-embeddings").map(PathBuf::from),
        families_dir: get("--families-dir").map(PathBuf::from),
        throughput_only: argv.iter().any(|a| a == "--throughput-only"),
        json: argv.iter().any(|a| a == "--json"),
    })
}

/// The report: readable lines as they come, and the JSON sections.
struct Report {
    to_stderr: bool,
    json: serde_json::Map<String, Value>,
    failures: Vec<String>,
    skipped: Vec<String>,
}

impl Report {
    fn say(&self, line: impl AsRef<str>) {
        if self.to_stderr {
            eprintln!("{}", line.as_ref());
        } else {
            println!("{}", line.as_ref());
        }
    }
    fn check(&mut self, ok: bool, what: String) {
        self.say(format!("  [{}] {what}", if ok { "ok" } else { "FAIL" }));
        if !ok {
            self.failures.push(what);
        }
    }
    fn skip(&mut self, what: String) {
        self.say(format!("  [skipped] {what}"));
        self.skipped.push(what);
    }
    /// Runs one section; an error or a panic (tch panics on libtorch errors) fails that section
    /// and the rest still run.
    fn section(&mut self, key: &str, title: &str, f: impl FnOnce(&mut Report) -> Result<Value>) {
        self.say(format!("\n== {title}"));
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let outcome = outcome.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("panicked: {message}"))
        });
        let value = match outcome {
            Ok(mut v) => {
                v["seconds"] = json!(round(started.elapsed().as_secs_f64(), 3));
                v
            }
            Err(e) => {
                self.check(false, format!("{title}: error: {e:#}"));
                json!({"error": format!("{e:#}")})
            }
        };
        self.json.insert(key.into(), value);
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Makes sure libtorch's CUDA half is loaded before tch is touched: the build script links it
/// with --no-as-needed, and this covers a binary linked without it (a CPU-only libtorch at
/// build time, the device's CUDA libtorch on LD_LIBRARY_PATH at run time).
fn preload_libtorch_cuda() -> String {
    let name = c"libtorch_cuda.so";
    // SAFETY: dlopen/dlerror with a valid NUL-terminated name; the handle is kept for the
    // process's life (never dlclosed).
    unsafe {
        if !libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD).is_null() {
            return "linked (loaded at start-up through DT_NEEDED)".into();
        }
        if !libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
            return "dlopened by gpu_check at start-up".into();
        }
        let err = libc::dlerror();
        let why = if err.is_null() {
            "unknown error".into()
        } else {
            std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned()
        };
        format!("not loaded: {why}")
    }
}

fn cuda_section(r: &mut Report, args: &Args, libtorch_cuda: &str) -> Result<Value> {
    let available = tch::Cuda::is_available();
    let count = tch::Cuda::device_count();
    let cudnn = tch::Cuda::cudnn_is_available();
    let has_cuda = tch::utils::has_cuda();
    // These throw inside libtorch when CUDA is absent: only asked for when it is there.
    let (cudnn_version, cudart_version) = if available {
        (
            std::panic::catch_unwind(tch::utils::version_cudnn).ok(),
            std::panic::catch_unwind(tch::utils::version_cudart).ok(),
        )
    } else {
        (None, None)
    };
    r.say(format!("  libtorch_cuda.so: {libtorch_cuda}"));
    r.say(format!(
        "  tch::Cuda::is_available() = {available}, device_count = {count}, cudnn = {cudnn}, \
         at::hasCUDA() = {has_cuda}, cuDNN {cudnn_version:?}, CUDA runtime {cudart_version:?}"
    ));
    r.say(format!(
        "  libtorch {}, CPU intra-op threads {}",
        trainyard::ml::libtorch_version(),
        tch::get_num_threads()
    ));
    if args.cuda {
        r.check(available && count > 0, "CUDA visible to tch".into());
    } else {
        r.say("  (--device cpu: CUDA is reported, not required)");
    }
    Ok(
        json!({"available": available, "device_count": count, "cudnn": cudnn,
              "at_has_cuda": has_cuda, "cudnn_version": cudnn_version,
              "cudart_version": cudart_version, "libtorch_cuda": libtorch_cuda,
              "libtorch": trainyard::ml::libtorch_version()}),
    )
}

/// Deterministic 20-40 word sentences when no --sentences file is given.
fn generated_sentences(n: usize) -> Vec<String> {
    let words = "the a of and to in is was for on that with as by at from this it be are have \
        not or had but one all were we when there can an your which their said if do will each \
        about how up out them then she many some so these would other into has more her two like \
        him see time could no make than first been its who now people my made over did down only \
        way find use may water long little very after words called just where most know"
        .split_whitespace()
        .collect::<Vec<_>>();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    (0..n)
        .map(|_| {
            let len = rng.random_range(20..=40);
            let s: Vec<&str> = (0..len)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect();
            format!("{}.", s.join(" "))
        })
        .collect()
}

fn main() {
    // Before any tch call: libtorch registers its CUDA hooks when libtorch_cuda.so loads.
    let libtorch_cuda = preload_libtorch_cuda();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpu_check: {e:#}");
            std::process::exit(64);
        }
    };
    let mut r = Report {
        to_stderr: args.json,
        json: Default::default(),
        failures: Vec::new(),
        skipped: Vec::new(),
    };
    let started = Instant::now();
    r.say(format!(
        "trainyard gpu_check: device {:?}, model {}",
        args.device,
        args.model_dir.display()
    ));
    r.section("cuda", "(a) CUDA as tch sees it", |r| {
        cuda_section(r, &args, &libtorch_cuda)
    });
    let cuda_missing = args.cuda && !tch::Cuda::is_available();
    if !cuda_missing {
        let sentences = match &args.sentences {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| {
                    t.lines()
                        .filter(|l| !l.trim().is_empty())
                        .take(args.n)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_else(|e| {
                    r.check(false, format!("reading {}: {e}", path.display()));
                    Vec::new()
                }),
            None => generated_sentences(args.n),
        };
        let work = std::env::temp_dir().join(format!("trainyard_gpu_check_{}", std::process::id()));
        let mut trained = None;
        tch::set_num_threads(args.threads);
        if args.throughput_only {
            r.section("throughput", "(f) local embedding throughput", |r| {
                inference::throughput_section(r, &args, &sentences, &work)
            });
            let _ = std::fs::remove_dir_all(&work);
            finish(r, &args, started, false);
        }
        r.section("head", "(b) head classifier trained on the device", |r| {
            training::head_section(r, &args, &mut trained)
        });
        if let Some(t) = trained.as_mut() {
            r.section(
                "finetune",
                "(c) finetune steps (encoder + head) on the device",
                |r| training::finetune_section(r, &args, t),
            );
        }
        match trained.as_ref().filter(|t| !t.ft_blob.is_empty()) {
            Some(t) => {
                r.section(
                    "agreement",
                    "(d) same weights, same batch: CPU vs device",
                    |r| training::agreement_section(r, &args, t, &sentences),
                );
                r.section(
                    "inference",
                    "(e) inference batch through TextEncoder (the serve path)",
                    |r| inference::inference_section(r, &args, t, &sentences),
                );
            }
            None => r.check(
                false,
                "(d) and (e) need the models trained in (b) and (c)".into(),
            ),
        }
        r.section("throughput", "(f) local embedding throughput", |r| {
            inference::throughput_section(r, &args, &sentences, &work)
        });
        match &args.families_dir {
            Some(dir) => r.section(
                "families",
                "(g) every encoder family: fp32 parity, bf16/fp16 autocast, half-precision finetune",
                |r| families::families_section(r, &args, dir),
            ),
            None => r.skip("(g) families: no --families-dir".into()),
        }
        let _ = std::fs::remove_dir_all(&work);
    } else {
        r.check(
            false,
            "--device cuda asked for, but tch::Cuda::is_available() is false: nothing else ran"
                .into(),
        );
    }
    finish(r, &args, started, cuda_missing)
}

/// The closing line, the JSON, and the exit status.
fn finish(mut r: Report, args: &Args, started: Instant, cuda_missing: bool) -> ! {
    let ok = r.failures.is_empty();
    r.say(format!(
        "\n{} in {:.1}s: {} failed, {} skipped",
        if ok { "PASS" } else { "FAIL" },
        started.elapsed().as_secs_f64(),
        r.failures.len(),
        r.skipped.len()
    ));
    let mut out = std::mem::take(&mut r.json);
    out.insert("ok".into(), json!(ok));
    out.insert(
        "device".into(),
        json!(if args.cuda { "cuda" } else { "cpu" }),
    );
    out.insert("failures".into(), json!(r.failures));
    out.insert("skipped".into(), json!(r.skipped));
    out.insert(
        "seconds".into(),
        json!(round(started.elapsed().as_secs_f64(), 2)),
    );
    if args.json {
        println!("{}", Value::Object(out));
    } else {
        println!("GPU_CHECK_JSON {}", Value::Object(out));
    }
    std::process::exit(if cuda_missing {
        2
    } else if ok {
        0
    } else {
        1
    });
}
