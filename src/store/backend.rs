//! The one interface both backends implement ([`Backend`]): a few one-key primitives with the
//! same semantics in memory and in Redis, so the two cannot drift. The store runs every one of
//! them through one wrapper (`Store::call`, in `call.rs`), which adds the circuit breaker, the
//! timeout, the span and the metrics; a backend only answers.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::RedisResult;

use super::FlowRead;
use super::events::{EventId, RawEvent};

/// What [`Backend::get_two`] answers: each key's value, if it has one.
pub(crate) type TwoValues = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A backend's answer to one primitive.
pub(crate) enum Reply<'a, T> {
    /// Answered in place (the memory backend): nothing to wait for, nothing that can fail to
    /// reach, never behind the breaker.
    Now(T),
    /// A call to Redis, still to be awaited. Boxed and type-erased: the Redis futures are deep,
    /// and every caller would carry their layout.
    Remote(BoxFuture<'a, RedisResult<T>>),
}

/// The primitives, each on one key (so Cluster never sees a step span hash slots; the relay's
/// two keys go out as two commands). A value is always the sealed bytes [`super::Store`] made.
pub(crate) trait Backend: Send + Sync {
    /// `GET key`.
    fn get<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Vec<u8>>>;
    /// `MGET first second`: two reads of one request in one command (on a Cluster, where the
    /// keys may sit in two slots, the client splits it by slot). Nothing orders them against
    /// each other's writes, as with two `GET`s.
    fn get_two<'a>(&'a self, first: &'a str, second: &'a str) -> Reply<'a, TwoValues>;
    /// `SET key value PX ttl`.
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, ()>;
    /// `SET key value NX PX ttl`: false when the key exists.
    fn set_nx<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, bool>;
    /// `DEL key`.
    fn del<'a>(&'a self, key: &'a str) -> Reply<'a, ()>;
    /// Deletes the key only while it holds exactly `value` (compare-and-delete).
    fn del_if_eq<'a>(&'a self, key: &'a str, value: &'a [u8]) -> Reply<'a, bool>;
    /// Writes `value` for `ttl` only while the key holds exactly `expected` (compare-and-set).
    fn set_if_eq<'a>(&'a self, key: &'a str, expected: &'a [u8], value: &'a [u8], ttl: Duration) -> Reply<'a, bool>;
    /// `HSET key field value` and `PEXPIRE key ttl` as one step.
    fn hset_px<'a>(&'a self, key: &'a str, field: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, ()>;
    /// `HGETALL key`.
    fn hgetall<'a>(&'a self, key: &'a str) -> Reply<'a, Vec<(String, Vec<u8>)>>;
    /// `HDEL key field`.
    fn hdel<'a>(&'a self, key: &'a str, field: &'a str) -> Reply<'a, ()>;
    /// The open-flow cap's count ([`super::flow_cap`]): `INCRBY current by`, living `life`
    /// from now, and the counts at `others` (0 for a missing counter), in one step.
    fn admit<'a>(
        &'a self,
        current: &'a str,
        by: i64,
        others: &'a [String],
        life: Duration,
    ) -> Reply<'a, (i64, Vec<i64>)>;
    /// Takes `by` counts back from an open-flow counter (`DECRBY`, its life renewed to `life`).
    fn release<'a>(&'a self, key: &'a str, by: i64, life: Duration) -> Reply<'a, ()>;
    /// A new flow living `ttl`; false when the key exists.
    fn create_flow<'a>(&'a self, key: &'a str, sealed: &'a [u8], ttl: Duration) -> Reply<'a, bool>;
    /// The relay's step on a flow: the sealed flow, whether this call cut its life to `cut_to`,
    /// and its callbacks with this one.
    fn use_flow<'a>(&'a self, key: &'a str, cut_to: Duration) -> Reply<'a, Option<FlowRead>>;
    /// [`Backend::use_flow`] and, in the same round trip, `SET code_key NX GET PX`: `None` when
    /// the code was bound now, else the record already there.
    fn use_flow_binding<'a>(
        &'a self,
        key: &'a str,
        cut_to: Duration,
        code_key: &'a str,
        code_value: &'a [u8],
        code_ttl: Duration,
    ) -> Reply<'a, (Option<FlowRead>, Option<Vec<u8>>)>;
    /// Takes an unused flow out: the sealed flow, its callbacks so far and its remaining life
    /// (zero, and the flow left as it is, when it has relayed a callback).
    fn take_flow<'a>(&'a self, key: &'a str) -> Reply<'a, Option<(Vec<u8>, u64, Duration)>>;
    /// The sealed flow, nothing counted or cut.
    fn read_flow<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Vec<u8>>>;
    /// Appends to a client's feed of user events (a stream) in one step: `XADD key MAXLEN
    /// max_len * e sealed p <the last entry's id>`, then the entries more than `keep_for` older
    /// than the new one trimmed (`XTRIM MINID`) and the key's life set to `keep_for`. Answers
    /// the new entry's id.
    fn add_event<'a>(&'a self, key: &'a str, sealed: &'a [u8], max_len: u64, keep_for: Duration) -> Reply<'a, String>;
    /// Whether the feed exists, and up to `count` of its entries from `from` on (`None`: from
    /// the oldest), oldest first, its life renewed to `keep_for` (a feed read lives on), in one
    /// step (`EXISTS`, `XRANGE`, `PEXPIRE`).
    fn read_events<'a>(
        &'a self,
        key: &'a str,
        from: Option<EventId>,
        count: usize,
        keep_for: Duration,
    ) -> Reply<'a, (bool, Vec<RawEvent>)>;
}

/// Which primitive a call runs: its name in the metrics and logs (`operation`) and its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    GetTwo,
    Set,
    SetNx,
    Del,
    DelIfEq,
    SetIfEq,
    HsetPx,
    Hgetall,
    Hdel,
    Admit,
    Release,
    CreateFlow,
    UseFlow,
    UseFlowBinding,
    TakeFlow,
    ReadFlow,
    AddEvent,
    ReadEvents,
}

impl Op {
    /// Every primitive (for the test that holds names and spans together).
    #[cfg(test)]
    pub(crate) const ALL: [Op; 19] = [
        Op::Get,
        Op::GetTwo,
        Op::Set,
        Op::SetNx,
        Op::Del,
        Op::DelIfEq,
        Op::SetIfEq,
        Op::HsetPx,
        Op::Hgetall,
        Op::Hdel,
        Op::Admit,
        Op::Release,
        Op::CreateFlow,
        Op::UseFlow,
        Op::UseFlowBinding,
        Op::TakeFlow,
        Op::ReadFlow,
        Op::AddEvent,
        Op::ReadEvents,
    ];

    /// The backend method's name: the `operation` label of `wxauth_store_*` and of the logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetTwo => "get_two",
            Op::Set => "set",
            Op::SetNx => "set_nx",
            Op::Del => "del",
            Op::DelIfEq => "del_if_eq",
            Op::SetIfEq => "set_if_eq",
            Op::HsetPx => "hset_px",
            Op::Hgetall => "hgetall",
            Op::Hdel => "hdel",
            Op::Admit => "admit",
            Op::Release => "release",
            Op::CreateFlow => "create_flow",
            Op::UseFlow => "use_flow",
            Op::UseFlowBinding => "use_flow_binding",
            Op::TakeFlow => "take_flow",
            Op::ReadFlow => "read_flow",
            Op::AddEvent => "add_event",
            Op::ReadEvents => "read_events",
        }
    }

    /// The call's span, `store.{name}`, for traces: a static name and no fields; made only while
    /// spans are exported ([`super::Store::call`]).
    pub(crate) fn span(self) -> tracing::Span {
        use tracing::info_span;
        match self {
            Op::Get => info_span!("store.get"),
            Op::GetTwo => info_span!("store.get_two"),
            Op::Set => info_span!("store.set"),
            Op::SetNx => info_span!("store.set_nx"),
            Op::Del => info_span!("store.del"),
            Op::DelIfEq => info_span!("store.del_if_eq"),
            Op::SetIfEq => info_span!("store.set_if_eq"),
            Op::HsetPx => info_span!("store.hset_px"),
            Op::Hgetall => info_span!("store.hgetall"),
            Op::Hdel => info_span!("store.hdel"),
            Op::Admit => info_span!("store.admit"),
            Op::Release => info_span!("store.release"),
            Op::CreateFlow => info_span!("store.create_flow"),
            Op::UseFlow => info_span!("store.use_flow"),
            Op::UseFlowBinding => info_span!("store.use_flow_binding"),
            Op::TakeFlow => info_span!("store.take_flow"),
            Op::ReadFlow => info_span!("store.read_flow"),
            Op::AddEvent => info_span!("store.add_event"),
            Op::ReadEvents => info_span!("store.read_events"),
        }
    }
}
