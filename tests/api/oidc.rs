//! The OpenID Provider face (issue 22): whole sign-ins through the simulator's consent page, the
//! negative cases the OpenID Foundation's Basic OP conformance tests exercise (redirect URI
//! mismatch, reused code, wrong client secret, missing or wrong PKCE verifier, expired code,
//! unsupported response type, `prompt=none` without a session), and key rotation; ES256 ID
//! tokens for a client registered for them, and the EC key's rotation.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::both_backends;
use crate::helpers::{Backend, CALLBACK_HOST, TestApp, spawn_app_configured};

const ISSUER: &str = "https://auth.wxauth.test";
pub(crate) const GRAFANA: &str = "grafana";
pub(crate) const GRAFANA_SECRET: &str = "grafana-test-secret";
pub(crate) const GRAFANA_REDIRECT: &str = "https://grafana.example.com/login/generic_oauth";
pub(crate) const SPA_REDIRECT: &str = "http://localhost:3000/callback";
pub(crate) const POSTER_SECRET: &str = "poster-test-secret";
pub(crate) const POSTER_REDIRECT: &str = "https://poster.example.com/cb";
pub(crate) const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn key_file(name: &str) -> String {
    format!("{}/tests/fixtures/oidc/{name}.pem", env!("CARGO_MANIFEST_DIR"))
}

/// `[oidc]` with the given key lines and three clients: `grafana` (confidential, HTTP Basic,
/// PKCE, pairwise), `spa` (public: PKCE, no secret), `poster` (secret in the body, registered
/// without PKCE, WeChat's ids as claims).
pub(crate) fn oidc_config(keys: &str) -> String {
    let digest = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
    format!(
        r#"
[oidc]
{keys}
[oidc.clients.grafana]
redirect_uris = ["{GRAFANA_REDIRECT}"]
post_logout_redirect_uris = ["https://grafana.example.com/login"]
auth_method = "client_secret_basic"
secret_sha256 = "{grafana}"
apps = ["mp", "web"]
[oidc.clients.spa]
redirect_uris = ["{SPA_REDIRECT}"]
auth_method = "none"
apps = ["mp", "web"]
scopes = ["openid"]
[oidc.clients.poster]
redirect_uris = ["{POSTER_REDIRECT}"]
auth_method = "client_secret_post"
secret_sha256 = "{poster}"
apps = ["mp"]
require_pkce = false
wechat_ids = true
"#,
        grafana = digest(GRAFANA_SECRET),
        poster = digest(POSTER_SECRET),
    )
}

pub(crate) fn current_key() -> String {
    format!("signing_key_id = \"k2\"\nsigning_key_file = \"{}\"", key_file("current"))
}

async fn provider(backend: Backend) -> TestApp {
    spawn_app_configured(backend, &oidc_config(&current_key())).await
}

pub(crate) fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A URL on the callback domain, made reachable on the test's public listener.
fn local(app: &TestApp, url: &str) -> String {
    url.replace(&format!("https://{CALLBACK_HOST}"), &format!("http://{}", app.public_addr))
}

pub(crate) fn location(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 302, "a redirect");
    response.headers()["location"].to_str().expect("ascii").to_owned()
}

pub(crate) fn param(url: &str, name: &str) -> Option<String> {
    Url::parse(url).expect("url").query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The authorization request of `client` to `redirect_uri`, `extra` appended.
pub(crate) fn authorize_query(client: &str, redirect_uri: &str, extra: &str) -> String {
    let redirect: String = url::form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect();
    format!("client_id={client}&redirect_uri={redirect}&response_type=code&scope=openid%20profile{extra}")
}

pub(crate) async fn authorize(app: &TestApp, query: &str) -> reqwest::Response {
    app.http.get(format!("http://{}/oidc/authorize?{query}", app.public_addr)).send().await.expect("authorize")
}

/// The sign-in as the browser goes, from the authorization request's answer (the flow's start
/// URL) through WeChat's consent page as `user` and the relay, to the client's redirect URI.
pub(crate) async fn through_wechat(app: &TestApp, started: &reqwest::Response, user: &str) -> String {
    let start = location(started);
    assert!(start.contains("/wechat/callback?start="), "the flow's start URL: {start}");
    let to_wechat = app.http.get(local(app, &start)).send().await.expect("start");
    let wechat_url = location(&to_wechat);
    let cookie = to_wechat.headers()["set-cookie"].to_str().expect("ascii").split(';').next().expect("pair").to_owned();
    let consent = app.http.get(&wechat_url).send().await.expect("sim").text().await.expect("page");
    assert!(consent.contains("id=\"allow\""), "WeChat's consent page: {consent}");
    let confirm = if wechat_url.contains("/connect/qrconnect") {
        "/connect/qrconnect/confirm"
    } else {
        "/connect/oauth2/authorize/confirm"
    };
    let [appid, redirect_uri, scope, state] =
        ["appid", "redirect_uri", "scope", "state"].map(|name| param(&wechat_url, name).expect(name));
    let form = [
        ("appid", appid.as_str()),
        ("redirect_uri", &redirect_uri),
        ("scope", &scope),
        ("state", &state),
        ("decision", "allow"),
        ("user", user),
    ];
    let allowed = app.http.post(format!("http://{}{confirm}", app.sim_addr)).form(&form).send().await.expect("sim");
    let callback = location(&allowed);
    let relayed = app.http.get(local(app, &callback)).header("cookie", cookie).send().await.expect("relay");
    let oidc_callback = location(&relayed);
    assert!(oidc_callback.contains("/oidc/callback?code="), "{oidc_callback}");
    let answered = app.http.get(local(app, &oidc_callback)).send().await.expect("oidc callback");
    location(&answered)
}

/// A whole sign-in of `user` at `grafana` with PKCE, state and nonce: the code it got.
pub(crate) async fn grafana_code(app: &TestApp, user: &str) -> String {
    let extra = format!("&state=s-1&nonce=n-1&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    let started = authorize(app, &authorize_query(GRAFANA, GRAFANA_REDIRECT, &extra)).await;
    let back = through_wechat(app, &started, user).await;
    assert!(back.starts_with(GRAFANA_REDIRECT), "{back}");
    assert_eq!(param(&back, "state").as_deref(), Some("s-1"));
    assert_eq!(param(&back, "iss").as_deref(), Some(ISSUER), "RFC 9207: the issuer in the response");
    param(&back, "code").expect("code")
}

/// A token request; HTTP Basic when `basic` is given. Status, JSON body, headers.
pub(crate) async fn token(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = app.http.post(format!("http://{}/oidc/token", app.public_addr)).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.expect("token endpoint");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, response.json().await.expect("json"), headers)
}

async fn grafana_token(app: &TestApp, code: &str, verifier: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", GRAFANA_REDIRECT),
        ("code_verifier", verifier),
    ];
    token(app, &form, Some((GRAFANA, GRAFANA_SECRET))).await
}

async fn jwks(app: &TestApp) -> Value {
    let url = format!("http://{}/oidc/jwks", app.public_addr);
    app.http.get(url).send().await.expect("jwks").json().await.expect("json")
}

/// The claims of `id_token` once its RS256 signature checks under the JWKS key its `kid` names.
fn verified(jwks: &Value, id_token: &str) -> Value {
    verified_as(jwks, id_token, "RS256")
}

/// The claims of `id_token`, whose header must name `alg`, once its signature checks under the
/// JWKS key its `kid` names: ring's verifier from the JWK's `n` and `e` (RS256) or from the
/// point its `x` and `y` make (ES256, RFC 7518 §6.2.1), not the provider's own code.
fn verified_as(jwks: &Value, id_token: &str, alg: &str) -> Value {
    let (signed, signature) = id_token.rsplit_once('.').expect("three parts");
    let (header, claims) = signed.split_once('.').expect("three parts");
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).expect("base64url");
    let header: Value = serde_json::from_slice(&decode(header)).expect("header");
    assert_eq!(header["alg"], alg, "{header}");
    let keys = jwks["keys"].as_array().expect("keys");
    let jwk = keys.iter().find(|k| k["kid"] == header["kid"]).expect("the kid is in the JWKS");
    assert_eq!(jwk["alg"], alg, "the JWK of the kid is for the header's alg: {jwk}");
    let field = |name: &str| decode(jwk[name].as_str().unwrap_or_else(|| panic!("{name} in {jwk}")));
    let verifies = if alg == "ES256" {
        assert_eq!((&jwk["kty"], &jwk["crv"]), (&Value::from("EC"), &Value::from("P-256")));
        let point = [vec![4], field("x"), field("y")].concat();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(signed.as_bytes(), &decode(signature))
    } else {
        ring::signature::RsaPublicKeyComponents { n: field("n"), e: field("e") }.verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signed.as_bytes(),
            &decode(signature),
        )
    };
    verifies.expect("the signature verifies");
    serde_json::from_slice(&decode(claims)).expect("claims")
}

/// The `[oidc]` key lines of an EC key (ES256) `ec-<name>`, kid `kid`, as `prefix` (`` or
/// `previous_`).
pub(crate) fn ec_key(prefix: &str, kid: &str, name: &str) -> String {
    format!(
        "{prefix}es256_signing_key_id = \"{kid}\"\n{prefix}es256_signing_key_file = \"{}\"\n",
        key_file(&format!("ec-{name}"))
    )
}

/// `oidc_config` with `keys`, `grafana` registered for ES256 ID tokens (the others RS256).
pub(crate) fn es256_grafana_config(keys: &str) -> String {
    oidc_config(keys)
        .replace("[oidc.clients.grafana]\n", "[oidc.clients.grafana]\nid_token_signed_response_alg = \"ES256\"\n")
}

/// The header of a compact JWS.
fn jws_header(jws: &str) -> Value {
    let header = jws.split('.').next().expect("header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json")
}

async fn userinfo(app: &TestApp, access_token: &str) -> reqwest::Response {
    let url = format!("http://{}/oidc/userinfo", app.public_addr);
    app.http.get(url).bearer_auth(access_token).send().await.expect("userinfo")
}

async fn a_whole_sign_in_gives_a_signed_id_token_and_userinfo(backend: Backend) {
    let app = provider(backend).await;
    let discovery: Value = app
        .http
        .get(format!("http://{}/.well-known/openid-configuration", app.public_addr))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["issuer"], ISSUER);
    assert_eq!(discovery["token_endpoint"], format!("{ISSUER}/oidc/token"));
    assert_eq!(discovery["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(discovery["authorization_response_iss_parameter_supported"], true);
    let algs = &discovery["id_token_signing_alg_values_supported"];
    assert_eq!(algs, &serde_json::json!(["RS256"]), "no ES256 without an EC key");

    let code = grafana_code(&app, "alice").await;
    let (status, answer, headers) = grafana_token(&app, &code, VERIFIER).await;

    assert_eq!(status, 200, "{answer}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["scope"], "openid profile");
    let claims = verified(&jwks(&app).await, answer["id_token"].as_str().expect("id_token"));
    assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(ISSUER), Some(GRAFANA)));
    assert_eq!(claims["nonce"], "n-1");
    let openid = app.sim.openid(crate::helpers::MP_APPID, "alice").expect("openid");
    let sub = claims["sub"].as_str().expect("sub");
    assert_eq!(sub.len(), 64, "pairwise");
    assert_ne!(sub, openid, "never WeChat's openid");
    assert!(claims["name"].as_str().is_some_and(|n| !n.is_empty()), "profile under scope profile: {claims}");
    assert!(claims.get("openid").is_none() && claims.get("unionid").is_none(), "not a wechat_ids client");
    let now = app.clock.now_secs();
    assert!(claims["exp"].as_i64().expect("exp") > now && claims["iat"].as_i64().expect("iat") <= now);
    let info = userinfo(&app, answer["access_token"].as_str().expect("access token")).await;
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.expect("json");
    assert_eq!((info["sub"].as_str(), &info["name"]), (Some(sub), &claims["name"]));
    assert_eq!(userinfo(&app, "made-up").await.status(), 401);

    // A public client: no secret, PKCE; its pairwise sub differs; no profile (not its scope).
    let extra = format!("&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    let back =
        through_wechat(&app, &authorize(&app, &authorize_query("spa", SPA_REDIRECT, &extra)).await, "alice").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &param(&back, "code").expect("code")),
        ("redirect_uri", SPA_REDIRECT),
        ("code_verifier", VERIFIER),
        ("client_id", "spa"),
    ];
    let (status, spa, _) = token(&app, &form, None).await;
    assert_eq!(status, 200, "{spa}");
    let spa_claims = verified(&jwks(&app).await, spa["id_token"].as_str().expect("id_token"));
    assert_ne!(spa_claims["sub"].as_str(), Some(sub), "two clients cannot correlate a user");
    assert!(spa_claims.get("name").is_none(), "no profile without scope profile");
}

async fn a_redirect_uri_not_registered_gets_a_page_never_a_redirect(backend: Backend) {
    let app = provider(backend).await;
    let extra = format!("&state=s&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    for query in [
        authorize_query(GRAFANA, "https://evil.example.com/cb", &extra),
        authorize_query(GRAFANA, &format!("{GRAFANA_REDIRECT}/x"), &extra),
        authorize_query("nobody", GRAFANA_REDIRECT, &extra),
        authorize_query(GRAFANA, GRAFANA_REDIRECT, &format!("{extra}&state=again")),
    ] {
        let response = authorize(&app, &query).await;
        assert_eq!(response.status(), 400, "{query}");
        assert!(response.headers().get("location").is_none(), "{query}");
        let body = response.text().await.expect("page");
        assert!(!body.contains("evil"), "the page echoes nothing of the request");
    }
}

async fn an_unsupported_response_type_goes_back_to_the_redirect_uri(backend: Backend) {
    let app = provider(backend).await;
    let query = authorize_query(GRAFANA, GRAFANA_REDIRECT, "&state=s-2")
        .replace("response_type=code", "response_type=token%20id_token");
    let back = location(&authorize(&app, &query).await);
    assert!(back.starts_with(GRAFANA_REDIRECT));
    assert_eq!(param(&back, "error").as_deref(), Some("unsupported_response_type"));
    assert_eq!(param(&back, "state").as_deref(), Some("s-2"));
    assert_eq!(param(&back, "iss").as_deref(), Some(ISSUER), "RFC 9207: errors carry the issuer too");
    // PKCE is required of this client: a request without a challenge, or with `plain`.
    for extra in ["&state=s-3", "&state=s-3&code_challenge=abc&code_challenge_method=plain"] {
        let back = location(&authorize(&app, &authorize_query(GRAFANA, GRAFANA_REDIRECT, extra)).await);
        assert_eq!(param(&back, "error").as_deref(), Some("invalid_request"), "{extra}");
    }
}

async fn prompt_none_without_a_session_is_login_required(backend: Backend) {
    let app = provider(backend).await;
    let extra = format!("&state=s-4&prompt=none&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    let back = location(&authorize(&app, &authorize_query(GRAFANA, GRAFANA_REDIRECT, &extra)).await);
    assert_eq!(param(&back, "error").as_deref(), Some("login_required"));
    assert_eq!(param(&back, "state").as_deref(), Some("s-4"));
}

async fn a_reused_code_is_refused_and_revokes_what_its_first_use_issued(backend: Backend) {
    let app = provider(backend).await;
    let code = grafana_code(&app, "alice").await;
    let (first, answer, _) = grafana_token(&app, &code, VERIFIER).await;
    assert_eq!(first, 200);
    let access_token = answer["access_token"].as_str().expect("access token");
    assert_eq!(userinfo(&app, access_token).await.status(), 200);

    let (second, refused, _) = grafana_token(&app, &code, VERIFIER).await;

    assert_eq!((second, refused["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(userinfo(&app, access_token).await.status(), 401, "the first use's token is revoked");
}

async fn a_wrong_client_secret_is_invalid_client(backend: Backend) {
    let app = provider(backend).await;
    let code = grafana_code(&app, "alice").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", GRAFANA_REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let (status, refused, headers) = token(&app, &form, Some((GRAFANA, "wrong"))).await;
    assert_eq!((status, refused["error"].as_str()), (401, Some("invalid_client")));
    assert!(headers["www-authenticate"].to_str().expect("ascii").starts_with("Basic"));
    // The right secret by the wrong method (the body, for a client_secret_basic client).
    let mut posted = form.to_vec();
    posted.extend([("client_id", GRAFANA), ("client_secret", GRAFANA_SECRET)]);
    let (status, refused, _) = token(&app, &posted, None).await;
    assert_eq!((status, refused["error"].as_str()), (401, Some("invalid_client")));
    // The code still works for the client itself: a refused client used nothing.
    assert_eq!(grafana_token(&app, &code, VERIFIER).await.0, 200);
}

async fn a_missing_or_wrong_pkce_verifier_is_invalid_grant(backend: Backend) {
    let app = provider(backend).await;
    let code = grafana_code(&app, "alice").await;
    let wrong = "A".repeat(43);
    let missing = [("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", GRAFANA_REDIRECT)];
    let (status, refused, _) = token(&app, &missing, Some((GRAFANA, GRAFANA_SECRET))).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")), "no verifier");
    let (status, refused, _) = grafana_token(&app, &code, &wrong).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")), "another verifier");
    assert_eq!(grafana_token(&app, &code, VERIFIER).await.0, 200, "refused requests used nothing");
}

async fn an_expired_code_is_invalid_grant(backend: Backend) {
    let app = provider(backend).await;
    let code = grafana_code(&app, "alice").await;
    app.advance(Duration::from_secs(61));
    let (status, refused, _) = grafana_token(&app, &code, VERIFIER).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")));
}

async fn a_code_is_bound_to_its_client_and_redirect_uri(backend: Backend) {
    let app = provider(backend).await;
    let code = grafana_code(&app, "alice").await;
    let elsewhere = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", POSTER_REDIRECT),
        ("client_id", "poster"),
        ("client_secret", POSTER_SECRET),
    ];
    let (status, refused, _) = token(&app, &elsewhere, None).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")), "another client");
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", "https://grafana.example.com/other"),
        ("code_verifier", VERIFIER),
    ];
    let (status, refused, _) = token(&app, &form, Some((GRAFANA, GRAFANA_SECRET))).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("invalid_grant")), "another redirect URI");
}

async fn a_snapshot_page_user_is_access_denied(backend: Backend) {
    let app = provider(backend).await;
    let extra = format!("&state=s-5&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    let back =
        through_wechat(&app, &authorize(&app, &authorize_query(GRAFANA, GRAFANA_REDIRECT, &extra)).await, "snap").await;
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"), "{back}");
    assert!(param(&back, "error_description").is_some_and(|d| d.contains("snapshot")));
    assert_eq!(param(&back, "code"), None);
}

/// Bob signs in to `poster` (no PKCE, `client_secret_post`): the token endpoint's status and answer.
async fn poster_signs_in(app: &TestApp) -> (u16, serde_json::Value) {
    let back = through_wechat(app, &authorize(app, &authorize_query("poster", POSTER_REDIRECT, "")).await, "bob").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", &param(&back, "code").expect("code")),
        ("redirect_uri", POSTER_REDIRECT),
        ("client_id", "poster"),
        ("client_secret", POSTER_SECRET),
    ];
    let (status, answer, _) = token(app, &form, None).await;
    (status, answer)
}

async fn a_wechat_ids_client_gets_the_openid_and_may_skip_pkce(backend: Backend) {
    let app = provider(backend).await;
    let (status, answer) = poster_signs_in(&app).await;
    assert_eq!(status, 200, "{answer}");
    let claims = verified(&jwks(&app).await, answer["id_token"].as_str().expect("id_token"));
    assert_eq!(claims["openid"].as_str(), app.sim.openid(crate::helpers::MP_APPID, "bob").as_deref());
    assert!(claims.get("nonce").is_none(), "none asked");
}

async fn the_end_session_endpoint_redirects_only_to_a_registered_uri(backend: Backend) {
    let app = provider(backend).await;
    let logout = |query: String| {
        let url = format!("http://{}/oidc/logout?{query}", app.public_addr);
        app.http.get(url).send()
    };
    let back = logout(format!(
        "client_id={GRAFANA}&post_logout_redirect_uri=https%3A%2F%2Fgrafana.example.com%2Flogin&state=bye"
    ))
    .await
    .expect("logout");
    assert_eq!(location(&back), "https://grafana.example.com/login?state=bye");
    let open_redirect =
        logout(format!("client_id={GRAFANA}&post_logout_redirect_uri=https%3A%2F%2Fevil.example.com%2F"))
            .await
            .expect("logout");
    assert_eq!(open_redirect.status(), 400);
    assert!(open_redirect.headers().get("location").is_none());
    let plain = logout(String::new()).await.expect("logout");
    assert_eq!(plain.status(), 200);
    assert!(plain.text().await.expect("page").contains("WeChat itself has no sign-out"));
}

async fn after_a_rotation_the_jwks_has_both_keys_and_old_id_tokens_verify(backend: Backend) {
    // Before: the previous key signs.
    let before = format!("signing_key_id = \"k1\"\nsigning_key_file = \"{}\"", key_file("previous"));
    let old = spawn_app_configured(backend, &oidc_config(&before)).await;
    let code = grafana_code(&old, "alice").await;
    let (_, answer, _) = grafana_token(&old, &code, VERIFIER).await;
    let old_token = answer["id_token"].as_str().expect("id_token").to_owned();
    // After: the new key signs and the previous one is still published.
    let after = format!(
        "{}\nprevious_signing_key_id = \"k1\"\nprevious_signing_key_file = \"{}\"",
        current_key(),
        key_file("previous")
    );
    let new = spawn_app_configured(backend, &oidc_config(&after)).await;
    let keys = jwks(&new).await;
    let kids: Vec<&str> = keys["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, ["k2", "k1"], "current first, then previous");

    assert_eq!(verified(&keys, &old_token)["aud"], GRAFANA, "an ID token of the previous key still verifies");
    let code = grafana_code(&new, "alice").await;
    let (_, answer, _) = grafana_token(&new, &code, VERIFIER).await;
    let header = answer["id_token"].as_str().expect("id_token").split('.').next().expect("header").to_owned();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
    assert_eq!(header["kid"], "k2", "the new key signs");
}

async fn an_es256_client_gets_an_es256_id_token_and_an_rs256_client_still_rs256(backend: Backend) {
    let keys = format!("{}\n{}", current_key(), ec_key("", "e1", "current"));
    let app = spawn_app_configured(backend, &es256_grafana_config(&keys)).await;
    let discovery_url = format!("http://{}/.well-known/openid-configuration", app.public_addr);
    let discovery: Value = app.http.get(discovery_url).send().await.expect("discovery").json().await.expect("json");
    assert_eq!(discovery["id_token_signing_alg_values_supported"], serde_json::json!(["RS256", "ES256"]));
    let published = jwks(&app).await;
    let kids: Vec<&str> =
        published["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, ["k2", "e1"]);

    let code = grafana_code(&app, "alice").await;
    let (status, answer, _) = grafana_token(&app, &code, VERIFIER).await;
    assert_eq!(status, 200, "{answer}");
    let es256_token = answer["id_token"].as_str().expect("id_token").to_owned();
    assert_eq!(jws_header(&es256_token)["kid"], "e1", "the header names the EC key");
    let claims = verified_as(&published, &es256_token, "ES256");
    assert_eq!((claims["aud"].as_str(), claims["nonce"].as_str()), (Some(GRAFANA), Some("n-1")));

    // `poster` registered nothing: RS256 under the RSA key, as before.
    let (status, poster) = poster_signs_in(&app).await;
    assert_eq!(status, 200, "{poster}");
    let rs256_token = poster["id_token"].as_str().expect("id_token");
    assert_eq!(jws_header(rs256_token)["kid"], "k2");
    assert_eq!(verified(&published, rs256_token)["aud"], "poster");

    // The end-session endpoint knows the client from an ES256 hint as from an RS256 one.
    let logout = format!(
        "http://{}/oidc/logout?id_token_hint={es256_token}&post_logout_redirect_uri=https%3A%2F%2Fgrafana.example.com%2Flogin",
        app.public_addr
    );
    let back = app.http.get(logout).send().await.expect("logout");
    assert_eq!(location(&back), "https://grafana.example.com/login");
    let forged = format!("{}.{}", es256_token.rsplit_once('.').expect("parts").0, "A".repeat(86));
    let logout = format!(
        "http://{}/oidc/logout?id_token_hint={forged}&post_logout_redirect_uri=https%3A%2F%2Fgrafana.example.com%2Flogin",
        app.public_addr
    );
    let refused = app.http.get(logout).send().await.expect("logout");
    assert!(refused.headers().get("location").is_none(), "a hint whose signature fails names no client");
}

async fn after_an_es256_rotation_the_jwks_has_both_ec_keys_and_old_id_tokens_verify(backend: Backend) {
    // Before: the EC key `e0` signs grafana's ID tokens.
    let before = format!("{}\n{}", current_key(), ec_key("", "e0", "previous"));
    let old = spawn_app_configured(backend, &es256_grafana_config(&before)).await;
    let code = grafana_code(&old, "alice").await;
    let (_, answer, _) = grafana_token(&old, &code, VERIFIER).await;
    let old_token = answer["id_token"].as_str().expect("id_token").to_owned();
    assert_eq!(jws_header(&old_token)["kid"], "e0");
    // After: `e1` signs and `e0` is still published.
    let after = format!("{}\n{}{}", current_key(), ec_key("", "e1", "current"), ec_key("previous_", "e0", "previous"));
    let new = spawn_app_configured(backend, &es256_grafana_config(&after)).await;
    let keys = jwks(&new).await;
    let kids: Vec<&str> = keys["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, ["k2", "e1", "e0"], "RSA, then the current EC key, then the previous one");

    assert_eq!(verified_as(&keys, &old_token, "ES256")["aud"], GRAFANA, "an ID token of the previous EC key verifies");
    let code = grafana_code(&new, "alice").await;
    let (_, answer, _) = grafana_token(&new, &code, VERIFIER).await;
    let new_token = answer["id_token"].as_str().expect("id_token");
    assert_eq!(jws_header(new_token)["kid"], "e1", "the new EC key signs");
    verified_as(&keys, new_token, "ES256");
    // The previous key's token is still a hint the end-session endpoint accepts.
    let logout = format!(
        "http://{}/oidc/logout?id_token_hint={old_token}&post_logout_redirect_uri=https%3A%2F%2Fgrafana.example.com%2Flogin",
        new.public_addr
    );
    assert_eq!(location(&new.http.get(logout).send().await.expect("logout")), "https://grafana.example.com/login");
}

both_backends!(
    a_whole_sign_in_gives_a_signed_id_token_and_userinfo,
    a_redirect_uri_not_registered_gets_a_page_never_a_redirect,
    an_unsupported_response_type_goes_back_to_the_redirect_uri,
    prompt_none_without_a_session_is_login_required,
    a_reused_code_is_refused_and_revokes_what_its_first_use_issued,
    a_wrong_client_secret_is_invalid_client,
    a_missing_or_wrong_pkce_verifier_is_invalid_grant,
    an_expired_code_is_invalid_grant,
    a_code_is_bound_to_its_client_and_redirect_uri,
    a_snapshot_page_user_is_access_denied,
    a_wechat_ids_client_gets_the_openid_and_may_skip_pkce,
    the_end_session_endpoint_redirects_only_to_a_registered_uri,
    after_a_rotation_the_jwks_has_both_keys_and_old_id_tokens_verify,
    an_es256_client_gets_an_es256_id_token_and_an_rs256_client_still_rs256,
    after_an_es256_rotation_the_jwks_has_both_ec_keys_and_old_id_tokens_verify,
);
