//! The relay: codes go to the flow's stored return URL and nowhere else.

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
}

both_backends!(
    the_code_goes_to_the_stored_return_url_with_the_callers_state,
    a_denial_relays_the_state_alone,
    a_second_callback_in_the_grace_window_goes_to_the_same_place,
    unknown_flows_and_malformed_callbacks_get_a_page_not_a_redirect,
);
