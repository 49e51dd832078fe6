//! The token lifecycle: exchanging codes (only through the flow that relayed them, and
//! idempotently per flow, so a reload or a retry never meets WeChat's 40163 while a leaked
//! code signs no one in elsewhere), keeping tokens fresh, and refreshing each user's token with ONE call to
//! WeChat however many requests and replicas ask at once.
//!
//! Coalescing has two levels. In a process, concurrent refreshes of one user share one task
//! (single-flight); the task runs detached, so a caller's cancelled deadline never leaves a
//! refresh half-done. Across replicas, the task holds the user's Redis lock (`SET NX PX`,
//! compare-and-delete release) and, once it has it, re-reads the record: if another replica
//! already replaced the stale token, it uses that token instead of calling WeChat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use rand::Rng as _;
use tracing::Instrument as _;

use crate::clock::{Clock, secs};
use crate::error::ApiError;
use crate::secrets::{AccessToken, AuthCode};
use crate::store::{
    CachedProfile, CodeRecord, CodeState, ExchangeOutcome, ReadCode, Store, TokenRecord, code_record_ttl,
};
use crate::telemetry::Metrics;
use crate::wechat::{App, Lang, Profile, Scope, TokenGrant, WechatClient, WechatError};

/// How long a replica may hold a user's refresh lock (longer than any refresh call).
const LOCK_TTL: Duration = Duration::from_secs(10);
/// How long an exchange's claim on a code holds: past it (its replica died mid-exchange),
/// another exchange of the same `(flow, code)` may take the claim over.
const CLAIM_TTL: Duration = Duration::from_secs(30);
/// How often a waiter looks again at a record another replica is refreshing.
const POLL: Duration = Duration::from_millis(20);
/// WeChat codes that mean "this access token is not (or no longer) valid".
const DEAD_ACCESS_TOKEN: [i64; 3] = [42001, 40001, 40014];
/// WeChat codes that mean "this refresh token is dead".
const DEAD_REFRESH_TOKEN: [i64; 2] = [42002, 40030];

type Flight = Shared<BoxFuture<'static, Result<TokenRecord, ApiError>>>;

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
    metrics: Arc<Metrics>,
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
        Arc::new(Self { store, wechat, clock, policy, flights: Mutex::default(), metrics })
    }

    /// Refreshes by result so far: `upstream` (WeChat calls) or `coalesced` (calls saved).
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
        loop {
            let Some(read) = self.store.get_code(&app.name, &code).await? else {
                tracing::warn!(app = %app.name, caller, "exchange refused: the relay never relayed this code in this app");
                return Err(ApiError::CodeNotFromFlow);
            };
            if read.record.flow_id != flow_id || read.record.client != caller {
                tracing::warn!(app = %app.name, caller, "exchange refused: the code came through another flow");
                return Err(ApiError::CodeNotFromFlow);
            }
            let now_ms = self.clock.now_ms();
            match &read.record.state {
                CodeState::Done(outcome) => {
                    tracing::info!(app = %app.name, "code exchanged before through this flow; returning the recorded result");
                    return Ok((outcome.clone(), false));
                }
                CodeState::Pending(since) if now_ms - since < millis(CLAIM_TTL) => {
                    tokio::time::sleep(jittered(POLL)).await;
                }
                CodeState::Relayed | CodeState::Pending(_) => {
                    let claim = CodeRecord { state: CodeState::Pending(now_ms), ..read.record.clone() };
                    let life = code_record_ttl(app.kind.code_life());
                    if !self.store.swap_code(&app.name, &code, &read, &claim, life).await? {
                        continue; // another exchange claimed it first: wait for its result
                    }
                    // Detached: once sent, the exchange finishes and records its result even
                    // if this caller's deadline passes, so the caller's retry finds it.
                    let (this, app, code) = (Arc::clone(self), app.clone(), code.clone());
                    let exchange = async move { this.exchange_claimed(&app, &code, claim, read).await };
                    let task = tokio::spawn(exchange.in_current_span());
                    return task.await.unwrap_or(Err(ApiError::Internal)).map(|outcome| (outcome, true));
                }
            }
        }
    }

    async fn exchange_claimed(
        &self,
        app: &App,
        code: &AuthCode,
        claim: CodeRecord,
        relayed: ReadCode,
    ) -> Result<ExchangeOutcome, ApiError> {
        let life = code_record_ttl(app.kind.code_life());
        let unclaim = || async {
            // Back to "relayed": the failure is not remembered as a result, and a retry
            // through the same flow may try again.
            let relayed = CodeRecord { state: CodeState::Relayed, ..relayed.record.clone() };
            if let Err(e) = self.store.put_code(&app.name, code, &relayed, life).await {
                tracing::warn!(error = %e, "exchange claim not released; it lapses by itself");
            }
        };
        let grant = match self.wechat.exchange_code(app, code).await {
            Ok(grant) => grant,
            Err(e) => {
                unclaim().await;
                return Err(ApiError::from_wechat(&e));
            }
        };
        let now = self.clock.now_secs();
        if grant.is_snapshotuser == 1 {
            return self.snapshot_user(app, code, claim, grant, life).await;
        }
        let record = TokenRecord {
            openid: grant.openid.clone(),
            unionid: grant.unionid.clone().filter(|u| !u.is_empty()),
            scopes: split_scopes(&grant.scope),
            is_snapshot_user: grant.is_snapshotuser == 1,
            access_expires_at: now + grant.expires_in,
            refresh_expires_at: now + secs(self.policy.refresh_life),
            access_token: grant.access_token,
            refresh_token: grant.refresh_token,
        };
        let kept = match self.keep_token(app, record).await {
            Ok(kept) => kept,
            Err(e) => {
                // A result must never promise a token that was not stored.
                unclaim().await;
                return Err(e);
            }
        };
        let outcome = ExchangeOutcome {
            openid: grant.openid,
            unionid: grant.unionid.filter(|u| !u.is_empty()),
            scopes: split_scopes(&grant.scope),
            is_snapshot_user: grant.is_snapshotuser == 1,
            access_expires_at: kept.access_expires_at,
            refresh_expires_at: kept.refresh_expires_at,
        };
        let done = CodeRecord { state: CodeState::Done(outcome.clone()), ..claim };
        // Different keys, so different Cluster slots: concurrent commands, not a pipeline.
        let (reach, finished) = tokio::join!(
            self.store.put_reach(&app.name, &outcome.openid, &done.client, now, self.policy.refresh_life),
            self.store.put_code(&app.name, code, &done, life),
        );
        reach?;
        finished?;
        Ok(outcome)
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
        };
        let done = CodeRecord { state: CodeState::Done(outcome.clone()), ..claim };
        self.store.put_code(&app.name, code, &done, life).await?;
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
            let read = self.store.read_token(&app.name, &record.openid).await?;
            if let Some(held) = read
                .as_ref()
                .filter(|r| grants_userinfo(&r.record.scopes) && r.record.refresh_expires_at > self.clock.now_secs())
            {
                tracing::info!(app = %app.name, "snsapi_base sign-in keeps the user's snsapi_userinfo token");
                return Ok(held.record.clone());
            }
            if self.store.swap_token(&app.name, read.as_ref(), &record, life).await? {
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
    /// reach the user. The claim is looked up at the same time as the read, so the check costs
    /// no round trip of its own.
    pub async fn reachable<T>(
        &self,
        app: &App,
        openid: &str,
        who: Reach<'_>,
        read: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let Reach::Own(client) = who else { return read.await };
        let (reached, value) = tokio::join!(self.store.has_reach(&app.name, openid, client), read);
        if !reached? {
            return Err(ApiError::TokenNotFound);
        }
        value
    }

    /// The record with an access token that outlives the refresh margin, refreshing first
    /// when it does not.
    pub async fn current(self: &Arc<Self>, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
        self.current_of(app, openid, Reach::Any).await
    }

    /// [`Tokens::current`] for `who`: the record is read with the reach check, before any
    /// refresh.
    async fn current_of(self: &Arc<Self>, app: &App, openid: &str, who: Reach<'_>) -> Result<TokenRecord, ApiError> {
        let record = self.reachable(app, openid, who, self.stored(app, openid)).await?;
        if record.access_expires_at > self.clock.now_secs() + secs(self.policy.refresh_margin) {
            return Ok(record);
        }
        self.refresh(app, openid, Some(record.access_token)).await
    }

    /// Refreshes the user's token. `stale` is the token the caller saw: if the stored token
    /// already differs, someone refreshed since and that result is used instead.
    pub async fn refresh(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        stale: Option<AccessToken>,
    ) -> Result<TokenRecord, ApiError> {
        let key = format!("{}\u{0}{openid}", app.name);
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(flight) = flights.get(&key) {
                self.count_refresh("coalesced");
                flight.clone()
            } else {
                let (this, app, openid, key2) = (Arc::clone(self), app.clone(), openid.to_owned(), key.clone());
                let refresh = async move {
                    let result = this.refresh_locked(&app, &openid, stale).await;
                    this.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&key2);
                    result
                };
                // The leader's span parents the refresh; waiters join it.
                let task = tokio::spawn(refresh.instrument(tracing::info_span!("token.refresh")));
                let flight: Flight = async move { task.await.unwrap_or(Err(ApiError::Internal)) }.boxed().shared();
                flights.insert(key, flight.clone());
                flight
            }
        };
        flight.await
    }

    async fn refresh_locked(
        &self,
        app: &App,
        openid: &str,
        stale: Option<AccessToken>,
    ) -> Result<TokenRecord, ApiError> {
        let give_up = tokio::time::Instant::now() + LOCK_TTL;
        loop {
            if let Some(lock) = self.store.try_lock(&app.name, openid, LOCK_TTL).await? {
                let result = self.refresh_holding_lock(app, openid, stale.as_ref()).await;
                self.release(app, openid, lock).await;
                return result;
            }
            // Another replica is refreshing this user: wait for its result.
            tokio::time::sleep(jittered(POLL)).await;
            let Some(record) = self.store.get_token(&app.name, openid).await? else {
                // It found the refresh token dead and deleted the record.
                return Err(ApiError::ReauthorizationRequired(None));
            };
            if is_newer(&record, stale.as_ref()) {
                self.count_refresh("coalesced");
                return Ok(record);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(ApiError::WechatUnavailable(None));
            }
        }
    }

    async fn refresh_holding_lock(
        &self,
        app: &App,
        openid: &str,
        stale: Option<&AccessToken>,
    ) -> Result<TokenRecord, ApiError> {
        let record = self.stored(app, openid).await?;
        if is_newer(&record, stale) {
            self.count_refresh("coalesced");
            return Ok(record);
        }
        self.count_refresh("upstream");
        let grant = match self.wechat.refresh(app, &record.refresh_token).await {
            Ok(grant) => grant,
            Err(e) if e.errcode().is_some_and(|c| DEAD_REFRESH_TOKEN.contains(&c)) => {
                self.store.delete_user(&app.name, openid).await?;
                tracing::info!(app = %app.name, errcode = e.errcode(), "refresh token dead; record deleted");
                return Err(ApiError::from_wechat(&e));
            }
            Err(e) => return Err(ApiError::from_wechat(&e)),
        };
        let updated = self.apply_grant(record, grant);
        let ttl =
            Duration::from_secs(u64::try_from(updated.refresh_expires_at - self.clock.now_secs()).unwrap_or(1).max(1));
        self.store.put_token(&app.name, &updated, ttl).await?;
        Ok(updated)
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
            let hit = self.reachable(app, openid, who, cached).await?;
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
        let record = self.current_of(app, openid, who).await?;
        if !grants_userinfo(&record.scopes) {
            return Err(ApiError::ScopeNotGranted(None));
        }
        match self.wechat.userinfo(app, &record.access_token, openid, lang).await {
            Err(e) if is_dead_access_token(&e) => {
                tracing::info!(app = %app.name, errcode = e.errcode(), "WeChat rejected a token thought alive; refreshing");
                let record = self.refresh(app, openid, Some(record.access_token)).await?;
                let profile = self.wechat.userinfo(app, &record.access_token, openid, lang).await;
                Ok((profile.map_err(|e| ApiError::from_wechat(&e))?, record))
            }
            other => Ok((other.map_err(|e| ApiError::from_wechat(&e))?, record)),
        }
    }

    /// Deletes the user's token record and cached profiles, holding the user's refresh lock so
    /// a refresh under way (here or on another replica) finishes first and cannot write the
    /// record back. Returns whether a record existed.
    pub async fn forget(&self, app: &App, openid: &str) -> Result<bool, ApiError> {
        let give_up = tokio::time::Instant::now() + LOCK_TTL + LOCK_TTL;
        let lock = loop {
            // A holder that died releases by TTL (LOCK_TTL), so this ends well before `give_up`.
            if let Some(lock) = self.store.try_lock(&app.name, openid, LOCK_TTL).await? {
                break lock;
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(ApiError::Internal);
            }
            tokio::time::sleep(jittered(POLL)).await;
        };
        let forgotten = self.forget_holding_lock(app, openid).await;
        self.release(app, openid, lock).await;
        forgotten
    }

    async fn forget_holding_lock(&self, app: &App, openid: &str) -> Result<bool, ApiError> {
        let existed = self.store.get_token(&app.name, openid).await?.is_some();
        self.store.delete_user(&app.name, openid).await?;
        tracing::info!(app = %app.name, "user forgotten: token record and cached profiles deleted");
        Ok(existed)
    }

    /// Releases the user's refresh lock; a failed release only delays the next holder until
    /// the lock's TTL ends, so it is logged, not returned.
    async fn release(&self, app: &App, openid: &str, lock: crate::store::LockToken) {
        if let Err(e) = self.store.unlock(&app.name, openid, lock).await {
            tracing::warn!(error = %e, "refresh lock release failed; it expires by itself");
        }
    }

    /// Asks WeChat whether the stored access token is valid: `Ok(None)` when it is,
    /// `Ok(Some(errcode))` when WeChat rejects the token.
    pub async fn validate(
        &self,
        app: &App,
        openid: &str,
        who: Reach<'_>,
    ) -> Result<(TokenRecord, Option<i64>), ApiError> {
        let record = self.reachable(app, openid, who, self.stored(app, openid)).await?;
        match self.wechat.auth(app, &record.access_token, openid).await {
            Ok(()) => Ok((record, None)),
            Err(e) if is_dead_access_token(&e) || e.errcode() == Some(40003) => {
                let errcode = e.errcode();
                Ok((record, errcode))
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

fn is_newer(record: &TokenRecord, stale: Option<&AccessToken>) -> bool {
    stale.is_some_and(|s| &record.access_token != s)
}

fn split_scopes(scope: &str) -> Vec<String> {
    scope.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn jittered(base: Duration) -> Duration {
    let ms = u64::try_from(base.as_millis()).unwrap_or(20);
    Duration::from_millis(ms + rand::rng().random_range(0..=ms))
}
