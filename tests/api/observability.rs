//! Operators' view: Prometheus metrics after a flow, server reflection, and SIGTERM on the real
//! binary during a burst of RPCs.

use std::process::Stdio;
use std::time::Duration;

use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use wxauth::proto::{BuildAuthorizeUrlRequest, GetUserInfoRequest, Scope};
use wxauth::sim::{Endpoint, Fault};

use crate::helpers::{Backend, MP_APPID, PASSPORT_KEY, Relayed, authed, spawn_app, spawn_sim};

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// WeChat's errcodes label a metric: a code wxauth does not know is counted as `other`, never
/// by its own value (a WeChat that invents codes, or a hostile upstream, cannot grow the
/// scrape without bound), while a known one keeps its number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_errcode_is_labelled_other_in_the_scrape() {
    let app = spawn_app(Backend::Memory).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::UserInfo, Fault::Errcode(987_654), 1);
    let fresh = |openid: &str| GetUserInfoRequest { app: "mp".into(), openid: openid.into(), ..Default::default() };
    let mut unknown = fresh(&login.openid);
    unknown.fresh = true;
    app.grpc.clone().get_user_info(app.req(unknown)).await.expect_err("WeChat's unknown errcode");
    app.sim.inject(Endpoint::UserInfo, Fault::Errcode(45011), 1);
    let mut known = fresh(&login.openid);
    known.fresh = true;
    app.grpc.clone().get_user_info(app.req(known)).await.expect_err("WeChat's rate limit");

    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let scrape = scrape.text().await.expect("text");

    let wechat = "wxauth_wechat_requests_total";
    let userinfo = ["endpoint=\"sns/userinfo\"", "result=\"errcode\""];
    assert_eq!(sample(&scrape, wechat, &[userinfo[0], userinfo[1], "errcode=\"other\""]), Some(1.0), "{scrape}");
    assert_eq!(sample(&scrape, wechat, &[userinfo[0], userinfo[1], "errcode=\"45011\""]), Some(1.0), "{scrape}");
    assert!(!scrape.contains("987654"), "the unknown value is no label:\n{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_whole_flow_and_pass_promtool() {
    let app = spawn_app(Backend::Redis).await;
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiUserinfo as i32,
        ..Default::default()
    };
    let flow = app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner().flow_id;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    assert_eq!(app.callback(&format!("code={code}&state={flow}")).await.status(), 302);
    assert_eq!(app.callback("state=UnknownFlow1").await.status(), 400);
    let login = app.exchange("mp", &Relayed { flow_id: flow.clone(), code: code.clone() }).await.expect("exchange");
    app.user_info(&login.openid).await.expect("profile");
    app.profile(&login.openid, wxauth::proto::Lang::Unspecified, false).await.expect("cached profile");
    app.exchange_as(PASSPORT_KEY, "mp", &flow, "bogusCode").await.expect_err("never relayed");
    app.relay(&flow, "bogusCode").await;
    app.exchange_as(PASSPORT_KEY, "mp", &flow, "bogusCode").await.expect_err("40029");

    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    assert_eq!(scrape.status(), 200);
    assert!(scrape.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
    let scrape = scrape.text().await.expect("text");
    let rpc = "wxauth_grpc_requests_total";
    assert_eq!(sample(&scrape, rpc, &["grpc_method=\"BuildAuthorizeUrl\"", "grpc_code=\"OK\""]), Some(1.0));
    assert_eq!(sample(&scrape, rpc, &["grpc_method=\"ExchangeCode\"", "grpc_code=\"OK\""]), Some(1.0));
    assert_eq!(sample(&scrape, rpc, &["grpc_method=\"ExchangeCode\"", "grpc_code=\"PermissionDenied\""]), Some(1.0));
    assert_eq!(sample(&scrape, rpc, &["grpc_method=\"ExchangeCode\"", "grpc_code=\"InvalidArgument\""]), Some(1.0));
    assert_eq!(sample(&scrape, rpc, &["grpc_method=\"GetUserInfo\"", "grpc_code=\"OK\""]), Some(2.0));
    assert_eq!(sample(&scrape, "wxauth_flows_started_total", &["app=\"mp\""]), Some(1.0));
    let histogram = "wxauth_grpc_request_duration_seconds_count";
    assert_eq!(sample(&scrape, histogram, &["grpc_method=\"GetUserInfo\""]), Some(2.0));
    assert_eq!(sample(&scrape, "wxauth_profile_cache_total", &["result=\"skipped\""]), Some(1.0));
    assert_eq!(sample(&scrape, "wxauth_profile_cache_total", &["result=\"hit\""]), Some(1.0));
    assert_eq!(sample(&scrape, "wxauth_profile_cache_total", &["result=\"miss\""]), None, "none yet");
    let wechat = "wxauth_wechat_requests_total";
    assert_eq!(
        sample(&scrape, wechat, &["app=\"mp\"", "endpoint=\"sns/oauth2/access_token\"", "result=\"ok\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, wechat, &["app=\"mp\"", "endpoint=\"sns/oauth2/access_token\"", "errcode=\"40029\""]),
        Some(1.0)
    );
    assert_eq!(sample(&scrape, wechat, &["app=\"mp\"", "endpoint=\"sns/userinfo\"", "result=\"ok\""]), Some(1.0));
    assert_eq!(sample(&scrape, "wxauth_relay_callbacks_total", &["outcome=\"relayed\""]), Some(1.0));
    assert_eq!(sample(&scrape, "wxauth_relay_callbacks_total", &["outcome=\"bad_state\""]), Some(1.0));
    let store_ops = "wxauth_store_operation_duration_seconds_count";
    assert_eq!(
        sample(&scrape, store_ops, &["operation=\"use_flow_binding\""]),
        Some(2.0),
        "the two callbacks with a code"
    );
    assert!(sample(&scrape, store_ops, &["operation=\"set_if_eq\""]) >= Some(1.0), "the exchange's claim");
    assert_eq!(sample(&scrape, "wxauth_sealed_records_unopenable_total", &[]), Some(0.0));
    assert_eq!(sample(&scrape, "wxauth_build_info", &["version=\""]), Some(1.0));
    assert!(!scrape.contains(&login.openid) && !scrape.contains(&code), "no ids or codes in labels");

    // promtool (Debian's prometheus package, installed by scripts/setup) lints the real scrape.
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (scripts/setup installs Debian's prometheus package)");
    let mut stdin = promtool.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, scrape.as_bytes()).await.expect("write");
    drop(stdin);
    let out = promtool.wait_with_output().await.expect("promtool ran");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = spawn_app(Backend::Memory).await;
    let channel =
        Channel::from_shared(format!("http://{}", app.grpc_addr)).expect("uri").connect().await.expect("connect");

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1").into_inner();
    let reply = replies.next().await.expect("a reply").expect("ok");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("unexpected reply {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"wxauth.v1.WeChatOAuthService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "wxauth.v1.WeChatOAuthService".into(),
        )),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut replies = client.server_reflection_info(tokio_stream::iter([request])).await.expect("v1alpha").into_inner();
    let reply = replies.next().await.expect("a reply").expect("ok");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        reply.message_response
    else {
        panic!("unexpected reply {reply:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

/// Polls `check` every 10 ms until it holds (true), or a minute passes (false). For events a
/// test waits for whatever the machine's load: the minute only stops a test that would hang; it
/// bounds nothing the test checks.
async fn once<F: AsyncFn() -> bool>(check: F) -> bool {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < give_up {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// SIGTERM to the real binary while RPCs are in flight: every one of them completes, then the
/// process exits 0. Each step waits for the event it needs (the binary listening, the calls at
/// WeChat, the exit), not for a time; the drain deadline (60 s) is far above the 1 s the calls
/// need, so only a lost RPC fails the test, not a slow machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_loses_no_rpc() {
    let (sim, sim_addr) = spawn_sim().await;
    let dir = std::env::temp_dir().join(format!("wxauth-sigterm-{}", wxauth::random_id(8)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ports: Vec<u16> = (0..3).map(|_| crate::helpers::free_port()).collect();
    let config = format!(
        r#"mode = "development"
[server]
grpc_addr = "127.0.0.1:{}"
public_addr = "127.0.0.1:{}"
admin_addr = "127.0.0.1:{}"
callback_url = "https://auth.wxauth.test/wechat/callback"
drain = "60s"
[store]
kind = "memory"
sealing_keys = "{}"
[wechat]
open_base = "http://{sim_addr}"
api_base = "http://{sim_addr}"
[apps.mp]
kind = "official_account"
appid = "{MP_APPID}"
secret = "demo-mp-secret"
[clients.passport]
key_sha256 = "{}"
apps = ["mp"]
return_urls = ["https://passport.example.com/"]
# The burst below is 200 reads at once: more than the user family's default bucket.
[clients.passport.rate_limits]
user = "off"
"#,
        ports[0],
        ports[1],
        ports[2],
        crate::helpers::test_keyring(),
        hex::encode(wxauth::config::key_digest(PASSPORT_KEY)),
    );
    let path = dir.join("wxauth.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxauth"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wxauth");
    let endpoint = format!("http://127.0.0.1:{}", ports[0]);
    // Until the binary listens, however long its start takes on a loaded machine (a minute: a
    // hang guard).
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    let channel = loop {
        match Channel::from_shared(endpoint.clone()).expect("uri").connect().await {
            Ok(channel) => break channel,
            Err(_) if tokio::time::Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("wxauth not listening on {endpoint} after a minute: {e}"),
        }
    };
    let client = wxauth::proto::we_chat_o_auth_service_client::WeChatOAuthServiceClient::new(channel);

    let request = wxauth::proto::BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiUserinfo as i32,
        ..Default::default()
    };
    let flow_id = client.clone().build_authorize_url(authed(PASSPORT_KEY, request)).await.expect("flow");
    let flow_id = flow_id.into_inner().flow_id;
    let code = sim.authorize(MP_APPID, "alice", "snsapi_userinfo").expect("code");
    let relay = wxauth::http_client().redirect(reqwest::redirect::Policy::none()).build().expect("http");
    let relayed =
        relay.get(format!("http://127.0.0.1:{}/wechat/callback?code={code}&state={flow_id}", ports[1])).send().await;
    assert_eq!(relayed.expect("relay").status(), 302);
    let request = wxauth::proto::ExchangeCodeRequest { flow_id, code, ..Default::default() };
    let openid =
        client.clone().exchange_code(authed(PASSPORT_KEY, request)).await.expect("exchange").into_inner().openid;

    // 200 profile reads, each held 1 s by WeChat, then SIGTERM while they are in flight. `fresh`:
    // each one asks WeChat, however far apart they arrive. Through the profile cache, a read
    // arriving after the first answer was served from the cache and never reached WeChat, so on
    // a loaded machine (load average 16, the burst spread over more than 400 ms) the count below
    // never reached 200.
    sim.inject(Endpoint::UserInfo, Fault::Delay(Duration::from_secs(1)), 200);
    let burst: Vec<_> = (0..200)
        .map(|_| {
            let mut client = client.clone();
            let request =
                GetUserInfoRequest { app: "mp".into(), openid: openid.clone(), fresh: true, ..Default::default() };
            tokio::spawn(async move { client.get_user_info(authed(PASSPORT_KEY, request)).await })
        })
        .collect();
    // SIGTERM once every one of them has reached WeChat (the last ones are still held there).
    let arrived = once(async || sim.calls(Endpoint::UserInfo) >= 200).await;
    assert!(arrived, "{} of 200 reached WeChat before the signal", sim.calls(Endpoint::UserInfo));
    let pid = child.id().expect("pid").to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.expect("kill");
    assert!(killed.success());

    for call in burst {
        let result = call.await.expect("task");
        assert!(result.is_ok(), "an in-flight RPC was lost: {result:?}");
    }
    // A hang guard only: the drain above ends within a second of the signal.
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait()).await.expect("exits").expect("status");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
