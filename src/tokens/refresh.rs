//! Keeping tokens fresh: refreshing each user's token with ONE call to WeChat however many
//! requests and replicas ask at once (docs/design.md §12.4).
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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use tracing::Instrument as _;

use super::{Backoff, Tokens, UsersRule, joined, split_scopes};
use crate::clock::{millis, secs};
use crate::error::ApiError;
use crate::store::{LockToken, OPERATION_TIMEOUT, Store, TokenRecord};
use crate::wechat::{App, Lang, TokenGrant, WechatSettings};

/// Added to the refresh lock's computed life: scheduling, clock drift between Redis and us.
const LOCK_MARGIN: Duration = Duration::from_secs(1);
/// A forced refresh (`RefreshToken`) is answered by a refresh that finished at most this long
/// before it was asked for (or after): that token's expiry is within this of a new refresh's,
/// and WeChat would return the same token anyway, so a second call would buy nothing.
const FORCED_REFRESH_REUSE: Duration = Duration::from_secs(5);
/// WeChat codes that mean "this refresh token is dead" (docs/design.md §10.4): 42002
/// "refresh_token 超时", 40030 "不合法的 refresh_token", 42007 "用户修改微信密码， accesstoken 和
/// refreshtoken 失效，需要重新授权".
const DEAD_REFRESH_TOKEN: [i64; 3] = [42002, 40030, 42007];

/// The longest any refresh lock is held: the work under it. A refresh, holding the lock, makes
/// one retried WeChat call ([`WechatSettings::longest_retrying_call`]: every attempt up to the
/// timeout, with the longest backoffs) and at most `4 + Lang::ALL.len()` store calls of up to
/// [`OPERATION_TIMEOUT`] each: the reply to the lock's own `SET`, the read, then either the
/// compare-and-write or, for a dead refresh token, the cached profiles' and the record's
/// deletions, then a re-read when the record changed meanwhile (`ForgetUser` under the lock makes
/// as many: the reply, the token and session reads at once, the cached profiles', the session's
/// and the record's deletions; it takes the account out of the index after releasing the lock). Plus [`LOCK_MARGIN`]. With the defaults (3 s
/// timeout, 3 attempts, 3 langs, 2 s store timeout): 9.6 s + 7 x 2 s + 1 s = 24.6 s.
pub(crate) fn lock_ttl(wechat: &WechatSettings) -> Duration {
    let store_calls = 4 + u32::try_from(Lang::ALL.len()).unwrap_or(u32::MAX);
    wechat.longest_retrying_call() + OPERATION_TIMEOUT * store_calls + LOCK_MARGIN
}

type FlightResult = Shared<BoxFuture<'static, Result<TokenRecord, ApiError>>>;
type RefreshTask = tokio::task::JoinHandle<Result<TokenRecord, ApiError>>;

/// One user's refresh under way in this process; concurrent refreshes join its result.
pub(super) struct Flight {
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
    pub(super) abort: Option<tokio::task::AbortHandle>,
}

/// Why a refresh is asked for: it decides whether a refresh someone else made answers it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Need {
    /// The access token of the record stamped `seen` (its `refreshed_at_ms`) expires within the
    /// margin: any refresh since answers it, as does a record that outlives the margin.
    Expiring { seen: i64 },
    /// WeChat rejected the access token of the record stamped `seen`: any refresh since answers.
    Rejected { seen: i64 },
    /// `RefreshToken`, asked at `asked_at_ms`: a refresh that finished after that, or at most
    /// [`FORCED_REFRESH_REUSE`] before, answers it.
    Forced { asked_at_ms: i64 },
}

impl Tokens {
    /// The record with an access token that outlives the refresh margin, refreshing first
    /// when it does not, for `who`: the record is read with the reach check, before any
    /// refresh; `wants_profile` refuses, before any refresh, a client whose own sign-ins do not
    /// read the profile.
    pub(super) async fn current_of(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        who: UsersRule<'_>,
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
    pub(crate) async fn force_refresh(self: &Arc<Self>, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
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
                let reuse = millis(FORCED_REFRESH_REUSE);
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
    pub(super) async fn refresh(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        need: Need,
    ) -> Result<TokenRecord, ApiError> {
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
    pub(super) async fn lock(&self, app: &App, openid: &str, ttl: Duration) -> Result<Option<HeldLock>, ApiError> {
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
pub(super) struct HeldLock {
    store: Store,
    app: String,
    openid: String,
    token: Option<LockToken>,
}

impl HeldLock {
    /// Releases the lock (compare-and-delete); a failed release only delays the next holder
    /// until the lock's TTL ends, so it is logged, not returned.
    pub(super) async fn release(mut self) {
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
