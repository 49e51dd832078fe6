//! An app's own credentials as WeChat issues them (issue 21; the facts and their sources are
//! docs/wechat.md's rows on them): `cgi-bin/token` (each call a new token, the one before it
//! alive 5 more minutes), `cgi-bin/stable_token` (POST JSON; normal mode: the same token while
//! it has more than 5 minutes, a new one in its last 5 while the old one lives on;
//! `force_refresh`: a new token at once, the old one dead, at most 20 a day and not within 30 s
//! of the last, else the token stands), the two kept apart ("与getAccessToken获取的调用凭证完全
//! 隔离，互不影响"), and `cgi-bin/ticket/getticket?type=jsapi` with any live token of the app.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Simulator;
use super::api::error_response;
use super::config::{SimApp, SimAppKind};
use super::control::{Answer, Endpoint};
use super::params::Params;
use super::state::{Core, errcode};

/// A token's or ticket's life (`expires_in` 7200).
const LIFE: Duration = Duration::from_secs(7200);
/// Normal mode renews in a token's last 5 minutes; `cgi-bin/token`'s old token lives 5 more.
const OVERLAP: Duration = Duration::from_secs(300);
/// Forced refreshes a day per app ("该模式限制每天20次").
const FORCED_REFRESHES_PER_DAY: u32 = 20;
/// A forced refresh this soon after the last one does not refresh.
const FORCE_SPACING: Duration = Duration::from_secs(30);
const DAY: u64 = 24 * 3600;

/// The errcodes of this room beyond the sns ones (`state::errcode`).
const INVALID_CREDENTIAL: i64 = 40001;
const DAILY_LIMIT: i64 = 45009;

/// Every live credential of every app, and the forced-refresh counts.
#[derive(Default)]
pub(super) struct AppTokens {
    inner: Mutex<Issued>,
    forced: AtomicU64,
}

#[derive(Default)]
struct Issued {
    /// Token or ticket → (appid, what it is, when it dies on the simulator's clock).
    live: HashMap<String, (String, Kind, Duration)>,
    /// Per appid: the current stable token, and the current `cgi-bin/token` one.
    current: HashMap<(String, Kind), String>,
    /// Per appid: the day and its forced refreshes, and the last forced refresh.
    forced: HashMap<String, (u64, u32, Duration)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Stable,
    Classic,
    Ticket,
}

impl AppTokens {
    fn lock(&self) -> MutexGuard<'_, Issued> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Issued {
    fn issue(&mut self, appid: &str, kind: Kind, now: Duration) -> String {
        let value =
            format!("{}_{}", kind_prefix(kind), super::state::random_session_key().replace(['+', '/', '='], ""));
        self.live.insert(value.clone(), (appid.to_owned(), kind, now + LIFE));
        self.current.insert((appid.to_owned(), kind), value.clone());
        value
    }

    /// The current credential of `kind` with its death, if alive at `now`.
    fn current(&self, appid: &str, kind: Kind, now: Duration) -> Option<(String, Duration)> {
        let value = self.current.get(&(appid.to_owned(), kind))?;
        let (_, _, dies) = self.live.get(value).filter(|(_, _, dies)| *dies > now)?;
        Some((value.clone(), *dies))
    }

    fn cut_life(&mut self, value: &str, to: Duration) {
        if let Some((_, _, dies)) = self.live.get_mut(value) {
            *dies = (*dies).min(to);
        }
    }
}

fn kind_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Stable => "stable",
        Kind::Classic => "token",
        Kind::Ticket => "ticket",
    }
}

/// The routes of `api.weixin.qq.com/cgi-bin` the service calls.
pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/cgi-bin/token", get(classic_token))
        .route("/cgi-bin/stable_token", post(stable_token))
        .route("/cgi-bin/ticket/getticket", get(getticket))
}

const ANSWER: Answer = Answer::Json(error_response);

/// Counts the call, applies an injected fault, else answers `rule`'s result.
pub(super) async fn answer(sim: &Simulator, endpoint: Endpoint, rule: impl FnOnce() -> Result<Value, i64>) -> Response {
    let after_work = match sim.enter(endpoint, ANSWER).await {
        Ok(after_work) => after_work,
        Err(faulted) => return faulted,
    };
    let response = match rule() {
        Ok(body) => Json(body).into_response(),
        Err(code) => error_response(code),
    };
    match after_work {
        Some(fault) => sim.fault_answer(fault, ANSWER).await.unwrap_or(response),
        None => response,
    }
}

/// The app `appid` names, if it has server APIs (an official account or a mini program) and
/// `secret` is its: 41002, 41004, 40013, then `wrong_secret`.
fn credentialed_app<'a>(
    core: &'a Core,
    appid: Option<&str>,
    secret: Option<&str>,
    wrong_secret: i64,
) -> Result<&'a SimApp, i64> {
    let appid = appid.ok_or(errcode::MISSING_APPID)?;
    let secret = secret.ok_or(errcode::MISSING_SECRET)?;
    let app = core
        .app(appid)
        .filter(|a| matches!(a.kind, SimAppKind::OfficialAccount | SimAppKind::MiniProgram))
        .ok_or(errcode::INVALID_APPID)?;
    if app.secret != secret {
        return Err(wrong_secret);
    }
    Ok(app)
}

/// `GET /cgi-bin/token?grant_type=client_credential&appid=..&secret=..`: a new token each call;
/// the one before it lives 5 more minutes. A wrong secret: 40001 (the global table's "获取
/// access_token 时 AppSecret 错误").
async fn classic_token(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.unwrap_or_default().as_bytes());
    answer(&sim, Endpoint::Token, || {
        if p.get("grant_type") != Some("client_credential") {
            return Err(errcode::INVALID_GRANT_TYPE);
        }
        let app = credentialed_app(sim.core(), p.get("appid"), p.get("secret"), INVALID_CREDENTIAL)?;
        let now = sim.core().now();
        let mut issued = sim.app_tokens().lock();
        if let Some((old, _)) = issued.current(&app.appid, Kind::Classic, now) {
            issued.cut_life(&old, now + OVERLAP);
        }
        let token = issued.issue(&app.appid, Kind::Classic, now);
        Ok(json!({ "access_token": token, "expires_in": LIFE.as_secs() }))
    })
    .await
}

/// `POST /cgi-bin/stable_token` with `{grant_type, appid, secret, force_refresh?}` (JSON only).
async fn stable_token(State(sim): State<Simulator>, body: Bytes) -> Response {
    answer(&sim, Endpoint::StableToken, || {
        let request: Value = serde_json::from_slice(&body).map_err(|_| errcode::INVALID_GRANT_TYPE)?;
        let text = |key: &str| request.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
        if text("grant_type") != Some("client_credential") {
            return Err(errcode::INVALID_GRANT_TYPE);
        }
        let app = credentialed_app(sim.core(), text("appid"), text("secret"), errcode::INVALID_SECRET)?;
        let force = request.get("force_refresh").and_then(Value::as_bool).unwrap_or(false);
        let now = sim.core().now();
        let (token, dies) = if force { sim.force_stable(&app.appid, now)? } else { sim.normal_stable(&app.appid, now) };
        Ok(json!({ "access_token": token, "expires_in": dies.saturating_sub(now).as_secs() }))
    })
    .await
}

/// `GET /cgi-bin/ticket/getticket?access_token=..&type=jsapi`: the app's ticket, the same one
/// whatever token asks while it has more than 5 minutes, else a new one of 7200 s (the same
/// ticket across tokens is reported, wangxiao/romantic#3; the renewal in its last 5 minutes is
/// this simulator's guess, as normal mode's: docs/wechat.md). 41001 without a token, 40001 for
/// a token that is not (or no longer) alive.
async fn getticket(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let p = Params::parse(raw.unwrap_or_default().as_bytes());
    answer(&sim, Endpoint::GetTicket, || {
        let token = p.require("access_token", errcode::MISSING_ACCESS_TOKEN)?;
        let appid = sim.token_app(token).ok_or(INVALID_CREDENTIAL)?;
        if p.get("type") != Some("jsapi") {
            return Err(40097);
        }
        let now = sim.core().now();
        let mut issued = sim.app_tokens().lock();
        let (ticket, dies) = match issued.current(&appid, Kind::Ticket, now) {
            Some((ticket, dies)) if dies > now + OVERLAP => (ticket, dies),
            _ => (issued.issue(&appid, Kind::Ticket, now), now + LIFE),
        };
        let expires_in = dies.saturating_sub(now).as_secs();
        Ok(json!({ "errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": expires_in }))
    })
    .await
}

impl Simulator {
    /// Every `jsapi_ticket` of `appid` alive now: what the stand-in `jweixin` checks a
    /// signature against (a ticket renewed in its predecessor's last minutes leaves both alive).
    pub(super) fn live_tickets(&self, appid: &str) -> Vec<String> {
        let now = self.core().now();
        let issued = self.app_tokens().lock();
        let live =
            issued.live.iter().filter(|(_, (app, kind, dies))| app == appid && *kind == Kind::Ticket && *dies > now);
        live.map(|(ticket, _)| ticket.clone()).collect()
    }

    /// Normal mode: the current stable token while it has more than 5 minutes; else a new one
    /// (the old one lives to its end).
    fn normal_stable(&self, appid: &str, now: Duration) -> (String, Duration) {
        let mut issued = self.app_tokens().lock();
        match issued.current(appid, Kind::Stable, now) {
            Some((token, dies)) if dies > now + OVERLAP => (token, dies),
            _ => (issued.issue(appid, Kind::Stable, now), now + LIFE),
        }
    }

    /// Forced mode: within 30 s of the last forced refresh the token stands; past the day's
    /// 20, 45009; else a new token and the old one dead.
    fn force_stable(&self, appid: &str, now: Duration) -> Result<(String, Duration), i64> {
        let mut issued = self.app_tokens().lock();
        let today = now.as_secs() / DAY;
        let (day, count, last) = issued.forced.get(appid).copied().unwrap_or((today, 0, Duration::ZERO));
        let count = if day == today { count } else { 0 };
        if count > 0
            && now < last + FORCE_SPACING
            && let Some(current) = issued.current(appid, Kind::Stable, now)
        {
            return Ok(current);
        }
        if count >= FORCED_REFRESHES_PER_DAY {
            return Err(DAILY_LIMIT);
        }
        issued.forced.insert(appid.to_owned(), (today, count + 1, now));
        if let Some((old, _)) = issued.current(appid, Kind::Stable, now) {
            issued.cut_life(&old, now);
        }
        self.app_tokens().forced.fetch_add(1, Ordering::Relaxed);
        Ok((issued.issue(appid, Kind::Stable, now), now + LIFE))
    }

    /// The appid of a live access token (stable or `cgi-bin/token`), for the APIs it opens.
    pub(super) fn token_app(&self, token: &str) -> Option<String> {
        let now = self.core().now();
        let issued = self.app_tokens().lock();
        let (appid, kind, dies) = issued.live.get(token)?;
        (*kind != Kind::Ticket && *dies > now).then(|| appid.clone())
    }

    /// Forced `stable_token` refreshes made so far (every app), to assert that concurrent
    /// reports of one stale token cost at most one.
    pub fn forced_token_refreshes(&self) -> u64 {
        self.app_tokens().forced.load(Ordering::Relaxed)
    }

    /// Whether `token` is a live access token of `appid` right now (stable or `cgi-bin/token`).
    pub fn token_alive(&self, appid: &str, token: &str) -> bool {
        self.token_app(token).is_some_and(|a| a == appid)
    }
}
