//! The Redis backend: single node, Sentinel-fronted or Cluster. Every operation touches one
//! key, so no operation ever spans hash slots. Connections reconnect by themselves
//! (`ConnectionManager`, `ClusterConnection`); each command has a response timeout so a dead
//! Redis answers `STORE_UNAVAILABLE` quickly instead of hanging a request.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation};

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
        };
        write!(f, "RedisBackend({kind})")
    }
}

impl RedisBackend {
    /// Connects to one node (`redis://`, `rediss://`) or, given several URLs, to a Cluster.
    pub async fn connect(urls: &[String]) -> RedisResult<Self> {
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
        Ok(Self { conn, get_and_cut: Script::new(GET_AND_CUT_TTL), del_if_eq: Script::new(DEL_IF_EQ) })
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    async fn invoke<T: FromRedisValue>(&self, script: ScriptInvocation<'_>) -> RedisResult<T> {
        match &self.conn {
            Conn::Single(c) => script.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => script.invoke_async(&mut c.clone()).await,
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
