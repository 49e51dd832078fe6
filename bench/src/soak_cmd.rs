//! `wxauth-bench soak` (issue 11): Redis, the simulator with the soak's users and wxauth
//! started, many complete sign-ins, then the wait until every flow and code record has
//! expired; the measuring and the report are the library's `soak`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::aio::MultiplexedConnection;
use wxauth_bench::procs::{self, Children, Memory, ScratchDir};
use wxauth_bench::report::Check;
use wxauth_bench::soak::{self, Census, Soak, SoakResult};

use crate::args::SoakArgs;
use crate::fixture::{APP, CLIENT_KEY, RETURN_URL};
use crate::setup::{self, Launch};

/// wxauth's config for the soak, after the benchmark's: flows that live a minute and are cut
/// to one second at their first callback, so the steady state comes soon after the run; a
/// profile cache longer than the wait, so the cached profiles are part of that steady state.
const SOAK_CONFIG: &str = "[flow]\nttl = \"1m\"\ngrace = \"1s\"\n[token]\nprofile_cache = \"1h\"\n";

/// The key prefix of the wxauth the soak starts (its config leaves the default).
const PREFIX: &str = "wxauth";

/// `wxauth-bench soak [flags]`: exits 1 on a missed target.
pub fn soak_main(raw: &[String]) -> ExitCode {
    let result = SoakArgs::parse(raw).and_then(|args| {
        let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
        runtime.block_on(async {
            let children = Children::default();
            setup::kill_children_on_ctrl_c(&children);
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
    let (_sim, sim_addr) = setup::start_sim(None, args.users)?;
    let redis_url = procs::start_redis(children).await?;
    let mut scratch = ScratchDir::create()?;
    scratch.keep = args.keep;
    let launch = Launch { bin: args.wxauth_bin.as_deref(), log_level: &args.log_level, extra: SOAK_CONFIG };
    let wx = setup::start_wxauth(children, &mut scratch, &launch, &redis_url, sim_addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = procs::memory(wx.pid);

    let mut redis = redis::Client::open(redis_url.as_str())
        .context("Redis URL")?
        .get_multiplexed_async_connection()
        .await
        .context("connect to Redis")?;
    let mut censuses = vec![("before", census(&mut redis).await?)];

    let soak = signer(&args, &wx).await?;
    eprintln!("soak: {} complete sign-ins, {} at a time, {} users …", args.sign_ins, args.concurrency, args.users);
    let result = soak.run(args.sign_ins, args.concurrency, Some(wx.pid)).await;
    censuses.push(("after the sign-ins", census(&mut redis).await?));

    let expected = Census::settled(u64::try_from(args.users.min(args.sign_ins)).unwrap_or(u64::MAX));
    let settled = if args.settle { Some(settle(&mut redis, &expected).await?) } else { None };
    if let Some(s) = &settled {
        censuses.push(("after expiry", s.clone()));
    }
    let checks = soak::checks(&result, settled.as_ref(), &expected);
    report(&args, &result, &censuses, &checks, idle);
    Ok(checks.iter().all(|c| c.pass != Some(false)))
}

/// Redis' keys of the soak's wxauth, by kind.
async fn census(redis: &mut MultiplexedConnection) -> anyhow::Result<Census> {
    Census::take(redis, PREFIX).await.context("count keys")
}

/// The sign-ins' driver: gRPC clients of the started wxauth, and a browser for its relay and
/// the simulator's consent page.
async fn signer(args: &SoakArgs, wx: &procs::Wxauth) -> anyhow::Result<Soak> {
    let browser = wxauth::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(wxauth::sim::WECHAT_BROWSER_UA)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    Ok(Soak {
        clients: setup::grpc_clients(&format!("http://{}", wx.grpc), args.channels).await?,
        auth: format!("Bearer {CLIENT_KEY}").parse().context("client key")?,
        browser,
        relay: format!("http://{}", wx.public),
        app: APP.into(),
        return_url: RETURN_URL.into(),
        users: setup::soak_users(args.users),
    })
}

/// Counts the keys every 5 s until they are down to `expected` or the longest record's life
/// has passed; the last count.
async fn settle(redis: &mut MultiplexedConnection, expected: &Census) -> anyhow::Result<Census> {
    // A code record lives for the code's life and a minute more (6 min for an official
    // account), the open-flow set as long as its newest flow (1 min here).
    let limit = wxauth::store::code_record_ttl(Duration::from_secs(300)) + Duration::from_secs(90);
    eprintln!("soak: waiting up to {limit:?} for flows and code records to expire …");
    let until = Instant::now() + limit;
    let mut last_said = Instant::now();
    loop {
        let now = census(redis).await?;
        if now == *expected || Instant::now() >= until {
            return Ok(now);
        }
        if last_said.elapsed() >= Duration::from_secs(30) {
            eprintln!("         {} keys: {now:?}", now.total());
            last_said = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// The JSON lines on stdout; the run's line and the table on stderr.
fn report(args: &SoakArgs, result: &SoakResult, censuses: &[(&str, Census)], checks: &[Check], idle: Option<Memory>) {
    for line in soak::json_lines(result, args.concurrency) {
        println!("{line}");
    }
    for (when, census) in censuses {
        println!("{}", census.json(when));
    }
    for check in checks {
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
    eprint!("{}", soak::table(result, censuses, checks, idle));
}
