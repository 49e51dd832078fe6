//! The Redis backend: single node, Sentinel-fronted or Cluster. Every operation touches one
//! key, so no operation ever spans hash slots. Connections reconnect by themselves
//! (`ConnectionManager`, `ClusterConnection`, and for Sentinel a connection to the current
//! master that is dropped and looked up again after a connection error or a `READONLY` reply,
//! which is what a failover looks like from a client); each command has a response timeout so
//! a dead Redis answers `STORE_UNAVAILABLE` quickly instead of hanging a request.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisError, RedisResult, Script, ScriptInvocation};

/// How long one Redis command may take before the store counts as unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a (re)connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Returns the value and its remaining TTL, and cuts the TTL to ARGV[1] ms when it is longer:
/// the relay's "first use starts the grace window", atomic on one key.
const GET_AND_CUT_TTL: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {v, ttl}
";

/// Deletes the key only when it still holds ARGV[1]: releasing a lock we own, never another's.
const DEL_IF_EQ: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

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
        if let Err(e) = &result {
            if stale_master(e) {
                tracing::info!(error = %e, "Redis master connection lost; asking the Sentinels again");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        result
    }
}

fn stale_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::ReadOnly
}

/// A connection to Redis (single node or Cluster) and the two scripts the store needs.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    get_and_cut: Script,
    del_if_eq: Script,
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
    /// Connects to one node (`redis://`, `rediss://`) or, given several URLs, to a Cluster.
    pub async fn connect(urls: &[String]) -> RedisResult<Self> {
        Ok(Self::with(Self::connect_direct(urls).await?))
    }

    /// Connects to the master that the Sentinels at `urls` name `master`, following failovers.
    pub async fn connect_sentinel(urls: &[String], master: &str) -> RedisResult<Self> {
        let sentinels = SentinelClient::build(urls.to_vec(), master.to_owned(), None, SentinelServerType::Master)?;
        let config =
            AsyncConnectionConfig::new().set_response_timeout(RESPONSE_TIMEOUT).set_connection_timeout(CONNECT_TIMEOUT);
        let master =
            SentinelMaster { sentinels: tokio::sync::Mutex::new(sentinels), current: RwLock::new(None), config };
        master.connection().await?;
        Ok(Self::with(Conn::Sentinel(Arc::new(master))))
    }

    fn with(conn: Conn) -> Self {
        Self { conn, get_and_cut: Script::new(GET_AND_CUT_TTL), del_if_eq: Script::new(DEL_IF_EQ) }
    }

    async fn connect_direct(urls: &[String]) -> RedisResult<Conn> {
        let conn = match urls {
            [one] => {
                let client = redis::Client::open(one.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    // redis-rs passes `factor` to backon as the exponential base over a 1 s
                    // minimum delay; its default (100) means a 100 s wait on the second retry,
                    // which left a restarted Redis unused for minutes. Retry every second.
                    .set_factor(2)
                    .set_max_delay(1000)
                    .set_number_of_retries(3);
                Conn::Single(ConnectionManager::new_with_config(client, config).await?)
            }
            many => {
                let client = redis::cluster::ClusterClientBuilder::new(many.to_vec())
                    .response_timeout(RESPONSE_TIMEOUT)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build()?;
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

    pub(super) async fn get_and_cut_ttl(
        &self,
        key: &str,
        cut_to: Duration,
    ) -> RedisResult<Option<(Vec<u8>, Duration)>> {
        let mut inv = self.get_and_cut.key(key);
        inv.arg(millis(cut_to));
        let reply: Option<(Vec<u8>, i64)> = self.invoke(inv).await?;
        Ok(reply.map(|(v, ttl)| (v, Duration::from_millis(u64::try_from(ttl).unwrap_or(0)))))
    }

    pub(super) async fn ping(&self) -> RedisResult<()> {
        self.query(&redis::cmd("PING")).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
