//! The worker process's ledger of the jobs it is running: their cancel flags, read from memory
//! and refreshed for all of them in one query per tick, and their progress, buffered and
//! written for all of them in one statement per tick.
//!
//! Without it every checkpoint of every job was a round trip (a cancel check and a progress
//! write), which made a trivial job three times as expensive as apalis's own bookkeeping
//! (benches/queue_throughput.rs). With it a job's checkpoints cost a mutex, and the process
//! sends at most two statements per `queue.tracker_interval_ms` however many jobs it runs.
//!
//! What that trades:
//! * A cancel is seen at a job's first checkpoint after the next tick (≤ one interval,
//!   250 ms by default). A pending job never starts once cancelled (the cancel kills its row),
//!   and the domain handlers also re-read their dataset's or run's own status.
//! * Progress reaches `job_info` up to one interval late and is advisory: a write lost to a
//!   crash is written again by the re-run. A job that succeeds needs no last write: whatever
//!   reads progress counts a done job as complete (`queue::get_job`, the dataset progress),
//!   so its buffered value is dropped. (A trigger that completed it in the acknowledging
//!   statement cost 22 µs per job in the server, about a tenth of apalis's whole per-job
//!   work on the 2-core machine.)
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;

#[derive(Debug, Default)]
struct Ledger {
    /// Job id → whether a cancel was requested (as of the last refresh).
    running: HashMap<String, bool>,
    /// Job id → the latest (done, total) not yet written.
    progress: HashMap<String, (i64, Option<i64>)>,
}

/// One per worker process; shared by every job context it hands out.
#[derive(Debug, Default)]
pub struct JobTracker {
    ledger: Mutex<Ledger>,
}

impl JobTracker {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A job of this process starts: its cancel flag is picked up from the next refresh on.
    pub fn start(&self, id: &str) {
        self.ledger().running.entry(id.to_string()).or_insert(false);
    }

    /// A job of this process ended. Its buffered progress is dropped when it succeeded (the
    /// database completes it) and kept for the next flush otherwise (how far it got).
    pub fn finish(&self, id: &str, succeeded: bool) {
        let mut ledger = self.ledger();
        ledger.running.remove(id);
        if succeeded {
            ledger.progress.remove(id);
        }
    }

    /// Whether a cancel was requested for this job, as of the last refresh.
    pub fn cancel_requested(&self, id: &str) -> bool {
        self.ledger().running.get(id).copied().unwrap_or(false)
    }

    /// Records how far a job has got; written at the next flush.
    pub fn set_progress(&self, id: &str, done: i64, total: Option<i64>) {
        let mut ledger = self.ledger();
        let entry = ledger
            .progress
            .entry(id.to_string())
            .or_insert((done, total));
        *entry = (done, total.or(entry.1));
    }

    /// Writes every buffered progress value in one statement.
    /// On failure the values go back in the buffer unless newer ones arrived meanwhile.
    pub async fn flush_progress(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let pending = std::mem::take(&mut self.ledger().progress);
        if pending.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(pending.len());
        let mut done = Vec::with_capacity(pending.len());
        let mut totals = Vec::with_capacity(pending.len());
        for (id, (d, t)) in &pending {
            ids.push(id.as_str());
            done.push(*d);
            totals.push(*t);
        }
        // Asynchronous commit: progress is advisory, and waiting for the WAL flush would make
        // this write cost more than what it reports. `set_config(…, true)` ends with the
        // statement's own transaction.
        let written = sqlx::query(
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
             UPDATE job_info i SET progress_done = v.done,
                    progress_total = coalesce(v.total, i.progress_total)
             FROM relaxed, unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(id, done, total)
             WHERE i.job_id = v.id",
        )
        .bind(&ids)
        .bind(&done)
        .bind(&totals)
        .execute(pool)
        .await;
        if let Err(e) = written {
            let mut ledger = self.ledger();
            for (id, value) in pending {
                ledger.progress.entry(id).or_insert(value);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Reads the cancel flags of every job this process runs, in one query.
    pub async fn refresh_cancels(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let ids: Vec<String> = {
            let ledger = self.ledger();
            ledger
                .running
                .iter()
                .filter(|(_, cancelled)| !**cancelled)
                .map(|(id, _)| id.clone())
                .collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        let cancelled: Vec<String> = sqlx::query_scalar(
            "SELECT job_id FROM job_info WHERE job_id = ANY($1) AND cancel_requested",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        if !cancelled.is_empty() {
            let mut ledger = self.ledger();
            for id in cancelled {
                if let Some(flag) = ledger.running.get_mut(&id) {
                    *flag = true;
                }
            }
        }
        Ok(())
    }

    /// Flushes progress and refreshes cancel flags every `interval` until `stop` resolves,
    /// then flushes once more. A failed tick (the database is away) is logged once per outage
    /// and retried at the next.
    pub async fn run(
        self: Arc<Self>,
        pool: PgPool,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let result = match self.flush_progress(&pool).await {
                Ok(()) => self.refresh_cancels(&pool).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("job tracker: database reachable again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "job tracker: cannot reach the database (progress and cancels wait): {e}"
                    );
                }
                Err(_) => {}
            }
        }
        if let Err(e) = self.flush_progress(&pool).await {
            tracing::warn!("job tracker: last progress write failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_keeps_the_latest_value_and_the_last_known_total() {
        let t = JobTracker::default();
        t.set_progress("a", 1, Some(10));
        t.set_progress("a", 5, None);
        assert_eq!(t.ledger().progress.get("a"), Some(&(5, Some(10))));
        t.set_progress("a", 7, Some(12));
        assert_eq!(t.ledger().progress.get("a"), Some(&(7, Some(12))));
    }

    #[test]
    fn a_succeeded_job_drops_its_buffered_progress_a_failed_one_keeps_it() {
        let t = JobTracker::default();
        t.start("ok");
        t.start("bad");
        t.set_progress("ok", 3, Some(3));
        t.set_progress("bad", 2, Some(3));
        t.finish("ok", true);
        t.finish("bad", false);
        let ledger = t.ledger();
        assert!(ledger.running.is_empty());
        assert!(!ledger.progress.contains_key("ok"));
        assert_eq!(ledger.progress.get("bad"), Some(&(2, Some(3))));
    }

    #[test]
    fn unknown_jobs_are_not_cancelled() {
        let t = JobTracker::default();
        assert!(!t.cancel_requested("nope"));
        t.start("x");
        assert!(!t.cancel_requested("x"));
        t.ledger().running.insert("x".into(), true);
        assert!(t.cancel_requested("x"));
        t.finish("x", false);
        assert!(!t.cancel_requested("x"));
    }
}
