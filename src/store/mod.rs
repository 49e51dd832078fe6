//! Where flows, token records, code records and refresh locks live: Redis in production,
//! memory for the dev mode and unit tests. Every record is sealed (AES-256-GCM, [`seal`])
//! before it reaches a backend, so a Redis dump holds no token, code or return URL in clear.
//!
//! Layout (each a room of its own):
//! - this file: [`Store`], its construction, the health ping and the half-open probe, and the
//!   sealing every record goes through once ([`seal`]);
//! - `records.rs`: the records and handles of the API ([`TokenRecord`], [`Flow`], [`Reach`],
//!   [`Admission`], ...); `keys.rs`: the key schema (the table of keys, values and lives is
//!   docs/design.md §4.1, a wire contract);
//! - `flows.rs`: flow ids, the relay's round trip, the start URL's move, the open-flow cap;
//!   `users.rs`: tokens, sessions, the account index, code records, profiles, claims, locks;
//!   `app_tokens.rs`: an app's own access token and jsapi_ticket, their locks, the day's
//!   forced refreshes;
//! - `oidc.rs`: the OpenID Provider's pending requests, codes and access tokens;
//! - `events.rs`: each client's feed of user events (`ReadUserEvents`);
//! - `phones.rs`: phone numbers kept with mini program users and their keyed-hash index;
//! - `backend.rs`: the one-key primitives both backends implement (`Backend`), with identical
//!   semantics so the two cannot drift: `memory.rs` (dev mode, unit tests) and `redis/`
//!   (connections in `mod.rs`, commands, pipelines and scripts in `ops.rs`);
//! - `call.rs`: the one wrapper every primitive runs in: the [`breaker`] (Redis only: it answers
//!   at once while Redis is known down), [`OPERATION_TIMEOUT`], the `store.*` span, the metrics
//!   and the one log line of a failure.

mod app_tokens;
mod backend;
mod breaker;
mod call;
mod events;
pub mod flow_cap;
mod flows;
mod keys;
mod memory;
mod oidc;
mod phones;
mod profile_record;
mod records;
mod redis;
pub mod seal;
#[cfg(test)]
mod tests;
mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, de::DeserializeOwned};

pub use self::app_tokens::{AppCredential, CredentialKind, CredentialVersion};
use self::breaker::Breaker;
pub use self::breaker::BreakerState;
pub use self::events::{EventId, EventPage, USER_EVENTS_LIFE, UserEventRecord};
pub use self::flow_cap::{Admission, FlowSlot};
pub(crate) use self::flows::BOUND_FLOW_ID_LEN;
pub use self::flows::FLOW_ID_LEN;
use self::keys::key_kind;
use self::memory::MemoryBackend;
pub use self::oidc::Versioned;
pub use self::phones::{KeptPhone, PhoneEntry};
pub use self::records::{
    Account, CachedProfile, CodeRecord, CodeRelay, CodeState, ExchangeOutcome, Flow, FlowUse, LockToken, MiniSession,
    Reach, ReadCode, Relayed, TokenRecord, TokenVersion,
};
use self::redis::RedisBackend;
pub use self::redis::RedisTls;
use self::seal::Keyring;
use crate::telemetry::Metrics;

/// A flow as a backend's relay step reads it: the sealed flow, whether this call cut its life
/// to the grace window (its first use), and its callbacks so far.
pub(crate) type FlowRead = (Vec<u8>, bool, u64);

/// A store failure: reachability, or a record that could not be written at all. A record that
/// does not open is treated as missing (and counted), never as an error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered with an error or the connection failed (refused, reset, cluster down).
    #[error("store unavailable")]
    Unavailable(#[source] ::redis::RedisError),
    /// Redis did not answer within the operation timeout (also while reconnecting).
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    /// Not tried: the circuit breaker knows the store is down ([`breaker`]).
    #[error("store known down (circuit breaker open)")]
    KnownDown,
    /// A record could not be serialised or sealed, so nothing was written (a bug: the records
    /// are plain structs and kilobytes). Logged where it happens, with the record's kind.
    #[error("a {kind} record could not be sealed")]
    Seal {
        /// The record's kind (`tok`, `flow`, `code`, ...), never its content.
        kind: &'static str,
    },
}

impl StoreError {
    /// Whether this says the store cannot be reached (what the circuit breaker counts), as
    /// opposed to Redis answering with an error (a full Redis refusing a write, a script error):
    /// refused, reset or dropped connections, timeouts, a Redis still loading its data, a
    /// cluster or master down, a failed authentication.
    pub fn is_connection_failure(&self) -> bool {
        match self {
            StoreError::Timeout(_) | StoreError::KnownDown => true,
            StoreError::Seal { .. } => false,
            StoreError::Unavailable(e) => {
                e.is_io_error()
                    || e.is_unrecoverable_error()
                    || matches!(
                        e.kind(),
                        ::redis::ErrorKind::Server(
                            ::redis::ServerErrorKind::ClusterDown
                                | ::redis::ServerErrorKind::MasterDown
                                | ::redis::ServerErrorKind::BusyLoading
                        )
                    )
            }
        }
    }
}

/// How long wxauth keeps a code's record: the code's life at WeChat and a minute more, so that
/// clocks that differ never make wxauth forget a code WeChat still honours (past its life,
/// WeChat itself gives the answer: the code is expired).
pub fn code_record_ttl(code_life: Duration) -> Duration {
    code_life + Duration::from_secs(60)
}

/// The longest any one store operation may take, reconnection included: a dead Redis must
/// turn into a quick `STORE_UNAVAILABLE`, never a hung request.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the health ping ([`Store::ping`]) may take. A Redis that refuses or resets the
/// connection opens the circuit breaker at the first failed ping (health NOT_SERVING within
/// 0.3 s of the loss with the 250 ms ping interval); one that answers nothing at all opens it
/// after [`SILENCE_TO_OPEN`] (within about 1.5 s), and the calls waiting on it answer then.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_millis(450);

/// How long Redis must have answered nothing (no call, no ping) before a timed-out ping opens
/// the breaker: a stall under load or a fork is not an outage. Refused or reset connections
/// (a killed Redis) open it at the first failed ping.
pub(crate) const SILENCE_TO_OPEN: Duration = Duration::from_secs(1);

/// How long a failed ping waits, before it judges, for other calls' answers to be read.
const PING_GRACE: Duration = Duration::from_millis(50);

/// The backend a store runs on: the one place ([`Store::call`]) the two are told apart (only
/// Redis is behind the breaker and pinged).
#[derive(Debug)]
enum AnyBackend {
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

/// The typed, sealed store shared by the gRPC service and the relay.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: AnyBackend,
    keys: Keyring,
    prefix: String,
    replica: String,
    metrics: Arc<Metrics>,
    breaker: Breaker,
    /// Open-flow places this replica counted ahead ([`flow_cap::Leases`]).
    leases: flow_cap::Leases,
}

impl Store {
    /// An in-memory store (one process only) whose records expire by `clock`.
    pub fn memory(keys: Keyring, prefix: &str, metrics: Arc<Metrics>, clock: crate::clock::Clock) -> Self {
        Self::with(AnyBackend::Memory(MemoryBackend::new(clock)), keys, prefix, metrics)
    }

    /// A Redis store: one URL for a single node, several for a Cluster; `tls` for `rediss://`.
    pub async fn redis(
        urls: &[String],
        tls: &RedisTls,
        keys: Keyring,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let backend = tokio::time::timeout(OPERATION_TIMEOUT * 5, RedisBackend::connect(urls, tls))
            .await
            .map_err(|_| StoreError::Timeout(OPERATION_TIMEOUT * 5))?
            .map_err(StoreError::Unavailable)?;
        Ok(Self::with(AnyBackend::Redis(backend), keys, prefix, metrics))
    }

    /// A Redis store behind Sentinel: the Sentinels' URLs and the master's name; `tls` for
    /// `rediss://`.
    pub async fn redis_sentinel(
        urls: &[String],
        master: &str,
        tls: &RedisTls,
        keys: Keyring,
        prefix: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let backend = tokio::time::timeout(OPERATION_TIMEOUT * 5, RedisBackend::connect_sentinel(urls, master, tls))
            .await
            .map_err(|_| StoreError::Timeout(OPERATION_TIMEOUT * 5))?
            .map_err(StoreError::Unavailable)?;
        Ok(Self::with(AnyBackend::Redis(backend), keys, prefix, metrics))
    }

    fn with(backend: AnyBackend, keys: Keyring, prefix: &str, metrics: Arc<Metrics>) -> Self {
        let replica = crate::random_id(12);
        // Real time, never the clock tests move: the breaker's waits are short and real.
        let breaker = Breaker::new(crate::clock::Clock::system(), Arc::clone(&metrics));
        let leases = flow_cap::Leases::default();
        let inner = Inner { backend, keys, prefix: prefix.to_owned(), replica, metrics, breaker, leases };
        Self { inner: Arc::new(inner) }
    }

    /// Where the circuit breaker stands (always closed for the in-memory store).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The circuit breaker's transitions as they happen (health follows them).
    pub fn breaker_changes(&self) -> tokio::sync::watch::Receiver<BreakerState> {
        self.inner.breaker.subscribe()
    }

    /// Sealed records found that did not open (wrong key, tampering, a copy under another key).
    pub fn unopenable_records(&self) -> u64 {
        self.inner.metrics.unopenable_records.get()
    }

    /// Answers when the backend is reachable, within [`PING_TIMEOUT`]. The health task's ping:
    /// it goes to Redis whatever the circuit breaker says, and its outcome decides the breaker
    /// (an answer closes it; a timeout or a connection-class failure opens it, unless Redis
    /// answered another call meanwhile).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let breaker = &self.inner.breaker;
        let sent_at_ms = breaker.now_ms();
        let result = self.timed_ping().await;
        if result.as_ref().is_err_and(StoreError::is_connection_failure) {
            // Answers already on the wire get a moment to be read: in a process starved of CPU
            // the ping's timer can fire before the connection task has read any of them, and a
            // Redis that answered is not down.
            tokio::time::sleep(PING_GRACE).await;
        }
        match &result {
            Ok(()) => breaker.answered(),
            // Silence alone is ambiguous (a frozen Redis, or one stalled by load or a fork):
            // it must last SILENCE_TO_OPEN, across pings, before the breaker opens.
            Err(StoreError::Timeout(_)) => {
                let since = breaker.now_ms().saturating_sub(i64::try_from(SILENCE_TO_OPEN.as_millis()).unwrap_or(0));
                breaker.ping_failed(since, "Redis answered nothing for a second");
            }
            Err(e) if e.is_connection_failure() => breaker.ping_failed(sent_at_ms, "health ping failed"),
            // Redis answered, with an error: reachable.
            Err(_) => breaker.answered(),
        }
        result
    }

    /// The half-open probe: a `PING` in the background, so that no caller waits on it.
    fn probe(&self) {
        let store = self.clone();
        tokio::spawn(async move {
            use futures::FutureExt as _;
            // The breaker starts no other probe while this one is in flight: it must hear an
            // answer even if the ping panicked, or the store would stay known down for good.
            let ping = std::panic::AssertUnwindSafe(store.timed_ping()).catch_unwind().await;
            let answered = match ping {
                Ok(result) => !result.as_ref().is_err_and(StoreError::is_connection_failure),
                Err(_) => {
                    tracing::error!("the store's half-open probe panicked; counted as no answer");
                    false
                }
            };
            store.inner.breaker.probed(answered);
        });
    }

    /// `PING` within [`PING_TIMEOUT`], timed and counted like every store operation.
    async fn timed_ping(&self) -> Result<(), StoreError> {
        let AnyBackend::Redis(backend) = &self.inner.backend else {
            return Ok(());
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(PING_TIMEOUT, backend.ping()).await {
            Ok(result) => result.map_err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Timeout(PING_TIMEOUT)),
        };
        let metrics = &self.inner.metrics;
        metrics.store_duration.with_label_values(&["ping"]).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics.store_errors.with_label_values(&["ping"]).inc();
        }
        result
    }
    /// The record as written: JSON, sealed under its storage key. A failure (a bug: these are
    /// plain structs) is an error the write stops at, logged here with the record's kind; an
    /// empty record would read back as missing and lose the write without a word.
    fn seal<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        match serde_json::to_vec(value) {
            Ok(plain) => self.seal_plain(key, &plain),
            Err(e) => {
                Err(self.unsealed(key, &format!("serialisation failed at line {}, column {}", e.line(), e.column())))
            }
        }
    }

    /// `plain` sealed under its storage key (a record encoded by its own rule).
    fn seal_plain(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.inner.keys.seal(key, plain).map_err(|e| self.unsealed(key, &e.to_string()))
    }

    #[cold]
    fn unsealed(&self, key: &str, cause: &str) -> StoreError {
        let kind = key_kind(key);
        // The cause names no value: serde_json's position only, or the seal's fixed text.
        tracing::error!(key_kind = kind, cause = %cause, "record not written: it could not be sealed");
        StoreError::Seal { kind }
    }

    fn open<T: DeserializeOwned>(&self, key: &str, sealed: &[u8]) -> Option<T> {
        self.open_as(key, sealed, from_json)
    }

    /// A sealed record opened and read by `decode`; one that does not is counted, logged and
    /// treated as missing.
    fn open_as<T>(&self, key: &str, sealed: &[u8], decode: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let opened = open_with(&self.inner.keys, key, sealed, decode);
        if opened.is_none() {
            self.inner.metrics.unopenable_records.inc();
            tracing::warn!(key_kind = key_kind(key), "stored record does not open; treated as missing");
        }
        opened
    }
}

/// Opens a record read from a backend: the seal, then `decode` (JSON for every record but the
/// cached profile, [`profile_record`]). `None` for anything that does not open or decode (wrong
/// key, tampering, a copy under another key, a record of another shape); the store counts and
/// logs those and treats them as missing.
fn open_with<T>(keys: &Keyring, key: &str, sealed: &[u8], decode: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
    keys.open(key, sealed).ok().and_then(|plain| decode(&plain))
}

fn from_json<T: DeserializeOwned>(plain: &[u8]) -> Option<T> {
    serde_json::from_slice(plain).ok()
}

/// [`open_with`] as the store opens a JSON record (the fuzz targets' entry).
pub(crate) fn open_record<T: DeserializeOwned>(keys: &Keyring, key: &str, sealed: &[u8]) -> Option<T> {
    open_with(keys, key, sealed, from_json)
}

/// [`open_with`] as the store opens a cached profile (the fuzz targets' entry).
pub(crate) fn open_profile_record(keys: &Keyring, key: &str, sealed: &[u8]) -> Option<CachedProfile> {
    open_with(keys, key, sealed, profile_record::decode)
}

pub(crate) use self::profile_record::decode as decode_profile_record;
