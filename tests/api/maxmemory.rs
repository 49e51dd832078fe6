//! A full Redis under `maxmemory-policy noeviction` (what docs/operations.md asks for): writes
//! are refused with `OOM command not allowed`, which callers see as `UNAVAILABLE` /
//! `STORE_UNAVAILABLE` with RetryInfo; reads go on, health stays SERVING (Redis answers), and
//! everything works again once Redis has room.

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;

use crate::helpers::{Backend, TestApp, flow_request, reason, spawn_app};

async fn health(app: &TestApp) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr)).expect("uri");
    let mut client = HealthClient::new(channel.connect().await.expect("connect"));
    let request = HealthCheckRequest { service: "wxauth.v1.WeChatOAuthService".into() };
    let status = client.check(request).await.expect("check").into_inner().status;
    ServingStatus::try_from(status).expect("known status")
}

/// Sets Redis's memory limit (bytes; 0 is none) with the eviction policy the docs require.
async fn set_maxmemory(app: &TestApp, bytes: u64) {
    let mut conn = app.redis.as_ref().expect("redis").lock().await.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .arg("maxmemory")
        .arg(bytes)
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_writes_as_store_unavailable_and_keeps_reads() {
    let app = spawn_app(Backend::Redis).await;
    let login = app.login("alice", "snsapi_userinfo").await;

    // Any limit below what Redis already uses: every command that may add data is refused.
    set_maxmemory(&app, 1).await;

    let status = app.grpc.clone().build_authorize_url(app.req(flow_request())).await.expect_err("no room");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unavailable, "STORE_UNAVAILABLE"));
    assert!(status.get_error_details().retry_info().is_some());
    assert!(!status.message().contains("OOM"), "internal text in the answer: {}", status.message());
    // Reads go on: the stored record answers (the profile cache write is best-effort).
    let user = app.user_info(&login.openid).await.expect("GetUserInfo reads the record");
    assert_eq!(user.openid, login.openid);
    assert_eq!(health(&app).await, ServingStatus::Serving, "Redis answers: the pods stay ready");

    set_maxmemory(&app, 0).await;
    app.grpc.clone().build_authorize_url(app.req(flow_request())).await.expect("room again");
}
