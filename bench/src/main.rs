//! `wxauth-bench`: measured speed of wxauth against ceilings built from the same stack, in one
//! run on one machine (issue 5; results and method in BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p wxauth-bench -- --concurrency 64 --duration 10s
//! ```
//!
//! By default it starts everything itself: a private `redis-server` on a free port, the WeChat
//! simulator (in this process, on its own runtime, so codes are minted without a browser),
//! wxauth as a separate process (the real `wxauth` binary, built by the same `cargo run` if
//! needed, with a generated config in a temp dir, so its memory is read from
//! `/proc/<pid>/status`), and the ceiling server (this binary re-run as `__ceiling`). Then it
//! drives each operation at `--concurrency` for `--duration` after `--warmup`, each wxauth
//! operation followed by its ceilings, and prints one JSON object per line on stdout and a
//! table, the ratios and the targets on stderr. `--help` lists the flags, among them those
//! that point it at an already running wxauth and Redis instead.
//!
//! ```text
//! cargo run --release -p wxauth-bench -- soak --sign-ins 20000 --concurrency 64
//! ```
//!
//! `soak` (issue 11) runs complete sign-ins instead — BuildAuthorizeUrl, the consent page and
//! Allow, the relay, ExchangeCode, GetUserInfo — reads wxauth's memory quarter by quarter, and
//! counts Redis' keys by kind until every flow and code record has expired (`soak --help`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use wxauth::proto::{self, we_chat_o_auth_service_client::WeChatOAuthServiceClient};
use wxauth::relay::CALLBACK_PATH;
use wxauth::sim::{SimConfig, Simulator};
use wxauth_bench::ceiling;
use wxauth_bench::load::{self, Outcome, Plan, Pool};
use wxauth_bench::procs::{self, Children, Memory, ScratchDir};
use wxauth_bench::report::{self, Row, Side};
use wxauth_bench::soak::{self, Census, Soak};

const USAGE: &str = "\
usage: wxauth-bench [flags]

load:
  --concurrency N      requests in flight per operation (default 64)
  --duration D         timed window per operation: 10s, 500ms, 1m (default 10s)
  --warmup D           untimed load before each window (default 2s)
  --channels N         HTTP/2 connections the gRPC load is spread over (default 4)
  --ops LIST           comma-separated, of: build, relay, exchange, userinfo, validate, refresh,
                       mini (SignInMiniProgram), accounts (FindAccounts)
                       (default: all but refresh, which coalesces on two users and has no ceiling,
                       and mini and accounts)
  --no-ceilings        measure wxauth only

what runs:
  --wxauth-bin PATH    the wxauth binary (default: next to this one, built first under cargo run)
  --log-level FILTER   RUST_LOG for wxauth (default: info, the production default)
  --redis URL          use this Redis (for wxauth and the ceilings) instead of a private one
  --keep               keep the temp dir with wxauth's config and log

a wxauth already running (its api_base must point at --sim-listen; app `mp` must have appid
wxd0000000000000a1 and secret demo-mp-secret, as the simulator's demo app):
  --grpc URL           its gRPC endpoint, e.g. http://127.0.0.1:50051
  --relay URL          its public listener, e.g. http://127.0.0.1:8080
  --pid PID            its pid, for memory readings
  --key KEY            a client key that may use app `mp` (default: the generated config's)
  --return-url URL     an allowlisted return URL of that client
  --sim-listen ADDR    where the in-process simulator listens (default: a free port)

wxauth-bench soak --help: complete sign-ins for a long while (issue 11)
";

const SOAK_USAGE: &str = "\
usage: wxauth-bench soak [flags]

Complete sign-ins (BuildAuthorizeUrl, the consent page and Allow, the relay, ExchangeCode,
GetUserInfo) against wxauth on a private Redis; wxauth's RSS per quarter of the run; Redis keys
by kind before, after, and once every flow and code record has expired (about 6 minutes: a
code's record lives for the code's life, 5 min, and a minute more). Exits 1 on a miss.

  --sign-ins N         complete sign-ins (default 20000)
  --concurrency N      sign-ins in flight (default 64)
  --channels N         HTTP/2 connections to wxauth's gRPC listener (default 4)
  --users N            distinct simulator users signing in, in turn (default 100)
  --no-settle          do not wait for the flows and code records to expire
  --wxauth-bin PATH    the wxauth binary (default: next to this one, built first under cargo run)
  --log-level FILTER   RUST_LOG for wxauth (default: info)
  --keep               keep the temp dir with wxauth's config and log
";

/// wxauth's config for the soak, after the benchmark's: flows that live a minute and are cut
/// to one second at their first callback, so the steady state comes soon after the run; a
/// profile cache longer than the wait, so the cached profiles are part of that steady state.
const SOAK_CONFIG: &str = "[flow]\nttl = \"1m\"\ngrace = \"1s\"\n[token]\nprofile_cache = \"1h\"\n";

/// The simulator's demo official-account app, which wxauth's app `mp` is configured as.
const MP_APPID: &str = "wxd0000000000000a1";
const MP_SECRET: &str = "demo-mp-secret";
const APP: &str = "mp";
/// The simulator's demo mini program, which wxauth's app `mini` is configured as.
const MINI_APPID: &str = "wxd0000000000000d4";
const MINI_SECRET: &str = "demo-mini-secret";
/// The two simulator users whose tokens the per-user RPCs read.
const USERS: [&str; 2] = ["alice", "bob"];
const CLIENT_KEY: &str = "bench-client-key";
const RETURN_URL: &str = "https://passport.example.com/login/callback?from=bench";
/// A product's CSRF state, 32 characters as a typical session-bound value.
const CALLER_STATE: &str = "Ks8dP2qLx0Vn4RtY7uWb1ZcE5gHj9mAo";
/// The start of the code WeChat would append at the callback: the relay binds each code to
/// its flow, so each callback carries its own (this prefix and the flow id).
const RELAY_CODE: &str = "061Bench";
const CALLBACK_HOST: &str = "auth.wxauth.bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Build,
    Relay,
    Exchange,
    UserInfo,
    Validate,
    Refresh,
    Mini,
    Accounts,
}

impl Op {
    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "build" => Op::Build,
            "relay" => Op::Relay,
            "exchange" => Op::Exchange,
            "userinfo" => Op::UserInfo,
            "validate" => Op::Validate,
            "refresh" => Op::Refresh,
            "mini" => Op::Mini,
            "accounts" => Op::Accounts,
            other => bail!("--ops: unknown operation {other:?}\n\n{USAGE}"),
        })
    }
}

#[derive(Debug)]
struct Args {
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    channels: usize,
    ops: BTreeSet<Op>,
    ceilings: bool,
    wxauth_bin: Option<PathBuf>,
    log_level: String,
    redis: Option<String>,
    keep: bool,
    grpc: Option<String>,
    relay: Option<String>,
    pid: Option<u32>,
    key: String,
    return_url: String,
    sim_listen: Option<SocketAddr>,
}

impl Args {
    fn parse(raw: &[String]) -> anyhow::Result<Self> {
        let mut args = Args {
            concurrency: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            channels: 4,
            ops: [Op::Build, Op::Relay, Op::Exchange, Op::UserInfo, Op::Validate].into(),
            ceilings: true,
            wxauth_bin: None,
            log_level: "info".into(),
            redis: None,
            keep: false,
            grpc: None,
            relay: None,
            pid: None,
            key: CLIENT_KEY.into(),
            return_url: RETURN_URL.into(),
            sim_listen: None,
        };
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| anyhow!("{flag} needs a value\n\n{USAGE}"));
            match flag.as_str() {
                "--concurrency" => args.concurrency = value()?.parse().context("--concurrency: a whole number")?,
                "--duration" => args.duration = parse_duration(&value()?).context("--duration")?,
                "--warmup" => args.warmup = parse_duration(&value()?).context("--warmup")?,
                "--channels" => args.channels = value()?.parse().context("--channels: a whole number")?,
                "--ops" => args.ops = value()?.split(',').map(|s| Op::parse(s.trim())).collect::<Result<_, _>>()?,
                "--no-ceilings" => args.ceilings = false,
                "--wxauth-bin" => args.wxauth_bin = Some(value()?.into()),
                "--log-level" => args.log_level = value()?,
                "--redis" => args.redis = Some(value()?),
                "--keep" => args.keep = true,
                "--grpc" => args.grpc = Some(value()?),
                "--relay" => args.relay = Some(value()?),
                "--pid" => args.pid = Some(value()?.parse().context("--pid: a process id")?),
                "--key" => args.key = value()?,
                "--return-url" => args.return_url = value()?,
                "--sim-listen" => args.sim_listen = Some(value()?.parse().context("--sim-listen: host:port")?),
                "-h" | "--help" => bail!("{USAGE}"),
                other => bail!("unknown flag {other:?}\n\n{USAGE}"),
            }
        }
        if args.concurrency == 0 || args.channels == 0 {
            bail!("--concurrency and --channels must be at least 1");
        }
        if args.grpc.is_some() != args.relay.is_some() {
            bail!("--grpc and --relay go together (a running wxauth has both)");
        }
        Ok(args)
    }

    fn plan(&self) -> Plan {
        Plan { concurrency: self.concurrency, warmup: self.warmup, duration: self.duration }
    }
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().with_context(|| format!("{text:?} is not a duration like 10s or 500ms"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        _ => bail!("{text:?}: unit must be ms, s or m"),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| anyhow!("{text:?}: {e}"))
}

/// The same allocator as `wxauth`, so the ceilings (this binary, run as `__ceiling`) are built
/// from the same stack.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("__ceiling") {
        return ceiling_main(raw.get(1).map(String::as_str).unwrap_or_default());
    }
    if raw.first().map(String::as_str) == Some("soak") {
        return soak_main(&raw[1..]);
    }
    let result = Args::parse(&raw).and_then(|args| {
        let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
        runtime.block_on(run(args))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxauth-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ceiling server child: a runtime like wxauth's (`#[tokio::main]`: one worker per core).
fn ceiling_main(redis_url: &str) -> ExitCode {
    let served = tokio::runtime::Runtime::new().map_err(anyhow::Error::from).and_then(|rt| {
        let served = rt.block_on(wxauth_bench::ceiling::serve(redis_url));
        // Not waiting for the blocking stdin reader: it ends only when the bench exits.
        rt.shutdown_background();
        served.map_err(anyhow::Error::from)
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxauth-bench ceiling: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the phases share.
struct Bench {
    args: Args,
    sim: Simulator,
    sim_base: String,
    wxauth: Vec<WeChatOAuthServiceClient<Channel>>,
    wxauth_relay: String,
    wxauth_pid: Option<u32>,
    ceiling: Option<(Vec<WeChatOAuthServiceClient<Channel>>, String, u32)>,
    /// Kept for the run: dropping it closes the pipe that keeps the ceiling server up.
    _ceiling_process: Option<procs::CeilingProcess>,
    http: reqwest::Client,
    auth: MetadataValue<Ascii>,
    rows: Vec<Row>,
}

type OpFn = Arc<dyn Fn(usize) -> BoxFuture<'static, Outcome> + Send + Sync>;

async fn run(args: Args) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; numbers are meaningless without --release");
    }
    let children = Children::default();
    {
        let children = children.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                children.kill_all();
                std::process::exit(130);
            }
        });
    }
    let result = run_with(args, &children).await;
    children.kill_all();
    result
}

async fn run_with(args: Args, children: &Children) -> anyhow::Result<()> {
    let (sim, sim_addr) = start_sim(args.sim_listen, 0)?;
    let sim_base = format!("http://{sim_addr}");
    let redis_url = match &args.redis {
        Some(url) => url.clone(),
        None if args.grpc.is_none() || args.ceilings => procs::start_redis(children).await?,
        None => String::new(),
    };

    let mut scratch = ScratchDir::create()?;
    scratch.keep = args.keep;
    let (grpc_url, relay_url, pid) = match (&args.grpc, &args.relay) {
        (Some(grpc), Some(relay)) => (grpc.clone(), relay.trim_end_matches('/').to_owned(), args.pid),
        _ => {
            let program = wxauth_binary(args.wxauth_bin.as_deref())?;
            let addrs = (free_addr()?, free_addr()?, free_addr()?);
            let config = scratch.write("wxauth.toml", &wxauth_config(addrs, &redis_url, sim_addr, ""))?;
            let log = scratch.path.join("wxauth.log");
            let started = procs::start_wxauth(children, &program, &config, addrs, log, &args.log_level).await;
            let wx = started.inspect_err(|_| scratch.keep = true)?;
            eprintln!("wxauth pid {} (grpc {}, relay {}), log {}", wx.pid, wx.grpc, wx.public, wx.log.display());
            (format!("http://{}", wx.grpc), format!("http://{}", wx.public), Some(wx.pid))
        }
    };
    // Idle: after start-up and a moment's rest, before any load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = pid.and_then(procs::memory);
    if let Some(m) = idle {
        println!(
            "{}",
            serde_json::json!({"kind": "memory", "when": "idle after start-up", "rss_kib": m.rss_kib, "peak_kib": m.peak_kib})
        );
    }

    let (ceiling, ceiling_process) = if args.ceilings {
        let c = procs::start_ceiling(children, &redis_url)?;
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
    let mut bench = Bench {
        wxauth: grpc_clients(&grpc_url, args.channels).await?,
        wxauth_relay: relay_url,
        wxauth_pid: pid,
        args,
        sim,
        sim_base,
        ceiling,
        _ceiling_process: ceiling_process,
        http,
        auth,
        rows: Vec::new(),
    };
    bench.phases().await?;

    let end = pid.and_then(procs::memory);
    if let Some(m) = end {
        println!(
            "{}",
            serde_json::json!({"kind": "memory", "when": "end of run", "rss_kib": m.rss_kib, "peak_kib": m.peak_kib})
        );
    }
    let ratios = report::ratios(&bench.rows);
    let checks = report::checks(&bench.rows, &ratios, idle, bench.args.concurrency);
    for r in &ratios {
        println!("{}", r.json());
    }
    for c in &checks {
        println!("{}", c.json());
    }
    eprintln!(
        "\nconcurrency {}, {} channels, warm-up {:?}, window {:?}, {} cores\n",
        bench.args.concurrency,
        bench.args.channels,
        bench.args.warmup,
        bench.args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    eprint!("{}", report::table(&bench.rows, &ratios, &checks, idle));
    Ok(())
}

impl Bench {
    async fn phases(&mut self) -> anyhow::Result<()> {
        let ops = self.args.ops.clone();
        let window = (self.args.warmup + self.args.duration).as_secs_f64();
        let mut wx_flows = Vec::new();
        let mut ceiling_flows = Vec::new();

        if ops.contains(&Op::Build) {
            let sink = Arc::new(Mutex::new(Vec::new()));
            let op = build_op(self.wxauth.clone(), self.auth.clone(), &self.args.return_url, Arc::clone(&sink), None);
            self.phase(Side::Wxauth, "BuildAuthorizeUrl", "auth, validate, allowlist, seal, SET NX PX", op).await;
            wx_flows = take(&sink);
            self.ceiling_set(&mut ceiling_flows).await;
        }
        if ops.contains(&Op::Relay) {
            // Without a SET phase to go by, assume a fast machine: a pool that runs dry cuts the
            // ceiling's window short (flows are cheap to make, untimed).
            let build_rps = self.rps(Side::Ceiling, "tonic SET").unwrap_or(60_000.0).max(1000.0);
            if let Some((clients, base, _)) = self.ceiling.clone() {
                let want = (build_rps * window * 2.5) as usize;
                let ids = self.fill(clients.clone(), std::mem::take(&mut ceiling_flows), want, "ceiling").await;
                let op = relay_op(self.http.clone(), base.clone(), CALLBACK_PATH, Arc::new(Pool::new(ids)));
                self.phase(Side::Ceiling, "axum GETDEL", "GETDEL + 302", op).await;
                let ids = self.fill(clients, Vec::new(), want, "ceiling").await;
                let op = relay_op(self.http.clone(), base, ceiling::BOUND_CALLBACK_PATH, Arc::new(Pool::new(ids)));
                self.phase(Side::Ceiling, "axum GETDEL+SET NX", "GETDEL + SET NX GET piped + 302", op).await;
            }
            let want = match self.rps(Side::Ceiling, "axum GETDEL").filter(|rps| *rps > 0.0) {
                Some(ceiling_rps) => (ceiling_rps * window * 1.5) as usize,
                None => {
                    (self.rps(Side::Wxauth, "BuildAuthorizeUrl").unwrap_or(10_000.0).max(1000.0) * window * 2.5)
                        as usize
                }
            };
            let ids = self.fill(self.wxauth.clone(), std::mem::take(&mut wx_flows), want, "wxauth").await;
            let op = relay_op(self.http.clone(), self.wxauth_relay.clone(), CALLBACK_PATH, Arc::new(Pool::new(ids)));
            let work = "HGET + HINCRBY + PEXPIRE LT + SET NX GET code record in one pipeline, open, 302";
            self.phase(Side::Wxauth, "relay", work, op).await;
        }
        drop((wx_flows, ceiling_flows));
        if ops.contains(&Op::Exchange) {
            // Each request exchanges its own code, relayed through its own flow beforehand
            // (untimed), as a product's callback would.
            let want = (self.rps(Side::Wxauth, "ExchangeCode").unwrap_or(20_000.0) * window * 1.5) as usize;
            let pairs = self.relayed_codes(want).await;
            let op = exchange_op(self.wxauth.clone(), self.auth.clone(), Arc::new(Pool::new(pairs)));
            let work = "GET code record, CAS claim, sns access_token, SET token + SET reach + SET result at once";
            self.phase(Side::Wxauth, "ExchangeCode", work, op).await;
            self.ceiling_set(&mut Vec::new()).await;
            let op = sim_exchange_op(self.http.clone(), self.sim_base.clone(), self.sim.clone());
            self.phase(Side::Ceiling, "sim access_token", "the simulator's code exchange alone", op).await;
        }
        if ops.contains(&Op::Mini) {
            let op = mini_op(self.wxauth.clone(), self.auth.clone(), self.sim.clone());
            let work = "sns jscode2session, SET sealed session + SET reach + HSET/PEXPIRE account at once";
            self.phase(Side::Wxauth, "SignInMiniProgram", work, op).await;
            self.ceiling_set(&mut Vec::new()).await;
            let op = sim_mini_op(self.http.clone(), self.sim_base.clone(), self.sim.clone());
            self.phase(Side::Ceiling, "sim jscode2session", "the simulator's jscode2session alone", op).await;
        }
        let per_user = [Op::UserInfo, Op::Validate, Op::Refresh, Op::Accounts];
        if !per_user.iter().any(|op| ops.contains(op)) {
            return Ok(());
        }
        let openids = self.login_users().await?;
        let sim_tokens = self.sim_tokens().await?;
        if ops.contains(&Op::UserInfo) {
            let op = userinfo_op(self.wxauth.clone(), self.auth.clone(), openids.clone(), false);
            self.phase(Side::Wxauth, "GetUserInfo", "GET cached profile, open", op).await;
            let op = userinfo_op(self.wxauth.clone(), self.auth.clone(), openids.clone(), true);
            self.phase(Side::Wxauth, "GetUserInfo fresh", "GET, open, sns userinfo, SET profile", op).await;
            self.ceiling_get(&openids).await;
            let op = sim_get_op(self.http.clone(), format!("{}/sns/userinfo", self.sim_base), sim_tokens.clone(), true);
            self.phase(Side::Ceiling, "sim userinfo", "the simulator's userinfo alone", op).await;
        }
        if ops.contains(&Op::Validate) {
            let op = validate_op(self.wxauth.clone(), self.auth.clone(), openids.clone());
            self.phase(Side::Wxauth, "ValidateToken", "GET, open, sns auth", op).await;
            self.ceiling_get(&openids).await;
            let op = sim_get_op(self.http.clone(), format!("{}/sns/auth", self.sim_base), sim_tokens, false);
            self.phase(Side::Ceiling, "sim auth", "the simulator's token check alone", op).await;
        }
        if ops.contains(&Op::Accounts) {
            // Each user has two accounts: `mp` (just signed in) and `mini`.
            for user in USERS {
                let js_code = self.sim.js_code(MINI_APPID, user).context("simulator js_code")?;
                let request = authed(&self.auth, proto::SignInMiniProgramRequest { app: "mini".into(), js_code });
                self.wxauth[0].clone().sign_in_mini_program(request).await.context("mini program sign-in")?;
            }
            let unionids: Vec<String> = USERS.iter().map(|u| self.sim.unionid(u)).collect();
            let op = accounts_op(self.wxauth.clone(), self.auth.clone(), unionids.clone(), 2);
            self.phase(Side::Wxauth, "FindAccounts", "HGETALL index, open, GET token/session + GET reach each", op)
                .await;
            if let Some((clients, _, _)) = self.ceiling.clone() {
                let op = accounts_op(clients, self.auth.clone(), unionids, 0);
                self.phase(Side::Ceiling, "tonic HGETALL", "HGETALL of a 2-field hash", op).await;
            }
        }
        if ops.contains(&Op::Refresh) {
            let op = refresh_op(self.wxauth.clone(), self.auth.clone(), openids);
            self.phase(Side::Wxauth, "RefreshToken", "2 users: single-flight, lock, sns refresh, SET", op).await;
        }
        Ok(())
    }

    /// The `SET` ceiling, once per run; its flows go to `sink` for the relay ceiling.
    async fn ceiling_set(&mut self, sink: &mut Vec<String>) {
        let Some((clients, _, _)) = self.ceiling.clone() else { return };
        if self.rps(Side::Ceiling, "tonic SET").is_some() {
            return;
        }
        let collected = Arc::new(Mutex::new(Vec::new()));
        let op = build_op(clients, self.auth.clone(), &self.args.return_url, Arc::clone(&collected), None);
        self.phase(Side::Ceiling, "tonic SET", "SET PX of 200 bytes", op).await;
        *sink = take(&collected);
    }

    /// The `GET` ceiling, once per run.
    async fn ceiling_get(&mut self, openids: &[String]) {
        let Some((clients, _, _)) = self.ceiling.clone() else { return };
        if self.rps(Side::Ceiling, "tonic GET").is_some() {
            return;
        }
        let op = userinfo_op(clients, self.auth.clone(), openids.to_vec(), false);
        self.phase(Side::Ceiling, "tonic GET", "GET of 300 bytes", op).await;
    }

    fn rps(&self, side: Side, name: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.side == side && r.name == name).map(|r| r.sample.rps())
    }

    /// Runs one timed phase, prints its JSON line, and keeps its row.
    async fn phase(&mut self, side: Side, name: &'static str, work: &'static str, op: OpFn) {
        let pid = match side {
            Side::Wxauth => self.wxauth_pid,
            Side::Ceiling if name.starts_with("sim ") => None,
            Side::Ceiling => self.ceiling.as_ref().map(|c| c.2),
        };
        eprintln!("{:<8} {name}: {:?} warm-up, {:?} timed …", side_name(side), self.args.warmup, self.args.duration);
        let reset = pid.is_some_and(procs::reset_peak);
        // The server's CPU time over the timed window, read beside the load.
        let (warmup, duration) = (self.args.warmup, self.args.duration);
        let cpu = async move {
            let pid = pid?;
            tokio::time::sleep(warmup).await;
            let before = procs::cpu_us(pid)?;
            tokio::time::sleep(duration).await;
            Some(procs::cpu_us(pid)?.saturating_sub(before))
        };
        let (sample, cpu_us) = tokio::join!(load::run(self.args.plan(), move |worker| op(worker)), cpu);
        let memory = pid.and_then(procs::memory).map(|m| if reset { m } else { Memory { peak_kib: m.peak_kib, ..m } });
        // A window cut short (fresh flows ran out) has no CPU figure that matches its requests.
        let cpu_us_per_request =
            cpu_us.filter(|_| !sample.exhausted && sample.requests > 0).map(|us| us as f64 / sample.requests as f64);
        let row = Row { side, name, work, concurrency: self.args.concurrency, sample, memory, cpu_us_per_request };
        println!("{}", row.json());
        if row.sample.error_total() > 0 {
            eprintln!("         errors: {:?}", row.sample.errors);
        }
        self.rows.push(row);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Tops `ids` up to `want` fresh flows with untimed BuildAuthorizeUrl calls.
    async fn fill(
        &self,
        clients: Vec<WeChatOAuthServiceClient<Channel>>,
        mut ids: Vec<String>,
        want: usize,
        whose: &str,
    ) -> Vec<String> {
        if ids.len() >= want {
            return ids;
        }
        eprintln!("{whose}: creating {} more fresh flows for the relay (untimed) …", want - ids.len());
        let remaining = Arc::new(AtomicI64::new(i64::try_from(want - ids.len()).unwrap_or(i64::MAX)));
        let sink = Arc::new(Mutex::new(Vec::with_capacity(want)));
        let op = build_op(clients, self.auth.clone(), &self.args.return_url, Arc::clone(&sink), Some(remaining));
        let plan =
            Plan { concurrency: self.args.concurrency, warmup: Duration::ZERO, duration: Duration::from_secs(3600) };
        let sample = load::run(plan, move |worker| op(worker)).await;
        if sample.error_total() > 0 {
            eprintln!("warning: {} errors while creating flows: {:?}", sample.error_total(), sample.errors);
        }
        ids.extend(take(&sink));
        ids
    }

    /// `want` codes, each minted for one of the users and relayed through a flow of its own,
    /// as `flow_id code` pairs (untimed).
    async fn relayed_codes(&self, want: usize) -> Vec<String> {
        let flows = self.fill(self.wxauth.clone(), Vec::new(), want, "wxauth").await;
        eprintln!("wxauth: relaying {} codes through their flows (untimed) …", flows.len());
        let relayed = futures::stream::iter(flows.into_iter().enumerate())
            .map(|(i, flow)| async move {
                let code = self.sim.authorize(MP_APPID, USERS[i % USERS.len()], "snsapi_userinfo").ok()?;
                let callback = format!("{}/wechat/callback?code={code}&state={flow}", self.wxauth_relay);
                let response = self.http.get(callback).send().await.ok()?;
                (response.status() == reqwest::StatusCode::FOUND).then(|| format!("{flow} {code}"))
            })
            .buffer_unordered(self.args.concurrency.max(1))
            .filter_map(|pair| async move { pair })
            .collect::<Vec<String>>()
            .await;
        if relayed.len() < want {
            eprintln!("warning: {} of {want} codes could not be relayed", want - relayed.len());
        }
        relayed
    }

    /// Logs the users in through wxauth (`snsapi_userinfo`), so their token records exist and
    /// are fresh (no refresh during the phases); returns their openids.
    async fn login_users(&self) -> anyhow::Result<Vec<String>> {
        let mut openids = Vec::new();
        for pair in self.relayed_codes(USERS.len()).await {
            let (flow_id, code) = pair.split_once(' ').context("a relayed code")?;
            let (flow_id, code) = (flow_id.to_owned(), code.to_owned());
            let request = authed(&self.auth, proto::ExchangeCodeRequest { flow_id, code, ..Default::default() });
            let response =
                self.wxauth[0].clone().exchange_code(request).await.context("log a user in through wxauth")?;
            openids.push(response.into_inner().openid);
        }
        if openids.len() < USERS.len() {
            bail!("only {} of the {} users could sign in", openids.len(), USERS.len());
        }
        Ok(openids)
    }

    /// Access tokens straight from the simulator, for the simulator-alone ceilings.
    async fn sim_tokens(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut tokens = Vec::new();
        for user in USERS {
            let code = self.sim.authorize(MP_APPID, user, "snsapi_userinfo").context("simulator authorize")?;
            let url = format!(
                "{}/sns/oauth2/access_token?appid={MP_APPID}&secret={MP_SECRET}&code={code}&grant_type=authorization_code",
                self.sim_base
            );
            let body: serde_json::Value = self.http.get(url).send().await?.json().await.context("simulator token")?;
            let token = body["access_token"].as_str().ok_or_else(|| anyhow!("simulator gave no token: {body}"))?;
            let openid = body["openid"].as_str().unwrap_or_default();
            tokens.push((token.to_owned(), openid.to_owned()));
        }
        Ok(tokens)
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Wxauth => "wxauth",
        Side::Ceiling => "ceiling",
    }
}

fn take(sink: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *sink.lock().unwrap_or_else(PoisonError::into_inner))
}

fn authed<T>(auth: &MetadataValue<Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

fn grpc_error(status: &tonic::Status) -> Outcome {
    Outcome::Error(format!("grpc:{:?}", status.code()))
}

/// `BuildAuthorizeUrl`, collecting the flow ids; with `limit`, stops after that many.
fn build_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    return_url: &str,
    sink: Arc<Mutex<Vec<String>>>,
    limit: Option<Arc<AtomicI64>>,
) -> OpFn {
    let return_url: Arc<str> = return_url.into();
    Arc::new(move |worker| {
        if limit.as_ref().is_some_and(|l| l.fetch_sub(1, Ordering::Relaxed) <= 0) {
            return async { Outcome::Exhausted }.boxed();
        }
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(
            &auth,
            proto::BuildAuthorizeUrlRequest {
                app: APP.into(),
                return_url: return_url.to_string(),
                scope: proto::Scope::SnsapiUserinfo as i32,
                state: CALLER_STATE.into(),
                ..Default::default()
            },
        );
        let sink = Arc::clone(&sink);
        async move {
            match client.build_authorize_url(request).await {
                Ok(response) => {
                    sink.lock().unwrap_or_else(PoisonError::into_inner).push(response.into_inner().flow_id);
                    Outcome::Ok
                }
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// The callback of a fresh flow (each relayed once); a 302 is the expected answer.
fn relay_op(http: reqwest::Client, base: String, path: &'static str, pool: Arc<Pool>) -> OpFn {
    Arc::new(move |_| {
        let Some(flow) = pool.take() else { return async { Outcome::Exhausted }.boxed() };
        let request = http.get(format!("{base}{path}?code={RELAY_CODE}{flow}&state={flow}"));
        async move {
            match request.send().await {
                Ok(response) if response.status() == reqwest::StatusCode::FOUND => Outcome::Ok,
                Ok(response) => Outcome::Error(format!("http:{}", response.status().as_u16())),
                Err(_) => Outcome::Error("http:transport".into()),
            }
        }
        .boxed()
    })
}

fn mint(sim: &Simulator, worker: usize) -> Result<String, Outcome> {
    sim.authorize(MP_APPID, USERS[worker % USERS.len()], "snsapi_userinfo")
        .map_err(|e| Outcome::Error(format!("sim:{e}")))
}

/// `ExchangeCode` of a code relayed for this request (a `flow_id code` pair from the pool).
fn exchange_op(clients: Vec<WeChatOAuthServiceClient<Channel>>, auth: MetadataValue<Ascii>, pool: Arc<Pool>) -> OpFn {
    Arc::new(move |worker| {
        let Some((flow_id, code)) = pool.take().and_then(|pair| pair.split_once(' ')) else {
            return async { Outcome::Exhausted }.boxed();
        };
        let (flow_id, code) = (flow_id.to_owned(), code.to_owned());
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(&auth, proto::ExchangeCodeRequest { flow_id, code, ..Default::default() });
        async move {
            match client.exchange_code(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// A WeChat JSON answer: HTTP 200 without a non-zero `errcode`.
async fn wechat_outcome(sent: reqwest::Result<reqwest::Response>) -> Outcome {
    let response = match sent {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return Outcome::Error(format!("http:{}", r.status().as_u16())),
        Err(_) => return Outcome::Error("http:transport".into()),
    };
    match response.json::<serde_json::Value>().await {
        Ok(body) => match body.get("errcode").and_then(serde_json::Value::as_i64) {
            None | Some(0) => Outcome::Ok,
            Some(code) => Outcome::Error(format!("errcode:{code}")),
        },
        Err(_) => Outcome::Error("bad-json".into()),
    }
}

/// The simulator's `sns/oauth2/access_token` alone, with a code minted for this request.
fn sim_exchange_op(http: reqwest::Client, base: String, sim: Simulator) -> OpFn {
    Arc::new(move |worker| {
        let code = match mint(&sim, worker) {
            Ok(code) => code,
            Err(outcome) => return async { outcome }.boxed(),
        };
        let request = http.get(format!(
            "{base}/sns/oauth2/access_token?appid={MP_APPID}&secret={MP_SECRET}&code={code}&grant_type=authorization_code"
        ));
        async move { wechat_outcome(request.send().await).await }.boxed()
    })
}

/// `sns/userinfo` (with `lang`) or `sns/auth` alone, with live tokens.
fn sim_get_op(http: reqwest::Client, url: String, tokens: Vec<(String, String)>, lang: bool) -> OpFn {
    let lang = if lang { "&lang=zh_CN" } else { "" };
    let urls: Vec<String> =
        tokens.iter().map(|(token, openid)| format!("{url}?access_token={token}&openid={openid}{lang}")).collect();
    Arc::new(move |worker| {
        let request = http.get(&urls[worker % urls.len()]);
        async move { wechat_outcome(request.send().await).await }.boxed()
    })
}

/// `GetUserInfo` of a logged-in user, through the profile cache or (`fresh`) from WeChat each
/// time (the `GET` ceiling serves it too).
fn userinfo_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    openids: Vec<String>,
    fresh: bool,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let openid = openids[worker % openids.len()].clone();
        let request = authed(&auth, proto::GetUserInfoRequest { app: APP.into(), openid, fresh, ..Default::default() });
        async move {
            match client.get_user_info(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `ValidateToken` of a logged-in user; `valid: false` counts as an error.
fn validate_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    openids: Vec<String>,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let openid = openids[worker % openids.len()].clone();
        let request = authed(&auth, proto::ValidateTokenRequest { app: APP.into(), openid, ..Default::default() });
        async move {
            match client.validate_token(request).await {
                Ok(response) if response.get_ref().valid => Outcome::Ok,
                Ok(response) => Outcome::Error(format!("invalid:errcode {}", response.get_ref().errcode)),
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `RefreshToken` of a logged-in user.
fn refresh_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    openids: Vec<String>,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let openid = openids[worker % openids.len()].clone();
        let request = authed(&auth, proto::RefreshTokenRequest { app: APP.into(), openid, ..Default::default() });
        async move {
            match client.refresh_token(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `SignInMiniProgram` with a `js_code` minted for this request.
fn mini_op(clients: Vec<WeChatOAuthServiceClient<Channel>>, auth: MetadataValue<Ascii>, sim: Simulator) -> OpFn {
    Arc::new(move |worker| {
        let js_code = match sim.js_code(MINI_APPID, USERS[worker % USERS.len()]) {
            Ok(js_code) => js_code,
            Err(e) => return async move { Outcome::Error(format!("sim:{e}")) }.boxed(),
        };
        let mut client = clients[worker % clients.len()].clone();
        let request = authed(&auth, proto::SignInMiniProgramRequest { app: "mini".into(), js_code });
        async move {
            match client.sign_in_mini_program(request).await {
                Ok(_) => Outcome::Ok,
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// The simulator's `sns/jscode2session` alone, with a `js_code` minted for this request.
fn sim_mini_op(http: reqwest::Client, base: String, sim: Simulator) -> OpFn {
    Arc::new(move |worker| {
        let js_code = match sim.js_code(MINI_APPID, USERS[worker % USERS.len()]) {
            Ok(js_code) => js_code,
            Err(e) => return async move { Outcome::Error(format!("sim:{e}")) }.boxed(),
        };
        let request = http.get(format!(
            "{base}/sns/jscode2session?appid={MINI_APPID}&secret={MINI_SECRET}&js_code={js_code}&grant_type=authorization_code"
        ));
        async move { wechat_outcome(request.send().await).await }.boxed()
    })
}

/// `FindAccounts` of a signed-in user's unionid; `want` accounts listed (0: any number, the
/// ceiling's).
fn accounts_op(
    clients: Vec<WeChatOAuthServiceClient<Channel>>,
    auth: MetadataValue<Ascii>,
    unionids: Vec<String>,
    want: usize,
) -> OpFn {
    Arc::new(move |worker| {
        let mut client = clients[worker % clients.len()].clone();
        let unionid = unionids[worker % unionids.len()].clone();
        let request = authed(&auth, proto::FindAccountsRequest { unionid });
        async move {
            match client.find_accounts(request).await {
                Ok(found) if want == 0 || found.get_ref().accounts.len() == want => Outcome::Ok,
                Ok(found) => Outcome::Error(format!("accounts:{}", found.get_ref().accounts.len())),
                Err(status) => grpc_error(&status),
            }
        }
        .boxed()
    })
}

/// `n` clients, each on its own HTTP/2 connection.
async fn grpc_clients(uri: &str, n: usize) -> anyhow::Result<Vec<WeChatOAuthServiceClient<Channel>>> {
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
fn start_sim(listen: Option<SocketAddr>, users: usize) -> anyhow::Result<(Simulator, SocketAddr)> {
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
fn soak_users(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("soak-{i:04}")).collect()
}

/// The config wxauth runs with: app `mp` on the simulator, one client, Redis; then `extra`.
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
# The benchmark measures the service, not its limits: no rate limits, and a cap the runs
# never reach (the cap step itself still runs on every BuildAuthorizeUrl).
max_open_flows = 10000000
[clients.bench.rate_limits]
authorize = "off"
exchange = "off"
user = "off"
{extra}"#,
        keys = wxauth::store::seal::Keyring::generate_line(1),
        key = hex::encode(wxauth::config::key_digest(CLIENT_KEY)),
    )
}

/// The `wxauth` binary: `--wxauth-bin`, else the one next to this binary — built first, with
/// this binary's profile, when run by `cargo run` (which sets `CARGO`).
fn wxauth_binary(given: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
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

/// `wxauth-bench soak` flags.
#[derive(Debug)]
struct SoakArgs {
    sign_ins: usize,
    concurrency: usize,
    channels: usize,
    users: usize,
    settle: bool,
    wxauth_bin: Option<PathBuf>,
    log_level: String,
    keep: bool,
}

impl SoakArgs {
    fn parse(raw: &[String]) -> anyhow::Result<Self> {
        let mut args = SoakArgs {
            sign_ins: 20_000,
            concurrency: 64,
            channels: 4,
            users: 100,
            settle: true,
            wxauth_bin: None,
            log_level: "info".into(),
            keep: false,
        };
        let mut it = raw.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().ok_or_else(|| anyhow!("{flag} needs a value\n\n{SOAK_USAGE}"));
            match flag.as_str() {
                "--sign-ins" => args.sign_ins = value()?.parse().context("--sign-ins: a whole number")?,
                "--concurrency" => args.concurrency = value()?.parse().context("--concurrency: a whole number")?,
                "--channels" => args.channels = value()?.parse().context("--channels: a whole number")?,
                "--users" => args.users = value()?.parse().context("--users: a whole number")?,
                "--no-settle" => args.settle = false,
                "--wxauth-bin" => args.wxauth_bin = Some(value()?.into()),
                "--log-level" => args.log_level = value()?,
                "--keep" => args.keep = true,
                "-h" | "--help" => bail!("{SOAK_USAGE}"),
                other => bail!("unknown flag {other:?}\n\n{SOAK_USAGE}"),
            }
        }
        if args.sign_ins < 4 || args.concurrency == 0 || args.channels == 0 || args.users == 0 {
            bail!("--sign-ins must be at least 4 (four quarters); --concurrency, --channels, --users at least 1");
        }
        Ok(args)
    }
}

fn soak_main(raw: &[String]) -> ExitCode {
    let result = SoakArgs::parse(raw).and_then(|args| {
        let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
        runtime.block_on(async {
            let children = Children::default();
            {
                let children = children.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        children.kill_all();
                        std::process::exit(130);
                    }
                });
            }
            let passed = soak_with(args, &children).await;
            children.kill_all();
            passed
        })
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("wxauth-bench soak: a target was missed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("wxauth-bench soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts Redis, the simulator (with the soak's users) and wxauth, runs the sign-ins, waits
/// for the flows and code records to expire; true when every target passed.
async fn soak_with(args: SoakArgs, children: &Children) -> anyhow::Result<bool> {
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; use --release for a soak worth reporting");
    }
    let (_sim, sim_addr) = start_sim(None, args.users)?;
    let redis_url = procs::start_redis(children).await?;
    let mut scratch = ScratchDir::create()?;
    scratch.keep = args.keep;
    let program = wxauth_binary(args.wxauth_bin.as_deref())?;
    let addrs = (free_addr()?, free_addr()?, free_addr()?);
    let config = scratch.write("wxauth.toml", &wxauth_config(addrs, &redis_url, sim_addr, SOAK_CONFIG))?;
    let log = scratch.path.join("wxauth.log");
    let started = procs::start_wxauth(children, &program, &config, addrs, log, &args.log_level).await;
    let wx = started.inspect_err(|_| scratch.keep = true)?;
    eprintln!("wxauth pid {} (grpc {}, relay {}), log {}", wx.pid, wx.grpc, wx.public, wx.log.display());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procs::memory(wx.pid);

    let mut redis = redis::Client::open(redis_url.as_str())
        .context("Redis URL")?
        .get_multiplexed_async_connection()
        .await
        .context("connect to Redis")?;
    let prefix = "wxauth";
    let mut censuses = vec![("before", Census::take(&mut redis, prefix).await.context("count keys")?)];

    let browser = wxauth::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(wxauth::sim::WECHAT_BROWSER_UA)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let soak = Soak {
        clients: grpc_clients(&format!("http://{}", wx.grpc), args.channels).await?,
        auth: format!("Bearer {CLIENT_KEY}").parse().context("client key")?,
        browser,
        relay: format!("http://{}", wx.public),
        app: APP.into(),
        return_url: RETURN_URL.into(),
        users: soak_users(args.users),
    };
    eprintln!("soak: {} complete sign-ins, {} at a time, {} users …", args.sign_ins, args.concurrency, args.users);
    let result = soak.run(args.sign_ins, args.concurrency, Some(wx.pid)).await;
    censuses.push(("after the sign-ins", Census::take(&mut redis, prefix).await.context("count keys")?));

    let expected = Census::settled(u64::try_from(args.users.min(args.sign_ins)).unwrap_or(u64::MAX));
    let settled = if args.settle {
        // A code record lives for the code's life and a minute more (6 min for an official
        // account), the open-flow set as long as its newest flow (1 min here).
        let limit = wxauth::store::code_record_ttl(Duration::from_secs(300)) + Duration::from_secs(90);
        eprintln!("soak: waiting up to {limit:?} for flows and code records to expire …");
        let until = std::time::Instant::now() + limit;
        let mut last_said = std::time::Instant::now();
        loop {
            let now = Census::take(&mut redis, prefix).await.context("count keys")?;
            if now == expected || std::time::Instant::now() >= until {
                break Some(now);
            }
            if last_said.elapsed() >= Duration::from_secs(30) {
                eprintln!("         {} keys: {now:?}", now.total());
                last_said = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    } else {
        None
    };
    if let Some(s) = &settled {
        censuses.push(("after expiry", s.clone()));
    }
    let checks = soak::checks(&result, settled.as_ref(), &expected);
    for line in soak::json_lines(&result, args.concurrency) {
        println!("{line}");
    }
    for (when, census) in &censuses {
        println!("{}", census.json(when));
    }
    for check in &checks {
        println!("{}", check.json());
    }
    eprintln!(
        "\nsoak: {} sign-ins, concurrency {}, {} channels, {} users, {} cores\n",
        args.sign_ins,
        args.concurrency,
        args.channels,
        args.users,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    eprint!("{}", soak::table(&result, &censuses, &checks, idle));
    Ok(checks.iter().all(|c| c.pass != Some(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_usual_units() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms").ok(), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("3").ok(), Some(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn flags_parse_and_ops_default_to_all_but_refresh() {
        let raw: Vec<String> = ["--concurrency", "8", "--duration", "1s"].iter().map(|s| s.to_string()).collect();
        let args = Args::parse(&raw).expect("valid flags");
        assert_eq!(args.concurrency, 8);
        assert!(!args.ops.contains(&Op::Refresh));
        assert!(Args::parse(&["--bogus".to_owned()]).is_err());
    }
}
