//! The Redis backend: single node, Sentinel-fronted or Cluster. Every operation touches one
//! key, so no operation ever spans hash slots. Connections reconnect by themselves
//! (`ConnectionManager`, `ClusterConnection`, and for Sentinel a connection to the current
//! master that is dropped and looked up again after a connection error or a `READONLY` reply,
//! which is what a failover looks like from a client); each command has a response timeout so
//! a dead Redis answers `STORE_UNAVAILABLE` quickly instead of hanging a request.
//!
//! TLS (`rediss://`): [`RedisTls`] carries what the `store.tls_*` files hold, read and checked
//! once at config load. Given a CA bundle, that bundle alone is trusted (redis-rs replaces the
//! built-in web roots with it); given a client certificate and key, they are presented to
//! Redis (mutual TLS). The same material serves every connection: the single node, each
//! Cluster node, and for Sentinel both the Sentinels and the master they name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo as _, Pipeline, RedisError, RedisResult, Script, ScriptInvocation, ServerErrorKind,
    TlsCertificates, TlsMode,
};

use super::FlowRead;
use crate::secrets::RedisClientKey;

/// How long one Redis command may take before the store counts as unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection attempts at start-up (single node), this far apart.
const STARTUP_ATTEMPTS: u32 = 4;
const STARTUP_RETRY: Duration = Duration::from_secs(1);

/// The relay's step on a flow (a hash: `f` the sealed flow, `n` its callbacks) for Redis
/// before 7.0: returns the flow, whether this call cut the TTL to ARGV[1] ms (the first use
/// starts the grace window) and the callback count, after adding ARGV[2] to it (0 when the
/// refused pipeline that found the server too old has counted this callback already). A key
/// without a flow (the counter such a pipeline left for an unknown id) is deleted. Newer
/// servers do the same with a pipeline (`HGET`, `HINCRBY`, `PEXPIRE .. LT`), which costs
/// Redis less.
const USE_FLOW: &str = r"
local v = redis.call('HGET', KEYS[1], 'f')
if not v then redis.call('DEL', KEYS[1]) return false end
local n = redis.call('HINCRBY', KEYS[1], 'n', ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
local cut = 0
if ttl > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) cut = 1 end
return {v, cut, n}
";

/// Takes a flow out (the start of a browser-bound flow): the sealed flow, its callbacks so far
/// and its remaining life (ms), and deletes the key; false when there is none. A flow that has
/// relayed a callback is left as it is (its grace window goes on) and answered with a life of 0.
const TAKE_FLOW: &str = r"
local v = redis.call('HGET', KEYS[1], 'f')
if not v then return false end
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if n > 0 then return {v, n, 0} end
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {v, n, ttl}
";

/// Sets KEYS[1] to ARGV[2] for ARGV[3] ms only when it still holds ARGV[1]: a compare-and-set
/// on one key (sealed values carry a random nonce, so equal bytes mean no one wrote since).
const SET_IF_EQ: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes the key only when it still holds ARGV[1]: releasing a lock we own, never another's.
const DEL_IF_EQ: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What `rediss://` connections trust and present (`store.tls_ca_file`, `store.tls_cert_file`
/// and `store.tls_key_file`), as PEM read at config load. The default (nothing set) trusts
/// the built-in web roots and presents no client certificate. `Debug` shows only which parts
/// are set, never a certificate or the key.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA certificates trusted instead of the web roots.
    ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its key, for mutual TLS.
    client: Option<(Vec<u8>, RedisClientKey)>,
}

impl RedisTls {
    /// TLS material from PEM: a CA bundle to trust instead of the web roots, and a client
    /// certificate chain with its private key for mutual TLS. The caller has checked the PEM
    /// (the config does, naming the key at fault).
    pub fn new(ca_pem: Option<Vec<u8>>, client: Option<(Vec<u8>, RedisClientKey)>) -> Self {
        Self { ca_pem, client }
    }

    /// Whether any TLS file was configured.
    pub fn is_configured(&self) -> bool {
        self.ca_pem.is_some() || self.client.is_some()
    }

    /// The certificates in redis-rs's form, or `None` when nothing was configured (redis-rs
    /// then uses its defaults: web roots, no client certificate).
    pub fn certificates(&self) -> Option<TlsCertificates> {
        if !self.is_configured() {
            return None;
        }
        let client_tls = self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.clone(),
            // The one place the client key leaves its wrapper: to rustls, through redis-rs.
            client_key: key.secret().as_bytes().to_vec(),
        });
        Some(TlsCertificates { client_tls, root_cert: self.ca_pem.clone() })
    }
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca_pem.as_ref().map(|_| "custom"))
            .field("client_cert", &self.client.as_ref().map(|_| "set"))
            .finish()
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelMaster>),
}

/// The master a set of Sentinels names, and a connection to it while it answers.
struct SentinelMaster {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

impl SentinelMaster {
    /// The connection to the current master, asking the Sentinels when there is none.
    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        // One lookup at a time; whoever waited finds the fresh connection.
        let mut sentinels = self.sentinels.lock().await;
        if let Some(conn) = self.cached() {
            return Ok(conn);
        }
        let conn = sentinels.get_async_connection_with_config(&self.config).await?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the connection after an error that means "not the master any more".
    fn judge<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result
            && stale_master(e)
        {
            tracing::info!(error = %e, "Redis master connection lost; asking the Sentinels again");
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result
    }
}

/// A Sentinel client for `urls`. redis-rs takes custom TLS certificates only through its
/// builder, which uses one username and password for all Sentinels (taken from the URLs, which
/// must agree, as Cluster node URLs must) and TLS to the master exactly when the Sentinel URLs
/// are `rediss://`.
fn sentinel_client(urls: &[String], master: &str, tls: &RedisTls) -> RedisResult<SentinelClient> {
    let infos = urls.iter().map(|u| u.as_str().into_connection_info()).collect::<RedisResult<Vec<ConnectionInfo>>>()?;
    let Some(first) = infos.first() else {
        return Err(RedisError::from((ErrorKind::InvalidClientConfig, "no Sentinel URL")));
    };
    let credentials = |i: &ConnectionInfo| {
        let redis = i.redis_settings();
        (redis.username().map(str::to_owned), redis.password().map(str::to_owned))
    };
    let (username, password) = credentials(first);
    if infos.iter().any(|i| credentials(i) != (username.clone(), password.clone())) {
        return Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "the Sentinel URLs must share one username and password",
        )));
    }
    let over_tls = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
    let addrs = infos.iter().map(|i| i.addr().clone()).collect::<Vec<_>>();
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?;
    if let Some(username) = username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if over_tls {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certs) = tls.certificates() {
            builder =
                builder.set_client_to_sentinel_certificates(certs.clone()).set_client_to_redis_certificates(certs);
        }
    }
    builder.build()
}

fn stale_master(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || is_read_only(e)
}

/// A `READONLY` reply, also inside a pipeline or a `MULTI` (redis-rs 1.x reports a refused
/// `MULTI` as `EXECABORT`, carrying the replies that refused the queued commands).
fn is_read_only(e: &RedisError) -> bool {
    let read_only = |kind| kind == ServerErrorKind::ReadOnly;
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, s)| s.kind().is_some_and(read_only)))
}

/// A connection to Redis (single node or Cluster) and the scripts the store needs.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    use_flow: Script,
    take_flow: Script,
    del_if_eq: Script,
    set_if_eq: Script,
    /// `PEXPIRE` takes `LT` (Redis >= 7.0); cleared for good at the first server that refuses it.
    expire_lt: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Single(_) => "single",
            Conn::Cluster(_) => "cluster",
            Conn::Sentinel(_) => "sentinel",
        };
        write!(f, "RedisBackend({kind})")
    }
}

impl RedisBackend {
    /// Connects to one node (`redis://`, `rediss://`) or, given several URLs, to a Cluster;
    /// `rediss://` connections use `tls`.
    pub async fn connect(urls: &[String], tls: &RedisTls) -> RedisResult<Self> {
        Ok(Self::with(Self::connect_direct(urls, tls).await?))
    }

    /// Connects to the master that the Sentinels at `urls` name `master`, following failovers.
    /// With `rediss://` Sentinel URLs the master is reached over TLS too, both with `tls`.
    pub async fn connect_sentinel(urls: &[String], master: &str, tls: &RedisTls) -> RedisResult<Self> {
        let sentinels = sentinel_client(urls, master, tls)?;
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let master =
            SentinelMaster { sentinels: tokio::sync::Mutex::new(sentinels), current: RwLock::new(None), config };
        master.connection().await?;
        Ok(Self::with(Conn::Sentinel(Arc::new(master))))
    }

    fn with(conn: Conn) -> Self {
        Self {
            conn,
            use_flow: Script::new(USE_FLOW),
            take_flow: Script::new(TAKE_FLOW),
            del_if_eq: Script::new(DEL_IF_EQ),
            set_if_eq: Script::new(SET_IF_EQ),
            expire_lt: Arc::new(AtomicBool::new(true)),
        }
    }

    async fn connect_direct(urls: &[String], tls: &RedisTls) -> RedisResult<Conn> {
        let conn = match urls {
            [one] => {
                let client = match tls.certificates() {
                    Some(certs) => redis::Client::build_with_tls(one.as_str(), certs)?,
                    None => redis::Client::open(one.as_str())?,
                };
                // One connection attempt per reconnection, no backoff: redis-rs makes every
                // command wait on a reconnection in progress, and its backoff sleeps between
                // attempts (a second or more in redis-rs 0.32; 100 ms doubling, six retries, in
                // 1.x), which held calls until their deadline while Redis was down and left a
                // restarted Redis unused for a second or two. Failing at once instead lets the circuit breaker open; the next
                // call, or the health ping, starts the next attempt.
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(0);
                // At start-up, a few attempts: Redis may be starting alongside.
                let mut attempt = 1;
                let manager = loop {
                    match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                        Ok(manager) => break manager,
                        Err(e) if attempt < STARTUP_ATTEMPTS && e.is_io_error() => {
                            tracing::info!(error = %e, attempt, "Redis not reachable yet; trying again");
                            attempt += 1;
                            tokio::time::sleep(STARTUP_RETRY).await;
                        }
                        Err(e) => return Err(e),
                    }
                };
                Conn::Single(manager)
            }
            many => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(many.to_vec())
                    .response_timeout(RESPONSE_TIMEOUT)
                    .connection_timeout(CONNECT_TIMEOUT);
                if let Some(certs) = tls.certificates() {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
        };
        Ok(conn)
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Sentinel(m) => {
                let mut conn = m.connection().await?;
                m.judge(cmd.query_async(&mut conn).await)
            }
        }
    }

    async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        match &self.conn {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Sentinel(m) => {
                let mut conn = m.connection().await?;
                m.judge(pipe.query_async(&mut conn).await)
            }
        }
    }

    async fn invoke<T: FromRedisValue>(&self, script: ScriptInvocation<'_>) -> RedisResult<T> {
        match &self.conn {
            Conn::Single(c) => script.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => script.invoke_async(&mut c.clone()).await,
            Conn::Sentinel(m) => {
                let mut conn = m.connection().await?;
                m.judge(script.invoke_async(&mut conn).await)
            }
        }
    }

    pub(super) async fn get(&self, key: &str) -> RedisResult<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> RedisResult<()> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(millis(ttl))).await
    }

    pub(super) async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> RedisResult<bool> {
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("NX").arg("PX").arg(millis(ttl)).clone();
        let reply: Option<String> = self.query(&cmd).await?;
        Ok(reply.is_some())
    }

    pub(super) async fn del(&self, key: &str) -> RedisResult<()> {
        self.query(redis::cmd("DEL").arg(key)).await
    }

    pub(super) async fn del_if_eq(&self, key: &str, value: &[u8]) -> RedisResult<bool> {
        let mut inv = self.del_if_eq.key(key);
        inv.arg(value);
        let deleted: i64 = self.invoke(inv).await?;
        Ok(deleted == 1)
    }

    pub(super) async fn set_if_eq(&self, key: &str, expected: &[u8], value: &[u8], ttl: Duration) -> RedisResult<bool> {
        let mut inv = self.set_if_eq.key(key);
        inv.arg(expected).arg(value).arg(millis(ttl));
        let set: i64 = self.invoke(inv).await?;
        Ok(set == 1)
    }

    /// `HSET key field value` and `PEXPIRE key ttl` in one `MULTI`: the hash never lives
    /// without its TTL, and each sign-in renews it.
    pub(super) async fn hset_px(&self, key: &str, field: &str, value: &[u8], ttl: Duration) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .ignore()
            .cmd("PEXPIRE")
            .arg(key)
            .arg(millis(ttl))
            .ignore();
        self.query_pipe(&pipe).await
    }

    /// `HGETALL key`.
    pub(super) async fn hgetall(&self, key: &str) -> RedisResult<Vec<(String, Vec<u8>)>> {
        self.query(redis::cmd("HGETALL").arg(key)).await
    }

    /// `HDEL key field`.
    pub(super) async fn hdel(&self, key: &str, field: &str) -> RedisResult<()> {
        self.query(redis::cmd("HDEL").arg(key).arg(field)).await
    }

    /// A new flow hash (`f` = the sealed flow) living `ttl`; false when the key exists. One
    /// `MULTI` so the flow never exists without its TTL.
    pub(super) async fn create_flow(&self, key: &str, sealed: &[u8], ttl: Duration) -> RedisResult<bool> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("HSETNX").arg(key).arg("f").arg(sealed).cmd("PEXPIRE").arg(key).arg(millis(ttl)).ignore();
        let (created,): (i64,) = self.query_pipe(&pipe).await?;
        Ok(created == 1)
    }

    /// The sealed flow, whether this call cut its TTL to `cut_to` (false: it was that short
    /// already, i.e. an earlier callback cut it), and its callback count with this one. One
    /// round trip: `HGET`, `HINCRBY` and `PEXPIRE .. LT` pipelined; `LT` makes the cut atomic,
    /// so of simultaneous callbacks exactly one cuts.
    pub(super) async fn use_flow(&self, key: &str, cut_to: Duration) -> RedisResult<Option<FlowRead>> {
        if self.expire_lt.load(Ordering::Relaxed) {
            let mut pipe = redis::Pipeline::with_capacity(3);
            add_flow_step(&mut pipe, key, cut_to);
            match self.query_pipe::<(Option<Vec<u8>>, u64, i64)>(&pipe).await {
                Ok((Some(value), uses, cut)) => return Ok(Some((value, cut == 1, uses))),
                Ok((None, _, _)) => {
                    // No such flow: HINCRBY made a counter-only key (PEXPIRE LT gave it the
                    // grace TTL); drop it now rather than let unknown ids leave keys behind.
                    self.del(key).await?;
                    return Ok(None);
                }
                Err(e) if refuses_expire_options(&e) => {
                    self.expire_lt.store(false, Ordering::Relaxed);
                    tracing::warn!("Redis before 7.0 (no PEXPIRE LT): the relay uses a Lua script instead");
                    // The pipeline is not a transaction: its HGET and HINCRBY ran, so this
                    // callback is counted already.
                    return self.use_flow_script(key, cut_to, false).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.use_flow_script(key, cut_to, true).await
    }

    /// The relay's step as the [`USE_FLOW`] script (Redis before 7.0); `count`: whether to
    /// count this callback (false when a refused pipeline counted it).
    async fn use_flow_script(&self, key: &str, cut_to: Duration, count: bool) -> RedisResult<Option<FlowRead>> {
        let mut inv = self.use_flow.key(key);
        inv.arg(millis(cut_to)).arg(u8::from(count));
        let reply: Option<(Vec<u8>, i64, u64)> = self.invoke(inv).await?;
        Ok(reply.map(|(v, cut, uses)| (v, cut == 1, uses)))
    }

    /// Takes the flow at `key` out ([`TAKE_FLOW`]): the sealed flow, its callbacks so far and
    /// its remaining life.
    pub(super) async fn take_flow(&self, key: &str) -> RedisResult<Option<(Vec<u8>, u64, Duration)>> {
        let reply: Option<(Vec<u8>, u64, i64)> = self.invoke(self.take_flow.key(key)).await?;
        Ok(reply.map(|(v, uses, left)| (v, uses, Duration::from_millis(u64::try_from(left).unwrap_or(0)))))
    }

    /// `HGET key f`: the sealed flow, nothing counted or cut.
    pub(super) async fn read_flow(&self, key: &str) -> RedisResult<Option<Vec<u8>>> {
        self.query(redis::cmd("HGET").arg(key).arg("f")).await
    }

    /// [`RedisBackend::use_flow`] and, in the same round trip, `SET code_key NX GET PX`
    /// (Redis >= 7.0): `None` when the code was bound now, else the record already there. One
    /// pipeline on a single node or Sentinel; on a Cluster the two keys live in different
    /// slots, so the two steps go out concurrently (one round trip's wait all the same).
    pub(super) async fn use_flow_binding(
        &self,
        key: &str,
        cut_to: Duration,
        code_key: &str,
        code_value: &[u8],
        code_ttl: Duration,
    ) -> RedisResult<(Option<FlowRead>, Option<Vec<u8>>)> {
        let bind = || {
            // Sized up front: argument by argument, a command's buffer would grow (and move)
            // several times, a measurable share of the relay's cost.
            let mut cmd = redis::Cmd::with_capacity(7, code_key.len() + code_value.len() + 32);
            cmd.arg("SET").arg(code_key).arg(code_value).arg("NX").arg("GET").arg("PX").arg(millis(code_ttl));
            cmd
        };
        if !self.expire_lt.load(Ordering::Relaxed) {
            return self.use_flow_binding_6(key, cut_to, code_key, code_value, code_ttl, true).await;
        }
        if let Conn::Cluster(_) = self.conn {
            let bind = bind();
            let (flow, existing) = tokio::join!(self.use_flow(key, cut_to), self.query::<Option<Vec<u8>>>(&bind));
            return Ok((flow?, existing?));
        }
        let mut pipe = redis::Pipeline::with_capacity(4);
        add_flow_step(&mut pipe, key, cut_to);
        pipe.add_command(bind());
        match self.query_pipe::<(Option<Vec<u8>>, u64, i64, Option<Vec<u8>>)>(&pipe).await {
            Ok((Some(value), uses, cut, existing)) => Ok((Some((value, cut == 1, uses)), existing)),
            Ok((None, _, _, existing)) => {
                // No such flow: drop the counter-only key HINCRBY made (see `use_flow`).
                self.del(key).await?;
                Ok((None, existing))
            }
            Err(e) if refuses_expire_options(&e) => {
                self.expire_lt.store(false, Ordering::Relaxed);
                tracing::warn!("Redis before 7.0 (no PEXPIRE LT): the relay uses a Lua script instead");
                // The pipeline's HGET and HINCRBY ran (it is not a transaction): counted once
                // already. Its `SET .. NX GET` was refused, so the code is bound below.
                self.use_flow_binding_6(key, cut_to, code_key, code_value, code_ttl, false).await
            }
            Err(e) => Err(e),
        }
    }

    /// [`RedisBackend::use_flow_binding`] for Redis before 7.0 (neither `PEXPIRE .. LT` nor
    /// `SET .. NX GET`): the [`USE_FLOW`] script (counting the callback when `count`) and
    /// `SET NX`, then `GET` of the record a refused `SET NX` met.
    async fn use_flow_binding_6(
        &self,
        key: &str,
        cut_to: Duration,
        code_key: &str,
        code_value: &[u8],
        code_ttl: Duration,
        count: bool,
    ) -> RedisResult<(Option<FlowRead>, Option<Vec<u8>>)> {
        let (flow, bound) =
            tokio::join!(self.use_flow_script(key, cut_to, count), self.set_nx(code_key, code_value, code_ttl));
        let existing = if bound? { None } else { Some(self.get(code_key).await?.unwrap_or_default()) };
        Ok((flow?, existing))
    }

    /// The open-flow cap's count ([`super::flow_cap`]), one pipeline without Lua (the keys
    /// share the client's hash tag, so it is legal on a Cluster): `INCR current`,
    /// `PEXPIRE current life`, `MGET others`. Answers the current count and the others, 0 for
    /// a missing counter.
    pub(super) async fn admit(&self, current: &str, others: &[String], life: Duration) -> RedisResult<(i64, Vec<i64>)> {
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(current).cmd("PEXPIRE").arg(current).arg(millis(life)).ignore();
        pipe.cmd("MGET").arg(others);
        let (count, counts): (i64, Vec<Option<i64>>) = self.query_pipe(&pipe).await?;
        Ok((count, counts.into_iter().map(Option::unwrap_or_default).collect()))
    }

    /// Takes one count back from an open-flow counter: `DECR key` and `PEXPIRE key life`, so
    /// that a counter Redis lost meanwhile (evicted) is not recreated without a TTL. Its
    /// readers floor a count below 0 ([`super::flow_cap`]).
    pub(super) async fn release(&self, key: &str, life: Duration) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("DECR").arg(key).ignore().cmd("PEXPIRE").arg(key).arg(millis(life)).ignore();
        self.query_pipe(&pipe).await
    }

    /// `PING`, once more at once after a connection-class failure: the failure started a new
    /// connection attempt (the connection manager does, and Sentinel looks the master up again),
    /// which the second `PING` waits for, so a Redis that is back answers this very ping.
    pub(super) async fn ping(&self) -> RedisResult<()> {
        match self.query(&redis::cmd("PING")).await {
            Err(e) if e.is_io_error() || e.is_unrecoverable_error() => self.query(&redis::cmd("PING")).await,
            answered => answered,
        }
    }
}

/// The relay's step on the flow at `key`, as three commands for a pipeline: `HGET key f`,
/// `HINCRBY key n 1` and `PEXPIRE key cut_to LT` (Redis >= 7.0). Each command is sized up front.
fn add_flow_step(pipe: &mut redis::Pipeline, key: &str, cut_to: Duration) {
    let command = |args: usize, extra: usize| redis::Cmd::with_capacity(args, key.len() + extra);
    let mut hget = command(3, 8);
    hget.arg("HGET").arg(key).arg("f");
    let mut count = command(4, 16);
    count.arg("HINCRBY").arg(key).arg("n").arg(1);
    let mut cut = command(4, 32);
    cut.arg("PEXPIRE").arg(key);
    // A test stands in for Redis 6 (which refuses `.. LT` with "wrong number of arguments for
    // 'pexpire'") by leaving out the milliseconds, which draws the same refusal.
    #[cfg(test)]
    if tests::PRETEND_REDIS_6.get() {
        pipe.add_command(hget).add_command(count).add_command(cut);
        return;
    }
    cut.arg(millis(cut_to)).arg("LT");
    pipe.add_command(hget).add_command(count).add_command(cut);
}

/// Redis 6 answers `PEXPIRE key ms LT` with "wrong number of arguments for 'pexpire'".
fn refuses_expire_options(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.to_string().to_ascii_lowercase().contains("pexpire")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;

    thread_local! {
        /// The relay's pipeline is refused as Redis 6 refuses it (each `#[tokio::test]` runs
        /// on its own thread).
        pub(super) static PRETEND_REDIS_6: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A private redis-server (the integration tests cover the rest of the backend).
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn backend() -> (Server, RedisBackend) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let binary = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        // Owned by the guard at once: killed and waited for however the test ends.
        let server = Server(
            Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (see README set-up)"),
        );
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if let Ok(backend) = RedisBackend::connect(std::slice::from_ref(&url), &RedisTls::default()).await {
                return (server, backend);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server on {port} did not come up");
    }

    #[tokio::test]
    async fn the_pipeline_and_the_lua_script_use_a_flow_alike() {
        let (_server, backend) = backend().await;
        let grace = Duration::from_secs(60);
        for pipelined in [true, false] {
            backend.expire_lt.store(pipelined, Ordering::Relaxed);
            let key = format!("flow:{pipelined}");
            assert!(backend.create_flow(&key, b"sealed", Duration::from_secs(600)).await.expect("create"));
            assert!(!backend.create_flow(&key, b"other", Duration::from_secs(600)).await.expect("taken"));
            let first = backend.use_flow(&key, grace).await.expect("first");
            assert_eq!(first, Some((b"sealed".to_vec(), true, 1)), "pipelined: {pipelined}");
            let left: i64 = backend.query(redis::cmd("PTTL").arg(&key)).await.expect("pttl");
            assert!((59_000..=60_000).contains(&left), "cut to the window, pipelined: {pipelined}: {left}");
            let again = backend.use_flow(&key, grace).await.expect("again");
            assert_eq!(again, Some((b"sealed".to_vec(), false, 2)), "a repeat, pipelined: {pipelined}");
            assert_eq!(backend.use_flow("flow:none", grace).await.expect("missing"), None);
            let left: bool = backend.query(redis::cmd("EXISTS").arg("flow:none")).await.expect("exists");
            assert!(!left, "an unknown flow id leaves no key behind, pipelined: {pipelined}");
        }
        assert!(!backend.expire_lt.load(Ordering::Relaxed), "the test turned the pipeline off itself");
    }

    #[tokio::test]
    async fn the_pipeline_and_the_redis_6_steps_bind_a_code_alike() {
        let (_server, backend) = backend().await;
        let (grace, life) = (Duration::from_secs(60), Duration::from_secs(660));
        for pipelined in [true, false] {
            backend.expire_lt.store(pipelined, Ordering::Relaxed);
            let (key, code) = (format!("flow:{pipelined}"), format!("code:{pipelined}"));
            backend.create_flow(&key, b"sealed", Duration::from_secs(600)).await.expect("create");
            let first = backend.use_flow_binding(&key, grace, &code, b"bound", life).await.expect("first");
            assert_eq!(first, (Some((b"sealed".to_vec(), true, 1)), None), "bound now, pipelined: {pipelined}");
            let left: i64 = backend.query(redis::cmd("PTTL").arg(&code)).await.expect("pttl");
            assert!((659_000..=660_000).contains(&left), "bound for the code's life, pipelined: {pipelined}: {left}");
            let again = backend.use_flow_binding(&key, grace, &code, b"other", life).await.expect("again");
            let found = (Some((b"sealed".to_vec(), false, 2)), Some(b"bound".to_vec()));
            assert_eq!(again, found, "the first binding stays, pipelined: {pipelined}");
            let unbound = format!("code:none:{pipelined}");
            let missing = backend.use_flow_binding("flow:none", grace, &unbound, b"b", life).await.expect("none");
            assert_eq!(missing, (None, None), "pipelined: {pipelined}");
            let left: bool = backend.query(redis::cmd("EXISTS").arg("flow:none")).await.expect("exists");
            assert!(!left, "an unknown flow id leaves no counter behind, pipelined: {pipelined}");
        }
    }

    #[tokio::test]
    async fn a_pipeline_refused_by_redis_6_counts_its_callback_once() {
        // Arrange: a Redis that refuses `PEXPIRE .. LT` (the pipeline's HGET and HINCRBY run all
        // the same: a pipeline is not a transaction).
        let (_server, backend) = backend().await;
        let grace = Duration::from_secs(60);
        PRETEND_REDIS_6.set(true);
        backend.create_flow("flow:6", b"sealed", Duration::from_secs(600)).await.expect("create");
        backend.create_flow("flow:6b", b"sealed", Duration::from_secs(600)).await.expect("create");
        // Act: the first callback meets the refusal and falls back to the script.
        let first = backend.use_flow("flow:6", grace).await.expect("first");
        backend.expire_lt.store(true, Ordering::Relaxed);
        let bound = backend.use_flow_binding("flow:6b", grace, "code:6", b"bound", grace).await.expect("bind");
        backend.expire_lt.store(true, Ordering::Relaxed);
        let unknown = backend.use_flow("flow:none", grace).await.expect("unknown");
        PRETEND_REDIS_6.set(false);
        // Assert
        assert_eq!(first, Some((b"sealed".to_vec(), true, 1)), "one callback, counted once");
        assert_eq!(bound.0, Some((b"sealed".to_vec(), true, 1)), "one callback with a code, counted once");
        assert_eq!(unknown, None);
        let left: bool = backend.query(redis::cmd("EXISTS").arg("flow:none")).await.expect("exists");
        assert!(!left, "the refused pipeline's counter for an unknown id is not left behind (it has no TTL)");
        let second = backend.use_flow("flow:6", grace).await.expect("second");
        assert_eq!(second, Some((b"sealed".to_vec(), false, 2)));
    }

    #[tokio::test]
    async fn a_taken_flow_is_gone_and_keeps_its_count_and_life() {
        let (_server, backend) = backend().await;
        backend.create_flow("flow:t", b"sealed", Duration::from_secs(600)).await.expect("create");
        assert_eq!(backend.read_flow("flow:t").await.expect("read"), Some(b"sealed".to_vec()));
        let (value, uses, left) = backend.take_flow("flow:t").await.expect("take").expect("found");
        assert_eq!((value.as_slice(), uses), (&b"sealed"[..], 0));
        assert!((599_000..=600_000).contains(&left.as_millis()), "{left:?}");
        assert_eq!(backend.take_flow("flow:t").await.expect("again"), None, "taken once");
        assert_eq!(backend.read_flow("flow:t").await.expect("read"), None);
    }

    #[tokio::test]
    async fn simultaneous_first_uses_cut_once_and_count_each() {
        let (_server, backend) = backend().await;
        backend.create_flow("flow:race", b"sealed", Duration::from_secs(600)).await.expect("create");
        let uses = futures::future::join_all((0..16).map(|_| backend.use_flow("flow:race", Duration::from_secs(60))));
        let uses: Vec<_> = uses.await.into_iter().map(|r| r.expect("use").expect("found")).collect();
        assert_eq!(uses.iter().filter(|(_, cut, _)| *cut).count(), 1);
        let mut counts: Vec<u64> = uses.iter().map(|(_, _, n)| *n).collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=16).collect::<Vec<u64>>(), "each callback gets its own count");
    }

    #[tokio::test]
    async fn set_if_eq_writes_only_over_what_was_read() {
        let (_server, backend) = backend().await;
        let ttl = Duration::from_secs(60);
        backend.set("code", b"relayed", ttl).await.expect("set");
        assert!(backend.set_if_eq("code", b"relayed", b"pending", ttl).await.expect("swap"));
        assert!(!backend.set_if_eq("code", b"relayed", b"pending-2", ttl).await.expect("lost"));
        assert_eq!(backend.get("code").await.expect("get"), Some(b"pending".to_vec()));
        assert!(!backend.set_if_eq("gone", b"relayed", b"pending", ttl).await.expect("absent"), "never creates");
        assert_eq!(backend.get("gone").await.expect("get"), None);
    }

    #[tokio::test]
    async fn set_if_eq_writes_only_over_the_expected_value() {
        let (_server, backend) = backend().await;
        let ttl = Duration::from_secs(60);
        backend.set("tok:a", b"read", ttl).await.expect("set");
        assert!(!backend.set_if_eq("tok:a", b"other", b"lost", ttl).await.expect("cas"), "another value");
        assert!(backend.set_if_eq("tok:a", b"read", b"won", ttl).await.expect("cas"));
        assert_eq!(backend.get("tok:a").await.expect("get"), Some(b"won".to_vec()));
        let left: i64 = backend.query(redis::cmd("PTTL").arg("tok:a")).await.expect("pttl");
        assert!((59_000..=60_000).contains(&left), "the new TTL: {left}");
        assert!(!backend.set_if_eq("tok:a", b"read", b"late", ttl).await.expect("cas"), "already replaced");
        backend.del("tok:a").await.expect("del");
        assert!(!backend.set_if_eq("tok:a", b"won", b"late", ttl).await.expect("cas"), "deleted");
        assert_eq!(backend.get("tok:a").await.expect("get"), None, "a deleted key stays deleted");
    }

    #[tokio::test]
    async fn a_refused_pexpire_in_a_pipeline_is_recognised() {
        // Arrange: redis-rs 1.x reports a pipeline's failures together; PEXPIRE without its
        // milliseconds draws the same "wrong number of arguments" as Redis 6 gives `.. LT`.
        let (_server, backend) = backend().await;
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg("flow:x").arg("f").cmd("PEXPIRE").arg("flow:x");
        // Act
        let refused = backend.query_pipe::<(Option<Vec<u8>>, i64)>(&pipe).await.expect_err("refused");
        // Assert
        assert!(refuses_expire_options(&refused), "{refused}");
        assert!(!stale_master(&refused), "not a failover: {refused}");
    }

    #[test]
    fn redis_6s_refusal_of_pexpire_lt_is_recognised() {
        let refusal = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "An error was signalled by the server",
            "wrong number of arguments for 'pexpire' command".to_owned(),
        ));
        assert!(refuses_expire_options(&refusal));
        let failover = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "READONLY",
            "You can't write against a read only replica.".to_owned(),
        ));
        assert!(!refuses_expire_options(&failover));
    }
}
