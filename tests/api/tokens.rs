//! GetUserInfo, RefreshToken, ValidateToken: stored tokens kept fresh, dead ones handled.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{
    ExchangeCodeRequest, ForgetUserRequest, GetUserInfoRequest, Lang, RefreshTokenRequest, ValidateTokenRequest,
};
use wxauth::sim::{Endpoint, Fault};

use crate::both_backends;
use crate::helpers::{Backend, Relayed, TestApp, eventually, metadata, reason, spawn_app, spawn_app_configured};

async fn get_user_info_uses_the_stored_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let request = GetUserInfoRequest {
        app: "mp".into(),
        openid: login.openid.clone(),
        lang: Lang::ZhTw as i32,
        ..Default::default()
    };
    let profile =
        app.grpc.clone().get_user_info(app.req(request)).await.expect("ok").into_inner().user_info.expect("profile");
    assert_eq!(profile.openid, login.openid);
    assert_eq!(profile.unionid, login.unionid);
    assert_eq!(profile.country, "", "WeChat gives no region since 2021-10-20");
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

async fn get_user_info_answers_from_the_profile_cache_until_it_is_old(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let first = app.profile(&login.openid, Lang::ZhCn, false).await.expect("first");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1);
    app.advance(Duration::from_secs(60));
    let cached = app.profile(&login.openid, Lang::ZhCn, false).await.expect("cached");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1, "answered without WeChat");
    assert_eq!(cached, first, "same profile, same fetch time");
    let fetched_at = first.fetch_time.expect("fetch_time").seconds;

    // Each lang is cached on its own (WeChat's lang changed only the region names, which it no
    // longer gives: the profiles are alike).
    let english = app.profile(&login.openid, Lang::En, false).await.expect("en");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2);
    assert_eq!(english.user_info, first.user_info);

    // `fresh` asks WeChat, and what it answers is cached from then on.
    let fresh = app.profile(&login.openid, Lang::ZhCn, true).await.expect("fresh");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 3);
    // The service clock is real time plus the advances: a real second may tick between calls.
    let fresh_at = fresh.fetch_time.expect("fetch_time").seconds;
    assert!((fetched_at + 60..=fetched_at + 61).contains(&fresh_at), "{fresh_at} vs {fetched_at}");
    assert_eq!(app.profile(&login.openid, Lang::ZhCn, false).await.expect("cached"), fresh);
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 3);

    // Five minutes (the default) after it was fetched, the profile is asked for again.
    app.advance(Duration::from_secs(240));
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("still cached");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 3);
    app.advance(Duration::from_secs(61));
    let renewed = app.profile(&login.openid, Lang::ZhCn, false).await.expect("renewed");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 4);
    assert!(renewed.fetch_time.expect("fetch_time").seconds >= fresh_at + 300);
}

async fn exchange_with_the_profile_fills_the_cache(backend: Backend) {
    let app = spawn_app(backend).await;
    let Relayed { flow_id, code } = app.relayed("mp", "alice", "snsapi_userinfo").await;
    let request = ExchangeCodeRequest { flow_id, code, include_user_info: true, ..Default::default() };
    let exchanged = app.grpc.clone().exchange_code(app.req(request)).await.expect("exchange").into_inner();
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1);
    let cached = app.profile(&exchanged.openid, Lang::Unspecified, false).await.expect("cached");
    assert_eq!(cached.user_info, exchanged.user_info);
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1, "the product's usual ExchangeCode + GetUserInfo: one call");
}

async fn a_new_sign_in_fetches_the_profile_anew_and_a_replay_does_not(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.profile(&login.openid, Lang::Unspecified, false).await.expect("cached");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 1);
    let code = app.relayed("mp", "alice", "snsapi_userinfo").await;
    let request = || ExchangeCodeRequest {
        flow_id: code.flow_id.clone(),
        code: code.code.clone(),
        include_user_info: true,
        ..Default::default()
    };
    let signed_in = app.grpc.clone().exchange_code(app.req(request())).await.expect("exchange").into_inner();
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2, "a new sign-in asks WeChat despite the cached profile");
    let replayed = app.grpc.clone().exchange_code(app.req(request())).await.expect("replay").into_inner();
    assert_eq!(replayed.user_info, signed_in.user_info);
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2, "the replay answers from the cache");
}

async fn a_user_who_must_authorize_again_has_no_cached_profile(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("cached");
    app.profile(&login.openid, Lang::En, false).await.expect("cached");
    app.sim.inject(Endpoint::RefreshToken, Fault::Errcode(40030), 1);
    let request = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let status = app.grpc.clone().refresh_token(app.req(request)).await.expect_err("revoked");
    assert_eq!(reason(&status), "REAUTHORIZATION_REQUIRED");
    for lang in [Lang::ZhCn, Lang::En] {
        let status = app.profile(&login.openid, lang, false).await.expect_err("no profile either");
        assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "TOKEN_NOT_FOUND"));
    }
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2);
}

async fn the_profile_cache_can_be_turned_off(backend: Backend) {
    let app = spawn_app_configured(backend, "[token]\nprofile_cache = \"0s\"").await;
    let login = app.login("alice", "snsapi_userinfo").await;
    for _ in 0..3 {
        app.profile(&login.openid, Lang::ZhCn, false).await.expect("profile");
    }
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 3);
}

async fn the_profile_cache_keeps_answering_when_the_apps_quota_is_spent(backend: Backend) {
    let app = spawn_app(backend).await;
    app.sim.set_minute_quota(Endpoint::UserInfo, Some(2)); // WeChat's is 50,000 a minute per app
    let login = app.login("alice", "snsapi_userinfo").await;
    for _ in 0..20 {
        app.profile(&login.openid, Lang::ZhCn, false).await.expect("from the cache after the first");
    }
    app.profile(&login.openid, Lang::ZhCn, true).await.expect("the quota's second call");
    let status = app.profile(&login.openid, Lang::ZhCn, true).await.expect_err("quota spent");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "WECHAT_RATE_LIMITED"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("45011"));
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("the cached profile still answers");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 3, "45011 is not retried");
}

/// 45009 is a daily quota: the caller learns it as its own reason, without RetryInfo (a retry
/// a second later meets the same quota), and the cached profile still answers (issue 20).
async fn a_spent_daily_quota_is_its_own_reason_without_retry_info(backend: Backend) {
    let app = spawn_app(backend).await;
    app.sim.set_daily_quota(Endpoint::UserInfo, Some(1));
    let login = app.login("alice", "snsapi_userinfo").await;
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("the day's one call");
    let status = app.profile(&login.openid, Lang::ZhCn, true).await.expect_err("the day's quota is spent");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::ResourceExhausted, "WECHAT_DAILY_QUOTA_EXHAUSTED"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("45009"));
    assert!(status.get_error_details().retry_info().is_none(), "no RetryInfo: not a second's wait");
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("the cached profile still answers");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2, "45009 is not retried");
}

async fn forget_user_deletes_the_record_and_the_cached_profiles(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("cached");
    app.profile(&login.openid, Lang::En, false).await.expect("cached");
    let forget = || ForgetUserRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let forgotten = app.grpc.clone().forget_user(app.req(forget())).await.expect("forgotten").into_inner();
    assert!(forgotten.had_token);
    for lang in [Lang::ZhCn, Lang::En] {
        let status = app.profile(&login.openid, lang, false).await.expect_err("no cached profile either");
        assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "TOKEN_NOT_FOUND"));
    }
    let again = app.grpc.clone().forget_user(app.req(forget())).await.expect("idempotent").into_inner();
    assert!(!again.had_token, "nothing left to forget");
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 2);
    // The user can sign in again afterwards.
    app.login("alice", "snsapi_userinfo").await;
    app.profile(&login.openid, Lang::ZhCn, false).await.expect("a new record");
}

async fn a_refresh_under_way_cannot_bring_a_forgotten_user_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_millis(300)), 1);
    let refresh = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let refreshing = tokio::spawn({
        let (mut grpc, request) = (app.grpc.clone(), app.req(refresh));
        async move { grpc.refresh_token(request).await }
    });
    // The refresh holds the user's lock once WeChat has its call.
    assert!(eventually(async || app.sim.calls(Endpoint::RefreshToken) == 1).await);
    let forget = ForgetUserRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let forgotten = app.grpc.clone().forget_user(app.req(forget)).await.expect("forgotten").into_inner();
    assert!(forgotten.had_token);
    refreshing.await.expect("join").expect("the refresh finished before the deletion");
    let status = app.profile(&login.openid, Lang::ZhCn, true).await.expect_err("forgotten");
    assert_eq!(reason(&status), "TOKEN_NOT_FOUND", "the refresh did not write the record back");
}

/// A RefreshToken that outlives its lock: the lock made 300 ms, WeChat's answer held 1.5 s;
/// returns once the refresh has reached WeChat.
async fn slow_refresh(
    app: &TestApp,
    openid: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<wxauth::proto::RefreshTokenResponse>, tonic::Status>> {
    app.tokens.set_lock_ttl(Duration::from_millis(300));
    app.sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_millis(1500)), 1);
    let refresh = RefreshTokenRequest { app: "mp".into(), openid: openid.to_owned(), device: 0 };
    let refreshing = tokio::spawn({
        let (mut grpc, request) = (app.grpc.clone(), app.req(refresh));
        async move { grpc.refresh_token(request).await }
    });
    assert!(eventually(async || app.sim.calls(Endpoint::RefreshToken) == 1).await);
    refreshing
}

/// A refresh slower than its lock's life (the lock made short here): ForgetUser takes the
/// expired lock and deletes the user while WeChat still works on the refresh, and the refresh's
/// compare-and-write then finds the record gone and writes nothing.
async fn a_refresh_that_outlives_its_lock_cannot_bring_a_forgotten_user_back(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let refreshing = slow_refresh(&app, &login.openid).await;

    let forget = ForgetUserRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let forgotten = app.grpc.clone().forget_user(app.req(forget)).await.expect("forgotten").into_inner();
    assert!(forgotten.had_token);
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1, "forgotten while WeChat still worked on the refresh");
    let status = refreshing.await.expect("join").expect_err("nothing left to refresh");

    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "TOKEN_NOT_FOUND"));
    assert_eq!(app.store.get_token("mp", &login.openid).await.expect("store"), None, "the record stays gone");
    assert_eq!(app.tokens.refreshes("superseded"), 1);
}

/// A refresh slower than its lock's life cannot overwrite a new sign-in made meanwhile: here
/// the user signed in again with more scope, which the old refresh token's result would undo.
async fn a_refresh_that_outlives_its_lock_cannot_overwrite_a_new_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_base").await;
    let refreshing = slow_refresh(&app, &login.openid).await;

    app.login("alice", "snsapi_userinfo").await;
    let signed_in = app.store.get_token("mp", &login.openid).await.expect("store").expect("record");
    let answered = refreshing.await.expect("join").expect("answered with the new sign-in's record").into_inner();

    let stored = app.store.get_token("mp", &login.openid).await.expect("store").expect("record");
    assert_eq!(stored, signed_in, "the old refresh token's result did not overwrite the new sign-in");
    assert_eq!(answered.access_token_expire_time.map(|t| t.seconds), Some(signed_in.access_expires_at));
    app.user_info(&login.openid).await.expect("the userinfo scope of the new sign-in still works");
    assert_eq!(app.tokens.refreshes("superseded"), 1);
}

async fn a_profile_fetched_while_the_user_is_forgotten_is_not_cached(backend: Backend) {
    let app = spawn_app(backend).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::UserInfo, Fault::Delay(Duration::from_millis(300)), 1);
    let fetching = tokio::spawn({
        let (mut grpc, openid) = (app.grpc.clone(), login.openid.clone());
        let request = GetUserInfoRequest { app: "mp".into(), openid, fresh: true, ..Default::default() };
        let request = app.req(request);
        async move { grpc.get_user_info(request).await }
    });
    assert!(eventually(async || app.sim.calls(Endpoint::UserInfo) == 1).await);
    let forget = ForgetUserRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    app.grpc.clone().forget_user(app.req(forget)).await.expect("forgotten");
    fetching.await.expect("join").expect("asked before the user was forgotten");
    let status = app.profile(&login.openid, Lang::Unspecified, false).await.expect_err("nothing cached");
    assert_eq!(reason(&status), "TOKEN_NOT_FOUND");
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
    get_user_info_answers_from_the_profile_cache_until_it_is_old,
    exchange_with_the_profile_fills_the_cache,
    a_new_sign_in_fetches_the_profile_anew_and_a_replay_does_not,
    a_user_who_must_authorize_again_has_no_cached_profile,
    the_profile_cache_can_be_turned_off,
    the_profile_cache_keeps_answering_when_the_apps_quota_is_spent,
    a_spent_daily_quota_is_its_own_reason_without_retry_info,
    forget_user_deletes_the_record_and_the_cached_profiles,
    a_refresh_under_way_cannot_bring_a_forgotten_user_back,
    a_refresh_that_outlives_its_lock_cannot_bring_a_forgotten_user_back,
    a_refresh_that_outlives_its_lock_cannot_overwrite_a_new_sign_in,
    a_profile_fetched_while_the_user_is_forgotten_is_not_cached,
);
