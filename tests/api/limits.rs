//! Per-client limits: a client over its rate for an RPC family gets RESOURCE_EXHAUSTED /
//! CLIENT_RATE_LIMITED with governor's wait as RetryInfo while other clients and families go on;
//! a client at its open-flow cap gets TOO_MANY_OPEN_FLOWS until its flows expire, across the
//! store, and the flow it was refused is not left behind.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{BuildAuthorizeUrlRequest, Scope, ValidateTokenRequest};

use crate::both_backends;
use crate::helpers::{Backend, TestApp, authed, metadata, reason, spawn_app_configured};

/// Keys of the clients these tests add to the test config.
const GREEDY_KEY: &str = "greedy-test-key";
const STEADY_KEY: &str = "steady-test-key";

/// Config for clients `greedy` and `steady` with the same `limits` lines (and otherwise the
/// shape of `passport`).
fn two_clients(limits: &str) -> String {
    let client = |name: &str, key: &str| {
        format!(
            "[clients.{name}]\nkey_sha256 = \"{}\"\napps = [\"mp\"]\nreturn_urls = [\"https://passport.example.com/\"]\n{}\n",
            hex::encode(wxauth::config::key_digest(key)),
            limits.replace("CLIENT", name),
        )
    };
    format!("{}{}", client("greedy", GREEDY_KEY), client("steady", STEADY_KEY))
}

fn start(key: &str) -> tonic::Request<BuildAuthorizeUrlRequest> {
    authed(
        key,
        BuildAuthorizeUrlRequest {
            app: "mp".into(),
            return_url: "https://passport.example.com/back".into(),
            scope: Scope::SnsapiBase as i32,
            ..Default::default()
        },
    )
}

async fn build(app: &TestApp, key: &str) -> Result<String, tonic::Status> {
    app.grpc.clone().build_authorize_url(start(key)).await.map(|r| r.into_inner().flow_id)
}

/// A per-user call for an openid nobody signed in: NOT_FOUND when let through.
async fn validate(app: &TestApp, key: &str) -> Result<(), tonic::Status> {
    let request = ValidateTokenRequest { app: "mp".into(), openid: "o-nobody".into(), device: 0 };
    app.grpc.clone().validate_token(authed(key, request)).await.map(|_| ())
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status.get_error_details().retry_info().and_then(|r| r.retry_delay).expect("RetryInfo with a delay")
}

/// The value of `wxauth_client_refusals_total` for one client and reason on the admin listener.
async fn refusals(app: &TestApp, client: &str, reason: &str) -> u64 {
    let text = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let text = text.text().await.expect("body");
    text.lines()
        .filter(|l| l.starts_with("wxauth_client_refusals_total{"))
        .filter(|l| l.contains(&format!("client=\"{client}\"")) && l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

async fn a_client_over_its_rate_is_refused_with_governors_delay_and_others_are_not(backend: Backend) {
    // Two a minute: the third call is refused whatever the machine's speed.
    let limits = "[clients.CLIENT.rate_limits]\nauthorize = \"1/min\"\nauthorize_burst = 2";
    let app = spawn_app_configured(backend, &two_clients(limits)).await;

    build(&app, GREEDY_KEY).await.expect("first");
    build(&app, GREEDY_KEY).await.expect("second: the burst");
    let refused = build(&app, GREEDY_KEY).await.expect_err("over the rate");

    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "CLIENT_RATE_LIMITED");
    assert_eq!(metadata(&refused, "family").as_deref(), Some("authorize"));
    let delay = retry_delay(&refused);
    assert!(delay > Duration::from_secs(50) && delay <= Duration::from_secs(60), "governor's wait: {delay:?}");
    // Another client with the same limits has its own bucket; the same client's other
    // families theirs.
    build(&app, STEADY_KEY).await.expect("steady is not limited by greedy");
    let other_family = validate(&app, GREEDY_KEY).await.expect_err("no token");
    assert_eq!(other_family.code(), Code::NotFound, "{other_family:?}");
    // Refusals are counted by client and reason.
    assert_eq!(refusals(&app, "greedy", "CLIENT_RATE_LIMITED").await, 1);
    assert_eq!(refusals(&app, "steady", "CLIENT_RATE_LIMITED").await, 0);
}

async fn the_bucket_refills_after_the_retry_delay(backend: Backend) {
    // Twenty a second, one at a time: a refusal comes quickly and its wait is short.
    let limits = "[clients.CLIENT.rate_limits]\nuser = \"20/s\"\nuser_burst = 1";
    let app = spawn_app_configured(backend, &two_clients(limits)).await;

    let mut refused = None;
    for _ in 0..100 {
        match validate(&app, GREEDY_KEY).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused = Some(status);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
            Ok(()) => panic!("no token was stored"),
        }
    }
    let refused = refused.expect("a call within 50 ms of the last one is refused");
    assert_eq!(reason(&refused), "CLIENT_RATE_LIMITED");
    assert_eq!(metadata(&refused, "family").as_deref(), Some("user"));
    let delay = retry_delay(&refused);
    assert!(delay > Duration::ZERO && delay <= Duration::from_millis(50), "{delay:?}");

    // Waiting out the delay (at most 50 ms) is enough: the bucket has refilled.
    tokio::time::sleep(delay).await;
    let after = validate(&app, GREEDY_KEY).await.expect_err("no token");
    assert_eq!(after.code(), Code::NotFound, "let through after the delay: {after:?}");
}

async fn a_client_at_its_open_flow_cap_is_refused_until_its_flows_expire(backend: Backend) {
    let app = spawn_app_configured(backend, &two_clients("max_open_flows = 3")).await;
    let mut flows = Vec::new();
    for _ in 0..3 {
        flows.push(build(&app, GREEDY_KEY).await.expect("under the cap"));
    }

    let refused = build(&app, GREEDY_KEY).await.expect_err("at the cap");

    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "TOO_MANY_OPEN_FLOWS");
    assert_eq!(metadata(&refused, "max_open_flows").as_deref(), Some("3"));
    let delay = retry_delay(&refused);
    assert!(
        delay > Duration::from_secs(590) && delay <= Duration::from_secs(600),
        "until the oldest expires: {delay:?}"
    );
    build(&app, STEADY_KEY).await.expect("another client is not capped by greedy's flows");
    assert_eq!(refusals(&app, "greedy", "TOO_MANY_OPEN_FLOWS").await, 1);
    if let Some(redis) = &app.redis {
        let mut conn = redis.lock().await.conn().await;
        let flow_keys: Vec<String> =
            redis::cmd("KEYS").arg("wxauth:flow:*").query_async(&mut conn).await.expect("keys");
        assert_eq!(flow_keys.len(), 4, "greedy's three and steady's one; the refused flow was deleted: {flow_keys:?}");
        let set = "wxauth:client:greedy:flows";
        let members: Vec<String> =
            redis::cmd("ZRANGE").arg(set).arg(0).arg(-1).query_async(&mut conn).await.expect("zrange");
        assert_eq!(members.len(), 3);
        assert!(members.iter().all(|m| !flows.contains(m)), "members are random ids, never flow ids");
        let ttl: i64 = redis::cmd("PTTL").arg(set).query_async(&mut conn).await.expect("pttl");
        assert!(ttl > 0 && ttl <= 600_000, "the set expires with its newest flow: {ttl}");
    }

    // The flows' ten minutes pass (service clock): they stop counting with no cleanup job.
    app.advance(Duration::from_secs(601));
    for _ in 0..3 {
        build(&app, GREEDY_KEY).await.expect("the expired flows no longer count");
    }
    let again = build(&app, GREEDY_KEY).await.expect_err("at the cap again");
    assert_eq!(reason(&again), "TOO_MANY_OPEN_FLOWS");
}

async fn simultaneous_starts_never_pass_the_cap(backend: Backend) {
    let app = spawn_app_configured(backend, &two_clients("max_open_flows = 5")).await;

    let starts = futures::future::join_all((0..24).map(|_| build(&app, GREEDY_KEY))).await;

    let admitted = starts.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, 5, "{starts:?}");
    assert!(starts.iter().filter_map(|r| r.as_ref().err()).all(|s| reason(s) == "TOO_MANY_OPEN_FLOWS"));
    if let Some(redis) = &app.redis {
        let mut conn = redis.lock().await.conn().await;
        let flow_keys: Vec<String> =
            redis::cmd("KEYS").arg("wxauth:flow:*").query_async(&mut conn).await.expect("keys");
        assert_eq!(flow_keys.len(), 5, "every refused flow was deleted");
    }
    // The admitted flows relay: refusals did not delete the wrong ones.
    for flow in starts.into_iter().flatten() {
        // Each its own code: a code relayed through one flow is refused through another.
        let response = app.callback(&format!("code=CODE{flow}&state={flow}")).await;
        assert_eq!(response.status(), 302);
    }
}

both_backends!(
    a_client_over_its_rate_is_refused_with_governors_delay_and_others_are_not,
    the_bucket_refills_after_the_retry_delay,
    a_client_at_its_open_flow_cap_is_refused_until_its_flows_expire,
    simultaneous_starts_never_pass_the_cap,
);
