//! The authorization endpoint (RFC 6749 §4.1.1, OpenID Connect Core §3.1.2) and the callback
//! the relay brings WeChat's code back to.
//!
//! A request is judged in RFC 6749 §4.1.2.1's order: an unknown client or a redirect URI that is
//! not exactly one of the client's registered ones gets a plain page (never a redirect: an open
//! redirector otherwise); every other error goes to that redirect URI with `state`. Only the
//! code flow (`response_type=code`, `response_mode=query`), PKCE only as S256 (RFC 7636 §4.2;
//! `plain` would put the verifier in the front channel), required of public clients and, unless
//! a client is registered otherwise, of confidential ones. `prompt=none` answers
//! `login_required` (OpenID Connect Core §3.1.2.6): wxauth keeps no session of its own and
//! WeChat offers no silent check outside its own browser.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use sha2::{Digest as _, Sha256};

use super::records::{self, Code, Identity, Pending};
use super::{CALLBACK_PATH, OidcState, Params, count, page, redirect};
use crate::allowlist::redirect_from_stored;
use crate::clock::millis;
use crate::config::{OIDC_SCOPES, OidcClient, OidcFamily, Subject};
use crate::error::ApiError;
use crate::secrets::AuthCode;
use crate::store::{Admission, ExchangeOutcome, Flow};
use crate::tokens::UsersRule;
use crate::wechat::{App, AppKind, Lang, Scope};

/// Random characters of one of the provider's codes and access tokens (≈256 bits).
pub(super) const SECRET_LEN: usize = 43;
/// Random characters of a pending request's id (≥ 128 bits), the flow's `state` for wxauth's
/// own return URL.
const PENDING_ID_LEN: usize = 22;
/// The longest `state` and `nonce` kept.
const MAX_ECHOED: usize = 1024;

/// An OAuth error for the client's redirect URI (RFC 6749 §4.1.2.1).
#[derive(Debug)]
pub(super) struct Refusal {
    /// The error code.
    pub error: &'static str,
    /// What is wrong, for the developer (never a secret, never the request's text).
    pub description: String,
}

fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal { error, description: description.into() }
}

/// What a valid authorization request asks for.
#[derive(Debug)]
struct Asked {
    nonce: Option<String>,
    challenge: Option<String>,
    scopes: Vec<String>,
}

/// `GET /oidc/authorize`.
#[tracing::instrument(name = "oidc.authorize", skip_all, fields(client, outcome))]
pub(super) async fn authorize(
    State(state): State<OidcState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    let registered = Params::parse(query.as_bytes())
        .ok_or("The sign-in request repeats a parameter or is too long.")
        .and_then(|params| registered(&state, &params).map(|(client, uri)| (params, client, uri)));
    let (params, client, redirect_uri) = match registered {
        Ok(found) => found,
        Err(text) => {
            count(&state, "authorize", "page");
            return page(StatusCode::BAD_REQUEST, "Sign-in request not valid", text);
        }
    };
    tracing::Span::current().record("client", client.id.as_str());
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let client_state = params.get("state").map(str::to_owned);
    let started = match check(client, &params) {
        // The client's bucket is charged only by a request that would start a flow: a
        // malformed one costs nothing and spends nothing (docs/design.md §6.2).
        Ok(asked) => match state.inner.limiters.check(client, OidcFamily::Authorize) {
            Ok(()) => start(&state, client, redirect_uri, client_state.clone(), asked, user_agent).await,
            Err(wait) => {
                count(&state, "authorize", "rate_limited");
                return error_redirect(redirect_uri, &too_many(wait), client_state.as_deref(), &state.oidc().issuer);
            }
        },
        Err(refusal) => Err(refusal),
    };
    match started {
        Ok(location) => {
            count(&state, "authorize", "ok");
            redirect(&location)
        }
        Err(refusal) => {
            tracing::Span::current().record("outcome", refusal.error);
            count(&state, "authorize", refusal.error);
            error_redirect(redirect_uri, &refusal, client_state.as_deref(), &state.oidc().issuer)
        }
    }
}

/// The client and the redirect URI of a request, or the page's text when there is no
/// registered redirect URI to answer at.
fn registered<'a>(state: &'a OidcState, params: &Params) -> Result<(&'a OidcClient, &'a str), &'static str> {
    let id = params.get("client_id").ok_or("The sign-in request names no application (client_id).")?;
    let client = state.oidc().client(id).ok_or("The application (client_id) is not registered here.")?;
    let uri = params.get("redirect_uri").ok_or("The sign-in request has no redirect_uri.")?;
    let registered = client.redirect_uris.iter().find(|r| r.as_str() == uri);
    let uri = registered.ok_or("The redirect_uri is not one registered for this application.")?;
    Ok((client, uri))
}

/// The browser to the client's redirect URI with an error (and `state`, as given, and `iss`).
pub(super) fn error_redirect(redirect_uri: &str, refusal: &Refusal, state: Option<&str>, issuer: &str) -> Response {
    let mut params = vec![("error", refusal.error), ("error_description", refusal.description.as_str())];
    if let Some(state) = state {
        params.push(("state", state));
    }
    params.push(("iss", issuer));
    match redirect_from_stored(redirect_uri, &params) {
        Ok(location) => redirect(&location),
        Err(_) => page(StatusCode::BAD_REQUEST, "Sign-in failed", "The application's redirect URI is not valid."),
    }
}

/// [`check`] for the fuzz target: the challenge and scopes, or the error code.
pub(super) fn judge(client: &OidcClient, params: &Params) -> Result<(Option<String>, Vec<String>), &'static str> {
    check(client, params).map(|asked| (asked.challenge, asked.scopes)).map_err(|refusal| refusal.error)
}

/// Checks the request's parameters once the redirect URI is known.
fn check(client: &OidcClient, params: &Params) -> Result<Asked, Refusal> {
    if params.get("request").is_some() {
        return Err(refuse("request_not_supported", "request objects are not supported"));
    }
    if params.get("request_uri").is_some() {
        return Err(refuse("request_uri_not_supported", "request_uri is not supported"));
    }
    match params.get("response_type") {
        None => return Err(refuse("invalid_request", "response_type is required")),
        Some("code") => {}
        Some(_) => return Err(refuse("unsupported_response_type", "only the code flow (response_type=code)")),
    }
    if params.get("response_mode").is_some_and(|mode| mode != "query") {
        return Err(refuse("invalid_request", "response_mode must be query"));
    }
    if params.get("state").is_some_and(|s| s.len() > MAX_ECHOED) || params.get("nonce").is_some_and(|n| n.len() > 512) {
        return Err(refuse("invalid_request", "state (1024 bytes) or nonce (512 bytes) too long"));
    }
    let requested: Vec<&str> = params.get("scope").unwrap_or("").split(' ').collect();
    if !requested.contains(&"openid") {
        return Err(refuse("invalid_scope", "scope must include openid"));
    }
    // Scopes the provider does not offer are ignored (OpenID Connect Core §3.1.2.1); a known one
    // the client is not registered for is not granted (the token answer lists what was).
    let scopes =
        OIDC_SCOPES.iter().filter(|s| requested.contains(s) && client.scopes.contains(**s)).map(|s| (*s).to_owned());
    let challenge = pkce_challenge(client, params)?;
    if params.get("prompt").is_some_and(|p| p.split(' ').any(|v| v == "none")) {
        return Err(refuse("login_required", "wxauth keeps no session: the user must sign in with WeChat"));
    }
    Ok(Asked { nonce: params.get("nonce").map(str::to_owned), challenge, scopes: scopes.collect() })
}

/// The PKCE challenge: S256 only, 43 base64url characters (a SHA-256); required unless the
/// client is registered without it.
fn pkce_challenge(client: &OidcClient, params: &Params) -> Result<Option<String>, Refusal> {
    let Some(challenge) = params.get("code_challenge") else {
        if client.require_pkce {
            return Err(refuse("invalid_request", "code_challenge (PKCE, S256) is required"));
        }
        return Ok(None);
    };
    // RFC 7636 §4.3: no method means `plain`, which is refused as any other.
    if params.get("code_challenge_method") != Some("S256") {
        return Err(refuse("invalid_request", "code_challenge_method must be S256"));
    }
    if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(refuse("invalid_request", "code_challenge must be the base64url SHA-256 of the verifier"));
    }
    Ok(Some(challenge.to_owned()))
}

/// The WeChat app for this browser: the client's official account inside WeChat's own browser
/// (never WeCom's: `is_in_app_browser`), its website app (the QR code) elsewhere.
fn app_for<'a>(state: &'a OidcState, client: &OidcClient, user_agent: &str) -> Option<&'a App> {
    let apps = &state.inner.settings.apps.by_name;
    let of_kind = |kind| client.apps.iter().filter_map(|name| apps.get(name)).find(|app| app.kind == kind);
    if crate::wechat::is_in_app_browser(user_agent) {
        of_kind(AppKind::OfficialAccount).or_else(|| of_kind(AppKind::Website))
    } else {
        of_kind(AppKind::Website)
    }
}

/// Starts the flow and answers its start URL (which binds it to this browser).
async fn start(
    state: &OidcState,
    client: &OidcClient,
    redirect_uri: &str,
    client_state: Option<String>,
    asked: Asked,
    user_agent: &str,
) -> Result<String, Refusal> {
    let app = app_for(state, client, user_agent).ok_or_else(|| {
        refuse("unauthorized_client", "this client has no WeChat app for this browser (open it in WeChat)")
    })?;
    // The profile needs WeChat's consent page on an official account (a unionid too: WeChat
    // gives it only with the profile); a website app's QR sign-in always reads it.
    let wants_profile = asked.scopes.iter().any(|s| s == "profile") || client.subject == Subject::Unionid;
    let scope = match app.kind {
        AppKind::OfficialAccount if wants_profile => Scope::UserInfo,
        AppKind::OfficialAccount => Scope::Base,
        _ => Scope::Login,
    };
    let inner = &state.inner;
    let caller = client.caller();
    let (flow_id, start_token) = inner.store.new_flow(&caller, &app.name);
    let pending_id = crate::random_id(PENDING_ID_LEN);
    let flow = Flow {
        app: app.name.clone(),
        return_url: state.url(CALLBACK_PATH),
        caller_state: pending_id.clone(),
        scope: scope.as_str().to_owned(),
        caller: caller.clone(),
        created_at: inner.clock.now_secs(),
        force_popup: false,
    };
    let pending = Pending {
        client: client.id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        state: client_state,
        nonce: asked.nonce,
        challenge: asked.challenge,
        scopes: asked.scopes,
        flow_id: flow_id.clone(),
        app: app.name.clone(),
    };
    store_flow(state, client, &flow_id, &flow, &pending_id, &pending).await?;
    inner.metrics.flows_started.with_label_values(&[app.name.as_str()]).inc();
    Ok(crate::relay::start_url(&inner.settings.server.callback_url, &start_token))
}

/// Writes the flow and the pending request and counts the flow under the client's open-flow
/// cap, the three at once (different keys); a refused flow is deleted again.
async fn store_flow(
    state: &OidcState,
    client: &OidcClient,
    flow_id: &str,
    flow: &Flow,
    pending_id: &str,
    pending: &Pending,
) -> Result<(), Refusal> {
    let inner = &state.inner;
    let ttl = inner.settings.flow.ttl;
    let (stored, kept, admission) = tokio::join!(
        inner.store.put_flow(flow_id, flow, ttl),
        inner.store.put_oidc(records::PENDING, pending_id, pending, ttl),
        inner.store.admit_flow(&flow.caller, client.max_open_flows, ttl, inner.clock.now_ms()),
    );
    let unavailable = || refuse("temporarily_unavailable", "the sign-in store is unavailable; try again");
    if let Ok(Admission::Refused { .. }) = admission {
        let _ = inner.store.delete_flow(flow_id).await;
        return Err(refuse("temporarily_unavailable", "too many sign-ins in progress for this client; try again"));
    }
    match (stored, kept, admission) {
        (Ok(true), Ok(()), Ok(_)) => Ok(()),
        _ => Err(unavailable()),
    }
}

/// `GET /oidc/callback?code=..&state=<pending id>`: where the relay sends the browser with
/// WeChat's code. The pending request is taken (once), the code exchanged by wxauth itself,
/// and the browser sent to the client with the provider's own code.
#[tracing::instrument(name = "oidc.callback", skip_all, fields(client, outcome))]
pub(super) async fn callback(State(state): State<OidcState>, RawQuery(query): RawQuery) -> Response {
    let expired = || {
        page(StatusCode::BAD_REQUEST, "This sign-in link has expired", "Go back to the application and sign in again.")
    };
    let Ok(callback) = crate::relay::parse_query(query.as_deref().unwrap_or("")) else {
        count(&state, "callback", "page");
        return expired();
    };
    let pending = match state.inner.store.take_oidc::<Pending>(records::PENDING, &callback.state).await {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            count(&state, "callback", "page");
            return expired();
        }
        Err(_) => {
            count(&state, "callback", "page");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in temporarily unavailable",
                "Go back and try again in a moment.",
            );
        }
    };
    let Some(client) = state.oidc().client(&pending.client) else {
        count(&state, "callback", "page");
        return expired();
    };
    tracing::Span::current().record("client", client.id.as_str());
    let issued = match callback.code {
        None => Err(refuse("access_denied", "the user did not allow the WeChat sign-in")),
        Some(code) => issue_code(&state, client, &pending, AuthCode::new(code)).await,
    };
    let state_param = pending.state.as_deref();
    match issued {
        Ok(code) => {
            count(&state, "callback", "ok");
            let mut params = vec![("code", code.as_str())];
            params.extend(state_param.map(|s| ("state", s)));
            // RFC 9207: the issuer in every authorization response, so a relying party that
            // talks to several providers can tell which one answered (the mix-up attack).
            params.push(("iss", state.oidc().issuer.as_str()));
            match redirect_from_stored(&pending.redirect_uri, &params) {
                Ok(location) => redirect(&location),
                Err(_) => expired(),
            }
        }
        Err(refusal) => {
            tracing::Span::current().record("outcome", refusal.error);
            count(&state, "callback", refusal.error);
            error_redirect(&pending.redirect_uri, &refusal, state_param, &state.oidc().issuer)
        }
    }
}

/// Exchanges WeChat's code (through the flow, once: `Tokens::exchange`), and issues the
/// provider's own code for who signed in.
async fn issue_code(
    state: &OidcState,
    client: &OidcClient,
    pending: &Pending,
    code: AuthCode,
) -> Result<String, Refusal> {
    let inner = &state.inner;
    let app = inner.settings.apps.by_name.get(&pending.app).ok_or_else(|| refuse("server_error", "the app is gone"))?;
    let caller = client.caller();
    let (outcome, new) =
        inner.tokens.exchange(app, &pending.flow_id, code, &caller).await.map_err(|e| exchanged(&e))?;
    if outcome.is_snapshot_user {
        // A snapshot page (朋友圈快照页) user is a virtual one: no identity to sign in.
        return Err(refuse("access_denied", "a WeChat snapshot-page user: open the page in WeChat to sign in"));
    }
    let sub = subject(client, app, &outcome)?;
    let reads_profile = pending.scopes.iter().any(|s| s == "profile") && crate::consent::reads_profile(&outcome.scopes);
    let profile = if reads_profile {
        match inner.tokens.userinfo(app, &outcome.openid, Lang::ZhCn, new, UsersRule::Own(&caller)).await {
            Ok(cached) => Some(cached.profile),
            Err(e) => {
                tracing::warn!(client = %client.id, reason = e.reason(), "profile not read; the ID token goes without it");
                None
            }
        }
    } else {
        None
    };
    let identity = Identity {
        sub,
        auth_time: inner.clock.now_secs(),
        scopes: pending.scopes.clone(),
        name: profile.as_ref().map(|p| p.nickname.clone()),
        picture: profile.as_ref().map(|p| p.headimgurl.clone()).filter(|p| !p.is_empty()),
        openid: client.wechat_ids.then(|| outcome.openid.clone()),
        unionid: outcome.unionid.clone().filter(|_| client.wechat_ids),
    };
    let oidc = state.oidc();
    let code = crate::random_id(SECRET_LEN);
    let record = Code {
        client: client.id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        challenge: pending.challenge.clone(),
        nonce: pending.nonce.clone(),
        expires_at_ms: inner.clock.now_ms() + millis(oidc.code_ttl),
        identity,
        used_for: None,
    };
    // Kept past the code's life, as long as the access token its use issues: a second use
    // within it still finds which token to revoke.
    let keep = oidc.code_ttl + oidc.access_token_ttl + Duration::from_secs(60);
    inner.store.put_oidc(records::CODE, &code, &record, keep).await.map_err(|_| unavailable())?;
    Ok(code)
}

/// The client's `authorize` bucket is empty: RFC 6749 §4.1.2.1's `temporarily_unavailable`
/// ("temporarily overloaded"), to the registered redirect URI (a browser redirect has no
/// `Retry-After`; the description says how long).
fn too_many(wait: Duration) -> Refusal {
    let secs = super::retry_secs(wait);
    refuse("temporarily_unavailable", format!("too many sign-ins for this application just now; try again in {secs} s"))
}

fn unavailable() -> Refusal {
    refuse("temporarily_unavailable", "the sign-in store is unavailable; try again")
}

/// The client's answer for a failed exchange of WeChat's code.
fn exchanged(e: &ApiError) -> Refusal {
    let reason = e.reason();
    let error = if matches!(e, ApiError::StoreUnavailable | ApiError::WechatUnavailable(_) | ApiError::RateLimited(_)) {
        "temporarily_unavailable"
    } else {
        "access_denied"
    };
    tracing::warn!(reason, "the WeChat sign-in of an OIDC flow failed");
    refuse(error, format!("the WeChat sign-in failed ({reason}); sign in again"))
}

/// The client's `sub`: pairwise (a hash of its sector, the app's appid and the openid:
/// OpenID Connect Core §8.1), or the unionid for clients configured for it (a sign-in without
/// one is refused: the subject would change under the client).
fn subject(client: &OidcClient, app: &App, outcome: &ExchangeOutcome) -> Result<String, Refusal> {
    match &client.subject {
        Subject::Pairwise { sector } => Ok(pairwise(sector, &app.appid, &outcome.openid)),
        Subject::Unionid => outcome.unionid.clone().ok_or_else(|| {
            refuse(
                "access_denied",
                "WeChat gave no unionid for this sign-in (the app is not bound to the open platform)",
            )
        }),
    }
}

/// The pairwise subject: hex SHA-256 over the sector, the appid and the openid.
pub(super) fn pairwise(sector: &str, appid: &str, openid: &str) -> String {
    let digest = Sha256::digest(["wxauth pairwise sub", sector, appid, openid].join("\0").as_bytes());
    hex::encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sectors_get_two_subjects_for_one_openid() {
        let (a, b) = (pairwise("grafana", "wx1", "o1"), pairwise("gitlab", "wx1", "o1"));
        assert_ne!(a, b);
        assert_eq!(a, pairwise("grafana", "wx1", "o1"), "stable");
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_repeated_parameter_makes_the_request_malformed() {
        assert!(Params::parse(b"client_id=a&client_id=b").is_none());
        let params = Params::parse(b"client_id=a&state=").expect("parses");
        assert_eq!((params.get("client_id"), params.get("state")), (Some("a"), None));
    }
}
