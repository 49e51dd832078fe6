//! Mobile-app sign-ins (the native SDK's code, once, coalesced: docs/design.md §12.2) and
//! mini-program sign-ins (`jscode2session`).

use std::sync::Arc;

use tracing::Instrument as _;

use super::exchange::CLAIM_TTL;
use super::{Backoff, Tokens, joined};
use crate::clock::millis;
use crate::error::{ApiError, Upstream};
use crate::secrets::AuthCode;
use crate::store::{CodeRecord, CodeState, ExchangeOutcome, MiniSession, code_record_ttl};
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
