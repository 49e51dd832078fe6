//! The demo product's "Sign in through OIDC" (dev mode, issue 22): the demo page as an OpenID
//! Connect relying party of wxauth's own provider (docs/oidc.md), client `demo-oidc`, written
//! as any relying party would be: PKCE (S256), `state` and `nonce` kept in a cookie, the code
//! traded at the token endpoint with HTTP Basic, the ID token's signature checked against the
//! JWKS and its issuer, audience, expiry and nonce compared, then userinfo. `/oidc/login?alg=ES256`
//! signs in as client `demo-oidc-es256` instead, whose ID tokens are ES256.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::dev::{DEV_OIDC_CLIENT_ID, DEV_OIDC_CLIENT_SECRET, DEV_OIDC_ES256_CLIENT_ID};
use crate::html::escape;

/// The cookie holding `state`, `nonce` and the PKCE verifier between the two legs.
const COOKIE: &str = "demo_oidc";

#[derive(Clone, Debug)]
struct Rp {
    issuer: String,
    origin: String,
    http: reqwest::Client,
}

/// The relying party's routes (`/oidc/login`, `/oidc/back`) for the provider at `issuer`, the
/// demo page being at `origin`.
pub fn router(issuer: String, origin: String) -> Result<Router, reqwest::Error> {
    let http = crate::http_client().build()?;
    Ok(Router::new().route("/oidc/login", get(login)).route("/oidc/back", get(back)).with_state(Rp {
        issuer,
        origin,
        http,
    }))
}

/// The client and the ID token algorithm it registered: `RS256` (`demo-oidc`), or `ES256`
/// (`demo-oidc-es256`).
fn client_of(alg: &str) -> Option<(&'static str, &'static str)> {
    match alg {
        "RS256" => Some((DEV_OIDC_CLIENT_ID, "RS256")),
        "ES256" => Some((DEV_OIDC_ES256_CLIENT_ID, "ES256")),
        _ => None,
    }
}

/// Sends the browser to the provider's authorization endpoint, as the client of `?alg=`
/// (RS256 without it).
async fn login(State(rp): State<Rp>, RawQuery(query): RawQuery) -> Response {
    let asked = query.as_deref().and_then(|q| q.strip_prefix("alg=")).unwrap_or("RS256");
    let Some((client_id, alg)) = client_of(asked) else {
        return page(StatusCode::BAD_REQUEST, "Unknown algorithm", "RS256 or ES256.");
    };
    let (state, nonce, verifier) = (crate::random_id(22), crate::random_id(22), crate::random_id(64));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let redirect_uri: String = url::form_urlencoded::byte_serialize(rp.redirect_uri().as_bytes()).collect();
    let location = format!(
        "{}/oidc/authorize?client_id={client_id}&redirect_uri={redirect_uri}&response_type=code\
         &scope=openid%20profile&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256",
        rp.issuer
    );
    let cookie = format!("{COOKIE}={state}.{nonce}.{verifier}.{alg}; Path=/oidc; HttpOnly; SameSite=Lax; Max-Age=600");
    (StatusCode::FOUND, [(header::LOCATION, location), (header::SET_COOKIE, cookie)]).into_response()
}

impl Rp {
    fn redirect_uri(&self) -> String {
        format!("{}/oidc/back", self.origin)
    }
}

/// The browser back from the provider: the code traded, the ID token checked, userinfo read.
async fn back(State(rp): State<Rp>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    };
    let kept = cookie(&headers);
    let Some((state, nonce, verifier, alg)) = kept.as_deref().and_then(split_cookie) else {
        return page(StatusCode::BAD_REQUEST, "This sign-in was not started here", "");
    };
    if param("state").as_deref() != Some(state) {
        return page(StatusCode::BAD_REQUEST, "This sign-in was not started here", "The state does not match.");
    }
    if let Some(error) = param("error") {
        let description = param("error_description").unwrap_or_default();
        return page(StatusCode::OK, "Sign-in not completed", &format!("{error}: {description}"));
    }
    let Some(code) = param("code") else {
        return page(StatusCode::BAD_REQUEST, "Malformed answer", "No code.");
    };
    let Some((client_id, alg)) = client_of(alg) else {
        return page(StatusCode::BAD_REQUEST, "This sign-in was not started here", "");
    };
    match signed_in(&rp, client_id, alg, &code, nonce, verifier).await {
        Ok((claims, userinfo)) => page(
            StatusCode::OK,
            "Signed in through OIDC",
            &format!(
                "ID token ({alg} signature checked): {claims}\nuserinfo: {userinfo}",
                claims = serde_json::to_string_pretty(&claims).unwrap_or_default(),
                userinfo = serde_json::to_string_pretty(&userinfo).unwrap_or_default()
            ),
        ),
        Err(why) => page(StatusCode::BAD_GATEWAY, "Sign-in failed", why),
    }
}

/// This relying party's cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    let pairs = headers.get_all(header::COOKIE).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';'));
    pairs.filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| *k == COOKIE).map(|(_, v)| v.to_owned())
}

fn split_cookie(value: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = value.splitn(4, '.');
    Some((parts.next()?, parts.next()?, parts.next()?, parts.next()?))
}

/// The token request as `client_id`, the ID token's checks (its signature `alg`, as the client
/// registered), userinfo.
async fn signed_in(
    rp: &Rp,
    client_id: &str,
    alg: &str,
    code: &str,
    nonce: &str,
    verifier: &str,
) -> Result<(Value, Value), &'static str> {
    let redirect_uri = rp.redirect_uri();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", verifier),
    ];
    let tokens: Value = rp
        .http
        .post(format!("{}/oidc/token", rp.issuer))
        .basic_auth(client_id, Some(DEV_OIDC_CLIENT_SECRET))
        .form(&form)
        .send()
        .await
        .map_err(|_| "the token endpoint is unreachable")?
        .json()
        .await
        .map_err(|_| "the token endpoint answered no JSON")?;
    let id_token = tokens["id_token"].as_str().ok_or("the token endpoint refused the code")?;
    let jwks: Value = rp
        .http
        .get(format!("{}/oidc/jwks", rp.issuer))
        .send()
        .await
        .map_err(|_| "the JWKS is unreachable")?
        .json()
        .await
        .map_err(|_| "the JWKS is not JSON")?;
    let claims = verify(&jwks, id_token, alg).ok_or("the ID token's signature does not verify")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let fresh = claims["exp"].as_u64().is_some_and(|exp| exp > now);
    if claims["iss"] != rp.issuer.as_str() || claims["aud"] != client_id || claims["nonce"] != nonce || !fresh {
        return Err("the ID token is not for this sign-in (issuer, audience, nonce or expiry)");
    }
    let access_token = tokens["access_token"].as_str().unwrap_or_default();
    let userinfo: Value = rp
        .http
        .get(format!("{}/oidc/userinfo", rp.issuer))
        .bearer_auth(access_token)
        .send()
        .await
        .map_err(|_| "userinfo is unreachable")?
        .json()
        .await
        .map_err(|_| "userinfo answered no JSON")?;
    Ok((claims, userinfo))
}

/// The claims of `jws` if it is `alg` (RS256 or ES256) and the JWKS key its `kid` names, of
/// that alg, signed it.
fn verify(jwks: &Value, jws: &str, alg: &str) -> Option<Value> {
    let (signed, signature) = jws.rsplit_once('.')?;
    let (header, claims) = signed.split_once('.')?;
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
    let header: Value = serde_json::from_slice(&decode(header)?).ok()?;
    let jwk = jwks["keys"].as_array()?.iter().find(|k| k["kid"] == header["kid"] && k["alg"] == alg)?;
    let signature = decode(signature)?;
    match header["alg"].as_str()? {
        "RS256" if alg == "RS256" => {
            let (n, e) = (decode(jwk["n"].as_str()?)?, decode(jwk["e"].as_str()?)?);
            let key = ring::signature::RsaPublicKeyComponents { n, e };
            key.verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature).ok()?;
        }
        "ES256" if alg == "ES256" => {
            // RFC 7518 §6.2.1: the uncompressed point is 0x04, x, y.
            let point = [vec![4], decode(jwk["x"].as_str()?)?, decode(jwk["y"].as_str()?)?].concat();
            let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
            key.verify(signed.as_bytes(), &signature).ok()?;
        }
        _ => return None,
    }
    serde_json::from_slice(&decode(claims)?).ok()
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1 id=\"title\">{title}</h1><pre id=\"result\">{text}</pre><p><a href=\"/\">Back</a></p></body></html>",
        title = escape(title),
        text = escape(text)
    );
    (status, Html(body)).into_response()
}
