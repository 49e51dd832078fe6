//! What tests steer: per-endpoint call counters, injected faults (errcodes, HTTP statuses, bad
//! JSON, latency), the double-callback switch, and the `/sim/...` HTTP API that exposes them
//! (with the clock) to out-of-process users such as benchmarks and browser tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Simulator;
use super::config::SimAppKind;
use super::params::Params;
use super::state::Api;

/// A simulated WeChat endpoint, for counting calls and injecting faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /connect/oauth2/authorize` (official-account authorize page).
    Authorize,
    /// `GET /connect/qrconnect` (website QR login page).
    QrConnect,
    /// `GET /sns/oauth2/access_token` (code exchange).
    AccessToken,
    /// `GET /sns/oauth2/refresh_token`.
    RefreshToken,
    /// `GET /sns/userinfo`.
    UserInfo,
    /// `GET /sns/auth`.
    Auth,
    /// `GET /sns/jscode2session` (mini programs).
    JsCode2Session,
    /// `GET /cgi-bin/token` (an app's own access token, the classic way).
    Token,
    /// `POST /cgi-bin/stable_token` (an app's own access token, normal or forced).
    StableToken,
    /// `GET /cgi-bin/ticket/getticket` (an app's `jsapi_ticket`).
    GetTicket,
    /// `POST /wxa/business/getuserphonenumber` (a mini program's phone-number button).
    PhoneNumber,
}

impl Endpoint {
    /// Every endpoint, in the order `/sim/calls` lists them.
    pub const ALL: [Endpoint; 11] = [
        Self::Authorize,
        Self::QrConnect,
        Self::AccessToken,
        Self::RefreshToken,
        Self::UserInfo,
        Self::Auth,
        Self::JsCode2Session,
        Self::Token,
        Self::StableToken,
        Self::GetTicket,
        Self::PhoneNumber,
    ];

    /// The endpoint's name in the `/sim` control API (`access_token`, `userinfo`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::QrConnect => "qrconnect",
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
            Self::UserInfo => "userinfo",
            Self::Auth => "auth",
            Self::JsCode2Session => "jscode2session",
            Self::Token => "token",
            Self::StableToken => "stable_token",
            Self::GetTicket => "getticket",
            Self::PhoneNumber => "getuserphonenumber",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The quotas this endpoint counts against; the pages have none, nor the app-credential
    /// endpoints (their limits are `app_token.rs`'s own).
    pub(super) fn quota(self) -> Option<Api> {
        match self {
            Self::AccessToken => Some(Api::AccessToken),
            Self::RefreshToken => Some(Api::RefreshToken),
            Self::UserInfo => Some(Api::UserInfo),
            Self::Auth => Some(Api::Auth),
            Self::JsCode2Session => Some(Api::JsCode2Session),
            Self::Authorize
            | Self::QrConnect
            | Self::Token
            | Self::StableToken
            | Self::GetTicket
            | Self::PhoneNumber => None,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A failure WeChat (or the network to it) can show, injected so tests can see the service
/// cope with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 200 with `{"errcode": n, "errmsg": ...}` (an error page on the authorize pages).
    Errcode(i64),
    /// That HTTP status with a short text body.
    HttpStatus(u16),
    /// HTTP 200 with a truncated body.
    BadJson,
    /// Waits this long, then answers normally.
    Delay(Duration),
    /// Does the endpoint's work — a code exchange spends the code — and then answers as the
    /// inner fault instead: WeChat acted, its answer was lost (a timeout, a 5xx, -1 after the
    /// request was received). cordova-plugin-wechat #522 shows a code that answered 40029 and
    /// then 40163: the first attempt had spent it.
    AfterWork(Box<Fault>),
}

/// How an endpoint answers, so a fault answers in the same shape: each carries how that
/// endpoint shows an errcode (WeChat's error JSON, its error page), so the faults need neither.
#[derive(Debug, Clone, Copy)]
pub(super) enum Answer {
    /// An HTML page (the authorize pages).
    Html(fn(i64) -> Response),
    /// JSON (the `sns` endpoints).
    Json(fn(i64) -> Response),
}

/// Counters, fault queues and switches; cheap to touch from every request.
#[derive(Default)]
pub(super) struct Controls {
    calls: [AtomicU64; Endpoint::ALL.len()],
    faults: Mutex<[VecDeque<(Fault, u32)>; Endpoint::ALL.len()]>,
    double_callback: AtomicBool,
    /// Deny leaves the user on WeChat's page, no callback (today's WeChat); off: Deny calls
    /// back with `state` only (older docs). Read through [`Controls::deny_stays`].
    deny_redirects: AtomicBool,
}

impl Controls {
    pub(super) fn calls(&self, endpoint: Endpoint) -> u64 {
        self.calls[endpoint.index()].load(Ordering::Relaxed)
    }

    /// Queues `fault` for the next `times` calls, after any fault already queued.
    pub(super) fn inject(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        if times > 0 {
            self.queues()[endpoint.index()].push_back((fault, times));
        }
    }

    pub(super) fn clear_faults(&self) {
        self.queues().iter_mut().for_each(VecDeque::clear);
    }

    pub(super) fn set_double_callback(&self, on: bool) {
        self.double_callback.store(on, Ordering::Relaxed);
    }

    pub(super) fn set_deny_stays(&self, on: bool) {
        // Stored inverted so that the default (false) is today's WeChat: no callback.
        self.deny_redirects.store(!on, Ordering::Relaxed);
    }

    pub(super) fn deny_stays(&self) -> bool {
        !self.deny_redirects.load(Ordering::Relaxed)
    }

    pub(super) fn double_callback(&self) -> bool {
        self.double_callback.load(Ordering::Relaxed)
    }

    fn queues(&self) -> MutexGuard<'_, [VecDeque<(Fault, u32)>; Endpoint::ALL.len()]> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a call and takes the fault queued for it, if any.
    fn take(&self, endpoint: Endpoint) -> Option<Fault> {
        self.calls[endpoint.index()].fetch_add(1, Ordering::Relaxed);
        let mut queues = self.queues();
        let queue = &mut queues[endpoint.index()];
        let (fault, left) = queue.front_mut()?;
        let fault = fault.clone();
        *left -= 1;
        if *left == 0 {
            queue.pop_front();
        }
        Some(fault)
    }
}

impl Simulator {
    /// Every endpoint starts here: the call is counted, then an injected fault answers in its
    /// place (`Some`), or, after any delay, the endpoint goes on (`None`).
    ///
    /// `Ok(Some(fault))`: an [`Fault::AfterWork`]; the endpoint does its work and then answers
    /// through [`Simulator::fault_answer`].
    pub(super) async fn enter(&self, endpoint: Endpoint, answer: Answer) -> Result<Option<Fault>, Response> {
        let Some(fault) = self.controls().take(endpoint) else { return Ok(None) };
        tracing::debug!(endpoint = endpoint.name(), ?fault, "injected fault");
        match fault {
            Fault::AfterWork(inner) => Ok(Some(*inner)),
            fault => self.fault_answer(fault, answer).await.map_or(Ok(None), Err),
        }
    }

    /// How `fault` answers in the endpoint's shape; `None` for a delay, after it (the endpoint
    /// then answers normally).
    pub(super) async fn fault_answer(&self, fault: Fault, answer: Answer) -> Option<Response> {
        Some(match (fault, answer) {
            (Fault::Delay(by), _) => {
                tokio::time::sleep(by).await;
                return None;
            }
            (Fault::AfterWork(inner), answer) => return Box::pin(self.fault_answer(*inner, answer)).await,
            (Fault::Errcode(code), Answer::Json(errcode) | Answer::Html(errcode)) => errcode(code),
            (Fault::HttpStatus(status), _) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, format!("simulated HTTP {}", status.as_u16())).into_response()
            }
            (Fault::BadJson, Answer::Json(_)) => (
                [(header::CONTENT_TYPE, "application/json; encoding=utf-8")],
                r#"{"access_token":"ACCESS_TOKEN","expires_in":72"#,
            )
                .into_response(),
            (Fault::BadJson, Answer::Html(_)) => (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>",
            )
                .into_response(),
        })
    }
}

/// The `/sim/...` control API.
pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/sim/clock/advance", post(advance))
        .route("/sim/faults", post(inject).delete(clear))
        .route("/sim/calls", get(calls))
        .route("/sim/double_callback", post(double_callback))
        .route("/sim/quota", post(quota))
        .route("/sim/mobile_code", post(mobile_code))
        .route("/sim/js_code", post(js_code))
        .route("/sim/push_target", post(super::push::control_target))
        .route("/sim/push", post(super::push::control_push))
}

/// A control request the simulator cannot act on: 400 with `{"error": ...}`.
fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `POST /sim/clock/advance?secs=N`
async fn advance(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    match params.get("secs").and_then(|s| s.parse::<u64>().ok()) {
        Some(secs) => {
            sim.advance(Duration::from_secs(secs));
            Json(json!({ "advanced_secs": secs })).into_response()
        }
        None => bad_request("secs must be a whole number of seconds"),
    }
}

/// The JSON body of `POST /sim/faults`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    endpoint: String,
    fault: FaultSpec,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

/// `{"errcode":45011}`, `{"http_status":502}`, `"bad_json"`, `{"delay_ms":200}` or
/// `{"after_work": <one of those>}`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum FaultSpec {
    Errcode(i64),
    HttpStatus(u16),
    BadJson,
    DelayMs(u64),
    /// `{"after_work": {"http_status": 502}}`: the work is done, then that fault answers.
    AfterWork(Box<FaultSpec>),
}

impl FaultSpec {
    fn into_fault(self) -> Result<Fault, &'static str> {
        Ok(match self {
            Self::AfterWork(inner) => Fault::AfterWork(Box::new(inner.into_fault()?)),
            Self::Errcode(code) => Fault::Errcode(code),
            Self::HttpStatus(status) => {
                StatusCode::from_u16(status).map_err(|_| "http_status must be 100..=999")?;
                Fault::HttpStatus(status)
            }
            Self::BadJson => Fault::BadJson,
            Self::DelayMs(ms) => Fault::Delay(Duration::from_millis(ms)),
        })
    }
}

/// `POST /sim/faults`
async fn inject(State(sim): State<Simulator>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(_) => return bad_request(r#"expected {"endpoint": "...", "fault": ..., "times": N}"#),
    };
    let Some(endpoint) = Endpoint::parse(&request.endpoint) else {
        return bad_request("unknown endpoint");
    };
    match request.fault.into_fault() {
        Ok(fault) => {
            sim.inject(endpoint, fault, request.times);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(message) => bad_request(message),
    }
}

/// `DELETE /sim/faults`
async fn clear(State(sim): State<Simulator>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

/// `GET /sim/calls`: `{"authorize": n, "qrconnect": n, "access_token": n, ...}`
async fn calls(State(sim): State<Simulator>) -> Json<Value> {
    let counts: Map<String, Value> =
        Endpoint::ALL.into_iter().map(|e| (e.name().to_owned(), json!(sim.calls(e)))).collect();
    Json(Value::Object(counts))
}

/// `POST /sim/double_callback?on=true|false`
async fn double_callback(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    match params.get("on").and_then(|s| s.parse::<bool>().ok()) {
        Some(on) => {
            sim.set_double_callback(on);
            Json(json!({ "double_callback": on })).into_response()
        }
        None => bad_request("on must be true or false"),
    }
}

/// `POST /sim/quota?per_minute=N`: every sns endpoint's calls a minute per app (0: lift every
/// quota). With `endpoint=<name>` (`access_token`, `refresh_token`, `userinfo`, `auth`,
/// `jscode2session`): that endpoint's `per_minute` and/or `per_day` (0: no limit).
async fn quota(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    let number = |name: &str| params.get(name).map(|s| s.parse::<u32>().ok());
    let (per_minute, per_day) = (number("per_minute"), number("per_day"));
    if per_minute == Some(None) || per_day == Some(None) || (per_minute.is_none() && per_day.is_none()) {
        return bad_request("per_minute or per_day must be a whole number (0: no limit)");
    }
    let (per_minute, per_day) = (per_minute.flatten(), per_day.flatten());
    let Some(name) = params.get("endpoint") else {
        if per_day.is_some() {
            return bad_request("per_day needs an endpoint");
        }
        let per_minute = per_minute.unwrap_or(0);
        sim.set_quota((per_minute > 0).then_some(per_minute));
        return Json(json!({ "per_minute": per_minute })).into_response();
    };
    let Some(endpoint) = Endpoint::parse(name).filter(|e| e.quota().is_some()) else {
        return bad_request("unknown sns endpoint");
    };
    if let Some(n) = per_minute {
        sim.set_minute_quota(endpoint, (n > 0).then_some(n));
    }
    if let Some(n) = per_day {
        sim.set_daily_quota(endpoint, (n > 0).then_some(n));
    }
    Json(json!({ "endpoint": endpoint.name(), "per_minute": per_minute, "per_day": per_day })).into_response()
}

/// `POST /sim/mobile_code?appid=..&user=..`: the code the WeChat SDK hands a mobile app when
/// `user` consents (`snsapi_userinfo`): `{"code": ...}`. There is no page for it.
async fn mobile_code(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    let (Some(appid), Some(user)) = (params.get("appid"), params.get("user")) else {
        return bad_request("appid and user are required");
    };
    let code = match sim.core().app(appid) {
        Some(app) if app.kind == SimAppKind::MobileApp => sim.authorize(appid, user, "snsapi_userinfo"),
        _ => return bad_request("not a mobile app's appid"),
    };
    match code {
        Ok(code) => Json(json!({ "code": code })).into_response(),
        Err(e) => bad_request(&e.to_string()),
    }
}

/// `POST /sim/js_code?appid=..&user=..`: the `js_code` `wx.login()` gives `user` in a mini
/// program: `{"js_code": ...}`.
async fn js_code(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    let (Some(appid), Some(user)) = (params.get("appid"), params.get("user")) else {
        return bad_request("appid and user are required");
    };
    match sim.js_code(appid, user) {
        Ok(js_code) => Json(json!({ "js_code": js_code })).into_response(),
        Err(e) => bad_request(&e.to_string()),
    }
}
