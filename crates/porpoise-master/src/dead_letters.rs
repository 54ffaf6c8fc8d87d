//! The dead-letter table's writer: every dropped state event gets a row, up to a bound per
//! source (a worker, or the master itself), so that a flood of broken events from one source
//! cannot fill the table. Past the bound, events are counted and summarised in one row per
//! source every [`SUMMARY_EVERY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use porpoise_core::{Backoff, StateEventKind};
use porpoise_store::NewDeadLetter;
use tracing::{error, warn};

use crate::Shared;
use crate::metrics as m;

/// Rows one source may write at once.
const BURST: f64 = 100.0;
/// Rows one source may write a second, after its burst.
const PER_SECOND: f64 = 10.0;
/// How often the events suppressed meanwhile are summarised.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One dead letter to record.
#[derive(Debug, Clone)]
pub(crate) struct Letter {
    /// The worker that sent the event (its address), or "master" for the master's own.
    pub source: String,
    pub workflow_instance_id: i64,
    pub task_instance_id: Option<i64>,
    pub kind: StateEventKind,
    pub event: String,
    pub reason: String,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    last_reason: String,
}

/// Rows per source: a token bucket each.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    /// Whether `source` may write a row now; if not, the event is counted for its summary.
    fn admit(&self, source: &str, reason: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(source.to_string()).or_insert_with(|| Bucket {
            tokens: BURST,
            refilled: now,
            suppressed: 0,
            last_reason: String::new(),
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * PER_SECOND).min(BURST);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            bucket.suppressed += 1;
            bucket.last_reason = reason.to_string();
            false
        }
    }

    /// The sources with suppressed events since the last call: (source, how many, last
    /// reason). Full buckets of quiet sources are forgotten.
    fn take_summaries(&self, now: Instant) -> Vec<(String, u64, String)> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        buckets.retain(|source, b| {
            if b.suppressed > 0 {
                out.push((source.clone(), b.suppressed, std::mem::take(&mut b.last_reason)));
                b.suppressed = 0;
            }
            let idle = now.saturating_duration_since(b.refilled).as_secs_f64();
            b.tokens + idle * PER_SECOND < BURST
        });
        out
    }
}

/// Records `letter`, retrying until it is stored — unless its source is over its bound, when
/// it is counted and left to the next summary.
pub(crate) async fn record(shared: &Shared, letter: Letter) {
    if !shared.dead_letters.admit(&letter.source, &letter.reason, Instant::now()) {
        metrics::counter!(m::DEAD_LETTERS_SUPPRESSED).increment(1);
        return;
    }
    store(
        shared,
        NewDeadLetter {
            workflow_instance_id: Some(letter.workflow_instance_id),
            task_instance_id: letter.task_instance_id,
            event_kind: letter.kind.as_str().to_string(),
            event: letter.event,
            reason: letter.reason,
        },
    )
    .await;
}

/// Every [`SUMMARY_EVERY`], writes one row per source whose events were suppressed.
pub(crate) async fn summarise(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        summarise_now(&shared).await;
    }
}

/// Writes the summaries due now.
pub(crate) async fn summarise_now(shared: &Shared) {
    for (source, count, last_reason) in shared.dead_letters.take_summaries(Instant::now()) {
        let reason = format!(
            "{count} more dropped events from {source} were not stored one by one (more than {BURST} at once, then \
             {PER_SECOND} a second); the last: {last_reason}"
        );
        warn!(%source, suppressed = count, %last_reason, "dead letters summarised");
        let event = serde_json::json!({ "source": source, "suppressed": count }).to_string();
        let letter = NewDeadLetter {
            workflow_instance_id: None,
            task_instance_id: None,
            event_kind: StateEventKind::TaskStateChange.as_str().to_string(),
            event,
            reason,
        };
        store(shared, letter).await;
    }
}

async fn store(shared: &Shared, letter: NewDeadLetter) {
    let backoff = Backoff::default();
    let mut failures = 0u32;
    while let Err(e) = shared.store.record_dead_letter(&letter).await {
        failures += 1;
        m::database_error("dead_letter", &e);
        error!(error = %e, failures, "cannot record a dead letter; retrying");
        tokio::time::sleep(porpoise_runtime::retry_delay(&backoff, failures - 1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_the_rest_is_summarised() {
        let limiter = Limiter::default();
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| limiter.admit("w1", "bad", t0)).count();
        assert_eq!(admitted, 100);
        assert!(limiter.admit("w2", "bad", t0), "another source has its own bound");
        let later = t0 + Duration::from_secs(2);
        let admitted = (0..1000).filter(|i| limiter.admit("w1", &format!("bad {i}"), later)).count();
        assert_eq!(admitted, 20, "ten a second");
        let summaries = limiter.take_summaries(later);
        assert_eq!(summaries, [("w1".to_string(), 900 + 980, "bad 999".to_string())]);
        assert!(limiter.take_summaries(later).is_empty(), "each suppressed event is summarised once");
        let quiet = later + Duration::from_secs(60);
        limiter.take_summaries(quiet);
        assert!(limiter.buckets.lock().expect("lock").is_empty(), "quiet sources are forgotten");
    }
}
