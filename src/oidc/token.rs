//! The token endpoint (RFC 6749 §4.1.3, §5; OpenID Connect Core §3.1.3): the client
//! authenticates as registered (`client_secret_basic`, `client_secret_post`, or `none` with
//! PKCE), and trades one of the provider's codes, once, for an ID token (RS256, or ES256 by
//! the client's registration) and an opaque access token. Errors are RFC 6749 §5.2's JSON: `invalid_client` (401, with
//! `WWW-Authenticate` after HTTP Basic), `invalid_grant` for a code that is unknown, expired,
//! another client's, sent to another redirect URI, or whose PKCE verifier does not answer its
//! challenge (RFC 7636 §4.6). A code used twice revokes the access token its first use issued
//! (RFC 6749 §4.1.2: "SHOULD revoke (when possible) all tokens previously issued").
//!
//! Limits (docs/design.md §6.2): the client's `token` bucket is charged only once it has
//! authenticated (a confidential client by its secret, before the store is read; a public one
//! by a code that is its own with the verifier that answers it), so a stranger holding a
//! `client_id` cannot spend it; a failed authentication spends the client's
//! `token_auth_failures` bucket instead. Either bucket empty: 429 with `Retry-After` and
//! `temporarily_unavailable` ([`limited`]).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest as _, Sha256};

use super::authorize::SECRET_LEN;
use super::records::{self, AccessToken, Code};
use super::{OidcState, Params, count, json};
use crate::clock::secs;
use crate::config::{ClientAuth, OidcClient, OidcFamily};

/// A token request's failure (RFC 6749 §5.2).
#[derive(Debug)]
struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
    /// `WWW-Authenticate: Basic` (the client tried HTTP Basic).
    basic: bool,
    /// `Retry-After` seconds (a bucket is empty).
    retry_after: Option<u64>,
}

fn grant_error(description: &'static str) -> TokenError {
    TokenError { status: StatusCode::BAD_REQUEST, error: "invalid_grant", description, basic: false, retry_after: None }
}

fn request_error(error: &'static str, description: &'static str) -> TokenError {
    TokenError { status: StatusCode::BAD_REQUEST, error, description, basic: false, retry_after: None }
}

/// A bucket of the client's is empty: 429 (RFC 6585 §4) with `Retry-After`, and RFC 6749's
/// `temporarily_unavailable`. RFC 6749 §5.2 defines no token-endpoint error for an overloaded
/// server; `temporarily_unavailable` is the one the RFC defines for it (§4.1.2.1, at the
/// authorization endpoint), which this endpoint already answers when the store is down, and
/// OAuth libraries surface it as the server's (openid-client's `OPError`), not the client's
/// mistake. `invalid_request` would say the request is malformed, `slow_down` belongs to
/// RFC 8628 §3.5's device polling, and `invalid_client` would tell a client with the right
/// secret that it is wrong.
fn limited(wait: std::time::Duration) -> TokenError {
    TokenError {
        status: StatusCode::TOO_MANY_REQUESTS,
        error: "temporarily_unavailable",
        description: "too many token requests for this client; try again after Retry-After seconds",
        basic: false,
        retry_after: Some(super::retry_secs(wait)),
    }
}

/// The store did not answer.
fn unavailable<E>(_: E) -> TokenError {
    TokenError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        description: "the store is unavailable; try again",
        basic: false,
        retry_after: None,
    }
}

/// Takes one request from the authenticated client's `token` bucket.
fn charge(state: &OidcState, client: &OidcClient) -> Result<(), TokenError> {
    state.inner.limiters.check(client, OidcFamily::Token).map_err(limited)
}

/// A failed authentication of `client` (when the client is known): it spends the client's
/// `token_auth_failures` bucket, never its `token` bucket, and is logged while that bucket
/// lasts; past it the answer is [`limited`] (and only the metric counts it).
fn auth_failed(state: &OidcState, client: Option<&OidcClient>, error: TokenError) -> TokenError {
    let Some(client) = client else { return error };
    match state.inner.limiters.check(client, OidcFamily::TokenAuthFailures) {
        Ok(()) => {
            tracing::warn!(client = %client.id, method = client.auth.method(), error = error.error, "token request: client authentication failed");
            error
        }
        Err(wait) => limited(wait),
    }
}

/// `POST /oidc/token`.
#[tracing::instrument(name = "oidc.token", skip_all, fields(client, outcome))]
pub(super) async fn token(State(state): State<OidcState>, headers: HeaderMap, body: Bytes) -> Response {
    match token_inner(&state, &headers, &body).await {
        Ok(answer) => {
            count(&state, "token", "ok");
            json(StatusCode::OK, &answer)
        }
        Err(e) => {
            let outcome = if e.retry_after.is_some() { "rate_limited" } else { e.error };
            tracing::Span::current().record("outcome", outcome);
            count(&state, "token", outcome);
            let mut response =
                json(e.status, &serde_json::json!({ "error": e.error, "error_description": e.description }));
            if e.basic {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"wxauth\""));
            }
            if let Some(secs) = e.retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
    }
}

async fn token_inner(state: &OidcState, headers: &HeaderMap, body: &[u8]) -> Result<serde_json::Value, TokenError> {
    let params = Params::parse(body)
        .ok_or(request_error("invalid_request", "a parameter is repeated, or the body is too long"))?;
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let client = authenticate(&state.oidc().clients, authorization, &params)
        .map_err(|(error, client)| auth_failed(state, client, error))?;
    tracing::Span::current().record("client", client.id.as_str());
    // A public client has named itself only; it authenticates with the code (below).
    let public = client.auth == ClientAuth::None;
    if !public {
        charge(state, client)?;
    }
    let failed = |error: TokenError| if public { auth_failed(state, Some(client), error) } else { error };
    match params.get("grant_type") {
        Some("authorization_code") => {}
        Some(_) => return Err(request_error("unsupported_grant_type", "only authorization_code")),
        None => return Err(request_error("invalid_request", "grant_type is required")),
    }
    let code = params.get("code").ok_or(request_error("invalid_request", "code is required"))?;
    let redirect_uri =
        params.get("redirect_uri").ok_or(request_error("invalid_request", "redirect_uri is required"))?;
    let inner = &state.inner;
    let read = inner.store.get_oidc::<Code>(records::CODE, code).await.map_err(unavailable)?;
    let read = read.ok_or_else(|| failed(grant_error("the code is unknown or expired")))?;
    if let Some(issued) = &read.record.used_for {
        // A second use: what the first one issued is revoked (the code may have leaked).
        tracing::warn!(client = %client.id, "a code used again: its access token is revoked");
        inner.store.delete_oidc(records::ACCESS_TOKEN, issued).await.map_err(unavailable)?;
        return Err(failed(grant_error("the code was used already; what it issued is revoked")));
    }
    check_code(inner.clock.now_ms(), client, &read.record, redirect_uri, params.get("code_verifier"))
        .map_err(failed)?;
    if public {
        // The code is its own and its verifier answers: now it has authenticated.
        charge(state, client)?;
    }
    let access_token = crate::random_id(SECRET_LEN);
    let oidc = state.oidc();
    let used = Code { used_for: Some(access_token.clone()), ..read.record.clone() };
    let keep = oidc.access_token_ttl + std::time::Duration::from_secs(60);
    if !inner.store.swap_oidc(records::CODE, code, &read, &used, keep).await.map_err(unavailable)? {
        return Err(grant_error("the code was used already"));
    }
    let now = inner.clock.now_secs();
    let expires_at = now + secs(oidc.access_token_ttl);
    let identity = read.record.identity;
    let record = AccessToken { client: client.id.clone(), expires_at, identity: identity.clone() };
    inner
        .store
        .put_oidc(records::ACCESS_TOKEN, &access_token, &record, oidc.access_token_ttl)
        .await
        .map_err(unavailable)?;
    let mut claims = identity.claims();
    for (name, value) in [
        ("iss", serde_json::Value::from(oidc.issuer.as_str())),
        ("aud", client.id.as_str().into()),
        ("azp", client.id.as_str().into()),
        ("iat", now.into()),
        ("exp", expires_at.into()),
        ("auth_time", identity.auth_time.into()),
    ] {
        claims.insert(name.into(), value);
    }
    if let Some(nonce) = &read.record.nonce {
        claims.insert("nonce".into(), nonce.as_str().into());
    }
    let unsigned = || TokenError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        description: "the ID token could not be signed",
        ..unavailable(())
    };
    // The client's registered algorithm (config validation holds an ES256 client to an EC key).
    let key = oidc.signer(client.id_token_alg).ok_or_else(unsigned)?;
    let id_token = key.sign(&serde_json::Value::Object(claims)).map_err(|_| unsigned())?;
    Ok(serde_json::json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": secs(oidc.access_token_ttl),
        "id_token": id_token,
        "scope": identity.scopes.join(" "),
    }))
}

/// The code's bindings: its client, its life, its redirect URI, its PKCE challenge.
fn check_code(
    now_ms: i64,
    client: &OidcClient,
    code: &Code,
    redirect_uri: &str,
    verifier: Option<&str>,
) -> Result<(), TokenError> {
    if code.client != client.id {
        return Err(grant_error("the code was issued to another client"));
    }
    if now_ms >= code.expires_at_ms {
        return Err(grant_error("the code is unknown or expired"));
    }
    if code.redirect_uri != redirect_uri {
        return Err(grant_error("redirect_uri is not the one the code was sent to"));
    }
    match (&code.challenge, verifier) {
        (Some(challenge), Some(verifier)) => {
            // RFC 7636 §4.1: 43..128 unreserved characters.
            let well_formed = (43..=128).contains(&verifier.len())
                && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            let answer = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if !well_formed || !same(answer.as_bytes(), challenge.as_bytes()) {
                return Err(grant_error("code_verifier does not match the code_challenge"));
            }
            Ok(())
        }
        (Some(_), None) => Err(grant_error("code_verifier is required (PKCE)")),
        // RFC 9700 §2.1.1: a verifier for a code issued without a challenge is refused (a
        // PKCE downgrade).
        (None, Some(_)) => Err(grant_error("the code was issued without a code_challenge")),
        (None, None) => Ok(()),
    }
}

/// The client, authenticated as it is registered. Exactly one method (RFC 6749 §2.3): HTTP
/// Basic (its parts form-urlencoded, §2.3.1), the body's `client_secret`, or none (a public
/// client names itself with `client_id`). A failure comes with the client it named, when that
/// client is registered (its failed-authentication bucket is spent).
fn authenticate<'a>(
    clients: &'a [OidcClient],
    authorization: Option<&str>,
    params: &Params,
) -> Result<&'a OidcClient, (TokenError, Option<&'a OidcClient>)> {
    let basic = authorization.and_then(|v| v.strip_prefix("Basic "));
    let invalid = |basic: bool| TokenError {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: "client authentication failed",
        basic,
        retry_after: None,
    };
    let (id, secret, used_basic) = match (basic, params.get("client_secret")) {
        (Some(_), Some(_)) => {
            return Err((request_error("invalid_request", "one client authentication method only"), None));
        }
        (Some(credentials), None) => {
            let (id, secret) = basic_credentials(credentials).ok_or((invalid(true), None))?;
            (id, Some(secret), true)
        }
        (None, secret) => {
            let id = params.get("client_id").ok_or((invalid(false), None))?;
            (id.to_owned(), secret.map(str::to_owned), false)
        }
    };
    let client = clients.iter().find(|c| c.id == id);
    if params.get("client_id").is_some_and(|named| named != id) {
        return Err((invalid(used_basic), client));
    }
    let client = client.ok_or((invalid(used_basic), None))?;
    let digest = secret.as_deref().map(|s| <[u8; 32]>::from(Sha256::digest(s.as_bytes())));
    let authenticated = match (&client.auth, digest) {
        (ClientAuth::SecretBasic(expected), Some(got)) => used_basic && same(expected, &got),
        (ClientAuth::SecretPost(expected), Some(got)) => !used_basic && same(expected, &got),
        (ClientAuth::None, None) => true,
        _ => false,
    };
    if !authenticated {
        return Err((invalid(used_basic), Some(client)));
    }
    Ok(client)
}

/// `base64(urlencoded(id) ":" urlencoded(secret))` of HTTP Basic (RFC 6749 §2.3.1).
fn basic_credentials(credentials: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(STANDARD.decode(credentials.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // Each part alone, whatever it holds: a `&` or `=` in it would split a form.
    let decode = |part: &str| -> Option<String> {
        if part.contains(['&', '=']) {
            return None;
        }
        url::form_urlencoded::parse(format!("v={part}").as_bytes()).next().map(|(_, value)| value.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}

/// Equal bytes, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token endpoint's reading of a request up to the code's checks (for the fuzz target
/// `oidc_token`, `crate::fuzzing`): the client authenticated among `clients`, the grant type,
/// and `code`'s bindings as if the request's code were `code`; the error code otherwise.
pub(super) fn judge(
    clients: &[OidcClient],
    authorization: Option<&str>,
    body: &[u8],
    code: &Code,
    now_ms: i64,
) -> Result<(), &'static str> {
    let params = Params::parse(body).ok_or("invalid_request")?;
    let client = authenticate(clients, authorization, &params).map_err(|(e, _)| e.error)?;
    if params.get("grant_type") != Some("authorization_code") {
        return Err("unsupported_grant_type");
    }
    let redirect_uri = params.get("redirect_uri").ok_or("invalid_request")?;
    params.get("code").ok_or("invalid_request")?;
    check_code(now_ms, client, code, redirect_uri, params.get("code_verifier")).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urlencoded_parts() {
        let header = STANDARD.encode("my%20client:s%3Acret+x");
        assert_eq!(basic_credentials(&header), Some(("my client".into(), "s:cret x".into())));
        assert_eq!(basic_credentials("not base64!"), None);
        assert_eq!(basic_credentials(&STANDARD.encode("a&b=c:secret")), None, "a part is never a form");
    }

    #[test]
    fn rfc_7636_appendix_b_verifier_answers_its_challenge() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
