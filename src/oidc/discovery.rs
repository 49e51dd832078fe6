//! The discovery document (OpenID Connect Discovery 1.0 §3, §4) and the JWKS (RFC 7517 §5): the
//! current signing key and, after a rotation, the previous one, so that an ID token signed just
//! before the rotation still verifies at a relying party that fetches the keys again; the same
//! for the EC key (ES256) when one is configured.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::{AUTHORIZE_PATH, Alg, JWKS_PATH, LOGOUT_PATH, OidcState, SigningKey, TOKEN_PATH, USERINFO_PATH, json};
use crate::config::OIDC_SCOPES;

/// `GET /.well-known/openid-configuration`.
pub(super) async fn discovery(State(state): State<OidcState>) -> Response {
    let issuer = &state.oidc().issuer;
    // ES256 only when an EC key can sign it: RPs pick their accepted algorithms from this list.
    let algs: Vec<&str> =
        [Alg::Rs256, Alg::Es256].into_iter().filter(|alg| state.oidc().signer(*alg).is_some()).map(Alg::name).collect();
    let document = serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": state.url(AUTHORIZE_PATH),
        "token_endpoint": state.url(TOKEN_PATH),
        "userinfo_endpoint": state.url(USERINFO_PATH),
        "jwks_uri": state.url(JWKS_PATH),
        "end_session_endpoint": state.url(LOGOUT_PATH),
        "scopes_supported": OIDC_SCOPES,
        "response_types_supported": ["code"],
        "authorization_response_iss_parameter_supported": true,
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["pairwise", "public"],
        "id_token_signing_alg_values_supported": algs,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "azp", "name", "picture", "openid", "unionid"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
    });
    json(StatusCode::OK, &document)
}

/// `GET /oidc/jwks`: the current RSA key first, then the previous one, then the EC keys alike.
pub(super) async fn jwks(State(state): State<OidcState>) -> Response {
    let keys: Vec<serde_json::Value> = state.oidc().keys().map(SigningKey::jwk).collect();
    json(StatusCode::OK, &serde_json::json!({ "keys": keys }))
}
