//! Mobile-app sign-ins (the native SDK's code, once, coalesced: docs/design.md §12.2) and
//! mini-program sign-ins (`jscode2session`).

use std::sync::Arc;

use super::Tokens;
use super::exchange::{CodeClaim, Route};
use crate::error::ApiError;
use crate::secrets::AuthCode;
use crate::store::{ExchangeOutcome, MiniSession};
use crate::wechat::App;

impl Tokens {
    /// Exchanges a mobile app's code (the native WeChat SDK's, which the app posted to its
    /// backend): no flow and no relay, since the code never travels in a URL, and so no replay
    /// window: the first exchange spends it, any later one is `CODE_USED` without a WeChat call.
    /// Concurrent exchanges of one code (a double submit, two replicas) claim one code record
    /// (`SET NX`): one WeChat call, whose result the others, having waited for it, share.
    pub(crate) async fn exchange_mobile(
        self: &Arc<Self>,
        app: &App,
        code: AuthCode,
        caller: &str,
    ) -> Result<ExchangeOutcome, ApiError> {
        let (outcome, _) = CodeClaim::new(self, app, &code, caller, Route::Mobile).settle().await?;
        Ok(outcome)
    }

    /// Signs a mini program user in: trades the `js_code` at `sns/jscode2session` (once, never
    /// retried: a `js_code` works once; a lost answer is `SIGN_IN_AGAIN`), seals the
    /// `session_key` under the user, replacing the last one (it never leaves wxauth), and
    /// returns the openid and the unionid (bound mini programs).
    pub(crate) async fn sign_in_mini(
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
}
