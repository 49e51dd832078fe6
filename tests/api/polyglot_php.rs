//! A PHP service: `examples/php/wxauth_login.php` (PHP 8 and its curl extension, from Debian;
//! no gRPC extension) signs a user in through wxauth's JSON face (the Connect protocol on the
//! gRPC port), against WeChat failing as the Node example's test makes it fail: the first
//! exchange's answer lost (SIGN_IN_AGAIN: a new sign-in), the refresh token revoked
//! (REAUTHORIZATION_REQUIRED: consent again), and a second wxauth whose Redis is down
//! (STORE_UNAVAILABLE: retried after RetryInfo's delay, then given up on). Each of its calls
//! carries a `Connect-Timeout-Ms` and a `traceparent`, and wxauth's span of it joins the
//! caller's trace, as for gRPC callers (the helpers are `polyglot.rs`'s).

use std::path::Path;

use wxauth::sim::{Endpoint, Fault};

use crate::helpers::{Backend, MP_APPID, PASSPORT_KEY, spawn_app};
use crate::polyglot::{assert_spans_join_the_callers_traces, caught_spans, run_example};

#[tokio::test(flavor = "current_thread")]
async fn a_php_page_signs_a_user_in_through_json_and_reacts_to_each_failure() {
    let spans = caught_spans();
    let app = spawn_app(Backend::Redis).await;
    let outage = spawn_app(Backend::Redis).await;
    outage.redis.as_ref().expect("redis").lock().await.kill();
    app.sim.inject(Endpoint::AccessToken, Fault::AfterWork(Box::new(Fault::HttpStatus(502))), 1);
    app.sim.inject(Endpoint::RefreshToken, Fault::Errcode(40030), 1);

    let php = std::env::var("WXAUTH_PHP").unwrap_or_else(|_| "php".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/php/wxauth_login.php");
    let args = [
        &script.display().to_string(),
        "--json",
        &format!("http://{}", app.grpc_addr),
        "--relay",
        &format!("http://{}", app.public_addr),
        "--app",
        "mp",
        "--key",
        PASSPORT_KEY,
        "--return-url",
        "https://passport.example.com/login/",
        "--outage-json",
        &format!("http://{}", outage.grpc_addr),
    ];
    let seen = run_example(php, args.map(String::from).to_vec()).await;

    let openid = app.sim.openid(MP_APPID, "alice").expect("alice");
    assert_eq!(seen["authorize_url_ends_with"], "#wechat_redirect");
    assert_eq!(seen["returned_to"], "https://passport.example.com/login/");
    assert_eq!(seen["state_matches"], true);
    assert_eq!(seen["start_url_on_callback_domain"], true);
    let sign_in_again =
        serde_json::json!({"code": "FAILED_PRECONDITION", "reason": "SIGN_IN_AGAIN", "action": "sign_in_again"});
    assert_eq!(seen["exchange_failed"], sign_in_again);
    assert_eq!(seen["sign_ins"], 2, "a new sign-in after the lost answer");
    assert_eq!(seen["openid"], openid.as_str());
    assert_eq!(seen["same_result_again"], true, "no 40163 for a reload");
    assert_eq!(seen["nickname"], "Alice 爱丽丝");
    assert_eq!(seen["profile_nickname"], "Alice 爱丽丝");
    assert!(seen["profile_fetch_time"].as_i64().is_some_and(|t| t > 1_700_000_000), "{seen}");

    let reauthorize = serde_json::json!({"code": "FAILED_PRECONDITION", "reason": "REAUTHORIZATION_REQUIRED", "action": "reauthorize"});
    assert_eq!(seen["refresh"], reauthorize);
    assert_eq!(seen["reauthorized_same_user"], true);
    assert_eq!(seen["refresh_after_reauthorization"], "ok");

    assert_eq!(seen["bad_request"]["code"], "INVALID_ARGUMENT");
    assert_eq!(seen["bad_request"]["reason"], "INVALID_ARGUMENT");
    assert_eq!(seen["bad_request"]["action"], "fix_request");
    let violations = seen["bad_request"]["field_violations"].as_object().expect("BadRequest");
    assert_eq!(violations.keys().collect::<Vec<_>>(), ["openid"], "BadRequest names the field");
    assert_eq!(seen["unknown_user"]["reason"], "TOKEN_NOT_FOUND");
    assert_eq!(seen["unknown_user"]["action"], "reauthorize");
    assert_eq!(seen["injected_code"]["reason"], "CODE_NOT_FROM_FLOW");
    assert_eq!(seen["injected_code"]["action"], "sign_in_again");

    let outage_seen = serde_json::json!({
        "code": "UNAVAILABLE", "reason": "STORE_UNAVAILABLE", "action": "retry", "retry_delay_ms": 1000, "attempts": 2
    });
    assert_eq!(seen["outage"], outage_seen);
    assert_eq!(app.sim.calls(Endpoint::AccessToken), 3, "lost, then the two sign-ins' exchanges; no retried code");
    assert_spans_join_the_callers_traces(spans, &seen["sent"]);
}
