//! The store's primitives on Redis ([`Backend`] for [`RedisBackend`]): plain commands,
//! `MULTI` pipelines, the relay's pipelined step (Redis >= 7.0) and the Lua scripts that stand
//! in for it on older servers or make a compare-and-set atomic on one key.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult, Script, ServerErrorKind};

use super::{Conn, RedisBackend};
use crate::clock::millis;
use crate::store::FlowRead;
use crate::store::backend::{Backend, Reply, TwoValues};
use crate::store::events::{EventId, RawEvent};

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

/// Appends to a client's feed of user events (a stream) in one step: the new entry carries the
/// sealed event (ARGV[1]) and the id of the entry before it (`p`, empty for a first), so a
/// reader can tell a trimmed gap from nothing new; exact `MAXLEN` ARGV[2] (events are rare: the
/// exact trim costs little and keeps the memory backend's twin exact); then the entries more
/// than ARGV[3] ms older than the new one go (`XTRIM MINID`, Redis >= 6.2; the time is the new
/// id's, Redis's own clock) and the key lives ARGV[3] ms. Returns the new id.
const ADD_EVENT: &str = r"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local previous = ''
if last[1] then previous = last[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'e', ARGV[1], 'p', previous)
local cutoff = tonumber(string.match(id, '^(%d+)-')) - tonumber(ARGV[3])
if cutoff > 0 then redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', cutoff)) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return id
";

/// The scripts, each loaded once per server (`EVALSHA`, `EVAL` when the server lacks it).
#[derive(Clone)]
pub(super) struct Scripts {
    use_flow: Script,
    take_flow: Script,
    del_if_eq: Script,
    set_if_eq: Script,
    add_event: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            use_flow: Script::new(USE_FLOW),
            take_flow: Script::new(TAKE_FLOW),
            del_if_eq: Script::new(DEL_IF_EQ),
            set_if_eq: Script::new(SET_IF_EQ),
            add_event: Script::new(ADD_EVENT),
        }
    }
}

impl RedisBackend {
    pub(super) async fn get(&self, key: &str) -> RedisResult<Option<Vec<u8>>> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// `MGET first second`.
    pub(super) async fn get_two(&self, first: &str, second: &str) -> RedisResult<TwoValues> {
        self.query(redis::cmd("MGET").arg(first).arg(second)).await
    }

    pub(super) async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> RedisResult<()> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(millis(ttl).max(1))).await
    }

    pub(super) async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> RedisResult<bool> {
        let cmd = redis::cmd("SET").arg(key).arg(value).arg("NX").arg("PX").arg(millis(ttl).max(1)).clone();
        let reply: Option<String> = self.query(&cmd).await?;
        Ok(reply.is_some())
    }

    pub(super) async fn del(&self, key: &str) -> RedisResult<()> {
        self.query(redis::cmd("DEL").arg(key)).await
    }

    pub(super) async fn del_if_eq(&self, key: &str, value: &[u8]) -> RedisResult<bool> {
        let mut inv = self.scripts.del_if_eq.key(key);
        inv.arg(value);
        let deleted: i64 = self.invoke(inv).await?;
        Ok(deleted == 1)
    }

    pub(super) async fn set_if_eq(&self, key: &str, expected: &[u8], value: &[u8], ttl: Duration) -> RedisResult<bool> {
        let mut inv = self.scripts.set_if_eq.key(key);
        inv.arg(expected).arg(value).arg(millis(ttl).max(1));
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
            .arg(millis(ttl).max(1))
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
        pipe.atomic()
            .cmd("HSETNX")
            .arg(key)
            .arg("f")
            .arg(sealed)
            .cmd("PEXPIRE")
            .arg(key)
            .arg(millis(ttl).max(1))
            .ignore();
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
        let mut inv = self.scripts.use_flow.key(key);
        inv.arg(millis(cut_to).max(1)).arg(u8::from(count));
        let reply: Option<(Vec<u8>, i64, u64)> = self.invoke(inv).await?;
        Ok(reply.map(|(v, cut, uses)| (v, cut == 1, uses)))
    }

    /// Takes the flow at `key` out ([`TAKE_FLOW`]): the sealed flow, its callbacks so far and
    /// its remaining life.
    pub(super) async fn take_flow(&self, key: &str) -> RedisResult<Option<(Vec<u8>, u64, Duration)>> {
        let reply: Option<(Vec<u8>, u64, i64)> = self.invoke(self.scripts.take_flow.key(key)).await?;
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
            cmd.arg("SET").arg(code_key).arg(code_value).arg("NX").arg("GET").arg("PX").arg(millis(code_ttl).max(1));
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

    /// The open-flow cap's count ([`crate::store::flow_cap`]), one pipeline without Lua (the
    /// keys share the client's hash tag, so it is legal on a Cluster): `INCR current`,
    /// `PEXPIRE current life`, `MGET others`. Answers the current count and the others, 0 for
    /// a missing counter.
    pub(super) async fn admit(
        &self,
        current: &str,
        by: i64,
        others: &[String],
        life: Duration,
    ) -> RedisResult<(i64, Vec<i64>)> {
        let mut pipe = redis::pipe();
        pipe.cmd("INCRBY").arg(current).arg(by).cmd("PEXPIRE").arg(current).arg(millis(life).max(1)).ignore();
        pipe.cmd("MGET").arg(others);
        let (count, counts): (i64, Vec<Option<i64>>) = self.query_pipe(&pipe).await?;
        Ok((count, counts.into_iter().map(Option::unwrap_or_default).collect()))
    }

    /// Takes `by` counts back from an open-flow counter: `DECRBY key by` and `PEXPIRE key life`, so
    /// that a counter Redis lost meanwhile (evicted) is not recreated without a TTL. Its
    /// readers floor a count below 0 ([`crate::store::flow_cap`]).
    pub(super) async fn release(&self, key: &str, by: i64, life: Duration) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("DECRBY").arg(key).arg(by).ignore().cmd("PEXPIRE").arg(key).arg(millis(life).max(1)).ignore();
        self.query_pipe(&pipe).await
    }
}

impl RedisBackend {
    /// [`ADD_EVENT`]: appends to a feed; the new entry's id.
    pub(super) async fn add_event(
        &self,
        key: &str,
        sealed: &[u8],
        max_len: u64,
        keep_for: Duration,
    ) -> RedisResult<String> {
        let mut inv = self.scripts.add_event.key(key);
        inv.arg(sealed).arg(max_len).arg(millis(keep_for).max(1));
        self.invoke(inv).await
    }

    /// `EXISTS key`, `XRANGE key from + COUNT count` and `PEXPIRE key keep_for` in one
    /// `MULTI`: an entry is `[id, [field, value, ...]]`, its fields `e` (the sealed event) and
    /// `p` (the previous id).
    pub(super) async fn read_events(
        &self,
        key: &str,
        from: Option<EventId>,
        count: usize,
        keep_for: Duration,
    ) -> RedisResult<(bool, Vec<RawEvent>)> {
        let start = from.map_or_else(|| "-".to_owned(), |id| id.to_string());
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("EXISTS").arg(key).cmd("XRANGE").arg(key).arg(start).arg("+").arg("COUNT").arg(count.max(1));
        pipe.cmd("PEXPIRE").arg(key).arg(millis(keep_for).max(1)).ignore();
        let (exists, entries): (bool, Vec<StreamEntry>) = self.query_pipe(&pipe).await?;
        let entries = entries.into_iter().map(|(id, fields)| {
            let (mut sealed, mut previous) = (Vec::new(), String::new());
            for pair in fields.chunks_exact(2) {
                match pair[0].as_slice() {
                    b"e" => sealed.clone_from(&pair[1]),
                    b"p" => previous = String::from_utf8_lossy(&pair[1]).into_owned(),
                    _ => {}
                }
            }
            (id, sealed, previous)
        });
        Ok((exists, entries.collect()))
    }
}

/// A stream entry as `XRANGE` answers it: the id, and the fields and values in turn.
type StreamEntry = (String, Vec<Vec<u8>>);

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
    if super::tests::PRETEND_REDIS_6.get() {
        pipe.add_command(hget).add_command(count).add_command(cut);
        return;
    }
    cut.arg(millis(cut_to).max(1)).arg("LT");
    pipe.add_command(hget).add_command(count).add_command(cut);
}

/// Redis 6 answers `PEXPIRE key ms LT` with "wrong number of arguments for 'pexpire'".
pub(super) fn refuses_expire_options(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.to_string().to_ascii_lowercase().contains("pexpire")
}

/// The primitives as [`Backend`] serves them: each a boxed Redis call (the store's wrapper
/// awaits it behind the breaker and the timeout).
impl Backend for RedisBackend {
    fn get<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Vec<u8>>> {
        Reply::Remote(Box::pin(RedisBackend::get(self, key)))
    }
    fn get_two<'a>(&'a self, first: &'a str, second: &'a str) -> Reply<'a, TwoValues> {
        Reply::Remote(Box::pin(RedisBackend::get_two(self, first, second)))
    }
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, ()> {
        Reply::Remote(Box::pin(RedisBackend::set(self, key, value, ttl)))
    }
    fn set_nx<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, bool> {
        Reply::Remote(Box::pin(RedisBackend::set_nx(self, key, value, ttl)))
    }
    fn del<'a>(&'a self, key: &'a str) -> Reply<'a, ()> {
        Reply::Remote(Box::pin(RedisBackend::del(self, key)))
    }
    fn del_if_eq<'a>(&'a self, key: &'a str, value: &'a [u8]) -> Reply<'a, bool> {
        Reply::Remote(Box::pin(RedisBackend::del_if_eq(self, key, value)))
    }
    fn set_if_eq<'a>(&'a self, key: &'a str, expected: &'a [u8], value: &'a [u8], ttl: Duration) -> Reply<'a, bool> {
        Reply::Remote(Box::pin(RedisBackend::set_if_eq(self, key, expected, value, ttl)))
    }
    fn hset_px<'a>(&'a self, key: &'a str, field: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, ()> {
        Reply::Remote(Box::pin(RedisBackend::hset_px(self, key, field, value, ttl)))
    }
    fn hgetall<'a>(&'a self, key: &'a str) -> Reply<'a, Vec<(String, Vec<u8>)>> {
        Reply::Remote(Box::pin(RedisBackend::hgetall(self, key)))
    }
    fn hdel<'a>(&'a self, key: &'a str, field: &'a str) -> Reply<'a, ()> {
        Reply::Remote(Box::pin(RedisBackend::hdel(self, key, field)))
    }
    fn admit<'a>(
        &'a self,
        current: &'a str,
        by: i64,
        others: &'a [String],
        life: Duration,
    ) -> Reply<'a, (i64, Vec<i64>)> {
        Reply::Remote(Box::pin(RedisBackend::admit(self, current, by, others, life)))
    }
    fn release<'a>(&'a self, key: &'a str, by: i64, life: Duration) -> Reply<'a, ()> {
        Reply::Remote(Box::pin(RedisBackend::release(self, key, by, life)))
    }
    fn create_flow<'a>(&'a self, key: &'a str, sealed: &'a [u8], ttl: Duration) -> Reply<'a, bool> {
        Reply::Remote(Box::pin(RedisBackend::create_flow(self, key, sealed, ttl)))
    }
    fn use_flow<'a>(&'a self, key: &'a str, cut_to: Duration) -> Reply<'a, Option<FlowRead>> {
        Reply::Remote(Box::pin(RedisBackend::use_flow(self, key, cut_to)))
    }
    fn use_flow_binding<'a>(
        &'a self,
        key: &'a str,
        cut_to: Duration,
        code_key: &'a str,
        code_value: &'a [u8],
        code_ttl: Duration,
    ) -> Reply<'a, (Option<FlowRead>, Option<Vec<u8>>)> {
        Reply::Remote(Box::pin(RedisBackend::use_flow_binding(self, key, cut_to, code_key, code_value, code_ttl)))
    }
    fn take_flow<'a>(&'a self, key: &'a str) -> Reply<'a, Option<(Vec<u8>, u64, Duration)>> {
        Reply::Remote(Box::pin(RedisBackend::take_flow(self, key)))
    }
    fn read_flow<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Vec<u8>>> {
        Reply::Remote(Box::pin(RedisBackend::read_flow(self, key)))
    }
    fn add_event<'a>(&'a self, key: &'a str, sealed: &'a [u8], max_len: u64, keep_for: Duration) -> Reply<'a, String> {
        Reply::Remote(Box::pin(RedisBackend::add_event(self, key, sealed, max_len, keep_for)))
    }
    fn read_events<'a>(
        &'a self,
        key: &'a str,
        from: Option<EventId>,
        count: usize,
        keep_for: Duration,
    ) -> Reply<'a, (bool, Vec<RawEvent>)> {
        Reply::Remote(Box::pin(RedisBackend::read_events(self, key, from, count, keep_for)))
    }
}
