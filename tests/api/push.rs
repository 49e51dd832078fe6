//! WeChat's message push on the callback domain (docs/design.md §2.6): the simulator pushes
//! the authorization events as WeChat does, signed and (safe mode) encrypted, and wxauth forgets
//! a revoked or cancelled user for every client and drops a changed profile; a forged, stale,
//! replayed or unknown app's push changes nothing; every other message reaches the company's
//! own handler unchanged, and its answer comes back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use tonic::Code;
use wxauth::proto::{self, GetUserInfoRequest};
use wxauth::sim::{PushEvent, PushFormat, PushTarget, SignedPush};
use wxauth::wechat::Lang;

use crate::both_backends;
use crate::helpers::{
    Backend, MP_APPID, PASSPORT_KEY, TRADE_KEY, TestApp, WEB_APPID, authed, reason, spawn_app_configured,
};

const MP_TOKEN: &str = "pushToken123";
const MP_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const WEB_TOKEN: &str = "webToken9";

/// `mp` in the safe mode (XML), `web` in plaintext mode (JSON), `extra` added to `mp`'s table.
fn push_config(mp_extra: &str) -> String {
    format!(
        "[apps.mp.push]\ntoken = \"{MP_TOKEN}\"\nencoding_aes_key = \"{MP_KEY}\"\n{mp_extra}\n\
         [apps.web.push]\ntoken = \"{WEB_TOKEN}\"\n"
    )
}

/// wxauth with push configured, and the simulator pushing to it.
async fn spawn(backend: Backend, mp_extra: &str) -> TestApp {
    let app = spawn_app_configured(backend, &push_config(mp_extra)).await;
    let base = format!("http://{}", app.public_addr);
    let mp = PushTarget {
        url: format!("{base}/wechat/push/mp"),
        token: MP_TOKEN.into(),
        encoding_aes_key: Some(MP_KEY.into()),
        format: PushFormat::Xml,
    };
    app.sim.set_push_target(MP_APPID, mp);
    let web = PushTarget {
        url: format!("{base}/wechat/push/web"),
        token: WEB_TOKEN.into(),
        encoding_aes_key: None,
        format: PushFormat::Json,
    };
    app.sim.set_push_target(WEB_APPID, web);
    app
}

/// GetUserInfo of `mp`'s `openid` as the client with `key` (through the cache).
async fn profile_as(app: &TestApp, key: &str, openid: &str) -> Result<String, String> {
    let request = GetUserInfoRequest { app: "mp".into(), openid: openid.into(), ..Default::default() };
    match app.grpc.clone().get_user_info(authed(key, request)).await {
        Ok(response) => Ok(response.into_inner().user_info.map(|u| u.nickname).unwrap_or_default()),
        Err(status) => Err(format!("{:?} {}", status.code(), reason(&status))),
    }
}

/// `alice` signed in to `mp` by both clients, each having read her profile once.
async fn alice_of_both_clients(app: &TestApp) -> String {
    let openid = app.login("alice", "snsapi_userinfo").await.openid;
    let code = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_userinfo").await;
    app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await.expect("trade signs alice in");
    for key in [PASSPORT_KEY, TRADE_KEY] {
        assert!(profile_as(app, key, &openid).await.is_ok(), "{key} reads alice");
    }
    openid
}

/// Sends a signed push as it is (or as a test changed it).
async fn send(app: &TestApp, push: &SignedPush) -> (u16, String) {
    app.sim.send_push(push).await.expect("delivered")
}

async fn is_kept(app: &TestApp, openid: &str) -> bool {
    app.store.get_token("mp", openid).await.expect("store").is_some()
        && app.store.get_reach("mp", openid, "passport").await.expect("store").is_some()
}

async fn a_revoke_forgets_the_user_for_every_client(backend: Backend) {
    let app = spawn(backend, "").await;
    let alice = alice_of_both_clients(&app).await;
    let bob = app.login("bob", "snsapi_userinfo").await.openid;

    let answer = app.sim.push_event(MP_APPID, "alice", PushEvent::AuthorizationRevoke).await.expect("pushed");
    assert_eq!(answer, (200, "success".to_owned()));

    for key in [PASSPORT_KEY, TRADE_KEY] {
        assert_eq!(profile_as(&app, key, &alice).await, Err("NotFound TOKEN_NOT_FOUND".into()), "{key}");
    }
    assert!(app.store.get_token("mp", &alice).await.expect("store").is_none(), "her tokens are gone");
    for client in ["passport", "trade"] {
        assert!(app.store.get_reach("mp", &alice, client).await.expect("store").is_none(), "{client}'s claim");
    }
    for lang in Lang::ALL {
        assert!(app.store.get_profile("mp", &alice, lang).await.expect("store").is_none(), "her cached profile");
    }
    assert!(is_kept(&app, &bob).await, "another user is left alone");
}

async fn a_cancellation_in_plaintext_json_forgets_the_user(backend: Backend) {
    let app = spawn(backend, "").await;
    let code = app.relayed("web", "alice", "snsapi_login").await;
    let alice = app.exchange("web", &code).await.expect("web sign-in").openid;
    assert!(app.store.get_token("web", &alice).await.expect("store").is_some());
    let message = app.sim.event_message(WEB_APPID, "alice", PushEvent::AuthorizationCancellation).expect("event");
    assert!(message.starts_with('{'), "JSON: {message}");
    let answer = send(&app, &app.sim.sign_push(WEB_APPID, &message).expect("signed")).await;
    assert_eq!(answer, (200, "success".to_owned()));
    assert!(app.store.get_token("web", &alice).await.expect("store").is_none());
    assert!(app.store.get_reach("web", &alice, "passport").await.expect("store").is_none());
}

async fn a_profile_change_drops_the_cached_profile_only(backend: Backend) {
    let app = spawn(backend, "").await;
    let alice = alice_of_both_clients(&app).await;
    assert!(app.store.get_profile("mp", &alice, Lang::ZhCn).await.expect("store").is_some(), "cached");
    let calls = app.sim.calls(wxauth::sim::Endpoint::UserInfo);

    let answer = app.sim.push_event(MP_APPID, "alice", PushEvent::InfoModified).await.expect("pushed");
    assert_eq!(answer, (200, "success".to_owned()));
    assert!(app.store.get_profile("mp", &alice, Lang::ZhCn).await.expect("store").is_none(), "dropped");
    assert!(is_kept(&app, &alice).await, "her tokens and claims stay");
    assert!(profile_as(&app, TRADE_KEY, &alice).await.is_ok());
    assert_eq!(app.sim.calls(wxauth::sim::Endpoint::UserInfo), calls + 1, "the next read asks WeChat");
}

both_backends!(
    a_revoke_forgets_the_user_for_every_client,
    a_cancellation_in_plaintext_json_forgets_the_user,
    a_profile_change_drops_the_cached_profile_only,
);

/// `push` with one query parameter's value replaced.
fn with_param(push: &SignedPush, name: &str, value: &str) -> SignedPush {
    let query: Vec<String> = push
        .query
        .split('&')
        .map(|pair| if pair.starts_with(&format!("{name}=")) { format!("{name}={value}") } else { pair.to_owned() })
        .collect();
    let query = query.join("&");
    let base = push.url.split_once('?').map_or(push.url.as_str(), |(base, _)| base);
    SignedPush { url: format!("{base}?{query}"), query, ..push.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_stale_and_unknown_pushes_change_nothing() {
    let app = spawn(Backend::Redis, "").await;
    let alice = app.login("alice", "snsapi_userinfo").await.openid;
    let revoke = app.sim.event_message(MP_APPID, "alice", PushEvent::AuthorizationRevoke).expect("event");
    let signed = app.sim.sign_push(MP_APPID, &revoke).expect("signed");

    let forged = with_param(&signed, "signature", &"0".repeat(40));
    assert_eq!(send(&app, &forged).await, (403, "refused: bad_signature\n".into()));
    let forged = with_param(&signed, "msg_signature", &"0".repeat(40));
    assert_eq!(send(&app, &forged).await, (403, "refused: bad_signature\n".into()));
    let other_body =
        SignedPush { body: signed.body.replace("<Encrypt><![CDATA[", "<Encrypt><![CDATA[AAAA"), ..signed.clone() };
    assert_eq!(send(&app, &other_body).await.0, 403, "the ciphertext is signed too");
    let unknown_app = revoke.replace(MP_APPID, "wx0000000000000000");
    let unknown_app = app.sim.sign_push(MP_APPID, &unknown_app).expect("signed");
    assert_eq!(send(&app, &unknown_app).await, (404, "refused: unknown_app\n".into()));
    // The web app's Token signs an event naming the official account, which has its own push
    // URL: one app's Token forgets nobody of another's.
    let across = app.sim.sign_push(WEB_APPID, &revoke).expect("signed");
    assert_eq!(send(&app, &across).await, (404, "refused: unknown_app\n".into()));
    let nowhere = SignedPush { url: signed.url.replace("/wechat/push/mp", "/wechat/push/nope"), ..signed.clone() };
    assert_eq!(send(&app, &nowhere).await.0, 404);
    assert!(is_kept(&app, &alice).await, "nothing changed");

    // The same push twice: acted on once, the second refused (alice signed in again between).
    assert_eq!(send(&app, &signed).await, (200, "success".into()));
    assert!(!is_kept(&app, &alice).await);
    let alice = app.login("alice", "snsapi_userinfo").await.openid;
    assert_eq!(send(&app, &signed).await, (409, "refused: replayed\n".into()));
    assert!(is_kept(&app, &alice).await, "a replay changes nothing");

    // A plaintext push to an app in the safe mode: its body is signed by nothing.
    let plain = PushTarget {
        url: signed.url.split_once('?').map(|(u, _)| u.to_owned()).expect("url"),
        token: MP_TOKEN.into(),
        encoding_aes_key: None,
        format: PushFormat::Xml,
    };
    app.sim.set_push_target(MP_APPID, plain);
    let plain = app.sim.sign_push(MP_APPID, &revoke).expect("signed");
    assert_eq!(send(&app, &plain).await, (400, "refused: not_encrypted\n".into()));

    // WeChat's clock (here the simulator's) ten minutes off the service's: refused.
    app.sim.advance(Duration::from_secs(600));
    let stale = app.sim.event_message(WEB_APPID, "alice", PushEvent::AuthorizationRevoke).expect("event");
    let stale = app.sim.sign_push(WEB_APPID, &stale).expect("signed");
    assert_eq!(send(&app, &stale).await, (403, "refused: stale_timestamp\n".into()));
    assert!(is_kept(&app, &alice).await, "nothing changed");

    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    for outcome in ["bad_signature", "unknown_app", "replayed", "not_encrypted", "stale_timestamp", "acted"] {
        assert!(metrics.contains(&format!("outcome=\"{outcome}\"")), "{outcome} counted");
    }
    assert!(metrics.contains("wxauth_user_events_total{app=\"mp\",event=\"user_authorization_revoke\"} 1"));
}

/// What the company's handler saw: the query, the content type and the body of each request.
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A stand-in for the company's message handler on loopback: it records what it gets and
/// answers a passive reply, after `delay`.
async fn spawn_handler(delay: Duration) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let handle = move |State(seen): State<Seen>, RawQuery(query): RawQuery, headers: HeaderMap, body: String| async move {
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        seen.lock().expect("lock").push((query.unwrap_or_default(), content_type, body));
        tokio::time::sleep(delay).await;
        ([("content-type", "application/xml")], "<xml><MsgType><![CDATA[text]]></MsgType></xml>")
    };
    let router = axum::Router::new().route("/handler", axum::routing::post(handle)).with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/handler", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_messages_reach_the_companys_handler_unchanged() {
    let (handler, seen) = spawn_handler(Duration::ZERO).await;
    let app = spawn(Backend::Memory, &format!("forward_to = \"{handler}\"")).await;
    let alice = app.login("alice", "snsapi_userinfo").await.openid;

    let text = app.sim.text_message(MP_APPID, "alice", "你好 hello").expect("text");
    let signed = app.sim.sign_push(MP_APPID, &text).expect("signed");
    let answer = send(&app, &signed).await;
    assert_eq!(answer, (200, "<xml><MsgType><![CDATA[text]]></MsgType></xml>".to_owned()), "the handler's reply");
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0], (signed.query.clone(), "text/xml".to_owned(), signed.body.clone()), "as WeChat sent it");
    }

    // An authorization event is wxauth's own: acted on, not passed on.
    let answer = app.sim.push_event(MP_APPID, "alice", PushEvent::AuthorizationRevoke).await.expect("pushed");
    assert_eq!(answer, (200, "success".to_owned()));
    assert_eq!(seen.lock().expect("lock").len(), 1);
    assert!(app.store.get_token("mp", &alice).await.expect("store").is_none());

    // The console's URL check is answered by wxauth itself.
    let (timestamp, nonce) = (app.clock.now_secs().to_string(), "12345");
    let signature = wxauth::push::signature(&[MP_TOKEN, &timestamp, nonce]);
    let check = format!(
        "http://{}/wechat/push/mp?signature={signature}&timestamp={timestamp}&nonce={nonce}&echostr=e42",
        app.public_addr
    );
    let response = app.http.get(&check).send().await.expect("check");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.expect("text"), "e42");
    let wrong = check.replace("echostr=e42", "echostr=e42&nonce=1");
    assert_eq!(app.http.get(&wrong).send().await.expect("check").status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_its_timeout_answers_504_in_time() {
    let (handler, _seen) = spawn_handler(Duration::from_secs(3)).await;
    let app = spawn(Backend::Memory, &format!("forward_to = \"{handler}\"\nforward_timeout = \"300ms\"")).await;
    let text = app.sim.text_message(MP_APPID, "bob", "hi").expect("text");
    let started = std::time::Instant::now();
    let answer = send(&app, &app.sim.sign_push(MP_APPID, &text).expect("signed")).await;
    assert_eq!(answer.0, 504);
    assert!(started.elapsed() < Duration::from_secs(2), "answered within the timeout, not the handler's 3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_pushes_from_its_control_api_too() {
    let app = spawn(Backend::Memory, "").await;
    let alice = app.login("alice", "snsapi_userinfo").await.openid;
    let control =
        format!("http://{}/sim/push?appid={MP_APPID}&user=alice&event=user_authorization_revoke", app.sim_addr);
    let answer: serde_json::Value = app.http.post(control).send().await.expect("control").json().await.expect("json");
    assert_eq!(answer, serde_json::json!({ "status": 200, "body": "success" }));
    assert!(app.store.get_token("mp", &alice).await.expect("store").is_none());
    let status = app
        .grpc
        .clone()
        .get_user_info(app.req(proto::GetUserInfoRequest { app: "mp".into(), openid: alice, ..Default::default() }))
        .await;
    assert_eq!(status.expect_err("gone").code(), Code::NotFound);
}
