//! The OpenID Provider face (issue 22, docs/oidc.md): "Sign in with WeChat" for any OpenID
//! Connect relying party (Grafana, oauth2-proxy, Keycloak as a broker, Spring Security), on the
//! public listener beside the relay, over the same flows.
//!
//! WeChat is not an OpenID Provider (no ID token, no discovery: docs/wechat.md); wxauth is one
//! in front of it. The sign-in is the relay's own flow (docs/design.md §2): `/oidc/authorize`
//! checks the request (RFC 6749 §4.1, OpenID Connect Core §3.1.2), picks the WeChat app by the
//! browser (the official account inside WeChat's browser, the website app's QR code elsewhere,
//! WeCom's browser included), starts a flow whose return URL is wxauth's own `/oidc/callback`,
//! and sends the browser to the flow's start URL, which binds the flow to the browser. On the
//! callback wxauth exchanges WeChat's code itself (`Tokens::exchange`: bound to the flow, once),
//! so no relying party ever sees a WeChat code, and sends the browser to the client's
//! registered redirect URI with a code of its own: single use, at most `oidc.code_ttl` (60 s),
//! bound to the client, the redirect URI and the PKCE challenge. `/oidc/token` trades it for an
//! ID token (RS256, or ES256 for clients registered so) and an opaque access token sealed in
//! the store; a second use of a code revokes the access token the first one issued (RFC 6749
//! §4.1.2).
//!
//! The rooms: `discovery` (the discovery document and the JWKS), `authorize` (the
//! authorization request and the callback), `token` (the token endpoint and the ID token),
//! `userinfo` (the userinfo and end-session endpoints), `keys` (the signing keys), `records`
//! (what the store keeps), `fuzz` (the parsers over fixed clients, for the fuzz targets); this file holds the state, the router and the answers they share.

mod authorize;
mod discovery;
pub(crate) mod fuzz;
mod keys;
mod records;
mod token;
mod userinfo;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

pub use self::keys::{Alg, SigningKey};
#[cfg(feature = "dev")]
pub use self::keys::{DEV_ES256_KEY_ID, DEV_ES256_KEY_PEM, DEV_SIGNING_KEY_ID, DEV_SIGNING_KEY_PEM};
use crate::clock::Clock;
use crate::config::{OidcSettings, Settings};
use crate::limits::OidcLimiters;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::tokens::Tokens;

/// The discovery document's path (OpenID Connect Discovery §4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// The authorization endpoint.
pub const AUTHORIZE_PATH: &str = "/oidc/authorize";
/// Where the relay sends the browser back with WeChat's code (a flow's return URL).
pub const CALLBACK_PATH: &str = "/oidc/callback";
/// The token endpoint.
pub const TOKEN_PATH: &str = "/oidc/token";
/// The userinfo endpoint.
pub const USERINFO_PATH: &str = "/oidc/userinfo";
/// The JWKS.
pub const JWKS_PATH: &str = "/oidc/jwks";
/// The end-session endpoint (OpenID Connect RP-Initiated Logout 1.0).
pub const LOGOUT_PATH: &str = "/oidc/logout";

/// The longest query or form the endpoints read.
const MAX_PARAMS: usize = 8 * 1024;

/// What the provider's endpoints share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OidcState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    oidc: Arc<OidcSettings>,
    settings: Arc<Settings>,
    store: Store,
    tokens: Arc<Tokens>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// The relying parties' buckets (`oidc.clients.<id>.rate_limits`, docs/design.md §6.2).
    limiters: OidcLimiters,
}

impl OidcState {
    /// The provider's state, when `[oidc]` is configured.
    pub(crate) fn new(
        settings: Arc<Settings>,
        store: Store,
        tokens: Arc<Tokens>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        let oidc = Arc::clone(settings.oidc.as_ref()?);
        let limiters = OidcLimiters::new(&oidc.clients, Arc::clone(&metrics));
        Some(Self { inner: Arc::new(Inner { oidc, settings, store, tokens, clock, metrics, limiters }) })
    }

    fn oidc(&self) -> &OidcSettings {
        &self.inner.oidc
    }

    /// An endpoint's URL under the issuer.
    fn url(&self, path: &str) -> String {
        [self.oidc().issuer.as_str(), path].concat()
    }
}

/// The provider's routes, merged into the public listener's router beside the relay.
pub fn router(state: OidcState) -> Router {
    Router::new()
        .route(DISCOVERY_PATH, get(discovery::discovery))
        .route(JWKS_PATH, get(discovery::jwks))
        .route(AUTHORIZE_PATH, get(authorize::authorize))
        .route(CALLBACK_PATH, get(authorize::callback))
        .route(TOKEN_PATH, axum::routing::post(token::token))
        .route(USERINFO_PATH, get(userinfo::userinfo).post(userinfo::userinfo))
        .route(LOGOUT_PATH, get(userinfo::logout))
        .with_state(state)
}

/// The parameters of a query or a form: each name once (a repeated one makes the request
/// malformed, RFC 6749 §3.1), at most [`MAX_PARAMS`] bytes.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `raw` (`application/x-www-form-urlencoded`); `None` when repeated or too long.
    pub(crate) fn parse(raw: &[u8]) -> Option<Self> {
        if raw.len() > MAX_PARAMS {
            return None;
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(raw) {
            if pairs.iter().any(|(seen, _)| *seen == name) {
                return None;
            }
            pairs.push((name.into_owned(), value.into_owned()));
        }
        Some(Self(pairs))
    }

    /// The value of `name`, if given (an empty value counts as absent, RFC 6749 §3.1).
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, v)| n == name && !v.is_empty()).map(|(_, v)| v.as_str())
    }
}

/// The headers of every answer: nothing cached (RFC 6749 §5.1), no referrer.
fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// A JSON answer.
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response();
    no_store(response.headers_mut());
    response
}

/// A redirect to `location` (a URL wxauth built: a redirect URI from the config, WeChat's page).
fn redirect(location: &str) -> Response {
    let Ok(value) = HeaderValue::from_str(location) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "Sign-in failed", "The sign-in could not continue.");
    };
    let mut response = StatusCode::FOUND.into_response();
    response.headers_mut().insert(header::LOCATION, value);
    no_store(response.headers_mut());
    response
}

/// A small HTML page, for what cannot go back to a client (an unknown client, a redirect URI
/// not registered: RFC 6749 §4.1.2.1 forbids redirecting then). Its text is wxauth's own,
/// never the request's.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let (title, text) = (crate::html::escape(title), crate::html::escape(text));
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}\
         h1{{font-size:1.3rem}}</style></head><body><h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut response = (status, Html(body)).into_response();
    no_store(response.headers_mut());
    response
}

/// Whole seconds to wait, rounded up, at least one: a `Retry-After` (RFC 9110 §10.2.3).
fn retry_secs(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Counts an endpoint's outcome (`wxauth_oidc_requests_total`).
fn count(state: &OidcState, endpoint: &str, outcome: &str) {
    state.inner.metrics.oidc_requests.with_label_values(&[endpoint, outcome]).inc();
}
