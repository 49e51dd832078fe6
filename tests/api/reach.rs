//! Who may reach a user (docs/design.md §2 step 6): with `users = "own"` (the default) a client
//! reaches only users for whom it exchanged a code itself, and any other openid answers exactly
//! as an unknown one does; `users = "app"` reaches every user of the client's apps. And a
//! `snsapi_base` sign-in never takes away a token that can read the profile and still works
//! (for the client whose consent gave it: what each client reads is in `consent.rs`).

use std::time::Duration;

use tonic::Code;
use wxauth::proto::{ForgetUserRequest, GetUserInfoRequest, RefreshTokenRequest, ValidateTokenRequest};

use crate::both_backends;
use crate::helpers::{Backend, PASSPORT_KEY, TRADE_KEY, TestApp, authed, reason, spawn_app, spawn_app_configured};

/// Every per-user RPC as the client with `key`, for `openid` of app `mp`: the four statuses
/// (ForgetUser as its `had_token`, an error otherwise).
async fn per_user_calls(app: &TestApp, key: &str, openid: &str) -> Vec<Result<String, (Code, String, String)>> {
    let mut grpc = app.grpc.clone();
    let user = |openid: &str| (String::from("mp"), openid.to_owned());
    let (a, o) = user(openid);
    let err = |s: tonic::Status| (s.code(), reason(&s), s.message().to_owned());
    vec![
        grpc.get_user_info(authed(key, GetUserInfoRequest { app: a.clone(), openid: o.clone(), ..Default::default() }))
            .await
            .map(|r| r.into_inner().user_info.map(|u| u.openid).unwrap_or_default())
            .map_err(err),
        grpc.validate_token(authed(key, ValidateTokenRequest { app: a.clone(), openid: o.clone(), device: 0 }))
            .await
            .map(|r| r.into_inner().valid.to_string())
            .map_err(err),
        grpc.refresh_token(authed(key, RefreshTokenRequest { app: a.clone(), openid: o.clone(), device: 0 }))
            .await
            .map(|_| "refreshed".to_owned())
            .map_err(err),
        grpc.forget_user(authed(key, ForgetUserRequest { app: a, openid: o, device: 0 }))
            .await
            .map(|r| r.into_inner())
            .map(|r| format!("had_token={} forgot_for_all_clients={}", r.had_token, r.forgot_for_all_clients))
            .map_err(err),
    ]
}

async fn another_products_user_answers_as_an_unknown_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await; // passport's sign-in
    let foreign = per_user_calls(&app, TRADE_KEY, &alice.openid).await;
    let unknown = per_user_calls(&app, TRADE_KEY, "oUnknownOpenid0000000000000").await;
    assert_eq!(foreign, unknown, "no oracle: another product's user looks exactly like no user");
    assert_eq!(foreign[0], Err((Code::NotFound, "TOKEN_NOT_FOUND".to_owned(), "no token for this openid".to_owned())));
    assert_eq!(foreign[3], Ok("had_token=false forgot_for_all_clients=false".to_owned()));
    assert_eq!(app.sim.calls(wxauth::sim::Endpoint::RefreshToken), 0, "trade made wxauth call WeChat for no one");
    // trade's ForgetUser left passport's user alone.
    app.user_info(&alice.openid).await.expect("passport still reads its user");

    // Once trade signs alice in itself, it reaches her.
    let code = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_userinfo").await;
    app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await.expect("trade's own sign-in");
    let own = per_user_calls(&app, TRADE_KEY, &alice.openid).await;
    assert_eq!(own[0], Ok(alice.openid.clone()));
    assert_eq!(own[1], Ok("true".to_owned()));
    assert_eq!(own[2], Ok("refreshed".to_owned()));
    assert_eq!(own[3], Ok("had_token=true forgot_for_all_clients=false".to_owned()));
    // Forgotten for trade alone (issue 18: before, trade's ForgetUser deleted passport's
    // sign-in too): passport still reads her, trade no longer does.
    app.user_info(&alice.openid).await.expect("passport's sign-in stands");
    let gone = per_user_calls(&app, TRADE_KEY, &alice.openid).await;
    assert_eq!(gone, unknown, "trade forgot her");
}

async fn a_client_with_users_app_reaches_every_user_of_its_apps(backend: Backend) {
    // The extra config lands in the last table of the test config: [clients.trade].
    let app = spawn_app_configured(backend, "users = \"app\"").await;
    let alice = app.login("alice", "snsapi_userinfo").await; // passport's sign-in
    let calls = per_user_calls(&app, TRADE_KEY, &alice.openid).await;
    assert_eq!(calls[0], Ok(alice.openid.clone()));
    assert_eq!(calls[1], Ok("true".to_owned()));
    assert_eq!(calls[2], Ok("refreshed".to_owned()));
    assert_eq!(calls[3], Ok("had_token=true forgot_for_all_clients=true".to_owned()));
    // passport (users = "own") reached her through its own sign-in; forgotten now, for every
    // client: trade is trusted app-wide, and its answer says so.
    let gone = per_user_calls(&app, PASSPORT_KEY, &alice.openid).await;
    assert_eq!(gone[0].as_ref().map_err(|e| e.1.as_str()), Err("TOKEN_NOT_FOUND"));
}

async fn a_base_sign_in_keeps_a_working_userinfo_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    // Another product signs alice in silently (snsapi_base) a minute later.
    app.advance(Duration::from_secs(60));
    let code = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_base").await;
    let silent = app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await.expect("silent sign-in");
    assert_eq!(silent.openid, alice.openid);
    assert_eq!(silent.scopes, [wxauth::proto::Scope::SnsapiBase as i32], "it reports what this sign-in got");
    let record = app.store.get_token("mp", &alice.openid).await.expect("store").expect("record");
    assert_eq!(record.scopes, ["snsapi_userinfo"], "the profile-capable token stays");
    app.user_info(&alice.openid).await.expect("passport still reads the profile");
    // Trade's own sign-in was silent: the profile passport's consent gave is not trade's
    // (issue 18; before, trade read it too). See `consent.rs`.
    let request =
        GetUserInfoRequest { app: "mp".into(), openid: alice.openid.clone(), fresh: true, ..Default::default() };
    let refused = app.grpc.clone().get_user_info(authed(TRADE_KEY, request)).await.expect_err("not trade's consent");
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::PermissionDenied, "SCOPE_NOT_GRANTED"));
}

async fn a_base_sign_in_replaces_a_userinfo_token_that_no_longer_works(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    // Past the refresh token's 30 days: the userinfo token is dead.
    app.advance(Duration::from_secs(31 * 86400));
    let silent = app.relayed("mp", "alice", "snsapi_base").await;
    app.exchange("mp", &silent).await.expect("silent sign-in");
    let record = app.store.get_token("mp", &alice.openid).await.expect("store").expect("record");
    assert_eq!(record.scopes, ["snsapi_base"]);
    let status = app.user_info(&alice.openid).await.expect_err("a base token reads no profile");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::PermissionDenied, "SCOPE_NOT_GRANTED"));
}

both_backends!(
    another_products_user_answers_as_an_unknown_one,
    a_client_with_users_app_reaches_every_user_of_its_apps,
    a_base_sign_in_keeps_a_working_userinfo_token,
    a_base_sign_in_replaces_a_userinfo_token_that_no_longer_works,
);
