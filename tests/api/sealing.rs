//! Records sealed at rest: unreadable in Redis, unopenable when moved or tampered with, and
//! readable across a key rotation.

use std::sync::Arc;

use tonic::Code;
use wxauth::proto::Lang;

use crate::helpers::{RedisServer, TestApp, reason, settings, spawn_app_with, spawn_settings, spawn_sim, test_keyring};

async fn raw(app: &TestApp, key: &str) -> Vec<u8> {
    let mut conn = app.redis.as_ref().expect("redis").lock().await.conn().await;
    redis::cmd("GET").arg(key).query_async(&mut conn).await.expect("get")
}

async fn put_raw(app: &TestApp, key: &str, value: &[u8]) {
    let mut conn = app.redis.as_ref().expect("redis").lock().await.conn().await;
    redis::cmd("SET").arg(key).arg(value).query_async::<()>(&mut conn).await.expect("set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_records_hold_nothing_in_clear() {
    let (sim, sim_addr) = spawn_sim().await;
    let redis = Some(Arc::new(tokio::sync::Mutex::new(RedisServer::start().await)));
    let app = spawn_app_with(sim, sim_addr, redis, "").await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let record = raw(&app, &format!("wxauth:mp:tok:{}", login.openid)).await;
    assert_eq!(record[0], 1, "sealed with key id 1");
    for needle in [b"access_token".as_slice(), b"refresh_token", login.unionid.as_bytes(), b"snsapi"] {
        assert!(!record.windows(needle.len()).any(|w| w == needle));
    }
    let profile = app.profile(&login.openid, Lang::ZhCn, false).await.expect("profile").user_info.expect("user_info");
    let cached = raw(&app, &format!("wxauth:mp:prof:{}:zh_CN", login.openid)).await;
    assert_eq!(cached[0], 1, "the cached profile is sealed too");
    for needle in [profile.nickname.as_bytes(), profile.head_image_url.as_bytes(), b"nickname"] {
        assert!(!needle.is_empty() && !cached.windows(needle.len()).any(|w| w == needle));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_does_not_open_counts_as_missing() {
    let (sim, sim_addr) = spawn_sim().await;
    let redis = Some(Arc::new(tokio::sync::Mutex::new(RedisServer::start().await)));
    let app = spawn_app_with(sim, sim_addr, redis, "").await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    let bob = app.login("bob", "snsapi_userinfo").await;

    // Alice's record copied under Bob's key: the key name is associated data, it won't open.
    let alices = raw(&app, &format!("wxauth:mp:tok:{}", alice.openid)).await;
    put_raw(&app, &format!("wxauth:mp:tok:{}", bob.openid), &alices).await;
    let status = app.user_info(&bob.openid).await.expect_err("moved record");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::NotFound, "TOKEN_NOT_FOUND"));

    // Garbage and a flipped bit.
    put_raw(&app, &format!("wxauth:mp:tok:{}", bob.openid), b"garbage").await;
    assert_eq!(reason(&app.user_info(&bob.openid).await.expect_err("garbage")), "TOKEN_NOT_FOUND");
    let mut flipped = alices.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    put_raw(&app, &format!("wxauth:mp:tok:{}", alice.openid), &flipped).await;
    assert_eq!(reason(&app.user_info(&alice.openid).await.expect_err("tampered")), "TOKEN_NOT_FOUND");

    assert_eq!(app.store.unopenable_records(), 3);
    // The service is fine: a new login works.
    app.login("alice", "snsapi_userinfo").await;
    app.user_info(&alice.openid).await.expect("fresh record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_keyring_opens_old_records_and_seals_new_ones_with_the_new_key() {
    let (sim, sim_addr) = spawn_sim().await;
    let redis = Arc::new(tokio::sync::Mutex::new(RedisServer::start().await));
    let url = redis.lock().await.url();
    let old = spawn_app_with(sim.clone(), sim_addr, Some(redis.clone()), "").await;
    let login = old.login("alice", "snsapi_userinfo").await;
    let key = format!("wxauth:mp:tok:{}", login.openid);
    assert_eq!(raw(&old, &key).await[0], 1);

    // New deployment: a new first key (id 2), the old one kept for opening.
    let new_key = wxauth::store::seal::Keyring::generate_line(2);
    let store = format!("kind = \"redis\"\nurl = \"{url}\"");
    let mut rotated = settings(sim_addr, &store, "");
    rotated.store.keyring =
        wxauth::store::seal::Keyring::parse(&format!("{new_key}\n{}", test_keyring())).expect("keyring");
    let new = spawn_settings(sim.clone(), sim_addr, Some(redis.clone()), rotated).await;
    new.user_info(&login.openid).await.expect("old record opens");
    new.grpc
        .clone()
        .refresh_token(new.req(wxauth::proto::RefreshTokenRequest {
            app: "mp".into(),
            openid: login.openid.clone(),
            device: 0,
        }))
        .await
        .expect("refresh rewrites the record");
    assert_eq!(raw(&new, &key).await[0], 2, "re-sealed with the new key");

    // A replica that dropped the old key too soon cannot open old records, and says so.
    let mut only_new = settings(sim_addr, &store, "");
    only_new.store.keyring = wxauth::store::seal::Keyring::parse(&new_key).expect("keyring");
    let dropped = spawn_settings(sim.clone(), sim_addr, Some(redis.clone()), only_new).await;
    let other = old.login("bob", "snsapi_userinfo").await;
    assert_eq!(reason(&dropped.user_info(&other.openid).await.expect_err("old key gone")), "TOKEN_NOT_FOUND");
    // Two records did not open: the token record and passport's claim on the user.
    assert_eq!(dropped.store.unopenable_records(), 2);
}
