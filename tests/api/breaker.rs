//! A Redis outage as an operator meets it (issue 11): SIGKILL under load, started again on the
//! same port, or frozen (SIGSTOP: open connections that answer nothing) and let go again. While the store is known down, calls that need it answer `UNAVAILABLE` /
//! `STORE_UNAVAILABLE` with RetryInfo at once (the circuit breaker), never at the caller's
//! deadline; health goes NOT_SERVING within a second; and wxauth recovers by itself, with no
//! restart. A replica that dies holding a user's refresh lock holds that user no longer than the
//! lock's life.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt as _;
use wxauth::proto::RefreshTokenRequest;
use wxauth::sim::Endpoint;

use crate::helpers::{Backend, TestApp, eventually, flow_request, reason, spawn_app};

/// The callers' deadline, as in the issue; health must go NOT_SERVING within the same second.
const DEADLINE: Duration = Duration::from_secs(1);
/// For a frozen Redis: it opens the breaker only after a second of silence (a stall under load
/// is not an outage), so callers with 2 s deadlines, and NOT_SERVING within 2 s.
const FROZEN_DEADLINE: Duration = Duration::from_secs(2);
/// How fast calls are answered once the store is known down: "at once" is a median under
/// 100 ms and none slower than half the deadline. Loose bounds for a debug build on a shared
/// 2-core machine (there, the gRPC round trip alone has a median of 3-40 ms, under `nice`);
/// before the circuit breaker these calls took the whole 1 s deadline.
const FAIL_FAST_MEDIAN: Duration = Duration::from_millis(100);
const FAIL_FAST_MAX: Duration = Duration::from_millis(500);

/// One answer a caller got.
#[derive(Debug)]
struct Answer {
    sent: Instant,
    took: Duration,
    /// `None`: OK; else the code, reason and whether RetryInfo came with it.
    error: Option<(Code, String, bool)>,
}

async fn health_client(app: &TestApp) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr)).expect("uri");
    HealthClient::new(channel.connect().await.expect("connect"))
}

async fn health(client: &mut HealthClient<tonic::transport::Channel>) -> ServingStatus {
    let request = HealthCheckRequest { service: "wxauth.v1.WeChatOAuthService".into() };
    let status = client.check(request).await.expect("check").into_inner().status;
    ServingStatus::try_from(status).expect("known status")
}

/// A caller that starts flows one after another (each with a 1 s deadline) until `stop`.
fn caller(app: &TestApp, deadline: Duration, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Answer>> {
    let (mut grpc, template) = (app.grpc.clone(), app.req(flow_request()));
    let metadata = template.metadata().clone();
    tokio::spawn(async move {
        let mut answers = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let mut request = tonic::Request::new(flow_request());
            *request.metadata_mut() = metadata.clone();
            request.set_timeout(deadline);
            let sent = Instant::now();
            let result = grpc.build_authorize_url(request).await;
            let took = sent.elapsed();
            let error = result.err().map(|s| (s.code(), reason(&s), s.get_error_details().retry_info().is_some()));
            answers.push(Answer { sent, took, error });
            // A steady load, not a spin: the machine is shared.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answers
    })
}

/// Polls health every 10 ms until `stop`: when each status was first seen after a change.
fn health_watch(
    mut client: HealthClient<tonic::transport::Channel>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, ServingStatus)>> {
    tokio::spawn(async move {
        let mut seen: Vec<(Instant, ServingStatus)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let status = health(&mut client).await;
            if seen.last().is_none_or(|(_, last)| *last != status) {
                seen.push((Instant::now(), status));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    })
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// How Redis goes away in [`outage_under_load`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// SIGKILL, then a new server on the same port: connections reset, then refused.
    Killed,
    /// SIGSTOP, then SIGCONT: connections stay open and nothing answers (a partition).
    Frozen,
}

/// Redis lost for 4 s under a steady load of BuildAuthorizeUrl from 8 callers with 1 s
/// deadlines, then back: every answer is OK or `STORE_UNAVAILABLE` with RetryInfo, none as slow
/// as the deadline; once the store is known down calls answer at once; health NOT_SERVING within
/// 1 s of the loss, SERVING and calls succeeding within 2 s of the return, with no restart.
async fn outage_under_load(loss: Loss) {
    let deadline = if loss == Loss::Frozen { FROZEN_DEADLINE } else { DEADLINE };
    let app = spawn_app(Backend::Redis).await;
    let probe = health_client(&app).await;
    assert!(eventually(async || health(&mut probe.clone()).await == ServingStatus::Serving).await);
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8).map(|_| caller(&app, deadline, Arc::clone(&stop))).collect();
    let watch = health_watch(health_client(&app).await, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await; // load before the outage

    let redis = app.redis.as_ref().expect("redis");
    match loss {
        Loss::Killed => redis.lock().await.kill(),
        Loss::Frozen => redis.lock().await.freeze(),
    }
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await; // the outage, as in the issue
    match loss {
        Loss::Killed => redis.lock().await.restart().await,
        Loss::Frozen => redis.lock().await.thaw(),
    }
    let back = Instant::now(); // Redis accepts connections and answers again
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut answers = Vec::new();
    for caller in callers {
        answers.extend(caller.await.expect("caller"));
    }
    let seen = watch.await.expect("health watch");
    let first = |status: ServingStatus, after: Instant| {
        seen.iter().find(|(at, s)| *s == status && *at >= after).map(|(at, _)| *at)
    };
    let not_serving = first(ServingStatus::NotServing, killed).expect("health went NOT_SERVING");
    let serving = first(ServingStatus::Serving, back).expect("health went SERVING again");
    let first_ok = answers
        .iter()
        .filter(|a| a.sent >= back && a.error.is_none())
        .map(|a| a.sent + a.took)
        .min()
        .expect("a call succeeded after Redis returned");
    let known_down: Vec<&Answer> =
        answers.iter().filter(|a| a.sent >= not_serving && a.sent + a.took <= back).collect();
    let mut known_down_took: Vec<Duration> = known_down.iter().map(|a| a.took).collect();
    known_down_took.sort_unstable();
    let slowest_known_down = known_down_took.last().copied().unwrap_or_default();
    let median_known_down = known_down_took.get(known_down_took.len() / 2).copied().unwrap_or_default();
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    let ok = answers.iter().filter(|a| a.error.is_none()).count();
    let unavailable = answers.iter().filter(|a| a.error.as_ref().is_some_and(|e| e.0 == Code::Unavailable)).count();
    println!(
        "outage figures ({loss:?}): {} answers ({ok} OK, {unavailable} UNAVAILABLE); NOT_SERVING {} ms after the loss; \
         {} calls while known down, median {} µs, slowest {} ms; slowest call overall {} ms; SERVING {} ms and first OK call \
         {} ms after Redis returned",
        answers.len(),
        ms(not_serving - killed),
        known_down.len(),
        median_known_down.as_micros(),
        ms(slowest_known_down),
        ms(slowest),
        ms(serving - back),
        ms(first_ok - back),
    );

    for answer in &answers {
        if let Some((code, reason, retry_info)) = &answer.error {
            assert_eq!((*code, reason.as_str()), (Code::Unavailable, "STORE_UNAVAILABLE"), "{answer:?}");
            assert!(retry_info, "UNAVAILABLE without RetryInfo: {answer:?}");
        }
        assert!(answer.took < deadline, "an answer as slow as the deadline: {answer:?}");
    }
    assert_eq!(ok + unavailable, answers.len(), "only OK and UNAVAILABLE");
    assert!(unavailable > 0 && ok > 0, "the outage was seen, and calls worked around it");
    assert!(not_serving - killed < deadline, "NOT_SERVING {:?} after the loss", not_serving - killed);
    assert!(!known_down.is_empty(), "calls were made while the store was known down");
    assert!(median_known_down < FAIL_FAST_MEDIAN, "known down, yet calls took {median_known_down:?} (median)");
    assert!(slowest_known_down < FAIL_FAST_MAX, "known down, yet a call took {slowest_known_down:?}");
    assert!(serving - back < Duration::from_secs(2), "SERVING {:?} after Redis returned", serving - back);
    assert!(first_ok - back < Duration::from_secs(2), "first OK {:?} after Redis returned", first_ok - back);
    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.contains("wxauth_store_breaker_state 0"), "closed again");
    assert!(metrics.contains("wxauth_store_breaker_transitions_total{state=\"open\"}"));
    assert!(!metrics.contains("wxauth_store_breaker_rejections_total 0\n"), "the open breaker answered calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_under_load_answers_ok_or_unavailable_at_once_and_recovers_alone() {
    outage_under_load(Loss::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_under_load_answers_ok_or_unavailable_at_once_and_recovers_alone() {
    outage_under_load(Loss::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_answers_its_503_page_at_once_while_the_store_is_down() {
    let app = spawn_app(Backend::Redis).await;
    let probe = health_client(&app).await;
    assert!(eventually(async || health(&mut probe.clone()).await == ServingStatus::Serving).await);
    let flow = app.flow_as(crate::helpers::PASSPORT_KEY, "mp", "snsapi_base").await;

    app.redis.as_ref().expect("redis").lock().await.kill();
    assert!(eventually(async || health(&mut probe.clone()).await == ServingStatus::NotServing).await);
    for _ in 0..5 {
        let started = Instant::now();
        let response = app.callback(&format!("code=abc&state={flow}")).await;
        let took = started.elapsed();
        assert_eq!(response.status(), 503, "'try again in a moment', not 'expired'");
        assert!(took < FAIL_FAST_MAX, "the relay's 503 took {took:?}");
    }

    app.redis.as_ref().expect("redis").lock().await.restart().await;
    assert!(eventually(async || health(&mut probe.clone()).await == ServingStatus::Serving).await);
    // A restarted Redis holds nothing (no persistence here): the flow is gone, and says so.
    assert_eq!(app.callback(&format!("code=abc&state={flow}")).await.status(), 400);
}

/// A replica killed while it holds a user's refresh lock: its lock stays in Redis (taken here
/// directly, as the dead replica left it, with a short life). The next refresh of that user
/// waits for the lock to lapse, not longer, then refreshes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_lock_left_by_a_dead_replica_holds_the_user_no_longer_than_its_life() {
    let app = spawn_app(Backend::Redis).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let lock_life = Duration::from_millis(1500);
    let lock_key = format!("wxauth:mp:lock:{}", login.openid);
    let mut conn = app.redis.as_ref().expect("redis").lock().await.conn().await;
    let taken: Option<String> = redis::cmd("SET")
        .arg(&lock_key)
        .arg("dead-replica:0123456789abcdef")
        .arg("NX")
        .arg("PX")
        .arg(lock_life.as_millis() as u64)
        .query_async(&mut conn)
        .await
        .expect("SET");
    assert!(taken.is_some(), "the dead replica's lock");
    let taken_at = Instant::now();

    let request = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    let mut request = app.req(request);
    request.set_timeout(Duration::from_secs(10));
    let refreshed = app.grpc.clone().refresh_token(request).await.expect("refreshed once the lock lapsed");
    let took = taken_at.elapsed();
    println!("refresh behind a dead replica's {} ms lock answered after {} ms", ms(lock_life), ms(took));

    assert!(refreshed.into_inner().access_token_expire_time.is_some());
    assert_eq!(app.sim.calls(Endpoint::RefreshToken), 1, "this caller refreshed");
    assert!(took >= lock_life - Duration::from_millis(100), "the dead replica's lock was respected: {took:?}");
    // How far past the lapse the answer may come. The waiter takes the lock at its first poll
    // after the lapse (every 20-40 ms), then refreshes. Measured (2026-12-04, debug build, 2
    // cores): 9-21 ms past the lapse at load average 10, and 16-179 ms over 20 runs in a row
    // beside a parallel `cargo build --release` at load average 15-16 (the old bound, 500 ms,
    // is what load broke). What this must tell apart is a wait for the waiter's own lock life
    // (24.6 s by default) or its give-up (twice that), not milliseconds: 2 s is 11x the worst
    // measured and 11x below the nearest wrong answer.
    assert!(took < lock_life + Duration::from_secs(2), "held past the lock's life: {took:?}");
    let left: bool = redis::cmd("EXISTS").arg(&lock_key).query_async(&mut conn).await.expect("EXISTS");
    assert!(!left, "the refresh released its own lock");
}
