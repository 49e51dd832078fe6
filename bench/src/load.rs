//! The closed-loop load driver: `concurrency` workers each send one request, wait for its
//! answer, and send the next, for a warm-up and then a timed window. Only requests that start
//! and finish inside the window count towards throughput and latency; errors count whenever
//! they happen (a warm-up error is still an error).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The expected answer.
    Ok,
    /// Anything else, named by its kind (`grpc:Unavailable`, `http:400`, `errcode:40029`).
    Error(String),
    /// The operation has nothing left to work on (its pool of fresh flows ran out): the phase
    /// ends for every worker.
    Exhausted,
}

/// How one phase is driven.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests in flight at all times.
    pub concurrency: usize,
    /// Load before the timed window (connections warm, caches and allocators settled).
    pub warmup: Duration,
    /// The timed window.
    pub duration: Duration,
}

/// What a phase measured.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Requests that started and finished inside the window (errors included).
    pub requests: u64,
    /// The window's length (shorter than planned when the operation was exhausted).
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
    /// Errors by kind, warm-up included.
    pub errors: BTreeMap<String, u64>,
    /// The operation ran out of work before the window ended.
    pub exhausted: bool,
}

impl Sample {
    /// No requests in no time: what [`Sample::absorb`] adds windows to.
    pub fn empty() -> Self {
        Sample { requests: 0, elapsed: Duration::ZERO, latency: histogram(), errors: BTreeMap::new(), exhausted: false }
    }

    /// Requests per second over the window.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.requests as f64 / secs } else { 0.0 }
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency.value_at_quantile(q)
    }

    /// The largest latency in microseconds.
    pub fn max_us(&self) -> u64 {
        self.latency.max()
    }

    /// Every error, whatever its kind.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds `other`, another window of the same operation (the slices of an interleaved phase):
    /// its requests, time, latencies and errors.
    pub fn absorb(&mut self, other: Sample) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.exhausted |= other.exhausted;
    }
}

/// A latency histogram from 1 µs to 60 s with three significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; a failure here is a programming error.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op` (given the worker's index) on `plan.concurrency` workers and measures it.
pub async fn run<F, Fut>(plan: Plan, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let window_start = start + plan.warmup;
    let window_end = window_start + plan.duration;
    let workers: Vec<_> = (0..plan.concurrency.max(1))
        .map(|worker| {
            let (op, stop) = (Arc::clone(&op), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut latency = histogram();
                let mut errors = BTreeMap::<String, u64>::new();
                let mut requests = 0u64;
                let mut exhausted_at = None;
                loop {
                    let sent = Instant::now();
                    if sent >= window_end || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let outcome = op(worker).await;
                    let answered = Instant::now();
                    if let Outcome::Error(kind) = &outcome {
                        *errors.entry(kind.clone()).or_default() += 1;
                    }
                    if outcome == Outcome::Exhausted {
                        stop.store(true, Ordering::Relaxed);
                        exhausted_at = Some(answered);
                        break;
                    }
                    if sent >= window_start && answered <= window_end {
                        requests += 1;
                        let micros = u64::try_from(answered.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                        latency.saturating_record(micros.max(1));
                    }
                }
                (requests, latency, errors, exhausted_at)
            })
        })
        .collect();

    let mut sample = Sample { elapsed: plan.duration, ..Sample::empty() };
    let mut first_exhausted: Option<Instant> = None;
    for worker in workers {
        let Ok((requests, latency, errors, exhausted_at)) = worker.await else {
            *sample.errors.entry("bench:worker-panicked".into()).or_default() += 1;
            continue;
        };
        sample.requests += requests;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = sample.latency.add(&latency);
        for (kind, n) in errors {
            *sample.errors.entry(kind).or_default() += n;
        }
        if let Some(at) = exhausted_at {
            first_exhausted = Some(first_exhausted.map_or(at, |f| f.min(at)));
        }
    }
    if let Some(at) = first_exhausted {
        sample.exhausted = true;
        sample.elapsed = at.min(window_end).saturating_duration_since(window_start);
    }
    sample
}

/// Ids handed out once each, to the first worker that asks: the relay's fresh flows.
#[derive(Debug, Default)]
pub struct Pool {
    ids: Vec<String>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool of `ids`.
    pub fn new(ids: Vec<String>) -> Self {
        Self { ids, next: AtomicUsize::new(0) }
    }

    /// The next unused id; `None` when all are used.
    pub fn take(&self) -> Option<&str> {
        self.ids.get(self.next.fetch_add(1, Ordering::Relaxed)).map(String::as_str)
    }

    /// Ids not handed out yet.
    pub fn remaining(&self) -> usize {
        self.ids.len().saturating_sub(self.next.load(Ordering::Relaxed))
    }

    /// Takes the unused ids out, to make a bigger pool from them.
    pub fn into_unused(self) -> Vec<String> {
        let used = self.next.load(Ordering::Relaxed).min(self.ids.len());
        let mut ids = self.ids;
        ids.drain(..used);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_hands_each_id_out_once() {
        let pool = Pool::new(vec!["a".into(), "b".into()]);
        assert_eq!(pool.take(), Some("a"));
        assert_eq!(pool.remaining(), 1);
        assert_eq!(pool.into_unused(), vec!["b".to_owned()]);
    }

    #[test]
    fn absorbed_windows_add_up() {
        let window = |requests: u64, micros: u64, error: Option<&str>| {
            let mut latency = histogram();
            latency.saturating_record(micros);
            let errors = error.map(|e| (e.to_owned(), 1)).into_iter().collect();
            Sample { requests, elapsed: Duration::from_millis(500), latency, errors, exhausted: false }
        };
        let mut sample = Sample::empty();
        sample.absorb(window(1000, 100, Some("grpc:Unavailable")));
        sample.absorb(window(3000, 900, Some("grpc:Unavailable")));
        assert_eq!(sample.requests, 4000);
        assert_eq!(sample.elapsed, Duration::from_secs(1));
        assert_eq!(sample.rps(), 4000.0);
        assert_eq!(sample.latency.len(), 2);
        assert_eq!(sample.max_us(), sample.latency.highest_equivalent(900));
        assert_eq!(sample.errors.get("grpc:Unavailable"), Some(&2));
    }

    #[tokio::test]
    async fn an_exhausted_operation_ends_the_phase_for_every_worker() {
        let pool = Arc::new(Pool::new((0..50).map(|i| i.to_string()).collect()));
        let plan = Plan { concurrency: 4, warmup: Duration::ZERO, duration: Duration::from_secs(30) };
        let sample = run(plan, move |_| {
            let pool = Arc::clone(&pool);
            async move { if pool.take().is_some() { Outcome::Ok } else { Outcome::Exhausted } }
        })
        .await;
        assert!(sample.exhausted);
        assert_eq!(sample.requests, 50);
        assert!(sample.elapsed < Duration::from_secs(30));
    }
}
