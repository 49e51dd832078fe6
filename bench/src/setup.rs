//! What a run starts before its first phase: the simulator (in this process, on a runtime of
//! its own), a private `redis-server`, wxauth (the real binary, with a generated config in a
//! temp dir) or the one already running that the flags point at, and the ceiling server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use wxauth::proto::we_chat_o_auth_service_client::WeChatOAuthServiceClient;
use wxauth::sim::{SimConfig, Simulator};
use wxauth_bench::procs::{self, Children, ScratchDir};

use crate::args::Args;
use crate::fixture::{
    CALLBACK_HOST, CLIENT_KEY, MINI_APPID, MINI_SECRET, MP_APPID, MP_SECRET, OIDC_CLIENT, OIDC_EC_KEY_ID,
    OIDC_EC_KEY_PEM, OIDC_ES256_CLIENT, OIDC_KEY_ID, OIDC_KEY_PEM, OIDC_REDIRECT, OIDC_SECRET,
};
use crate::phases::Bench;

/// Kills the run's children and exits 130 on Ctrl-C, so an interrupted run leaves no
/// redis-server or wxauth behind.
pub fn kill_children_on_ctrl_c(children: &Children) {
    let children = children.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            children.kill_all();
            std::process::exit(130);
        }
    });
}

/// The Redis wxauth and the ceilings use: `--redis`, else a private one — unless neither
/// needs one (a running wxauth and `--no-ceilings`).
pub async fn redis_url(args: &Args, children: &Children) -> anyhow::Result<String> {
    Ok(match &args.redis {
        Some(url) => url.clone(),
        None if args.grpc.is_none() || args.ceilings => procs::start_redis(children).await?,
        None => String::new(),
    })
}

/// The wxauth a run measures: where its gRPC and public listeners are, and its pid if known.
pub struct UnderTest {
    pub grpc: String,
    pub relay: String,
    pub pid: Option<u32>,
}

/// The wxauth `--grpc` and `--relay` point at, else one started with the run's config.
pub async fn wxauth_under_test(
    args: &Args,
    children: &Children,
    scratch: &mut ScratchDir,
    redis_url: &str,
    sim_addr: SocketAddr,
) -> anyhow::Result<UnderTest> {
    if let (Some(grpc), Some(relay)) = (&args.grpc, &args.relay) {
        return Ok(UnderTest { grpc: grpc.clone(), relay: relay.trim_end_matches('/').to_owned(), pid: args.pid });
    }
    let launch = Launch { bin: args.wxauth_bin.as_deref(), log_level: &args.log_level, extra: "" };
    let wx = start_wxauth(children, scratch, &launch, redis_url, sim_addr).await?;
    Ok(UnderTest { grpc: format!("http://{}", wx.grpc), relay: format!("http://{}", wx.public), pid: Some(wx.pid) })
}

/// How to start wxauth: the binary (`None`: [`wxauth_binary`]'s), its `RUST_LOG`, and config
/// lines after [`wxauth_config`]'s.
pub struct Launch<'a> {
    pub bin: Option<&'a Path>,
    pub log_level: &'a str,
    pub extra: &'a str,
}

/// Starts wxauth with its config and log in `scratch` (kept if it fails to start, for its log).
pub async fn start_wxauth(
    children: &Children,
    scratch: &mut ScratchDir,
    launch: &Launch<'_>,
    redis_url: &str,
    sim_addr: SocketAddr,
) -> anyhow::Result<procs::Wxauth> {
    let program = wxauth_binary(launch.bin)?;
    let addrs = (free_addr()?, free_addr()?, free_addr()?);
    let config = scratch.write("wxauth.toml", &wxauth_config(addrs, redis_url, sim_addr, launch.extra))?;
    let log = scratch.path.join("wxauth.log");
    let started = procs::start_wxauth(children, &program, &config, addrs, log, launch.log_level).await;
    let wx = started.inspect_err(|_| scratch.keep = true)?;
    eprintln!("wxauth pid {} (grpc {}, relay {}), log {}", wx.pid, wx.grpc, wx.public, wx.log.display());
    Ok(wx)
}

/// The phases' shared state: the ceiling server started (unless `--no-ceilings`), gRPC
/// clients of wxauth and the ceilings, the HTTP client for the relay and the simulator.
pub async fn bench(
    args: Args,
    (sim, sim_addr): (Simulator, SocketAddr),
    wxauth: UnderTest,
    redis_url: &str,
    children: &Children,
) -> anyhow::Result<Bench> {
    let (ceiling, ceiling_process) = if args.ceilings {
        let c = procs::start_ceiling(children, redis_url)?;
        let clients = grpc_clients(&format!("http://{}", c.grpc), args.channels).await?;
        (Some((clients, format!("http://{}", c.http), c.pid)), Some(c))
    } else {
        (None, None)
    };
    let http = wxauth::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let auth = format!("Bearer {}", args.key).parse().context("--key must be printable ASCII")?;
    Ok(Bench {
        wxauth: grpc_clients(&wxauth.grpc, args.channels).await?,
        wxauth_json: wxauth.grpc.trim_end_matches('/').to_owned(),
        wxauth_relay: wxauth.relay,
        wxauth_pid: wxauth.pid,
        args,
        sim,
        sim_base: format!("http://{sim_addr}"),
        ceiling,
        _ceiling_process: ceiling_process,
        http,
        auth,
        rows: Vec::new(),
    })
}

/// `n` clients, each on its own HTTP/2 connection.
pub async fn grpc_clients(uri: &str, n: usize) -> anyhow::Result<Vec<WeChatOAuthServiceClient<Channel>>> {
    let endpoint = Endpoint::from_shared(uri.to_owned()).with_context(|| format!("gRPC URL {uri}"))?.tcp_nodelay(true);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = endpoint.connect().await.with_context(|| format!("connect to {uri}"))?;
        clients.push(WeChatOAuthServiceClient::new(channel));
    }
    Ok(clients)
}

/// The simulator with its demo apps, and `users` more test users (`soak-0001`, ...), on its
/// own two-worker runtime and thread (as if it were another process), listening on `listen` or
/// a free loopback port.
pub fn start_sim(listen: Option<SocketAddr>, users: usize) -> anyhow::Result<(Simulator, SocketAddr)> {
    let mut config = SimConfig::demo();
    for app in &mut config.apps {
        app.callback_domain = CALLBACK_HOST.into();
    }
    config.users.extend(soak_users(users).into_iter().map(|key| wxauth::sim::SimUser {
        nickname: key.clone(),
        key,
        headimgurl: String::new(),
        snapshot: false,
    }));
    let sim = Simulator::new(config);
    // WeChat's 50,000 sns calls a minute per app would cap every upstream-bound phase at
    // ~830 req/s: the benchmark measures software, not WeChat's quota.
    sim.set_quota(None);
    let listener = std::net::TcpListener::bind(listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))))
        .context("bind the simulator")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sim")
        .enable_all()
        .build()
        .context("simulator runtime")?;
    let server = sim.clone();
    std::thread::Builder::new().name("sim".into()).spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(e) = server.serve(listener, std::future::pending()).await {
                        eprintln!("simulator stopped: {e}");
                    }
                }
                Err(e) => eprintln!("simulator cannot listen: {e}"),
            }
        });
    })?;
    Ok((sim, addr))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], procs::free_port().context("free port")?)))
}

/// The soak's simulator users.
pub fn soak_users(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("soak-{i:04}")).collect()
}

/// The config wxauth runs with: app `mp` on the simulator, one client (granted the app-level
/// RPCs), one OpenID Connect client, Redis; then `extra`.
fn wxauth_config(addrs: (SocketAddr, SocketAddr, SocketAddr), redis: &str, sim: SocketAddr, extra: &str) -> String {
    let (grpc, public, admin) = addrs;
    format!(
        r#"mode = "development"
[server]
grpc_addr = "{grpc}"
public_addr = "{public}"
admin_addr = "{admin}"
callback_url = "https://{CALLBACK_HOST}/wechat/callback"
drain = "2s"
[store]
kind = "redis"
url = "{redis}"
sealing_keys = "{keys}"
[wechat]
open_base = "http://{sim}"
api_base = "http://{sim}"
timeout = "3s"
[apps.mp]
kind = "official_account"
appid = "{MP_APPID}"
secret = "{MP_SECRET}"
default_for = "MOBILE"
[apps.mini]
kind = "mini_program"
appid = "{MINI_APPID}"
secret = "{MINI_SECRET}"
[clients.bench]
key_sha256 = "{key}"
apps = ["mp", "mini"]
return_urls = ["https://passport.example.com/login/"]
grants = ["app_access_token", "jssdk"]
# The benchmark measures the service, not its limits: no rate limits, and a cap the runs
# never reach (the cap step itself still runs on every BuildAuthorizeUrl).
max_open_flows = 10000000
[clients.bench.rate_limits]
authorize = "off"
exchange = "off"
user = "off"
[oidc]
signing_key_id = "{OIDC_KEY_ID}"
signing_key = """
{OIDC_KEY_PEM}"""
es256_signing_key_id = "{OIDC_EC_KEY_ID}"
es256_signing_key = """
{OIDC_EC_KEY_PEM}"""
code_ttl = "60s"
[oidc.clients.{OIDC_CLIENT}]
redirect_uris = ["{OIDC_REDIRECT}"]
auth_method = "client_secret_basic"
secret_sha256 = "{oidc_secret}"
apps = ["mp"]
max_open_flows = 10000000
[oidc.clients.{OIDC_ES256_CLIENT}]
redirect_uris = ["{OIDC_REDIRECT}"]
auth_method = "client_secret_basic"
secret_sha256 = "{oidc_secret}"
apps = ["mp"]
max_open_flows = 10000000
id_token_signed_response_alg = "ES256"
[oidc.clients.{OIDC_CLIENT}.rate_limits]
authorize = "off"
token = "off"
token_auth_failures = "off"
[oidc.clients.{OIDC_ES256_CLIENT}.rate_limits]
authorize = "off"
token = "off"
token_auth_failures = "off"
{extra}"#,
        keys = wxauth::store::seal::Keyring::generate_line(1),
        key = hex::encode(wxauth::config::key_digest(CLIENT_KEY)),
        oidc_secret = hex::encode(wxauth::config::key_digest(OIDC_SECRET)),
    )
}

/// The `wxauth` binary: `--wxauth-bin`, else the one next to this binary — built first, with
/// this binary's profile, when run by `cargo run` (which sets `CARGO`).
fn wxauth_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().context("own path")?;
    let dir = exe.parent().ok_or_else(|| anyhow!("own binary has no directory"))?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let mut build = std::process::Command::new(cargo);
        // The workspace root's manifest: wxauth is the root package; the target dir is shared.
        build.args(["build", "--quiet", "-p", "wxauth", "--bin", "wxauth", "--manifest-path"]);
        build.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
        match profile {
            "debug" => {}
            "release" => {
                build.arg("--release");
            }
            other => {
                build.args(["--profile", other]);
            }
        }
        eprintln!("building wxauth ({profile}) …");
        let status = build.status().context("run cargo build for wxauth")?;
        if !status.success() {
            bail!("cargo build --bin wxauth failed ({status})");
        }
    }
    let path = dir.join(format!("wxauth{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        bail!("{} not found: `cargo build --release --bin wxauth`, or pass --wxauth-bin", path.display());
    }
    Ok(path)
}
