//! The command line: `wxauth-bench [flags]` and `wxauth-bench soak [flags]`, their `--help`
//! texts, and the operations `--ops` names.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use wxauth_bench::load::Plan;

use crate::fixture::{CLIENT_KEY, RETURN_URL};

const USAGE: &str = "\
usage: wxauth-bench [flags]

load:
  --concurrency N      requests in flight per operation (default 64)
  --duration D         timed window per operation: 10s, 500ms, 1m (default 10s)
  --warmup D           untimed load before each window (default 2s)
  --channels N         HTTP/2 connections the gRPC load is spread over (default 4)
  --ops LIST           comma-separated, of: build, relay, exchange, userinfo, validate, refresh,
                       mini (SignInMiniProgram), accounts (FindAccounts), apptoken
                       (GetAppAccessToken), jssdk (SignJsSdkConfig), oidc-token (the OpenID
                       Provider's token endpoint, with RS256 signing timed alone),
                       oidc-token-es256 (the same for a client registered for ES256)
                       (default: all but refresh, which coalesces on two users and has no ceiling,
                       and mini, accounts, apptoken, jssdk, oidc-token and oidc-token-es256)
  --no-ceilings        measure wxauth only
  --interleave N       measure build, userinfo, apptoken and jssdk in N slices alternating with
                       their ceiling's (each slice a 1/N of --warmup and of --duration), so the
                       machine's drift during a run moves both sides alike (default 8; 1: the
                       operation's whole window, then the ceiling's, as the other operations)

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

/// An operation `--ops` names; each is measured, then its ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Build,
    Relay,
    Exchange,
    UserInfo,
    Validate,
    Refresh,
    Mini,
    Accounts,
    AppToken,
    Jssdk,
    OidcToken,
    OidcTokenEs256,
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
            "apptoken" => Op::AppToken,
            "jssdk" => Op::Jssdk,
            "oidc-token" => Op::OidcToken,
            "oidc-token-es256" => Op::OidcTokenEs256,
            other => bail!("--ops: unknown operation {other:?}\n\n{USAGE}"),
        })
    }
}

/// `wxauth-bench` flags.
#[derive(Debug)]
pub struct Args {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub channels: usize,
    pub ops: BTreeSet<Op>,
    pub ceilings: bool,
    pub interleave: u32,
    pub wxauth_bin: Option<PathBuf>,
    pub log_level: String,
    pub redis: Option<String>,
    pub keep: bool,
    pub grpc: Option<String>,
    pub relay: Option<String>,
    pub pid: Option<u32>,
    pub key: String,
    pub return_url: String,
    pub sim_listen: Option<SocketAddr>,
}

impl Args {
    pub fn parse(raw: &[String]) -> anyhow::Result<Self> {
        let mut args = Args {
            concurrency: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            channels: 4,
            ops: [Op::Build, Op::Relay, Op::Exchange, Op::UserInfo, Op::Validate].into(),
            ceilings: true,
            interleave: 8,
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
                "--interleave" => args.interleave = value()?.parse().context("--interleave: a whole number")?,
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
        if args.concurrency == 0 || args.channels == 0 || args.interleave == 0 {
            bail!("--concurrency, --channels and --interleave must be at least 1");
        }
        if args.grpc.is_some() != args.relay.is_some() {
            bail!("--grpc and --relay go together (a running wxauth has both)");
        }
        Ok(args)
    }

    pub fn plan(&self) -> Plan {
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

/// `wxauth-bench soak` flags.
#[derive(Debug)]
pub struct SoakArgs {
    pub sign_ins: usize,
    pub concurrency: usize,
    pub channels: usize,
    pub users: usize,
    pub settle: bool,
    pub wxauth_bin: Option<PathBuf>,
    pub log_level: String,
    pub keep: bool,
}

impl SoakArgs {
    pub fn parse(raw: &[String]) -> anyhow::Result<Self> {
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

#[cfg(test)]
mod tests;
