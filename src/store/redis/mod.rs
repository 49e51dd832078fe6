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
//!
//! This file holds the connections; `ops.rs` the primitives on them (commands, pipelines and
//! the Lua scripts).

mod ops;
#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo as _, Pipeline, RedisError, RedisResult, ScriptInvocation, ServerErrorKind, TlsCertificates,
    TlsMode,
};

use self::ops::Scripts;
use crate::secrets::RedisClientKey;

/// How long one Redis command may take before the store counts as unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection attempts at start-up (single node), this far apart.
const STARTUP_ATTEMPTS: u32 = 4;
const STARTUP_RETRY: Duration = Duration::from_secs(1);

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
        // Boxed: the Sentinel lookup's future is ~3.3 KB, and inline it made every store call's
        // future (each boxed once per call, whichever topology) that big (issue 19).
        let conn = Box::pin(sentinels.get_async_connection_with_config(&self.config)).await?;
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
pub(crate) struct RedisBackend {
    conn: Conn,
    scripts: Scripts,
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
    pub(crate) async fn connect(urls: &[String], tls: &RedisTls) -> RedisResult<Self> {
        Ok(Self::with(Self::connect_direct(urls, tls).await?))
    }

    /// Connects to the master that the Sentinels at `urls` name `master`, following failovers.
    /// With `rediss://` Sentinel URLs the master is reached over TLS too, both with `tls`.
    pub(crate) async fn connect_sentinel(urls: &[String], master: &str, tls: &RedisTls) -> RedisResult<Self> {
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
        Self { conn, scripts: Scripts::new(), expire_lt: Arc::new(AtomicBool::new(true)) }
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
