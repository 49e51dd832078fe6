//! The clients' feeds of user events (`ReadUserEvents`, docs/design.md §2.6): a pushed
//! authorization event reaches exactly the clients that had signed the user in, through a real
//! gRPC client, from the simulator's signed push; the cursor pages in order across replicas;
//! a replayed push records nothing twice; a reader behind the kept events is told of the gap;
//! a bad cursor is INVALID_ARGUMENT; no client reads another's feed.

use std::sync::Arc;

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{ReadUserEventsRequest, ReadUserEventsResponse, UserEventKind};
use wxauth::sim::{PushEvent, PushFormat, PushTarget};

use crate::both_backends;
use crate::helpers::{
    Backend, MP_APPID, PASSPORT_KEY, TRADE_KEY, TestApp, authed, reason, spawn_app_configured, spawn_app_with,
};

const PUSH_TOKEN: &str = "pushToken123";
const PUSH_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// A third client of `mp` that never signs anyone in.
const CRM_KEY: &str = "crm-test-key";

/// `mp` pushing in the safe mode, the `crm` client, and `extra` (a `[token]` table).
fn config(extra: &str) -> String {
    let crm = hex::encode(wxauth::config::key_digest(CRM_KEY));
    format!(
        "[apps.mp.push]\ntoken = \"{PUSH_TOKEN}\"\nencoding_aes_key = \"{PUSH_KEY}\"\n\
         [clients.crm]\nkey_sha256 = \"{crm}\"\napps = [\"mp\"]\nreturn_urls = [\"https://crm.example.com/\"]\n\
         rate_limits = {{ authorize = \"off\", exchange = \"off\", user = \"off\" }}\n{extra}"
    )
}

/// Points the simulator's push for `mp` at `app`'s push path.
fn push_to(app: &TestApp) {
    let target = PushTarget {
        url: format!("http://{}/wechat/push/mp", app.public_addr),
        token: PUSH_TOKEN.into(),
        encoding_aes_key: Some(PUSH_KEY.into()),
        format: PushFormat::Xml,
    };
    app.sim.set_push_target(MP_APPID, target);
}

async fn spawn(backend: Backend, extra: &str) -> TestApp {
    let app = spawn_app_configured(backend, &config(extra)).await;
    push_to(&app);
    app
}

/// ReadUserEvents as the client with `key`.
async fn read(app: &TestApp, key: &str, after: &str, limit: u32) -> Result<ReadUserEventsResponse, tonic::Status> {
    let request = ReadUserEventsRequest { after: after.into(), limit };
    app.grpc.clone().read_user_events(authed(key, request)).await.map(tonic::Response::into_inner)
}

/// The events of a page as `(openid, kind)`.
fn seen(page: &ReadUserEventsResponse) -> Vec<(String, UserEventKind)> {
    page.events.iter().map(|e| (e.openid.clone(), e.kind())).collect()
}

async fn pushed(app: &TestApp, user: &str, event: PushEvent) {
    let answer = app.sim.push_event(MP_APPID, user, event).await.expect("pushed");
    assert_eq!(answer, (200, "success".to_owned()), "{user}");
}

async fn a_revoke_reaches_exactly_the_clients_that_had_the_user(backend: Backend) {
    let app = spawn(backend, "").await;
    let alice = app.login("alice", "snsapi_userinfo").await.openid;
    let code = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_userinfo").await;
    app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await.expect("trade signs alice in");
    let bob = app.login("bob", "snsapi_userinfo").await.openid;
    let before = app.clock.now_secs();

    pushed(&app, "alice", PushEvent::AuthorizationRevoke).await;
    pushed(&app, "bob", PushEvent::InfoModified).await;

    let passport = read(&app, PASSPORT_KEY, "", 0).await.expect("passport reads");
    assert_eq!(
        seen(&passport),
        vec![(alice.clone(), UserEventKind::Revoked), (bob.clone(), UserEventKind::ProfileChanged)]
    );
    assert!(!passport.gap && !passport.next_cursor.is_empty());
    let event = &passport.events[0];
    assert_eq!(event.app, "mp");
    let wechat_time = event.wechat_time.expect("CreateTime").seconds;
    assert!((before - 5..=before + 5).contains(&wechat_time), "WeChat's CreateTime: {wechat_time}");
    let acted = event.acted_time.expect("acted").seconds;
    assert!((before..=before + 5).contains(&acted), "when wxauth acted: {acted}");
    let trade = read(&app, TRADE_KEY, "", 0).await.expect("trade reads");
    assert_eq!(seen(&trade), vec![(alice.clone(), UserEventKind::Revoked)], "trade never had bob");
    let crm = read(&app, CRM_KEY, "", 0).await.expect("crm reads");
    assert!(crm.events.is_empty() && !crm.gap, "a client of the app that never had alice hears nothing");
    // Another feed's cursor reads the caller's own feed, never the other's.
    let crm = read(&app, CRM_KEY, &passport.next_cursor, 0).await.expect("crm reads");
    assert!(crm.events.is_empty());

    let again = read(&app, PASSPORT_KEY, &passport.next_cursor, 0).await.expect("again");
    assert!(again.events.is_empty() && !again.gap, "nothing new");
    assert_eq!(again.next_cursor, passport.next_cursor, "the cursor stays");
    pushed(&app, "alice", PushEvent::AuthorizationCancellation).await;
    let after = read(&app, PASSPORT_KEY, &passport.next_cursor, 0).await.expect("after");
    assert!(after.events.is_empty(), "alice is forgotten: no client had her when she closed her account");

    let denied = read(&app, "no-such-key", "", 0).await.expect_err("unknown key");
    assert_eq!((denied.code(), reason(&denied)), (Code::Unauthenticated, "CLIENT_UNAUTHENTICATED".into()));
}

async fn a_replayed_push_records_nothing_twice(backend: Backend) {
    let app = spawn(backend, "").await;
    app.login("alice", "snsapi_userinfo").await;
    let revoke = app.sim.event_message(MP_APPID, "alice", PushEvent::AuthorizationRevoke).expect("event");
    let signed = app.sim.sign_push(MP_APPID, &revoke).expect("signed");
    assert_eq!(app.sim.send_push(&signed).await.expect("sent"), (200, "success".into()));
    app.login("alice", "snsapi_userinfo").await;
    assert_eq!(app.sim.send_push(&signed).await.expect("sent"), (409, "refused: replayed\n".into()));
    let page = read(&app, PASSPORT_KEY, "", 0).await.expect("reads");
    assert_eq!(page.events.len(), 1, "one event for one act");
}

async fn past_the_kept_count_an_old_cursor_answers_a_gap(backend: Backend) {
    let app = spawn(backend, "[token]\nuser_events_kept = 3\n").await;
    let alice = app.login("alice", "snsapi_userinfo").await.openid;
    // A changed profile leaves alice signed in: each push is one more event for passport.
    for _ in 0..2 {
        pushed(&app, "alice", PushEvent::InfoModified).await;
    }
    let first = read(&app, PASSPORT_KEY, "", 1).await.expect("first");
    let second = read(&app, PASSPORT_KEY, &first.next_cursor, 1).await.expect("second");
    assert_eq!((first.events.len(), second.events.len()), (1, 1));
    for _ in 0..3 {
        pushed(&app, "alice", PushEvent::InfoModified).await;
    }
    // Five written, three kept: the second event is the third's predecessor, the first is not.
    let caught_up = read(&app, PASSPORT_KEY, &second.next_cursor, 0).await.expect("caught up");
    assert_eq!((caught_up.events.len(), caught_up.gap), (3, false), "nothing missed after the second");
    let behind = read(&app, PASSPORT_KEY, &first.next_cursor, 0).await.expect("behind");
    assert_eq!((behind.events.len(), behind.gap), (3, true), "the second event is gone");
    assert_eq!(behind.next_cursor, caught_up.next_cursor);
    assert!(behind.events.iter().all(|e| e.openid == alice));
    let oldest = read(&app, PASSPORT_KEY, "", 0).await.expect("from the oldest");
    assert_eq!((oldest.events.len(), oldest.gap), (3, false), "no cursor, no gap");
}

async fn a_bad_cursor_or_limit_is_invalid_argument(backend: Backend) {
    let app = spawn(backend, "").await;
    for (after, limit, field) in [("x", 0, "after"), ("1-", 0, "after"), ("1-2-3", 0, "after"), ("", 501, "limit")] {
        let status = read(&app, PASSPORT_KEY, after, limit).await.expect_err("refused");
        assert_eq!((status.code(), reason(&status)), (Code::InvalidArgument, "INVALID_ARGUMENT".into()), "{after}");
        let violations = status.get_error_details().bad_request().expect("BadRequest").field_violations.clone();
        assert_eq!(violations[0].field, field);
    }
    assert!(read(&app, PASSPORT_KEY, "", 500).await.is_ok(), "500 is allowed");
}

both_backends!(
    a_revoke_reaches_exactly_the_clients_that_had_the_user,
    a_replayed_push_records_nothing_twice,
    past_the_kept_count_an_old_cursor_answers_a_gap,
    a_bad_cursor_or_limit_is_invalid_argument,
);

/// Two replicas on one Redis: events pushed to either, read a page at a time from both in turn,
/// come in push order, none lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_pages_in_order_across_replicas() {
    let a = spawn(Backend::Redis, "").await;
    let b = spawn_app_with(a.sim.clone(), a.sim_addr, a.redis.as_ref().map(Arc::clone), &config("")).await;
    let alice = a.login("alice", "snsapi_userinfo").await.openid;
    let bob = b.login("bob", "snsapi_userinfo").await.openid;
    // Changed profiles leave both signed in; a revoke of alice ends the run.
    let mut expected = Vec::new();
    for i in 0..7 {
        let (user, openid) = if i % 2 == 0 { ("alice", &alice) } else { ("bob", &bob) };
        let (event, kind) = if i == 6 {
            (PushEvent::AuthorizationRevoke, UserEventKind::Revoked)
        } else {
            (PushEvent::InfoModified, UserEventKind::ProfileChanged)
        };
        push_to(if i % 3 == 0 { &b } else { &a });
        pushed(&a, user, event).await;
        expected.push((openid.clone(), kind));
    }
    let (mut cursor, mut read_events) = (String::new(), Vec::new());
    for turn in 0..5 {
        let replica = if turn % 2 == 0 { &a } else { &b };
        let page = read(replica, PASSPORT_KEY, &cursor, 2).await.expect("page");
        assert!(!page.gap);
        read_events.extend(seen(&page));
        cursor = page.next_cursor;
    }
    assert_eq!(read_events, expected, "every event once, in push order");
    let scrape = a.http.get(format!("http://{}/metrics", a.admin_addr)).send().await.expect("metrics");
    let scrape = scrape.text().await.expect("text");
    assert!(scrape.contains("wxauth_user_events_read_total{client=\"passport\"}"), "reads counted");
    assert!(scrape.contains("wxauth_user_events_recorded_total{app=\"mp\",event=\"user_info_modified\"}"));
}

/// An act that fails half-way (trade's feed unwritable) answers WeChat 5xx with the nonce
/// released; WeChat's retry of the same push tells exactly the clients not yet told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_failed_act_tells_each_client_once() {
    let app = spawn(Backend::Redis, "").await;
    let alice = app.login("alice", "snsapi_userinfo").await.openid;
    let code = app.relayed_as(TRADE_KEY, "mp", "alice", "snsapi_userinfo").await;
    app.exchange_as(TRADE_KEY, "mp", &code.flow_id, &code.code).await.expect("trade signs alice in");
    let redis = app.redis.as_ref().expect("redis");
    let mut conn = redis.lock().await.conn().await;
    // A string where trade's stream should be: its XADD fails (WRONGTYPE), passport's does not.
    let trade_feed = "wxauth:client:{trade}:events";
    let _: () = redis::cmd("SET").arg(trade_feed).arg("x").query_async(&mut conn).await.expect("poison");

    let revoke = app.sim.event_message(MP_APPID, "alice", PushEvent::AuthorizationRevoke).expect("event");
    let signed = app.sim.sign_push(MP_APPID, &revoke).expect("signed");
    let (status, _) = app.sim.send_push(&signed).await.expect("sent");
    assert!(status >= 500, "the act failed: WeChat retries ({status})");
    assert!(app.store.get_reach("mp", &alice, "trade").await.expect("store").is_some(), "trade not told yet");

    let _: () = redis::cmd("DEL").arg(trade_feed).query_async(&mut conn).await.expect("unpoison");
    assert_eq!(app.sim.send_push(&signed).await.expect("sent"), (200, "success".into()), "the retry is heard");
    for key in [PASSPORT_KEY, TRADE_KEY] {
        let page = read(&app, key, "", 0).await.expect("reads");
        assert_eq!(seen(&page), vec![(alice.clone(), UserEventKind::Revoked)], "{key}: told once");
    }
    assert!(app.store.get_reach("mp", &alice, "trade").await.expect("store").is_none());
}
