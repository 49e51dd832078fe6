//! The run's phases: each operation `--ops` names, measured against wxauth and then against
//! its ceilings, one timed phase at a time, with the untimed preparation they need (fresh
//! flows, relayed codes, signed-in users, the simulator's own tokens).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use wxauth::proto::{self, we_chat_o_auth_service_client::WeChatOAuthServiceClient};
use wxauth::relay::CALLBACK_PATH;
use wxauth::sim::Simulator;
use wxauth_bench::ceiling;
use wxauth_bench::load::{self, Plan, Pool, Sample};
use wxauth_bench::procs::{self, Memory};
use wxauth_bench::report::{Row, Side};

use crate::args::{Args, Op};
use crate::fixture::{MINI_APPID, MP_APPID, MP_SECRET, USERS};
use crate::ops::{
    OpFn, accounts_op, app_token_op, authed, build_op, exchange_op, jssdk_op, mini_op, refresh_op, relay_op,
    sim_exchange_op, sim_get_op, sim_mini_op, userinfo_json_op, userinfo_op, validate_op,
};

/// Everything the phases share.
pub struct Bench {
    pub args: Args,
    pub sim: Simulator,
    pub sim_base: String,
    pub wxauth: Vec<WeChatOAuthServiceClient<Channel>>,
    /// wxauth's gRPC port as an HTTP base, for its JSON face (HTTP/1.1, kept-alive connections).
    pub wxauth_json: String,
    pub wxauth_relay: String,
    pub wxauth_pid: Option<u32>,
    /// The ceiling server's gRPC clients, HTTP base and pid.
    pub ceiling: Option<(Vec<WeChatOAuthServiceClient<Channel>>, String, u32)>,
    /// Kept for the run: dropping it closes the pipe that keeps the ceiling server up.
    pub _ceiling_process: Option<procs::CeilingProcess>,
    pub http: reqwest::Client,
    pub auth: MetadataValue<Ascii>,
    /// One per timed phase, in order.
    pub rows: Vec<Row>,
}

impl Bench {
    /// Every phase `--ops` asks for, in the order BENCHMARKS.md gives.
    pub async fn phases(&mut self) -> anyhow::Result<()> {
        let ops = self.args.ops.clone();
        let mut wx_flows = Vec::new();
        let mut ceiling_flows = Vec::new();
        if ops.contains(&Op::Build) {
            (wx_flows, ceiling_flows) = self.build_phases().await;
        }
        if ops.contains(&Op::Relay) {
            self.relay_phases(wx_flows, ceiling_flows).await;
        } else {
            drop((wx_flows, ceiling_flows));
        }
        if ops.contains(&Op::Exchange) {
            self.exchange_phases().await;
        }
        if ops.contains(&Op::Mini) {
            self.mini_phases().await;
        }
        self.per_user_phases(&ops).await?;
        self.app_level_phases(&ops).await;
        if ops.contains(&Op::OidcToken) {
            self.oidc_token_phases(&crate::oidc::RS256_RP).await?;
        }
        if ops.contains(&Op::OidcTokenEs256) {
            self.oidc_token_phases(&crate::oidc::ES256_RP).await?;
        }
        Ok(())
    }

    /// The warm-up and timed window of one phase, in seconds.
    pub(crate) fn window(&self) -> f64 {
        (self.args.warmup + self.args.duration).as_secs_f64()
    }

    /// `BuildAuthorizeUrl` and the `SET` ceiling; returns the flows each made, for the relay.
    async fn build_phases(&mut self) -> (Vec<String>, Vec<String>) {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let op = build_op(self.wxauth.clone(), self.auth.clone(), &self.args.return_url, Arc::clone(&sink), None);
        let wx = Named { name: "BuildAuthorizeUrl", work: "auth, validate, allowlist, seal, SET NX PX", op };
        let collected = Arc::new(Mutex::new(Vec::new()));
        let ceiling = self.ceiling.clone().map(|(clients, _, _)| {
            let op = build_op(clients, self.auth.clone(), &self.args.return_url, Arc::clone(&collected), None);
            Named { name: "tonic SET", work: "SET PX of 200 bytes", op }
        });
        self.against(wx, ceiling).await;
        (take(&sink), take(&collected))
    }

    /// The relay's ceilings (`GETDEL`, then `GETDEL` + `SET NX`), then the relay, each on flows
    /// of its own: the ones the build phases made, topped up.
    async fn relay_phases(&mut self, wx_flows: Vec<String>, ceiling_flows: Vec<String>) {
        let window = self.window();
        // Without a SET phase to go by, assume a fast machine: a pool that runs dry cuts the
        // ceiling's window short (flows are cheap to make, untimed).
        let build_rps = self.rps(Side::Ceiling, "tonic SET").unwrap_or(60_000.0).max(1000.0);
        if let Some((clients, base, _)) = self.ceiling.clone() {
            let want = (build_rps * window * 2.5) as usize;
            let ids = self.fill(clients.clone(), ceiling_flows, want, "ceiling").await;
            let op = relay_op(self.http.clone(), base.clone(), CALLBACK_PATH, Arc::new(Pool::new(ids)));
            self.phase(Side::Ceiling, "axum GETDEL", "GETDEL + 302", op).await;
            let ids = self.fill(clients, Vec::new(), want, "ceiling").await;
            let op = relay_op(self.http.clone(), base, ceiling::BOUND_CALLBACK_PATH, Arc::new(Pool::new(ids)));
            self.phase(Side::Ceiling, "axum GETDEL+SET NX", "GETDEL + SET NX GET piped + 302", op).await;
        }
        let want = match self.rps(Side::Ceiling, "axum GETDEL").filter(|rps| *rps > 0.0) {
            Some(ceiling_rps) => (ceiling_rps * window * 1.5) as usize,
            None => {
                (self.rps(Side::Wxauth, "BuildAuthorizeUrl").unwrap_or(10_000.0).max(1000.0) * window * 2.5) as usize
            }
        };
        let ids = self.fill(self.wxauth.clone(), wx_flows, want, "wxauth").await;
        let op = relay_op(self.http.clone(), self.wxauth_relay.clone(), CALLBACK_PATH, Arc::new(Pool::new(ids)));
        let work = "HGET + HINCRBY + PEXPIRE LT + SET NX GET code record in one pipeline, open, 302";
        self.phase(Side::Wxauth, "relay", work, op).await;
    }

    /// `ExchangeCode`, the `SET` ceiling (once per run) and the simulator's code exchange.
    async fn exchange_phases(&mut self) {
        // Each request exchanges its own code, relayed through its own flow beforehand
        // (untimed), as a product's callback would.
        let want = (self.rps(Side::Wxauth, "ExchangeCode").unwrap_or(20_000.0) * self.window() * 1.5) as usize;
        let pairs = self.relayed_codes(want).await;
        let op = exchange_op(self.wxauth.clone(), self.auth.clone(), Arc::new(Pool::new(pairs)));
        let work = "GET code record, CAS claim, sns access_token, SET token + SET reach + SET result at once";
        self.phase(Side::Wxauth, "ExchangeCode", work, op).await;
        self.ceiling_set(&mut Vec::new()).await;
        let op = sim_exchange_op(self.http.clone(), self.sim_base.clone(), self.sim.clone());
        self.phase(Side::Ceiling, "sim access_token", "the simulator's code exchange alone", op).await;
    }

    /// `SignInMiniProgram`, the `SET` ceiling (once per run) and the simulator's `jscode2session`.
    async fn mini_phases(&mut self) {
        let op = mini_op(self.wxauth.clone(), self.auth.clone(), self.sim.clone());
        let work = "sns jscode2session, SET sealed session + SET reach + HSET/PEXPIRE account at once";
        self.phase(Side::Wxauth, "SignInMiniProgram", work, op).await;
        self.ceiling_set(&mut Vec::new()).await;
        let op = sim_mini_op(self.http.clone(), self.sim_base.clone(), self.sim.clone());
        self.phase(Side::Ceiling, "sim jscode2session", "the simulator's jscode2session alone", op).await;
    }

    /// The phases that read a signed-in user's records: `GetUserInfo`, `ValidateToken`,
    /// `FindAccounts`, `RefreshToken`; the users sign in first (untimed).
    async fn per_user_phases(&mut self, ops: &BTreeSet<Op>) -> anyhow::Result<()> {
        let per_user = [Op::UserInfo, Op::Validate, Op::Refresh, Op::Accounts];
        if !per_user.iter().any(|op| ops.contains(op)) {
            return Ok(());
        }
        let openids = self.login_users().await?;
        let sim_tokens = self.sim_tokens().await?;
        if ops.contains(&Op::UserInfo) {
            let op = userinfo_op(self.wxauth.clone(), self.auth.clone(), openids.clone(), false);
            let wx = Named { name: "GetUserInfo", work: "MGET claim + cached profile, open both", op };
            self.against(wx, self.get_ceiling(&openids)).await;
            // Its twin through the JSON face (issue 23): the same call, as JSON over HTTP/1.1.
            let (url, key) = (format!("{}/wxauth.v1.WeChatOAuthService/GetUserInfo", self.wxauth_json), &self.args.key);
            let op = userinfo_json_op(self.http.clone(), url, key, openids.clone());
            self.phase(Side::Wxauth, "GetUserInfo JSON", "the same, JSON over HTTP/1.1 (Connect)", op).await;
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
            self.accounts_phases().await?;
        }
        if ops.contains(&Op::Refresh) {
            let op = refresh_op(self.wxauth.clone(), self.auth.clone(), openids);
            self.phase(Side::Wxauth, "RefreshToken", "2 users: single-flight, lock, sns refresh, SET", op).await;
        }
        Ok(())
    }

    /// `FindAccounts` of users with two accounts each (`mp`, just signed in, and `mini`), and
    /// its `HGETALL` ceiling.
    async fn accounts_phases(&mut self) -> anyhow::Result<()> {
        for user in USERS {
            let js_code = self.sim.js_code(MINI_APPID, user).context("simulator js_code")?;
            let request = authed(&self.auth, proto::SignInMiniProgramRequest { app: "mini".into(), js_code });
            self.wxauth[0].clone().sign_in_mini_program(request).await.context("mini program sign-in")?;
        }
        let unionids: Vec<String> = USERS.iter().map(|u| self.sim.unionid(u)).collect();
        let op = accounts_op(self.wxauth.clone(), self.auth.clone(), unionids.clone(), 2);
        self.phase(Side::Wxauth, "FindAccounts", "HGETALL index, open, GET token/session + GET reach each", op).await;
        if let Some((clients, _, _)) = self.ceiling.clone() {
            let op = accounts_op(clients, self.auth.clone(), unionids, 0);
            self.phase(Side::Ceiling, "tonic HGETALL", "HGETALL of a 2-field hash", op).await;
        }
        Ok(())
    }

    /// `GetAppAccessToken` and `SignJsSdkConfig` (issue 21) and the `GET` ceiling (once per
    /// run): wxauth reads the sealed token (fetched from the simulator during the warm-up) and,
    /// for the signature, the sealed ticket after it, and SHA-1s the page's string.
    async fn app_level_phases(&mut self, ops: &BTreeSet<Op>) {
        // The ceiling's GET ignores the openid.
        let openids = ["o-ceiling".to_owned()];
        if ops.contains(&Op::AppToken) {
            let op = app_token_op(self.wxauth.clone(), self.auth.clone());
            let wx = Named { name: "GetAppAccessToken", work: "auth, grant, GET sealed token, open", op };
            self.against(wx, self.get_ceiling(&openids)).await;
        }
        if ops.contains(&Op::Jssdk) {
            let op = jssdk_op(self.wxauth.clone(), self.auth.clone());
            let work = "auth, grant, URL under the client's patterns, GET sealed token then ticket, open, SHA-1";
            self.against(Named { name: "SignJsSdkConfig", work, op }, self.get_ceiling(&openids)).await;
        }
    }

    /// The `GET` ceiling's phase, to measure beside an operation ([`Bench::against`]).
    fn get_ceiling(&self, openids: &[String]) -> Option<Named> {
        let (clients, _, _) = self.ceiling.clone()?;
        let op = userinfo_op(clients, self.auth.clone(), openids.to_vec(), false);
        Some(Named { name: "tonic GET", work: "GET of 300 bytes", op })
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
        if self.rps(Side::Ceiling, "tonic GET").is_some() {
            return;
        }
        if let Some(c) = self.get_ceiling(openids) {
            self.phase(Side::Ceiling, c.name, c.work, c.op).await;
        }
    }

    /// The requests per second of a phase already run, if it was.
    pub(crate) fn rps(&self, side: Side, name: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.side == side && r.name == name).map(|r| r.sample.rps())
    }

    /// Runs one timed phase, prints its JSON line, and keeps its row.
    pub(crate) async fn phase(&mut self, side: Side, name: &'static str, work: &'static str, op: OpFn) {
        eprintln!("{:<8} {name}: {:?} warm-up, {:?} timed …", side_name(side), self.args.warmup, self.args.duration);
        let pid = self.pid_of(side, name);
        let reset = pid.is_some_and(procs::reset_peak);
        let (sample, cpu_us) = self.timed(pid, self.args.plan(), &op).await;
        self.keep(Measured { side, name, work, sample, cpu_us, pid, reset, interleaved_with: None });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// wxauth's operation `wx` and its ceiling `ceiling`, in `--interleave` slices that alternate
    /// (each a 1/N of the warm-up and of the window): a drift of the machine's speed during the
    /// run (two shared cores, other tenants) then moves both sides alike, and the ratio between
    /// them holds still where two windows measured one after the other do not (BENCHMARKS.md).
    /// Interleaved, the ceiling is measured anew beside each operation (its row names the
    /// operation). With `--interleave 1` the phases run one after the other as every other
    /// operation's, the ceiling once per run.
    pub(crate) async fn against(&mut self, wx: Named, ceiling: Option<Named>) {
        let rounds = self.args.interleave;
        let ceiling = ceiling.filter(|_| self.ceiling.is_some());
        let ceiling = match ceiling {
            Some(ceiling) if rounds > 1 => ceiling,
            ceiling => {
                self.phase(Side::Wxauth, wx.name, wx.work, wx.op).await;
                if let Some(c) = ceiling.filter(|c| self.rps(Side::Ceiling, c.name).is_none()) {
                    self.phase(Side::Ceiling, c.name, c.work, c.op).await;
                }
                return;
            }
        };
        let plan = Plan {
            concurrency: self.args.concurrency,
            warmup: self.args.warmup / rounds,
            duration: self.args.duration / rounds,
        };
        eprintln!(
            "wxauth   {} and ceiling {}, interleaved: {rounds} × ({:?} warm-up, {:?} timed) each …",
            wx.name, ceiling.name, plan.warmup, plan.duration
        );
        let sides = [(Side::Wxauth, &wx), (Side::Ceiling, &ceiling)];
        let pids = sides.map(|(side, named)| self.pid_of(side, named.name));
        let resets = pids.map(|pid| pid.is_some_and(procs::reset_peak));
        // Each side's sum over its slices; its CPU time while every slice could read it.
        let mut totals = pids.map(|pid| (Sample::empty(), pid.map(|_| 0u64)));
        for _ in 0..rounds {
            for (i, (_, named)) in sides.iter().enumerate() {
                let (sample, cpu_us) = self.timed(pids[i], plan, &named.op).await;
                let (sum, sum_cpu) = &mut totals[i];
                sum.absorb(sample);
                *sum_cpu = sum_cpu.zip(cpu_us).map(|(a, b)| a + b);
            }
        }
        for (i, ((side, named), (sample, cpu_us))) in sides.into_iter().zip(totals).enumerate() {
            let interleaved_with = (side == Side::Ceiling).then_some(wx.name);
            let (name, work, pid, reset) = (named.name, named.work, pids[i], resets[i]);
            self.keep(Measured { side, name, work, sample, cpu_us, pid, reset, interleaved_with });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// The process serving `side`'s phase `name`, when it is a child whose CPU and memory can be read.
    fn pid_of(&self, side: Side, name: &str) -> Option<u32> {
        match side {
            Side::Wxauth => self.wxauth_pid,
            Side::Ceiling if name.starts_with("sim ") => None,
            Side::Ceiling => self.ceiling.as_ref().map(|c| c.2),
        }
    }

    /// One warm-up and timed window of `op` under `plan`; with the CPU time `pid` spent in the
    /// timed window, read beside the load.
    async fn timed(&self, pid: Option<u32>, plan: Plan, op: &OpFn) -> (Sample, Option<u64>) {
        let cpu = async move {
            let pid = pid?;
            tokio::time::sleep(plan.warmup).await;
            let before = procs::cpu_us(pid)?;
            tokio::time::sleep(plan.duration).await;
            Some(procs::cpu_us(pid)?.saturating_sub(before))
        };
        let op = Arc::clone(op);
        tokio::join!(load::run(plan, move |worker| op(worker)), cpu)
    }

    /// A phase's row from what it measured: printed as a JSON line, kept for the report.
    fn keep(&mut self, m: Measured) {
        let memory = m
            .pid
            .and_then(procs::memory)
            .map(|mem| if m.reset { mem } else { Memory { peak_kib: mem.peak_kib, ..mem } });
        // A window cut short (fresh flows ran out) has no CPU figure that matches its requests.
        let cpu_us_per_request = m
            .cpu_us
            .filter(|_| !m.sample.exhausted && m.sample.requests > 0)
            .map(|us| us as f64 / m.sample.requests as f64);
        let row = Row {
            side: m.side,
            name: m.name,
            work: m.work,
            concurrency: self.args.concurrency,
            sample: m.sample,
            memory,
            cpu_us_per_request,
            interleaved_with: m.interleaved_with,
        };
        println!("{}", row.json());
        if row.sample.error_total() > 0 {
            eprintln!("         errors: {:?}", row.sample.errors);
        }
        self.rows.push(row);
    }

    /// Tops `ids` up to `want` fresh flows with untimed BuildAuthorizeUrl calls.
    pub(crate) async fn fill(
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

/// One side of [`Bench::against`]: the phase's name, its work in a few words, its request.
pub(crate) struct Named {
    pub name: &'static str,
    pub work: &'static str,
    pub op: OpFn,
}

/// What one phase (or one side of an interleaved pair) measured, before it is a row.
struct Measured {
    side: Side,
    name: &'static str,
    work: &'static str,
    sample: Sample,
    cpu_us: Option<u64>,
    pid: Option<u32>,
    reset: bool,
    interleaved_with: Option<&'static str>,
}

/// How the progress lines name a side.
fn side_name(side: Side) -> &'static str {
    match side {
        Side::Wxauth => "wxauth",
        Side::Ceiling => "ceiling",
    }
}

/// The flow ids a sink collected.
fn take(sink: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *sink.lock().unwrap_or_else(PoisonError::into_inner))
}
