//! The relay: codes go to the flow's stored return URL and nowhere else.

use std::time::Duration;

use wxauth::proto::{BuildAuthorizeUrlRequest, Scope};

use crate::both_backends;
use crate::helpers::{Backend, MP_APPID, TestApp, spawn_app};

async fn start(app: &TestApp, return_url: &str, state: &str) -> String {
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: return_url.into(),
        scope: Scope::SnsapiUserinfo as i32,
        state: state.into(),
        ..Default::default()
    };
    app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner().flow_id
}

fn location(response: &reqwest::Response) -> &str {
    response.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn the_code_goes_to_the_stored_return_url_with_the_callers_state(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://passport.example.com/login/done?from=app#frag", "csrf 1&2").await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let response = app.callback(&format!("code={code}&state={flow}")).await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        location(&response),
        format!("https://passport.example.com/login/done?from=app&code={code}&state=csrf+1%262")
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
}

async fn a_denial_of_a_flow_never_started_goes_back_without_the_state(backend: Backend) {
    // Arrange: a flow shown as a QR code (never sent through its start URL): no browser to check.
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://passport.example.com/login/", "s1").await;
    // Act: code-less callbacks, more than the budget, by anyone holding the flow id.
    for _ in 0..4 {
        let response = app.callback(&format!("state={flow}")).await;
        // Assert: back to the product, without its state.
        assert_eq!(response.status(), 302);
        assert_eq!(location(&response), "https://passport.example.com/login/");
    }
    // They used none of the flow's callbacks: the user's real one is still relayed.
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let response = app.callback(&format!("code={code}&state={flow}")).await;
    assert_eq!(location(&response), format!("https://passport.example.com/login/?code={code}&state=s1"));
}

/// A flow started through its start URL: the browser's `state` (the bound id) and cookie.
struct Started {
    flow_id: String,
    bound: String,
    cookie: String,
}

async fn build(app: &TestApp, return_url: &str, state: &str) -> wxauth::proto::BuildAuthorizeUrlResponse {
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: return_url.into(),
        scope: Scope::SnsapiUserinfo as i32,
        state: state.into(),
        ..Default::default()
    };
    app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner()
}

/// The browser visits the start URL; returns what it then holds.
async fn started(app: &TestApp, return_url: &str, state: &str) -> Started {
    let built = build(app, return_url, state).await;
    let start_url = built
        .start_url
        .replace(&format!("https://{}", crate::helpers::CALLBACK_HOST), &format!("http://{}", app.public_addr));
    let response = app.http.get(&start_url).send().await.expect("start");
    assert_eq!(response.status(), 302, "the start URL redirects to WeChat");
    let to_wechat = location(&response).to_owned();
    let bound = to_wechat.split("&state=").nth(1).and_then(|rest| rest.split('&').next()).expect("state").to_owned();
    let set_cookie = response.headers()["set-cookie"].to_str().expect("ascii").to_owned();
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    Started { flow_id: built.flow_id, bound, cookie }
}

async fn callback_with(app: &TestApp, query: &str, cookie: &str) -> reqwest::Response {
    let url = format!("http://{}/wechat/callback?{query}", app.public_addr);
    app.http.get(url).header("cookie", cookie).send().await.expect("relay reachable")
}

async fn the_start_url_sets_the_browsers_cookie_and_sends_it_to_wechat_once(backend: Backend) {
    // Arrange
    let app = spawn_app(backend).await;
    let built = build(&app, "https://passport.example.com/login/", "s1").await;
    let expected = format!("https://{}/wechat/callback?start=", crate::helpers::CALLBACK_HOST);
    assert!(built.start_url.starts_with(&expected), "on the callback domain: {}", built.start_url);
    let start_url = built
        .start_url
        .replace(&format!("https://{}", crate::helpers::CALLBACK_HOST), &format!("http://{}", app.public_addr));
    // Act
    let response = app.http.get(&start_url).send().await.expect("start");
    let again = app.http.get(&start_url).send().await.expect("start again");
    // Assert: WeChat's authorize URL as BuildAuthorizeUrl builds it, for the bound id.
    assert_eq!(response.status(), 302);
    let to_wechat = location(&response);
    let bound = to_wechat.split("&state=").nth(1).and_then(|rest| rest.split('&').next()).expect("state");
    assert_eq!(bound.len(), 76);
    assert!(bound.starts_with(&built.flow_id), "the bound id derives from the flow id");
    assert_eq!(to_wechat, built.authorize_url.replace(&format!("state={}", built.flow_id), &format!("state={bound}")));
    let cookie = response.headers()["set-cookie"].to_str().expect("ascii");
    let (pair, attributes) = cookie.split_once("; ").expect("attributes");
    assert!(pair.starts_with(&format!("wxauth_{}=", &bound[54..64])), "{cookie}");
    assert_eq!(attributes, "Path=/wechat/callback; Max-Age=600; HttpOnly; SameSite=Lax", "dev mode: no Secure");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(again.status(), 400, "a start URL works once");
    assert!(again.headers().get("set-cookie").is_none());
    assert!(again.headers().get("location").is_none());
    let made_up = start_url.replace(&built.flow_id, &app.store.new_flow_id("passport", "mp"));
    assert_eq!(app.http.get(&made_up).send().await.expect("start").status(), 400, "another flow's start key");
    let bare = format!("http://{}/wechat/callback?start={}", app.public_addr, built.flow_id);
    assert_eq!(app.http.get(&bare).send().await.expect("start").status(), 400, "the flow id alone starts nothing");
}

async fn a_bound_flow_relays_only_to_its_browser_and_its_code_exchanges_with_the_flow_id(backend: Backend) {
    // Arrange: the victim's browser started the flow; the attacker knows the flow id and even
    // the bound id (from a callback URL), but has no cookie.
    let app = spawn_app(backend).await;
    let victim = started(&app, "https://passport.example.com/login/", "victim-state").await;
    let attacker_code = app.code(MP_APPID, "bob", "snsapi_userinfo");
    // Act: the attacks of the review (read the state, use the budget, plant his code).
    let mut refused = Vec::new();
    for query in [
        format!("state={}", victim.bound),
        format!("state={}", victim.bound),
        format!("state={}", victim.bound),
        format!("state={}", victim.flow_id),
        format!("code={attacker_code}&state={}", victim.bound),
        format!("code={attacker_code}&state={}", victim.flow_id),
    ] {
        let response = app.callback(&query).await;
        refused.push((response.status().as_u16(), response.headers().get("location").is_some()));
    }
    let wrong_cookie = format!("wxauth_{}=00000000000000000000000000000000", &victim.bound[54..64]);
    let forged = callback_with(&app, &format!("code={attacker_code}&state={}", victim.bound), &wrong_cookie).await;
    // Assert: every one refused, no redirect, and the planted code bound to nothing.
    assert_eq!(refused, vec![(400, false); 6]);
    assert_eq!(forged.status(), 400);
    let planted = app.exchange_as(crate::helpers::PASSPORT_KEY, "mp", &victim.flow_id, &attacker_code).await;
    assert_eq!(crate::helpers::reason(&planted.expect_err("never relayed")), "CODE_NOT_FROM_FLOW");
    // The victim's browser: a denial gets its state back, and no budget went to anyone.
    let denied = callback_with(&app, &format!("state={}", victim.bound), &victim.cookie).await;
    assert_eq!(location(&denied), "https://passport.example.com/login/?state=victim-state");
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    for _ in 0..wxauth::relay::MAX_CALLBACKS {
        let response = callback_with(&app, &format!("code={code}&state={}", victim.bound), &victim.cookie).await;
        assert_eq!(location(&response), format!("https://passport.example.com/login/?code={code}&state=victim-state"));
    }
    let login = app.exchange_as(crate::helpers::PASSPORT_KEY, "mp", &victim.flow_id, &code).await.expect("exchange");
    assert_eq!(Some(login.openid), app.sim.openid(MP_APPID, "alice"));
}

async fn a_callback_past_the_budget_binds_no_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://m.example.com/cb", "s").await;
    for n in 1..=wxauth::relay::MAX_CALLBACKS {
        assert_eq!(app.callback(&format!("code=CODE{n}&state={flow}")).await.status(), 302);
    }
    let late = app.code(MP_APPID, "bob", "snsapi_userinfo");
    assert_eq!(app.callback(&format!("code={late}&state={flow}")).await.status(), 400);
    let exchanged = app.exchange_as(crate::helpers::PASSPORT_KEY, "mp", &flow, &late).await;
    assert_eq!(crate::helpers::reason(&exchanged.expect_err("refused")), "CODE_NOT_FROM_FLOW");
}

async fn a_state_that_is_no_flow_id_of_wxaths_never_reaches_the_store(backend: Backend) {
    let app = spawn_app(backend).await;
    let real = start(&app, "https://m.example.com/cb", "s").await;
    let mut forged = real.clone().into_bytes();
    forged[0] = if forged[0] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).expect("ascii");
    for state in [forged.clone(), "a".repeat(54), "a".repeat(76), "NoSuchFlow123".into(), "a".repeat(128)] {
        for query in [format!("code=abc&state={state}"), format!("state={state}")] {
            let response = app.callback(&query).await;
            assert_eq!(response.status(), 400, "{query}");
        }
    }
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let scrape = scrape.text().await.expect("metrics");
    let store_calls: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("wxauth_store_operation_duration_seconds_count{"))
        .filter(|l| {
            ["use_flow", "use_flow_binding", "read_flow", "del_if_eq", "del"]
                .iter()
                .any(|op| l.contains(&format!("operation=\"{op}\"")))
        })
        .collect();
    assert_eq!(store_calls, Vec::<&str>::new(), "no store call for any of them");
    let line =
        |outcome: &str| scrape.lines().any(|l| l.starts_with("wxauth_relay_callbacks_total{") && l.contains(outcome));
    assert!(line("outcome=\"bad_state\"") && line("outcome=\"no_browser_cookie\""), "{scrape}");
}

async fn a_second_callback_in_the_grace_window_goes_to_the_same_place(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://m.example.com/cb", "s").await;
    let first = app.callback(&format!("code=CODE1&state={flow}")).await;
    let second = app.callback(&format!("code=CODE2&state={flow}")).await;
    assert_eq!(location(&first), "https://m.example.com/cb?code=CODE1&state=s");
    assert_eq!(location(&second), "https://m.example.com/cb?code=CODE2&state=s");
    if let Some(redis) = &app.redis {
        // The first use cut the flow's life to the grace window (60 s), atomically.
        let mut conn = redis.lock().await.conn().await;
        let key = format!("wxauth:flow:{flow}");
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.expect("pttl");
        assert!(ttl > 0 && ttl <= 60_000, "ttl {ttl}");
    }
}

async fn unknown_flows_and_malformed_callbacks_get_a_page_not_a_redirect(backend: Backend) {
    let app = spawn_app(backend).await;
    for query in [
        "code=abc&state=NoSuchFlow123",
        "code=abc",
        "state=",
        "code=abc&state=../../etc",
        "code=abc&state=https%3A%2F%2Fevil.com",
        "code=a%0d%0aSet-Cookie:x=1&state=abc",
        "state=a&state=b",
    ] {
        let response = app.callback(query).await;
        assert_eq!(response.status(), 400, "{query}");
        assert!(response.headers().get("location").is_none(), "{query}");
        let body = response.text().await.expect("body");
        assert!(body.contains("<html"), "{query}");
        assert!(!body.contains("evil") && !body.contains("Set-Cookie"), "nothing reflected: {query}");
    }
    if let Some(redis) = &app.redis {
        // The code is bound in the same round trip that finds no flow: unbound again, and no
        // callback counter is left for the made-up id either.
        let mut conn = redis.lock().await.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("wxauth:*").query_async(&mut conn).await.expect("keys");
        assert_eq!(keys, Vec::<String>::new());
    }
    // The code that went with a made-up flow id is still free for the flow it belongs to.
    let flow = start(&app, "https://m.example.com/cb", "s").await;
    assert_eq!(app.callback(&format!("code=abc&state={flow}")).await.status(), 302);
}

async fn separators_and_line_breaks_are_percent_encoded_in_the_location(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://passport.example.com/login/", "a&b=c#d\r\nSet-Cookie: x=1 é").await;
    // WeChat's codes are alphanumeric, but whatever arrives is relayed as data, never as syntax.
    let response = app.callback(&format!("code=a%2Bb%26c%3Dd&state={flow}")).await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        location(&response),
        "https://passport.example.com/login/?code=a%2Bb%26c%3Dd&state=a%26b%3Dc%23d%0D%0ASet-Cookie%3A+x%3D1+%C3%A9"
    );
    assert!(response.headers().get("set-cookie").is_none());
}

async fn a_code_planted_in_the_return_url_is_replaced_by_the_real_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://passport.example.com/login/?code=planted&next=%2Fhome&state=x", "s").await;
    let response = app.callback(&format!("code=REAL&state={flow}")).await;
    assert_eq!(response.status(), 302);
    assert_eq!(location(&response), "https://passport.example.com/login/?next=%2Fhome&code=REAL&state=s");
}

/// The memory store expires on the service clock, which the test moves. (Redis keeps TTLs on
/// its own clock, which a test cannot move; for Redis, the grace-window test checks that the
/// first callback cut the key's TTL to the window.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_window_the_flow_is_refused() {
    let app = spawn_app(Backend::Memory).await;
    let flow = start(&app, "https://m.example.com/cb", "s").await;
    let first = app.callback(&format!("code=CODE1&state={flow}")).await;
    assert_eq!(location(&first), "https://m.example.com/cb?code=CODE1&state=s");
    app.clock.advance(Duration::from_secs(59));
    let within = app.callback(&format!("code=CODE2&state={flow}")).await;
    assert_eq!(location(&within), "https://m.example.com/cb?code=CODE2&state=s", "still inside the 60 s");

    app.clock.advance(Duration::from_secs(2));
    let late = app.callback(&format!("code=CODE2&state={flow}")).await;
    assert_eq!(late.status(), 400);
    assert!(late.headers().get("location").is_none());
    assert!(late.text().await.expect("body").contains("start the WeChat sign-in again"));
}

async fn simultaneous_callbacks_relay_three_to_the_same_place_and_exactly_one_is_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://m.example.com/cb?x=1", "s").await;
    let callbacks = (0..8).map(|i| {
        let (app, flow) = (&app, &flow);
        async move { (i, app.callback(&format!("code=CODE{i}&state={flow}")).await) }
    });
    let mut relayed = 0;
    for (i, response) in futures::future::join_all(callbacks).await {
        if response.status() == 302 {
            relayed += 1;
            assert_eq!(location(&response), format!("https://m.example.com/cb?x=1&code=CODE{i}&state=s"));
        } else {
            assert_eq!(response.status(), 400, "callback {i}: relayed or refused, nothing else");
            assert!(response.headers().get("location").is_none());
        }
    }
    assert_eq!(relayed, wxauth::relay::MAX_CALLBACKS, "a flow relays three callbacks at most");
    // The store's read-count-and-cut is atomic: one callback saw the fresh flow, two its grace,
    // five came too late.
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let scrape = scrape.text().await.expect("metrics");
    let count = |outcome: &str| {
        scrape
            .lines()
            .find(|l| l.starts_with("wxauth_relay_callbacks_total{") && l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(count("relayed"), Some(1.0), "{scrape}");
    assert_eq!(count("relayed_again"), Some(2.0), "{scrape}");
    assert_eq!(count("too_many_callbacks"), Some(5.0), "{scrape}");
}

async fn a_start_url_opened_after_a_callback_leaves_the_flow_relaying(backend: Backend) {
    // Arrange: a flow shown as a QR code relays its callback; then its start URL is opened
    // (a second device, the back button).
    let app = spawn_app(backend).await;
    let built = build(&app, "https://passport.example.com/login/", "s1").await;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let first = app.callback(&format!("code={code}&state={}", built.flow_id)).await;
    assert_eq!(first.status(), 302);
    let start_url = built
        .start_url
        .replace(&format!("https://{}", crate::helpers::CALLBACK_HOST), &format!("http://{}", app.public_addr));
    // Act
    let started = app.http.get(&start_url).send().await.expect("start");
    let reload = app.callback(&format!("code={code}&state={}", built.flow_id)).await;
    // Assert: the start is refused, and the flow still relays within its grace window.
    assert_eq!(started.status(), 400, "a flow that relayed a callback is not started");
    assert_eq!(reload.status(), 302, "the reload is relayed again");
    assert_eq!(location(&reload), format!("https://passport.example.com/login/?code={code}&state=s1"));
}

both_backends!(
    the_code_goes_to_the_stored_return_url_with_the_callers_state,
    separators_and_line_breaks_are_percent_encoded_in_the_location,
    a_code_planted_in_the_return_url_is_replaced_by_the_real_one,
    simultaneous_callbacks_relay_three_to_the_same_place_and_exactly_one_is_first,
    a_denial_of_a_flow_never_started_goes_back_without_the_state,
    the_start_url_sets_the_browsers_cookie_and_sends_it_to_wechat_once,
    a_bound_flow_relays_only_to_its_browser_and_its_code_exchanges_with_the_flow_id,
    a_callback_past_the_budget_binds_no_code,
    a_start_url_opened_after_a_callback_leaves_the_flow_relaying,
    a_state_that_is_no_flow_id_of_wxaths_never_reaches_the_store,
    a_second_callback_in_the_grace_window_goes_to_the_same_place,
    unknown_flows_and_malformed_callbacks_get_a_page_not_a_redirect,
);

/// An unused flow expires after `flow.ttl` (10 minutes), on the service clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_flow_expires_after_its_ttl() {
    let app = spawn_app(Backend::Memory).await;
    let flow = start(&app, "https://m.example.com/cb", "s").await;
    app.clock.advance(Duration::from_secs(601));
    let late = app.callback(&format!("code=CODE1&state={flow}")).await;
    assert_eq!(late.status(), 400);
    assert!(late.headers().get("location").is_none());
}

/// The open-flow cap counts flows that exist: a flow whose write fails after the cap counted it
/// gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_whose_write_fails_gives_its_open_flow_place_back() {
    // Arrange: Redis refuses the flow's write (HSETNX) and nothing else.
    let app = spawn_app(Backend::Redis).await;
    let redis = app.redis.as_ref().expect("redis");
    let mut conn = redis.lock().await.conn().await;
    let acl = |rule: &'static str| redis::cmd("ACL").arg("SETUSER").arg("default").arg(rule).clone();
    let () = acl("-hsetnx").query_async(&mut conn).await.expect("acl");
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        ..Default::default()
    };
    // Act
    let refused = app.grpc.clone().build_authorize_url(app.req(request)).await;
    let () = acl("+hsetnx").query_async(&mut conn).await.expect("acl");
    // Assert
    assert_eq!(crate::helpers::reason(&refused.expect_err("the write failed")), "STORE_UNAVAILABLE");
    // The cap counts per window, a block at a time (docs/design.md §12.7): the default cap of
    // 50,000 counted a block of 50; the unwritten flow's place went back, and the 49 the replica
    // holds for the client's next flows are all that stay counted.
    let counters: Vec<String> =
        redis::cmd("KEYS").arg("wxauth:client:{passport}:flows:*").query_async(&mut conn).await.expect("keys");
    assert_eq!(counters.len(), 1, "{counters:?}");
    let open: i64 = redis::cmd("GET").arg(&counters[0]).query_async(&mut conn).await.expect("get");
    assert_eq!(open, 49, "no place is held for a flow that was never written");
}
