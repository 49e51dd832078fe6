//! Exchanging a code with WeChat once however many exchanges of it run: a flow's code, only
//! through the flow that relayed it and idempotently per `(flow, code)` (docs/design.md §12.1),
//! and the code claim it shares with a mobile app's exchange (§12.2, `Tokens::exchange_mobile`):
//! [`CodeClaim`].

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use super::{Backoff, Tokens, joined, split_scopes};
use crate::clock::millis;
use crate::error::{ApiError, Upstream};
use crate::secrets::AuthCode;
use crate::store::{CodeRecord, CodeState, ExchangeOutcome, ReadCode, code_record_ttl};
use crate::wechat::{App, TokenGrant, WechatError};

/// How long an exchange's claim on a code holds: past it (its replica died mid-exchange, or the
/// store failed under it), another exchange of the same code may take the claim over; for a
/// flow's code, WeChat's 40163 then means the first one spent the code, answered as
/// `SIGN_IN_AGAIN`.
const CLAIM_TTL: Duration = Duration::from_secs(30);

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
        CodeClaim::new(self, app, &code, caller, Route::Flow(flow_id)).settle().await
    }
}

/// Whose code a [`CodeClaim`] exchanges, which decides the record it claims and what it makes of
/// a record it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route<'a> {
    /// A web sign-in's code, relayed through this flow: the relay wrote its record (`Relayed`),
    /// and every repeat of the same `(flow, code)` gets the recorded result (§12.1).
    Flow(&'a str),
    /// A mobile app's code (the native SDK's, posted by the app's backend): no flow, no relay;
    /// the first exchange creates the record (`SET NX`), a later one is `CODE_USED` (§12.2).
    Mobile,
}

/// What one look at a code's record found.
enum Look {
    /// No claim, or a lapsed one (`took_over`): take it over the record read.
    Free { read: ReadCode, now_ms: i64, took_over: bool },
    /// This exchange created the record, and with it the claim (a mobile app's code).
    Created,
    /// The result an earlier (or concurrent) exchange of the code recorded, for this call too.
    Recorded(ExchangeOutcome),
    /// Another exchange holds a live claim: wait for its result.
    Held,
    /// Look again at once: another exchange took the claim first, or no record could be read.
    Again,
}

/// One exchange of a code, from its first look at the code's record to the record it leaves
/// (docs/design.md §12.1, §12.2). [`CodeClaim::settle`] claims the record, or waits for the
/// exchange that holds it and answers that one's result; the exchange holding the claim runs
/// detached ([`CodeClaim::exchange`]: one WeChat call) and leaves the result (`Done`), `Lost`
/// (the code may be spent, the sign-in cannot finish) or the claim released (WeChat refused the
/// code). Records are compare-and-set over the exact bytes read, so however many exchanges run
/// on however many replicas, one holds the claim.
pub(super) struct CodeClaim<'a> {
    tokens: &'a Arc<Tokens>,
    app: &'a App,
    code: &'a AuthCode,
    caller: &'a str,
    route: Route<'a>,
    /// The code record's life: the code's own ([`code_record_ttl`]).
    life: Duration,
    /// Pauses between looks at a claim another exchange holds.
    pause: Backoff,
    /// Whether this call waited for another exchange's claim: a mobile app's duplicate shares
    /// that exchange's result only then.
    waited: bool,
    /// Looks that found no record a mobile app's `SET NX` had found (refused after four).
    unreadable: u32,
}

impl<'a> CodeClaim<'a> {
    pub(super) fn new(
        tokens: &'a Arc<Tokens>,
        app: &'a App,
        code: &'a AuthCode,
        caller: &'a str,
        route: Route<'a>,
    ) -> Self {
        let life = code_record_ttl(app.kind.code_life());
        Self { tokens, app, code, caller, route, life, pause: Backoff::default(), waited: false, unreadable: 0 }
    }

    /// The exchange's answer, and whether this call made the exchange (false: another's
    /// recorded result). Loops: looks at the record, takes the claim when it is free (or
    /// lapsed), waits while another exchange holds it (`Backoff`), looks again.
    pub(super) async fn settle(mut self) -> Result<(ExchangeOutcome, bool), ApiError> {
        loop {
            match self.look().await? {
                Look::Created => return self.run_detached(false).await.map(|outcome| (outcome, true)),
                Look::Free { read, now_ms, took_over } => {
                    let claim = self.record(CodeState::Pending(now_ms));
                    if self.tokens.store.swap_code(self.code, &read, &claim, self.life).await? {
                        return self.run_detached(took_over).await.map(|outcome| (outcome, true));
                    }
                    // Another exchange claimed it first: look again, to wait for its result.
                }
                Look::Recorded(outcome) => return Ok((outcome, false)),
                Look::Held => {
                    self.waited = true;
                    tokio::time::sleep(self.pause.next()).await;
                }
                Look::Again => {}
            }
        }
    }

    /// One look: a mobile app's exchange first tries to create the record (`SET NX`, its claim);
    /// then the record is read, checked to be this route's, and judged.
    async fn look(&mut self) -> Result<Look, ApiError> {
        let (read, now_ms) = match self.route {
            Route::Flow(flow_id) => {
                let read = self.read_relayed(flow_id).await?;
                (read, self.tokens.clock.now_ms())
            }
            Route::Mobile => {
                let now_ms = self.tokens.clock.now_ms();
                let claim = self.record(CodeState::Pending(now_ms));
                if self.tokens.store.claim_code(self.code, &claim, self.life).await? {
                    return Ok(Look::Created);
                }
                let Some(read) = self.read_mobile().await? else { return Ok(Look::Again) };
                (read, now_ms)
            }
        };
        self.judge(read, now_ms)
    }

    /// The relay's record of a flow's code; `CODE_NOT_FROM_FLOW` unless the flow is the
    /// caller's in this app and the code came through it.
    async fn read_relayed(&self, flow_id: &str) -> Result<ReadCode, ApiError> {
        let (app, caller) = (&self.app.name, self.caller);
        if !self.tokens.store.flow_is_of(flow_id, caller, app) {
            tracing::warn!(app = %app, caller, "exchange refused: the flow is not this client's in this app");
            return Err(ApiError::CodeNotFromFlow);
        }
        let Some(read) = self.tokens.store.get_code(self.code).await? else {
            tracing::warn!(app = %app, caller, "exchange refused: the relay never relayed this code");
            return Err(ApiError::CodeNotFromFlow);
        };
        if read.record.flow_id != flow_id {
            tracing::warn!(app = %app, caller, "exchange refused: the code came through another flow");
            return Err(ApiError::CodeNotFromFlow);
        }
        Ok(read)
    }

    /// The record of a mobile app's code that another exchange created; `None`: look again.
    async fn read_mobile(&mut self) -> Result<Option<ReadCode>, ApiError> {
        let Some(read) = self.tokens.store.get_code(self.code).await? else {
            // Deleted since the claim failed (a refused exchange), or a record that does
            // not open: try again a few times, then refuse rather than spin.
            self.unreadable += 1;
            if self.unreadable > 3 {
                return Err(ApiError::CodeUsed(None));
            }
            return Ok(None);
        };
        if !read.record.flow_id.is_empty() {
            tracing::warn!(app = %self.app.name, caller = self.caller, "mobile exchange refused: a web sign-in's code");
            return Err(ApiError::CodeUsed(None));
        }
        Ok(Some(read))
    }

    /// What the record read says this exchange does.
    fn judge(&self, read: ReadCode, now_ms: i64) -> Result<Look, ApiError> {
        let took_over = match (&read.record.state, self.route) {
            (CodeState::Lost, _) => {
                let lost = Upstream { errcode: 0, errmsg: "the first exchange's answer was lost".into() };
                return Err(ApiError::SignInAgain(lost));
            }
            (CodeState::Pending(since), _) if now_ms - since < millis(CLAIM_TTL) => return Ok(Look::Held),
            // A lapsed claim: an earlier exchange of this code stopped half-way (its replica
            // died, or the store failed under it), maybe after WeChat had it.
            (CodeState::Pending(_), _) => true,
            (CodeState::Relayed, Route::Flow(_)) => false,
            (CodeState::Done(outcome), Route::Flow(_)) => {
                tracing::info!(app = %self.app.name, "code exchanged before through this flow; returning the recorded result");
                return Ok(Look::Recorded(outcome.clone()));
            }
            (state, Route::Mobile) => return self.mobile_code_used(state),
        };
        Ok(Look::Free { read, now_ms, took_over })
    }

    /// A mobile app's code that no exchange holds any more: spent.
    fn mobile_code_used(&self, state: &CodeState) -> Result<Look, ApiError> {
        match state {
            // A concurrent duplicate of the caller's own exchange (a double submit, two
            // replicas) shares its result; another client's exchange of the same code is
            // refused as a later exchange of a spent code is: a code serves one client.
            CodeState::Done(outcome) if self.waited && outcome.exchanged_by.as_deref() == Some(self.caller) => {
                Ok(Look::Recorded(outcome.clone()))
            }
            CodeState::Done(_) if self.waited => {
                let (app, caller) = (&self.app.name, self.caller);
                tracing::warn!(app = %app, caller, "mobile exchange refused: another client exchanged this code");
                self.tokens.count_consent_refusal(caller, "code_of_another_client");
                Err(ApiError::CodeUsed(None))
            }
            _ => {
                tracing::info!(app = %self.app.name, "mobile code exchanged before: CODE_USED");
                Err(ApiError::CodeUsed(None))
            }
        }
    }

    /// The code's record in `state`, for this route.
    fn record(&self, state: CodeState) -> CodeRecord {
        let flow_id = match self.route {
            Route::Flow(flow_id) => flow_id.to_owned(),
            Route::Mobile => String::new(),
        };
        CodeRecord { flow_id, state }
    }

    /// Names the spawned task in the log line of one that ends without an answer.
    fn operation(&self) -> &'static str {
        match self.route {
            Route::Flow(_) => "code exchange",
            Route::Mobile => "mobile code exchange",
        }
    }

    /// Runs the claimed exchange detached: once sent, it finishes and records its result even
    /// if this caller's deadline passes, so the caller's retry finds it.
    async fn run_detached(&self, took_over: bool) -> Result<ExchangeOutcome, ApiError> {
        let (tokens, app, code, caller) =
            (Arc::clone(self.tokens), self.app.clone(), self.code.clone(), self.caller.to_owned());
        let flow_id = match self.route {
            Route::Flow(flow_id) => Some(flow_id.to_owned()),
            Route::Mobile => None,
        };
        let exchange = async move {
            let route = flow_id.as_deref().map_or(Route::Mobile, Route::Flow);
            CodeClaim::new(&tokens, &app, &code, &caller, route).exchange(took_over).await
        };
        joined(self.operation(), tokio::spawn(exchange.in_current_span()).await)
    }

    /// The claimed exchange: one WeChat call, then the record the claim leaves. `took_over`:
    /// the claim was an earlier exchange's, which lapsed.
    async fn exchange(&self, took_over: bool) -> Result<ExchangeOutcome, ApiError> {
        let tokens = self.tokens;
        let grant = match tokens.wechat.exchange_code(self.app, self.code).await {
            Ok(grant) => grant,
            Err(e) => return Err(self.refused(&e, took_over).await),
        };
        let now = tokens.clock.now_secs();
        // A snapshot page is a web page: only a flow's code is taken as a snapshot user's.
        if grant.is_snapshotuser == 1 && matches!(self.route, Route::Flow(_)) {
            return self.snapshot_user(grant).await;
        }
        // `is_snapshotuser` is not always set (issue 20): a unionid already on another openid
        // of this app is a snapshot page's virtual one, never returned, stored or linked.
        let kept = match tokens.trusted_unionid(self.app, grant).await {
            Ok((grant, shared)) => {
                tokens.keep_grant(self.app, grant, now, self.caller).await.map(|kept| (kept, shared))
            }
            Err(e) => Err(e),
        };
        let ((outcome, kept_reads_profile), shared) = match kept {
            Ok(kept) => kept,
            Err(e) => {
                // A result must never promise a token that was not stored; and WeChat has
                // spent the code, so a repeat must not send it again.
                self.spent().await;
                return Err(e);
            }
        };
        let done = self.record(CodeState::Done(outcome.clone()));
        // Different keys, so different Cluster slots: concurrent commands, not a pipeline.
        let (signed_in, finished, noted) = tokio::join!(
            tokens.signed_in(self.app, &outcome, kept_reads_profile, self.caller, now),
            tokens.store.put_code(self.code, &done, self.life),
            tokens.note_shared_unionid(self.app, &outcome.openid, shared.as_deref(), now),
        );
        signed_in?;
        finished?;
        noted?;
        Ok(outcome)
    }

    /// The answer to WeChat's failure `e`, once the claim records what it means.
    async fn refused(&self, e: &WechatError, took_over: bool) -> ApiError {
        if e.may_have_acted() {
            // Never retried, here or by the caller: the code may be spent (a retry would
            // meet 40163).
            self.spent().await;
            tracing::warn!(app = %self.app.name, "{} sent, answer lost: the user must sign in again", self.operation());
            return ApiError::from_wechat(e).spent_code();
        }
        // (A mobile app's code: WeChat's 40163 is answered as it is, as for any later exchange.)
        if took_over && e.errcode() == Some(40163) && matches!(self.route, Route::Flow(_)) {
            // The exchange whose claim lapsed did reach WeChat: its answer was lost.
            self.spent().await;
            tracing::warn!(app = %self.app.name, "an earlier exchange of this code spent it; the user must sign in again");
            return ApiError::from_wechat(e).spent_code_of_lapsed_claim();
        }
        self.release().await;
        ApiError::from_wechat(e)
    }

    /// The code is (or may be) spent at WeChat and this sign-in cannot finish: recorded `Lost`,
    /// so every repeat is told to start again without asking WeChat (which could only answer
    /// 40163).
    async fn spent(&self) {
        let lost = self.record(CodeState::Lost);
        if let Err(e) = self.tokens.store.put_code(self.code, &lost, self.life).await {
            tracing::warn!(error = %e, "lost exchange not recorded; its claim lapses by itself");
        }
    }

    /// WeChat refused the code (40029, ...): the failure is not remembered as a result, so a
    /// retry hears WeChat's own answer again. A flow's code goes back to `Relayed` (a retry
    /// through the same flow may try again); a mobile app's claim is deleted.
    async fn release(&self) {
        let store = &self.tokens.store;
        let released = match self.route {
            Route::Flow(_) => store.put_code(self.code, &self.record(CodeState::Relayed), self.life).await,
            Route::Mobile => store.delete_code(self.code).await,
        };
        if let Err(e) = released {
            tracing::warn!(error = %e, "exchange claim not released; it lapses by itself");
        }
    }

    /// A snapshot-page virtual user (`is_snapshotuser: 1`: a `snsapi_userinfo` page opened from
    /// Moments or a chat, not tapped through): not a real identity, so nothing is stored — no
    /// token record, no client claim — and the product gets the flag, the virtual openid to
    /// show a limited page with, no unionid (never an identity to link by) and no profile
    /// (WeChat answers such users 48001). It must ask the user to open the full page to sign in.
    async fn snapshot_user(&self, grant: TokenGrant) -> Result<ExchangeOutcome, ApiError> {
        tracing::info!(app = %self.app.name, "snapshot-page virtual user signed in: nothing stored");
        let outcome = ExchangeOutcome {
            openid: grant.openid,
            unionid: None,
            scopes: split_scopes(&grant.scope),
            is_snapshot_user: true,
            access_expires_at: 0,
            refresh_expires_at: 0,
            exchanged_by: None,
        };
        let done = self.record(CodeState::Done(outcome.clone()));
        self.tokens.store.put_code(self.code, &done, self.life).await?;
        Ok(outcome)
    }
}
