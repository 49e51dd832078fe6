//! The OpenID Provider's per-client rate limits (issue 22; docs/design.md §6.2, docs/oidc.md
//! "Limits"): each bucket's bound exactly, who may spend it (a wrong secret or a stranger's
//! code never spends a client's `token` bucket; an invalid authorization request never spends
//! its `authorize` bucket), the answers past it (429 with `Retry-After` and
//! `temporarily_unavailable` at the token endpoint; `temporarily_unavailable` to the registered
//! redirect URI with `state` at the authorization endpoint), other clients untouched, and the
//! refusals counted as the gRPC limiter's are.

use serde_json::Value;

use crate::helpers::{Backend, TestApp, spawn_app_configured};
use crate::oidc::{
    GRAFANA, GRAFANA_REDIRECT, GRAFANA_SECRET, POSTER_REDIRECT, POSTER_SECRET, SPA_REDIRECT, VERIFIER, authorize,
    authorize_query, challenge, current_key, grafana_code, location, oidc_config, param, through_wechat, token,
};

/// The provider of tests/api/oidc.rs with `limits` (TOML tables) appended.
async fn provider(limits: &str) -> TestApp {
    spawn_app_configured(Backend::Redis, &format!("{}{limits}", oidc_config(&current_key()))).await
}

/// `wxauth_client_refusals_total` of one OIDC client and family.
async fn refusals(app: &TestApp, client: &str, family: &str) -> u64 {
    let text = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let text = text.text().await.expect("body");
    let labels = [format!("client=\"oidc:{client}\""), format!("family=\"{family}\""), "CLIENT_RATE_LIMITED".into()];
    text.lines()
        .filter(|l| l.starts_with("wxauth_client_refusals_total{") && labels.iter().all(|x| l.contains(x.as_str())))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// A 429 with `Retry-After` within `(0, max]` seconds and RFC 6749's JSON shape.
fn assert_limited((status, body, headers): &(u16, Value, reqwest::header::HeaderMap), max: u64) {
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
    let retry: u64 = headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=max).contains(&retry), "Retry-After {retry}");
    assert_eq!(headers["cache-control"], "no-store");
}

fn grafana_form(code: &str) -> [(&'static str, String); 4] {
    [
        ("grant_type", "authorization_code".into()),
        ("code", code.into()),
        ("redirect_uri", GRAFANA_REDIRECT.into()),
        ("code_verifier", VERIFIER.into()),
    ]
}

async fn grafana_token(app: &TestApp, code: &str, secret: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let form = grafana_form(code);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    token(app, &form, Some((GRAFANA, secret))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_bucket_answers_its_burst_and_wrong_secrets_spend_only_their_own() {
    let app = provider(
        "[oidc.clients.grafana.rate_limits]\ntoken = \"1/min\"\ntoken_burst = 3\n\
         token_auth_failures = \"1/min\"\ntoken_auth_failures_burst = 2\n",
    )
    .await;
    // A stranger with grafana's client_id and wrong secrets: two answered as such, then the
    // failures' own bucket is empty.
    for _ in 0..2 {
        let (status, body, _) = grafana_token(&app, "guess", "not-the-secret").await;
        assert_eq!((status, body["error"].as_str()), (401, Some("invalid_client")), "{body}");
    }
    assert_limited(&grafana_token(&app, "guess", "not-the-secret").await, 60);
    assert_eq!(refusals(&app, GRAFANA, "token_auth_failures").await, 1);
    // grafana itself still has its whole bucket: a real code, then two bad ones, answered...
    let code = grafana_code(&app, "alice").await;
    let (status, body, _) = grafana_token(&app, &code, GRAFANA_SECRET).await;
    assert_eq!(status, 200, "the failures spent nothing of the token bucket: {body}");
    assert!(body["id_token"].is_string(), "{body}");
    for _ in 0..2 {
        let (status, body, _) = grafana_token(&app, "not-a-code", GRAFANA_SECRET).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    }
    // ...and the fourth (burst 3) is limited, before its code is looked at.
    let fresh = grafana_code(&app, "bob").await;
    assert_limited(&grafana_token(&app, &fresh, GRAFANA_SECRET).await, 60);
    assert_eq!(refusals(&app, GRAFANA, "token").await, 1);
    // Another client is untouched by grafana's empty buckets.
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "not-a-code"),
        ("redirect_uri", POSTER_REDIRECT),
        ("client_id", "poster"),
        ("client_secret", POSTER_SECRET),
    ];
    let (status, body, _) = token(&app, &form, None).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert_eq!(refusals(&app, "poster", "token").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_is_charged_only_for_a_code_that_is_its_own() {
    let app = provider(
        "[oidc.clients.spa.rate_limits]\ntoken = \"1/min\"\ntoken_burst = 1\n\
         token_auth_failures = \"1/min\"\ntoken_auth_failures_burst = 1\n",
    )
    .await;
    let spa_form = |code: &str, verifier: &str| {
        [
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", SPA_REDIRECT.to_owned()),
            ("client_id", "spa".to_owned()),
            ("code_verifier", verifier.to_owned()),
        ]
    };
    let send = |form: [(&'static str, String); 5]| {
        let app = &app;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token(app, &form, None).await
        }
    };
    // A stranger naming spa with a code that is not one: answered once, then limited.
    let (status, body, _) = send(spa_form("a-guessed-code", VERIFIER)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert_limited(&send(spa_form("a-guessed-code", VERIFIER)).await, 60);
    // spa's own sign-in: its code with a wrong verifier is a failed authentication too (the
    // failures' bucket is empty: limited), and the code is left unused...
    let extra = format!("&state=s&nonce=n&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    let started = authorize(&app, &authorize_query("spa", SPA_REDIRECT, &extra)).await;
    let back = through_wechat(&app, &started, "alice").await;
    let code = param(&back, "code").expect("code");
    assert_limited(&send(spa_form(&code, &"x".repeat(43))).await, 60);
    // ...so with its verifier it is answered: the token bucket (burst 1) was never spent.
    let (status, body, _) = send(spa_form(&code, VERIFIER)).await;
    assert_eq!(status, 200, "{body}");
    // A second real sign-in is over the bucket: limited, after its code checked out.
    let started = authorize(&app, &authorize_query("spa", SPA_REDIRECT, &extra)).await;
    let second = param(&through_wechat(&app, &started, "bob").await, "code").expect("code");
    assert_limited(&send(spa_form(&second, VERIFIER)).await, 60);
    assert_eq!(refusals(&app, "spa", "token").await, 1);
    assert_eq!(refusals(&app, "spa", "token_auth_failures").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorize_bucket_is_spent_only_by_requests_that_start_a_flow() {
    let app = provider("[oidc.clients.grafana.rate_limits]\nauthorize = \"1/min\"\nauthorize_burst = 2\n").await;
    let pkce = format!("&state=st-9&code_challenge={}&code_challenge_method=S256", challenge(VERIFIER));
    let valid = authorize_query(GRAFANA, GRAFANA_REDIRECT, &pkce);
    // What cannot start a flow spends nothing: no PKCE (an error to the redirect URI), a
    // redirect URI not registered (a page).
    let no_pkce = location(&authorize(&app, &authorize_query(GRAFANA, GRAFANA_REDIRECT, "&state=st-1")).await);
    assert_eq!(param(&no_pkce, "error").as_deref(), Some("invalid_request"), "{no_pkce}");
    let elsewhere = authorize(&app, &authorize_query(GRAFANA, "https://evil.example.com/cb", &pkce)).await;
    assert_eq!(elsewhere.status(), 400);
    // Two flows (burst 2) start...
    for _ in 0..2 {
        let start = location(&authorize(&app, &valid).await);
        assert!(start.contains("/wechat/callback?start="), "a flow's start URL: {start}");
    }
    // ...the third is refused to the registered redirect URI with its state.
    let refused = location(&authorize(&app, &valid).await);
    assert!(refused.starts_with(GRAFANA_REDIRECT), "{refused}");
    assert_eq!(param(&refused, "error").as_deref(), Some("temporarily_unavailable"), "{refused}");
    assert_eq!(param(&refused, "state").as_deref(), Some("st-9"));
    assert!(param(&refused, "error_description").is_some_and(|d| d.contains("try again in")), "{refused}");
    assert_eq!(refusals(&app, GRAFANA, "authorize").await, 1);
    // Another client starts its flows as before.
    let spa = authorize(&app, &authorize_query("spa", SPA_REDIRECT, &pkce)).await;
    assert!(location(&spa).contains("/wechat/callback?start="));
}
