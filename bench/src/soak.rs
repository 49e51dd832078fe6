//! The soak (issue 11, `wxauth-bench soak`): many complete sign-ins — `BuildAuthorizeUrl`,
//! WeChat's consent page and Allow, the relay, `ExchangeCode`, `GetUserInfo` — at a fixed
//! concurrency against Redis, as a browser and a product backend make them. It looks for what
//! a short benchmark cannot see: errors that come only with time, memory that wxauth never
//! gives back (its resident memory is sampled through the run and compared quarter against
//! quarter), and keys that outlive their purpose in Redis (counted by kind before, after, and
//! once every flow and code record has expired).
//!
//! What stays in Redis after a sign-in, once its flow and code have expired, is per user, not
//! per sign-in: the token record, the client's claim on the user (`users = "own"`) and the
//! cached profile (one per language asked). So the steady state of `N` sign-ins by `U`
//! distinct users is `U` of each of those three kinds and nothing else ([`Census::settled`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use serde::Serialize;
use serde_json::{Value, json};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use url::Url;

use super::load::histogram;
use super::procs::{self, Memory};
use super::report::Check;
use wxauth::proto::{self, we_chat_o_auth_service_client::WeChatOAuthServiceClient};

/// Where the official account's consent form posts (the simulator's page, as WeChat's).
const CONFIRM_PATH: &str = "/connect/oauth2/authorize/confirm";
/// RSS may grow at most this much from the first quarter of the run to the last.
pub const MAX_RSS_GROWTH: f64 = 0.10;
/// How often wxauth's resident memory is read during the run.
const RSS_EVERY: Duration = Duration::from_millis(100);

/// Everything a sign-in needs: the product's gRPC clients and key, a browser (an HTTP client
/// with WeChat's in-app User-Agent that does not follow redirects), and where the relay is.
#[derive(Clone)]
pub struct Soak {
    /// gRPC clients to wxauth, one per HTTP/2 connection.
    pub clients: Vec<WeChatOAuthServiceClient<Channel>>,
    /// `Bearer <client key>`.
    pub auth: MetadataValue<Ascii>,
    /// The browser.
    pub browser: reqwest::Client,
    /// wxauth's public listener, `http://host:port`.
    pub relay: String,
    /// The app's config name in wxauth.
    pub app: String,
    /// An allowlisted return URL of the client.
    pub return_url: String,
    /// The simulator's test users who consent, taken in turn.
    pub users: Vec<String>,
}

impl std::fmt::Debug for Soak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Soak").field("relay", &self.relay).field("users", &self.users.len()).finish_non_exhaustive()
    }
}

/// What a soak run measured.
#[derive(Debug)]
pub struct SoakResult {
    /// Sign-ins attempted.
    pub sign_ins: usize,
    /// Complete sign-ins per second.
    pub rate: f64,
    /// The whole run.
    pub elapsed: Duration,
    /// Latency of one whole sign-in (six HTTP requests), µs: p50, p99, max.
    pub latency_us: (u64, u64, u64),
    /// Failed sign-ins by the step and the answer that failed them.
    pub errors: BTreeMap<String, u64>,
    /// wxauth's resident memory per quarter of the sign-ins.
    pub quarters: Vec<Quarter>,
}

/// wxauth's resident memory while one quarter of the sign-ins ran.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quarter {
    /// Mean of the readings, KiB.
    pub mean_kib: u64,
    /// Highest reading, KiB.
    pub max_kib: u64,
    /// The reading when the quarter's last sign-in finished, KiB.
    pub end_kib: u64,
    /// Readings taken.
    pub readings: usize,
}

impl Soak {
    /// Runs `sign_ins` complete sign-ins, `concurrency` at a time, reading the resident memory
    /// of `pid` (wxauth) throughout.
    pub async fn run(&self, sign_ins: usize, concurrency: usize, pid: Option<u32>) -> SoakResult {
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
        let quarter_ends = Arc::new(Mutex::new([0u64; 4]));
        let readings = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let started = Instant::now();

        let sampler = pid.map(|pid| {
            let (done, readings, running) = (Arc::clone(&done), Arc::clone(&readings), Arc::clone(&running));
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    if let Some(m) = procs::memory(pid) {
                        let at = done.load(Ordering::Relaxed);
                        readings.lock().unwrap_or_else(PoisonError::into_inner).push((at, m.rss_kib));
                    }
                    tokio::time::sleep(RSS_EVERY).await;
                }
            })
        });
        let workers: Vec<_> = (0..concurrency.max(1))
            .map(|worker| {
                let soak = self.clone();
                let (next, done, errors, ends) =
                    (Arc::clone(&next), Arc::clone(&done), Arc::clone(&errors), Arc::clone(&quarter_ends));
                tokio::spawn(async move {
                    let mut latency = histogram();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= sign_ins {
                            return latency;
                        }
                        let began = Instant::now();
                        match soak.sign_in(worker, n).await {
                            Ok(()) => {
                                let us = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
                                let _ = latency.record(us.clamp(1, 60_000_000));
                            }
                            Err(kind) => {
                                *errors.lock().unwrap_or_else(PoisonError::into_inner).entry(kind).or_default() += 1
                            }
                        }
                        let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if finished % (sign_ins / 4).max(1) == 0 {
                            let quarter = (finished * 4 / sign_ins.max(1)).clamp(1, 4) - 1;
                            if let Some(m) = pid.and_then(procs::memory) {
                                ends.lock().unwrap_or_else(PoisonError::into_inner)[quarter] = m.rss_kib;
                            }
                        }
                    }
                })
            })
            .collect();
        let mut latency = histogram();
        for worker in workers {
            if let Ok(h) = worker.await {
                let _ = latency.add(&h);
            }
        }
        let elapsed = started.elapsed();
        running.store(false, Ordering::Relaxed);
        if let Some(sampler) = sampler {
            let _ = sampler.await;
        }
        let readings = std::mem::take(&mut *readings.lock().unwrap_or_else(PoisonError::into_inner));
        let ends = *quarter_ends.lock().unwrap_or_else(PoisonError::into_inner);
        let quarters = if pid.is_some() { quarters(&readings, ends, sign_ins) } else { Vec::new() };
        let errors = std::mem::take(&mut *errors.lock().unwrap_or_else(PoisonError::into_inner));
        SoakResult {
            sign_ins,
            rate: sign_ins as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
            elapsed,
            latency_us: (latency.value_at_quantile(0.5), latency.value_at_quantile(0.99), latency.max()),
            errors,
            quarters,
        }
    }

    /// One complete sign-in of the `n`-th user in turn; `Err` names the step that failed and
    /// how (`relay:http:503`, `exchange:grpc:Unavailable`).
    pub async fn sign_in(&self, worker: usize, n: usize) -> Result<(), String> {
        let mut client = self.clients[worker % self.clients.len()].clone();
        let user = &self.users[n % self.users.len()];
        // The product's CSRF value, kept in its session and checked when the user comes back.
        let csrf = format!("soak-{n}-{}", wxauth::random_id(16));

        // The product starts the flow.
        let request = proto::BuildAuthorizeUrlRequest {
            app: self.app.clone(),
            return_url: self.return_url.clone(),
            scope: proto::Scope::SnsapiUserinfo as i32,
            state: csrf.clone(),
            ..Default::default()
        };
        let started = client.build_authorize_url(self.authed(request)).await.map_err(|s| grpc_error("build", &s))?;
        let started = started.into_inner();

        // The browser opens WeChat's consent page and the user taps Allow.
        let authorize = Url::parse(&started.authorize_url).map_err(|_| "build:bad-url".to_owned())?;
        let page = self.browser.get(authorize.clone()).send().await.map_err(|_| "consent:transport".to_owned())?;
        if page.status() != reqwest::StatusCode::OK {
            return Err(format!("consent:http:{}", page.status().as_u16()));
        }
        let html = page.text().await.map_err(|_| "consent:body".to_owned())?;
        if !html.contains("id=\"allow\"") {
            return Err("consent:no-allow-button".into());
        }
        let param = |name: &str| authorize.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        // The form's hidden fields carry the link's parameters back (the page checks them again).
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for name in ["appid", "redirect_uri", "scope", "state"] {
                form.append_pair(name, &param(name).unwrap_or_default());
            }
            form.append_pair("decision", "allow").append_pair("user", user).finish()
        };
        let confirm = authorize.join(CONFIRM_PATH).map_err(|_| "allow:bad-url".to_owned())?;
        let allowed = self
            .browser
            .post(confirm)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|_| "allow:transport".to_owned())?;
        let callback = redirect(&allowed).ok_or_else(|| format!("allow:http:{}", allowed.status().as_u16()))?;

        // WeChat sends the browser to the callback domain: the relay.
        let query = callback.query().unwrap_or_default();
        let relayed = self
            .browser
            .get(format!("{}/wechat/callback?{query}", self.relay))
            .send()
            .await
            .map_err(|_| "relay:transport".to_owned())?;
        let back = redirect(&relayed).ok_or_else(|| format!("relay:http:{}", relayed.status().as_u16()))?;
        let value = |name: &str| back.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        if value("state").as_deref() != Some(csrf.as_str()) {
            return Err("relay:state-mismatch".into());
        }
        let code = value("code").ok_or_else(|| "relay:no-code".to_owned())?;

        // The product exchanges the code through the flow it kept, then reads the profile.
        let request = proto::ExchangeCodeRequest { flow_id: started.flow_id, code, ..Default::default() };
        let exchanged = client.exchange_code(self.authed(request)).await.map_err(|s| grpc_error("exchange", &s))?;
        let openid = exchanged.into_inner().openid;
        let request = proto::GetUserInfoRequest { app: self.app.clone(), openid: openid.clone(), ..Default::default() };
        let info = client.get_user_info(self.authed(request)).await.map_err(|s| grpc_error("userinfo", &s))?;
        if info.into_inner().user_info.map(|u| u.openid) != Some(openid) {
            return Err("userinfo:another-user".into());
        }
        Ok(())
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.auth.clone());
        request
    }
}

fn grpc_error(step: &str, status: &tonic::Status) -> String {
    format!("{step}:grpc:{:?}", status.code())
}

/// The `Location` of a `302 Found`.
fn redirect(response: &reqwest::Response) -> Option<Url> {
    if response.status() != reqwest::StatusCode::FOUND {
        return None;
    }
    let location = response.headers().get(reqwest::header::LOCATION)?.to_str().ok()?;
    Url::parse(location).ok()
}

/// Groups the readings `(sign-ins done, RSS KiB)` by quarter of the run.
fn quarters(readings: &[(usize, u64)], ends: [u64; 4], sign_ins: usize) -> Vec<Quarter> {
    (0..4)
        .map(|q| {
            let in_quarter: Vec<u64> = readings
                .iter()
                .filter(|(at, _)| (at * 4 / sign_ins.max(1)).min(3) == q && *at < sign_ins)
                .map(|(_, kib)| *kib)
                .collect();
            let n = in_quarter.len();
            let mean = if n == 0 { ends[q] } else { in_quarter.iter().sum::<u64>() / n as u64 };
            let max = in_quarter.iter().copied().max().unwrap_or(ends[q]);
            Quarter { mean_kib: mean, max_kib: max, end_kib: ends[q], readings: n }
        })
        .collect()
}

/// Redis keys of one wxauth deployment, by kind (docs/design.md §4 and `store`'s table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    /// `{prefix}:flow:{id}`: flows not yet expired.
    pub flows: u64,
    /// `{prefix}:code:{hash}`: code records (relayed, pending, results).
    pub codes: u64,
    /// `{prefix}:{app}:tok:{openid}`: token records.
    pub tokens: u64,
    /// `{prefix}:{app}:reach:{openid}:{client}`: clients' claims on users.
    pub reach: u64,
    /// `{prefix}:{app}:prof:{openid}:{lang}`: cached profiles.
    pub profiles: u64,
    /// `{prefix}:{app}:lock:{openid}`: refresh locks.
    pub locks: u64,
    /// `{prefix}:client:{client}:flows:{window}` (the client in literal braces): the open-flow
    /// cap's per-window counters.
    pub open_flow_counters: u64,
    /// Anything else under the prefix.
    pub other: u64,
}

impl Census {
    /// The steady state once every flow and code record has expired: per user, one token
    /// record, one claim of the one client, one cached profile (one language); nothing else.
    pub fn settled(users: u64) -> Self {
        Self { tokens: users, reach: users, profiles: users, ..Self::default() }
    }

    /// All keys counted.
    pub fn total(&self) -> u64 {
        self.flows
            + self.codes
            + self.tokens
            + self.reach
            + self.profiles
            + self.locks
            + self.open_flow_counters
            + self.other
    }

    /// Counts `key` (which starts with `prefix:`).
    fn count(&mut self, prefix: &str, key: &str) {
        let rest = key.strip_prefix(prefix).and_then(|k| k.strip_prefix(':')).unwrap_or(key);
        let mut parts = rest.split(':');
        let slot = match (parts.next(), parts.next()) {
            (Some("flow"), _) => &mut self.flows,
            (Some("code"), _) => &mut self.codes,
            (Some("client"), _) => &mut self.open_flow_counters,
            (_, Some("tok")) => &mut self.tokens,
            (_, Some("reach")) => &mut self.reach,
            (_, Some("prof")) => &mut self.profiles,
            (_, Some("lock")) => &mut self.locks,
            _ => &mut self.other,
        };
        *slot += 1;
    }

    /// Counts every key under `prefix` with `SCAN` (never `KEYS`: it blocks Redis).
    pub async fn take(conn: &mut MultiplexedConnection, prefix: &str) -> redis::RedisResult<Self> {
        let mut census = Self::default();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            keys.iter().for_each(|k| census.count(prefix, k));
            if next == 0 {
                return Ok(census);
            }
            cursor = next;
        }
    }

    /// The census as one JSON line.
    pub fn json(&self, when: &str) -> Value {
        json!({"kind": "soak_keys", "when": when, "total": self.total(), "keys": self})
    }
}

/// The soak's targets: no errors, RSS growth under [`MAX_RSS_GROWTH`] from the first quarter
/// to the last (mean readings), and Redis back to `expected` after expiry.
pub fn checks(result: &SoakResult, settled: Option<&Census>, expected: &Census) -> Vec<Check> {
    let errors: u64 = result.errors.values().sum();
    let mut checks = vec![Check {
        name: "soak: failed sign-ins".into(),
        value: errors as f64,
        limit: 0.0,
        pass: Some(errors == 0),
        note: format!("{} complete sign-ins", result.sign_ins),
    }];
    let growth = match (result.quarters.first(), result.quarters.last()) {
        (Some(first), Some(last)) if first.mean_kib > 0 => {
            Some((last.mean_kib as f64 - first.mean_kib as f64) / first.mean_kib as f64)
        }
        _ => None,
    };
    checks.push(Check {
        name: "soak: wxauth RSS growth, first quarter to last".into(),
        value: growth.unwrap_or(0.0),
        limit: MAX_RSS_GROWTH,
        pass: growth.map(|g| g < MAX_RSS_GROWTH),
        note: match growth {
            Some(_) => "mean of the readings in each quarter".into(),
            None => "no memory readings (a wxauth not started by the harness, and no --pid)".into(),
        },
    });
    let (pass, note) = match settled {
        Some(found) => (Some(found == expected), format!("found {found:?}, expected {expected:?}")),
        None => (None, "not waited for (--no-settle)".into()),
    };
    checks.push(Check {
        name: "soak: Redis keys back to the steady state".into(),
        value: settled.map_or(0.0, |c| c.total() as f64),
        limit: expected.total() as f64,
        pass,
        note,
    });
    checks
}

/// The run as JSON lines (stdout).
pub fn json_lines(result: &SoakResult, concurrency: usize) -> Vec<Value> {
    let mut lines = vec![json!({
        "kind": "soak", "sign_ins": result.sign_ins, "concurrency": concurrency,
        "seconds": (result.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "sign_ins_per_s": (result.rate * 10.0).round() / 10.0,
        "p50_us": result.latency_us.0, "p99_us": result.latency_us.1, "max_us": result.latency_us.2,
        "errors": result.errors,
    })];
    for (i, q) in result.quarters.iter().enumerate() {
        lines.push(json!({"kind": "soak_memory", "quarter": i + 1, "rss": q}));
    }
    lines
}

/// The run in words (stderr).
pub fn table(result: &SoakResult, censuses: &[(&str, Census)], checks: &[Check], idle: Option<Memory>) -> String {
    let mut out = String::new();
    let (p50, p99, max) = result.latency_us;
    let _ = writeln!(
        out,
        "{} sign-ins in {:.1} s: {:.0} sign-ins/s; one sign-in (6 requests) p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        result.sign_ins,
        result.elapsed.as_secs_f64(),
        result.rate,
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        max as f64 / 1000.0,
    );
    let _ = writeln!(out, "errors: {:?}", result.errors);
    if let Some(m) = idle {
        let _ = writeln!(out, "wxauth RSS idle before the soak: {:.1} MiB", m.rss_kib as f64 / 1024.0);
    }
    for (i, q) in result.quarters.iter().enumerate() {
        let _ = writeln!(
            out,
            "wxauth RSS, quarter {}: mean {:.1} MiB, max {:.1} MiB, at its end {:.1} MiB ({} readings)",
            i + 1,
            q.mean_kib as f64 / 1024.0,
            q.max_kib as f64 / 1024.0,
            q.end_kib as f64 / 1024.0,
            q.readings
        );
    }
    for (when, c) in censuses {
        let _ = writeln!(
            out,
            "Redis keys {when}: {} (flows {}, codes {}, tokens {}, reach {}, profiles {}, locks {}, open-flow counters {}, other {})",
            c.total(),
            c.flows,
            c.codes,
            c.tokens,
            c.reach,
            c.profiles,
            c.locks,
            c.open_flow_counters,
            c.other
        );
    }
    for c in checks {
        let result = match c.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        };
        let _ = writeln!(out, "{result:<4}  {}: {:.3} (limit {}) — {}", c.name, c.value, c.limit, c.note);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_counted_by_their_kind() {
        let mut census = Census::default();
        for key in [
            "wxauth:flow:AbC123",
            "wxauth:code:9f86d0",
            "wxauth:mp:tok:oUser1",
            "wxauth:mp:reach:oUser1:bench",
            "wxauth:mp:prof:oUser1:zh_CN",
            "wxauth:mp:lock:oUser1",
            "wxauth:client:{bench}:flows:29611420",
            "wxauth:something-new",
        ] {
            census.count("wxauth", key);
        }
        let one =
            Census { flows: 1, codes: 1, tokens: 1, reach: 1, profiles: 1, locks: 1, open_flow_counters: 1, other: 1 };
        assert_eq!(census, one);
        assert_eq!(Census::settled(3).total(), 9);
    }

    #[test]
    fn readings_fall_in_the_quarter_of_the_sign_ins_done() {
        let readings = [(0, 100), (24, 110), (25, 200), (99, 300), (100, 999)];
        let q = quarters(&readings, [1, 2, 3, 4], 100);
        assert_eq!((q[0].mean_kib, q[0].readings), (105, 2));
        assert_eq!((q[1].mean_kib, q[1].max_kib), (200, 200));
        assert_eq!((q[2].mean_kib, q[2].readings), (3, 0), "no reading: the quarter's end stands in");
        assert_eq!((q[3].mean_kib, q[3].readings), (300, 1), "readings after the last sign-in are not the run's");
    }
}
