//! The token lifecycle: exchanging codes (only through the flow that relayed them, and
//! idempotently per flow, so a reload or a retry never meets WeChat's 40163 while a leaked
//! code signs no one in elsewhere), keeping tokens fresh, and refreshing each user's token with ONE call to
//! WeChat however many requests and replicas ask at once.
//!
//! What each client may read of the user the record serves is not the record's to say: that is
//! [`crate::consent`], from the client's own sign-ins.
//!
//! The rooms, one [`Tokens`] among them (each adds its own `impl Tokens`):
//! - `exchange`: exchanging a flow's code, and the code claim both exchanges share (`CodeClaim`,
//!   docs/design.md §12.1 and §12.2);
//! - `mobile`: mobile-app codes and mini-program sign-ins;
//! - `sign_in`: what a sign-in leaves: the token record that never downgrades a user (§12.6),
//!   the client's claim, the account;
//! - `refresh`: keeping tokens fresh: single-flight, the cross-replica lock, waiters (§12.4);
//! - `users`: reads of a user (profile, validation, the stored record) and who may make them,
//!   ForgetUser (§12.5), the accounts of a unionid;
//! - `app_token`: an app's own access token and jsapi_ticket, held in one place and renewed
//!   with one WeChat call across replicas (§12.9).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng as _;

use crate::clock::Clock;
use crate::error::ApiError;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::wechat::{Scope, WechatClient};

mod app_token;
mod exchange;
mod mobile;
mod phones;
mod refresh;
mod sign_in;
#[cfg(test)]
mod tests;
mod users;

use app_token::CredentialFlight;
use refresh::Flight;
pub(crate) use refresh::lock_ttl;
pub(crate) use users::UsersRule;

/// How soon a waiter first looks again at a record another replica is refreshing (or a code
/// another exchange holds); each later look waits twice as long, up to [`POLL_MAX`].
const POLL: Duration = Duration::from_millis(20);
/// The longest pause between two looks: a stuck holder costs a waiter about two reads a
/// second, not fifty.
const POLL_MAX: Duration = Duration::from_millis(500);

/// Token policy.
#[derive(Clone, Copy, Debug)]
pub struct TokenPolicy {
    /// Refresh an access token this long before it expires.
    pub refresh_margin: Duration,
    /// Life of a refresh token (WeChat: 30 days).
    pub refresh_life: Duration,
    /// How long a fetched profile answers `GetUserInfo` without a WeChat call; zero: never.
    pub profile_cache: Duration,
    /// How many events each client's feed of user events keeps (`ReadUserEvents`; older ones
    /// are trimmed, and a reader behind them is told of the gap).
    pub user_events_kept: u64,
}

/// Exchanges, refreshes and reads tokens. Cheap to share (`Arc`).
pub struct Tokens {
    store: Store,
    wechat: WechatClient,
    clock: Clock,
    policy: TokenPolicy,
    flights: Mutex<HashMap<String, Flight>>,
    /// Renewals of apps' own credentials under way in this process (`app_token`).
    app_flights: Mutex<HashMap<String, CredentialFlight>>,
    next_flight: AtomicU64,
    /// The refresh lock's life ([`lock_ttl`]), in ms; tests may shorten it.
    lock_ttl_ms: AtomicU64,
    metrics: Arc<Metrics>,
    /// Makes the next refresh task panic (tests show the map forgets a panicked flight).
    #[cfg(test)]
    panic_next_refresh: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Builds the token service.
    pub(crate) fn new(
        store: Store,
        wechat: WechatClient,
        clock: Clock,
        policy: TokenPolicy,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let lock_ttl_ms = u64::try_from(lock_ttl(wechat.settings()).as_millis()).unwrap_or(u64::MAX);
        Arc::new(Self {
            store,
            wechat,
            clock,
            policy,
            flights: Mutex::default(),
            app_flights: Mutex::default(),
            next_flight: AtomicU64::new(0),
            lock_ttl_ms: AtomicU64::new(lock_ttl_ms),
            metrics,
            #[cfg(test)]
            panic_next_refresh: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How long a refresh (or `ForgetUser`) holds a user's lock at most: computed from the
    /// WeChat settings (`tokens::lock_ttl`, docs/design.md §12.4).
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms.load(Ordering::Relaxed))
    }

    /// For tests only: a lock shorter than the work under it, to show that the
    /// compare-and-write, not the lock, keeps the record right when a refresh outlives its lock.
    #[cfg(any(test, feature = "test-util"))]
    #[doc(hidden)]
    pub fn set_lock_ttl(&self, ttl: Duration) {
        self.lock_ttl_ms.store(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    /// For tests only: refreshes by result so far: `upstream` (WeChat calls), `coalesced` (calls
    /// saved) or `superseded` (a refresh whose result was not stored: the record changed
    /// meanwhile).
    #[cfg(any(test, feature = "test-util"))]
    pub fn refreshes(&self, result: &str) -> u64 {
        self.metrics.refreshes.with_label_values(&[result]).get()
    }

    fn count_refresh(&self, result: &str) {
        self.metrics.refreshes.with_label_values(&[result]).inc();
    }

    fn count_consent_refusal(&self, client: &str, reason: &str) {
        self.metrics.consent_refusals.with_label_values(&[client, reason]).inc();
    }
}

fn grants_userinfo(scopes: &[String]) -> bool {
    scopes.iter().filter_map(|s| Scope::parse(s)).any(Scope::grants_userinfo)
}

fn split_scopes(scope: &str) -> Vec<String> {
    scope.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn jittered(base: Duration) -> Duration {
    let ms = u64::try_from(base.as_millis()).unwrap_or(20);
    Duration::from_millis(ms + rand::rng().random_range(0..=ms))
}

/// Pauses between looks at something another replica holds: from [`POLL`], doubling up to
/// [`POLL_MAX`], each jittered (up to twice as long) so waiters on many replicas spread out.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(POLL)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let pause = jittered(self.0);
        self.0 = (self.0 * 2).min(POLL_MAX);
        pause
    }
}

/// The answer of a spawned task: its own, or INTERNAL when it panicked or was cancelled (an
/// abort, a runtime shutting down) — logged at error level with the operation, since nothing
/// else would say why the caller got INTERNAL.
fn joined<T>(
    operation: &'static str,
    joined: Result<Result<T, ApiError>, tokio::task::JoinError>,
) -> Result<T, ApiError> {
    joined.unwrap_or_else(|e| {
        let ended = if e.is_panic() { "panicked" } else { "was cancelled" };
        tracing::error!(operation, ended, "a spawned {operation} task ended without an answer; answering INTERNAL");
        Err(ApiError::Internal)
    })
}
