//! Running it: health follows the store, a lost store is a clear UNAVAILABLE, shutdown drains.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;
use wxauth::proto::{BuildAuthorizeUrlRequest, Scope};

use crate::helpers::{Backend, TestApp, reason, spawn_app};

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

/// Polls until `check` holds (the health task checks the store every second); bounded.
async fn eventually<F: AsyncFn() -> bool>(check: F) -> bool {
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn flow_request() -> BuildAuthorizeUrlRequest {
    BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiBase as i32,
        ..Default::default()
    }
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
    let relay = app.callback("code=abc&state=SomeFlow123").await;
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
