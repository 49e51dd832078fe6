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
//! Every code relayed is bound to its flow for the code's life (DESIGN.md §2 step 3): the first
//! flow to relay a code owns it, `ExchangeCode` accepts it only with that flow's id, and a code
//! that arrives with another flow's id (a leaked code replayed into an attacker's own sign-in)
//! is refused here. `HEAD` (link checkers, previews) never uses a flow up.

use std::borrow::Cow;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use crate::allowlist::{form_pairs, redirect_from_stored};
use crate::config::Settings;
use crate::secrets::AuthCode;
use crate::store::{CodeRelay, FlowUse, Relayed, Store};
use crate::telemetry::Metrics;

/// The callback path, the only route of the public listener.
pub const CALLBACK_PATH: &str = "/wechat/callback";

/// Callbacks a flow relays in all: WeChat's double callback (a second code) and a reload or
/// two of the page holding the code; a 4th is refused.
pub const MAX_CALLBACKS: u64 = 3;

/// How long a relayed code is bound to its flow: the longest code life WeChat has (website
/// apps, 10 minutes), as the binding is written before the flow (and its app) is read.
const LONGEST_CODE_LIFE: std::time::Duration = std::time::Duration::from_secs(600);

/// What the relay needs.
#[derive(Clone, Debug)]
pub struct RelayState {
    /// The store holding flows.
    pub store: Store,
    /// The grace window after a flow's first callback.
    pub grace: std::time::Duration,
    /// Where outcomes are counted.
    pub metrics: std::sync::Arc<Metrics>,
}

impl RelayState {
    /// The relay's state from the settings.
    pub fn new(store: Store, settings: &Settings, metrics: std::sync::Arc<Metrics>) -> Self {
        Self { store, grace: settings.grace, metrics }
    }
}

/// The public router: the callback and nothing else.
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

/// Why a callback is not relayed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    UnknownFlow,
    TooManyCallbacks,
    CodeOfAnotherFlow,
    StoreDown,
}

/// A callback's parameters, checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Callback {
    pub(crate) code: Option<String>,
    pub(crate) state: String,
}

#[tracing::instrument(name = "relay.callback", skip_all, fields(outcome))]
async fn callback(State(relay): State<RelayState>, RawQuery(query): RawQuery) -> Response {
    let result = relay_target(&relay, query.as_deref().unwrap_or("")).await;
    let outcome = match &result {
        Ok((_, FlowUse::First, true)) => "relayed",
        Ok((_, FlowUse::First, false)) => "denied_relayed",
        Ok((_, FlowUse::Repeat, _)) => "relayed_again",
        Err(Refusal::Malformed) => "malformed",
        Err(Refusal::UnknownFlow) => "unknown_flow",
        Err(Refusal::TooManyCallbacks) => "too_many_callbacks",
        Err(Refusal::CodeOfAnotherFlow) => "code_of_another_flow",
        Err(Refusal::StoreDown) => "store_unavailable",
    };
    // As `Display`: a `&str` goes through `Debug`, which the log formatter escapes char by
    // char (~700 instructions a callback, when the span is made: with a trace exporter); the
    // exported attribute is the same string either way.
    tracing::Span::current().record("outcome", tracing::field::display(outcome));
    tracing::debug!(outcome, "callback");
    relay.metrics.relay_callbacks.with_label_values(&[outcome]).inc();
    match result {
        Ok((location, _, _)) => redirect(&location),
        Err(refusal) => refusal_page(&refusal),
    }
}

/// The URL to send the browser to, how the flow was used, and whether a code was relayed.
async fn relay_target(relay: &RelayState, query: &str) -> Result<(String, FlowUse, bool), Refusal> {
    let callback = parse_query(query)?;
    let code = callback.code.as_ref().map(|code| AuthCode::new(code.clone()));
    // The flow's app (and so its code life) is known only once the flow is read, and the
    // code is bound in the same round trip: bound for the longest code life WeChat has.
    let bound_for = crate::store::code_record_ttl(LONGEST_CODE_LIFE);
    let relayed = relay.store.relay(&callback.state, relay.grace, code.as_ref(), bound_for).await;
    let Relayed { flow, used, uses, code: bound } = relayed.map_err(store_down)?.ok_or(Refusal::UnknownFlow)?;
    if uses > MAX_CALLBACKS {
        tracing::warn!(uses, "callback refused: the flow has relayed its last callback");
        return Err(Refusal::TooManyCallbacks);
    }
    if bound == Some(CodeRelay::OtherFlow) {
        tracing::warn!(app = %flow.app, "callback refused: the code came through another flow first");
        return Err(Refusal::CodeOfAnotherFlow);
    }
    let location = match &callback.code {
        Some(code) => redirect_from_stored(&flow.return_url, &[("code", code), ("state", &flow.caller_state)]),
        None => redirect_from_stored(&flow.return_url, &[("state", &flow.caller_state)]),
    };
    Ok((location.map_err(|_| Refusal::UnknownFlow)?, used, callback.code.is_some()))
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

fn redirect(location: &str) -> Response {
    // `redirect_from_stored` percent-encodes everything, so a Location is always a valid header value.
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::FOUND.into_response();
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, value);
            no_store(headers);
            response
        }
        Err(_) => refusal_page(&Refusal::UnknownFlow),
    }
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
