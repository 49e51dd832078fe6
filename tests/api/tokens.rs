//! GetUserInfo, RefreshToken, ValidateToken: stored tokens kept fresh, dead ones handled.

use std::time::Duration;

use tonic::Code;
use wxauth::proto::{GetUserInfoRequest, Lang, RefreshTokenRequest, ValidateTokenRequest};
use wxauth::sim::{Endpoint, Fault};

use crate::both_backends;
use crate::helpers::{Backend, metadata, reason, spawn_app};

async fn get_user_info_uses_the_stored_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let request =
        GetUserInfoRequest { app: "mp".into(), openid: login.openid.clone(), lang: Lang::ZhTw as i32, device: 0 };
    let profile =
        app.grpc.clone().get_user_info(app.req(request)).await.expect("ok").into_inner().user_info.expect("profile");
    assert_eq!(profile.openid, login.openid);
    assert_eq!(profile.unionid, login.unionid);
    assert_eq!(profile.country, "中國");
    assert!(profile.head_image_url.starts_with("https://"));
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 0);
}

async fn a_token_about_to_expire_is_refreshed_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.advance(Duration::from_secs(7200 - 120)); // inside the 5-minute margin
    app.user_info(&login.openid).await.expect("profile");
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1);
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1, "no failed call first");
    app.user_info(&login.openid).await.expect("profile");
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1, "the new token is used");
}

async fn a_token_wechat_calls_expired_is_refreshed_once_and_retried(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    // WeChat's clock runs ahead of ours: the record thinks the token alive, WeChat says 42001.
    app.sim.advance(Duration::from_secs(7201));
    let profile = app.user_info(&login.openid).await.expect("refreshed and retried");
    assert_eq!(profile.openid, login.openid);
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1);
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2);
    // 40001 / 40014 are treated alike.
    for errcode in [40001, 40014] {
        app.sim.inject(Endpoint::UserInfo, Fault::Errcode(errcode), 1);
        app.user_info(&login.openid).await.expect("refreshed and retried");
    }
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 3);
}

async fn refresh_token_forces_a_refresh(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.advance(Duration::from_secs(1000));
    let request = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let refreshed = app.grpc.clone().refresh_token(app.req(request)).await.expect("ok").into_inner();
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1);
    let new_expiry = refreshed.access_token_expire_time.expect("expiry").seconds;
    assert!(new_expiry > login.access_token_expire_time.expect("old").seconds + 900);
    assert_eq!(refreshed.refresh_token_expire_time, login.refresh_token_expire_time, "same refresh token, same life");
    app.user_info(&login.openid).await.expect("the new token works");
}

async fn a_dead_refresh_token_deletes_the_record_and_asks_for_reauthorization(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.advance(Duration::from_secs(30 * 86400 - 3600)); // the record still exists, the token is old
    app.sim.advance(Duration::from_secs(7200)); // WeChat: refresh token now past 30 days
    let status = app.user_info(&login.openid).await.expect_err("dead");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("42002"));
    let status = app.user_info(&login.openid).await.expect_err("gone");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "TOKEN_NOT_FOUND"));

    // 40030 (WeChat revoked it early, as users report) is handled the same way.
    let login = app.login("bob", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::RefreshToken, Fault::Errcode(40030), 1);
    let request = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let status = app.grpc.clone().refresh_token(app.req(request)).await.expect_err("revoked");
    assert_eq!(reason(&status), "REAUTHORIZATION_REQUIRED");
    assert_eq!(reason(&app.user_info(&login.openid).await.expect_err("gone")), "TOKEN_NOT_FOUND");
}

async fn profile_needs_a_profile_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("bob", "snsapi_base").await;
    let status = app.user_info(&login.openid).await.expect_err("base");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::PermissionDenied, "SCOPE_NOT_GRANTED"));
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 0, "refused without asking WeChat");

    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::UserInfo, Fault::Errcode(48001), 1);
    let status = app.user_info(&login.openid).await.expect_err("48001");
    assert_eq!(reason(&status), "SCOPE_NOT_GRANTED");
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("48001"));
}

async fn unknown_users_and_bad_openids_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let status = app.user_info("oUnknownUser000000000000000").await.expect_err("none");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "TOKEN_NOT_FOUND"));
    for openid in ["", "a/b", "o:1", &"o".repeat(65)] {
        let status = app.user_info(openid).await.expect_err(openid);
        assert_eq!(status.code(), Code::InvalidArgument, "{openid:?}");
    }
}

async fn transient_upstream_errors_are_retried_for_reads(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::UserInfo, Fault::HttpStatus(503), 2);
    app.user_info(&login.openid).await.expect("third attempt succeeds");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 3);
    app.sim.inject(Endpoint::UserInfo, Fault::Errcode(-1), 3);
    let status = app.user_info(&login.openid).await.expect_err("bounded retries");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "WECHAT_UNAVAILABLE"));
}

async fn validate_token_reports_wechats_verdict(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_base").await;
    let request = || ValidateTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let valid = app.grpc.clone().validate_token(app.req(request())).await.expect("ok").into_inner();
    assert!(valid.valid);
    assert_eq!(valid.errcode, 0);
    assert_eq!(valid.access_token_expire_time, login.access_token_expire_time);
    app.sim.advance(Duration::from_secs(7201));
    let expired = app.grpc.clone().validate_token(app.req(request())).await.expect("ok").into_inner();
    assert!(!expired.valid);
    assert_eq!(expired.errcode, 42001);
    assert_eq!(app.sim.calls(Endpoint::Auth), 2);
}

both_backends!(
    get_user_info_uses_the_stored_token,
    a_token_about_to_expire_is_refreshed_first,
    a_token_wechat_calls_expired_is_refreshed_once_and_retried,
    refresh_token_forces_a_refresh,
    a_dead_refresh_token_deletes_the_record_and_asks_for_reauthorization,
    profile_needs_a_profile_scope,
    unknown_users_and_bad_openids_are_refused,
    transient_upstream_errors_are_retried_for_reads,
    validate_token_reports_wechats_verdict,
);
