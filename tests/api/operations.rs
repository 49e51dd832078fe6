//! Running it: health follows the store, a lost store is a clear UNAVAILABLE, shutdown drains.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

use crate::helpers::{Backend, TestApp, eventually, flow_request, reason, spawn_app};

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr)).expect("uri");
    let mut client = HealthClient::new(channel.connect().await.expect("connect"));
    let request = HealthCheckRequest { service: service.into() };
    let status = client.check(request).await.expect("check").into_inner().status;
    ServingStatus::try_from(status).expect("known status")
}

async fn readyz(app: &TestApp) -> u16 {
    app.http.get(format!("http://{}/readyz", app.admin_addr)).send().await.expect("admin").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_store() {
    let app = spawn_app(Backend::Redis).await;
    assert!(eventually(async || health(&app, "").await == ServingStatus::Serving).await);
    assert_eq!(health(&app, "wxauth.v1.WeChatOAuthService").await, ServingStatus::Serving);
    assert_eq!(readyz(&app).await, 200);
    let healthz = app.http.get(format!("http://{}/healthz", app.admin_addr)).send().await.expect("admin");
    assert_eq!(healthz.status(), 200);

    app.redis.as_ref().expect("redis").lock().await.kill();
    let status = app.grpc.clone().build_authorize_url(app.req(flow_request())).await.expect_err("store down");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "STORE_UNAVAILABLE"));
    assert!(status.get_error_details().retry_info().is_some());
    assert!(eventually(async || health(&app, "wxauth.v1.WeChatOAuthService").await == ServingStatus::NotServing).await);
    assert_eq!(health(&app, "").await, ServingStatus::NotServing);
    assert_eq!(health(&app, "liveness").await, ServingStatus::Serving, "liveness ignores the store");
    assert_eq!(readyz(&app).await, 503);
    // A flow id of wxauth's (a made-up one is refused before the store is asked).
    let flow = app.store.new_flow_id("passport", "mp");
    let relay = app.callback(&format!("code=abc&state={flow}")).await;
    assert_eq!(relay.status(), 503, "the relay says 'try again', not 'expired'");

    app.redis.as_ref().expect("redis").lock().await.restart().await;
    assert!(eventually(async || health(&app, "").await == ServingStatus::Serving).await);
    assert_eq!(readyz(&app).await, 200);
    app.grpc.clone().build_authorize_url(app.req(flow_request())).await.expect("works again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut app = spawn_app(Backend::Memory).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(wxauth::sim::Endpoint::UserInfo, wxauth::sim::Fault::Delay(Duration::from_millis(1000)), 1);
    let in_flight = {
        let mut client = app.grpc.clone();
        let request = app.req(wxauth::proto::GetUserInfoRequest {
            app: "mp".into(),
            openid: login.openid.clone(),
            ..Default::default()
        });
        tokio::spawn(async move { client.get_user_info(request).await })
    };
    // Stop once the call is inside wxauth, waiting on the slow upstream.
    assert!(eventually(async || app.sim.calls(wxauth::sim::Endpoint::UserInfo) == 1).await);
    app.stop().await.expect("clean exit");
    let answered = in_flight.await.expect("task");
    assert!(answered.is_ok(), "the in-flight call finished: {answered:?}");
}

/// A production config an operator would deploy (Redis with credentials in the URL).
fn production_config(flow_ttl: &str) -> String {
    format!(
        r#"
[server]
callback_url = "https://auth.example.com/wechat/callback"
[store]
url = "redis://wxauth:hunter2@redis.example.internal:6379/0"
sealing_keys = "{keys}"
[apps.mp]
kind = "official_account"
appid = "wx0123456789abcdef"
secret = "appsecret-never-printed"
default_for = "MOBILE"
[clients.passport]
key_sha256 = "{digest}"
apps = ["mp"]
return_urls = ["https://passport.example.com/login/", "https://*.example.com:8443/"]
[flow]
ttl = "{flow_ttl}"
"#,
        keys = crate::helpers::test_keyring(),
        digest = hex::encode(wxauth::config::key_digest("a-client-key")),
    )
}

fn check(config: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("wxauth-check-{}", wxauth::random_id(8)));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("wxauth.toml");
    std::fs::write(&path, config).expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wxauth"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("WXAUTH_CONFIG")
        .output()
        .expect("wxauth runs");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

#[test]
fn check_validates_a_config_and_prints_it_without_secrets() {
    let config = production_config("10m");
    let output = check(&config);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(summary["mode"], "Production");
    assert_eq!(summary["store"]["urls"][0], "redis://***@redis.example.internal:6379/0");
    assert_eq!(summary["apps"][0]["appid"], "wx0123456789abcdef");
    assert_eq!(summary["apps"][0]["default_for"], serde_json::json!(["Mobile"]));
    assert_eq!(
        summary["clients"][0]["return_url_patterns"],
        serde_json::json!(["https://passport.example.com/login/", "https://*.example.com:8443/"])
    );
    let defaults =
        serde_json::json!({"authorize": "100/s, burst 100", "exchange": "20/s, burst 20", "user": "100/s, burst 100"});
    assert_eq!(summary["clients"][0]["rate_limits"], defaults, "production defaults, per replica");
    assert_eq!(summary["clients"][0]["max_open_flows"], 50_000);
    assert_eq!(summary["token"]["profile_cache"], "5m");
    assert_eq!(summary["sealing_key_ids"], serde_json::json!([1]));
    let keyring = crate::helpers::test_keyring();
    let sealing_key = keyring.split(':').nth(1).expect("key");
    let digest = hex::encode(wxauth::config::key_digest("a-client-key"));
    for secret in ["hunter2", "appsecret-never-printed", sealing_key, digest.as_str()] {
        assert!(!stdout.contains(secret), "{secret} printed");
    }

    let broken = check(&production_config("10s"));
    assert_eq!(broken.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("flow.ttl"), "{stderr}");
    assert!(broken.stdout.is_empty());
}
