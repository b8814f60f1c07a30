//! Process-wide malloc settings for CPU inference: keep libtorch's large activation buffers in
//! the heap instead of a fresh mmap (and page faults) per tensor.
//!
//! libtorch allocates CPU tensors with `posix_memalign`. glibc serves blocks above its mmap
//! threshold (128 KiB, growing dynamically) with a fresh `mmap` that is unmapped on free, so a
//! [2,048 tokens × 1,536] intermediate of MiniLM (12 MiB) page-faults in every layer of every
//! batch. Raising the threshold to glibc's maximum (32 MiB) and the trim threshold above the
//! working set keeps those pages mapped and reused. Measured on the 2-core development machine:
//! about 2.5% more sentences/s. The cost is that the heap stays at its high-water mark (tens of
//! MiB per replica), which a long-running server reaches anyway.
//!
//! That cost compounds when a served model is replaced: each replica thread allocates in its
//! own malloc arena, and the old version's parameters, freed when its threads end, stay mapped
//! in those arenas (a trim threshold of 512 MiB is never reached), while the new version's
//! threads fill other arenas. Measured in the 10-minute soak (2026-12-03): `serve`'s live heap
//! stayed at 329 MB across 18 promotions while glibc held 642, then 787, then 813 MB. So an
//! encoder that stops hands its free pages back with [`release_free_memory`].
use std::sync::Once;

/// glibc refuses mmap thresholds above half its per-arena heap size (32 MiB on 64-bit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 512 << 20;

/// Applies the settings once per process (a no-op outside glibc).
pub fn tune_for_inference() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc.
        unsafe {
            let ok = libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1;
            if !ok {
                tracing::debug!("mallopt refused the inference allocator settings");
            }
        }
    });
}

/// Returns the free pages of every malloc arena to the OS (`malloc_trim(0)`, which ignores the
/// trim threshold and also releases free pages inside the heaps). Called when a model's
/// threads have dropped it, and by a worker when a training run's thread is done with its
/// tensors; a no-op outside glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
