//! Tampered ID tokens refused by the two relying parties nobody here wrote (issue 22):
//! `openid-client` (examples/oidc-node/rp.js) and Authlib with joserfc
//! (examples/oidc-python/rp.py). Each case is a real sign-in through wxauth with one thing of
//! the token reply's `id_token` changed by a small HTTP proxy of the test's, which stands in
//! front of wxauth's public listener (the issuer is the proxy's origin) and passes everything
//! through except that: the cases an OP conformance suite and an attacker care about (OpenID
//! Connect Core §3.1.3.7): the signature altered, a claim changed under the old signature
//! (`sub`), `alg: none`, and, signed again with the provider's own key so that only the claim is
//! wrong, another `aud`, another `nonce`, an `exp` in the past. Each test fails if its RP
//! accepts the token; an untampered sign-in through the same proxy must succeed first.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use wxauth::oidc::SigningKey;

use crate::oidc::through_wechat;
use crate::oidc_rp::{Rp, provider_fronted, python};

/// What the proxy does to the next token reply's `id_token` (`None`: nothing).
type Tamper = Arc<Mutex<Option<&'static str>>>;

/// The cases, each a change an RP must refuse.
const CASES: [&str; 6] = ["signature", "sub", "alg_none", "aud", "nonce", "exp"];

/// What openid-client's refusal of each case says (its error and the cause, rp.js's line): the
/// check that refused, not some other failure.
const OPENID_CLIENT: [&str; 6] = [
    "JWT signature verification failed",
    "JWT signature verification failed",
    "unexpected JWT \"alg\" header parameter",
    "unexpected JWT \"aud\"",
    "unexpected ID Token \"nonce\"",
    "unexpected JWT \"exp\"",
];

/// What Authlib's and joserfc's refusals say (rp.py's line).
const AUTHLIB: [&str; 6] = [
    "BadSignatureError",
    "BadSignatureError",
    "UnsupportedAlgorithmError",
    "InvalidClaimError: invalid_claim: Invalid claim: 'aud'",
    "InvalidClaimError: invalid_claim: Invalid claim: 'nonce'",
    "ExpiredTokenError",
];

#[derive(Clone)]
struct Proxy {
    to: SocketAddr,
    http: reqwest::Client,
    tamper: Tamper,
    key: Arc<SigningKey>,
}

/// The proxy: forwards every request to wxauth's public listener as it came (no redirect
/// followed), and changes the `id_token` of a token reply as `tamper` says.
async fn forward(State(proxy): State<Proxy>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut request = proxy.http.request(method, format!("http://{}{path}", proxy.to)).body(body);
    for (name, value) in &headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name, value);
        }
    }
    let answer = request.send().await.expect("wxauth answers the proxy");
    let status = StatusCode::from_u16(answer.status().as_u16()).expect("status");
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            out.append(name, value.clone());
        }
    }
    let mut body = answer.bytes().await.expect("body").to_vec();
    let case = *proxy.tamper.lock().expect("tamper");
    if let (Some(case), true, StatusCode::OK) = (case, path.starts_with("/oidc/token"), status) {
        let mut reply: Value = serde_json::from_slice(&body).expect("the token reply is JSON");
        let id_token = reply["id_token"].as_str().expect("an id_token").to_owned();
        reply["id_token"] = tampered(&proxy.key, &id_token, case).into();
        body = serde_json::to_vec(&reply).expect("json");
    }
    (status, out, body).into_response()
}

/// `id_token` with one thing changed.
fn tampered(key: &SigningKey, id_token: &str, case: &str) -> String {
    let parts: Vec<&str> = id_token.split('.').collect();
    let [header, payload, signature] = parts[..] else { panic!("a JWS: {id_token}") };
    let decode =
        |part: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json") };
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let mut claims = decode(payload);
    let resign = |claims: &Value| key.sign(claims).expect("signed with the provider's key");
    match case {
        "signature" => {
            // The first character carries whole bits of the signature (the last may not).
            let flipped = if signature.starts_with('A') { "B" } else { "A" };
            format!("{header}.{payload}.{flipped}{}", &signature[1..])
        }
        "sub" => {
            claims["sub"] = "someone-else".into();
            format!("{header}.{}.{signature}", encode(&claims))
        }
        "alg_none" => format!("{}.{payload}.", encode(&serde_json::json!({"alg": "none", "typ": "JWT"}))),
        "aud" => {
            claims["aud"] = "another-client".into();
            resign(&claims)
        }
        "nonce" => {
            claims["nonce"] = "not-the-rps-nonce".into();
            resign(&claims)
        }
        "exp" => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_secs();
            claims["iat"] = (now - 7200).into();
            claims["auth_time"] = (now - 7200).into();
            claims["exp"] = (now - 3600).into();
            resign(&claims)
        }
        _ => panic!("no case {case}"),
    }
}

/// wxauth behind the proxy; the issuer is the proxy's origin.
async fn behind_proxy() -> (crate::helpers::TestApp, String, Tamper) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let front = listener.local_addr().expect("addr");
    let app = provider_fronted(Some(front)).await;
    let pem = std::fs::read_to_string(format!("{}/tests/fixtures/oidc/current.pem", env!("CARGO_MANIFEST_DIR")))
        .expect("the provider's key");
    let tamper = Tamper::default();
    let proxy = Proxy {
        to: app.public_addr,
        // The test's own client: it follows no redirect.
        http: app.http.clone(),
        tamper: Arc::clone(&tamper),
        key: Arc::new(SigningKey::from_pem("k2", &pem).expect("key")),
    };
    let router = axum::Router::new().fallback(forward).with_state(proxy);
    tokio::spawn(async move { axum::serve(listener, router).await });
    (app, format!("http://{front}"), tamper)
}

/// An untampered sign-in through the proxy, then each case: the RP must print `{"error"}`
/// saying the check that refused (`expected`, in [`CASES`] order).
async fn each_tampered_token_is_refused(program: &str, args: &[&str], dir: &Path, expected: [&str; 6]) {
    let (app, issuer, tamper) = behind_proxy().await;
    Rp::start_at(&issuer, program, args, dir).await.sign_in(&app).await;
    let mut refusals = Vec::new();
    for (case, expected) in CASES.into_iter().zip(expected) {
        *tamper.lock().expect("tamper") = Some(case);
        let rp = Rp::start_at(&issuer, program, args, dir).await;
        let started = app.http.get(&rp.authorize_url).send().await.expect("authorize");
        let back = through_wechat(&app, &started, "alice").await;
        let report = rp.back(&back).await;
        assert!(report.get("claims").is_none(), "{program} accepted an ID token with `{case}` tampered: {report}");
        let error = report["error"].as_str().unwrap_or_else(|| panic!("{case}: {report}"));
        assert!(error.contains(expected), "{case}: refused, but not by the check expected ({expected}): {error}");
        refusals.push(format!("{case}: {error}"));
    }
    eprintln!("{program} refused:\n  {}", refusals.join("\n  "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_refuses_each_tampered_id_token() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-node");
    each_tampered_token_is_refused("node", &["rp.js"], &dir, OPENID_CLIENT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_refuses_each_tampered_id_token() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc-python");
    each_tampered_token_is_refused(&python(), &["rp.py"], &dir, AUTHLIB).await;
}
