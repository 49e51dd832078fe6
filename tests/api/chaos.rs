//! Chaos between wxauth and its two dependencies (issue 11): a fault proxy ([`FaultProxy`]) on
//! the Redis link or on the WeChat link adds latency, stalls, resets live connections or
//! partitions the link mid-stream, while real gRPC clients with deadlines drive every RPC and a
//! browser's callback hits the relay. What must hold, whatever the fault: every call answers
//! before its deadline, with a status of the one mapping (`OK`, or `ErrorInfo` of domain
//! `wxauth.dev` with the reason and `RetryInfo` that go with it); nothing hangs; once the fault
//! clears, work resumes. And Redis killed (`SIGKILL`) in the middle of a sign-in or of a refresh
//! leaves nothing half-written to be served later.
//!
//! The deadline (4 s) is above every bound wxauth keeps by itself (a store operation: 2 s; a
//! WeChat call here: 1 s, two attempts for the retried ones), so an answer is wxauth's own,
//! never the client's timer. Each call is also raced against the deadline plus 0.5 s: a call
//! that gets no answer by then fails the test as hung.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::config::Settings;
use wxauth::proto::{ExchangeCodeRequest, GetUserInfoRequest, RefreshTokenRequest};
use wxauth::sim::{Endpoint, Fault, SimConfig, SimUser, Simulator};

use crate::helpers::{
    Backend, CALLBACK_HOST, MP_APPID, RedisServer, Relayed, TestApp, eventually, flow_request, settings_toml,
    spawn_app, spawn_settings,
};
use crate::proxy::{FaultProxy, LinkFault};

/// The callers' deadline in these tests.
const DEADLINE: Duration = Duration::from_secs(4);
/// How late after its deadline an answer may come (scheduling on a loaded 2-core machine).
const SLACK: Duration = Duration::from_millis(500);

/// The simulator's demo apps and users, plus `user1`..`user8` (each round of calls signs in
/// users of its own, so a refresh lock a fault left behind never meets a later round).
async fn spawn_sim_with_users() -> (Simulator, SocketAddr) {
    let mut config = SimConfig::demo();
    for app in &mut config.apps {
        app.callback_domain = CALLBACK_HOST.into();
    }
    config.users.extend((1..=8).map(|i| SimUser {
        key: format!("user{i}"),
        nickname: format!("User {i}"),
        headimgurl: String::new(),
        snapshot: false,
    }));
    Simulator::spawn_local(config).await.expect("simulator")
}

/// The test settings with WeChat reached at `api` through a 1 s timeout and two attempts, so
/// a retried WeChat call gives up within 2.3 s, well inside [`DEADLINE`].
fn chaos_settings(api: SocketAddr, store: &str) -> Settings {
    let toml = settings_toml(api, store, "");
    assert!(toml.contains("timeout = \"2s\"\n"), "the test settings' WeChat timeout moved");
    let toml = toml.replacen("timeout = \"2s\"\n", "timeout = \"1s\"\nattempts = 2\n", 1);
    Settings::from_toml(&toml).expect("chaos settings")
}

fn redis_store(url: &str) -> String {
    format!("kind = \"redis\"\nurl = \"{url}\"")
}

/// wxauth whose Redis link runs through a fault proxy (the test's own connections to Redis,
/// `app.redis`, do not).
async fn behind_redis_proxy() -> (TestApp, FaultProxy) {
    let (sim, sim_addr) = spawn_sim_with_users().await;
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let settings = chaos_settings(sim_addr, &redis_store(&format!("redis://{}/0", proxy.addr())));
    let redis = Some(Arc::new(tokio::sync::Mutex::new(redis)));
    (spawn_settings(sim, sim_addr, redis, settings).await, proxy)
}

/// wxauth whose WeChat link (the simulator's `sns` API) runs through a fault proxy.
async fn behind_wechat_proxy() -> (TestApp, FaultProxy) {
    let (sim, sim_addr) = spawn_sim_with_users().await;
    let proxy = FaultProxy::start(sim_addr).await;
    let redis = RedisServer::start().await;
    let settings = chaos_settings(proxy.addr(), &redis_store(&redis.url()));
    let redis = Some(Arc::new(tokio::sync::Mutex::new(redis)));
    (spawn_settings(sim, sim_addr, redis, settings).await, proxy)
}

/// What one round of calls works on, made while the links are healthy.
struct Round {
    /// A signed-in user (`snsapi_userinfo`): GetUserInfo (fresh: the stored token and WeChat)
    /// and RefreshToken.
    openid: String,
    /// A code relayed through its flow, not exchanged yet.
    relayed: Relayed,
    /// A flow no callback has reached yet, and the code WeChat gives for it.
    flow: String,
    code: String,
}

async fn prepare(app: &TestApp, signed_in: &str, exchanging: &str) -> Round {
    let openid = app.login(signed_in, "snsapi_userinfo").await.openid;
    let relayed = app.relayed("mp", exchanging, "snsapi_userinfo").await;
    let flow = app.flow_as(crate::helpers::PASSPORT_KEY, "mp", "snsapi_userinfo").await;
    let code = app.code(MP_APPID, exchanging, "snsapi_userinfo");
    Round { openid, relayed, flow, code }
}

/// One answer: `OK`, the `ErrorInfo.reason` of a mapped status, or the relay's `HTTP nnn`.
#[derive(Debug)]
struct Answered {
    call: &'static str,
    answer: String,
    took: Duration,
}

/// What a status says, after checking it is one of wxauth's mapped statuses: `ErrorInfo` of
/// domain `wxauth.dev`, the gRPC code of its reason, and `RetryInfo` exactly where a retry
/// helps. A status without them (the client's own timer, a transport error) fails the test.
fn mapped(call: &str, status: &tonic::Status) -> String {
    let details = status.get_error_details();
    let Some(info) = details.error_info() else {
        panic!("{call}: not a wxauth answer (no ErrorInfo): {:?} {}", status.code(), status.message());
    };
    assert_eq!(info.domain, wxauth::error::DOMAIN, "{call}");
    let (code, retry) = match info.reason.as_str() {
        "STORE_UNAVAILABLE" | "WECHAT_UNAVAILABLE" => (Code::Unavailable, true),
        "SIGN_IN_AGAIN" => (Code::FailedPrecondition, false),
        "CODE_NOT_FROM_FLOW" => (Code::PermissionDenied, false),
        "TOKEN_NOT_FOUND" => (Code::NotFound, false),
        other => panic!("{call}: unexpected reason {other} ({:?})", status.code()),
    };
    assert_eq!(status.code(), code, "{call}: {}", info.reason);
    assert_eq!(details.retry_info().is_some(), retry, "{call}: RetryInfo with {}", info.reason);
    info.reason.clone()
}

/// Runs a gRPC call sent with [`DEADLINE`], failing the test if it has no answer by the
/// deadline plus [`SLACK`].
async fn grpc<T>(call: &'static str, sent: impl Future<Output = Result<T, tonic::Status>>) -> Answered {
    grpc_within(call, DEADLINE, sent).await
}

/// [`grpc`] for a call sent with `deadline`.
async fn grpc_within<T>(
    call: &'static str,
    deadline: Duration,
    sent: impl Future<Output = Result<T, tonic::Status>>,
) -> Answered {
    let started = Instant::now();
    let Ok(result) = tokio::time::timeout(deadline + SLACK, sent).await else {
        panic!("{call} hung: no answer within {:?}", deadline + SLACK);
    };
    let answer = match result {
        Ok(_) => "OK".to_owned(),
        Err(status) => mapped(call, &status),
    };
    Answered { call, answer, took: started.elapsed() }
}

/// A request of the `passport` client carrying the callers' deadline (`grpc-timeout`).
fn with_deadline<T>(app: &TestApp, message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = app.req(message);
    request.set_timeout(deadline);
    request
}

async fn exchange(app: &TestApp, relayed: &Relayed) -> Answered {
    let message = ExchangeCodeRequest {
        app: "mp".into(),
        flow_id: relayed.flow_id.clone(),
        code: relayed.code.clone(),
        ..Default::default()
    };
    grpc("ExchangeCode", app.grpc.clone().exchange_code(with_deadline(app, message, DEADLINE))).await
}

async fn user_info(app: &TestApp, openid: &str) -> Answered {
    let message = GetUserInfoRequest { app: "mp".into(), openid: openid.into(), fresh: true, ..Default::default() };
    grpc("GetUserInfo", app.grpc.clone().get_user_info(with_deadline(app, message, DEADLINE))).await
}

async fn refresh(app: &TestApp, openid: &str, deadline: Duration) -> Answered {
    let message = RefreshTokenRequest { app: "mp".into(), openid: openid.into(), ..Default::default() };
    grpc_within("RefreshToken", deadline, app.grpc.clone().refresh_token(with_deadline(app, message, deadline))).await
}

/// A RefreshToken that WeChat receives and answers 800 ms later, running in the background;
/// returns once WeChat has it, so the test can break the store in between.
async fn refresh_held_at_wechat(app: &TestApp, openid: &str, deadline: Duration) -> tokio::task::JoinHandle<Answered> {
    app.sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_millis(800)), 1);
    let calls = app.sim.calls(Endpoint::RefreshToken);
    let message = RefreshTokenRequest { app: "mp".into(), openid: openid.into(), ..Default::default() };
    let (request, mut client) = (with_deadline(app, message, deadline), app.grpc.clone());
    let refreshing =
        tokio::spawn(async move { grpc_within("RefreshToken", deadline, client.refresh_token(request)).await });
    assert!(eventually(async || app.sim.calls(Endpoint::RefreshToken) > calls).await, "the refresh reached WeChat");
    refreshing
}

async fn build(app: &TestApp) -> Answered {
    grpc("BuildAuthorizeUrl", app.grpc.clone().build_authorize_url(with_deadline(app, flow_request(), DEADLINE))).await
}

/// WeChat calling back with `code` for `flow`, as a browser follows it.
async fn relay(app: &TestApp, flow: &str, code: &str) -> Answered {
    let started = Instant::now();
    let query = format!("code={code}&state={flow}");
    let Ok(response) = tokio::time::timeout(DEADLINE + SLACK, app.callback(&query)).await else {
        panic!("relay hung: no answer within {:?}", DEADLINE + SLACK);
    };
    Answered { call: "relay", answer: format!("HTTP {}", response.status().as_u16()), took: started.elapsed() }
}

/// Every RPC the flow has, and the relay, at once.
async fn round(app: &TestApp, work: &Round) -> Vec<Answered> {
    let (b, r, e, u, f) = tokio::join!(
        build(app),
        relay(app, &work.flow, &work.code),
        exchange(app, &work.relayed),
        user_info(app, &work.openid),
        refresh(app, &work.openid, DEADLINE),
    );
    vec![b, r, e, u, f]
}

/// Each call answered in time with one of the answers allowed for it.
fn expect(answers: &[Answered], allowed: &[(&str, &[&str])]) {
    for a in answers {
        let (_, ok) = allowed.iter().find(|(call, _)| *call == a.call).expect("an expectation for every call");
        assert!(
            ok.contains(&a.answer.as_str()),
            "{} answered {} (allowed: {ok:?}); all: {answers:?}",
            a.call,
            a.answer
        );
    }
}

/// After a fault clears: BuildAuthorizeUrl works again within a few seconds (reconnection),
/// and then a whole round with new users answers OK everywhere.
async fn work_resumes(app: &TestApp, signed_in: &str, exchanging: &str) {
    assert!(eventually(async || build(app).await.answer == "OK").await, "BuildAuthorizeUrl works again");
    let work = prepare(app, signed_in, exchanging).await;
    let answers = round(app, &work).await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["OK"]),
            ("relay", &["HTTP 302"]),
            ("ExchangeCode", &["OK"]),
            ("GetUserInfo", &["OK"]),
            ("RefreshToken", &["OK"]),
        ],
    );
}

/// Starts a round over a slow link, and once its calls are on the wire applies `fault`.
async fn round_hit_mid_stream(app: &TestApp, proxy: &FaultProxy, work: &Round, fault: impl FnOnce()) -> Vec<Answered> {
    proxy.set(LinkFault::Latency(Duration::from_millis(400)));
    let (answers, ()) = tokio::join!(round(app, work), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fault();
    });
    answers
}

// ---- the proxy itself -------------------------------------------------------------------

/// A TCP echo server on a free loopback port.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `bytes` and waits up to `within` for them to come back.
async fn echo(stream: &mut tokio::net::TcpStream, bytes: &[u8], within: Duration) -> std::io::Result<Option<Vec<u8>>> {
    stream.write_all(bytes).await?;
    let mut back = vec![0u8; bytes.len()];
    match tokio::time::timeout(within, stream.read_exact(&mut back)).await {
        Ok(read) => read.map(|_| Some(back)),
        Err(_) => Ok(None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_proxy_delays_stalls_partitions_and_resets() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.expect("connect");
    let quick = Duration::from_millis(300);
    assert_eq!(echo(&mut stream, b"ping", quick).await.expect("io").as_deref(), Some(&b"ping"[..]));

    proxy.set(LinkFault::Latency(Duration::from_millis(150)));
    let started = Instant::now();
    assert_eq!(echo(&mut stream, b"slow", Duration::from_secs(2)).await.expect("io").as_deref(), Some(&b"slow"[..]));
    assert!(started.elapsed() >= Duration::from_millis(300), "150 ms each way");

    proxy.set(LinkFault::Stall);
    assert_eq!(echo(&mut stream, b"held", quick).await.expect("io"), None, "a stall forwards nothing");
    proxy.clear();
    let mut held = [0u8; 4];
    tokio::time::timeout(quick, stream.read_exact(&mut held)).await.expect("released").expect("io");
    assert_eq!(&held, b"held", "cleared, the held bytes flow on");

    proxy.set(LinkFault::Partition);
    assert_eq!(echo(&mut stream, b"lost", quick).await.expect("io"), None, "a partition drops bytes");
    proxy.clear();
    let mut after = [0u8; 1];
    let healed = tokio::time::timeout(quick, stream.read(&mut after)).await.expect("an answer at once");
    assert!(healed.is_err(), "a connection that lived through a partition is reset: {healed:?}");

    let mut fresh = tokio::net::TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(echo(&mut fresh, b"again", quick).await.expect("io").as_deref(), Some(&b"again"[..]));
    proxy.reset();
    let reset = tokio::time::timeout(quick, fresh.read(&mut after)).await.expect("an answer at once");
    assert!(reset.is_err(), "reset sends RST, not FIN: {reset:?}");
    assert_eq!(proxy.accepted(), 2);
}

// ---- the Redis link ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_slow_redis_slows_every_call_and_each_succeeds() {
    let (app, proxy) = behind_redis_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    proxy.set(LinkFault::Latency(Duration::from_millis(50)));
    let answers = round(&app, &work).await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["OK"]),
            ("relay", &["HTTP 302"]),
            ("ExchangeCode", &["OK"]),
            ("GetUserInfo", &["OK"]),
            ("RefreshToken", &["OK"]),
        ],
    );
    assert!(
        answers.iter().all(|a| a.took >= Duration::from_millis(100)),
        "every call crossed the slow link: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_stalled_redis_is_store_unavailable_before_the_deadline_then_work_resumes() {
    let (app, proxy) = behind_redis_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    let exchanges = app.sim.calls(Endpoint::AccessToken);
    proxy.set(LinkFault::Stall);
    let answers = round(&app, &work).await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["STORE_UNAVAILABLE"]),
            ("relay", &["HTTP 503"]),
            ("ExchangeCode", &["STORE_UNAVAILABLE"]),
            ("GetUserInfo", &["STORE_UNAVAILABLE"]),
            ("RefreshToken", &["STORE_UNAVAILABLE"]),
        ],
    );
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges, "no code was sent to WeChat without its record");
    proxy.clear();
    // The exchange refused for the stall goes through once Redis answers: the code was never
    // sent, so it is still good.
    assert!(eventually(async || exchange(&app, &work.relayed).await.answer == "OK").await);
    work_resumes(&app, "user3", "user4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_connections_reset_mid_call_are_answered_then_work_resumes() {
    let (app, proxy) = behind_redis_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    let before = proxy.accepted();
    let answers = round_hit_mid_stream(&app, &proxy, &work, || {
        proxy.reset();
        proxy.clear();
    })
    .await;
    let either = &["OK", "STORE_UNAVAILABLE"][..];
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", either),
            ("relay", &["HTTP 302", "HTTP 503"]),
            ("ExchangeCode", either),
            ("GetUserInfo", either),
            ("RefreshToken", either),
        ],
    );
    work_resumes(&app, "user3", "user4").await;
    assert!(proxy.accepted() > before, "wxauth reconnected to Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_redis_partition_mid_stream_is_answered_then_work_resumes() {
    let (app, proxy) = behind_redis_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    let answers = round_hit_mid_stream(&app, &proxy, &work, || proxy.set(LinkFault::Partition)).await;
    let either = &["OK", "STORE_UNAVAILABLE"][..];
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", either),
            ("relay", &["HTTP 302", "HTTP 503"]),
            ("ExchangeCode", either),
            ("GetUserInfo", either),
            ("RefreshToken", either),
        ],
    );
    assert!(answers.iter().any(|a| a.answer != "OK" && a.answer != "HTTP 302"), "the partition was felt: {answers:?}");
    proxy.clear();
    work_resumes(&app, "user3", "user4").await;
}

// ---- the WeChat link --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_slow_wechat_slows_its_calls_and_each_succeeds() {
    let (app, proxy) = behind_wechat_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    proxy.set(LinkFault::Latency(Duration::from_millis(100)));
    let answers = round(&app, &work).await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["OK"]),
            ("relay", &["HTTP 302"]),
            ("ExchangeCode", &["OK"]),
            ("GetUserInfo", &["OK"]),
            ("RefreshToken", &["OK"]),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_stalled_wechat_is_answered_before_the_deadline_then_work_resumes() {
    let (app, proxy) = behind_wechat_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    proxy.set(LinkFault::Stall);
    let answers = round(&app, &work).await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["OK"]),
            ("relay", &["HTTP 302"]),
            // Sent, no answer: the code may be spent, so never "retry".
            ("ExchangeCode", &["SIGN_IN_AGAIN"]),
            ("GetUserInfo", &["WECHAT_UNAVAILABLE"]),
            ("RefreshToken", &["WECHAT_UNAVAILABLE"]),
        ],
    );
    proxy.clear();
    let again = exchange(&app, &work.relayed).await;
    assert_eq!(again.answer, "SIGN_IN_AGAIN", "the lost exchange keeps its answer; WeChat is not asked again");
    assert_eq!(refresh(&app, &work.openid, DEADLINE).await.answer, "OK", "the refresh lock was released");
    work_resumes(&app, "user3", "user4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_wechat_connections_reset_mid_call_are_answered_then_work_resumes() {
    let (app, proxy) = behind_wechat_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    let answers = round_hit_mid_stream(&app, &proxy, &work, || {
        proxy.reset();
        proxy.clear();
    })
    .await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["OK"]),
            ("relay", &["HTTP 302"]),
            ("ExchangeCode", &["OK", "SIGN_IN_AGAIN"]),
            ("GetUserInfo", &["OK", "WECHAT_UNAVAILABLE"]),
            ("RefreshToken", &["OK", "WECHAT_UNAVAILABLE"]),
        ],
    );
    work_resumes(&app, "user3", "user4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_wechat_partition_mid_stream_is_answered_then_work_resumes() {
    let (app, proxy) = behind_wechat_proxy().await;
    let work = prepare(&app, "user1", "user2").await;
    let answers = round_hit_mid_stream(&app, &proxy, &work, || proxy.set(LinkFault::Partition)).await;
    expect(
        &answers,
        &[
            ("BuildAuthorizeUrl", &["OK"]),
            ("relay", &["HTTP 302"]),
            ("ExchangeCode", &["SIGN_IN_AGAIN"]),
            ("GetUserInfo", &["WECHAT_UNAVAILABLE"]),
            ("RefreshToken", &["WECHAT_UNAVAILABLE"]),
        ],
    );
    proxy.clear();
    assert_eq!(exchange(&app, &work.relayed).await.answer, "SIGN_IN_AGAIN");
    work_resumes(&app, "user3", "user4").await;
}

// ---- Redis killed mid-flow --------------------------------------------------------------

/// Keys of Redis matching `pattern`, read directly (not through wxauth).
async fn keys(app: &TestApp, pattern: &str) -> Vec<String> {
    let mut conn = app.redis.as_ref().expect("redis").lock().await.conn().await;
    redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.expect("KEYS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_killed_between_relay_and_exchange_leaves_no_half_sign_in() {
    let app = spawn_app(Backend::Redis).await;
    let relayed = app.relayed("mp", "alice", "snsapi_userinfo").await;
    let exchanges = app.sim.calls(Endpoint::AccessToken);
    let redis = app.redis.clone().expect("redis");

    redis.lock().await.kill();
    let answered = exchange(&app, &relayed).await;
    assert_eq!(answered.answer, "STORE_UNAVAILABLE", "a clear answer, with RetryInfo");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges, "the code never went to WeChat");

    // Back empty, as a Redis without persistence (or a failover that lost the last writes) is.
    redis.lock().await.restart().await;
    assert!(eventually(async || build(&app).await.answer == "OK").await, "works again");
    let again = exchange(&app, &relayed).await;
    assert_eq!(again.answer, "CODE_NOT_FROM_FLOW", "the binding died with Redis: the product starts again");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges, "still never sent");
    assert!(keys(&app, "wxauth:*:tok:*").await.is_empty(), "no token record without an exchange");
    assert!(keys(&app, "wxauth:code:*").await.is_empty(), "no code record");

    let fresh = app.login("alice", "snsapi_userinfo").await;
    assert_eq!(Some(fresh.openid), app.sim.openid(MP_APPID, "alice"), "a new sign-in works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_killed_between_a_refreshs_wechat_call_and_its_write_serves_no_stale_record() {
    let app = spawn_app(Backend::Redis).await;
    let openid = app.login("alice", "snsapi_userinfo").await.openid;
    let redis = app.redis.clone().expect("redis");
    // WeChat receives the refresh and answers 800 ms later: Redis dies in between. Its write
    // and then its unlock each fail once Redis is gone: a longer deadline than the rest.
    let refreshing = refresh_held_at_wechat(&app, &openid, Duration::from_secs(6)).await;
    redis.lock().await.kill();
    let answered = refreshing.await.expect("task");
    assert_eq!(answered.answer, "STORE_UNAVAILABLE", "a clear answer: {answered:?}");

    redis.lock().await.restart().await;
    assert!(eventually(async || build(&app).await.answer == "OK").await, "works again");
    assert_eq!(refresh(&app, &openid, DEADLINE).await.answer, "TOKEN_NOT_FOUND");
    assert_eq!(user_info(&app, &openid).await.answer, "TOKEN_NOT_FOUND", "no stale token served");
    assert!(keys(&app, &format!("wxauth:mp:*{openid}*")).await.is_empty(), "nothing of the user was written back");

    app.login("alice", "snsapi_userinfo").await;
    assert_eq!(user_info(&app, &openid).await.answer, "OK", "the user signs in again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_redis_partition_during_a_refresh_leaves_the_record_as_it_was() {
    let (app, proxy) = behind_redis_proxy().await;
    let openid = app.login("user1", "snsapi_userinfo").await.openid;
    let token_key = format!("wxauth:mp:tok:{openid}");
    let mut conn = app.redis.as_ref().expect("redis").lock().await.conn().await;
    let sealed: Vec<u8> = redis::cmd("GET").arg(&token_key).query_async(&mut conn).await.expect("GET");

    // Cut off after WeChat answered, the refresh's write and then its unlock each wait out the
    // store's timeout: a longer deadline than the rest.
    let refreshing = refresh_held_at_wechat(&app, &openid, Duration::from_secs(6)).await;
    proxy.set(LinkFault::Partition);
    let answered = refreshing.await.expect("task");
    assert_eq!(answered.answer, "STORE_UNAVAILABLE", "the write cannot land: {answered:?}");
    proxy.clear();

    let now: Vec<u8> = redis::cmd("GET").arg(&token_key).query_async(&mut conn).await.expect("GET");
    assert_eq!(now, sealed, "the record is the one before the refresh, byte for byte: nothing half-written");
    let lock_ttl: i64 =
        redis::cmd("PTTL").arg(format!("wxauth:mp:lock:{openid}")).query_async(&mut conn).await.expect("PTTL");
    let bound = i64::try_from(app.tokens.lock_ttl().as_millis()).expect("ms");
    assert!(lock_ttl > 0 && lock_ttl <= bound, "the unreleased lock lapses by itself ({lock_ttl} ms of {bound})");
    assert!(
        eventually(async || user_info(&app, &openid).await.answer == "OK").await,
        "the user's profile is served from the intact record"
    );
}

// ---- Redis failing between an exchange's WeChat call and its write ----------------------

/// An ExchangeCode that WeChat receives and answers 800 ms later, running in the background;
/// returns once WeChat has it.
async fn exchange_held_at_wechat(
    app: &TestApp,
    relayed: &Relayed,
    deadline: Duration,
) -> tokio::task::JoinHandle<Answered> {
    app.sim.inject(Endpoint::AccessToken, Fault::Delay(Duration::from_millis(800)), 1);
    let calls = app.sim.calls(Endpoint::AccessToken);
    let message = ExchangeCodeRequest {
        app: "mp".into(),
        flow_id: relayed.flow_id.clone(),
        code: relayed.code.clone(),
        ..Default::default()
    };
    let (request, mut client) = (with_deadline(app, message, deadline), app.grpc.clone());
    let exchanging =
        tokio::spawn(async move { grpc_within("ExchangeCode", deadline, client.exchange_code(request)).await });
    assert!(eventually(async || app.sim.calls(Endpoint::AccessToken) > calls).await, "the exchange reached WeChat");
    exchanging
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_token_write_refused_after_wechat_granted_an_exchange_asks_for_a_new_sign_in() {
    // wxauth signs in to Redis as a user of its own, so the test can take away its right to
    // write token records (and only that) between WeChat's grant and the write.
    let (sim, sim_addr) = crate::helpers::spawn_sim().await;
    let redis = RedisServer::start().await;
    let mut admin = redis.conn().await;
    let acl = |rules: &[&str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("wxauth").arg(rules);
        cmd
    };
    let _: () = acl(&["on", ">chaos-pw", "~*", "+@all"]).query_async(&mut admin).await.expect("ACL");
    let url = format!("redis://wxauth:chaos-pw@127.0.0.1:{}/0", redis.port);
    let settings = chaos_settings(sim_addr, &redis_store(&url));
    let app = spawn_settings(sim, sim_addr, Some(Arc::new(tokio::sync::Mutex::new(redis))), settings).await;
    let relayed = app.relayed("mp", "alice", "snsapi_userinfo").await;
    let exchanges = app.sim.calls(Endpoint::AccessToken);

    let no_tokens = ["resetkeys", "~wxauth:flow:*", "~wxauth:code:*", "~wxauth:client:*"];
    let _: () = acl(&no_tokens).query_async(&mut admin).await.expect("ACL");
    let first = exchange(&app, &relayed).await;
    assert_eq!(first.answer, "STORE_UNAVAILABLE", "the token could not be kept");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges + 1, "WeChat granted: the code is spent");

    let _: () = acl(&["allkeys"]).query_async(&mut admin).await.expect("ACL");
    let again = exchange(&app, &relayed).await;
    assert_eq!(again.answer, "SIGN_IN_AGAIN", "a repeat is told to start again, not CODE_USED");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges + 1, "the spent code was not sent again");
    assert!(keys(&app, "wxauth:*:tok:*").await.is_empty(), "no token record was written");
    app.login("alice", "snsapi_userinfo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_an_exchange_cut_off_from_redis_after_wechat_answered_is_never_a_code_used() {
    let (app, proxy) = behind_redis_proxy().await;
    let relayed = app.relayed("mp", "user1", "snsapi_userinfo").await;
    // Cut off after WeChat answered, the token write and then the "lost" record each wait out
    // the store's timeout: a longer deadline than the rest.
    let exchanging = exchange_held_at_wechat(&app, &relayed, Duration::from_secs(6)).await;
    let exchanges = app.sim.calls(Endpoint::AccessToken);
    proxy.set(LinkFault::Partition);
    let first = exchanging.await.expect("task");
    assert_eq!(first.answer, "STORE_UNAVAILABLE", "{first:?}");
    proxy.clear();
    assert!(eventually(async || build(&app).await.answer == "OK").await, "works again");

    // The claim the cut-off exchange left lapses (30 s); a repeat then takes it over, and
    // WeChat's 40163 means the first exchange spent the code.
    app.advance(Duration::from_secs(31));
    let again = exchange(&app, &relayed).await;
    assert_eq!(again.answer, "SIGN_IN_AGAIN", "never CODE_USED for the product's own retry");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges + 1, "the takeover asked WeChat once");
    assert_eq!(exchange(&app, &relayed).await.answer, "SIGN_IN_AGAIN", "and it is remembered");
    assert_eq!(app.sim.calls(Endpoint::AccessToken), exchanges + 1, "without asking again");
    assert!(keys(&app, "wxauth:*:tok:*").await.is_empty(), "no token record was written");
}
