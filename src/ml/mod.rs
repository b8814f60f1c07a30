//! Everything that knows tch: the encoders (`encoder`: one trait; `families`: BERT, RoBERTa,
//! DistilBERT, MPNet, ModernBERT, DeBERTa-v2/v3, one file each), the classifier,
//! the training loop, the threads that serve them, and the review queue's out-of-fold
//! probabilities.
pub mod adamw;
pub mod allocator;
pub mod bert;
pub mod classifier;
pub mod deberta;
pub mod distilbert;
pub mod encoder;
pub mod export;
pub mod families;
pub mod modernbert;
pub mod mpnet;
pub mod out_of_fold;
pub mod precision;
pub mod roberta;
pub mod text_encoder;
pub mod trainer;
pub mod vector_rows;

/// Where tensors live (CPU or a CUDA device): the one tch type the rest of trainyard passes
/// around, opaque outside `ml/`.
pub use tch::Device;

/// Whether cuDNN is usable (meaningful only when [`cuda_devices`] is above 0).
pub fn cudnn_available() -> bool {
    tch::Cuda::cudnn_is_available()
}

/// Sets the threads libtorch's CPU kernels use in this process when `device` is the CPU;
/// `threads` 0 means one per available core.
pub fn use_cpu_threads(device: Device, threads: i32) {
    if device == Device::Cpu {
        let threads = if threads > 0 {
            threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
        };
        tch::set_num_threads(threads);
    }
}

/// The libtorch in use: read from the torch wheel's `version.py` beside its `lib/` folder.
pub fn libtorch_version() -> String {
    let from_wheel = std::env::var("TRAINYARD_TORCH_LIB").ok().and_then(|lib| {
        let text =
            std::fs::read_to_string(std::path::Path::new(&lib).join("../version.py")).ok()?;
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        Some(line.split(['"', '\'']).nth(1)?.to_string())
    });
    from_wheel.unwrap_or_else(|| "2.11.0 (the version tch 0.24 is built for)".to_string())
}

/// Number of CUDA devices tch can use (0 when none or when libtorch has no CUDA).
pub fn cuda_devices() -> i64 {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    }
}
