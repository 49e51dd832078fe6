//! Reads of a user (`GetUserInfo`, `ValidateToken`, the stored record) and who may make them
//! (docs/design.md §11.6), `ForgetUser` under the refresh lock (§12.5), and the accounts of a
//! unionid (`FindAccounts`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::refresh::Need;
use super::{Backoff, Tokens, grants_userinfo};
use crate::clock::secs;
use crate::consent::Grant;
use crate::error::ApiError;
use crate::store::{Account, CachedProfile, Reach, TokenRecord};
use crate::wechat::{App, AppKind, Lang, Profile, WechatError};

/// WeChat codes that mean "this access token is not (or no longer) valid".
const DEAD_ACCESS_TOKEN: [i64; 3] = [42001, 40001, 40014];

/// What a per-user read found says about whether the user is known to the app (the
/// `not_reached` count of [`Tokens::reachable`]): `None` when it cannot tell.
pub(crate) trait Found {
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

/// Which users a client's requests reach (config `clients.<name>.users`). (Not
/// [`crate::store::Reach`], the claim one client holds on one user.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UsersRule<'a> {
    /// Any user of the app (`users = "app"`).
    Any,
    /// Only a user for whom this client exchanged a code (`users = "own"`); any other answers
    /// `TOKEN_NOT_FOUND`, exactly as an unknown user does.
    Own(&'a str),
}

impl Tokens {
    /// The stored record, as is (no refresh).
    pub(crate) async fn stored(&self, app: &App, openid: &str) -> Result<TokenRecord, ApiError> {
        self.store.get_token(&app.name, openid).await?.ok_or(ApiError::TokenNotFound)
    }

    /// `read` (a store read of this user's, without side effects), answered only if `who` may
    /// reach the user, with what its own sign-ins granted it (`None`: a `users = "app"` client,
    /// which reads what the token holds). The claim is looked up at the same time as the read,
    /// so the check costs no round trip of its own.
    pub(crate) async fn reachable<T: Found>(
        &self,
        app: &App,
        openid: &str,
        who: UsersRule<'_>,
        read: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<(Option<Grant>, T), ApiError> {
        let UsersRule::Own(client) = who else { return Ok((None, read.await?)) };
        let (claim, value) = tokio::join!(self.store.get_reach(&app.name, openid, client), read);
        Ok((Some(self.reached(app, openid, client, claim?, &value).await?), value?))
    }

    /// `client`'s grant on the user from its `claim`, read beside `value` (the request's own
    /// read); no claim: [`Self::unreached`].
    async fn reached<T: Found>(
        &self,
        app: &App,
        openid: &str,
        client: &str,
        claim: Option<Reach>,
        value: &Result<T, ApiError>,
    ) -> Result<Grant, ApiError> {
        let Some(claim) = claim else {
            let known = match value {
                Ok(value) => value.found(),
                Err(_) => Some(false),
            };
            // Boxed: a refusal's reads stay out of every reachable read's future (moved whole
            // at each await of the hot path; issue 19).
            return Err(Box::pin(self.unreached(app, openid, client, known)).await);
        };
        Ok(Grant::of(&claim, app.kind))
    }

    /// The cached profile, answered only if `who` may reach the user ([`Self::reachable`]); for a
    /// `users = "own"` client the claim and the profile are one store command (`MGET`), so the
    /// check costs GetUserInfo nothing beyond the read it makes anyway.
    async fn cached_profile(
        &self,
        app: &App,
        openid: &str,
        lang: Lang,
        who: UsersRule<'_>,
    ) -> Result<(Option<Grant>, Option<CachedProfile>), ApiError> {
        let UsersRule::Own(client) = who else {
            return Ok((None, self.store.get_profile(&app.name, openid, lang).await?));
        };
        let (claim, profile) = self.store.get_reach_and_profile(&app.name, openid, client, lang).await?;
        let profile = Ok(profile);
        Ok((Some(self.reached(app, openid, client, claim, &profile).await?), profile?))
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

    /// `SCOPE_NOT_GRANTED` for a client whose own sign-ins did not grant what it asks
    /// (another product's consent is not its own): it must ask the user for consent itself.
    pub(super) fn scope_not_granted(&self, who: UsersRule<'_>) -> ApiError {
        if let UsersRule::Own(client) = who {
            self.count_consent_refusal(client, "scope_not_granted");
        }
        ApiError::ScopeNotGranted(None)
    }

    /// The user's profile: from the profile cache while it is younger than the configured age
    /// (unless `fresh`), else from WeChat, and then cached. WeChat allows 50,000 sns calls a
    /// minute per app, so a product that shows the profile on every page needs the cache.
    pub(crate) async fn userinfo(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        lang: Lang,
        fresh: bool,
        who: UsersRule<'_>,
    ) -> Result<CachedProfile, ApiError> {
        let max_age = self.policy.profile_cache;
        let use_cache = !fresh && !max_age.is_zero();
        let who = if use_cache {
            let (grant, hit) = self.cached_profile(app, openid, lang, who).await?;
            if grant.is_some_and(|g| !g.reads_profile()) {
                return Err(self.scope_not_granted(who));
            }
            if let Some(hit) = hit.filter(|hit| self.clock.now_secs() < hit.fetched_at + secs(max_age)) {
                self.metrics.profile_cache.with_label_values(&["hit"]).inc();
                return Ok(hit);
            }
            UsersRule::Any // checked with the cache read
        } else {
            who
        };
        self.metrics.profile_cache.with_label_values(&[if use_cache { "miss" } else { "skipped" }]).inc();
        // Boxed: the WeChat call, the refresh it may need and the cache write make a future of
        // ~3.4 KB that a cache hit would otherwise carry (and copy at each await) too.
        Box::pin(self.userinfo_fetched(app, openid, lang, who)).await
    }

    /// [`Self::userinfo`] past the cache: the profile from WeChat, then cached.
    async fn userinfo_fetched(
        self: &Arc<Self>,
        app: &App,
        openid: &str,
        lang: Lang,
        who: UsersRule<'_>,
    ) -> Result<CachedProfile, ApiError> {
        let max_age = self.policy.profile_cache;
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
        who: UsersRule<'_>,
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

    /// Asks WeChat whether the stored access token is valid: `Ok(None)` when it is,
    /// `Ok(Some(errcode))` when WeChat rejects the token; with the record and what `who`'s own
    /// sign-ins granted it ([`Tokens::reachable`]).
    pub(crate) async fn validate(
        &self,
        app: &App,
        openid: &str,
        who: UsersRule<'_>,
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

    /// Deletes the user's token record, session, kept phone number, cached profiles and
    /// account-index entries (unionid and phone), for every client (a `users = "app"` client's
    /// ForgetUser, a pushed revoke or cancellation), holding the user's refresh lock so
    /// a refresh under way (here or on another replica) finishes first. (A refresh that
    /// outlived its lock could not write the record back either: it writes only over the
    /// record it read.) Returns whether a record existed.
    pub(crate) async fn forget(&self, app: &App, openid: &str) -> Result<bool, ApiError> {
        Ok(self.forget_unless_reached(app, openid, &[]).await?.unwrap_or(false))
    }

    /// A `users = "own"` client's ForgetUser: forgets the user for `client` (its claim), and
    /// the user's records too when no other of `clients` (every client of the app) holds a
    /// claim any more. Another client's users answer as unknown ones do (`false`), and whether
    /// others still reach the user never shows in the answer. Returns whether `client` reached
    /// the user and a record existed.
    pub(crate) async fn forget_for(
        &self,
        app: &App,
        openid: &str,
        client: &str,
        clients: &[&str],
    ) -> Result<bool, ApiError> {
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
        if self.forget_unless_reached(app, openid, &others).await?.is_none() {
            // Others still reach the user: the number stays theirs, but this client's entry in
            // its index goes (it finds the user by phone no more, even after a new sign-in).
            self.forget_phone(app, openid, Some(client)).await?;
        }
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
    async fn forget_holding_lock(&self, app: &App, openid: &str) -> Result<(bool, BTreeSet<String>), ApiError> {
        let (token, session) =
            tokio::join!(self.store.get_token(&app.name, openid), self.store.get_session(&app.name, openid));
        let (token, session) = (token?, session?);
        let existed = token.is_some() || session.is_some();
        let unionids = token.and_then(|t| t.unionid).into_iter().chain(session.and_then(|s| s.unionid)).collect();
        // Before the session: a failure leaves it, and a retry finds the user to forget again.
        self.forget_phone(app, openid, None).await?;
        self.store.delete_user(&app.name, openid).await?;
        tracing::info!(app = %app.name, "user forgotten: token record, session, kept number and cached profiles deleted");
        Ok((existed, unionids))
    }

    /// The accounts recorded under `unionid` in `apps` that `who` may reach and may see the
    /// unionid of (`users = "own"`: its own sign-in of the account read the profile, or was a
    /// mini program's), newest sign-in first. An account whose token record (mini programs: session) is gone (expired,
    /// forgotten, a dead refresh token) is dropped from the index here, lazily, and not listed.
    pub(crate) async fn accounts(
        &self,
        unionid: &str,
        apps: &BTreeSet<String>,
        who: UsersRule<'_>,
    ) -> Result<Vec<Account>, ApiError> {
        let recorded = self.store.accounts(unionid).await?;
        // Two openids of one app under one unionid: WeChat gives a person one openid per app,
        // so this unionid is a snapshot page's virtual one (issue 20). It links no one.
        let shared = recorded
            .iter()
            .enumerate()
            .any(|(i, a)| recorded[..i].iter().any(|b| b.app == a.app && b.openid != a.openid));
        if shared {
            tracing::warn!("FindAccounts of a unionid on two openids of one app: a virtual one, nothing listed");
            return Ok(Vec::new());
        }
        let checks = recorded.into_iter().filter(|a| apps.contains(&a.app)).map(|account| async move {
            let alive = async {
                Ok::<_, ApiError>(if account.kind == AppKind::MiniProgram.as_str() {
                    self.store.get_session(&account.app, &account.openid).await?.is_some()
                } else {
                    self.store.get_token(&account.app, &account.openid).await?.is_some()
                })
            };
            let reached = async {
                let UsersRule::Own(client) = who else { return Ok::<_, ApiError>(true) };
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
}

fn is_dead_access_token(e: &WechatError) -> bool {
    e.errcode().is_some_and(|c| DEAD_ACCESS_TOKEN.contains(&c))
}
