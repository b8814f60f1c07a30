//! Build script: embeds an rpath to the venv's libtorch, keeps `libtorch_cuda.so` linked, and
//! rebuilds the crate when a migration is added.
//!
//! tch finds libtorch through torch-sys at build time, but the loader needs the same folder at
//! run time; an rpath makes `trainyard` start without `LD_LIBRARY_PATH`. When the wheel carries
//! CUDA, the linker's default `--as-needed` would drop `libtorch_cuda.so` (nothing references
//! it by symbol) and tch would report no CUDA device even on a GPU machine.
use std::path::PathBuf;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    if let Ok(dir) = std::env::var("TRAINYARD_TORCH_LIB") {
        return Some(PathBuf::from(dir));
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=TRAINYARD_TORCH_LIB");
    // `sqlx::migrate!` embeds migrations/ at compile time: a new migration alone must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let Some(lib) = torch_lib_dir() else { return };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
