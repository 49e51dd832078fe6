//! The store's circuit breaker: once Redis is known down, store calls answer
//! `STORE_UNAVAILABLE` at once instead of each waiting on a dead connection until the caller's
//! deadline (docs/design.md §6).
//!
//! - **Closed** (Redis answers): every call goes through. [`FAILURES_TO_OPEN`] connection-class
//!   failures in a row (refused, reset, timed out, `LOADING`, cluster down; never a logical
//!   error such as a full Redis refusing a write), or one failed health ping, open it. A failed
//!   ping opens it only if Redis answered no other call meanwhile: under load the ping queues
//!   behind the calls, and a slow Redis that answers others is not down.
//! - **Open**: calls are refused without touching Redis. The first call refused after
//!   [`PROBE_AFTER`] starts a probe and turns it half-open.
//! - **Half-open**: one probe (a `PING` in the background, bounded like the health ping) is in
//!   flight; calls are still refused at once, so no caller ever waits on a probe. The probe's
//!   answer (or the health ping's) closes it; its failure opens it again.
//!
//! Any answer from Redis closes it, whoever got it: the health task pings every
//! [`HEALTH_INTERVAL`](crate::startup::HEALTH_INTERVAL) whatever the state, so the breaker closes within one
//! ping of Redis's return even with no traffic. The closed path costs one atomic load per call
//! (and one more per answer); transitions take a lock. Transitions are logged, counted
//! (`wxauth_store_breaker_transitions_total`), shown as a gauge (`wxauth_store_breaker_state`)
//! and published on a watch channel the health task listens to, so readiness flips with it.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::{Clock, millis};
use crate::telemetry::Metrics;

/// Connection-class failures in a row that open a closed breaker.
pub(crate) const FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker refuses every call before it lets a probe through.
pub(crate) const PROBE_AFTER: Duration = Duration::from_millis(250);

/// Where the breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis answers: calls go through.
    Closed,
    /// Redis is known down: calls are refused at once.
    Open,
    /// A probe is in flight; its answer decides.
    HalfOpen,
}

impl BreakerState {
    /// The label of the transitions metric and of logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the `wxauth_store_breaker_state` gauge.
    fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    fn code(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// The lock-held part: the state and when it last opened.
#[derive(Debug)]
struct Core {
    state: BreakerState,
    /// When the breaker last opened, ms by the service clock.
    opened_at_ms: i64,
    /// When it first opened in this outage (for the "down for" of the closing log line).
    down_since_ms: i64,
    /// A half-open probe is in flight.
    probing: bool,
}

/// The breaker. One per store, shared by every call.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// [`BreakerState::code`] of `core.state`, read without the lock on every call.
    mirror: AtomicU8,
    /// Connection-class failures in a row while closed.
    failures: AtomicU32,
    /// When Redis last answered anyone, ms by the service clock: a slow health ping is no
    /// outage while other calls are answered.
    last_answer_ms: AtomicI64,
    core: Mutex<Core>,
    clock: Clock,
    metrics: Arc<Metrics>,
    changes: watch::Sender<BreakerState>,
}

/// What [`Breaker::admit`] says to one call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go to Redis, then [`Breaker::record`] the outcome.
    Go,
    /// Answer `STORE_UNAVAILABLE` at once; with `probe`, first start the probe (in the
    /// background) and report it with [`Breaker::probed`].
    Refused {
        /// This call starts the half-open probe.
        probe: bool,
    },
}

impl Breaker {
    /// A closed breaker timed by `clock`.
    pub(crate) fn new(clock: Clock, metrics: Arc<Metrics>) -> Self {
        metrics.store_breaker_state.set(BreakerState::Closed.gauge());
        let core = Core { state: BreakerState::Closed, opened_at_ms: 0, down_since_ms: 0, probing: false };
        Self {
            mirror: AtomicU8::new(BreakerState::Closed.code()),
            failures: AtomicU32::new(0),
            last_answer_ms: AtomicI64::new(0),
            core: Mutex::new(core),
            clock,
            metrics,
            changes: watch::channel(BreakerState::Closed).0,
        }
    }

    /// The state now.
    pub(crate) fn state(&self) -> BreakerState {
        self.core().state
    }

    /// The breaker's clock, ms.
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Every transition, as it happens (the health task follows it).
    pub(crate) fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.changes.subscribe()
    }

    /// Whether one call may go to Redis.
    pub(crate) fn admit(&self) -> Verdict {
        if self.mirror.load(Ordering::Acquire) == BreakerState::Closed.code() {
            return Verdict::Go;
        }
        let mut core = self.core();
        let probe = match core.state {
            BreakerState::Closed => return Verdict::Go,
            BreakerState::Open if !core.probing && self.clock.now_ms() - core.opened_at_ms >= millis(PROBE_AFTER) => {
                self.transition(&mut core, BreakerState::HalfOpen, "probe");
                core.probing = true;
                true
            }
            BreakerState::Open | BreakerState::HalfOpen => false,
        };
        drop(core);
        self.metrics.store_breaker_rejections.inc();
        Verdict::Refused { probe }
    }

    /// Reports an admitted call's outcome: `answered` unless it failed for a connection-class
    /// reason.
    pub(crate) fn record(&self, answered: bool) {
        if answered { self.answered() } else { self.failed() }
    }

    /// Reports the half-open probe's outcome: an answer closes the breaker, anything else opens
    /// it for another [`PROBE_AFTER`].
    pub(crate) fn probed(&self, answered: bool) {
        if answered {
            self.answered();
        }
        let mut core = self.core();
        core.probing = false;
        if !answered && core.state == BreakerState::HalfOpen {
            core.opened_at_ms = self.clock.now_ms();
            self.transition(&mut core, BreakerState::Open, "probe failed");
        }
    }

    /// Redis answered (a value or a logical error): closes the breaker.
    pub(crate) fn answered(&self) {
        let now = self.clock.now_ms();
        if self.last_answer_ms.load(Ordering::Relaxed) != now {
            self.last_answer_ms.store(now, Ordering::Relaxed);
        }
        if self.mirror.load(Ordering::Acquire) == BreakerState::Closed.code() {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut core = self.core();
        if core.state != BreakerState::Closed {
            self.failures.store(0, Ordering::Relaxed);
            let down_for_ms = self.clock.now_ms() - core.down_since_ms;
            self.transition(&mut core, BreakerState::Closed, "Redis answers");
            tracing::info!(down_for_ms, "store circuit breaker closed: Redis answers again");
        }
    }

    /// A call failed for a connection-class reason. While not closed, only the probe decides:
    /// a failure that was in flight when the breaker opened changes nothing.
    fn failed(&self) {
        if self.mirror.load(Ordering::Acquire) == BreakerState::Closed.code() {
            let run = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if run >= FAILURES_TO_OPEN {
                self.open("consecutive failures");
            }
        }
    }

    /// A health ping failed: the breaker opens unless Redis answered some other call at or
    /// after `since_ms` (then Redis is slow under load, or only the ping's connection was lost,
    /// as when a failover closes it; a run of failed calls still opens it).
    pub(crate) fn ping_failed(&self, since_ms: i64, cause: &'static str) {
        if self.last_answer_ms.load(Ordering::Relaxed) < since_ms {
            self.open(cause);
        }
    }

    /// Opens the breaker now (a failed health ping, or a run of failed calls).
    pub(crate) fn open(&self, cause: &'static str) {
        let mut core = self.core();
        let now = self.clock.now_ms();
        core.opened_at_ms = now;
        match core.state {
            BreakerState::Open => {}
            BreakerState::HalfOpen => self.transition(&mut core, BreakerState::Open, cause),
            BreakerState::Closed => {
                core.down_since_ms = now;
                self.transition(&mut core, BreakerState::Open, cause);
                tracing::warn!(
                    cause,
                    "store circuit breaker open: store calls answer STORE_UNAVAILABLE at once until Redis answers"
                );
            }
        }
    }

    fn transition(&self, core: &mut Core, to: BreakerState, cause: &'static str) {
        tracing::debug!(from = core.state.as_str(), to = to.as_str(), cause, "store circuit breaker");
        core.state = to;
        self.mirror.store(to.code(), Ordering::Release);
        self.metrics.store_breaker_state.set(to.gauge());
        self.metrics.store_breaker_transitions.with_label_values(&[to.as_str()]).inc();
        self.changes.send_replace(to);
    }

    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, Clock, Arc<Metrics>) {
        let (clock, metrics) = (Clock::system(), Metrics::new());
        (Breaker::new(clock.clone(), Arc::clone(&metrics)), clock, metrics)
    }

    fn fail(breaker: &Breaker) {
        assert_eq!(breaker.admit(), Verdict::Go);
        breaker.record(false);
    }

    #[test]
    fn a_run_of_connection_failures_opens_it_and_an_answer_in_between_resets_the_run() {
        let (breaker, _, _) = breaker();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            fail(&breaker);
        }
        breaker.record(true);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            fail(&breaker);
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "the answer reset the run");
        fail(&breaker);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: false }, "an open breaker refuses at once");
    }

    #[test]
    fn an_open_breaker_starts_one_probe_after_the_wait_and_closes_on_its_answer() {
        let (breaker, clock, metrics) = breaker();
        breaker.open("health ping failed");
        assert_eq!(breaker.admit(), Verdict::Refused { probe: false });
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true }, "this call starts the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: false }, "one probe at a time");
        breaker.probed(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.admit(), Verdict::Go);
        assert_eq!(metrics.store_breaker_state.get(), 0);
        let opened = metrics.store_breaker_transitions.with_label_values(&["open"]).get();
        let closed = metrics.store_breaker_transitions.with_label_values(&["closed"]).get();
        assert_eq!((opened, closed), (1, 1));
        assert_eq!(metrics.store_breaker_rejections.get(), 3);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_wait() {
        let (breaker, clock, metrics) = breaker();
        breaker.open("health ping failed");
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true });
        breaker.probed(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(metrics.store_breaker_state.get(), 2);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: false }, "the wait starts again");
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true }, "the next probe");
    }

    #[test]
    fn no_second_probe_starts_while_one_is_in_flight_even_if_a_ping_reopened_it() {
        let (breaker, clock, _) = breaker();
        breaker.open("health ping failed");
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true });
        breaker.open("health ping failed");
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: false }, "the first probe is still out");
        breaker.probed(false);
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true });
    }

    #[test]
    fn any_answer_from_redis_closes_it_even_without_a_probe() {
        let (breaker, _, _) = breaker();
        breaker.open("health ping failed");
        breaker.answered();
        assert_eq!(breaker.state(), BreakerState::Closed);
        for _ in 0..FAILURES_TO_OPEN - 1 {
            fail(&breaker);
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "a closed breaker starts a new run");
    }

    #[test]
    fn a_failure_that_was_in_flight_when_it_opened_changes_nothing() {
        let (breaker, clock, _) = breaker();
        assert_eq!(breaker.admit(), Verdict::Go);
        breaker.open("health ping failed");
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true }, "the wait was not restarted");
    }

    #[test]
    fn a_slow_ping_opens_it_only_when_redis_answered_no_one_meanwhile() {
        let (breaker, clock, _) = breaker();
        let sent = clock.now_ms();
        clock.advance(Duration::from_millis(100));
        breaker.record(true);
        breaker.ping_failed(sent, "health ping timed out");
        assert_eq!(breaker.state(), BreakerState::Closed, "Redis is slow, not gone");
        clock.advance(Duration::from_millis(100));
        breaker.ping_failed(clock.now_ms(), "health ping timed out");
        assert_eq!(breaker.state(), BreakerState::Open, "no answer since the ping was sent");
    }

    #[test]
    fn watchers_see_every_transition() {
        let (breaker, clock, _) = breaker();
        let mut changes = breaker.subscribe();
        breaker.open("health ping failed");
        assert!(changes.has_changed().expect("sender alive"));
        assert_eq!(*changes.borrow_and_update(), BreakerState::Open);
        clock.advance(PROBE_AFTER);
        assert_eq!(breaker.admit(), Verdict::Refused { probe: true });
        assert_eq!(*changes.borrow_and_update(), BreakerState::HalfOpen);
        breaker.probed(true);
        assert_eq!(*changes.borrow_and_update(), BreakerState::Closed);
    }
}
