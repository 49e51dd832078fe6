//! SignInMiniProgram: `js_code` → openid and unionid; the session key sealed under the user,
//! replaced at each sign-in, deleted by ForgetUser; jscode2session's errcodes mapped.

use tonic::Code;
use wxauth::proto;
use wxauth::sim::{Endpoint, Fault};

use crate::both_backends;
use crate::helpers::{Backend, MINI_APPID, PASSPORT_KEY, TRADE_KEY, reason, spawn_app};

async fn a_mini_program_user_signs_in_and_the_session_key_stays_sealed_in_wxauth(backend: Backend) {
    let app = spawn_app(backend).await;
    let got = app.mini_login("alice").await;
    assert_eq!(Some(got.openid.clone()), app.sim.openid(MINI_APPID, "alice"));
    assert_eq!(got.unionid, app.sim.unionid("alice"), "bound: the same person as on the web");
    let first = app.store.get_session("mini", &got.openid).await.expect("store").expect("session kept");
    assert_eq!(first.session_key.secret().len(), 24);
    assert!(!format!("{first:?}").contains(first.session_key.secret()), "Debug shows no key");

    app.mini_login("alice").await;
    let second = app.store.get_session("mini", &got.openid).await.expect("store").expect("session kept");
    assert_ne!(second.session_key, first.session_key, "replaced at each sign-in");

    if let Some(redis) = &app.redis {
        let mut conn = redis.lock().await.conn().await;
        let key = format!("wxauth:mini:sess:{}", got.openid);
        let raw: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("get");
        assert!(!raw.windows(24).any(|w| w == second.session_key.secret().as_bytes()), "sealed");
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("pttl");
        assert!(ttl > 29 * 86_400_000, "lives token.refresh_life from the sign-in: {ttl}");
    }
}

async fn jscode2session_errcodes_are_mapped(backend: Backend) {
    let app = spawn_app(backend).await;
    let sign_in = |js_code: String| {
        let app = &app;
        async move { app.mini_sign_in_as(PASSPORT_KEY, &js_code).await.expect_err("refused") }
    };
    let invalid = sign_in("made-up".into()).await;
    assert_eq!((invalid.code(), reason(&invalid).as_str()), (Code::InvalidArgument, "INVALID_CODE"));
    let js_code = app.sim.js_code(MINI_APPID, "alice").expect("js_code");
    app.mini_sign_in_as(PASSPORT_KEY, &js_code).await.expect("first");
    assert_eq!(reason(&sign_in(js_code).await), "CODE_USED");
    for (errcode, code, expected) in [
        (45011, Code::ResourceExhausted, "WECHAT_RATE_LIMITED"),
        (40226, Code::PermissionDenied, "USER_RESTRICTED"),
        (-1, Code::FailedPrecondition, "SIGN_IN_AGAIN"),
    ] {
        app.sim.inject(Endpoint::JsCode2Session, Fault::Errcode(errcode), 1);
        let status = sign_in(app.sim.js_code(MINI_APPID, "bob").expect("js_code")).await;
        assert_eq!((status.code(), reason(&status).as_str()), (code, expected), "errcode {errcode}");
        assert_eq!(crate::helpers::metadata(&status, "errcode"), Some(errcode.to_string()));
    }
}

async fn a_user_over_100_sign_ins_a_minute_is_rate_limited(backend: Backend) {
    let app = spawn_app(backend).await;
    for _ in 0..wxauth::sim::MINI_LOGINS_PER_MINUTE {
        app.mini_login("bob").await;
    }
    let js_code = app.sim.js_code(MINI_APPID, "bob").expect("js_code");
    let limited = app.mini_sign_in_as(PASSPORT_KEY, &js_code).await.expect_err("45011");
    assert_eq!(reason(&limited), "WECHAT_RATE_LIMITED");
}

async fn forget_user_deletes_the_session_and_other_clients_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let got = app.mini_login("alice").await;
    let forget = proto::ForgetUserRequest { app: "mini".into(), openid: got.openid.clone(), device: 0 };
    assert!(app.grpc.clone().forget_user(app.req(forget)).await.expect("forget").into_inner().had_token);
    assert!(app.store.get_session("mini", &got.openid).await.expect("store").is_none());

    let js_code = app.sim.js_code(MINI_APPID, "alice").expect("js_code");
    let other = app.mini_sign_in_as(TRADE_KEY, &js_code).await.expect_err("trade may not use `mini`");
    assert_eq!(reason(&other), "APP_NOT_ALLOWED");
    let request = proto::SignInMiniProgramRequest { app: "mp".into(), js_code };
    let wrong_kind = app.grpc.clone().sign_in_mini_program(app.req(request)).await.expect_err("not a mini program");
    assert_eq!(wrong_kind.code(), Code::InvalidArgument);
    assert_eq!(app.sim.calls(Endpoint::JsCode2Session), 1);
}

both_backends!(
    a_mini_program_user_signs_in_and_the_session_key_stays_sealed_in_wxauth,
    jscode2session_errcodes_are_mapped,
    a_user_over_100_sign_ins_a_minute_is_rate_limited,
    forget_user_deletes_the_session_and_other_clients_are_refused,
);
