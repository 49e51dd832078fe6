//! Phone numbers kept at a client's request (GetPhoneNumber's `keep`) and the accounts found by
//! phone (FindAccounts with `pure_phone_number`): docs/design.md §2.5 and §12.9. The number is
//! personal data: it is in no log, label, error or `Debug`.

use std::collections::BTreeSet;

use super::Tokens;
use super::users::UsersRule;
use crate::error::ApiError;
use crate::store::{Account, KeptPhone};
use crate::wechat::{App, PhoneInfo};

impl Tokens {
    /// Whether a number may be kept with `openid` for `who`, asked before WeChat spends the
    /// button's code: the user has a mini program session (WeChat's answer names no user, so
    /// the caller's word must at least name one wxauth signed in), and a `users = "own"`
    /// client holds a claim on the user. Else `TOKEN_NOT_FOUND`, as for an unknown user.
    pub(crate) async fn may_keep_phone(&self, app: &App, openid: &str, who: UsersRule<'_>) -> Result<(), ApiError> {
        let session = self.store.get_session(&app.name, openid);
        let claim = async {
            match who {
                UsersRule::Own(client) => Ok(self.store.get_reach(&app.name, openid, client).await?.is_some()),
                UsersRule::Any => Ok::<_, ApiError>(true),
            }
        };
        let (session, claimed) = tokio::join!(session, claim);
        if session?.is_none() || !claimed? {
            return Err(ApiError::TokenNotFound);
        }
        Ok(())
    }

    /// Keeps the number WeChat gave with the user, for `client`: sealed with the user, and the
    /// account indexed under the number's keyed hash, both for `token.refresh_life` from now.
    pub(crate) async fn keep_phone(
        &self,
        app: &App,
        openid: &str,
        client: &str,
        info: &PhoneInfo,
    ) -> Result<(), ApiError> {
        let now = self.clock.now_secs();
        let kept = KeptPhone {
            country_code: info.country_code.clone(),
            pure_phone_number: info.pure_phone_number.clone(),
            kept_at: now,
        };
        let account = Account {
            app: app.name.clone(),
            openid: openid.to_owned(),
            kind: app.kind.as_str().into(),
            last_sign_in: now,
        };
        self.store.put_phone(&account, client, &kept, self.policy.refresh_life).await?;
        tracing::info!(app = %app.name, "phone number kept with a mini program user");
        Ok(())
    }

    /// The accounts a number was kept with, in `apps`, that `who` may see (`users = "own"`: kept
    /// by this client, which still reaches the user), newest sign-in first. An entry whose user
    /// has no session any more, or whose kept number is gone or another, is dropped here.
    pub(crate) async fn accounts_by_phone(
        &self,
        number: (&str, &str),
        apps: &BTreeSet<String>,
        who: UsersRule<'_>,
    ) -> Result<Vec<Account>, ApiError> {
        let entries = self.store.phone_entries(number.0, number.1).await?;
        let mut seen = BTreeSet::new();
        let visible = entries.into_iter().filter(|e| apps.contains(&e.account.app)).filter(|e| match who {
            UsersRule::Own(client) => e.client == client,
            UsersRule::Any => seen.insert((e.account.app.clone(), e.account.openid.clone())),
        });
        let checks = visible.map(|entry| async move {
            let (app, openid) = (&entry.account.app, &entry.account.openid);
            let claim = async {
                let UsersRule::Own(client) = who else { return Ok(true) };
                Ok::<_, ApiError>(self.store.get_reach(app, openid, client).await?.is_some())
            };
            let (session, kept, claimed) =
                tokio::join!(self.store.get_session(app, openid), self.store.get_phone(app, openid), claim);
            let (Some(session), Some(_)) = (session?, kept?.filter(|k| k.number() == number)) else {
                // The user is gone, or the number is no longer theirs: a stale entry.
                if let Err(e) = self.store.drop_phone_entries(number, app, openid, Some(&entry.client)).await {
                    tracing::warn!(error = %e, "stale phone entry left in the index; the next look drops it");
                }
                return Ok(None);
            };
            let found = Account { last_sign_in: session.signed_in_at, ..entry.account };
            Ok::<_, ApiError>(claimed?.then_some(found))
        });
        let mut found = Vec::new();
        for checked in futures::future::join_all(checks).await {
            found.extend(checked?);
        }
        found.sort_by(|a, b| b.last_sign_in.cmp(&a.last_sign_in).then_with(|| a.app.cmp(&b.app)));
        Ok(found)
    }

    /// Removes the number kept with the user: `client`'s index entry only (a `users = "own"`
    /// client forgetting a user others still reach), or (`None`) the number and every entry.
    pub(super) async fn forget_phone(&self, app: &App, openid: &str, client: Option<&str>) -> Result<(), ApiError> {
        let Some(kept) = self.store.get_phone(&app.name, openid).await? else { return Ok(()) };
        if client.is_none() {
            self.store.delete_phone(&app.name, openid).await?;
        }
        // After the number: a failure here leaves entries the next look-up drops (no number).
        self.store.drop_phone_entries(kept.number(), &app.name, openid, client).await?;
        Ok(())
    }
}
