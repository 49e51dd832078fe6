//! The userinfo endpoint (OpenID Connect Core §5.3) and the end-session endpoint (OpenID
//! Connect RP-Initiated Logout 1.0 §2, §3).
//!
//! Userinfo answers the claims of the sign-in an access token was issued for, from the sealed
//! record (no call to WeChat): `sub` always, `name` and `picture` only when the ID token has
//! them. An unknown or expired token is RFC 6750 §3.1's `invalid_token` (401).
//!
//! WeChat has no logout (no end-session endpoint, no way to end a WeChat session from the web:
//! docs/wechat.md), and wxauth keeps no session of its own, so ending a session here ends
//! nothing but the relying party's own; the endpoint exists so that relying parties that call
//! it send the browser back where they asked, and only to a post-logout URI registered for the
//! client (an open redirector otherwise).

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;

use super::records::{self, AccessToken};
use super::{OidcState, Params, count, json, page, redirect};
use crate::allowlist::redirect_from_stored;
use crate::config::OidcClient;

/// `GET|POST /oidc/userinfo` with `Authorization: Bearer <access token>` (or, in a POST,
/// RFC 6750 §2.2's `access_token` form field).
#[tracing::instrument(name = "oidc.userinfo", skip_all, fields(outcome))]
pub(super) async fn userinfo(
    State(state): State<OidcState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let form = (method == Method::POST).then(|| Params::parse(&body)).flatten();
    let token = bearer.or_else(|| form.as_ref().and_then(|f| f.get("access_token")).map(str::to_owned));
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 256) else {
        count(&state, "userinfo", "invalid_request");
        return bearer_error(StatusCode::UNAUTHORIZED, None);
    };
    let inner = &state.inner;
    let found = match inner.store.get_oidc::<AccessToken>(records::ACCESS_TOKEN, &token).await {
        Ok(found) => found,
        Err(_) => {
            count(&state, "userinfo", "temporarily_unavailable");
            return json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "error": "temporarily_unavailable" }));
        }
    };
    let Some(record) = found.map(|f| f.record).filter(|r| r.expires_at > inner.clock.now_secs()) else {
        count(&state, "userinfo", "invalid_token");
        return bearer_error(StatusCode::UNAUTHORIZED, Some("invalid_token"));
    };
    count(&state, "userinfo", "ok");
    json(StatusCode::OK, &serde_json::Value::Object(record.identity.claims()))
}

/// RFC 6750 §3's answer: `WWW-Authenticate: Bearer`, with the error when there was a token.
fn bearer_error(status: StatusCode, error: Option<&'static str>) -> Response {
    let mut response = json(status, &serde_json::json!({ "error": error.unwrap_or("invalid_request") }));
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"wxauth\", error=\"{error}\""),
        None => "Bearer realm=\"wxauth\"".to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// `GET /oidc/logout?client_id|id_token_hint&post_logout_redirect_uri&state`.
#[tracing::instrument(name = "oidc.logout", skip_all, fields(outcome))]
pub(super) async fn logout(State(state): State<OidcState>, RawQuery(query): RawQuery) -> Response {
    let Some(params) = Params::parse(query.as_deref().unwrap_or("").as_bytes()) else {
        count(&state, "logout", "page");
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-out request not valid",
            "The request repeats a parameter or is too long.",
        );
    };
    let signed_out = "Signed out";
    let note = "You are signed out of the application. WeChat itself has no sign-out: your WeChat stays signed in.";
    let Some(uri) = params.get("post_logout_redirect_uri") else {
        count(&state, "logout", "ok");
        return page(StatusCode::OK, signed_out, note);
    };
    let client = client_of(&state, &params);
    let registered = client.and_then(|c| c.post_logout_redirect_uris.iter().find(|r| r.as_str() == uri));
    let Some(registered) = registered else {
        count(&state, "logout", "page");
        return page(
            StatusCode::BAD_REQUEST,
            signed_out,
            "The post-logout address is not registered for this application.",
        );
    };
    let mut pairs = Vec::new();
    pairs.extend(params.get("state").map(|s| ("state", s)));
    count(&state, "logout", "ok");
    match redirect_from_stored(registered, &pairs) {
        Ok(location) => redirect(&location),
        Err(_) => page(StatusCode::OK, signed_out, note),
    }
}

/// The client a logout request names: `client_id`, or the audience of an `id_token_hint` that
/// one of the provider's keys signed (expired ones too: §2 allows them). Both, and they must agree.
fn client_of<'a>(state: &'a OidcState, params: &Params) -> Option<&'a OidcClient> {
    let oidc = state.oidc();
    let hinted = params.get("id_token_hint").map(|hint| {
        // Any of the published keys, RS256 or ES256: each checks the header's alg is its own.
        let claims = oidc.keys().find_map(|k| k.verify(hint));
        claims.and_then(|c| c["aud"].as_str().map(str::to_owned))
    });
    let named = params.get("client_id");
    let id = match (named, hinted) {
        (Some(named), Some(Some(aud))) if named == aud => named.to_owned(),
        (Some(_), Some(_)) | (None, Some(None)) => return None,
        (None, Some(Some(aud))) => aud,
        (Some(named), None) => named.to_owned(),
        (None, None) => return None,
    };
    oidc.client(&id)
}
