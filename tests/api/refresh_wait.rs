//! A refresh that waits for another replica's (which holds the user's refresh lock) backs off
//! and stops at the caller's gRPC deadline (issue 18's code review): before, it read the record
//! every 20–40 ms for up to twice the lock's life (~1,500 reads per stuck user per replica),
//! long after the caller had been told DEADLINE_EXCEEDED.

use std::time::Duration;

use tonic::Code;
use wxauth::proto::RefreshTokenRequest;

use crate::both_backends;
use crate::helpers::{Backend, TestApp, spawn_app};

/// Store reads so far, from a real scrape (`get` is the read of a token record).
async fn store_reads(app: &TestApp) -> f64 {
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let text = scrape.text().await.expect("metrics");
    let series = "wxauth_store_operation_duration_seconds_count{operation=\"get\"} ";
    text.lines().find_map(|l| l.strip_prefix(series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

async fn a_refresh_waiting_on_another_replica_stops_at_the_callers_deadline(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.login("alice", "snsapi_userinfo").await;
    // Another replica holds alice's refresh lock, and is stuck.
    let held = app.store.try_lock("mp", &alice.openid, Duration::from_secs(60)).await.expect("store");
    assert!(held.is_some());
    let before = store_reads(&app).await;

    let mut request = app.req(RefreshTokenRequest { app: "mp".into(), openid: alice.openid.clone(), device: 0 });
    // The deadline as the caller's gRPC library sends it (without a client-side timer of
    // tonic's own, which would end the call on the client's side first).
    request.metadata_mut().insert("grpc-timeout", "1500m".parse().expect("ascii"));
    let status = app.grpc.clone().refresh_token(request).await.expect_err("the holder never finishes");

    // wxauth's own answer, or tonic's (its server also applies `grpc-timeout`, as CANCELLED):
    // whichever fires first, the waiter must stop with it.
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    let during = store_reads(&app).await - before;
    assert!(during <= 12.0, "{during} reads in 1.5 s: backed off, not every 20-40 ms (~50)");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = store_reads(&app).await - before;
    assert!(after - during <= 1.0, "{} reads after the caller's deadline", after - during);
    assert_eq!(app.sim.calls(wxauth::sim::Endpoint::RefreshToken), 0);
}

both_backends!(a_refresh_waiting_on_another_replica_stops_at_the_callers_deadline);
