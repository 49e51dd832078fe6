//! ExchangeCode: results, idempotency (no 40163 for a repeat), and WeChat's errors mapped.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{ExchangeCodeRequest, Lang, Scope, Sex};
use wxauth::sim::{Endpoint, Fault};

use crate::both_backends;
use crate::helpers::{Backend, MP_APPID, TRADE_KEY, WEB_APPID, authed, metadata, reason, spawn_app};

async fn a_userinfo_code_yields_openid_unionid_and_expiries(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let got = app.exchange("mp", &code).await.expect("exchange");
    assert_eq!(Some(got.openid.clone()), app.sim.openid(MP_APPID, "alice"));
    assert_eq!(got.unionid, app.sim.unionid("alice"));
    assert_eq!(got.scopes, [Scope::SnsapiUserinfo as i32]);
    assert!(!got.is_snapshot_user);
    let now = app.clock.now_secs();
    assert!((got.access_token_expire_time.expect("at").seconds - now - 7200).abs() <= 2);
    assert!((got.refresh_token_expire_time.expect("rt").seconds - now - 30 * 86400).abs() <= 2);
    assert!(got.user_info.is_none());
}

async fn a_base_code_has_no_unionid_and_snapshot_users_are_flagged(backend: Backend) {
    let app = spawn_app(backend).await;
    let base = app.login("bob", "snsapi_base").await;
    assert_eq!(base.unionid, "");
    assert!(!base.is_snapshot_user);
    let snap = app.login("snap", "snsapi_base").await;
    assert!(snap.is_snapshot_user);
}

async fn include_user_info_returns_the_profile_in_the_asked_language(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(WEB_APPID, "alice", "snsapi_login");
    let request =
        ExchangeCodeRequest { app: "web".into(), code, include_user_info: true, lang: Lang::En as i32, device: 0 };
    let got = app.grpc.clone().exchange_code(app.req(request)).await.expect("exchange").into_inner();
    let profile = got.user_info.expect("profile");
    assert_eq!(profile.openid, got.openid);
    assert_eq!(profile.sex, Sex::Female as i32);
    assert_eq!(profile.unionid, app.sim.unionid("alice"));
    assert_eq!(profile.country, "CN");
    assert!(!profile.nickname.is_empty());

    // snsapi_base grants no profile: the exchange still succeeds, without one.
    let code = app.code(MP_APPID, "bob", "snsapi_base");
    let request = ExchangeCodeRequest { app: "mp".into(), code, include_user_info: true, ..Default::default() };
    let got = app.grpc.clone().exchange_code(app.req(request)).await.expect("exchange").into_inner();
    assert!(got.user_info.is_none());
}

async fn the_same_code_exchanged_again_returns_the_same_result(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let first = app.exchange("mp", &code).await.expect("first");
    let again = app.exchange("mp", &code).await.expect("a reload, a retry: no 40163");
    assert_eq!(first, again);
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1, "WeChat saw the code once");
    // Still within the code's life (5 minutes).
    app.advance(Duration::from_secs(240));
    assert_eq!(app.exchange("mp", &code).await.expect("later"), first);
}

async fn a_recorded_result_answers_only_the_client_that_exchanged(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    app.exchange("mp", &code).await.expect("passport exchanges");
    let request = ExchangeCodeRequest { app: "mp".into(), code, ..Default::default() };
    let status = app.grpc.clone().exchange_code(authed(TRADE_KEY, request)).await.expect_err("not trade's code");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "CODE_USED"));
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1);
}

async fn concurrent_exchanges_of_one_code_make_one_wechat_call(backend: Backend) {
    let app = spawn_app(backend).await;
    app.sim.inject(Endpoint::AccessToken, Fault::Delay(Duration::from_millis(200)), 1);
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let calls = (0..20).map(|_| app.exchange("mp", &code));
    let results = futures::future::join_all(calls).await;
    let first = results[0].clone().expect("ok");
    for r in results {
        assert_eq!(r.expect("every double submit succeeds"), first);
    }
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1);
}

async fn wechat_code_errors_map_to_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app.exchange("mp", "notARealCode0000000000000000000").await.expect_err("unknown");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "INVALID_CODE"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("40029"));

    let code = app.code(MP_APPID, "alice", "snsapi_base");
    app.advance(Duration::from_secs(301));
    let status = app.exchange("mp", &code).await.expect_err("expired");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "CODE_EXPIRED"));

    // A code someone else (another SDK, a leaked proxy) already used at WeChat.
    let code = app.code(MP_APPID, "alice", "snsapi_base");
    let url = format!(
        "http://{}/sns/oauth2/access_token?appid={MP_APPID}&secret=demo-mp-secret&code={code}&grant_type=authorization_code",
        app.sim_addr
    );
    let direct: serde_json::Value = app.http.get(url).send().await.expect("sim").json().await.expect("json");
    assert!(direct.get("openid").is_some());
    let status = app.exchange("mp", &code).await.expect_err("used");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "CODE_USED"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("40163"));

    // A code of another app.
    let code = app.code(WEB_APPID, "alice", "snsapi_login");
    let status = app.exchange("mp", &code).await.expect_err("other app");
    assert_eq!(reason(&status), "INVALID_CODE");
}

async fn upstream_failures_map_as_the_design_table_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let cases = [
        (Fault::Errcode(45011), Code::ResourceExhausted, "WECHAT_RATE_LIMITED", true),
        (Fault::Errcode(45009), Code::ResourceExhausted, "WECHAT_RATE_LIMITED", true),
        (Fault::Errcode(40125), Code::FailedPrecondition, "APP_MISCONFIGURED", false),
        (Fault::Errcode(40013), Code::FailedPrecondition, "APP_MISCONFIGURED", false),
        (Fault::Errcode(41004), Code::FailedPrecondition, "APP_MISCONFIGURED", false),
        (Fault::Errcode(-1), Code::Unavailable, "WECHAT_UNAVAILABLE", true),
        (Fault::HttpStatus(502), Code::Unavailable, "WECHAT_UNAVAILABLE", true),
        (Fault::BadJson, Code::Unavailable, "WECHAT_UNAVAILABLE", true),
        (Fault::Delay(Duration::from_secs(3)), Code::Unavailable, "WECHAT_UNAVAILABLE", true),
        (Fault::Errcode(40003), Code::Unknown, "WECHAT_ERROR", false),
    ];
    for (fault, code, expected_reason, retry) in cases {
        let label = format!("{fault:?}");
        let wechat_code = app.code(MP_APPID, "alice", "snsapi_base");
        app.sim.inject(Endpoint::AccessToken, fault.clone(), 1);
        let status = app.exchange("mp", &wechat_code).await.expect_err(&label);
        assert_eq!((status.code(), reason(&status).as_str()), (code, expected_reason), "{label}");
        assert_eq!(status.get_error_details().retry_info().is_some(), retry, "{label}");
        // The fault came before WeChat used the code: the failed exchange left no claim
        // behind, so the caller's retry goes through.
        if !matches!(fault, Fault::Delay(_)) {
            app.exchange("mp", &wechat_code).await.expect(&label);
        }
    }
}

async fn an_invalid_code_field_is_refused_before_any_call(backend: Backend) {
    let app = spawn_app(backend).await;
    for code in ["", "has space", &"c".repeat(257), "ünïcode"] {
        let status = app.exchange("mp", code).await.expect_err(code);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.get_error_details().bad_request().expect("BadRequest").field_violations[0].field, "code");
    }
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 0);
}

both_backends!(
    a_userinfo_code_yields_openid_unionid_and_expiries,
    a_base_code_has_no_unionid_and_snapshot_users_are_flagged,
    include_user_info_returns_the_profile_in_the_asked_language,
    the_same_code_exchanged_again_returns_the_same_result,
    a_recorded_result_answers_only_the_client_that_exchanged,
    concurrent_exchanges_of_one_code_make_one_wechat_call,
    wechat_code_errors_map_to_invalid_argument,
    upstream_failures_map_as_the_design_table_says,
    an_invalid_code_field_is_refused_before_any_call,
);
