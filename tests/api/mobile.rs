//! ExchangeMobileCode: a mobile app's SDK code signs the user in with tokens kept like a web
//! sign-in's; the code works once (CODE_USED after, without asking WeChat); concurrent
//! duplicates make one WeChat call, and a code serves one client (issue 18, finding 5);
//! WeChat's refusals and lost answers are mapped.

use std::time::Duration;

use tonic::Code;
use wxauth::proto::{self, Scope};
use wxauth::sim::{Endpoint, Fault};

use crate::both_backends;
use crate::helpers::{APP_APPID, Backend, PASSPORT_KEY, TRADE_KEY, reason, spawn_app, spawn_app_configured};

async fn a_mobile_code_signs_the_user_in_with_tokens_kept_like_a_web_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let got = app.mobile_login("alice").await;
    assert_eq!(Some(got.openid.clone()), app.sim.openid(APP_APPID, "alice"));
    assert_eq!(got.unionid, app.sim.unionid("alice"));
    assert_eq!(got.scopes, [Scope::SnsapiUserinfo as i32]);
    let now = app.clock.now_secs();
    assert!((got.access_token_expire_time.expect("at").seconds - now - 7200).abs() <= 2);

    let user = |openid: &str| proto::GetUserInfoRequest {
        app: "app".into(),
        openid: openid.into(),
        fresh: true,
        ..Default::default()
    };
    let info = app.grpc.clone().get_user_info(app.req(user(&got.openid))).await.expect("userinfo").into_inner();
    assert_eq!(info.user_info.expect("profile").unionid, got.unionid, "mobile tokens read sns/userinfo");
    let refresh = proto::RefreshTokenRequest { app: "app".into(), openid: got.openid.clone(), device: 0 };
    app.grpc.clone().refresh_token(app.req(refresh)).await.expect("refreshed");
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1);

    let forget = proto::ForgetUserRequest { app: "app".into(), openid: got.openid.clone(), device: 0 };
    assert!(app.grpc.clone().forget_user(app.req(forget)).await.expect("forget").into_inner().had_token);
    let gone = app.grpc.clone().get_user_info(app.req(user(&got.openid))).await.expect_err("forgotten");
    assert_eq!(reason(&gone), "TOKEN_NOT_FOUND");
}

async fn a_second_exchange_of_a_mobile_code_is_code_used_without_asking_wechat(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(APP_APPID, "alice", "snsapi_userinfo");
    app.exchange_mobile_as(PASSPORT_KEY, &code).await.expect("first");

    let again = app.exchange_mobile_as(PASSPORT_KEY, &code).await.expect_err("no replay window");

    assert_eq!((again.code(), reason(&again).as_str()), (Code::InvalidArgument, "CODE_USED"));
    assert!(crate::helpers::metadata(&again, "errcode").is_none(), "WeChat was not asked");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1);
}

async fn concurrent_exchanges_of_one_mobile_code_make_one_wechat_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(APP_APPID, "bob", "snsapi_userinfo");
    app.sim.inject(Endpoint::AccessToken, Fault::Delay(Duration::from_millis(300)), 1);

    let calls = (0..8).map(|_| app.exchange_mobile_as(PASSPORT_KEY, &code));
    let results = futures::future::join_all(calls).await;

    let openids: Vec<String> =
        results.into_iter().map(|r| r.expect("every duplicate gets the result").openid).collect();
    assert!(openids.iter().all(|o| Some(o) == app.sim.openid(APP_APPID, "bob").as_ref()));
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1, "one WeChat call");
}

async fn wechats_refusals_are_mapped_and_a_lost_answer_asks_for_a_new_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let invalid = app.exchange_mobile_as(PASSPORT_KEY, "made-up-code").await.expect_err("40029");
    assert_eq!(reason(&invalid), "INVALID_CODE");
    let retried = app.exchange_mobile_as(PASSPORT_KEY, "made-up-code").await.expect_err("40029 again");
    assert_eq!(reason(&retried), "INVALID_CODE", "a refused code's claim is released: WeChat answers again");

    let code = app.code(APP_APPID, "alice", "snsapi_userinfo");
    app.sim.inject(Endpoint::AccessToken, Fault::AfterWork(Box::new(Fault::HttpStatus(502))), 1);
    let lost = app.exchange_mobile_as(PASSPORT_KEY, &code).await.expect_err("answer lost");
    assert_eq!((lost.code(), reason(&lost).as_str()), (Code::FailedPrecondition, "SIGN_IN_AGAIN"));
    let calls = app.sim.calls(Endpoint::AccessToken);
    let again = app.exchange_mobile_as(PASSPORT_KEY, &code).await.expect_err("still lost");
    assert_eq!(reason(&again), "SIGN_IN_AGAIN");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), calls, "never retried against WeChat");
}

async fn only_mobile_apps_the_client_may_use_take_mobile_codes(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(APP_APPID, "alice", "snsapi_userinfo");
    let request = proto::ExchangeMobileCodeRequest { app: "mp".into(), code: code.clone(), ..Default::default() };
    let wrong_kind = app.grpc.clone().exchange_mobile_code(app.req(request)).await.expect_err("not a mobile app");
    assert_eq!(wrong_kind.code(), Code::InvalidArgument);
    let other = app.exchange_mobile_as(TRADE_KEY, &code).await.expect_err("trade may not use `app`");
    assert_eq!(reason(&other), "APP_NOT_ALLOWED");
    let empty = app.exchange_mobile_as(PASSPORT_KEY, "").await.expect_err("empty code");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 0);

    let flow = proto::BuildAuthorizeUrlRequest {
        app: "app".into(),
        return_url: "https://passport.example.com/login/".into(),
        ..Default::default()
    };
    let no_page = app.grpc.clone().build_authorize_url(app.req(flow)).await.expect_err("no authorize page");
    assert_eq!(no_page.code(), Code::InvalidArgument);
}

/// A third client, `shop`, that may use the mobile app `app` as `passport` does.
const SHOP_KEY: &str = "shop-test-key";

fn with_shop() -> String {
    let digest = hex::encode(wxauth::config::key_digest(SHOP_KEY));
    format!(
        "[clients.shop]\nkey_sha256 = \"{digest}\"\napps = [\"app\"]\nreturn_urls = [\"https://shop.example.com/\"]\nrate_limits = {{ authorize = \"off\", exchange = \"off\", user = \"off\" }}\n"
    )
}

async fn one_mobile_code_serves_one_client_even_when_two_exchange_it_at_once(backend: Backend) {
    let app = spawn_app_configured(backend, &with_shop()).await;
    let code = app.code(APP_APPID, "bob", "snsapi_userinfo");
    // WeChat answers slowly: the second exchange finds the first's claim and waits on it.
    app.sim.inject(Endpoint::AccessToken, Fault::Delay(Duration::from_millis(300)), 1);

    let (passport, shop) =
        tokio::join!(app.exchange_mobile_as(PASSPORT_KEY, &code), app.exchange_mobile_as(SHOP_KEY, &code));

    let (won, lost, loser_key) = match (passport, shop) {
        (Ok(won), Err(lost)) => (won, lost, SHOP_KEY),
        (Err(lost), Ok(won)) => (won, lost, PASSPORT_KEY),
        other => panic!("exactly one client may have the code: {other:?}"),
    };
    assert_eq!(Some(won.openid), app.sim.openid(APP_APPID, "bob"));
    assert_eq!((lost.code(), reason(&lost).as_str()), (Code::InvalidArgument, "CODE_USED"));
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1, "WeChat is called once");
    // The same refusal as that client's exchange of the spent code a moment later.
    let later = app.exchange_mobile_as(loser_key, &code).await.expect_err("spent");
    assert_eq!((later.code(), reason(&later)), (lost.code(), reason(&lost)));
    assert_eq!(later.message(), lost.message());
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let text = scrape.text().await.expect("metrics");
    let loser = if loser_key == SHOP_KEY { "shop" } else { "passport" };
    let series = format!("wxauth_consent_refusals_total{{client=\"{loser}\",reason=\"code_of_another_client\"}} 1");
    assert!(text.lines().any(|l| l == series), "the refusal is counted: {series}");
}

both_backends!(
    one_mobile_code_serves_one_client_even_when_two_exchange_it_at_once,
    a_mobile_code_signs_the_user_in_with_tokens_kept_like_a_web_sign_in,
    a_second_exchange_of_a_mobile_code_is_code_used_without_asking_wechat,
    concurrent_exchanges_of_one_mobile_code_make_one_wechat_call,
    wechats_refusals_are_mapped_and_a_lost_answer_asks_for_a_new_sign_in,
    only_mobile_apps_the_client_may_use_take_mobile_codes,
);
