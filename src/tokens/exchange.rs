//! Exchanging a flow's code: only through the flow that relayed it, idempotently per `(flow,
//! code)`, one WeChat call however many exchanges of it run (the code claim, docs/design.md
//! §12.1).

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use super::{Backoff, Tokens, joined, split_scopes};
use crate::clock::millis;
use crate::error::{ApiError, Upstream};
use crate::secrets::AuthCode;
use crate::store::{CodeRecord, CodeState, ExchangeOutcome, ReadCode, code_record_ttl};
use crate::wechat::{App, TokenGrant};

/// How long an exchange's claim on a code holds: past it (its replica died mid-exchange, or the
/// store failed under it), another exchange of the same `(flow, code)` may take the claim over;
/// WeChat's 40163 then means the first one spent the code, answered as `SIGN_IN_AGAIN`.
pub(super) const CLAIM_TTL: Duration = Duration::from_secs(30);

impl Tokens {
    /// Exchanges `code`, which must have been relayed through `flow_id`, a flow `caller`
    /// created in `app`; or returns the result of an earlier exchange of the same `(flow,
    /// code)` within the code's life. Anything else is refused before WeChat is called
    /// (`CODE_NOT_FROM_FLOW`): a code the relay never saw, one relayed through another flow,
    /// another client's flow, a code of another app. Concurrent exchanges of one code (a double
    /// submit, two replicas) make one WeChat call; the others wait for its result. The flag is
    /// true when this call made the exchange (false: the recorded result of an earlier one).
    pub(crate) async fn exchange(
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
}
