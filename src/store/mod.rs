//! Where flows, token records, code records and refresh locks live: Redis in production,
//! memory for the dev mode and unit tests. Every record is sealed (AES-256-GCM, [`seal`])
//! before it reaches a backend, so a Redis dump holds no token, code or return URL in clear.
//!
//! Layout: [`Store`] is the typed API the service uses (flows, tokens, exchanges, locks) and
//! does the sealing once; the backends ([`MemoryBackend`], [`RedisBackend`]) only implement
//! a few one-key primitives (the open-flow cap's read several counters of one client, in one
//! hash slot) with identical semantics, so the two cannot drift. Every Redis call
//! goes through the [`breaker`], which answers at once while Redis is known down. Keys
//! (docs/design.md §4, a wire contract):
//!
//! | key | value |
//! |---|---|
//! | `{prefix}:{app}:tok:{openid}` | sealed [`TokenRecord`] |
//! | `{prefix}:flow:{flow_id}` | a hash: `f` the sealed [`Flow`] (its app, return URL, caller state, scope, `force_popup`, client), `n` its callbacks so far; TTL cut to the grace window at first use. A flow started through its start URL lives under its browser-bound id instead ([`Store::bind_to_browser`]: the flow id and 22 random characters), its first key deleted |
//! | `{prefix}:code:{sha256(code)}` | sealed [`CodeRecord`]: the flow that relayed the code, then the exchange's claim, then its result. Not under the app: the relay binds a code in the same round trip that reads its flow, before it knows the app; the flow id's tag names the app (see [`Store::new_flow_id`]) |
//! | `{prefix}:{app}:lock:{openid}` | refresh lock owner (replica id and a random token) |
//! | `{prefix}:{app}:prof:{openid}:{lang}` | sealed [`CachedProfile`] (the profile cache; wxauth's addition to §4) |
//! | `{prefix}:{app}:reach:{openid}:{client}` | sealed [`Reach`]: this client exchanged a code of this user, and the scopes its own sign-ins were granted (what a `users = "own"` client may read of the user) |
//! | `{prefix}:{app}:sess:{openid}` | sealed [`MiniSession`]: a mini program user's `session_key` (never returned to callers), replaced at each sign-in; TTL `token.refresh_life` from the last sign-in |
//! | `{prefix}:union:{unionid}` | a hash: field `{app}:{openid}`, value the sealed [`Account`] (sealed under key and field); TTL `token.refresh_life`, renewed at each sign-in with that unionid. Entries whose token record / session is gone are dropped lazily by [`Store::accounts`]' callers (`FindAccounts`) |
//! | `{prefix}:client:{{client}}:flows:{window}` | the open-flow cap's count of the flows the client started in one window of `flow.ttl / 10` (a decimal integer; [`flow_cap`], [`Store::admit_flow`]; wxauth's addition to §4). The braces are literal, a Redis Cluster hash tag: all of a client's counters share one slot, so one pipeline reads them. Not sealed: it holds a count only |

pub mod breaker;
pub mod flow_cap;
mod memory;
mod redis;
pub mod seal;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

pub use self::breaker::{Breaker, BreakerState, FAILURES_TO_OPEN, PROBE_AFTER};
pub use self::flow_cap::{Admission, FlowSlot};
pub use self::memory::MemoryBackend;
pub use self::redis::{RedisBackend, RedisTls};
use self::seal::Keyring;
use crate::secrets::{AccessToken, AuthCode, RefreshToken, SessionKey};
use crate::telemetry::Metrics;
use crate::wechat::{Lang, Profile};

/// Random characters of a flow id (≥ 128 bits): what makes it unguessable.
const FLOW_ID_RANDOM: usize = 22;
/// Bytes of each of a flow id's two tags (in hex in the id).
const FLOW_TAG: usize = seal::MIN_TAG_LEN;
/// Length of a flow id: [`FLOW_ID_RANDOM`] random characters, then the hex of two 64-bit tags:
/// the owner's (of the random characters, the client and the app: [`Store::flow_is_of`]) and
/// the relay's (of the random characters alone: the relay checks it knowing nothing else,
/// [`Store::is_flow_id`]). Ids made before the relay's tag (a 128-bit owner's tag in the same
/// 32 characters) still pass [`Store::flow_is_of`] (its first 64 bits are the owner's tag) but
/// not the relay.
pub const FLOW_ID_LEN: usize = FLOW_ID_RANDOM + 4 * FLOW_TAG;
/// Length of a start token (the `start` of a start URL): the flow id and the hex of a 64-bit
/// start key, the second half of the relay's tag, which the flow id does not show.
pub const START_TOKEN_LEN: usize = FLOW_ID_LEN + 2 * FLOW_TAG;
/// Random characters a browser-bound flow id adds to the id of the flow it was moved from.
const BROWSER_SUFFIX: usize = 22;
/// Length of a browser-bound flow id ([`Store::bind_to_browser`]): the flow's id and
/// [`BROWSER_SUFFIX`] random characters, 76 of WeChat's 128 bytes of `state`.
pub const BOUND_FLOW_ID_LEN: usize = FLOW_ID_LEN + BROWSER_SUFFIX;
/// What a flow id's owner's tag is made for (tags of other purposes never verify as flow ids).
const FLOW_ID_PURPOSE: &str = "flow id";
/// What a flow id's relay tag (and its start key) is made for.
const FLOW_RELAY_PURPOSE: &str = "flow id relay";
/// What a browser-bound flow's cookie is the tag of.
const FLOW_BROWSER_PURPOSE: &str = "flow browser";

/// A flow as a backend's relay step reads it: the sealed flow, whether this call cut its life
/// to the grace window (its first use), and its callbacks so far.
type FlowRead = (Vec<u8>, bool, u64);

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
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the health ping ([`Store::ping`]) may take. A Redis that refuses or resets the
/// connection opens the circuit breaker at the first failed ping (health NOT_SERVING within
/// 0.3 s of the loss with the 250 ms ping interval); one that answers nothing at all opens it
/// after [`SILENCE_TO_OPEN`] (within about 1.5 s), and the calls waiting on it answer then.
pub const PING_TIMEOUT: Duration = Duration::from_millis(450);

/// How long Redis must have answered nothing (no call, no ping) before a timed-out ping opens
/// the breaker: a stall under load or a fork is not an outage. Refused or reset connections
/// (a killed Redis) open it at the first failed ping.
pub const SILENCE_TO_OPEN: Duration = Duration::from_secs(1);

/// How long a failed ping waits, before it judges, for other calls' answers to be read.
const PING_GRACE: Duration = Duration::from_millis(50);

/// A user's tokens as kept server-side. `Debug` shows no token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// The user's openid in the app.
    pub openid: String,
    /// The unionid, when WeChat gave one.
    pub unionid: Option<String>,
    /// Granted scopes, as WeChat spells them.
    pub scopes: Vec<String>,
    /// A snapshot-page virtual user.
    pub is_snapshot_user: bool,
    /// The web access token.
    pub access_token: AccessToken,
    /// When the access token expires, Unix seconds (by the service clock).
    pub access_expires_at: i64,
    /// The refresh token.
    pub refresh_token: RefreshToken,
    /// When the refresh token expires, Unix seconds.
    pub refresh_expires_at: i64,
    /// When a refresh last renewed or replaced the access token, Unix milliseconds by the
    /// service clock; 0 when none has since the code exchange (and in records sealed before the
    /// field existed). WeChat's refresh returns the *same* access token while it is alive, so
    /// this stamp, never a token comparison, tells a waiter that someone refreshed.
    #[serde(default)]
    pub refreshed_at_ms: i64,
}

/// The sealed bytes a token record was read as. [`Store::replace_token`] and
/// [`Store::delete_token_if`] act only while the key still holds exactly these bytes: every
/// seal draws a random nonce, so equal bytes mean no one wrote since the read. `Debug` shows
/// only the length.
#[derive(Clone)]
pub struct TokenVersion(Vec<u8>);

impl std::fmt::Debug for TokenVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenVersion({} bytes)", self.0.len())
    }
}

/// One authorization in progress, created by `BuildAuthorizeUrl` and read by the relay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    /// The app's config name.
    pub app: String,
    /// The allowlisted URL the relay sends the code to (fixed here, never taken from input).
    pub return_url: String,
    /// The product's own state, handed back verbatim.
    pub caller_state: String,
    /// The scope asked for.
    pub scope: String,
    /// The client that started the flow.
    pub caller: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Whether the authorize URL forces WeChat's consent page (`forcePopup=true`): the start
    /// URL builds the flow's authorize URL again, for its browser-bound id. False in flows
    /// sealed before the field existed.
    #[serde(default)]
    pub force_popup: bool,
}

/// Whether a relay read of a flow was its first use or a repeat within the grace window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowUse {
    /// The first callback: it started the grace window.
    First,
    /// A later callback within the grace window (WeChat's double callback, a reload).
    Repeat,
}

/// What wxauth knows of one WeChat code, kept for the code's life under its hash: the relay
/// records the flow it came through, `ExchangeCode` claims it (one WeChat call however many
/// exchanges run at once) and then records the result, so a repeat of the same `(flow, code)`
/// gets the same answer and the same code with any other flow is refused (docs/design.md §2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeRecord {
    /// The flow the relay sent the code through; its id names the client that created it and
    /// the app ([`Store::flow_is_of`]), the only ones that may exchange the code.
    pub flow_id: String,
    /// How far the exchange has come.
    pub state: CodeState,
}

/// The life of a relayed code.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum CodeState {
    /// Relayed to the product; not exchanged yet.
    Relayed,
    /// A replica is exchanging it with WeChat now (since this time, Unix ms).
    Pending(i64),
    /// Exchanged, with this result.
    Done(ExchangeOutcome),
    /// The exchange was sent and its answer lost: WeChat may have spent the code, so every
    /// later exchange of it is told to start a new sign-in, without asking WeChat.
    Lost,
}

/// What the relay made of a code it was handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeRelay {
    /// First seen: now bound to this flow.
    Bound,
    /// Seen before through the same flow (a reload, WeChat's double callback).
    Again,
    /// Already bound to another flow: never relayed through this one.
    OtherFlow,
}

/// What the relay read and bound in its one round trip ([`Store::relay`]).
#[derive(Debug)]
pub struct Relayed {
    /// The flow.
    pub flow: Flow,
    /// Whether this callback was the flow's first.
    pub used: FlowUse,
    /// The flow's callbacks so far, this one included.
    pub uses: u64,
    /// What became of the callback's code, when it carried one.
    pub code: Option<CodeRelay>,
}

/// A sealed code record as read, with the bytes it was read as (for compare-and-set).
#[derive(Debug)]
pub struct ReadCode {
    /// The record.
    pub record: CodeRecord,
    sealed: Vec<u8>,
}

/// The result of a successful exchange (no tokens: those are in the token record).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExchangeOutcome {
    /// openid of the user.
    pub openid: String,
    /// unionid when given.
    pub unionid: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Snapshot-page virtual user.
    pub is_snapshot_user: bool,
    /// Access token expiry, Unix seconds.
    pub access_expires_at: i64,
    /// Refresh token expiry, Unix seconds.
    pub refresh_expires_at: i64,
    /// The client whose exchange this was: a mobile code's result is shared only with that
    /// client's concurrent duplicates, never with another client's exchange of the same code.
    /// `None` in records written before it was kept (shared with no one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchanged_by: Option<String>,
}

/// A client's claim on a user: it exchanged one of the user's codes itself, and what those
/// sign-ins of its own were granted. Clients with `users = "own"` reach only users they hold
/// one for, and read only what its scopes grant (`crate::consent`): consent given to one
/// product is not another's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reach {
    /// When the client last exchanged a code of the user.
    pub since: i64,
    /// The scopes this client's own sign-ins were granted (a userinfo grant outlives a later
    /// `snsapi_base` sign-in while the token can still read the profile). Empty: a mini
    /// program sign-in (no scopes), or a record written before scopes were kept, which
    /// `crate::consent::Grant::of` reads as no more than the app kind's least scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// A mini program user's session, as `sns/jscode2session` gave it at the last sign-in. `Debug`
/// shows no key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MiniSession {
    /// openid in the mini program.
    pub openid: String,
    /// unionid, when the mini program is bound to an open-platform account.
    pub unionid: Option<String>,
    /// The session key: decrypts the mini program's encrypted user data, signs its checks.
    pub session_key: SessionKey,
    /// When the user signed in, Unix seconds.
    pub signed_in_at: i64,
}

/// One account of a person (a unionid) in one app, as the account index keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// The app's config name.
    pub app: String,
    /// openid in that app.
    pub openid: String,
    /// The app's kind (`official_account`, `website`, `mobile_app`, `mini_program`).
    pub kind: String,
    /// The last sign-in with this account, Unix seconds.
    pub last_sign_in: i64,
}

/// A profile as `sns/userinfo` gave it, and when: answers `GetUserInfo` without a WeChat call
/// while it is younger than the configured cache age.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedProfile {
    /// The profile.
    pub profile: Profile,
    /// When WeChat gave it, Unix seconds (by the service clock).
    pub fetched_at: i64,
}

/// A held refresh lock; pass it back to [`Store::unlock`].
#[derive(Debug)]
pub struct LockToken(Vec<u8>);

#[derive(Debug)]
enum Backend {
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
    backend: Backend,
    keys: Keyring,
    prefix: String,
    replica: String,
    metrics: Arc<Metrics>,
    breaker: Breaker,
}

/// Runs one backend primitive: through the circuit breaker (Redis only; refused at once while
/// the store is known down, and given up at once when the breaker opens while it waits),
/// bounded by [`OPERATION_TIMEOUT`], in a `store` span, timed and counted in the metrics, and
/// a failure logged once, here, naming the operation ([`log_failure`]). Refusals are counted by
/// the breaker, not here.
macro_rules! call {
    ($self:expr, $method:ident ( $($arg:expr),* )) => {{
        let operation = stringify!($method);
        let started = Instant::now();
        let result = async {
            match &$self.inner.backend {
                Backend::Memory(b) => Ok(b.$method($($arg),*)),
                Backend::Redis(b) => {
                    let breaker = &$self.inner.breaker;
                    if let breaker::Admission::Refused { probe } = breaker.admit() {
                        if probe {
                            $self.probe();
                        }
                        return Err(StoreError::KnownDown);
                    }
                    // Boxed and type-erased: the Redis futures are deep, and every caller would
                    // carry their layout.
                    let result = bounded(breaker, Box::pin(b.$method($($arg),*))).await;
                    if matches!(result, Err(StoreError::KnownDown)) {
                        // Given up because the breaker opened: nothing to tell it.
                        return result;
                    }
                    breaker.record(!result.as_ref().is_err_and(StoreError::is_connection_failure));
                    result
                }
            }
        }
        // A static name and no fields: the span costs next to nothing when nothing logs in it.
        .instrument(tracing::info_span!(concat!("store.", stringify!($method))))
        .await;
        if !matches!(result, Err(StoreError::KnownDown)) {
            let metrics = &$self.inner.metrics;
            metrics.store_duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                metrics.store_errors.with_label_values(&[operation]).inc();
            }
        }
        if let Err(error) = &result {
            log_failure(operation, error);
        }
        result
    }};
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
async fn bounded<T>(
    breaker: &Breaker,
    mut call: futures::future::BoxFuture<'_, ::redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
    loop {
        let slice = deadline.saturating_duration_since(tokio::time::Instant::now()).min(OPEN_CHECK);
        match tokio::time::timeout(slice, &mut call).await {
            Ok(result) => return result.map_err(StoreError::Unavailable),
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(StoreError::Timeout(OPERATION_TIMEOUT)),
            Err(_) if breaker.state() == breaker::BreakerState::Open => return Err(StoreError::KnownDown),
            Err(_) => {}
        }
    }
}

impl Store {
    /// An in-memory store (one process only) whose records expire by `clock`.
    pub fn memory(keys: Keyring, prefix: &str, metrics: Arc<Metrics>, clock: crate::clock::Clock) -> Self {
        Self::with(Backend::Memory(MemoryBackend::new(clock)), keys, prefix, metrics)
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
        Ok(Self::with(Backend::Redis(backend), keys, prefix, metrics))
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
        Ok(Self::with(Backend::Redis(backend), keys, prefix, metrics))
    }

    fn with(backend: Backend, keys: Keyring, prefix: &str, metrics: Arc<Metrics>) -> Self {
        let replica = crate::random_id(12);
        // Real time, never the clock tests move: the breaker's waits are short and real.
        let breaker = Breaker::new(crate::clock::Clock::system(), Arc::clone(&metrics));
        let inner = Inner { backend, keys, prefix: prefix.to_owned(), replica, metrics, breaker };
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
        let Backend::Redis(backend) = &self.inner.backend else {
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

    fn flow_key(&self, flow_id: &str) -> String {
        // Concatenated, not `format!`ted: the relay builds this key and the code's on every
        // callback, and the formatting machinery cost more than the copying.
        [self.inner.prefix.as_str(), ":flow:", flow_id].concat()
    }

    fn token_key(&self, app: &str, openid: &str) -> String {
        format!("{}:{app}:tok:{openid}", self.inner.prefix)
    }

    fn code_key(&self, code: &AuthCode) -> String {
        let digest = Sha256::digest(code.secret().as_bytes());
        [self.inner.prefix.as_str(), ":code:", &hex::encode(digest)].concat()
    }

    fn reach_key(&self, app: &str, openid: &str, client: &str) -> String {
        format!("{}:{app}:reach:{openid}:{client}", self.inner.prefix)
    }

    fn session_key(&self, app: &str, openid: &str) -> String {
        format!("{}:{app}:sess:{openid}", self.inner.prefix)
    }

    fn union_key(&self, unionid: &str) -> String {
        format!("{}:union:{unionid}", self.inner.prefix)
    }

    fn lock_key(&self, app: &str, openid: &str) -> String {
        format!("{}:{app}:lock:{openid}", self.inner.prefix)
    }

    fn profile_key(&self, app: &str, openid: &str, lang: Lang) -> String {
        format!("{}:{app}:prof:{openid}:{}", self.inner.prefix, lang.as_str())
    }

    /// The stem of the client's open-flow counters ([`flow_cap`] adds `:{window}`): the client
    /// in braces, a Cluster hash tag, so that one pipeline may touch all of them.
    fn client_flows_key(&self, client: &str) -> String {
        format!("{}:client:{{{client}}}:flows", self.inner.prefix)
    }

    /// The record as written: JSON, sealed under its storage key. A failure (a bug: these are
    /// plain structs) is an error the write stops at, logged here with the record's kind; an
    /// empty record would read back as missing and lose the write without a word.
    fn seal<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        let sealed = match serde_json::to_vec(value) {
            Ok(plain) => self.inner.keys.seal(key, &plain).map_err(|e| e.to_string()),
            Err(e) => Err(format!("serialisation failed at line {}, column {}", e.line(), e.column())),
        };
        sealed.map_err(|cause| {
            let kind = key_kind(key);
            // The cause names no value: serde_json's position only, or the seal's fixed text.
            tracing::error!(key_kind = kind, cause = %cause, "record not written: it could not be sealed");
            StoreError::Seal { kind }
        })
    }

    fn open<T: DeserializeOwned>(&self, key: &str, sealed: &[u8]) -> Option<T> {
        let opened = open_record(&self.inner.keys, key, sealed);
        if opened.is_none() {
            self.inner.metrics.unopenable_records.inc();
            tracing::warn!(key_kind = key_kind(key), "stored record does not open; treated as missing");
        }
        opened
    }

    /// Stores a new flow for `ttl`. Returns false if the id is taken (never, for 128-bit ids).
    pub async fn put_flow(&self, flow_id: &str, flow: &Flow, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.flow_key(flow_id);
        let sealed = self.seal(&key, flow)?;
        call!(self, create_flow(&key, &sealed, ttl))
    }

    /// Deletes a flow (one whose start the open-flow cap refused after it was written).
    pub async fn delete_flow(&self, flow_id: &str) -> Result<(), StoreError> {
        call!(self, del(&self.flow_key(flow_id)))
    }

    /// Counts one more flow started by `client` under its cap of `cap` flows per `ttl`
    /// (`flow.ttl`), at `now_ms` on the service clock: one pipelined round trip on the
    /// client's per-window counters, and a second one only when refused, to take the count
    /// back. Old windows stop counting on their own, with no cleanup job. A flow used early
    /// still counts until its window leaves the range: the cap bounds flows started, and is
    /// exact to one window (`ttl / 10`; [`flow_cap`] states the bound).
    pub async fn admit_flow(
        &self,
        client: &str,
        cap: u32,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<Admission, StoreError> {
        let windows = flow_cap::Windows::at(ttl, now_ms);
        let (current, others) = windows.keys(&self.client_flows_key(client));
        let (count, counts) = call!(self, admit(&current, &others, windows.life()))?;
        let admission = windows.judge(cap, count, &counts);
        // A refusal takes its own count back, or the client's retries would keep it refused. If
        // that fails (logged by `call!`) the count over-refuses by one until its window leaves.
        if matches!(admission, Admission::Refused { .. }) {
            let _ = call!(self, release(&current, windows.life()));
        }
        Ok(admission)
    }

    /// Gives back a place [`Store::admit_flow`] counted, for a flow that was never written
    /// (its write failed): the client's cap counts only flows that exist.
    pub async fn release_flow_slot(&self, client: &str, slot: &FlowSlot) -> Result<(), StoreError> {
        call!(self, release(&slot.key(&self.client_flows_key(client)), slot.life()))
    }

    /// A new flow id for `client` in `app` ([`FLOW_ID_LEN`]): random characters, the owner's
    /// tag (of them, the client and the app) and the relay's tag (of them alone), under the
    /// sealing key. The id alone then proves which client and app a flow was started for, long
    /// after the flow itself has expired, without a read; and the relay tells a made-up id
    /// from one of wxauth's without knowing the client or the app.
    pub fn new_flow_id(&self, client: &str, app: &str) -> String {
        self.new_flow(client, app).0
    }

    /// [`Store::new_flow_id`] and the flow's start token ([`START_TOKEN_LEN`]): the id and
    /// the start key, the half of the relay's tag the id does not show. Only the start URL
    /// carries it, so a flow id seen elsewhere (a QR code's `state`, a callback URL) cannot
    /// start the flow in another browser.
    pub fn new_flow(&self, client: &str, app: &str) -> (String, String) {
        let random = crate::random_id(FLOW_ID_RANDOM);
        let owner = self.inner.keys.tag(&[FLOW_ID_PURPOSE, &random, client, app]);
        let relay = self.inner.keys.tag(&[FLOW_RELAY_PURPOSE, &random]);
        let id = [random.as_str(), &hex::encode(&owner[..FLOW_TAG]), &hex::encode(&relay[..FLOW_TAG])].concat();
        let start = [id.as_str(), &hex::encode(&relay[FLOW_TAG..2 * FLOW_TAG])].concat();
        (id, start)
    }

    /// Whether `flow_id` was made by [`Store::new_flow_id`] for `client` in `app` (under any
    /// configured sealing key). Checks the owner's tag only, so ids made before the relay's tag
    /// existed pass too.
    pub fn flow_is_of(&self, flow_id: &str, client: &str, app: &str) -> bool {
        if flow_id.len() != FLOW_ID_LEN || !flow_id.is_ascii() {
            return false;
        }
        let (random, owner) = (&flow_id[..FLOW_ID_RANDOM], &flow_id[FLOW_ID_RANDOM..FLOW_ID_RANDOM + 2 * FLOW_TAG]);
        hex::decode(owner).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_ID_PURPOSE, random, client, app], &tag))
    }

    /// Whether `state` is a flow id wxauth made (its relay tag checks), whoever its client and
    /// app: one tag computed, no store call. The relay asks this before it touches the store.
    pub fn is_flow_id(&self, state: &str) -> bool {
        if state.len() != FLOW_ID_LEN || !state.is_ascii() {
            return false;
        }
        let (random, relay) = (&state[..FLOW_ID_RANDOM], &state[FLOW_ID_RANDOM + 2 * FLOW_TAG..]);
        hex::decode(relay).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_RELAY_PURPOSE, random], &tag))
    }

    /// The flow id a start token starts, if the token is one wxauth made ([`Store::new_flow`]):
    /// the relay's whole tag (the id's half and the start key) checks. No store call.
    pub fn flow_of_start_token<'a>(&self, token: &'a str) -> Option<&'a str> {
        if token.len() != START_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let random = &token[..FLOW_ID_RANDOM];
        let tag = [&token[FLOW_ID_RANDOM + 2 * FLOW_TAG..FLOW_ID_LEN], &token[FLOW_ID_LEN..]].concat();
        let valid = hex::decode(tag).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_RELAY_PURPOSE, random], &tag));
        valid.then(|| &token[..FLOW_ID_LEN])
    }

    /// What the browser that started a browser-bound flow holds (its cookie's value): the hex
    /// of the bound id's tag. Stateless: the relay checks it with [`Store::is_browser_of`].
    pub fn browser_tag(&self, bound_id: &str) -> String {
        hex::encode(self.inner.keys.tag(&[FLOW_BROWSER_PURPOSE, bound_id]))
    }

    /// Whether `cookie` is [`Store::browser_tag`] of `bound_id` (under any configured key).
    pub fn is_browser_of(&self, bound_id: &str, cookie: &str) -> bool {
        cookie.len() == 2 * seal::TAG_LEN
            && hex::decode(cookie).is_ok_and(|tag| self.inner.keys.verify_tag(&[FLOW_BROWSER_PURPOSE, bound_id], &tag))
    }

    /// The flow id a browser-bound id was moved from (the id the product holds, to which the
    /// relay binds codes), or the id itself.
    pub fn flow_id_of(state: &str) -> &str {
        if state.len() == BOUND_FLOW_ID_LEN { &state[..FLOW_ID_LEN] } else { state }
    }

    /// Moves an unused flow to a new browser-bound id ([`BOUND_FLOW_ID_LEN`]: the flow's id
    /// and random characters), keeping its remaining life: the old id stops relaying at once,
    /// and a second start of it finds nothing. Returns the new id, the flow and its remaining
    /// life; `None` when there is no such flow or it has relayed a callback already (then it is
    /// gone too: a start URL works before the flow's callbacks or not at all).
    pub async fn bind_to_browser(&self, flow_id: &str) -> Result<Option<(String, Flow, Duration)>, StoreError> {
        let key = self.flow_key(flow_id);
        let Some((sealed, uses, left)) = call!(self, take_flow(&key))? else {
            return Ok(None);
        };
        let Some(flow) = self.open::<Flow>(&key, &sealed) else {
            return Ok(None);
        };
        if uses > 0 || left.is_zero() {
            return Ok(None);
        }
        let bound = [flow_id, &crate::random_id(BROWSER_SUFFIX)].concat();
        let bound_key = self.flow_key(&bound);
        let sealed = self.seal(&bound_key, &flow)?;
        if !call!(self, create_flow(&bound_key, &sealed, left))? {
            return Ok(None);
        }
        Ok(Some((bound, flow, left)))
    }

    /// A flow as it is, without counting a callback or cutting its life (a code-less callback:
    /// a user who refused uses none of the flow's callbacks).
    pub async fn peek_flow(&self, flow_id: &str) -> Result<Option<Flow>, StoreError> {
        let key = self.flow_key(flow_id);
        let found = call!(self, read_flow(&key))?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// The relay's one round trip: reads the flow, counts the callback and, atomically, cuts
    /// the flow's remaining life to `grace` (the first callback starts the grace window,
    /// later ones within it read the same flow); and, together with that, binds `code` (if
    /// the callback has one) for `code_ttl` to the flow's id as the product holds it
    /// ([`Store::flow_id_of`]): the first flow to relay a code owns it, the same flow may relay
    /// it again, no other flow can. A callback past [`crate::relay::MAX_CALLBACKS`] binds
    /// nothing: a code it bound in the round trip is unbound before this returns (the relay
    /// refuses it, and the code reached no product). `None`: no such flow (and nothing is left
    /// behind for it).
    pub async fn relay(
        &self,
        flow_id: &str,
        grace: Duration,
        code: Option<&AuthCode>,
        code_ttl: Duration,
    ) -> Result<Option<Relayed>, StoreError> {
        let key = self.flow_key(flow_id);
        let Some(code) = code else {
            let found = call!(self, use_flow(&key, grace))?;
            return Ok(found.and_then(|(sealed, cut, uses)| self.relayed(&key, &sealed, cut, uses, None)));
        };
        let owner = Self::flow_id_of(flow_id);
        let code_key = self.code_key(code);
        let record = CodeRecord { flow_id: owner.to_owned(), state: CodeState::Relayed };
        let binding = self.seal(&code_key, &record)?;
        let (found, existing) = call!(self, use_flow_binding(&key, grace, &code_key, &binding, code_ttl))?;
        let bound = match existing {
            None => CodeRelay::Bound,
            Some(sealed) => match self.open::<CodeRecord>(&code_key, &sealed) {
                Some(read) if read.flow_id == owner => CodeRelay::Again,
                // A record that does not open (another sealing key, tampering) binds nothing
                // we can check: refuse rather than guess.
                _ => CodeRelay::OtherFlow,
            },
        };
        let relayed = found.and_then(|(sealed, cut, uses)| self.relayed(&key, &sealed, cut, uses, Some(bound)));
        let past_budget = relayed.as_ref().is_some_and(|r| r.uses > crate::relay::MAX_CALLBACKS);
        if (relayed.is_none() || past_budget) && bound == CodeRelay::Bound {
            // No such flow, or a callback past the budget: the code is bound to nothing; unbind
            // it (only while it still holds this binding) rather than let made-up flow ids
            // leave records behind, or a refused callback hand a flow a code to exchange.
            call!(self, del_if_eq(&code_key, &binding))?;
        }
        Ok(relayed)
    }

    fn relayed(&self, key: &str, sealed: &[u8], cut: bool, uses: u64, code: Option<CodeRelay>) -> Option<Relayed> {
        let flow = self.open(key, sealed)?;
        let used = if cut { FlowUse::First } else { FlowUse::Repeat };
        Some(Relayed { flow, used, uses, code })
    }

    /// The user's token record, if any (a record that does not open counts as none).
    pub async fn get_token(&self, app: &str, openid: &str) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.token_key(app, openid);
        let found = call!(self, get(&key))?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// The user's token record and the version it was read at, for a compare-and-write.
    pub async fn read_token(&self, app: &str, openid: &str) -> Result<Option<(TokenRecord, TokenVersion)>, StoreError> {
        let key = self.token_key(app, openid);
        let found = call!(self, get(&key))?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed).map(|record| (record, TokenVersion(sealed)))))
    }

    /// Stores `record` for `ttl` only if the record is still at `read` (one atomic step on the
    /// token key): false when someone wrote or deleted it since. A refresh that outlived its
    /// lock can then neither bring back a user `ForgetUser` removed nor overwrite a newer
    /// refresh or a new sign-in.
    pub async fn replace_token(
        &self,
        app: &str,
        read: &TokenVersion,
        record: &TokenRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.token_key(app, &record.openid);
        let sealed = self.seal(&key, record)?;
        call!(self, set_if_eq(&key, &read.0, &sealed, ttl))
    }

    /// Forgets the user (a dead refresh token) only if the record is still at `read`: false
    /// when a new sign-in (or a newer refresh) replaced it, which then stays. Cached profiles
    /// go first, as in [`Store::delete_user`]; losing them to a replaced record only costs a
    /// profile fetch.
    pub async fn delete_token_if(&self, app: &str, openid: &str, read: &TokenVersion) -> Result<bool, StoreError> {
        for lang in Lang::ALL {
            call!(self, del(&self.profile_key(app, openid, lang)))?;
        }
        call!(self, del_if_eq(&self.token_key(app, openid), &read.0))
    }

    /// Stores the user's token record until its refresh token dies.
    pub async fn put_token(&self, app: &str, record: &TokenRecord, ttl: Duration) -> Result<(), StoreError> {
        let key = self.token_key(app, &record.openid);
        let sealed = self.seal(&key, record)?;
        call!(self, set(&key, &sealed, ttl))
    }

    /// Forgets the user (the refresh token died, or `ForgetUser`): cached profiles first, then
    /// the tokens, so a failure half-way leaves the record and a retry deletes the rest.
    pub async fn delete_user(&self, app: &str, openid: &str) -> Result<(), StoreError> {
        for lang in Lang::ALL {
            call!(self, del(&self.profile_key(app, openid, lang)))?;
        }
        call!(self, del(&self.session_key(app, openid)))?;
        call!(self, del(&self.token_key(app, openid)))
    }

    /// Stores a mini program user's session for `ttl`, replacing the last one.
    pub async fn put_session(&self, app: &str, session: &MiniSession, ttl: Duration) -> Result<(), StoreError> {
        let key = self.session_key(app, &session.openid);
        let sealed = self.seal(&key, session)?;
        call!(self, set(&key, &sealed, ttl))
    }

    /// A mini program user's session, if one is stored.
    pub async fn get_session(&self, app: &str, openid: &str) -> Result<Option<MiniSession>, StoreError> {
        let key = self.session_key(app, openid);
        let found = call!(self, get(&key))?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// Records `account` under `unionid` and renews the index's life to `ttl` (one `MULTI` on
    /// the one key). The value is sealed under the key and the field, so it cannot be moved to
    /// another person's index or another field.
    pub async fn put_account(&self, unionid: &str, account: &Account, ttl: Duration) -> Result<(), StoreError> {
        let key = self.union_key(unionid);
        let field = account_field(&account.app, &account.openid);
        let sealed = self.seal(&account_aad(&key, &field), account)?;
        call!(self, hset_px(&key, &field, &sealed, ttl))
    }

    /// Every account recorded under `unionid` (entries that do not open are left out).
    pub async fn accounts(&self, unionid: &str) -> Result<Vec<Account>, StoreError> {
        let key = self.union_key(unionid);
        let fields = call!(self, hgetall(&key))?;
        Ok(fields
            .into_iter()
            .filter_map(|(field, sealed)| self.open::<Account>(&account_aad(&key, &field), &sealed))
            .collect())
    }

    /// Takes one account out of `unionid`'s index.
    pub async fn drop_account(&self, unionid: &str, app: &str, openid: &str) -> Result<(), StoreError> {
        call!(self, hdel(&self.union_key(unionid), &account_field(app, openid)))
    }

    /// Writes `record` for `ttl` only if the key is free (`SET NX`): false when a record of
    /// this code exists (read it with [`Store::get_code`]). The mobile-app exchange's claim.
    pub async fn claim_code(&self, code: &AuthCode, record: &CodeRecord, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.code_key(code);
        let sealed = self.seal(&key, record)?;
        call!(self, set_nx(&key, &sealed, ttl))
    }

    /// Deletes a code's record (a mobile-app exchange that WeChat refused: a retry asks WeChat).
    pub async fn delete_code(&self, code: &AuthCode) -> Result<(), StoreError> {
        call!(self, del(&self.code_key(code)))
    }

    /// The cached profile in `lang`, if one is stored.
    pub async fn get_profile(&self, app: &str, openid: &str, lang: Lang) -> Result<Option<CachedProfile>, StoreError> {
        let key = self.profile_key(app, openid, lang);
        let found = call!(self, get(&key))?;
        Ok(found.and_then(|sealed| self.open(&key, &sealed)))
    }

    /// Caches a profile for `ttl`.
    pub async fn put_profile(
        &self,
        app: &str,
        openid: &str,
        lang: Lang,
        cached: &CachedProfile,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.profile_key(app, openid, lang);
        let sealed = self.seal(&key, cached)?;
        call!(self, set(&key, &sealed, ttl))
    }

    /// What wxauth knows of `code`, if anything.
    pub async fn get_code(&self, code: &AuthCode) -> Result<Option<ReadCode>, StoreError> {
        let key = self.code_key(code);
        let found = call!(self, get(&key))?;
        Ok(found.and_then(|sealed| Some(ReadCode { record: self.open(&key, &sealed)?, sealed })))
    }

    /// Replaces the code record `read` with `next` for `ttl`, only if no one changed it since it
    /// was read (one atomic compare-and-set). False: someone did; read again.
    pub async fn swap_code(
        &self,
        code: &AuthCode,
        read: &ReadCode,
        next: &CodeRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = self.code_key(code);
        let sealed = self.seal(&key, next)?;
        call!(self, set_if_eq(&key, &read.sealed, &sealed, ttl))
    }

    /// Writes a code record for `ttl`, whatever was there (only the holder of the exchange's
    /// claim does this).
    pub async fn put_code(&self, code: &AuthCode, record: &CodeRecord, ttl: Duration) -> Result<(), StoreError> {
        let key = self.code_key(code);
        let sealed = self.seal(&key, record)?;
        call!(self, set(&key, &sealed, ttl))
    }

    /// Stores `record` only if the user has no record (one atomic `SET NX`): false when
    /// someone wrote one since the caller found none.
    pub async fn create_token(&self, app: &str, record: &TokenRecord, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.token_key(app, &record.openid);
        let sealed = self.seal(&key, record)?;
        call!(self, set_nx(&key, &sealed, ttl))
    }

    /// Records `client`'s claim on this user, for `ttl` (the record's life), replacing the last.
    pub async fn put_reach(
        &self,
        app: &str,
        openid: &str,
        client: &str,
        reach: &Reach,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.reach_key(app, openid, client);
        let sealed = self.seal(&key, reach)?;
        call!(self, set(&key, &sealed, ttl))
    }

    /// `client`'s claim on this user, if it exchanged a code of the user within the record's
    /// life (a claim that does not open counts as none: the client signs the user in again).
    pub async fn get_reach(&self, app: &str, openid: &str, client: &str) -> Result<Option<Reach>, StoreError> {
        let key = self.reach_key(app, openid, client);
        let found = call!(self, get(&key))?;
        Ok(found.and_then(|sealed| self.open::<Reach>(&key, &sealed)))
    }

    /// Whether any of `clients` holds a claim on this user (ForgetUser: the user's records go
    /// only when none does). The reads go out at once (different keys: concurrent commands).
    pub async fn any_reach(&self, app: &str, openid: &str, clients: &[&str]) -> Result<bool, StoreError> {
        let reads = clients.iter().map(|client| self.get_reach(app, openid, client));
        let mut any = false;
        for read in futures::future::join_all(reads).await {
            any |= read?.is_some();
        }
        Ok(any)
    }

    /// Forgets which of `clients` reached this user.
    pub async fn forget_reach(&self, app: &str, openid: &str, clients: &[&str]) -> Result<(), StoreError> {
        for client in clients {
            call!(self, del(&self.reach_key(app, openid, client)))?;
        }
        Ok(())
    }

    /// Takes the refresh lock of one user for `ttl`; `None` when another holder has it.
    pub async fn try_lock(&self, app: &str, openid: &str, ttl: Duration) -> Result<Option<LockToken>, StoreError> {
        let token = format!("{}:{}", self.inner.replica, crate::random_id(16)).into_bytes();
        let taken = call!(self, set_nx(&self.lock_key(app, openid), &token, ttl))?;
        Ok(taken.then_some(LockToken(token)))
    }

    /// Releases a lock we hold (compare-and-delete: never another holder's lock).
    pub async fn unlock(&self, app: &str, openid: &str, token: LockToken) -> Result<(), StoreError> {
        call!(self, del_if_eq(&self.lock_key(app, openid), &token.0)).map(|_| ())
    }
}

/// Opens a record read from a backend: the seal, then the JSON. `None` for anything that does
/// not open or decode (wrong key, tampering, a copy under another key, a record of another
/// shape); the store counts and logs those and treats them as missing.
pub(crate) fn open_record<T: DeserializeOwned>(keys: &Keyring, key: &str, sealed: &[u8]) -> Option<T> {
    keys.open(key, sealed).ok().and_then(|plain| serde_json::from_slice(&plain).ok())
}

/// The field of an account in a unionid's index.
fn account_field(app: &str, openid: &str) -> String {
    format!("{app}:{openid}")
}

/// What an account's value is sealed under: the index key and the field.
fn account_aad(key: &str, field: &str) -> String {
    format!("{key}\u{0}{field}")
}

/// The kind of a key (`tok`, `flow`, ...) for logs: never the openid, code hash or flow id.
fn key_kind(key: &str) -> &'static str {
    ["tok", "flow", "code", "lock", "prof", "reach", "sess", "union", "client"]
        .into_iter()
        .find(|kind| key.contains(&format!(":{kind}:")))
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::error::ApiError;

    fn store_with(lines: &[String]) -> Store {
        let keys = Keyring::parse(&lines.join("\n")).expect("keyring");
        Store::memory(keys, "wxauth", Metrics::new(), Clock::system())
    }

    #[test]
    fn a_flow_id_names_its_client_and_app_and_nothing_else() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let id = store.new_flow_id("passport", "mp");
        assert_eq!(id.len(), FLOW_ID_LEN);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(store.flow_is_of(&id, "passport", "mp"));
        assert!(!store.flow_is_of(&id, "trade", "mp"), "another client");
        assert!(!store.flow_is_of(&id, "passport", "web"), "another app");
        assert!(!store.flow_is_of(&id, "passportm", "p"), "the parts are length-prefixed");
        let mut forged = id.clone().into_bytes();
        forged[0] = if forged[0] == b'a' { b'b' } else { b'a' };
        assert!(!store.flow_is_of(&String::from_utf8(forged).expect("ascii"), "passport", "mp"), "another random part");
        assert!(!store.flow_is_of(&id[..FLOW_ID_LEN - 2], "passport", "mp"), "truncated");
        let not_hex = format!("{}zz{}", &id[..FLOW_ID_RANDOM], &id[FLOW_ID_RANDOM + 2..]);
        assert!(!store.flow_is_of(&not_hex, "passport", "mp"), "not hex");
        assert!(!store.flow_is_of("", "passport", "mp"));
        assert_ne!(store.new_flow_id("passport", "mp"), id, "random");
    }

    #[test]
    fn the_relay_tells_a_flow_id_from_a_made_up_one_without_its_client_or_app() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let id = store.new_flow_id("passport", "mp");
        assert!(store.is_flow_id(&id));
        let mut forged = id.clone().into_bytes();
        forged[3] = if forged[3] == b'a' { b'b' } else { b'a' };
        assert!(!store.is_flow_id(&String::from_utf8(forged).expect("ascii")), "another random part");
        assert!(!store.is_flow_id(&"a".repeat(FLOW_ID_LEN)), "made up");
        assert!(!store.is_flow_id(&id[..FLOW_ID_LEN - 1]), "truncated");
        assert!(!store_with(&[Keyring::generate_line(2)]).is_flow_id(&id), "another deployment's key");
    }

    #[test]
    fn a_flow_id_made_before_the_relay_tag_still_names_its_client_and_app() {
        // Arrange: the earlier form, the random part and the whole 128-bit owner's tag.
        let store = store_with(&[Keyring::generate_line(1)]);
        let random = crate::random_id(FLOW_ID_RANDOM);
        let legacy =
            format!("{random}{}", hex::encode(store.inner.keys.tag(&[FLOW_ID_PURPOSE, &random, "passport", "mp"])));
        // Act / Assert
        assert!(store.flow_is_of(&legacy, "passport", "mp"));
        assert!(!store.flow_is_of(&legacy, "trade", "mp"));
        assert!(!store.is_flow_id(&legacy), "the relay does not know it");
    }

    #[test]
    fn a_start_token_starts_its_flow_and_a_flow_id_is_no_start_token() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let (id, token) = store.new_flow("passport", "mp");
        assert_eq!(token.len(), START_TOKEN_LEN);
        assert!(token.starts_with(&id));
        assert_eq!(store.flow_of_start_token(&token), Some(id.as_str()));
        assert_eq!(store.flow_of_start_token(&id), None, "the flow id alone");
        let guessed = format!("{id}{}", "0".repeat(START_TOKEN_LEN - FLOW_ID_LEN));
        assert_eq!(store.flow_of_start_token(&guessed), None, "a made-up start key");
        let (other, _) = store.new_flow("passport", "mp");
        let spliced = format!("{other}{}", &token[FLOW_ID_LEN..]);
        assert_eq!(store.flow_of_start_token(&spliced), None, "another flow's start key");
    }

    #[test]
    fn a_browser_tag_holds_for_its_bound_id_only() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let bound = format!("{}{}", store.new_flow_id("passport", "mp"), crate::random_id(BROWSER_SUFFIX));
        let tag = store.browser_tag(&bound);
        assert!(store.is_browser_of(&bound, &tag));
        let other = format!("{}{}", &bound[..FLOW_ID_LEN], crate::random_id(BROWSER_SUFFIX));
        assert!(!store.is_browser_of(&other, &tag), "another bound id of the same flow");
        assert!(!store.is_browser_of(&bound, &tag[..16]), "a truncated cookie");
        assert!(!store.is_browser_of(&bound, ""), "no cookie");
        assert_eq!(Store::flow_id_of(&bound), &bound[..FLOW_ID_LEN]);
    }

    #[tokio::test]
    async fn a_flow_moves_to_a_browser_once_and_its_first_id_stops_relaying() {
        // Arrange
        let store = store_with(&[Keyring::generate_line(1)]);
        let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
        let id = store.new_flow_id("passport", "mp");
        assert!(store.put_flow(&id, &test_flow(), ttl).await.expect("put"));
        // Act
        let (bound, flow, left) = store.bind_to_browser(&id).await.expect("bind").expect("moved");
        // Assert
        assert_eq!((bound.len(), &bound[..FLOW_ID_LEN], flow), (BOUND_FLOW_ID_LEN, id.as_str(), test_flow()));
        assert!(left <= ttl && left > Duration::from_secs(590), "{left:?}");
        assert!(store.bind_to_browser(&id).await.expect("again").is_none(), "a start works once");
        let code = AuthCode::new("CODE".to_owned());
        assert!(store.relay(&id, grace, Some(&code), ttl).await.expect("relay").is_none(), "the first id is gone");
        let relayed = store.relay(&bound, grace, Some(&code), ttl).await.expect("relay").expect("found");
        assert_eq!((relayed.uses, relayed.code), (1, Some(CodeRelay::Bound)));
        let record = store.get_code(&code).await.expect("get").expect("bound");
        assert_eq!(record.record.flow_id, id, "bound to the id the product holds");
        assert!(store.bind_to_browser(&bound).await.expect("bound").is_none());
    }

    #[tokio::test]
    async fn a_flow_that_relayed_a_callback_cannot_be_started() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
        let id = store.new_flow_id("passport", "mp");
        assert!(store.put_flow(&id, &test_flow(), ttl).await.expect("put"));
        let code = AuthCode::new("QRCODE".to_owned());
        store.relay(&id, grace, Some(&code), ttl).await.expect("relay").expect("found");
        assert!(store.bind_to_browser(&id).await.expect("start").is_none());
        let again = store.relay(&id, grace, Some(&code), ttl).await.expect("relay").expect("the flow is still there");
        assert_eq!(again.uses, 2, "the refused start left the flow and its count alone");
    }

    #[tokio::test]
    async fn a_callback_past_the_budget_binds_no_code() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
        let id = store.new_flow_id("passport", "mp");
        assert!(store.put_flow(&id, &test_flow(), ttl).await.expect("put"));
        for n in 1..=crate::relay::MAX_CALLBACKS {
            let code = AuthCode::new(format!("CODE{n}"));
            store.relay(&id, grace, Some(&code), ttl).await.expect("relay").expect("found");
        }
        let late = AuthCode::new("LATE".to_owned());
        let relayed = store.relay(&id, grace, Some(&late), ttl).await.expect("relay").expect("found");
        assert_eq!(relayed.uses, crate::relay::MAX_CALLBACKS + 1);
        assert!(store.get_code(&late).await.expect("get").is_none(), "the 4th callback's code is bound to nothing");
        assert!(store.get_code(&AuthCode::new("CODE1".to_owned())).await.expect("get").is_some());
    }

    fn test_flow() -> Flow {
        Flow {
            app: "mp".into(),
            return_url: "https://passport.example.com/cb".into(),
            caller_state: "s".into(),
            scope: "snsapi_base".into(),
            caller: "passport".into(),
            created_at: 0,
            force_popup: true,
        }
    }

    #[test]
    fn flow_ids_verify_across_a_key_rotation_and_not_under_other_keys() {
        let (old, new) = (Keyring::generate_line(1), Keyring::generate_line(2));
        let id = store_with(std::slice::from_ref(&old)).new_flow_id("passport", "mp");
        assert!(store_with(&[new.clone(), old]).flow_is_of(&id, "passport", "mp"), "the old key still configured");
        assert!(!store_with(&[new]).flow_is_of(&id, "passport", "mp"), "another deployment's key");
    }

    #[tokio::test]
    async fn a_code_is_bound_to_the_first_flow_that_relays_it() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let flow = |app: &str| Flow {
            app: app.into(),
            return_url: "https://passport.example.com/cb".into(),
            caller_state: "s".into(),
            scope: "snsapi_base".into(),
            caller: "passport".into(),
            created_at: 0,
            force_popup: false,
        };
        let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
        let (first, second) = (store.new_flow_id("passport", "mp"), store.new_flow_id("passport", "mp"));
        for id in [&first, &second] {
            assert!(store.put_flow(id, &flow("mp"), ttl).await.expect("put"));
        }
        let code = AuthCode::new("CODE".to_owned());
        let relay = |id: &str| {
            let (store, id, code) = (store.clone(), id.to_owned(), code.clone());
            async move { store.relay(&id, grace, Some(&code), ttl).await.expect("relay").map(|r| (r.used, r.uses, r.code)) }
        };
        assert_eq!(relay(&first).await, Some((FlowUse::First, 1, Some(CodeRelay::Bound))));
        assert_eq!(relay(&first).await, Some((FlowUse::Repeat, 2, Some(CodeRelay::Again))));
        assert_eq!(relay(&second).await, Some((FlowUse::First, 1, Some(CodeRelay::OtherFlow))));
        let unknown = store.new_flow_id("passport", "mp");
        assert_eq!(relay(&unknown).await, None);
        assert_eq!(store.get_code(&code).await.expect("get").map(|r| r.record.flow_id), Some(first.clone()));
        let fresh = AuthCode::new("FRESH".to_owned());
        assert_eq!(store.relay(&unknown, grace, Some(&fresh), ttl).await.expect("relay").map(|r| r.uses), None);
        assert!(store.get_code(&fresh).await.expect("get").is_none(), "a code sent with an unknown flow is not kept");
    }

    /// A value whose serialisation fails, as a map with a non-string key would.
    struct Unserialisable;

    impl Serialize for Unserialisable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("secret-looking content"))
        }
    }

    #[test]
    fn a_record_that_cannot_be_serialised_is_an_error_naming_its_kind() {
        let store = store_with(&[Keyring::generate_line(1)]);
        let key = store.token_key("mp", "o1");
        let sealed = store.seal(&key, &Unserialisable);
        assert!(matches!(sealed, Err(StoreError::Seal { kind: "tok" })), "{sealed:?}");
        let error = sealed.map(|_| ()).expect_err("refused");
        assert!(!error.to_string().contains("secret"), "{error}");
        assert_eq!(ApiError::from(error), ApiError::Internal, "a bug in wxauth, not an outage");
    }

    /// Every event logged, as `LEVEL message operation=...`.
    #[derive(Clone, Default)]
    struct Events(Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if matches!(field.name(), "message" | "operation") {
                        self.0.push_str(&format!(" {}={value:?}", field.name()));
                    }
                }
            }
            let mut fields = Fields(event.metadata().level().to_string());
            event.record(&mut fields);
            self.0.lock().expect("events").push(fields.0);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_store_call_is_logged_once_with_its_operation() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut redis = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        let url = format!("redis://127.0.0.1:{port}/0");
        let mut store = None;
        for _ in 0..100 {
            let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
            if let Ok(s) =
                Store::redis(std::slice::from_ref(&url), &RedisTls::default(), keys, "t", Metrics::new()).await
            {
                store = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let store = store.expect("connected to redis-server");
        redis.kill().expect("kill redis-server");
        redis.wait().expect("reaped");
        let events = Events::default();
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));

        let error = store.get_token("mp", "o1").await.expect_err("Redis is gone");
        let logged = events.0.lock().expect("events").clone();
        let api = ApiError::from(error);

        assert_eq!(api, ApiError::StoreUnavailable);
        let failures: Vec<_> = logged.iter().filter(|e| e.contains("store call failed")).collect();
        assert_eq!(failures.len(), 1, "{logged:?}");
        assert!(failures[0].starts_with("WARN") && failures[0].contains("operation=\"get\""), "{logged:?}");
        assert_eq!(events.0.lock().expect("events").len(), logged.len(), "the conversion logs nothing");
    }
}
