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

async fn a_denial_relays_the_state_alone(backend: Backend) {
    let app = spawn_app(backend).await;
    let flow = start(&app, "https://passport.example.com/login/", "s1").await;
    let response = app.callback(&format!("state={flow}")).await;
    assert_eq!(response.status(), 302);
    assert_eq!(location(&response), "https://passport.example.com/login/?state=s1");
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

both_backends!(
    the_code_goes_to_the_stored_return_url_with_the_callers_state,
    separators_and_line_breaks_are_percent_encoded_in_the_location,
    a_code_planted_in_the_return_url_is_replaced_by_the_real_one,
    simultaneous_callbacks_relay_three_to_the_same_place_and_exactly_one_is_first,
    a_denial_relays_the_state_alone,
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
