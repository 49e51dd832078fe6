//! A mini program's `encryptedData`, decrypted by wxauth with the user's sealed session key
//! (issue 21): for clients granted `mini_data`, for users they reach, with the watermark checked.

use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::DecryptMiniProgramDataRequest;

use crate::helpers::{Backend, MINI_APPID, PASSPORT_KEY, TestApp, authed, metadata, reason, spawn_app_configured};

const SHOP_KEY: &str = "shop-test-key";

/// `shop`, a product of the mini program only, granted `mini_data` (the first line closes
/// `[clients.trade]` unchanged).
fn shop() -> String {
    let digest = hex::encode(wxauth::config::key_digest(SHOP_KEY));
    format!(
        "[clients.shop]\nkey_sha256 = \"{digest}\"\napps = [\"mini\"]\nreturn_urls = [\"https://shop.example.com/\"]\n\
         grants = [\"mini_data\"]\nrate_limits = {{ authorize = \"off\", exchange = \"off\", user = \"off\" }}\n"
    )
}

/// `user` signs in to the mini program through `shop`; their openid.
async fn shop_login(app: &TestApp, user: &str) -> String {
    let js_code = app.sim.js_code(MINI_APPID, user).expect("js_code");
    app.mini_sign_in_as(SHOP_KEY, &js_code).await.expect("mini sign-in").openid
}

async fn decrypt(
    app: &TestApp,
    key: &str,
    openid: &str,
    data: &(String, String),
) -> Result<serde_json::Value, tonic::Status> {
    let request = DecryptMiniProgramDataRequest {
        app: "mini".into(),
        openid: openid.into(),
        encrypted_data: data.0.clone(),
        iv: data.1.clone(),
    };
    let answer = app.grpc.clone().decrypt_mini_program_data(authed(key, request)).await?.into_inner();
    Ok(serde_json::from_str(&answer.json).expect("the answer is JSON"))
}

/// What the mini program's client made for alice decrypts to what it held, its watermark
/// naming the mini program; data made before her next sign-in (another session key) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_data_decrypts_with_the_sealed_session_key_and_an_old_key_does_not() {
    let app = spawn_app_configured(Backend::Memory, &shop()).await;
    let openid = shop_login(&app, "alice").await;
    let steps = app.sim.encrypted_data(MINI_APPID, "alice", json!({ "stepInfoList": [{ "step": 4321 }] }));
    let steps = steps.expect("alice has a session at WeChat");

    let data = decrypt(&app, SHOP_KEY, &openid, &steps).await.expect("decrypted");

    assert_eq!(data["stepInfoList"][0]["step"], 4321);
    assert_eq!(data["watermark"]["appid"], MINI_APPID);
    // A new wx.login() and sign-in: a new session key, under which the old data is noise.
    shop_login(&app, "alice").await;
    let stale = decrypt(&app, SHOP_KEY, &openid, &steps).await.expect_err("another key made it");
    assert_eq!(stale.code(), Code::InvalidArgument);
    let fields: Vec<_> = stale
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["encrypted_data"]);
}

/// Without the grant, for a user the client never signed in, or with malformed fields: refused,
/// and nothing of the key or the data in the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grant_or_the_user_the_data_stays_sealed() {
    let app = spawn_app_configured(Backend::Memory, &shop()).await;
    let alice = shop_login(&app, "alice").await;
    let data = app.sim.encrypted_data(MINI_APPID, "alice", json!({ "x": 1 })).expect("data");
    // bob signs in through passport only: shop (users = "own") does not reach him.
    let bob = app.mini_login("bob").await.openid;
    let bobs = app.sim.encrypted_data(MINI_APPID, "bob", json!({ "x": 2 })).expect("data");

    let no_grant = decrypt(&app, PASSPORT_KEY, &alice, &data).await.expect_err("passport holds no grant");
    let not_reached = decrypt(&app, SHOP_KEY, &bob, &bobs).await.expect_err("not shop's user");
    let bad_iv = decrypt(&app, SHOP_KEY, &alice, &(data.0.clone(), "short".into())).await.expect_err("bad iv");

    assert_eq!((no_grant.code(), reason(&no_grant)), (Code::PermissionDenied, "GRANT_MISSING".into()));
    assert_eq!(metadata(&no_grant, "grant").as_deref(), Some("mini_data"));
    assert_eq!((not_reached.code(), reason(&not_reached)), (Code::NotFound, "TOKEN_NOT_FOUND".into()));
    assert_eq!(bad_iv.code(), Code::InvalidArgument);
    for status in [&no_grant, &not_reached, &bad_iv] {
        assert!(!status.message().contains(&data.0), "{}", status.message());
    }
}
