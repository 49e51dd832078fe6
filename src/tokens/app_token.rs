//! An app's own credentials, held in ONE place (issue 21, docs/design.md §12.9): its access
//! token (`cgi-bin/stable_token`, normal mode) and its `jsapi_ticket`, fetched by wxauth alone,
//! sealed in the store, renewed before they expire with one WeChat call however many requests
//! and replicas ask, and handed out to the clients granted them.
//!
//! The protocol is the user refresh's (§12.4, `refresh.rs`): in a process, one detached task per
//! credential (single-flight, a drop guard takes its entry out however it ends); across
//! replicas, the credential's Redis lock, under which the record is read again (a renewal made
//! meanwhile answers without a WeChat call); the write is a compare-and-set over the bytes read,
//! so a renewal that outlived its lock never writes over a newer one. "Made meanwhile" is judged
//! by the record's fetch stamp, never by the value: WeChat's normal mode gives the same token
//! again while it lives.
//!
//! A forced refresh (InvalidateAppAccessToken: a product met 40001 with the token) is made only
//! while the reported token is still the current one (a stale report costs nothing), at most
//! once for any number of concurrent reports, never within 30 s of the last one (WeChat ignores
//! it then), and at most [`FORCED_REFRESHES_PER_DAY`] times a day per app, counted in the store
//! across replicas.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use super::{Backoff, Tokens, joined};
use crate::clock::secs;
use crate::error::{ApiError, Upstream};
use crate::secrets::{AppCredentialValue, AuthCode};
use crate::store::{AppCredential, CredentialKind, LockToken, Store};
use crate::wechat::errcodes::{self, Outcome};
use crate::wechat::{App, PhoneInfo};

/// A credential is renewed when it has less than this to live. WeChat's normal mode renews the
/// token itself in its last 5 minutes ("平台会提前5分钟更新access_token", and the old one stays
/// valid meanwhile: getStableAccessToken, docs/wechat.md): asked earlier it only answers the
/// same token again.
const APP_CREDENTIAL_MARGIN: Duration = Duration::from_secs(300);
/// WeChat's forced refreshes of `stable_token` a day per app ("该模式限制每天20次",
/// getStableAccessToken).
const FORCED_REFRESHES_PER_DAY: u32 = 20;
/// A forced refresh this soon after the last one is not made: WeChat asks for 30 s between
/// them ("连续使用该模式时，请保证调用时间隔至少为30s，否则不会刷新").
const FORCED_REFRESH_SPACING_MS: i64 = 30_000;
/// A credential fetched this recently answers even inside the margin: WeChat gave it (a ticket
/// may come back the same with less than the margin left), and asking again at once would
/// only make a WeChat call per request until it expires.
const JUST_FETCHED_MS: i64 = 60_000;
/// WeChat's day for the allowance: China Standard Time (UTC+8). Not documented
/// (docs/wechat.md, "What cannot be confirmed").
const WECHAT_DAY_OFFSET_SECS: i64 = 8 * 3600;

type CredentialResult = Shared<BoxFuture<'static, Result<AppCredential, ApiError>>>;
type CredentialTask = tokio::task::JoinHandle<Result<AppCredential, ApiError>>;

/// One credential's renewal under way in this process; concurrent renewals join it.
pub(super) struct CredentialFlight {
    result: CredentialResult,
    /// Tells this flight from a later one of the same credential.
    id: u64,
}

/// Why a renewal is asked for: it decides whether a record someone else wrote answers it.
#[derive(Clone, Copy, Debug)]
enum Renewal {
    /// The credential expires within the margin (or there is none): any record that does not
    /// answers.
    Expiring,
    /// A product reported the token stamped `seen` rejected (InvalidateAppAccessToken).
    Rejected { seen: i64 },
}

impl Renewal {
    fn name(self) -> &'static str {
        match self {
            Renewal::Expiring => "expiring",
            Renewal::Rejected { .. } => "rejected",
        }
    }
}

/// What InvalidateAppAccessToken did.
#[derive(Debug)]
pub(crate) struct Invalidation {
    /// The current token after it.
    pub(crate) credential: AppCredential,
    /// Whether the token answered is another than the one reported.
    pub(crate) replaced: bool,
}

impl Tokens {
    /// The app's access token, renewed first when it expires within the margin.
    pub(crate) async fn app_access_token(self: &Arc<Self>, app: &App) -> Result<AppCredential, ApiError> {
        self.app_credential(app, CredentialKind::AccessToken, None).await
    }

    /// The app's `jsapi_ticket`, renewed first (with the app's access token) when it expires
    /// within the margin. A token WeChat calls dead meanwhile is reported as InvalidateAppAccessToken
    /// would, once, and the ticket asked again with the token that replaced it.
    pub(crate) async fn jsapi_ticket(self: &Arc<Self>, app: &App) -> Result<AppCredential, ApiError> {
        // The ticket first: the app's token is needed only to renew it, so the usual call is one
        // read (reading the token first made every SignJsSdkConfig two reads in sequence).
        let (kept, _) = self.store.read_app_credential(&app.name, CredentialKind::JsapiTicket).await?;
        if let Some(ticket) = kept.filter(|t| self.credential_current(t)) {
            return Ok(ticket);
        }
        let token = self.app_access_token(app).await?;
        match self.app_credential(app, CredentialKind::JsapiTicket, Some(&token.value)).await {
            Err(e) if e.errcode().is_some_and(is_dead_token) => {
                let renewed = self.invalidate_app_access_token(app, token.value.secret()).await?;
                self.app_credential(app, CredentialKind::JsapiTicket, Some(&renewed.credential.value)).await
            }
            other => other,
        }
    }

    /// The phone number behind a mini program's phone-number button `code`, with the app's
    /// token. A token WeChat calls dead is replaced once (the call was refused before the code
    /// was looked at); an answer that was lost may have spent the code (`SIGN_IN_AGAIN`: the
    /// user taps the button again); the watermark must name this mini program.
    pub(crate) async fn phone_number(self: &Arc<Self>, app: &App, code: &AuthCode) -> Result<PhoneInfo, ApiError> {
        let token = self.app_access_token(app).await?;
        let answered = match self.wechat.phone_number(app, &token.value, code).await {
            Err(e) if e.errcode().is_some_and(is_dead_token) => {
                let renewed = self.invalidate_app_access_token(app, token.value.secret()).await?;
                self.wechat.phone_number(app, &renewed.credential.value, code).await
            }
            other => other,
        };
        let info = answered.map_err(|e| {
            let error = ApiError::from_wechat(&e);
            if e.may_have_acted() { error.spent_code() } else { error }
        })?;
        if info.watermark.appid != app.appid {
            tracing::warn!(app = %app.name, "a phone number's watermark names another app; not answered");
            return Err(ApiError::Wechat(Upstream { errcode: 0, errmsg: "watermark of another app".into() }));
        }
        Ok(info)
    }

    /// InvalidateAppAccessToken: a forced refresh only while `reported` is the current token.
    pub(crate) async fn invalidate_app_access_token(
        self: &Arc<Self>,
        app: &App,
        reported: &str,
    ) -> Result<Invalidation, ApiError> {
        let kind = CredentialKind::AccessToken;
        let (record, _) = self.store.read_app_credential(&app.name, kind).await?;
        let current = record.filter(|c| same_secret(c.value.secret(), reported));
        let Some(current) = current else {
            // A token already replaced (or never ours): the current one answers, free.
            self.count_invalidation(app, "stale");
            let credential = self.app_access_token(app).await?;
            let replaced = !same_secret(credential.value.secret(), reported);
            return Ok(Invalidation { credential, replaced });
        };
        let renewal = Renewal::Rejected { seen: current.fetched_at_ms };
        let credential = self.renew_credential(app, kind, renewal, None).await?;
        let replaced = !same_secret(credential.value.secret(), reported);
        Ok(Invalidation { credential, replaced })
    }

    /// The credential of `kind`, renewed first when it expires within the margin (`token`: the
    /// access token a ticket is fetched with). A renewal that fails while the stored credential
    /// still lives answers that one: a WeChat outage costs nothing until it expires.
    async fn app_credential(
        self: &Arc<Self>,
        app: &App,
        kind: CredentialKind,
        token: Option<&AppCredentialValue>,
    ) -> Result<AppCredential, ApiError> {
        let (record, _) = self.store.read_app_credential(&app.name, kind).await?;
        if let Some(credential) = record.as_ref().filter(|c| self.credential_current(c)) {
            return Ok(credential.clone());
        }
        match self.renew_credential(app, kind, Renewal::Expiring, token.cloned()).await {
            Err(e) if record.as_ref().is_some_and(|c| c.expires_at > self.clock.now_secs()) => {
                tracing::warn!(app = %app.name, kind = kind.as_str(), reason = e.reason(), "renewal failed; the stored credential still lives and answers");
                record.ok_or(e)
            }
            other => other,
        }
    }

    /// Whether `credential` answers without a renewal: it outlives the margin, or it was
    /// fetched within [`JUST_FETCHED_MS`] and still lives.
    fn credential_current(&self, credential: &AppCredential) -> bool {
        let now = self.clock.now_secs();
        let just_fetched = self.clock.now_ms() - credential.fetched_at_ms < JUST_FETCHED_MS;
        credential.expires_at > now + secs(APP_CREDENTIAL_MARGIN) || (just_fetched && credential.expires_at > now)
    }

    /// Whether `record` answers `renewal` without a WeChat call: written since the caller looked
    /// (and, for an expiring one, no longer expiring).
    fn credential_answers(&self, renewal: Renewal, record: &AppCredential) -> bool {
        match renewal {
            Renewal::Expiring => self.credential_current(record),
            Renewal::Rejected { seen } => record.fetched_at_ms != seen,
        }
    }

    /// Renews the credential for `renewal`, sharing one detached task with every concurrent
    /// renewal of it (of the same reason) in this process. As in `Tokens::refresh`, the map's
    /// lock is held only to look up or insert, the task spawned after it is released.
    async fn renew_credential(
        self: &Arc<Self>,
        app: &App,
        kind: CredentialKind,
        renewal: Renewal,
        token: Option<AppCredentialValue>,
    ) -> Result<AppCredential, ApiError> {
        let key = format!("{}\u{0}{}\u{0}{}", app.name, kind.as_str(), renewal.name());
        let (flight, start) = {
            let mut flights = self.app_flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(flight) = flights.get(&key) {
                self.count_renewal(app, kind, "coalesced");
                (flight.result.clone(), None)
            } else {
                let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
                let (handle_tx, handle_rx) = tokio::sync::oneshot::channel::<CredentialTask>();
                let result: CredentialResult = async move {
                    let Ok(task) = handle_rx.await else { return Err(ApiError::Internal) };
                    joined("app credential renewal", task.await)
                }
                .boxed()
                .shared();
                flights.insert(key.clone(), CredentialFlight { result: result.clone(), id });
                (result, Some((id, handle_tx)))
            }
        };
        if let Some((id, handle_tx)) = start {
            let guard = CredentialFlightGuard { tokens: Arc::clone(self), key, id };
            let (this, app) = (Arc::clone(self), app.clone());
            let renew = async move {
                let _guard = guard;
                this.renew_locked(&app, kind, renewal, token.as_ref()).await
            };
            let task = tokio::spawn(renew.instrument(tracing::info_span!("app_credential.renew")));
            // Fails only if every caller is gone already; the task then runs on, detached.
            let _ = handle_tx.send(task);
        }
        flight.await
    }

    /// The renewal under the credential's Redis lock; without it (another replica renews), reads
    /// the record again after pauses from 20 ms doubling to 500 ms until it answers, for up to
    /// two lock lives (then `WECHAT_UNAVAILABLE`).
    async fn renew_locked(
        &self,
        app: &App,
        kind: CredentialKind,
        renewal: Renewal,
        token: Option<&AppCredentialValue>,
    ) -> Result<AppCredential, ApiError> {
        let lock_ttl = self.lock_ttl();
        let give_up = tokio::time::Instant::now() + lock_ttl * 2;
        let mut pause = Backoff::default();
        loop {
            if let Some(held) = self.store.try_lock_app_credential(&app.name, kind, lock_ttl).await? {
                let lock = CredentialLock { store: self.store.clone(), app: app.name.clone(), kind, token: Some(held) };
                let result = self.renew_holding_lock(app, kind, renewal, token).await;
                lock.release().await;
                return result;
            }
            tokio::time::sleep(pause.next()).await;
            let (record, _) = self.store.read_app_credential(&app.name, kind).await?;
            if let Some(credential) = record.filter(|c| self.credential_answers(renewal, c)) {
                self.count_renewal(app, kind, "coalesced");
                return Ok(credential);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(ApiError::WechatUnavailable(None));
            }
        }
    }

    async fn renew_holding_lock(
        &self,
        app: &App,
        kind: CredentialKind,
        renewal: Renewal,
        token: Option<&AppCredentialValue>,
    ) -> Result<AppCredential, ApiError> {
        let (record, read) = self.store.read_app_credential(&app.name, kind).await?;
        if let Some(credential) = record.as_ref().filter(|c| self.credential_answers(renewal, c)) {
            self.count_renewal(app, kind, "coalesced");
            return Ok(credential.clone());
        }
        let forced = matches!(renewal, Renewal::Rejected { .. });
        if forced {
            if let Some(last) = record
                .as_ref()
                .filter(|c| c.forced && self.clock.now_ms() - c.fetched_at_ms < FORCED_REFRESH_SPACING_MS)
            {
                // WeChat would not refresh again so soon; the token it gave stands.
                self.count_invalidation(app, "too_soon");
                return Ok(last.clone());
            }
            self.spend_forced_refresh(app).await?;
        }
        self.count_renewal(app, kind, "upstream");
        let issued = match (kind, token) {
            (CredentialKind::AccessToken, _) => {
                self.wechat.stable_token(app, forced).await.map_err(|e| token_error(&e))
            }
            (CredentialKind::JsapiTicket, Some(token)) => {
                self.wechat.jsapi_ticket(app, token).await.map_err(|e| ApiError::from_wechat(&e))
            }
            (CredentialKind::JsapiTicket, None) => Err(ApiError::Internal),
        }?;
        if forced {
            self.count_invalidation(app, "refreshed");
            tracing::info!(app = %app.name, "the app's access token was force-refreshed");
        }
        let credential = AppCredential {
            value: issued.value,
            expires_at: self.clock.now_secs() + issued.expires_in,
            fetched_at_ms: self.clock.now_ms(),
            forced,
        };
        let ttl = Duration::from_secs(u64::try_from(issued.expires_in).unwrap_or(1).max(1));
        // Written only over the record read: never over a newer renewal, even if WeChat
        // answered after the lock expired.
        if self.store.replace_app_credential(&app.name, kind, &read, &credential, ttl).await? {
            return Ok(credential);
        }
        self.count_renewal(app, kind, "superseded");
        let (record, _) = self.store.read_app_credential(&app.name, kind).await?;
        Ok(record.unwrap_or(credential))
    }

    /// Counts one forced refresh in the app's day (across replicas); refuses past the allowance
    /// (and takes its count back, so the count stays the refreshes made).
    async fn spend_forced_refresh(&self, app: &App) -> Result<(), ApiError> {
        let day = (self.clock.now_secs() + WECHAT_DAY_OFFSET_SECS).div_euclid(86_400);
        let count = self.store.count_forced_refresh(&app.name, day).await?;
        if count <= i64::from(FORCED_REFRESHES_PER_DAY) {
            return Ok(());
        }
        if let Err(e) = self.store.uncount_forced_refresh(&app.name, day).await {
            tracing::warn!(error = %e, "a refused forced refresh could not be uncounted");
        }
        self.count_invalidation(app, "allowance_spent");
        tracing::warn!(app = %app.name, limit = FORCED_REFRESHES_PER_DAY, "the app's forced refreshes of the day are spent");
        Err(ApiError::ForceRefreshAllowanceSpent { limit: FORCED_REFRESHES_PER_DAY })
    }

    fn count_renewal(&self, app: &App, kind: CredentialKind, result: &str) {
        self.metrics.app_credential_renewals.with_label_values(&[&app.name, kind.as_str(), result]).inc();
    }

    fn count_invalidation(&self, app: &App, result: &str) {
        self.metrics.app_token_invalidations.with_label_values(&[&app.name, result]).inc();
    }

    /// For tests only: renewals of an app's credentials by kind and result so far.
    #[cfg(any(test, feature = "test-util"))]
    pub fn app_credential_renewals(&self, app: &str, kind: CredentialKind, result: &str) -> u64 {
        self.metrics.app_credential_renewals.with_label_values(&[app, kind.as_str(), result]).get()
    }
}

/// `stable_token`'s failures: its 40001 is a wrong appsecret ("获取 access_token 时 AppSecret
/// 错误", the global table's first half), never a dead token of ours: `APP_MISCONFIGURED`.
fn token_error(error: &crate::wechat::WechatError) -> ApiError {
    match ApiError::from_wechat(error) {
        ApiError::Wechat(upstream) if upstream.errcode == 40001 => ApiError::AppMisconfigured(upstream),
        other => other,
    }
}

/// 40001, 40014, 42001: the access token a ticket was fetched with is dead.
fn is_dead_token(errcode: i64) -> bool {
    errcodes::errcode(errcode).is_some_and(|row| row.outcome == Outcome::DeadAccessToken)
}

/// Whether two secrets are equal, compared by digest (no early exit on the secret's bytes).
fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// Takes a flight out of the map when its task ends in any way (as `refresh::FlightGuard`).
struct CredentialFlightGuard {
    tokens: Arc<Tokens>,
    key: String,
    id: u64,
}

impl Drop for CredentialFlightGuard {
    fn drop(&mut self) {
        let mut flights = self.tokens.app_flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights.get(&self.key).is_some_and(|flight| flight.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// A held credential lock, released when the work is done or, if the work ends otherwise,
/// from a spawned task when dropped (as `refresh::HeldLock`).
struct CredentialLock {
    store: Store,
    app: String,
    kind: CredentialKind,
    token: Option<LockToken>,
}

impl CredentialLock {
    async fn release(mut self) {
        if let Some(token) = self.token.take()
            && let Err(e) = self.store.unlock_app_credential(&self.app, self.kind, token).await
        {
            tracing::warn!(error = %e, "credential lock release failed; it expires by itself");
        }
    }
}

impl Drop for CredentialLock {
    fn drop(&mut self) {
        let (Some(token), Ok(runtime)) = (self.token.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (store, app, kind) = (self.store.clone(), std::mem::take(&mut self.app), self.kind);
        runtime.spawn(async move {
            if let Err(e) = store.unlock_app_credential(&app, kind, token).await {
                tracing::warn!(error = %e, "credential lock release failed; it expires by itself");
            }
        });
    }
}
