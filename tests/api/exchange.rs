//! ExchangeCode: results, idempotency per flow (no 40163 for a repeat), codes bound to the flow
//! they came through (each code-injection attack refused before WeChat is called), and
//! WeChat's errors mapped.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{ExchangeCodeRequest, Lang, Scope, Sex};
use wxauth::sim::{Endpoint, Fault};

use crate::both_backends;
use crate::helpers::{Backend, MP_APPID, PASSPORT_KEY, Relayed, TRADE_KEY, WEB_APPID, metadata, reason, spawn_app};

async fn a_userinfo_code_yields_openid_unionid_and_expiries(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.relayed("mp", "alice", "snsapi_userinfo").await;
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
}

/// A snapshot-page user (a snsapi_userinfo page opened from Moments, not tapped through) signs
/// in without failing: the flag, the virtual openid, no unionid, no profile, nothing stored.
async fn a_snapshot_user_signs_in_flagged_with_nothing_kept(backend: Backend) {
    let app = spawn_app(backend).await;
    let Relayed { flow_id, code } = app.relayed("mp", "snap", "snsapi_userinfo").await;
    let request = ExchangeCodeRequest { flow_id, code, include_user_info: true, ..Default::default() };
    let snap = app.grpc.clone().exchange_code(app.req(request)).await.expect("signs in").into_inner();
    assert!(snap.is_snapshot_user);
    assert_eq!(Some(snap.openid.clone()), app.sim.openid(MP_APPID, "snap"), "the virtual openid");
    assert_eq!(snap.unionid, "", "never an identity to link by");
    assert!(snap.user_info.is_none() && snap.access_token_expire_time.is_none());
    assert_eq!(app.sim.calls(Endpoint::UserInfo), 0, "WeChat would answer 48001: not asked");
    assert!(app.store.get_token("mp", &snap.openid).await.expect("store").is_none(), "no token kept");
    let status = app.user_info(&snap.openid).await.expect_err("no user");
    assert_eq!(reason(&status), "TOKEN_NOT_FOUND");
}

async fn include_user_info_returns_the_profile_in_the_asked_language(backend: Backend) {
    let app = spawn_app(backend).await;
    let Relayed { flow_id, code } = app.relayed("web", "alice", "snsapi_login").await;
    let request = ExchangeCodeRequest {
        app: "web".into(),
        flow_id,
        code,
        include_user_info: true,
        lang: Lang::En as i32,
        device: 0,
    };
    let got = app.grpc.clone().exchange_code(app.req(request)).await.expect("exchange").into_inner();
    let profile = got.user_info.expect("profile");
    assert_eq!(profile.openid, got.openid);
    assert_eq!(profile.unionid, app.sim.unionid("alice"));
    // WeChat gives no sex or region since 2021-10-20, in any language.
    assert_eq!((profile.sex, profile.country.as_str(), profile.city.as_str()), (Sex::Unspecified as i32, "", ""));
    assert!(!profile.nickname.is_empty());

    // snsapi_base grants no profile: the exchange still succeeds, without one.
    let Relayed { flow_id, code } = app.relayed("mp", "bob", "snsapi_base").await;
    let request = ExchangeCodeRequest { flow_id, code, include_user_info: true, ..Default::default() };
    let got = app.grpc.clone().exchange_code(app.req(request)).await.expect("exchange").into_inner();
    assert!(got.user_info.is_none());
}

async fn the_same_code_exchanged_again_returns_the_same_result(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.relayed("mp", "alice", "snsapi_userinfo").await;
    let first = app.exchange("mp", &code).await.expect("first");
    let again = app.exchange("mp", &code).await.expect("a reload, a retry: no 40163");
    assert_eq!(first, again);
    // A product that leaves `app` empty: the flow names it.
    assert_eq!(app.exchange("", &code).await.expect("app from the flow"), first);
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1, "WeChat saw the code once");
    // Still within the code's life (5 minutes), even after the flow's grace window.
    app.advance(Duration::from_secs(240));
    assert_eq!(app.exchange("mp", &code).await.expect("later"), first);
}

/// The attacks of RFC 9700 §4.5 (code injection): every one is refused with
/// PERMISSION_DENIED / CODE_NOT_FROM_FLOW before WeChat is called, and none signs anyone in.
fn assert_not_from_flow(result: Result<wxauth::proto::ExchangeCodeResponse, tonic::Status>, label: &str) {
    let status = result.expect_err(label);
    assert_eq!((status.code(), reason(&status).as_str()), (Code::PermissionDenied, "CODE_NOT_FROM_FLOW"), "{label}");
    assert!(status.get_error_details().retry_info().is_none(), "{label}: nothing to retry");
}

async fn a_used_code_replayed_in_another_session_signs_no_one_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let victim = app.relayed("mp", "bob", "snsapi_userinfo").await;
    app.exchange("mp", &victim).await.expect("Bob signs in");
    // The attacker read Bob's code in an access log and starts a sign-in of their own at the
    // same product: their own flow, their own state cookie — and Bob's code.
    let attacker_flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "mp", &attacker_flow, &victim.code).await, "used code");
    // Nor can the attacker push the code through the relay with their flow.
    let relayed = app.callback(&format!("code={}&state={attacker_flow}", victim.code)).await;
    assert_eq!(relayed.status(), 400, "a code bound to another flow is not relayed");
    assert!(relayed.headers().get("location").is_none());
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "mp", &attacker_flow, &victim.code).await, "after relay");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1, "only Bob's own exchange reached WeChat");
}

async fn an_unused_leaked_code_works_only_with_its_own_flow(backend: Backend) {
    let app = spawn_app(backend).await;
    // Bob's browser went through the relay; his product has not exchanged yet.
    let victim = app.relayed("mp", "bob", "snsapi_userinfo").await;
    let attacker_flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "mp", &attacker_flow, &victim.code).await, "unused code");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 0, "refused before WeChat: the code is still Bob's");
    let bob = app.exchange("mp", &victim).await.expect("Bob still signs in");
    assert_eq!(Some(bob.openid), app.sim.openid(MP_APPID, "bob"));
}

async fn a_code_the_relay_never_saw_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "mp", &flow, &code).await, "never relayed");
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "", &flow, &code).await, "never relayed, no app");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 0);
}

async fn a_code_of_another_app_through_this_flow_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    // An app-Y (web) code delivered through an app-X (mp) flow...
    let mp_flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    let web_code = app.code(WEB_APPID, "alice", "snsapi_login");
    app.relay(&mp_flow, &web_code).await;
    // ...cannot be injected into an app-Y sign-in: not with a web flow, nor naming app web.
    let web_flow = app.flow_as(PASSPORT_KEY, "web", "snsapi_login").await;
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "web", &web_flow, &web_code).await, "web flow");
    assert_not_from_flow(app.exchange_as(PASSPORT_KEY, "web", &mp_flow, &web_code).await, "the flow's app is mp");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 0);
    // Through its own flow, the mp app asks WeChat, which knows the code is not mp's.
    let status = app.exchange_as(PASSPORT_KEY, "mp", &mp_flow, &web_code).await.expect_err("40029");
    assert_eq!(reason(&status), "INVALID_CODE");
}

async fn another_clients_flow_is_refused_and_its_result_not_shown(backend: Backend) {
    let app = spawn_app(backend).await;
    let code = app.relayed("mp", "alice", "snsapi_userinfo").await;
    // trade may use app mp too, but the flow is passport's: not before, not after passport's
    // exchange does trade get anything for it.
    assert_not_from_flow(app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await, "before");
    app.exchange("mp", &code).await.expect("passport exchanges");
    assert_not_from_flow(app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await, "after");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 1);
}

async fn a_flow_relays_three_callbacks_and_head_uses_none(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    for _ in 0..5 {
        let head = app.http.head(format!("http://{}/wechat/callback?code={code}&state={flow}", app.public_addr));
        assert_eq!(head.send().await.expect("head").status(), 200);
    }
    // WeChat's double callback (a second code), then a reload of the first: three in all.
    app.relay(&flow, &code).await;
    let second = app.code(MP_APPID, "alice", "snsapi_userinfo");
    app.relay(&flow, &second).await;
    app.relay(&flow, &code).await;
    let fourth = app.callback(&format!("code={code}&state={flow}")).await;
    assert_eq!(fourth.status(), 400, "a 4th callback gets the refusal page");
    assert!(fourth.headers().get("location").is_none());
    // Both codes the flow relayed still sign in, each once at WeChat.
    let a = app.exchange_as(PASSPORT_KEY, "mp", &flow, &code).await.expect("first code");
    let b = app.exchange_as(PASSPORT_KEY, "mp", &flow, &second).await.expect("second code");
    assert_eq!(a.openid, b.openid);
}

async fn concurrent_exchanges_of_one_code_make_one_wechat_call(backend: Backend) {
    let app = spawn_app(backend).await;
    app.sim.inject(Endpoint::AccessToken, Fault::Delay(Duration::from_millis(200)), 1);
    let code = app.relayed("mp", "alice", "snsapi_userinfo").await;
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
    // A code WeChat never issued, relayed like any other (the relay cannot tell).
    let flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    app.relay(&flow, "notARealCode0000000000000000000").await;
    let bogus = Relayed { flow_id: flow, code: "notARealCode0000000000000000000".into() };
    let status = app.exchange("mp", &bogus).await.expect_err("unknown");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "INVALID_CODE"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("40029"));

    // An expired code: WeChat answers 40029 today (42003 is documented, rarely seen).
    let code = app.relayed("mp", "alice", "snsapi_base").await;
    app.advance(Duration::from_secs(301));
    let status = app.exchange("mp", &code).await.expect_err("expired");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "INVALID_CODE"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("40029"));

    // A code someone else (another SDK, a leaked proxy) already used at WeChat.
    let code = app.relayed("mp", "alice", "snsapi_base").await;
    let url = format!(
        "http://{}/sns/oauth2/access_token?appid={MP_APPID}&secret=demo-mp-secret&code={}&grant_type=authorization_code",
        app.sim_addr, code.code
    );
    let direct: serde_json::Value = app.http.get(url).send().await.expect("sim").json().await.expect("json");
    assert!(direct.get("openid").is_some());
    let status = app.exchange("mp", &code).await.expect_err("used");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "CODE_USED"));
    assert_eq!(metadata(&status, "errcode").as_deref(), Some("40163"));
}

async fn upstream_failures_map_as_the_design_table_says(backend: Backend) {
    let app = spawn_app(backend).await;
    // WeChat answered: nothing was spent, the caller may retry (RetryInfo where waiting helps).
    let answered = [
        (Fault::Errcode(45011), Code::ResourceExhausted, "WECHAT_RATE_LIMITED", true),
        // 45009 is a daily quota: nothing comes back in a second, so no RetryInfo (issue 20).
        (Fault::Errcode(45009), Code::ResourceExhausted, "WECHAT_DAILY_QUOTA_EXHAUSTED", false),
        (Fault::Errcode(40125), Code::FailedPrecondition, "APP_MISCONFIGURED", false),
        (Fault::Errcode(40013), Code::FailedPrecondition, "APP_MISCONFIGURED", false),
        (Fault::Errcode(41004), Code::FailedPrecondition, "APP_MISCONFIGURED", false),
        // 50001 "用户未授权该api": consent again; 50002 "用户受限": a restriction (issue 20).
        (Fault::Errcode(50001), Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED", false),
        (Fault::Errcode(50002), Code::PermissionDenied, "USER_RESTRICTED", false),
        (Fault::Errcode(40003), Code::Unknown, "WECHAT_ERROR", false),
    ];
    for (fault, code, expected_reason, retry) in answered {
        let label = format!("{fault:?}");
        let wechat_code = app.relayed("mp", "alice", "snsapi_base").await;
        app.sim.inject(Endpoint::AccessToken, fault.clone(), 1);
        let status = app.exchange("mp", &wechat_code).await.expect_err(&label);
        assert_eq!((status.code(), reason(&status).as_str()), (code, expected_reason), "{label}");
        assert_eq!(status.get_error_details().retry_info().is_some(), retry, "{label}");
        // The failed exchange left no claim behind: the caller's retry goes through.
        app.exchange("mp", &wechat_code).await.expect(&label);
    }
}

/// An exchange that was sent but whose answer was lost (a timeout, a 5xx, -1, a reply not
/// understood) may have spent the code at WeChat: the product is told to start a new sign-in
/// (FAILED_PRECONDITION / SIGN_IN_AGAIN, no RetryInfo), never to retry, and a repeat gets the
/// same answer without asking WeChat.
async fn a_lost_exchange_answer_asks_for_a_new_sign_in(backend: Backend) {
    let app = spawn_app(backend).await;
    let lost = [
        Fault::Errcode(-1),
        Fault::HttpStatus(502),
        Fault::BadJson,
        Fault::Delay(Duration::from_secs(3)),
        Fault::AfterWork(Box::new(Fault::HttpStatus(504))),
    ];
    let mut last = None;
    for fault in lost {
        let label = format!("{fault:?}");
        let wechat_code = app.relayed("mp", "alice", "snsapi_base").await;
        last = Some(wechat_code.code.clone());
        app.sim.inject(Endpoint::AccessToken, fault.clone(), 1);
        let calls = app.sim.calls(Endpoint::AccessToken);
        let status = app.exchange("mp", &wechat_code).await.expect_err(&label);
        assert_eq!((status.code(), reason(&status).as_str()), (Code::FailedPrecondition, "SIGN_IN_AGAIN"), "{label}");
        assert!(status.get_error_details().retry_info().is_none(), "{label}: no RetryInfo");
        let again = app.exchange("mp", &wechat_code).await.expect_err(&label);
        assert_eq!(reason(&again), "SIGN_IN_AGAIN", "{label}: the repeat too");
        assert_eq!(app.sim.calls(Endpoint::AccessToken), calls + 1, "{label}: the repeat did not reach WeChat");
    }
    // WeChat really spent the code in the last case: asked directly, it says 40163. A new
    // sign-in works.
    let url = format!(
        "http://{}/sns/oauth2/access_token?appid={MP_APPID}&secret=demo-mp-secret&code={}&grant_type=authorization_code",
        app.sim_addr,
        last.expect("a code")
    );
    let direct: serde_json::Value = app.http.get(url).send().await.expect("sim").json().await.expect("json");
    assert_eq!(direct["errcode"], 40163, "the lost exchange had spent the code");
    let fresh = app.relayed("mp", "alice", "snsapi_base").await;
    app.exchange("mp", &fresh).await.expect("a new sign-in");
}

async fn invalid_code_and_flow_fields_are_refused_before_any_call(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = app.flow_as(PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    for code in ["", "has space", &"c".repeat(257), "ünïcode"] {
        let status = app.exchange_as(PASSPORT_KEY, "mp", &flow, code).await.expect_err(code);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.get_error_details().bad_request().expect("BadRequest").field_violations[0].field, "code");
    }
    for flow_id in ["", "short", "has-dash-0000000000000000", &"f".repeat(129)] {
        let status = app.exchange_as(PASSPORT_KEY, "mp", flow_id, "aCode").await.expect_err(flow_id);
        assert_eq!(status.code(), Code::InvalidArgument);
        let violations = status.get_error_details().bad_request().expect("BadRequest").field_violations.clone();
        assert_eq!(violations[0].field, "flow_id", "{flow_id}");
    }
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 0);
}

both_backends!(
    a_userinfo_code_yields_openid_unionid_and_expiries,
    a_base_code_has_no_unionid_and_snapshot_users_are_flagged,
    a_snapshot_user_signs_in_flagged_with_nothing_kept,
    include_user_info_returns_the_profile_in_the_asked_language,
    the_same_code_exchanged_again_returns_the_same_result,
    a_used_code_replayed_in_another_session_signs_no_one_in,
    an_unused_leaked_code_works_only_with_its_own_flow,
    a_code_the_relay_never_saw_is_refused,
    a_code_of_another_app_through_this_flow_is_refused,
    another_clients_flow_is_refused_and_its_result_not_shown,
    a_flow_relays_three_callbacks_and_head_uses_none,
    concurrent_exchanges_of_one_code_make_one_wechat_call,
    wechat_code_errors_map_to_invalid_argument,
    upstream_failures_map_as_the_design_table_says,
    a_lost_exchange_answer_asks_for_a_new_sign_in,
    invalid_code_and_flow_fields_are_refused_before_any_call,
);
