//! The one wrapper every backend primitive runs in ([`Store::call`]): the circuit breaker's
//! admission (Redis only), the operation timeout, the `store.*` span, the timing metric and the
//! once-only failure log.

use std::time::Duration;

use tracing::Instrument as _;

use super::backend::{Backend, Op, Reply};
use super::breaker::{self, Breaker, Verdict};
use super::{AnyBackend, OPERATION_TIMEOUT, Store, StoreError};

impl Store {
    /// Runs one backend primitive: through the circuit breaker (Redis only; refused at once while
    /// the store is known down, and given up at once when the breaker opens while it waits),
    /// bounded by [`OPERATION_TIMEOUT`], in the operation's `store.*` span, timed and counted in
    /// the metrics, and a failure logged once, here, naming the operation ([`log_failure`]).
    /// Refusals are counted by the breaker, not here. Generic over the call, so each call site
    /// compiles to its own straight-line code, as the macro this replaced did.
    pub(super) async fn call<'s, T>(
        &'s self,
        op: Op,
        primitive: impl FnOnce(&'s dyn Backend) -> Reply<'s, T>,
    ) -> Result<T, StoreError> {
        let started = tokio::time::Instant::now();
        // The `store.*` span is for traces: without an exporter no log line needs it (the one
        // line a failure writes names the operation itself, [`log_failure`]), and making, entering
        // and closing it through the log layer was ~3 % of a one-read RPC's CPU (issue 19).
        let span = if crate::telemetry::exporting() { op.span() } else { tracing::Span::none() };
        let result = self.guarded(primitive, started).instrument(span).await;
        let operation = op.name();
        if !matches!(result, Err(StoreError::KnownDown)) {
            let metrics = &self.inner.metrics;
            metrics.store_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                metrics.store_errors.with_label_values(&[operation]).inc();
            }
        }
        if let Err(error) = &result {
            log_failure(operation, error);
        }
        result
    }

    /// The primitive on this store's backend: the memory backend's answer as it is (never
    /// behind the breaker), a Redis call only when the breaker admits it, bounded ([`bounded`])
    /// and its outcome told to the breaker.
    async fn guarded<'s, T>(
        &'s self,
        primitive: impl FnOnce(&'s dyn Backend) -> Reply<'s, T>,
        started: tokio::time::Instant,
    ) -> Result<T, StoreError> {
        let breaker = &self.inner.breaker;
        // The one place the two backends are told apart.
        let backend: &dyn Backend = match &self.inner.backend {
            AnyBackend::Memory(memory) => memory,
            AnyBackend::Redis(redis) => {
                if let Verdict::Refused { probe } = breaker.admit() {
                    if probe {
                        self.probe();
                    }
                    return Err(StoreError::KnownDown);
                }
                redis
            }
        };
        match primitive(backend) {
            Reply::Now(value) => Ok(value),
            Reply::Remote(call) => {
                let result = bounded(breaker, call, started).await;
                if matches!(result, Err(StoreError::KnownDown)) {
                    // Given up because the breaker opened: nothing to tell it.
                    return result;
                }
                breaker.record(!result.as_ref().is_err_and(StoreError::is_connection_failure));
                result
            }
        }
    }
}

/// The one log line of a failed store call, with the operation that failed (the callers turn
/// the error into `STORE_UNAVAILABLE` without logging it again). A call the open breaker refused
/// is logged at debug only: the breaker logged the outage once when it opened, and one line per
/// refused call would flood the logs under load.
#[cold]
fn log_failure(operation: &'static str, error: &StoreError) {
    if matches!(error, StoreError::KnownDown) {
        tracing::debug!(operation, "store call refused: store known down");
    } else {
        let cause = std::error::Error::source(error).map(ToString::to_string);
        tracing::warn!(operation, error = %error, cause = cause.as_deref(), "store call failed");
    }
}

/// How often a call still waiting on Redis looks whether the breaker opened meanwhile.
const OPEN_CHECK: Duration = Duration::from_millis(50);

/// One Redis call, bounded by [`OPERATION_TIMEOUT`], given up within [`OPEN_CHECK`] of the
/// breaker opening (Redis stopped answering everyone: this call answers then too, not at its
/// timeout). The call waits in slices and reads the breaker's state between them: one timer per
/// call that answers in time, as with a plain timeout. (Waiting on the breaker's change channel
/// instead cost every call a waker registration on one shared list: GetUserInfo ran at 0.48× of
/// its ceiling with it, 0.93× without.)
///
/// `started` is when the call began (read once by [`Store::call`] for its timing metric): the
/// first slice's end is reckoned from it, with no clock read of its own. (Clock reads were
/// 1.9 % of a cached GetUserInfo's CPU in `perf`, against 0.4 % for its ceiling; this was three
/// of them.)
async fn bounded<T>(
    breaker: &Breaker,
    mut call: futures::future::BoxFuture<'_, ::redis::RedisResult<T>>,
    started: tokio::time::Instant,
) -> Result<T, StoreError> {
    let deadline = started + OPERATION_TIMEOUT;
    let mut slice_end = started + OPEN_CHECK.min(OPERATION_TIMEOUT);
    loop {
        match tokio::time::timeout_at(slice_end, &mut call).await {
            Ok(result) => return result.map_err(StoreError::Unavailable),
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(StoreError::Timeout(OPERATION_TIMEOUT)),
            Err(_) if breaker.state() == breaker::BreakerState::Open => return Err(StoreError::KnownDown),
            Err(_) => slice_end = deadline.min(tokio::time::Instant::now() + OPEN_CHECK),
        }
    }
}
