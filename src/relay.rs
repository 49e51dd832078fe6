//! The public relay on the callback domain: `GET /wechat/callback?code=..&state=<flow id>`.
//!
//! WeChat calls back here for every product; the relay sends the browser on, with the code and
//! the product's own `state`, to the return URL stored with the flow when the product started
//! it. That URL was allowlisted then; nothing in the callback's query can change where a code
//! goes. Unknown, expired or malformed callbacks get a small HTML page (400), never a redirect.
//! The first callback of a flow starts a grace window in which WeChat's double callback and a
//! user's reload still reach the product (the store cuts the flow's life atomically), at most
//! [`MAX_CALLBACKS`] callbacks in all.
//!
//! Every code relayed is bound to its flow for the code's life (docs/design.md §2 step 3): the first
//! flow to relay a code owns it, `ExchangeCode` accepts it only with that flow's id, and a code
//! that arrives with another flow's id (a leaked code replayed into an attacker's own sign-in)
//! is refused here. `HEAD` (link checkers, previews) never uses a flow up.
//!
//! **Browser-bound flows.** A flow id alone is no key: it shows in QR codes, authorize URLs
//! and callback URLs. A product that redirects the browser sends it to the flow's start URL
//! (`BuildAuthorizeUrlResponse.start_url`: this path with `?start=<token>`), which works once:
//! it moves the flow to a new, browser-bound id (the flow id and random characters), sets a
//! cookie in that browser whose value is a tag of the new id under the sealing key, and
//! redirects to WeChat with the new id as `state`. A callback with a browser-bound id is then
//! relayed only with that cookie: anyone else's is refused before the store is touched (no
//! budget used, no code bound). Every `state` is checked before the store: a flow id's relay
//! tag, or a browser-bound id's cookie; anything else is refused at once.
//!
//! **Callbacks without a code** (a user who refused) use none of the flow's callbacks and give
//! the product's `state` only to the flow's own browser: a browser-bound flow's browser is sent
//! to the return URL with `state`; for a flow never started through its start URL (a QR code
//! the product shows) there is no browser to check, so the browser is sent to the return URL
//! with neither `code` nor `state` (the product shows "sign-in not completed").

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use url::Url;

use crate::allowlist::{form_pairs, redirect_from_stored};
use crate::config::{Mode, Settings};
use crate::secrets::AuthCode;
use crate::store::{BOUND_FLOW_ID_LEN, CodeRelay, FLOW_ID_LEN, Flow, FlowUse, Relayed, Store};
use crate::telemetry::Metrics;
use crate::wechat::{App, AuthorizeParams, Scope};

/// The callback path, the only route of the public listener.
pub const CALLBACK_PATH: &str = "/wechat/callback";

/// Callbacks a flow relays in all: WeChat's double callback (a second code) and a reload or
/// two of the page holding the code; a 4th is refused (and binds no code).
pub const MAX_CALLBACKS: u64 = 3;

/// How long a relayed code is bound to its flow: the longest code life WeChat has (website
/// apps, 10 minutes), as the binding is written before the flow (and its app) is read.
const LONGEST_CODE_LIFE: Duration = Duration::from_secs(600);

/// The start URL's one parameter, first in the query: `?start=<token>`.
const START_PARAM: &str = "start=";

/// A browser-bound flow's cookie is named this and the first [`COOKIE_NAME_CHARS`] random
/// characters the bound id adds, so that flows started in one browser at once (two tabs) each
/// keep their own.
const COOKIE_PREFIX: &str = "wxauth_";
const COOKIE_NAME_CHARS: usize = 10;

/// What the relay needs.
#[derive(Clone, Debug)]
pub struct RelayState {
    /// The store holding flows.
    pub store: Store,
    /// The grace window after a flow's first callback.
    pub grace: Duration,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
    /// What the start URL needs to send a browser to WeChat.
    start: Arc<Start>,
}

/// What the start URL needs: the apps (a flow names its own), WeChat's authorize base, the
/// callback URL (the authorize URL's `redirect_uri`), and the cookie's path and `Secure`.
#[derive(Debug)]
struct Start {
    apps: BTreeMap<String, App>,
    open_base: Url,
    callback_url: String,
    cookie_path: String,
    secure: bool,
}

impl RelayState {
    /// The relay's state from the settings.
    pub fn new(store: Store, settings: &Settings, metrics: Arc<Metrics>) -> Self {
        let start = Start {
            apps: settings.apps.by_name.clone(),
            open_base: settings.wechat.open_base.clone(),
            callback_url: settings.server.callback_url.as_str().to_owned(),
            cookie_path: settings.server.callback_url.path().to_owned(),
            // Plain http is for the dev mode on loopback only (production requires https).
            secure: settings.mode != Mode::Development,
        };
        Self { store, grace: settings.flow.grace, metrics, start: Arc::new(start) }
    }
}

/// A flow's start URL: the callback URL with `?start=<token>` (the callback URL has no query).
pub fn start_url(callback_url: &Url, token: &str) -> String {
    [callback_url.as_str(), "?", START_PARAM, token].concat()
}

/// The public router: the callback (and the start URL, on the same path) and nothing else.
pub fn router(state: RelayState) -> Router {
    Router::new().route(CALLBACK_PATH, get(callback).head(head)).with_state(state)
}

/// `HEAD` of the callback (link checkers, chat previews, security scanners): answered without
/// touching the store, so it never uses up a flow nor binds a code.
async fn head() -> Response {
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    response
}

/// Why a callback (or a start) is not relayed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    /// A `state` (or start token) that is not one of wxauth's: refused before the store.
    BadState,
    /// A browser-bound flow's callback without that browser's cookie: refused before the store.
    NoBrowserCookie,
    UnknownFlow,
    /// A start URL visited again, or after the flow's first callback.
    StartReused,
    TooManyCallbacks,
    CodeOfAnotherFlow,
    StoreDown,
}

impl Refusal {
    /// The metric label of the refusal.
    fn outcome(&self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadState => "bad_state",
            Refusal::NoBrowserCookie => "no_browser_cookie",
            Refusal::UnknownFlow => "unknown_flow",
            Refusal::StartReused => "start_reused",
            Refusal::TooManyCallbacks => "too_many_callbacks",
            Refusal::CodeOfAnotherFlow => "code_of_another_flow",
            Refusal::StoreDown => "store_unavailable",
        }
    }
}

/// A callback's parameters, checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Callback {
    pub(crate) code: Option<String>,
    pub(crate) state: String,
}

#[tracing::instrument(name = "relay.callback", skip_all, fields(outcome))]
async fn callback(State(relay): State<RelayState>, request: Request) -> Response {
    let query = request.uri().query().unwrap_or("");
    if let Some(token) = query.strip_prefix(START_PARAM) {
        return start(&relay, token).await;
    }
    let result = relay_target(&relay, query, request.headers()).await;
    let outcome = match &result {
        Ok((_, outcome)) => outcome,
        Err(refusal) => refusal.outcome(),
    };
    // As `Display`: a `&str` goes through `Debug`, which the log formatter escapes char by
    // char (~700 instructions a callback, when the span is made: with a trace exporter); the
    // exported attribute is the same string either way.
    tracing::Span::current().record("outcome", tracing::field::display(outcome));
    tracing::debug!(outcome, "callback");
    relay.metrics.relay_callbacks.with_label_values(&[outcome]).inc();
    match result {
        Ok((location, _)) => redirect(&location, None),
        Err(refusal) => refusal_page(&refusal),
    }
}

/// The URL to send the browser to, and the outcome to count.
async fn relay_target(relay: &RelayState, query: &str, headers: &HeaderMap) -> Result<(String, &'static str), Refusal> {
    let callback = parse_query(query)?;
    let state = callback.state.as_str();
    // Judged before any store call: a made-up `state` or another browser costs no round trip.
    let bound = match state.len() {
        FLOW_ID_LEN if relay.store.is_flow_id(state) => false,
        BOUND_FLOW_ID_LEN => {
            let cookie = cookie(headers, &cookie_name(state)).ok_or(Refusal::NoBrowserCookie)?;
            if !relay.store.is_browser_of(state, cookie) {
                return Err(Refusal::NoBrowserCookie);
            }
            true
        }
        _ => return Err(Refusal::BadState),
    };
    let Some(code) = &callback.code else {
        return denied(relay, state, bound).await;
    };
    let code = AuthCode::new(code.clone());
    // The flow's app (and so its code life) is known only once the flow is read, and the
    // code is bound in the same round trip: bound for the longest code life WeChat has.
    let bound_for = crate::store::code_record_ttl(LONGEST_CODE_LIFE);
    let relayed = relay.store.relay(state, relay.grace, Some(&code), bound_for).await;
    let Relayed { flow, used, uses, code: binding } = relayed.map_err(store_down)?.ok_or(Refusal::UnknownFlow)?;
    if uses > MAX_CALLBACKS {
        tracing::warn!(uses, "callback refused: the flow has relayed its last callback");
        return Err(Refusal::TooManyCallbacks);
    }
    if binding == Some(CodeRelay::OtherFlow) {
        tracing::warn!(app = %flow.app, "callback refused: the code came through another flow first");
        return Err(Refusal::CodeOfAnotherFlow);
    }
    let location = redirect_from_stored(&flow.return_url, &[("code", code.secret()), ("state", &flow.caller_state)]);
    let outcome = if used == FlowUse::First { "relayed" } else { "relayed_again" };
    Ok((location.map_err(|_| Refusal::UnknownFlow)?, outcome))
}

/// A callback without a code (the user refused): the flow is read, not used (no budget, no
/// cut). The product's `state` goes only to a browser-bound flow's own browser; a flow never
/// started through its start URL has no browser to check, so its return URL gets neither
/// `code` nor `state`.
async fn denied(relay: &RelayState, state: &str, bound: bool) -> Result<(String, &'static str), Refusal> {
    let flow: Flow = relay.store.peek_flow(state).await.map_err(store_down)?.ok_or(Refusal::UnknownFlow)?;
    let (location, outcome) = if bound {
        (redirect_from_stored(&flow.return_url, &[("state", &flow.caller_state)]), "denied_relayed")
    } else {
        (redirect_from_stored(&flow.return_url, &[]), "denied_without_state")
    };
    Ok((location.map_err(|_| Refusal::UnknownFlow)?, outcome))
}

/// The start URL: moves the flow to a browser-bound id, sets that browser's cookie and sends
/// it to WeChat's authorize page for the new id.
async fn start(relay: &RelayState, token: &str) -> Response {
    let result = start_target(relay, token).await;
    let outcome = match &result {
        Ok(_) => "started",
        Err(refusal) => refusal.outcome(),
    };
    tracing::Span::current().record("outcome", tracing::field::display(outcome));
    tracing::debug!(outcome, "start");
    relay.metrics.relay_starts.with_label_values(&[outcome]).inc();
    match result {
        Ok((location, cookie)) => redirect(&location, Some(&cookie)),
        Err(refusal) => refusal_page(&refusal),
    }
}

/// The authorize URL of the flow's browser-bound id, and the `Set-Cookie` of that browser.
async fn start_target(relay: &RelayState, token: &str) -> Result<(String, String), Refusal> {
    let flow_id = relay.store.flow_of_start_token(token).ok_or(Refusal::BadState)?;
    let moved = relay.store.bind_to_browser(flow_id).await.map_err(store_down)?;
    let (bound, flow, left) = moved.ok_or(Refusal::StartReused)?;
    let start = &relay.start;
    // The app and scope were checked when the flow was made; a config changed since may
    // have dropped the app.
    let app = start.apps.get(&flow.app).ok_or(Refusal::UnknownFlow)?;
    let scope = Scope::parse(&flow.scope).ok_or(Refusal::UnknownFlow)?;
    let params =
        AuthorizeParams { app, redirect_uri: &start.callback_url, scope, state: &bound, force_popup: flow.force_popup };
    let location = crate::wechat::authorize_url(&start.open_base, &params);
    let cookie = set_cookie(&cookie_name(&bound), &relay.store.browser_tag(&bound), start, left);
    Ok((location, cookie))
}

/// The browser's cookie for a browser-bound id: only to the callback's path, never to scripts,
/// sent on WeChat's top-level redirect back (`Lax`), living as long as the flow.
fn set_cookie(name: &str, value: &str, start: &Start, left: Duration) -> String {
    let max_age = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    let secure = if start.secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}", start.cookie_path)
}

/// The cookie name of a browser-bound id (which has [`BOUND_FLOW_ID_LEN`] characters).
fn cookie_name(bound: &str) -> String {
    [COOKIE_PREFIX, &bound[FLOW_ID_LEN..FLOW_ID_LEN + COOKIE_NAME_CHARS]].concat()
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// The store logged the failure, with its operation, where it happened.
fn store_down(_: crate::store::StoreError) -> Refusal {
    Refusal::StoreDown
}

/// Parses `code` (optional: absent when the user refused) and `state` (the flow id, 1..128 of
/// `[A-Za-z0-9]` as WeChat allows). Repeated or oversized parameters are malformed.
pub(crate) fn parse_query(query: &str) -> Result<Callback, Refusal> {
    if query.len() > 4096 {
        return Err(Refusal::Malformed);
    }
    let (mut code, mut state) = (None, None);
    for (key, value) in form_pairs(query) {
        let slot = match key.as_ref() {
            "code" => &mut code,
            "state" => &mut state,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(Refusal::Malformed);
        }
    }
    let state = state.filter(|s| (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    let state = state.ok_or(Refusal::Malformed)?.into_owned();
    if let Some(c) = &code
        && (c.is_empty() || c.len() > 256 || !c.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(Refusal::Malformed);
    }
    Ok(Callback { code: code.map(Cow::into_owned), state })
}

fn redirect(location: &str, cookie: Option<&str>) -> Response {
    // `redirect_from_stored` percent-encodes everything, so a Location is always a valid header
    // value; the authorize URL and the cookie are made of URL-safe and alphanumeric parts.
    let Ok(value) = HeaderValue::from_str(location) else {
        return refusal_page(&Refusal::UnknownFlow);
    };
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, value);
    if let Some(cookie) = cookie {
        let Ok(cookie) = HeaderValue::from_str(cookie) else {
            return refusal_page(&Refusal::UnknownFlow);
        };
        headers.insert(header::SET_COOKIE, cookie);
    }
    no_store(headers);
    response
}

/// Headers of every relay answer. Deliberately no `X-Frame-Options` or CSP `frame-ancestors`:
/// an embedded QR code with `self_redirect` (wxLogin.js) loads the callback, so the relay's
/// redirect and its "start again" page, inside the QR code's iframe on the product's page.
/// Neither has anything to click, so framing offers no clickjacking target.
fn no_store(headers: &mut axum::http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// A small page telling the user to start again. Echoes nothing from the request.
fn refusal_page(refusal: &Refusal) -> Response {
    let (status, title, text) = match refusal {
        Refusal::StoreDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "登录暂时不可用 · Sign-in temporarily unavailable",
            "请稍后返回原页面重新登录。Please go back and try signing in again in a moment.",
        ),
        Refusal::NoBrowserCookie => (
            StatusCode::BAD_REQUEST,
            "请在发起登录的浏览器中完成 · Finish signing in where you started",
            "这个登录只能在发起它的浏览器中完成。请返回原页面重新发起微信登录。This sign-in can only finish in the browser that started it. Please go back to the page you came from and start the WeChat sign-in again.",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "登录链接已失效 · This sign-in link has expired",
            "请返回原页面重新发起微信登录。Please go back to the page you came from and start the WeChat sign-in again.",
        ),
    };
    let body = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         h1{{font-size:1.3rem}}</style></head><body><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut response = (status, Html(body)).into_response();
    no_store(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_with_code_and_state_parses() {
        let parsed = parse_query("code=0a1B2c&state=Flow123");
        assert_eq!(parsed, Ok(Callback { code: Some("0a1B2c".into()), state: "Flow123".into() }));
    }

    #[test]
    fn the_browser_cookie_is_secure_outside_the_dev_mode_and_lives_as_long_as_the_flow() {
        let start = |secure| Start {
            apps: BTreeMap::new(),
            open_base: Url::parse("https://open.weixin.qq.com").expect("url"),
            callback_url: "https://auth.example.com/wechat/callback".into(),
            cookie_path: "/wechat/callback".into(),
            secure,
        };
        let left = Duration::from_millis(59_001);
        assert_eq!(
            set_cookie("wxauth_abc", "00ff", &start(true), left),
            "wxauth_abc=00ff; Path=/wechat/callback; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie("wxauth_abc", "00ff", &start(false), left).contains("Secure"));
    }

    #[test]
    fn the_cookie_of_a_name_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; wxauth_x=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("wxauth_y=3"));
        assert_eq!(cookie(&headers, "wxauth_x"), Some("2"));
        assert_eq!(cookie(&headers, "wxauth_y"), Some("3"));
        assert_eq!(cookie(&headers, "wxauth_"), None);
    }

    #[test]
    fn a_denied_callback_has_state_only() {
        assert_eq!(parse_query("state=Flow123"), Ok(Callback { code: None, state: "Flow123".into() }));
    }

    #[test]
    fn malformed_callbacks_are_refused() {
        for query in [
            "",
            "code=abc",
            "state=",
            "state=a%2Fb",
            "state=abc&state=abd",
            "code=a&code=b&state=abc",
            "code=&state=abc",
            "code=a%0d%0aSet-Cookie:x&state=abc",
            &format!("state={}", "a".repeat(129)),
        ] {
            assert_eq!(parse_query(query), Err(Refusal::Malformed), "{query}");
        }
    }
}
