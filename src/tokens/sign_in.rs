//! What a sign-in leaves: the token record, which never downgrades a user (docs/design.md
//! §12.6), the client's claim on the user with what its own sign-ins were granted (§11.6), the
//! account under its unionid, and the count by app kind.

use crate::clock::secs;
use crate::consent;
use crate::error::ApiError;
use crate::store::{Account, ExchangeOutcome, Reach, TokenRecord};
use crate::wechat::{App, TokenGrant};

use super::{Tokens, grants_userinfo, split_scopes};

impl Tokens {
    /// Stores the token record of a new sign-in (web or mobile app) and returns what the
    /// caller is told, and whether the record now kept reads the profile. The caller is told a
    /// unionid only when its own sign-in reads the profile (`crate::consent`).
    pub(super) async fn keep_grant(
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

    /// A web sign-in's grant, its unionid taken out when that cannot be a person's: one the
    /// account index already holds for another openid of the same app. WeChat gives a person
    /// one openid per app, so such a unionid is a snapshot page's virtual one ("开发者在快照页内
    /// 所获取的头像、昵称、openId、unionId 均为虚拟账号数据", shared by many virtual openids),
    /// whose `is_snapshotuser` WeChat does not always set (issue 20). Returns the unionid taken
    /// out, for [`Tokens::note_shared_unionid`]. (The first openid of a virtual unionid cannot
    /// be told from a real user's; FindAccounts refuses the unionid once a second one came.)
    pub(super) async fn trusted_unionid(
        &self,
        app: &App,
        mut grant: TokenGrant,
    ) -> Result<(TokenGrant, Option<String>), ApiError> {
        let Some(unionid) = grant.unionid.clone().filter(|u| !u.is_empty()) else { return Ok((grant, None)) };
        let accounts = self.store.accounts(&unionid).await?;
        if !accounts.iter().any(|a| a.app == app.name && a.openid != grant.openid) {
            return Ok((grant, None));
        }
        tracing::warn!(app = %app.name, "a unionid already on another openid of this app: a virtual one, not linked");
        grant.unionid = None;
        Ok((grant, Some(unionid)))
    }

    /// Puts the account of a sign-in whose unionid was not trusted ([`Tokens::trusted_unionid`])
    /// in that unionid's index: the index itself then shows two openids of one app, the
    /// evidence FindAccounts refuses the unionid by, for as long as the index lives. Nothing is
    /// linked by it: no token record or answer carries the unionid.
    pub(super) async fn note_shared_unionid(
        &self,
        app: &App,
        openid: &str,
        shared: Option<&str>,
        now: i64,
    ) -> Result<(), ApiError> {
        let Some(unionid) = shared else { return Ok(()) };
        let account = Account {
            app: app.name.clone(),
            openid: openid.to_owned(),
            kind: app.kind.as_str().into(),
            last_sign_in: now,
        };
        Ok(self.store.put_account(unionid, &account, self.policy.refresh_life).await?)
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

    /// What every real web or mobile sign-in (never a snapshot user's) leaves besides its
    /// record: see [`Tokens::claimed`].
    pub(super) async fn signed_in(
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
    pub(super) async fn claimed(
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
            self.store.put_reach(&app.name, openid, caller, &Reach { since: now, scopes }, life).await
        };
        let (reach, account) = tokio::join!(reach, account);
        reach?;
        account?;
        self.metrics.sign_ins.with_label_values(&[app.kind.as_str()]).inc();
        Ok(())
    }
}
