//! Consent belongs to the product it was given to (issue 18, finding 2). Product A (`passport`)
//! signs alice in with `snsapi_userinfo`: she sees WeChat's consent page for A. Product B
//! (`trade`) then signs her in silently (`snsapi_base`). Before, B read her nickname, avatar and
//! unionid, found her accounts, was told `SCOPE_SNSAPI_USERINFO` by RefreshToken, and its
//! ForgetUser deleted A's sign-in. Each of the five is reversed here: what a client reads
//! follows from its own sign-ins.

use std::time::Duration;

use tonic::Code;
use wxauth::proto::{
    self, ExchangeCodeRequest, ForgetUserRequest, GetUserInfoRequest, RefreshTokenRequest, Scope, ValidateTokenRequest,
};
use wxauth::wechat::Lang;

use crate::both_backends;
use crate::helpers::{Backend, PASSPORT_KEY, TRADE_KEY, TestApp, authed, reason, spawn_app};

/// GetUserInfo of `openid` in `mp` as the client with `key`.
async fn user_info_as(app: &TestApp, key: &str, openid: &str, fresh: bool) -> Result<proto::UserInfo, tonic::Status> {
    let request = GetUserInfoRequest { app: "mp".into(), openid: openid.into(), fresh, ..Default::default() };
    let answer = app.grpc.clone().get_user_info(authed(key, request)).await?;
    Ok(answer.into_inner().user_info.expect("user_info"))
}

async fn refresh_scopes_as(app: &TestApp, key: &str, openid: &str) -> Vec<i32> {
    let request = RefreshTokenRequest { app: "mp".into(), openid: openid.into(), device: 0 };
    app.grpc.clone().refresh_token(authed(key, request)).await.expect("refresh").into_inner().scopes
}

async fn validate_scopes_as(app: &TestApp, key: &str, openid: &str) -> Vec<i32> {
    let request = ValidateTokenRequest { app: "mp".into(), openid: openid.into(), device: 0 };
    app.grpc.clone().validate_token(authed(key, request)).await.expect("validate").into_inner().scopes
}

async fn forget_as(app: &TestApp, key: &str, openid: &str) -> proto::ForgetUserResponse {
    let request = ForgetUserRequest { app: "mp".into(), openid: openid.into(), device: 0 };
    app.grpc.clone().forget_user(authed(key, request)).await.expect("forget").into_inner()
}

/// B's silent sign-in of alice, asking for the profile with the answer.
async fn silent_sign_in_by_trade(app: &TestApp, user: &str) -> proto::ExchangeCodeResponse {
    let code = app.relayed_as(TRADE_KEY, "mp", user, "snsapi_base").await;
    let request = ExchangeCodeRequest {
        app: "mp".into(),
        flow_id: code.flow_id,
        code: code.code,
        include_user_info: true,
        ..Default::default()
    };
    app.grpc.clone().exchange_code(authed(TRADE_KEY, request)).await.expect("silent sign-in").into_inner()
}

/// `wxauth_consent_refusals_total` of `trade` for `reason`, from a real scrape.
async fn consent_refusals(app: &TestApp, reason: &str) -> f64 {
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let text = scrape.text().await.expect("metrics");
    let series = format!("wxauth_consent_refusals_total{{client=\"trade\",reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

async fn a_silent_sign_in_reads_nothing_another_products_consent_gave(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await; // A: consent page
    assert!(!alice.unionid.is_empty());
    let cached = app.profile(&alice.openid, proto::Lang::Unspecified, false).await.expect("A reads her profile");
    assert_eq!(cached.user_info.expect("profile").unionid, alice.unionid, "and the cache now holds it");
    app.advance(Duration::from_secs(60));

    let silent = silent_sign_in_by_trade(&app, "alice").await; // B: no page at all

    // 1. No profile, through the cache or from WeChat: B must ask alice itself.
    assert_eq!(silent.openid, alice.openid);
    assert!(silent.user_info.is_none(), "B's own grant reads no profile");
    for fresh in [false, true] {
        let refused = user_info_as(&app, TRADE_KEY, &alice.openid, fresh).await.expect_err("not B's consent");
        assert_eq!((refused.code(), reason(&refused).as_str()), (Code::PermissionDenied, "SCOPE_NOT_GRANTED"));
    }
    // 2. No unionid, nowhere.
    assert_eq!(silent.unionid, "", "B's answer carries no unionid");
    // 3. FindAccounts by her unionid finds nothing for B.
    let found = app.find_accounts_as(TRADE_KEY, &alice.unionid).await.expect("find");
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(app.find_accounts_as(PASSPORT_KEY, &alice.unionid).await.expect("find").len(), 1, "A finds her");
    // 4. RefreshToken and ValidateToken report B's own scopes; A's stay A's.
    assert_eq!(refresh_scopes_as(&app, TRADE_KEY, &alice.openid).await, [Scope::SnsapiBase as i32]);
    assert_eq!(validate_scopes_as(&app, TRADE_KEY, &alice.openid).await, [Scope::SnsapiBase as i32]);
    assert_eq!(refresh_scopes_as(&app, PASSPORT_KEY, &alice.openid).await, [Scope::SnsapiUserinfo as i32]);
    assert!(consent_refusals(&app, "scope_not_granted").await >= 3.0, "each refusal is counted");
    // 5. B's ForgetUser forgets alice for B alone: A's sign-in still works.
    let forgot = forget_as(&app, TRADE_KEY, &alice.openid).await;
    assert!(forgot.had_token && !forgot.forgot_for_all_clients);
    user_info_as(&app, PASSPORT_KEY, &alice.openid, true).await.expect("A still reads her profile");
    let gone = user_info_as(&app, TRADE_KEY, &alice.openid, true).await.expect_err("B forgot her");
    assert_eq!(reason(&gone), "TOKEN_NOT_FOUND");
}

async fn the_last_client_to_forget_a_user_leaves_nothing_behind(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    app.profile(&alice.openid, proto::Lang::Unspecified, false).await.expect("profile cached");
    silent_sign_in_by_trade(&app, "alice").await;
    assert!(!forget_as(&app, TRADE_KEY, &alice.openid).await.forgot_for_all_clients);
    assert!(app.store.get_token("mp", &alice.openid).await.expect("store").is_some(), "A still reaches her");

    let forgot = forget_as(&app, PASSPORT_KEY, &alice.openid).await;

    assert!(forgot.had_token && !forgot.forgot_for_all_clients, "the answer never tells whether others reach her");
    let store = &app.store;
    assert!(store.get_token("mp", &alice.openid).await.expect("store").is_none(), "token record");
    for client in ["passport", "trade"] {
        assert!(store.get_reach("mp", &alice.openid, client).await.expect("store").is_none(), "{client}'s claim");
    }
    for lang in Lang::ALL {
        assert!(store.get_profile("mp", &alice.openid, lang).await.expect("store").is_none(), "cached profile");
    }
    assert!(store.accounts(&alice.unionid).await.expect("store").is_empty(), "account index");
    if let Some(redis) = &app.redis {
        let mut conn = redis.lock().await.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.expect("keys");
        let about_her: Vec<&String> =
            keys.iter().filter(|k| k.contains(&alice.openid) || k.contains(&alice.unionid)).collect();
        assert!(about_her.is_empty(), "nothing about alice is left: {about_her:?}");
    }
}

async fn a_clients_own_userinfo_grant_survives_its_later_silent_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    let code = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_userinfo").await;
    app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await.expect("B's own consent");
    app.advance(Duration::from_secs(60));

    let silent = silent_sign_in_by_trade(&app, "alice").await;

    assert_eq!(silent.scopes, [Scope::SnsapiBase as i32], "the answer says what this sign-in got");
    let info = user_info_as(&app, TRADE_KEY, &alice.openid, true).await.expect("B's earlier consent stands");
    assert_eq!(info.unionid, alice.unionid);
    let scopes = refresh_scopes_as(&app, TRADE_KEY, &alice.openid).await;
    assert!(scopes.contains(&(Scope::SnsapiUserinfo as i32)), "{scopes:?}");
    assert_eq!(app.find_accounts_as(TRADE_KEY, &alice.unionid).await.expect("find").len(), 1);
}

async fn a_silent_sign_in_before_another_products_consent_still_reads_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let silent = silent_sign_in_by_trade(&app, "alice").await;
    app.advance(Duration::from_secs(60));
    let alice = app.login("alice", "snsapi_userinfo").await; // the token can read the profile now
    assert_eq!(silent.openid, alice.openid);

    let refused = user_info_as(&app, TRADE_KEY, &alice.openid, true).await.expect_err("still not B's consent");

    assert_eq!(reason(&refused), "SCOPE_NOT_GRANTED");
    assert_eq!(refresh_scopes_as(&app, TRADE_KEY, &alice.openid).await, [Scope::SnsapiBase as i32]);
}

async fn probing_another_products_users_is_counted_and_answered_as_unknown(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;

    let probe = user_info_as(&app, TRADE_KEY, &alice.openid, true).await.expect_err("not trade's user");
    let unknown = user_info_as(&app, TRADE_KEY, "oUnknownOpenid0000000000000", true).await.expect_err("no one");

    assert_eq!((probe.code(), reason(&probe)), (unknown.code(), reason(&unknown)), "no oracle");
    assert_eq!(consent_refusals(&app, "not_reached").await, 1.0, "the probe counts; an unknown openid does not");
}

async fn a_claim_recorded_before_scopes_were_kept_grants_only_snsapi_base(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    // As an older wxauth wrote it: `{"since": ...}` and nothing else.
    let old = wxauth::store::Reach { since: app.clock.now_secs(), scopes: Vec::new() };
    let life = Duration::from_secs(86400);
    app.store.put_reach("mp", &alice.openid, "passport", &old, life).await.expect("store");

    let refused = user_info_as(&app, PASSPORT_KEY, &alice.openid, true).await.expect_err("cannot tell it consented");

    assert_eq!(reason(&refused), "SCOPE_NOT_GRANTED");
    assert_eq!(refresh_scopes_as(&app, PASSPORT_KEY, &alice.openid).await, [Scope::SnsapiBase as i32]);
    // One consented sign-in of its own, and it reads her again.
    app.login("alice", "snsapi_userinfo").await;
    user_info_as(&app, PASSPORT_KEY, &alice.openid, true).await.expect("consented again");
}

both_backends!(
    a_claim_recorded_before_scopes_were_kept_grants_only_snsapi_base,
    a_silent_sign_in_reads_nothing_another_products_consent_gave,
    the_last_client_to_forget_a_user_leaves_nothing_behind,
    a_clients_own_userinfo_grant_survives_its_later_silent_sign_in,
    a_silent_sign_in_before_another_products_consent_still_reads_nothing,
    probing_another_products_users_is_counted_and_answered_as_unknown,
);
