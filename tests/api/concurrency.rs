//! One refresh per user, whatever the load: in one process and across replicas.

use std::sync::Arc;
use std::time::Duration;

use wxauth::sim::{Endpoint, Fault};

use crate::helpers::{Backend, RedisServer, spawn_app, spawn_app_with, spawn_sim};

/// 1,000 concurrent GetUserInfo calls for one openid whose token has expired, spread over
/// TWO wxauth instances sharing one Redis, make exactly one refresh call to WeChat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_two_replicas_make_one_refresh() {
    let (sim, sim_addr) = spawn_sim().await;
    let redis = Some(Arc::new(tokio::sync::Mutex::new(RedisServer::start().await)));
    let a = spawn_app_with(sim.clone(), sim_addr, redis.clone(), "").await;
    let b = spawn_app_with(sim.clone(), sim_addr, redis, "").await;
    let login = a.login("alice", "snsapi_userinfo").await;

    // Expired for both replicas and for WeChat; a slow refresh makes the overlap certain.
    a.advance(Duration::from_secs(7300));
    b.clock.advance(Duration::from_secs(7300));
    sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_millis(300)), 1);

    let calls = (0..1000).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.user_info(&login.openid)
    });
    let results = futures::future::join_all(calls).await;
    let failures: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} failed, first: {:?}", failures.len(), failures.first());
    assert_eq!(sim.calls(Endpoint::RefreshToken), 1, "exactly one refresh reached WeChat");
    assert_eq!(sim.calls(Endpoint::UserInfo), 1000);
    assert_eq!(a.tokens.refreshes("upstream") + b.tokens.refreshes("upstream"), 1);
    assert!(a.tokens.refreshes("coalesced") + b.tokens.refreshes("coalesced") >= 1, "the other replica waited");
}

/// The in-memory store coalesces the same way within its one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_one_memory_replica_make_one_refresh() {
    let app = spawn_app(Backend::Memory).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.advance(Duration::from_secs(7300));
    app.sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_millis(200)), 1);
    let results = futures::future::join_all((0..1000).map(|_| app.user_info(&login.openid))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1);
}
