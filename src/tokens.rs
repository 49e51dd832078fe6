//! The token lifecycle: exchanging codes (only through the flow that relayed them, and
//! idempotently per flow, so a reload or a retry never meets WeChat's 40163 while a leaked
//! code signs no one in elsewhere), keeping tokens fresh, and refreshing each user's token with ONE call to
//! WeChat however many requests and replicas ask at once.
//!
//! Coalescing has two levels. In a process, concurrent refreshes of one user share one task
//! (single-flight); the task runs detached, so a caller's cancelled deadline never leaves a
//! refresh half-done, and a drop guard takes its entry out of the map however it ends (return,
//! panic, abort). Across replicas, the task holds the user's Redis lock (`SET NX PX`,
//! compare-and-delete release) and, once it has it, re-reads the record: if someone refreshed
//! since the caller looked, it uses that record instead of calling WeChat. Without the lock it
//! waits for the holder's result, looking again after pauses that double up to half a second,
//! and stops as soon as none of its callers waits any more (their gRPC deadline passed). A task
//! that ends without an answer (a panic, a cancellation) is logged at error level, naming the
//! operation, and answered `INTERNAL`.
//!
//! What each client may read of the user the record serves is not the record's to say: that is
//! [`crate::consent`], from the client's own sign-ins.
//!
//! "Someone refreshed" is judged by the record's refresh stamp ([`TokenRecord::refreshed_at_ms`]),
//! never by comparing tokens: WeChat's refresh returns the *same* access token with a renewed
//! expiry while it is alive (docs/design.md §10), and with the default 5-minute margin every refresh comes
//! before expiry.
//!
//! The lock only saves WeChat calls; the record's safety does not depend on it. A refresh writes
//! its result with a compare-and-write on the token key (only over the exact sealed bytes it
//! read), so a refresh that outlived its lock can neither bring back a user `ForgetUser` removed
//! nor overwrite a newer refresh or a new sign-in. The lock's life is computed from the WeChat
//! settings ([`lock_ttl`]), so normally it never runs out under the work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use rand::Rng as _;
use tracing::Instrument as _;

use crate::clock::{Clock, secs};
use crate::consent::{self, Grant};
use crate::error::{ApiError, Upstream};
use crate::secrets::AuthCode;
use crate::store::{
    Account, CachedProfile, CodeRecord, CodeState, ExchangeOutcome, LockToken, MiniSession, OPERATION_TIMEOUT,
    Reach as Claim, ReadCode, Store, TokenRecord, code_record_ttl,
};
use crate::telemetry::Metrics;
use crate::wechat::{App, AppKind, Lang, Profile, Scope, TokenGrant, WechatClient, WechatError, WechatSettings};

/// Added to the refresh lock's computed life: scheduling, clock drift between Redis and us.
const LOCK_MARGIN: Duration = Duration::from_secs(1);
/// A forced refresh (`RefreshToken`) is answered by a refresh that finished at most this long
/// before it was asked for (or after): that token's expiry is within this of a new refresh's,
/// and WeChat would return the same token anyway, so a second call would buy nothing.
pub const FORCED_REFRESH_REUSE: Duration = Duration::from_secs(5);
/// How long an exchange's claim on a code holds: past it (its replica died mid-exchange, or the
/// store failed under it), another exchange of the same `(flow, code)` may take the claim over;
/// WeChat's 40163 then means the first one spent the code, answered as `SIGN_IN_AGAIN`.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How soon a waiter first looks again at a record another replica is refreshing (or a code
/// another exchange holds); each later look waits twice as long, up to [`POLL_MAX`].
const POLL: Duration = Duration::from_millis(20);
/// The longest pause between two looks: a stuck holder costs a waiter about two reads a
/// second, not fifty.
const POLL_MAX: Duration = Duration::from_millis(500);
/// WeChat codes that mean "this access token is not (or no longer) valid".
const DEAD_ACCESS_TOKEN: [i64; 3] = [42001, 40001, 40014];
/// WeChat codes that mean "this refresh token is dead".
const DEAD_REFRESH_TOKEN: [i64; 2] = [42002, 40030];

/// The longest any refresh lock is held: the work under it. A refresh, holding the lock, makes
/// one retried WeChat call ([`WechatSettings::longest_retrying_call`]: every attempt up to the
/// timeout, with the longest backoffs) and at most `4 + Lang::ALL.len()` store calls of up to
/// [`OPERATION_TIMEOUT`] each: the reply to the lock's own `SET`, the read, then either the
/// compare-and-write or, for a dead refresh token, the cached profiles' and the record's
/// deletions, then a re-read when the record changed meanwhile (`ForgetUser` under the lock makes
/// as many: the reply, the token and session reads at once, the cached profiles', the session's
/// and the record's deletions; it takes the account out of the index after releasing the lock). Plus [`LOCK_MARGIN`]. With the defaults (3 s
/// timeout, 3 attempts, 3 langs, 2 s store timeout): 9.6 s + 7 x 2 s + 1 s = 24.6 s.
pub fn lock_ttl(wechat: &WechatSettings) -> Duration {
    let store_calls = 4 + u32::try_from(Lang::ALL.len()).unwrap_or(u32::MAX);
    wechat.longest_retrying_call() + OPERATION_TIMEOUT * store_calls + LOCK_MARGIN
}

type FlightResult = Shared<BoxFuture<'static, Result<TokenRecord, ApiError>>>;
type RefreshTask = tokio::task::JoinHandle<Result<TokenRecord, ApiError>>;

/// One user's refresh under way in this process; concurrent refreshes join its result.
struct Flight {
    result: FlightResult,
    /// Tells this flight from a later one of the same user, so a guard removes only its own.
    id: u64,
    /// The callers still waiting for it: each holds a sender, the map only this weak one. When
    /// the last caller is gone (its deadline passed, or it was cancelled), a flight that is
    /// only waiting on another replica stops ([`Tokens::refresh_locked`]).
    interest: tokio::sync::mpsc::WeakSender<()>,
    /// Ends the task the hard way (tests show the map forgets an aborted flight); set once the
    /// task is spawned.
    #[cfg(test)]
    abort: Option<tokio::task::AbortHandle>,
}

/// Why a refresh is asked for: it decides whether a refresh someone else made answers it.
#[derive(Clone, Copy, Debug)]
enum Need {
    /// The access token of the record stamped `seen` (its `refreshed_at_ms`) expires within the
    /// margin: any refresh since answers it, as does a record that outlives the margin.
    Expiring { seen: i64 },
    /// WeChat rejected the access token of the record stamped `seen`: any refresh since answers.
    Rejected { seen: i64 },
    /// `RefreshToken`, asked at `asked_at_ms`: a refresh that finished after that, or at most
    /// [`FORCED_REFRESH_REUSE`] before, answers it.
    Forced { asked_at_ms: i64 },
}

/// What a per-user read found says about whether the user is known to the app (the
/// `not_reached` count of [`Tokens::reachable`]): `None` when it cannot tell.
pub trait Found {
    /// Whether the user is known, if this read can tell.
    fn found(&self) -> Option<bool>;
}

impl Found for TokenRecord {
    fn found(&self) -> Option<bool> {
        Some(true)
    }
}

impl Found for Option<CachedProfile> {
    /// A cached profile: known; none: a known user may simply have no cached profile.
    fn found(&self) -> Option<bool> {
        self.as_ref().map(|_| true)
    }
}

/// Whose request reaches a user's record (config `clients.<name>.users`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach<'a> {
    /// Any user of the app (`users = "app"`).
    Any,
    /// Only a user for whom this client exchanged a code (`users = "own"`); any other answers
    /// `TOKEN_NOT_FOUND`, exactly as an unknown user does.
    Own(&'a str),
}

/// Token policy.
#[derive(Clone, Copy, Debug)]
pub struct TokenPolicy {
    /// Refresh an access token this long before it expires.
    pub refresh_margin: Duration,
    /// Life of a refresh token (WeChat: 30 days).
    pub refresh_life: Duration,
    /// How long a fetched profile answers `GetUserInfo` without a WeChat call; zero: never.
    pub profile_cache: Duration,
}

/// Exchanges, refreshes and reads tokens. Cheap to share (`Arc`).
pub struct Tokens {
    store: Store,
    wechat: WechatClient,
    clock: Clock,
    policy: TokenPolicy,
    flights: Mutex<HashMap<String, Flight>>,
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
    pub fn new(
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
            next_flight: AtomicU64::new(0),
            lock_ttl_ms: AtomicU64::new(lock_ttl_ms),
            metrics,
            #[cfg(test)]
            panic_next_refresh: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// How long a refresh (or `ForgetUser`) holds a user's lock at most: [`lock_ttl`] of the
    /// WeChat settings.
    pub fn lock_ttl(&self) -> Duration {
        Duration::from_millis(self.lock_ttl_ms.load(Ordering::Relaxed))
    }

    /// For tests only: a lock shorter than the work under it, to show that the
    /// compare-and-write, not the lock, keeps the record right when a refresh outlives its lock.
    #[doc(hidden)]
    pub fn set_lock_ttl(&self, ttl: Duration) {
        self.lock_ttl_ms.store(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    /// Refreshes by result so far: `upstream` (WeChat calls), `coalesced` (calls saved) or
    /// `superseded` (a refresh whose result was not stored: the record changed meanwhile).
    pub fn refreshes(&self, result: &str) -> u64 {
        self.metrics.refreshes.with_label_values(&[result]).get()
    }

    fn count_refresh(&self, result: &str) {
        self.metrics.refreshes.with_label_values(&[result]).inc();
    }

    /// Exchanges `code`, which must have been relayed through `flow_id`, a flow `caller`
    /// created in `app`; or returns the result of an earlier exchange of the same `(flow,
    /// code)` within the code's life. Anything else is refused before WeChat is called
    /// (`CODE_NOT_FROM_FLOW`): a code the relay never saw, one relayed through another flow,
    /// another client's flow, a code of another app. Concurrent exchanges of one code (a double
    /// submit, two replicas) make one WeChat call; the others wait for its result. The flag is
    /// true when this call made the exchange (false: the recorded result of an earlier one).
    pub async fn exchange(
        self: &Arc<Self>,
        app: &App,
        flow_id: &str,
        code: AuthCode,
        caller: &str,
    ) -> Result<(ExchangeOutcome, bool), ApiError> {
        let mut pause = Backoff::default();
        loop {
            if !self.store.flow_is_of(flow_id, caller, &app.name) {
                tracing::warn!(app = %app.name, caller, "exchange refused: the flow is not this client's in this app");
                return Err(ApiError::CodeNotFromFlow);
            }
            let Some(read) = self.store.get_code(&code).await? else {
                tracing::warn!(app = %app.name, caller, "exchange refused: the relay never relayed this code");
                return Err(ApiError::CodeNotFromFlow);
            };
            if read.record.flow_id != flow_id {
                tracing::warn!(app = %app.name, caller, "exchange refused: the code came through another flow");
                return Err(ApiError::CodeNotFromFlow);
            }
            let now_ms = self.clock.now_ms();
            match &read.record.state {
                CodeState::Lost => {
                    let lost = Upstream { errcode: 0, errmsg: "the first exchange's answer was lost".into() };
                    return Err(ApiError::SignInAgain(lost));
                }
                CodeState::Done(outcome) => {
                    tracing::info!(app = %app.name, "code exchanged before through this flow; returning the recorded result");
                    return Ok((outcome.clone(), false));
                }
                CodeState::Pending(since) if now_ms - since < millis(CLAIM_TTL) => {
                    tokio::time::sleep(pause.next()).await;
                }
                CodeState::Relayed | CodeState::Pending(_) => {
                    let claim = CodeRecord { state: CodeState::Pending(now_ms), ..read.record.clone() };
                    let life = code_record_ttl(app.kind.code_life());
                    if !self.store.swap_code(&code, &read, &claim, life).await? {
                        continue; // another exchange claimed it first: wait for its result
                    }
                    // A lapsed claim: an earlier exchange of this code stopped half-way (its
                    // replica died, or the store failed under it), maybe after WeChat had it.
                    let took_over = matches!(read.record.state, CodeState::Pending(_));
                    // Detached: once sent, the exchange finishes and records its result even
                    // if this caller's deadline passes, so the caller's retry finds it.
                    let (this, app, code, caller) = (Arc::clone(self), app.clone(), code.clone(), caller.to_owned());
                    let exchange =
                        async move { this.exchange_claimed(&app, &code, &caller, claim, read, took_over).await };
                    let task = tokio::spawn(exchange.in_current_span());
                    return joined("code exchange", task.await).map(|outcome| (outcome, true));
                }
            }
        }
    }

    async fn exchange_claimed(
        &self,
        app: &App,
        code: &AuthCode,
        caller: &str,
        claim: CodeRecord,
        relayed: ReadCode,
        took_over: bool,
    ) -> Result<ExchangeOutcome, ApiError> {
        let life = code_record_ttl(app.kind.code_life());
        let unclaim = || async {
            // Back to "relayed": the failure is not remembered as a result, and a retry
            // through the same flow may try again.
            let relayed = CodeRecord { state: CodeState::Relayed, ..relayed.record.clone() };
            if let Err(e) = self.store.put_code(code, &relayed, life).await {
                tracing::warn!(error = %e, "exchange claim not released; it lapses by itself");
            }
        };
        // The code is (or may be) spent at WeChat and this sign-in cannot finish: remembered,
        // so every repeat is told to start again without asking WeChat (which could only
        // answer 40163).
        let spent = || async {
            let lost = CodeRecord { state: CodeState::Lost, ..relayed.record.clone() };
            if let Err(e) = self.store.put_code(code, &lost, life).await {
                tracing::warn!(error = %e, "lost exchange not recorded; its claim lapses by itself");
            }
        };
        let grant = match self.wechat.exchange_code(app, code).await {
            Ok(grant) => grant,
            Err(e) if e.may_have_acted() => {
                // Never retried, here or by the caller: the code may be spent (a retry would
                // meet 40163).
                spent().await;
                tracing::warn!(app = %app.name, "code exchange sent, answer lost: the user must sign in again");
                return Err(ApiError::from_wechat(&e).spent_code());
            }
            Err(e) if took_over && e.errcode() == Some(40163) => {
                // The exchange whose claim lapsed did reach WeChat: its answer was lost.
                spent().await;
                tracing::warn!(app = %app.name, "an earlier exchange of this code spent it; the user must sign in again");
                return Err(ApiError::from_wechat(&e).spent_code_of_lapsed_claim());
            }
            Err(e) => {
                unclaim().await;
                return Err(ApiError::from_wechat(&e));
            }
        };
        let now = self.clock.now_secs();
        if grant.is_snapshotuser == 1 {
            return self.snapshot_user(app, code, claim, grant, life).await;
        }
        let (outcome, kept_reads_profile) = match self.keep_grant(app, grant, now, caller).await {
            Ok(kept) => kept,
            Err(e) => {
                // A result must never promise a token that was not stored; and WeChat has
                // spent the code, so a repeat must not send it again.
                spent().await;
                return Err(e);
            }
        };
        let done = CodeRecord { state: CodeState::Done(outcome.clone()), ..claim };
        // Different keys, so different Cluster slots: concurrent commands, not a pipeline.
        let (signed_in, finished) = tokio::join!(
            self.signed_in(app, &outcome, kept_reads_profile, caller, now),
            self.store.put_code(code, &done, life),
        );
        signed_in?;
        finished?;
        Ok(outcome)
    }

    /// Stores the token record of a new sign-in (web or mobile app) and returns what the
    /// caller is told, and whether the record now kept reads the profile. The caller is told a
    /// unionid only when its own sign-in reads the profile (`crate::consent`).
    async fn keep_grant(
        &self,
        app: &App,
        grant: TokenGrant,
        now: i64,
        caller: &str,
    ) -> Result<(ExchangeOutcome, bool), ApiError> {
        let unionid = grant.unionid.filter(|u| !u.is_empty());
        let record = TokenRecord {
            openid: grant.openid.clone(),
            unionid: unionid.clone(),
            scopes: split_scopes(&grant.scope),
            is_snapshot_user: false,
            access_expires_at: now + grant.expires_in,
            refresh_expires_at: now + secs(self.policy.refresh_life),
            access_token: grant.access_token,
            refresh_token: grant.refresh_token,
            refreshed_at_ms: 0, // a new sign-in: no refresh yet
        };
        let kept = self.keep_token(app, record).await?;
        let scopes = split_scopes(&grant.scope);
        let outcome = ExchangeOutcome {
            openid: grant.openid,
            unionid: unionid.filter(|_| consent::reads_profile(&scopes)),
            scopes,
            is_snapshot_user: false,
            access_expires_at: kept.access_expires_at,
            refresh_expires_at: kept.refresh_expires_at,
            exchanged_by: Some(caller.to_owned()),
        };
        Ok((outcome, grants_userinfo(&kept.scopes)))
    }

    /// What every real web or mobile sign-in (never a snapshot user's) leaves besides its
    /// record: see [`Tokens::claimed`].
    async fn signed_in(
        &self,
        app: &App,
        outcome: &ExchangeOutcome,
        kept_reads_profile: bool,
        caller: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        let (openid, unionid) = (outcome.openid.as_str(), outcome.unionid.as_deref());
        self.claimed(app, openid, unionid, &outcome.scopes, kept_reads_profile, caller, now).await
    }

    /// What every real sign-in leaves besides its record: the client's claim on the user with
    /// the scopes its own sign-ins were granted (`crate::consent`; a userinfo grant it got
    /// earlier survives a silent sign-in while the kept token reads the profile), the account
    /// under its unionid (when the caller may see one), and the count by app kind. Different
    /// keys: concurrent commands. (Two sign-ins of one user by one client at the same moment
    /// may each write their own scopes; the later write stands, at worst asking the user's
    /// consent once more.)
    #[allow(clippy::too_many_arguments)]
    async fn claimed(
        &self,
        app: &App,
        openid: &str,
        unionid: Option<&str>,
        granted: &[String],
        kept_reads_profile: bool,
        caller: &str,
        now: i64,
    ) -> Result<(), ApiError> {
        let life = self.policy.refresh_life;
        let account = async {
            let Some(unionid) = unionid else { return Ok(()) };
            let account = Account {
                app: app.name.clone(),
                openid: openid.to_owned(),
                kind: app.kind.as_str().into(),
                last_sign_in: now,
            };
            self.store.put_account(unionid, &account, life).await
        };
        let reach = async {
            // Only a grant that does not read the profile, while a userinfo token was kept, can
            // lose something by replacing: otherwise the earlier claim is not read at all (a
            // mini program's sign-in, or a silent one that replaced the token, writes at once).
            let earlier = if consent::reads_profile(granted) || !kept_reads_profile {
                None
            } else {
                self.store.get_reach(&app.name, openid, caller).await?
            };
            let scopes = consent::scopes_after_sign_in(earlier.as_ref(), app.kind, granted, kept_reads_profile);
            self.store.put_reach(&app.name, openid, caller, &Claim { since: now, scopes }, life).await
        };
        let (reach, account) = tokio::join!(reach, account);
        reach?;
        account?;
        self.metrics.sign_ins.with_label_values(&[app.kind.as_str()]).inc();
        Ok(())
    }

    /// Exchanges a mobile app's code (the native WeChat SDK's, which the app posted to its
    /// backend): no flow and no relay, since the code never travels in a URL, and so no replay
    /// window: the first exchange spends it, any later one is `CODE_USED` without a WeChat call.
    /// Concurrent exchanges of one code (a double submit, two replicas) claim one code record
    /// (`SET NX`): one WeChat call, whose result the others, having waited for it, share.
    pub async fn exchange_mobile(
        self: &Arc<Self>,
        app: &App,
        code: AuthCode,
        caller: &str,
    ) -> Result<ExchangeOutcome, ApiError> {
        let life = code_record_ttl(app.kind.code_life());
        let (mut waited, mut unreadable, mut pause) = (false, 0, Backoff::default());
        loop {
            let now_ms = self.clock.now_ms();
            let claim = CodeRecord { flow_id: String::new(), state: CodeState::Pending(now_ms) };
            if self.store.claim_code(&code, &claim, life).await? {
                return self.spawn_mobile_exchange(app, &code, caller).await;
            }
            let Some(read) = self.store.get_code(&code).await? else {
                // Deleted since the claim failed (a refused exchange), or a record that does
                // not open: try again a few times, then refuse rather than spin.
                unreadable += 1;
                if unreadable > 3 {
                    return Err(ApiError::CodeUsed(None));
                }
                continue;
            };
            if !read.record.flow_id.is_empty() {
                tracing::warn!(app = %app.name, caller, "mobile exchange refused: a web sign-in's code");
                return Err(ApiError::CodeUsed(None));
            }
            match &read.record.state {
                CodeState::Pending(since) if now_ms - since < millis(CLAIM_TTL) => {
                    waited = true;
                    tokio::time::sleep(pause.next()).await;
                }
                CodeState::Pending(_) => {
                    // The claimer died mid-exchange: take its claim over.
                    if self.store.swap_code(&code, &read, &claim, life).await? {
                        return self.spawn_mobile_exchange(app, &code, caller).await;
                    }
                }
                // A concurrent duplicate of the caller's own exchange (a double submit, two
                // replicas) shares its result; another client's exchange of the same code is
                // refused as a later exchange of a spent code is: a code serves one client.
                CodeState::Done(outcome) if waited && outcome.exchanged_by.as_deref() == Some(caller) => {
                    return Ok(outcome.clone());
                }
                CodeState::Done(_) if waited => {
                    tracing::warn!(app = %app.name, caller, "mobile exchange refused: another client exchanged this code");
                    self.count_consent_refusal(caller, "code_of_another_client");
                    return Err(ApiError::CodeUsed(None));
                }
                CodeState::Done(_) | CodeState::Relayed => {
                    tracing::info!(app = %app.name, "mobile code exchanged before: CODE_USED");
                    return Err(ApiError::CodeUsed(None));
                }
                CodeState::Lost => {
                    let lost = Upstream { errcode: 0, errmsg: "the first exchange's answer was lost".into() };
                    return Err(ApiError::SignInAgain(lost));
                }
            }
        }
    }

    /// Runs a claimed mobile exchange detached, so once sent it finishes and records its result
    /// even if the caller's deadline passes.
    async fn spawn_mobile_exchange(
        self: &Arc<Self>,
        app: &App,
        code: &AuthCode,
        caller: &str,
    ) -> Result<ExchangeOutcome, ApiError> {
        let (this, app, code, caller) = (Arc::clone(self), app.clone(), code.clone(), caller.to_owned());
        let exchange = async move { this.exchange_mobile_claimed(&app, &code, &caller).await };
        joined("mobile code exchange", tokio::spawn(exchange.in_current_span()).await)
    }

    async fn exchange_mobile_claimed(
        &self,
        app: &App,
        code: &AuthCode,
        caller: &str,
    ) -> Result<ExchangeOutcome, ApiError> {
        let life = code_record_ttl(app.kind.code_life());
        let record = |state| CodeRecord { flow_id: String::new(), state };
        let grant = match self.wechat.exchange_code(app, code).await {
            Ok(grant) => grant,
            Err(e) if e.may_have_acted() => {
                if let Err(e) = self.store.put_code(code, &record(CodeState::Lost), life).await {
                    tracing::warn!(error = %e, "lost exchange not recorded; its claim lapses by itself");
                }
                tracing::warn!(app = %app.name, "mobile code exchange sent, answer lost: the user must sign in again");
                return Err(ApiError::from_wechat(&e).spent_code());
            }
            Err(e) => {
                // WeChat refused the code (40029, ...): forget the claim, so a retry hears
                // WeChat's own answer again.
                if let Err(e) = self.store.delete_code(code).await {
                    tracing::warn!(error = %e, "refused exchange's claim not released; it lapses by itself");
                }
                return Err(ApiError::from_wechat(&e));
            }
        };
        let now = self.clock.now_secs();
        let (outcome, kept_reads_profile) = match self.keep_grant(app, grant, now, caller).await {
            Ok(kept) => kept,
            Err(e) => {
                // WeChat spent the code but nothing was stored: the user signs in again.
                if let Err(e) = self.store.put_code(code, &record(CodeState::Lost), life).await {
                    tracing::warn!(error = %e, "unstored exchange not recorded; its claim lapses by itself");
                }
                return Err(e);
            }
        };
        let done = record(CodeState::Done(outcome.clone()));
        let (signed_in, finished) = tokio::join!(
            self.signed_in(app, &outcome, kept_reads_profile, caller, now),
            self.store.put_code(code, &done, life),
        );
        signed_in?;
        finished?;
        Ok(outcome)
    }

    /// Signs a mini program user in: trades the `js_code` at `sns/jscode2session` (once, never
    /// retried: a `js_code` works once; a lost answer is `SIGN_IN_AGAIN`), seals the
    /// `session_key` under the user, replacing the last one (it never leaves wxauth), and
    /// returns the openid and the unionid (bound mini programs).
    pub async fn sign_in_mini(
        &self,
        app: &App,
        js_code: &AuthCode,
        caller: &str,
    ) -> Result<(String, Option<String>), ApiError> {
        let session = self.wechat.jscode2session(app, js_code).await.map_err(|e| {
            let error = ApiError::from_wechat(&e);
            if e.may_have_acted() { error.spent_code() } else { error }
        })?;
        let now = self.clock.now_secs();
        let unionid = session.unionid.filter(|u| !u.is_empty());
        let record = MiniSession {
            openid: session.openid.clone(),
            unionid: unionid.clone(),
            session_key: session.session_key,
            signed_in_at: now,
        };
        self.store.put_session(&app.name, &record, self.policy.refresh_life).await?;
        self.claimed(app, &session.openid, unionid.as_deref(), &[], false, caller, now).await?;
        Ok((session.openid, unionid))
    }

    /// The accounts recorded under `unionid` in `apps` that `who` may reach and may see the
    /// unionid of (`users = "own"`: its own sign-in of the account read the profile, or was a
    /// mini program's), newest sign-in first. An account whose token record (mini programs: session) is gone (expired,
    /// forgotten, a dead refresh token) is dropped from the index here, lazily, and not listed.
    pub async fn accounts(
        &self,
        unionid: &str,
        apps: &std::collections::BTreeSet<String>,
        who: Reach<'_>,
    ) -> Result<Vec<Account>, ApiError> {
        let recorded = self.store.accounts(unionid).await?;
        let checks = recorded.into_iter().filter(|a| apps.contains(&a.app)).map(|account| async move {
            let alive = async {
                Ok::<_, ApiError>(if account.kind == AppKind::MiniProgram.as_str() {
                    self.store.get_session(&account.app, &account.openid).await?.is_some()
                } else {
                    self.store.get_token(&account.app, &account.openid).await?.is_some()
                })
            };
            let reached = async {
                let Reach::Own(client) = who else { return Ok::<_, ApiError>(true) };
                let Some(claim) = self.store.get_reach(&account.app, &account.openid, client).await? else {
                    return Ok(false); // another product's user: not a refusal, just not its own
                };
                let kind = AppKind::parse(&account.kind).unwrap_or(AppKind::OfficialAccount);
                let sees = Grant::of(&claim, kind).sees_unionid();
                if !sees {
                    self.count_consent_refusal(client, "scope_not_granted");
                }
                Ok(sees)
            };
            let (alive, reached) = tokio::join!(alive, reached);
            if !alive? {
                if let Err(e) = self.store.drop_account(unionid, &account.app, &account.openid).await {
                    tracing::warn!(error = %e, "stale account left in the index; the next look drops it");
                }
                return Ok(None);
            }
            Ok::<_, ApiError>(reached?.then_some(account))
        });
        let mut found = Vec::new();
        for checked in futures::future::join_all(checks).await {
            found.extend(checked?);
        }
        found.sort_by(|a, b| b.last_sign_in.cmp(&a.last_sign_in).then_with(|| a.app.cmp(&b.app)));
        Ok(found)
    }

    /// A snapshot-page virtual user (`is_snapshotuser: 1`: a `snsapi_userinfo` page opened from
    /// Moments or a chat, not tapped through): not a real identity, so nothing is stored — no
    /// token record, no client claim — and the product gets the flag, the virtual openid to
    /// show a limited page with, no unionid (never an identity to link by) and no profile
    /// (WeChat answers such users 48001). It must ask the user to open the full page to sign in.
    async fn snapshot_user(
        &self,
        app: &App,
        code: &AuthCode,
        claim: CodeRecord,
        grant: TokenGrant,
        life: Duration,
    ) -> Result<ExchangeOutcome, ApiError> {
        tracing::info!(app = %app.name, "snapshot-page virtual user signed in: nothing stored");
        let outcome = ExchangeOutcome {
            openid: grant.openid,
            unionid: None,
            scopes: split_scopes(&grant.scope),
            is_snapshot_user: true,
            access_expires_at: 0,
            refresh_expires_at: 0,
            exchanged_by: None,
        };
        let done = CodeRecord { state: CodeState::Done(outcome.clone()), ..claim };
        self.store.put_code(code, &done, life).await?;
        Ok(outcome)
    }

    /// Stores the token record of a new sign-in and returns the record the user now has. A
    /// `snsapi_base` sign-in never takes away a token that can read the profile and still
    /// works (its refresh token lives): product A's silent sign-in must not break product B's
    /// GetUserInfo. The check and the write are one compare-and-set, so a write in between
    /// (a refresh, another sign-in) is seen, never overwritten blindly.
    async fn keep_token(&self, app: &App, record: TokenRecord) -> Result<TokenRecord, ApiError> {
        let life = self.policy.refresh_life;
        if grants_userinfo(&record.scopes) {
            self.store.put_token(&app.name, &record, life).await?;
            return Ok(record);
        }
        // A record that does not open reads as none yet blocks `SET NX`: after a few tries it
        // is overwritten, as a missing record would be.
        for _ in 0..3 {
            let written = match self.store.read_token(&app.name, &record.openid).await? {
                Some((held, _)) if grants_userinfo(&held.scopes) && held.refresh_expires_at > self.clock.now_secs() => {
                    tracing::info!(app = %app.name, "snsapi_base sign-in keeps the user's snsapi_userinfo token");
                    return Ok(held);
                }
                Some((_, version)) => self.store.replace_token(&app.name, &version, &record, life).await?,
                None => self.store.create_token(&app.name, &record, life).await?,
            };
            if written {
                return Ok(record);
            }
        }
        self.store.put_token(&app.name, &record, life).await?;
        Ok(record)
    }

    /// The stored record, as is (no refresh).
    pub async fn stored(&self, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
        self.store.get_token(&app.name, openid).await?.ok_or(ApiError::TokenNotFound)
    }

    /// `read` (a store read of this user's, without side effects), answered only if `who` may
    /// reach the user, with what its own sign-ins granted it (`None`: a `users = "app"` client,
    /// which reads what the token holds). The claim is looked up at the same time as the read,
    /// so the check costs no round trip of its own.
    pub async fn reachable<T: Found>(
        &self,
        app: &App,
        openid: &str,
        who: Reach<'_>,
        read: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<(Option<Grant>, T), ApiError> {
        let Reach::Own(client) = who else { return Ok((None, read.await?)) };
        let (claim, value) = tokio::join!(self.store.get_reach(&app.name, openid, client), read);
        let Some(claim) = claim? else {
            let known = match &value {
                Ok(value) => value.found(),
                Err(_) => Some(false),
            };
            return Err(self.unreached(app, openid, client, known).await);
        };
        Ok((Some(Grant::of(&claim, app.kind)), value?))
    }

    /// The answer to a client asking for a user it never signed in: `TOKEN_NOT_FOUND`, exactly
    /// as for an unknown user. Counted (`not_reached`) when the user is known to the app, so
    /// the metric shows probing for other products' users, not stale openids; `known` is what
    /// the request's own read said, if it could tell (else the records are read: a refused
    /// call's cost only).
    async fn unreached(&self, app: &App, openid: &str, client: &str, known: Option<bool>) -> ApiError {
        let known = match known {
            Some(known) => known,
            None => {
                let (token, session) =
                    tokio::join!(self.store.get_token(&app.name, openid), self.store.get_session(&app.name, openid));
                matches!(token, Ok(Some(_))) || matches!(session, Ok(Some(_)))
            }
        };
        if known {
            self.count_consent_refusal(client, "not_reached");
        }
        ApiError::TokenNotFound
    }

    fn count_consent_refusal(&self, client: &str, reason: &str) {
        self.metrics.consent_refusals.with_label_values(&[client, reason]).inc();
    }

    /// `SCOPE_NOT_GRANTED` for a client whose own sign-ins did not grant what it asks
    /// (another product's consent is not its own): it must ask the user for consent itself.
    fn scope_not_granted(&self, who: Reach<'_>) -> ApiError {
        if let Reach::Own(client) = who {
            self.count_consent_refusal(client, "scope_not_granted");
        }
        ApiError::ScopeNotGranted(None)
    }

    /// The record with an access token that outlives the refresh margin, refreshing first
    /// when it does not.
    pub async fn current(self: &Arc<Self>, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
        self.current_of(app, openid, Reach::Any, false).await
    }

    /// [`Tokens::current`] for `who`: the record is read with the reach check, before any
    /// refresh; `wants_profile` refuses, before any refresh, a client whose own sign-ins do not
    /// read the profile.
    async fn current_of(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        who: Reach<'_>,
        wants_profile: bool,
    ) -> Result<TokenRecord, ApiError> {
        let (grant, record) = self.reachable(app, openid, who, self.stored(app, openid)).await?;
        if wants_profile && grant.is_some_and(|g| !g.reads_profile()) {
            return Err(self.scope_not_granted(who));
        }
        if !self.expiring(&record) {
            return Ok(record);
        }
        self.refresh(app, openid, Need::Expiring { seen: record.refreshed_at_ms }).await
    }

    /// `RefreshToken`: refreshes the user's token unless a refresh finished after this call
    /// arrived or at most [`FORCED_REFRESH_REUSE`] before (a brand-new token needs no second
    /// refresh). So any number of concurrent forced refreshes, on any number of replicas, make
    /// one WeChat call, the ones arriving just after it finished included.
    pub async fn force_refresh(self: &Arc<Self>, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
        let need = Need::Forced { asked_at_ms: self.clock.now_ms() };
        let record = self.stored(app, openid).await?;
        if self.answers(need, &record) {
            self.count_refresh("coalesced");
            return Ok(record);
        }
        self.refresh(app, openid, need).await
    }

    fn expiring(&self, record: &TokenRecord) -> bool {
        record.access_expires_at <= self.clock.now_secs() + secs(self.policy.refresh_margin)
    }

    /// Whether `record` already answers `need`, so no WeChat call is needed. Judged by the
    /// refresh stamp (and, for an expiring token, the expiry), never by comparing tokens.
    fn answers(&self, need: Need, record: &TokenRecord) -> bool {
        match need {
            Need::Expiring { seen } => record.refreshed_at_ms != seen || !self.expiring(record),
            Need::Rejected { seen } => record.refreshed_at_ms != seen,
            Need::Forced { asked_at_ms } => {
                let reuse = i64::try_from(FORCED_REFRESH_REUSE.as_millis()).unwrap_or(i64::MAX);
                record.refreshed_at_ms != 0 && record.refreshed_at_ms >= asked_at_ms.saturating_sub(reuse)
            }
        }
    }

    /// Refreshes the user's token for `need`, sharing one task with every concurrent refresh of
    /// the user in this process. The task runs for the first caller's `need`; a caller joining
    /// it gets a record refreshed after it asked, or one the first caller's check found fresh,
    /// which was refreshed while it asked.
    ///
    /// The map's lock is held only to look up or insert an entry: the task is spawned after it
    /// is released. (Spawning on a runtime that is shutting down drops the task's future at
    /// once, on this thread, and with it the [`FlightGuard`], whose drop takes the map's lock:
    /// under the lock that was a self-deadlock.) The entry goes in before the task exists, its
    /// result reading the task's handle from a oneshot, so concurrent callers join it at once.
    async fn refresh(self: &Arc<Self>, app: &App, openid: &str, need: Need) -> Result<TokenRecord, ApiError> {
        let key = format!("{}\u{0}{openid}", app.name);
        let (flight, _interest, start) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            // A flight whose callers are all gone may be giving up its wait: not joined.
            let joinable = flights.get(&key).and_then(|f| Some((f.result.clone(), f.interest.upgrade()?)));
            if let Some((result, interest)) = joinable {
                self.count_refresh("coalesced");
                (result, interest, None)
            } else {
                let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                let (interest, watch) = tokio::sync::mpsc::channel::<()>(1);
                let (handle_tx, handle_rx) = tokio::sync::oneshot::channel::<RefreshTask>();
                let result: FlightResult = async move {
                    let Ok(task) = handle_rx.await else { return Err(ApiError::Internal) };
                    joined("token refresh", task.await)
                }
                .boxed()
                .shared();
                let flight = Flight {
                    result: result.clone(),
                    id,
                    interest: interest.downgrade(),
                    #[cfg(test)]
                    abort: None,
                };
                // Replaces a flight nobody waits for any more; its guard removes only its own.
                flights.insert(key.clone(), flight);
                (result, interest, Some((id, watch, handle_tx)))
            }
        };
        if let Some((id, watch, handle_tx)) = start {
            // Moved into the task before it is spawned: dropped with the task's future however
            // it ends, even aborted before its first poll or never run at all.
            let guard = FlightGuard { tokens: Arc::clone(self), key: key.clone(), id };
            let (this, app, openid) = (Arc::clone(self), app.clone(), openid.to_owned());
            let refresh = async move {
                let _guard = guard;
                this.refresh_locked(&app, &openid, need, watch).await
            };
            // The leader's span parents the refresh; waiters join it.
            let task = tokio::spawn(refresh.instrument(tracing::info_span!("token.refresh")));
            #[cfg(test)]
            self.note_abort(&key, id, task.abort_handle());
            // Fails only if every caller is gone already; the task then runs on, detached.
            let _ = handle_tx.send(task);
        }
        // `_interest` lives until this caller has its answer or is dropped (its deadline).
        flight.await
    }

    #[cfg(test)]
    fn note_abort(&self, key: &str, id: u64, abort: tokio::task::AbortHandle) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get_mut(key).filter(|f| f.id == id) {
            flight.abort = Some(abort);
        }
    }

    /// The refresh itself, under the user's Redis lock. Without the lock (another replica
    /// refreshes), it waits for that replica's result, looking again after a pause that doubles
    /// from [`POLL`] up to [`POLL_MAX`], and stops as soon as no caller waits any more (`watch`
    /// closes when the last caller's sender is dropped: its gRPC deadline passed or it was
    /// cancelled), so a stuck holder never keeps a replica reading past its callers' deadlines.
    /// A refresh that holds the lock is never stopped that way: once WeChat may have it, it
    /// finishes and stores its result.
    async fn refresh_locked(
        &self,
        app: &App,
        openid: &str,
        need: Need,
        mut watch: tokio::sync::mpsc::Receiver<()>,
    ) -> Result<TokenRecord, ApiError> {
        #[cfg(test)]
        if self.panic_next_refresh.swap(false, Ordering::Relaxed) {
            panic!("a refresh task panics (test)");
        }
        let lock_ttl = self.lock_ttl();
        // A holder finishes, or its lock expires, within one lock life; the second lets this
        // waiter take its turn (callers without a deadline).
        let give_up = tokio::time::Instant::now() + lock_ttl * 2;
        let mut pause = Backoff::default();
        loop {
            if let Some(lock) = self.lock(app, openid, lock_ttl).await? {
                let result = self.refresh_holding_lock(app, openid, need).await;
                lock.release().await;
                return result;
            }
            // Another replica is refreshing this user: wait for its result.
            tokio::select! {
                () = tokio::time::sleep(pause.next()) => {}
                _ = watch.recv() => {
                    tracing::debug!(app = %app.name, "refresh wait ended: no caller waits any more");
                    return Err(ApiError::DeadlineExceeded);
                }
            }
            let Some(record) = self.store.get_token(&app.name, openid).await? else {
                // It found the refresh token dead and deleted the record.
                return Err(ApiError::ReauthorizationRequired(None));
            };
            if self.answers(need, &record) {
                self.count_refresh("coalesced");
                return Ok(record);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(ApiError::WechatUnavailable(None));
            }
        }
    }

    async fn refresh_holding_lock(&self, app: &App, openid: &str, need: Need) -> Result<TokenRecord, ApiError> {
        let Some((record, read)) = self.store.read_token(&app.name, openid).await? else {
            return Err(ApiError::TokenNotFound);
        };
        if self.answers(need, &record) {
            self.count_refresh("coalesced");
            return Ok(record);
        }
        self.count_refresh("upstream");
        let grant = match self.wechat.refresh(app, &record.refresh_token).await {
            Ok(grant) => grant,
            Err(e) if e.errcode().is_some_and(|c| DEAD_REFRESH_TOKEN.contains(&c)) => {
                // Only the record whose refresh token died: a new sign-in meanwhile stays.
                if !self.store.delete_token_if(&app.name, openid, &read).await? {
                    return self.superseded(app, openid).await;
                }
                tracing::info!(app = %app.name, errcode = e.errcode(), "refresh token dead; record deleted");
                return Err(ApiError::from_wechat(&e));
            }
            Err(e) => return Err(ApiError::from_wechat(&e)),
        };
        let updated = self.apply_grant(record, grant);
        let ttl =
            Duration::from_secs(u64::try_from(updated.refresh_expires_at - self.clock.now_secs()).unwrap_or(1).max(1));
        // Written only over the record this refresh read: never after a ForgetUser, a newer
        // refresh or a new sign-in, even if WeChat answered after the lock expired.
        if self.store.replace_token(&app.name, &read, &updated, ttl).await? {
            return Ok(updated);
        }
        self.superseded(app, openid).await
    }

    /// The record as someone else left it while this refresh waited for WeChat (its lock ran
    /// out): theirs stands, and answers this refresh; none left: `TOKEN_NOT_FOUND`.
    async fn superseded(&self, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
        self.count_refresh("superseded");
        tracing::warn!(app = %app.name, "the record changed while WeChat answered a refresh; the newer record stands");
        self.stored(app, openid).await
    }

    /// Takes the user's refresh lock for `ttl`, if free.
    async fn lock(&self, app: &App, openid: &str, ttl: Duration) -> Result<Option<HeldLock>, ApiError> {
        let token = self.store.try_lock(&app.name, openid, ttl).await?;
        Ok(token.map(|token| HeldLock {
            store: self.store.clone(),
            app: app.name.clone(),
            openid: openid.to_owned(),
            token: Some(token),
        }))
    }

    fn apply_grant(&self, old: TokenRecord, grant: TokenGrant) -> TokenRecord {
        let now = self.clock.now_secs();
        // WeChat usually returns the same refresh token; a new one starts a new 30 days.
        let refresh_expires_at = if grant.refresh_token == old.refresh_token {
            old.refresh_expires_at
        } else {
            now + secs(self.policy.refresh_life)
        };
        TokenRecord {
            openid: old.openid,
            unionid: grant.unionid.filter(|u| !u.is_empty()).or(old.unionid),
            scopes: if grant.scope.is_empty() { old.scopes } else { split_scopes(&grant.scope) },
            is_snapshot_user: old.is_snapshot_user,
            access_token: grant.access_token,
            access_expires_at: now + grant.expires_in,
            refresh_token: grant.refresh_token,
            refresh_expires_at,
            refreshed_at_ms: self.clock.now_ms(),
        }
    }

    /// The user's profile: from the profile cache while it is younger than the configured age
    /// (unless `fresh`), else from WeChat, and then cached. WeChat allows 50,000 sns calls a
    /// minute per app, so a product that shows the profile on every page needs the cache.
    pub async fn userinfo(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        lang: Lang,
        fresh: bool,
        who: Reach<'_>,
    ) -> Result<CachedProfile, ApiError> {
        let max_age = self.policy.profile_cache;
        let use_cache = !fresh && !max_age.is_zero();
        let who = if use_cache {
            let cached = async { Ok(self.store.get_profile(&app.name, openid, lang).await?) };
            let (grant, hit) = self.reachable(app, openid, who, cached).await?;
            if grant.is_some_and(|g| !g.reads_profile()) {
                return Err(self.scope_not_granted(who));
            }
            if let Some(hit) = hit.filter(|hit| self.clock.now_secs() < hit.fetched_at + secs(max_age)) {
                self.metrics.profile_cache.with_label_values(&["hit"]).inc();
                return Ok(hit);
            }
            Reach::Any // checked with the cache read
        } else {
            who
        };
        self.metrics.profile_cache.with_label_values(&[if use_cache { "miss" } else { "skipped" }]).inc();
        let (profile, record) = self.userinfo_upstream(app, openid, lang, who).await?;
        let now = self.clock.now_secs();
        let fetched = CachedProfile { profile, fetched_at: now };
        if !max_age.is_zero() {
            // Never outlives the record: a user who must authorize again has no profile.
            let left = Duration::from_secs(u64::try_from(record.refresh_expires_at - now).unwrap_or(0));
            let ttl = max_age.min(left).max(Duration::from_secs(1));
            if let Err(e) = self.store.put_profile(&app.name, openid, lang, &fetched, ttl).await {
                tracing::warn!(error = %e, "profile not cached; the next GetUserInfo asks WeChat again");
            } else if self.store.get_token(&app.name, openid).await?.is_none() {
                // A ForgetUser ran while WeChat answered: it must not leave this copy behind.
                self.store.delete_user(&app.name, openid).await?;
            }
        }
        Ok(fetched)
    }

    /// The profile from WeChat with a fresh token; when WeChat calls a token dead that the record
    /// thought alive (clocks differ), refreshes once and asks again.
    async fn userinfo_upstream(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        lang: Lang,
        who: Reach<'_>,
    ) -> Result<(Profile, TokenRecord), ApiError> {
        let record = self.current_of(app, openid, who, true).await?;
        if !grants_userinfo(&record.scopes) {
            return Err(ApiError::ScopeNotGranted(None));
        }
        match self.wechat.userinfo(app, &record.access_token, openid, lang).await {
            Err(e) if is_dead_access_token(&e) => {
                tracing::info!(app = %app.name, errcode = e.errcode(), "WeChat rejected a token thought alive; refreshing");
                let record = self.refresh(app, openid, Need::Rejected { seen: record.refreshed_at_ms }).await?;
                let profile = self.wechat.userinfo(app, &record.access_token, openid, lang).await;
                Ok((profile.map_err(|e| ApiError::from_wechat(&e))?, record))
            }
            other => Ok((other.map_err(|e| ApiError::from_wechat(&e))?, record)),
        }
    }

    /// Deletes the user's token record, session, cached profiles and account-index entries, for
    /// every client (a `users = "app"` client's ForgetUser), holding the user's refresh lock so
    /// a refresh under way (here or on another replica) finishes first. (A refresh that
    /// outlived its lock could not write the record back either: it writes only over the
    /// record it read.) Returns whether a record existed.
    pub async fn forget(&self, app: &App, openid: &str) -> Result<bool, ApiError> {
        Ok(self.forget_unless_reached(app, openid, &[]).await?.unwrap_or(false))
    }

    /// A `users = "own"` client's ForgetUser: forgets the user for `client` (its claim), and
    /// the user's records too when no other of `clients` (every client of the app) holds a
    /// claim any more. Another client's users answer as unknown ones do (`false`), and whether
    /// others still reach the user never shows in the answer. Returns whether `client` reached
    /// the user and a record existed.
    pub async fn forget_for(&self, app: &App, openid: &str, client: &str, clients: &[&str]) -> Result<bool, ApiError> {
        let (claim, token, session) = tokio::join!(
            self.store.get_reach(&app.name, openid, client),
            self.store.get_token(&app.name, openid),
            self.store.get_session(&app.name, openid),
        );
        let (token, session) = (token?, session?);
        if claim?.is_none() {
            if token.is_some() || session.is_some() {
                self.count_consent_refusal(client, "not_reached");
            }
            return Ok(false);
        }
        let others: Vec<&str> = clients.iter().copied().filter(|c| *c != client).collect();
        self.forget_unless_reached(app, openid, &others).await?;
        // Last: a failure before it leaves the claim, so a retry still reaches the user.
        self.store.forget_reach(&app.name, openid, &[client]).await?;
        Ok(token.is_some() || session.is_some())
    }

    /// Deletes the user's records unless one of `others` still holds a claim on the user
    /// (`None`: kept); else whether a record existed. The claims are read before the lock is
    /// taken (sign-ins do not take it, so reading them under it would close no race, and the
    /// lock's life counts only the deletions' store calls). A client signing the user in at the
    /// very moment the last other claim is forgotten may lose that sign-in, and signs in again.
    async fn forget_unless_reached(&self, app: &App, openid: &str, others: &[&str]) -> Result<Option<bool>, ApiError> {
        if self.store.any_reach(&app.name, openid, others).await? {
            tracing::info!(app = %app.name, "user forgotten for one client; others still reach the user");
            return Ok(None);
        }
        let lock_ttl = self.lock_ttl();
        // A holder finishes, or its lock expires, within one lock life; the second lets this
        // call take its turn. (The caller's deadline, applied around the whole RPC, ends the
        // wait sooner.)
        let give_up = tokio::time::Instant::now() + lock_ttl * 2;
        let mut pause = Backoff::default();
        let lock = loop {
            if let Some(lock) = self.lock(app, openid, lock_ttl).await? {
                break lock;
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(ApiError::Internal);
            }
            tokio::time::sleep(pause.next()).await;
        };
        let forgotten = self.forget_holding_lock(app, openid).await;
        lock.release().await;
        let (existed, unionids) = forgotten?;
        // After the records and outside the lock (no refresh writes the index): a failure here
        // leaves the entry, which the next FindAccounts drops, its records being gone.
        for unionid in &unionids {
            self.store.drop_account(unionid, &app.name, openid).await?;
        }
        Ok(Some(existed))
    }

    /// Deletes the user's records; returns whether there were any and the unionids they named.
    async fn forget_holding_lock(
        &self,
        app: &App,
        openid: &str,
    ) -> Result<(bool, std::collections::BTreeSet<String>), ApiError> {
        let (token, session) =
            tokio::join!(self.store.get_token(&app.name, openid), self.store.get_session(&app.name, openid));
        let (token, session) = (token?, session?);
        let existed = token.is_some() || session.is_some();
        let unionids = token.and_then(|t| t.unionid).into_iter().chain(session.and_then(|s| s.unionid)).collect();
        self.store.delete_user(&app.name, openid).await?;
        tracing::info!(app = %app.name, "user forgotten: token record, session and cached profiles deleted");
        Ok((existed, unionids))
    }

    /// Asks WeChat whether the stored access token is valid: `Ok(None)` when it is,
    /// `Ok(Some(errcode))` when WeChat rejects the token; with the record and what `who`'s own
    /// sign-ins granted it ([`Tokens::reachable`]).
    pub async fn validate(
        &self,
        app: &App,
        openid: &str,
        who: Reach<'_>,
    ) -> Result<(Option<Grant>, TokenRecord, Option<i64>), ApiError> {
        let (grant, record) = self.reachable(app, openid, who, self.stored(app, openid)).await?;
        match self.wechat.auth(app, &record.access_token, openid).await {
            Ok(()) => Ok((grant, record, None)),
            Err(e) if is_dead_access_token(&e) || e.errcode() == Some(40003) => {
                let errcode = e.errcode();
                Ok((grant, record, errcode))
            }
            Err(e) => Err(ApiError::from_wechat(&e)),
        }
    }
}

fn grants_userinfo(scopes: &[String]) -> bool {
    scopes.iter().filter_map(|s| Scope::parse(s)).any(Scope::grants_userinfo)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn is_dead_access_token(e: &WechatError) -> bool {
    e.errcode().is_some_and(|c| DEAD_ACCESS_TOKEN.contains(&c))
}

/// Takes a flight out of the map when its task ends in any way: returns, panics, is aborted or
/// is never run (the task's future, and this guard with it, is dropped). Without it a dead
/// flight would stay in the map and every later refresh of the user would join it instead of
/// refreshing. Its drop takes the map's lock, so nothing that may drop a task's future (a spawn)
/// happens while that lock is held ([`Tokens::refresh`]).
struct FlightGuard {
    tokens: Arc<Tokens>,
    key: String,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self.tokens.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(&self.key).is_some_and(|flight| flight.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// A held refresh lock. [`HeldLock::release`] frees it when the work under it is done; if that
/// work ends otherwise (a panic, an aborted task), dropping the guard frees it from a spawned
/// task, so the next refresh need not wait out the lock's life.
struct HeldLock {
    store: Store,
    app: String,
    openid: String,
    token: Option<LockToken>,
}

impl HeldLock {
    /// Releases the lock (compare-and-delete); a failed release only delays the next holder
    /// until the lock's TTL ends, so it is logged, not returned.
    async fn release(mut self) {
        if let Some(token) = self.token.take()
            && let Err(e) = self.store.unlock(&self.app, &self.openid, token).await
        {
            tracing::warn!(error = %e, "refresh lock release failed; it expires by itself");
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let (Some(token), Ok(runtime)) = (self.token.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (store, app, openid) =
            (self.store.clone(), std::mem::take(&mut self.app), std::mem::take(&mut self.openid));
        runtime.spawn(async move {
            if let Err(e) = store.unlock(&app, &openid, token).await {
                tracing::warn!(error = %e, "refresh lock release failed; it expires by itself");
            }
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::AppSecret;
    use crate::sim::{Endpoint, Fault, SimConfig, Simulator};
    use crate::store::seal::Keyring;
    use crate::wechat::AppKind;

    /// The token service on the in-memory store, a simulator, and alice signed in to `mp`.
    struct Setup {
        tokens: Arc<Tokens>,
        sim: Simulator,
        app: App,
        openid: String,
    }

    async fn setup() -> Setup {
        let (sim, addr) = Simulator::spawn_local(SimConfig::demo()).await.expect("simulator");
        let (metrics, clock) = (Metrics::new(), Clock::system());
        let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
        let store = Store::memory(keys, "wxauth", Arc::clone(&metrics), clock.clone());
        let base = url::Url::parse(&format!("http://{addr}")).expect("url");
        let settings =
            WechatSettings { open_base: base.clone(), api_base: base, timeout: Duration::from_secs(30), attempts: 1 };
        let wechat = WechatClient::new(settings, Arc::clone(&metrics)).expect("client");
        let policy = TokenPolicy {
            refresh_margin: Duration::from_secs(300),
            refresh_life: Duration::from_secs(30 * 86400),
            profile_cache: Duration::ZERO,
        };
        let tokens = Tokens::new(store.clone(), wechat, clock, policy, metrics);
        let app = App {
            name: "mp".into(),
            appid: "wxd0000000000000a1".into(),
            secret: AppSecret::new("demo-mp-secret"),
            kind: AppKind::OfficialAccount,
        };
        let code = sim.authorize(&app.appid, "alice", "snsapi_userinfo").expect("code");
        // As the relay would: the code bound to a flow of client `test`.
        let flow_id = store.new_flow_id("test", &app.name);
        let flow = crate::store::Flow {
            app: app.name.clone(),
            return_url: "https://product.example.com/cb".into(),
            caller_state: "s".into(),
            scope: "snsapi_userinfo".into(),
            caller: "test".into(),
            created_at: 0,
            force_popup: false,
        };
        let ttl = Duration::from_secs(360);
        assert!(store.put_flow(&flow_id, &flow, ttl).await.expect("flow"));
        let code = AuthCode::new(code);
        let relayed = store.relay(&flow_id, Duration::from_secs(60), Some(&code), ttl).await.expect("relay");
        assert_eq!(relayed.and_then(|r| r.code), Some(crate::store::CodeRelay::Bound));
        let (outcome, _) = tokens.exchange(&app, &flow_id, code, "test").await.expect("exchange");
        Setup { tokens, sim, app, openid: outcome.openid }
    }

    fn flights(tokens: &Tokens) -> usize {
        tokens.flights.lock().map(|f| f.len()).unwrap_or_default()
    }

    #[test]
    fn the_lock_outlives_every_attempt_backoff_and_store_call_under_it() {
        let defaults = WechatSettings {
            open_base: url::Url::parse("https://open.weixin.qq.com").expect("url"),
            api_base: url::Url::parse("https://api.weixin.qq.com").expect("url"),
            timeout: Duration::from_secs(3),
            attempts: 3,
        };
        // 3 x 3 s + 200 ms + 400 ms of backoff, 7 store calls of 2 s, 1 s of margin.
        assert_eq!(lock_ttl(&defaults), Duration::from_millis(24_600));
        let quick = WechatSettings { timeout: Duration::from_millis(500), attempts: 1, ..defaults };
        assert_eq!(lock_ttl(&quick), Duration::from_millis(15_500));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_refresh_leaves_no_flight_and_no_lock_behind() {
        let Setup { tokens, sim, app, openid } = setup().await;
        sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_secs(60)), 1);
        let stuck = tokio::spawn({
            let (tokens, app, openid) = (Arc::clone(&tokens), app.clone(), openid.clone());
            async move { tokens.force_refresh(&app, &openid).await }
        });
        for _ in 0..500 {
            if sim.calls(Endpoint::RefreshToken) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(sim.calls(Endpoint::RefreshToken), 1, "the refresh is waiting for WeChat");

        let abort = tokens.flights.lock().expect("flights").values().next().and_then(|f| f.abort.clone());
        abort.expect("a flight under way").abort();

        assert!(matches!(stuck.await.expect("join"), Err(ApiError::Internal)));
        assert_eq!(flights(&tokens), 0, "the aborted flight left the map");
        // A new refresh proceeds at once: no dead flight to join, no lock to wait out (24.6 s).
        let next = tokio::time::timeout(Duration::from_secs(5), tokens.force_refresh(&app, &openid)).await;
        next.expect("not stuck behind the dead refresh's lock").expect("refreshed");
        assert_eq!(sim.calls(Endpoint::RefreshToken), 2);
        assert_eq!(flights(&tokens), 0);
    }

    /// Log lines written while it is the thread's default subscriber (a current-thread runtime
    /// runs every task on this thread).
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicked_refresh_is_logged_at_error_level_with_its_operation() {
        let Setup { tokens, app, openid, .. } = setup().await;
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // With a single registered dispatcher, tracing judges a callsite's interest by the
        // default of the thread that hits it first: another test's thread, with no subscriber,
        // would make it "never" for this one too. A second one makes it ask every dispatcher.
        let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        let _default = tracing::subscriber::set_default(subscriber);
        tokens.panic_next_refresh.store(true, Ordering::Relaxed);

        let panicked = tokens.force_refresh(&app, &openid).await;

        assert!(matches!(panicked, Err(ApiError::Internal)));
        let text = logs.text();
        let line = text.lines().find(|l| l.contains("ERROR")).unwrap_or_default();
        assert!(line.contains("token refresh") && line.contains("panicked"), "logged: {text:?}");
    }

    #[test]
    fn a_refresh_started_while_its_runtime_shuts_down_answers_instead_of_deadlocking() {
        let main = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let Setup { tokens, sim, app, openid } = main.block_on(setup());
        let (answer_tx, answer_rx) = std::sync::mpsc::channel();
        let caller = Arc::clone(&tokens);
        std::thread::spawn(move || {
            // A runtime already shut down: a task spawned on it is dropped at once, in the
            // spawning call, and with it the flight's guard.
            let dying = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let handle = dying.handle().clone();
            drop(dying);
            let answer = handle.block_on(caller.force_refresh(&app, &openid));
            let _ = answer_tx.send(answer);
        });

        let answer = answer_rx.recv_timeout(Duration::from_secs(10));

        assert!(matches!(answer, Ok(Err(ApiError::Internal))), "answered, not deadlocked: {answer:?}");
        assert_eq!(flights(&tokens), 0, "the dropped flight left the map");
        assert_eq!(sim.calls(Endpoint::RefreshToken), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_waiter_backs_off_and_stops_at_its_callers_deadline() {
        let Setup { tokens, sim, app, openid } = setup().await;
        // Another replica holds the user's lock and never finishes (until its lock expires).
        let held = tokens.store.try_lock(&app.name, &openid, Duration::from_secs(60)).await.expect("store");
        assert!(held.is_some());
        let reads = || tokens.metrics.store_duration.with_label_values(&["get"]).get_sample_count();
        let before = reads();

        let waited = tokio::time::timeout(Duration::from_secs(1), tokens.force_refresh(&app, &openid)).await;

        assert!(waited.is_err(), "the caller's deadline passed");
        let during = reads() - before;
        // 20-40 ms each: about 33 reads a second; doubling to 500 ms: at most 7.
        assert!((2..=8).contains(&during), "{during} reads in one second");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(reads() - before, during, "no read after the caller left");
        assert_eq!(flights(&tokens), 0, "the waiting flight ended with its caller");
        assert_eq!(sim.calls(Endpoint::RefreshToken), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicked_refresh_leaves_no_flight_behind() {
        let Setup { tokens, sim, app, openid } = setup().await;
        tokens.panic_next_refresh.store(true, Ordering::Relaxed);

        let panicked = tokens.force_refresh(&app, &openid).await;

        assert!(matches!(panicked, Err(ApiError::Internal)));
        assert_eq!(flights(&tokens), 0, "the panicked flight left the map");
        assert_eq!(sim.calls(Endpoint::RefreshToken), 0);
        tokens.force_refresh(&app, &openid).await.expect("a new refresh, not the dead flight's error");
        assert_eq!(sim.calls(Endpoint::RefreshToken), 1);
    }
}
