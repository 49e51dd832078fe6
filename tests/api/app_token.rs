//! One holder of each appsecret (issue 21): the app's own access token, fetched by wxauth
//! alone, renewed with ONE WeChat call across replicas, force-refreshed only for the current
//! token and within WeChat's 20 a day, and only for the clients granted it; JS-SDK signatures
//! from the ticket wxauth keeps, for the client's own pages only.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{
    GetAppAccessTokenRequest, GetAppAccessTokenResponse, InvalidateAppAccessTokenRequest,
    InvalidateAppAccessTokenResponse, SignJsSdkConfigRequest, SignJsSdkConfigResponse,
};
use wxauth::sim::{Endpoint, Fault};

use crate::concurrency::HEAVY;
use crate::helpers::{
    Backend, MP_APPID, PASSPORT_KEY, RedisServer, TRADE_KEY, TestApp, authed, metadata, reason, settings_toml,
    spawn_app_configured, spawn_settings, spawn_sim,
};

/// The `trade` client (app `mp`, an official account) holds the app-level grants; `passport`
/// holds none.
const GRANTED: &str = "grants = [\"app_access_token\", \"jssdk\"]";

/// How long WeChat holds the one renewal, so that the other callers arrive while it is in
/// flight (as `concurrency::REFRESH_HOLD`, for the same loaded machines).
const RENEWAL_HOLD: Duration = Duration::from_secs(3);

/// Two replicas over one Redis and one simulator, `trade` granted; WeChat timeout 30 s (above
/// [`RENEWAL_HOLD`]: a renewal timed out and sent again is not what these tests are about).
async fn two_replicas() -> (TestApp, TestApp) {
    let (sim, sim_addr) = spawn_sim().await;
    let redis = Arc::new(tokio::sync::Mutex::new(RedisServer::start().await));
    let store = format!("kind = \"redis\"\nurl = \"{}\"", redis.lock().await.url());
    let toml = settings_toml(sim_addr, &store, GRANTED).replace("timeout = \"2s\"", "timeout = \"30s\"");
    let settings = || wxauth::config::Settings::from_toml(&toml).expect("test settings");
    let a = spawn_settings(sim.clone(), sim_addr, Some(Arc::clone(&redis)), settings()).await;
    let b = spawn_settings(sim, sim_addr, Some(redis), settings()).await;
    (a, b)
}

async fn get_token(app: &TestApp, key: &str) -> Result<GetAppAccessTokenResponse, tonic::Status> {
    let request = authed(key, GetAppAccessTokenRequest { app: "mp".into() });
    app.grpc.clone().get_app_access_token(request).await.map(tonic::Response::into_inner)
}

async fn invalidate(app: &TestApp, key: &str, token: &str) -> Result<InvalidateAppAccessTokenResponse, tonic::Status> {
    let request = authed(key, InvalidateAppAccessTokenRequest { app: "mp".into(), access_token: token.into() });
    app.grpc.clone().invalidate_app_access_token(request).await.map(tonic::Response::into_inner)
}

/// A call as a caller following the contract makes it: retried after RetryInfo's delay when
/// the answer carries one (a store call over its bound on a loaded machine), never otherwise.
async fn retrying<T, F: Future<Output = Result<T, tonic::Status>>>(call: impl Fn() -> F) -> Result<T, tonic::Status> {
    let mut retries = 0;
    loop {
        let result = call().await;
        let delay = match &result {
            Err(status) if status.code() == Code::Unavailable && retries < 10 => {
                status.get_error_details().retry_info().and_then(|r| r.retry_delay)
            }
            _ => None,
        };
        let Some(delay) = delay else { return result };
        retries += 1;
        tokio::time::sleep(delay).await;
    }
}

fn advance_all(a: &TestApp, b: &TestApp, by: Duration) {
    a.advance(by);
    b.clock.advance(by);
}

/// 1,000 concurrent GetAppAccessToken over two replicas, with the stored token expired, make
/// exactly ONE WeChat call; every caller gets the one new token, alive at WeChat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_two_replicas_with_an_expired_token_make_one_wechat_call() {
    let _turn = HEAVY.lock().await;
    let (a, b) = two_replicas().await;
    let first = get_token(&a, TRADE_KEY).await.expect("the first token").access_token;
    assert_eq!(a.sim.calls(Endpoint::StableToken), 1, "fetched once");
    assert_eq!(
        get_token(&b, TRADE_KEY).await.expect("from the store").access_token,
        first,
        "the other replica reads it"
    );
    assert_eq!(a.sim.calls(Endpoint::StableToken), 1, "answered from the store");
    advance_all(&a, &b, Duration::from_secs(7300));
    a.sim.inject(Endpoint::StableToken, Fault::Delay(RENEWAL_HOLD), 1);

    let calls = (0..1000).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        retrying(move || get_token(app, TRADE_KEY))
    });
    let results = futures::future::join_all(calls).await;

    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert_eq!(a.sim.calls(Endpoint::StableToken), 2, "exactly one WeChat call renewed it");
    let tokens: std::collections::BTreeSet<_> =
        results.iter().filter_map(|r| Some(r.as_ref().ok()?.access_token.clone())).collect();
    assert_eq!(tokens.len(), 1, "every caller got the one renewed token");
    let renewed = tokens.into_iter().next().expect("a token");
    assert_ne!(renewed, first, "past its expiry WeChat gives a new token");
    assert!(a.sim.token_alive(MP_APPID, &renewed), "the token handed out works at WeChat");
    let kind = wxauth::store::CredentialKind::AccessToken;
    let upstream = a.tokens.app_credential_renewals("mp", kind, "upstream")
        + b.tokens.app_credential_renewals("mp", kind, "upstream");
    assert_eq!(upstream, 2, "the first fetch and the one renewal");
    let coalesced = a.tokens.app_credential_renewals("mp", kind, "coalesced")
        + b.tokens.app_credential_renewals("mp", kind, "coalesced");
    assert!(coalesced >= 1, "callers waited for the renewal");
}

/// 100 concurrent reports of one token over two replicas force ONE refresh; the old token is
/// dead at WeChat and the new one works; reports of the replaced token afterwards cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reports_of_one_token_make_at_most_one_forced_refresh() {
    let _turn = HEAVY.lock().await;
    let (a, b) = two_replicas().await;
    let stale = get_token(&a, TRADE_KEY).await.expect("a token").access_token;
    a.sim.inject(Endpoint::StableToken, Fault::Delay(Duration::from_millis(500)), 1);

    let reports = (0..100).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let stale = stale.clone();
        async move { retrying(|| invalidate(app, TRADE_KEY, &stale)).await }
    });
    let results = futures::future::join_all(reports).await;

    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert_eq!(a.sim.forced_token_refreshes(), 1, "one forced refresh for a hundred reports");
    let answers: std::collections::BTreeSet<_> =
        results.iter().filter_map(|r| r.as_ref().ok()).map(|r| (r.access_token.clone(), r.replaced)).collect();
    assert_eq!(answers.len(), 1, "one answer for all: {answers:?}");
    let (fresh, replaced) = answers.into_iter().next().expect("an answer");
    assert!(replaced && fresh != stale, "a new token");
    assert!(!a.sim.token_alive(MP_APPID, &stale), "a forced refresh kills the token before it");
    assert!(a.sim.token_alive(MP_APPID, &fresh));

    // The replaced token reported again, later: free, and the current token answers.
    let again = futures::future::join_all((0..100).map(|_| invalidate(&b, TRADE_KEY, &stale))).await;
    assert!(again.iter().all(|r| r.as_ref().is_ok_and(|r| r.access_token == fresh && r.replaced)));
    assert_eq!(a.sim.forced_token_refreshes(), 1, "a stale report costs no forced refresh");
    assert_eq!(get_token(&a, TRADE_KEY).await.expect("token").access_token, fresh);
}

/// WeChat allows 20 forced refreshes a day per app: wxauth counts them across replicas and
/// refuses the 21st before WeChat is asked, without RetryInfo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_days_forced_refreshes_are_counted_across_replicas_and_the_21st_is_refused() {
    let (a, b) = two_replicas().await;
    // Just past a midnight of WeChat's day (China Standard Time, UTC+8, as wxauth counts it),
    // so the test's ten minutes never cross into a new day's allowance.
    let into_day = (a.clock.now_secs() + 8 * 3600).rem_euclid(86_400);
    advance_all(&a, &b, Duration::from_secs(u64::try_from(86_400 - into_day + 60).unwrap_or(0)));
    let mut token = get_token(&a, TRADE_KEY).await.expect("a token").access_token;
    for i in 0..20 {
        // WeChat ignores a forced refresh within 30 s of the last; so does wxauth.
        advance_all(&a, &b, Duration::from_secs(31));
        let replica = if i % 2 == 0 { &a } else { &b };
        let answer = invalidate(replica, TRADE_KEY, &token).await.expect("a forced refresh");
        assert!(answer.replaced, "refresh {i} replaced the token");
        token = answer.access_token;
    }
    assert_eq!(a.sim.forced_token_refreshes(), 20);
    advance_all(&a, &b, Duration::from_secs(31));

    let refused = invalidate(&b, TRADE_KEY, &token).await.expect_err("the 21st");

    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "FORCE_REFRESH_ALLOWANCE_SPENT");
    assert_eq!(metadata(&refused, "forced_refreshes_per_day").as_deref(), Some("20"));
    assert!(refused.get_error_details().retry_info().is_none(), "no delay would be true");
    assert_eq!(a.sim.forced_token_refreshes(), 20, "WeChat was not asked");
    assert_eq!(get_token(&a, TRADE_KEY).await.expect("the token stands").access_token, token);
}

/// A report within 30 s of the last forced refresh makes none (WeChat would not refresh): the
/// token stands and the answer says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_within_30_seconds_of_a_forced_refresh_changes_nothing() {
    let app = spawn_app_configured(Backend::Memory, GRANTED).await;
    let first = get_token(&app, TRADE_KEY).await.expect("a token").access_token;
    let second = invalidate(&app, TRADE_KEY, &first).await.expect("forced").access_token;

    let third = invalidate(&app, TRADE_KEY, &second).await.expect("too soon");

    assert_eq!((third.access_token.as_str(), third.replaced), (second.as_str(), false));
    assert_eq!(app.sim.forced_token_refreshes(), 1);
}

/// Without the grant: PERMISSION_DENIED / GRANT_MISSING before any WeChat call. Another app
/// kind than the grant serves, an app the client may not use, bad fields: refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_grant_is_denied_and_wechat_is_never_asked() {
    let app = spawn_app_configured(Backend::Memory, GRANTED).await;

    let denied = get_token(&app, PASSPORT_KEY).await.expect_err("no grant");
    let denied_report = invalidate(&app, PASSPORT_KEY, "some-token").await.expect_err("no grant");

    for status in [&denied, &denied_report] {
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(reason(status), "GRANT_MISSING");
        assert_eq!(metadata(status, "grant").as_deref(), Some("app_access_token"));
    }
    assert_eq!(app.sim.calls(Endpoint::StableToken), 0, "WeChat never asked");
    let web = authed(TRADE_KEY, GetAppAccessTokenRequest { app: "web".into() });
    let not_its_app = app.grpc.clone().get_app_access_token(web).await.expect_err("trade may not use web");
    assert_eq!(reason(&not_its_app), "APP_NOT_ALLOWED");
    let empty = invalidate(&app, TRADE_KEY, "").await.expect_err("no token");
    assert_eq!(empty.code(), Code::InvalidArgument);
}

/// The app's own token meets WeChat's refusals of the server: an IP off the whitelist (40164),
/// a wrong appsecret (40125, and 40001 as stable_token's "AppSecret 错误"): APP_MISCONFIGURED,
/// nothing stored, the next call asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechats_refusals_of_the_server_are_app_misconfigured() {
    let app = spawn_app_configured(Backend::Memory, GRANTED).await;
    for errcode in [40164, 40125, 40001, 89503] {
        app.sim.inject(Endpoint::StableToken, Fault::Errcode(errcode), 1);
        let refused = get_token(&app, TRADE_KEY).await.expect_err("refused");
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::FailedPrecondition, "APP_MISCONFIGURED".into()),
            "{errcode}"
        );
        assert_eq!(metadata(&refused, "errcode"), Some(errcode.to_string()));
    }
    assert!(get_token(&app, TRADE_KEY).await.is_ok(), "nothing was kept of the refusals");
}

async fn sign(app: &TestApp, key: &str, url: &str) -> Result<SignJsSdkConfigResponse, tonic::Status> {
    let request = SignJsSdkConfigRequest {
        app: "mp".into(),
        url: url.into(),
        js_api_list: vec!["updateAppMessageShareData".into(), "scanQRCode".into()],
    };
    app.grpc.clone().sign_js_sdk_config(authed(key, request)).await.map(tonic::Response::into_inner)
}

/// SHA-1 by another implementation than wxauth's: Python's hashlib.
fn python_sha1(text: &str) -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import hashlib, sys; print(hashlib.sha1(sys.argv[1].encode()).hexdigest())", text])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// `wx.config` for a page of the client's own: the signature, recomputed by Python's hashlib
/// from WeChat's published algorithm over the ticket wxauth keeps, matches; the fragment is not
/// signed; the ticket is fetched once for many signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_for_the_clients_own_page_verifies_with_an_independent_sha1() {
    let app = spawn_app_configured(Backend::Memory, GRANTED).await;

    let signed = sign(&app, TRADE_KEY, "https://trade.example.com/shop/item?id=7#reviews").await.expect("signed");

    assert_eq!(signed.app_id, MP_APPID);
    assert_eq!(signed.url, "https://trade.example.com/shop/item?id=7", "signed without the fragment");
    assert_eq!(signed.js_api_list, ["updateAppMessageShareData", "scanQRCode"]);
    assert!(signed.nonce_str.len() == 16 && signed.nonce_str.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!((signed.timestamp - app.clock.now_secs()).abs() < 60);
    let (ticket, _) =
        app.store.read_app_credential("mp", wxauth::store::CredentialKind::JsapiTicket).await.expect("store");
    let ticket = ticket.expect("the ticket is kept");
    let plain = format!(
        "jsapi_ticket={}&noncestr={}&timestamp={}&url={}",
        ticket.value.secret(),
        signed.nonce_str,
        signed.timestamp,
        signed.url
    );
    assert_eq!(signed.signature, python_sha1(&plain), "an independent SHA-1 agrees");
    let again = sign(&app, TRADE_KEY, "https://trade.example.com/other").await.expect("signed again");
    assert_ne!(again.nonce_str, signed.nonce_str, "a fresh nonce each time");
    assert_eq!(app.sim.calls(Endpoint::GetTicket), 1, "one ticket for every signature while it lives");
    assert_eq!(app.sim.calls(Endpoint::StableToken), 1, "the ticket was fetched with wxauth's token");
}

/// The published sample, through Python's hashlib too: the vector the unit test holds is
/// WeChat's, not wxauth's own output.
#[test]
fn wechats_published_jssdk_sample_is_what_an_independent_sha1_gives() {
    let plain = "jsapi_ticket=sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg\
                 &noncestr=Wm3WZYTPz0wzccnW&timestamp=1414587457&url=http://mp.weixin.qq.com?params=value";
    assert_eq!(python_sha1(plain), "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
    let ours = wxauth::wechat::jssdk_signature(
        "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg",
        "Wm3WZYTPz0wzccnW",
        1_414_587_457,
        "http://mp.weixin.qq.com?params=value",
    );
    assert_eq!(ours, "0f9de62fce790f9a083d5c99e95740ceb90c27ed");
}

/// A page outside the client's own patterns is refused before any WeChat call (a product signs
/// only its pages); a client without `jssdk` is denied; bad fields are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_outside_the_clients_origins_or_without_the_grant_is_refused() {
    let app = spawn_app_configured(Backend::Memory, GRANTED).await;

    let elsewhere = sign(&app, TRADE_KEY, "https://passport.example.com/login/").await.expect_err("not trade's");
    let lookalike = sign(&app, TRADE_KEY, "https://trade.example.com.evil.example/").await.expect_err("not trade's");
    let no_grant = sign(&app, PASSPORT_KEY, "https://passport.example.com/login/").await.expect_err("no grant");

    for refused in [&elsewhere, &lookalike] {
        assert_eq!((refused.code(), reason(refused)), (Code::PermissionDenied, "RETURN_URL_NOT_ALLOWED".into()));
        assert_eq!(metadata(refused, "rejection").as_deref(), Some("NOT_IN_ALLOWLIST"));
    }
    assert_eq!((no_grant.code(), reason(&no_grant)), (Code::PermissionDenied, "GRANT_MISSING".into()));
    assert_eq!(metadata(&no_grant, "grant").as_deref(), Some("jssdk"));
    assert_eq!(app.sim.calls(Endpoint::GetTicket) + app.sim.calls(Endpoint::StableToken), 0, "WeChat never asked");
    let bad = SignJsSdkConfigRequest { app: "mp".into(), url: String::new(), js_api_list: vec!["no spaces".into()] };
    let invalid = app.grpc.clone().sign_js_sdk_config(authed(TRADE_KEY, bad)).await.expect_err("invalid");
    let fields: Vec<_> = invalid
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["url", "js_api_list"]);
}
