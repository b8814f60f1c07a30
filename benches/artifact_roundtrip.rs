//! Round-trips one large artifact (2 GiB by default) through `artifacts`: written in chunks in
//! one transaction, dropped from memory, read back and checked byte for byte. Prints the time
//! and the peak RSS of each half (the peak is reset between them), to show that the process
//! holds one copy of the bytes plus one chunk, never two copies.
use std::time::Instant;

use sqlx::PgPool;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn reset_peak() {
    // Linux: writing 5 resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(0xcbf29ce484222325u64, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100000001b3)
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::args().nth(1).map_or(Ok(2048), |s| s.parse())?;
    let url = std::env::var("DATABASE_URL")?;
    let pool = PgPool::connect(&url).await?;
    trainyard::db::migrate(&pool).await?;
    let size = mib << 20;
    println!("RSS before the artifact exists: {:.0} MB", peak_rss_mb());
    let chunk = trainyard::artifacts::chunk_bytes();
    let mut bytes: Vec<u8> = Vec::with_capacity(size);
    for i in 0..size / 8 {
        bytes.extend_from_slice(&(i as u64).wrapping_mul(0x9E3779B97F4A7C15).to_le_bytes());
    }
    let want = checksum(&bytes);
    println!(
        "artifact of {mib} MiB in {} chunks of {} MiB; RSS after building it: {:.0} MB",
        size.div_ceil(chunk),
        chunk >> 20,
        peak_rss_mb()
    );
    reset_peak();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let id = trainyard::artifacts::write(&mut tx, &bytes).await?;
    tx.commit().await?;
    let write_s = started.elapsed().as_secs_f64();
    println!(
        "write: {write_s:.1} s ({:.0} MB/s), peak RSS {:.0} MB",
        mib as f64 * 1.048576 / write_s,
        peak_rss_mb()
    );
    drop(bytes);
    reset_peak();
    let started = Instant::now();
    let back = trainyard::artifacts::read(&pool, id)
        .await?
        .expect("written");
    let read_s = started.elapsed().as_secs_f64();
    println!(
        "read: {read_s:.1} s ({:.0} MB/s), peak RSS {:.0} MB",
        mib as f64 * 1.048576 / read_s,
        peak_rss_mb()
    );
    anyhow::ensure!(
        back.len() == size && checksum(&back) == want,
        "the bytes differ"
    );
    println!("the same {size} bytes came back");
    let mut conn = pool.acquire().await?;
    trainyard::artifacts::delete(&mut conn, id).await?;
    Ok(())
}
