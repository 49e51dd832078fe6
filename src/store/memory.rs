//! The in-memory backend: the embedded default for `cargo run` and unit tests. One process
//! only (its locks and records are not shared), so production with several replicas uses
//! Redis. Same semantics as the Redis backend, TTLs included; expiry runs on the service
//! [`Clock`], so tests move time instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::FlowRead;
use super::backend::{Backend, Reply, TwoValues};
use super::events::{EventId, RawEvent};
use crate::clock::{Clock, millis};

/// A point in time on the service clock, in milliseconds.
type Instant = i64;

/// Sweep expired entries every this many writes, so abandoned flows do not accumulate.
const SWEEP_EVERY: u64 = 1024;

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Vec<u8>, Instant)>,
    /// Hashes (the per-unionid account index): fields and the hash's own expiry.
    hashes: HashMap<String, (HashMap<String, Vec<u8>>, Instant)>,
    /// Streams (the clients' feeds of user events).
    streams: HashMap<String, Stream>,
    writes: u64,
}

/// A stream as Redis keeps one: its entries (id, sealed event, the previous entry's id), the
/// last id it gave (kept when entries are trimmed, as Redis's last-generated-id) and its expiry.
struct Stream {
    entries: VecDeque<(EventId, Vec<u8>, String)>,
    last: EventId,
    expiry: Instant,
}

/// A map of byte values with per-key expiry behind one short-held mutex.
#[derive(Default)]
pub(crate) struct MemoryBackend {
    inner: Mutex<Inner>,
    clock: Clock,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryBackend")
    }
}

impl Inner {
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut (Vec<u8>, Instant)> {
        if self.entries.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn insert(&mut self, key: &str, value: &[u8], ttl: Duration, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.entries.retain(|_, (_, exp)| *exp > now);
        }
        self.entries.insert(key.to_owned(), (value.to_vec(), now.saturating_add(millis(ttl))));
    }
}

/// An open-flow counter's value (0 if it does not parse, which nothing writes).
fn counter(value: &[u8]) -> i64 {
    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl MemoryBackend {
    /// An empty store whose entries expire by `clock`.
    pub(crate) fn new(clock: Clock) -> Self {
        Self { inner: Mutex::default(), clock }
    }

    fn now(&self) -> Instant {
        self.clock.now_ms()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-written (each operation
        // is one map call), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().live(key, self.now()).map(|(v, _)| v.clone())
    }

    pub(super) fn set(&self, key: &str, value: &[u8], ttl: Duration) {
        self.lock().insert(key, value, ttl, self.now());
    }

    pub(super) fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> bool {
        let now = self.now();
        let mut inner = self.lock();
        if inner.live(key, now).is_some() {
            return false;
        }
        inner.insert(key, value, ttl, now);
        true
    }

    pub(super) fn del(&self, key: &str) {
        self.lock().entries.remove(key);
    }

    pub(super) fn del_if_eq(&self, key: &str, value: &[u8]) -> bool {
        let mut inner = self.lock();
        let matches = inner.live(key, self.now()).is_some_and(|(v, _)| v == value);
        if matches {
            inner.entries.remove(key);
        }
        matches
    }

    /// Writes `value` for `ttl` only when the key holds exactly `expected` (compare-and-set).
    pub(super) fn set_if_eq(&self, key: &str, expected: &[u8], value: &[u8], ttl: Duration) -> bool {
        let now = self.now();
        let mut inner = self.lock();
        let matches = inner.live(key, now).is_some_and(|(v, _)| v == expected);
        if matches {
            inner.insert(key, value, ttl, now);
        }
        matches
    }

    /// `HSET key field value` and `PEXPIRE key ttl` as one step (Redis: `MULTI`).
    pub(super) fn hset_px(&self, key: &str, field: &str, value: &[u8], ttl: Duration) {
        let now = self.now();
        let mut inner = self.lock();
        if inner.hashes.get(key).is_some_and(|(_, exp)| *exp <= now) {
            inner.hashes.remove(key);
        }
        let (fields, expiry) = inner.hashes.entry(key.to_owned()).or_default();
        fields.insert(field.to_owned(), value.to_vec());
        *expiry = now.saturating_add(millis(ttl));
    }

    /// `HGETALL key`: every field and value of a live hash (none for a missing one).
    pub(super) fn hgetall(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        let now = self.now();
        let mut inner = self.lock();
        if inner.hashes.get(key).is_some_and(|(_, exp)| *exp <= now) {
            inner.hashes.remove(key);
        }
        inner
            .hashes
            .get(key)
            .map(|(fields, _)| fields.iter().map(|(f, v)| (f.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// `HDEL key field` (Redis drops a hash whose last field goes).
    pub(super) fn hdel(&self, key: &str, field: &str) {
        let mut inner = self.lock();
        if let Some((fields, _)) = inner.hashes.get_mut(key) {
            fields.remove(field);
            if fields.is_empty() {
                inner.hashes.remove(key);
            }
        }
    }

    /// The open-flow cap's count ([`super::flow_cap`]), as the Redis backend's pipeline does
    /// it: `INCR current` (a decimal string, as in Redis), living `life` from now; and the
    /// counts at `others`, 0 for a missing counter.
    pub(super) fn admit(&self, current: &str, by: i64, others: &[String], life: Duration) -> (i64, Vec<i64>) {
        let now = self.now();
        let mut inner = self.lock();
        let count = inner.live(current, now).map_or(0, |(v, _)| counter(v)).saturating_add(by);
        inner.insert(current, count.to_string().as_bytes(), life, now);
        let counts = others.iter().map(|key| inner.live(key, now).map_or(0, |(v, _)| counter(v))).collect();
        (count, counts)
    }

    /// Takes `by` counts back from an open-flow counter, never below 0, keeping its expiry
    /// (a missing counter stays missing; the Redis backend renews the TTL to `life`, which only
    /// matters for a counter Redis lost).
    pub(super) fn release(&self, key: &str, by: i64, _life: Duration) {
        let mut inner = self.lock();
        if let Some((value, _)) = inner.live(key, self.now()) {
            *value = (counter(value) - by).max(0).to_string().into_bytes();
        }
    }

    /// A flow and its callback counter: the counter lives under a key of its own that no
    /// store key can take (the NUL), with the flow's expiry.
    pub(super) fn create_flow(&self, key: &str, sealed: &[u8], ttl: Duration) -> bool {
        let now = self.now();
        let mut inner = self.lock();
        if inner.live(key, now).is_some() {
            return false;
        }
        inner.insert(key, sealed, ttl, now);
        inner.insert(&uses_key(key), &0u64.to_be_bytes(), ttl, now);
        true
    }

    pub(super) fn use_flow(&self, key: &str, cut_to: Duration) -> Option<FlowRead> {
        let now = self.now();
        let mut inner = self.lock();
        let (value, expiry) = inner.live(key, now)?;
        let cut = *expiry - now > millis(cut_to);
        if cut {
            *expiry = now.saturating_add(millis(cut_to));
        }
        let (value, expiry) = (value.clone(), *expiry);
        let counter = inner.entries.entry(uses_key(key)).or_insert_with(|| (0u64.to_be_bytes().to_vec(), expiry));
        let uses = counter.0.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0) + 1;
        *counter = (uses.to_be_bytes().to_vec(), expiry);
        Some((value, cut, uses))
    }
}

impl MemoryBackend {
    /// [`MemoryBackend::use_flow`] and, with it, `SET code_key NX GET`: `None` when the code
    /// was bound now, else the record already there.
    pub(super) fn use_flow_binding(
        &self,
        key: &str,
        cut_to: Duration,
        code_key: &str,
        code_value: &[u8],
        code_ttl: Duration,
    ) -> (Option<FlowRead>, Option<Vec<u8>>) {
        let now = self.now();
        let existing = {
            let mut inner = self.lock();
            match inner.live(code_key, now) {
                Some((value, _)) => Some(value.clone()),
                None => {
                    inner.insert(code_key, code_value, code_ttl, now);
                    None
                }
            }
        };
        (self.use_flow(key, cut_to), existing)
    }
}

impl MemoryBackend {
    /// Takes the flow at `key` out, as the Redis backend's script does: the sealed flow, its
    /// callbacks so far and its remaining life.
    pub(super) fn take_flow(&self, key: &str) -> Option<(Vec<u8>, u64, Duration)> {
        let now = self.now();
        let mut inner = self.lock();
        let (value, expiry) = inner.live(key, now)?.clone();
        let counter = inner.entries.get(&uses_key(key));
        let uses = counter.and_then(|(c, _)| c.as_slice().try_into().ok()).map_or(0, u64::from_be_bytes);
        if uses > 0 {
            // A flow that relayed a callback stays as it is (its grace window goes on).
            return Some((value, uses, Duration::ZERO));
        }
        inner.entries.remove(key);
        inner.entries.remove(&uses_key(key));
        let left = Duration::from_millis(u64::try_from(expiry.saturating_sub(now)).unwrap_or(0));
        Some((value, uses, left))
    }

    /// The sealed flow at `key`, nothing counted or cut.
    pub(super) fn read_flow(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.now();
        self.lock().live(key, now).map(|(value, _)| value.clone())
    }
}

/// The primitives as [`Backend`] serves them: each answered in place.
impl Backend for MemoryBackend {
    fn get<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Vec<u8>>> {
        Reply::Now(MemoryBackend::get(self, key))
    }
    fn get_two<'a>(&'a self, first: &'a str, second: &'a str) -> Reply<'a, TwoValues> {
        Reply::Now((MemoryBackend::get(self, first), MemoryBackend::get(self, second)))
    }
    fn set<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, ()> {
        MemoryBackend::set(self, key, value, ttl);
        Reply::Now(())
    }
    fn set_nx<'a>(&'a self, key: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, bool> {
        Reply::Now(MemoryBackend::set_nx(self, key, value, ttl))
    }
    fn del<'a>(&'a self, key: &'a str) -> Reply<'a, ()> {
        MemoryBackend::del(self, key);
        Reply::Now(())
    }
    fn del_if_eq<'a>(&'a self, key: &'a str, value: &'a [u8]) -> Reply<'a, bool> {
        Reply::Now(MemoryBackend::del_if_eq(self, key, value))
    }
    fn set_if_eq<'a>(&'a self, key: &'a str, expected: &'a [u8], value: &'a [u8], ttl: Duration) -> Reply<'a, bool> {
        Reply::Now(MemoryBackend::set_if_eq(self, key, expected, value, ttl))
    }
    fn hset_px<'a>(&'a self, key: &'a str, field: &'a str, value: &'a [u8], ttl: Duration) -> Reply<'a, ()> {
        MemoryBackend::hset_px(self, key, field, value, ttl);
        Reply::Now(())
    }
    fn hgetall<'a>(&'a self, key: &'a str) -> Reply<'a, Vec<(String, Vec<u8>)>> {
        Reply::Now(MemoryBackend::hgetall(self, key))
    }
    fn hdel<'a>(&'a self, key: &'a str, field: &'a str) -> Reply<'a, ()> {
        MemoryBackend::hdel(self, key, field);
        Reply::Now(())
    }
    fn admit<'a>(
        &'a self,
        current: &'a str,
        by: i64,
        others: &'a [String],
        life: Duration,
    ) -> Reply<'a, (i64, Vec<i64>)> {
        Reply::Now(MemoryBackend::admit(self, current, by, others, life))
    }
    fn release<'a>(&'a self, key: &'a str, by: i64, life: Duration) -> Reply<'a, ()> {
        MemoryBackend::release(self, key, by, life);
        Reply::Now(())
    }
    fn create_flow<'a>(&'a self, key: &'a str, sealed: &'a [u8], ttl: Duration) -> Reply<'a, bool> {
        Reply::Now(MemoryBackend::create_flow(self, key, sealed, ttl))
    }
    fn use_flow<'a>(&'a self, key: &'a str, cut_to: Duration) -> Reply<'a, Option<FlowRead>> {
        Reply::Now(MemoryBackend::use_flow(self, key, cut_to))
    }
    fn use_flow_binding<'a>(
        &'a self,
        key: &'a str,
        cut_to: Duration,
        code_key: &'a str,
        code_value: &'a [u8],
        code_ttl: Duration,
    ) -> Reply<'a, (Option<FlowRead>, Option<Vec<u8>>)> {
        Reply::Now(MemoryBackend::use_flow_binding(self, key, cut_to, code_key, code_value, code_ttl))
    }
    fn take_flow<'a>(&'a self, key: &'a str) -> Reply<'a, Option<(Vec<u8>, u64, Duration)>> {
        Reply::Now(MemoryBackend::take_flow(self, key))
    }
    fn read_flow<'a>(&'a self, key: &'a str) -> Reply<'a, Option<Vec<u8>>> {
        Reply::Now(MemoryBackend::read_flow(self, key))
    }
    fn add_event<'a>(&'a self, key: &'a str, sealed: &'a [u8], max_len: u64, keep_for: Duration) -> Reply<'a, String> {
        Reply::Now(MemoryBackend::add_event(self, key, sealed, max_len, keep_for))
    }
    fn read_events<'a>(
        &'a self,
        key: &'a str,
        from: Option<EventId>,
        count: usize,
        keep_for: Duration,
    ) -> Reply<'a, (bool, Vec<RawEvent>)> {
        Reply::Now(MemoryBackend::read_events(self, key, from, count, keep_for))
    }
}

impl MemoryBackend {
    /// Appends to a feed as the Redis backend's script does: the id Redis would give (this
    /// millisecond, or the last id's next when the clock has not moved past it), the previous
    /// entry's id, exact `MAXLEN` trimming, then `MINID` (the new id's time less `keep_for`),
    /// the life set to `keep_for`.
    pub(super) fn add_event(&self, key: &str, sealed: &[u8], max_len: u64, keep_for: Duration) -> String {
        let now = self.now();
        let mut inner = self.lock();
        if inner.streams.get(key).is_some_and(|s| s.expiry <= now) {
            inner.streams.remove(key);
        }
        let stream = inner.streams.entry(key.to_owned()).or_insert_with(|| Stream {
            entries: VecDeque::new(),
            last: EventId { ms: 0, seq: 0 },
            expiry: now,
        });
        let ms = u64::try_from(now).unwrap_or(0);
        let id = if ms > stream.last.ms { EventId { ms, seq: 0 } } else { stream.last.next() };
        let previous = stream.entries.back().map(|(id, _, _)| id.to_string()).unwrap_or_default();
        stream.entries.push_back((id, sealed.to_vec(), previous));
        stream.last = id;
        while stream.entries.len() as u64 > max_len {
            stream.entries.pop_front();
        }
        let min_id = id.ms.saturating_sub(u64::try_from(millis(keep_for)).unwrap_or(0));
        while stream.entries.front().is_some_and(|(first, _, _)| first.ms < min_id) {
            stream.entries.pop_front();
        }
        stream.expiry = now.saturating_add(millis(keep_for));
        id.to_string()
    }

    /// Whether the feed exists and up to `count` entries from `from` on, oldest first; its life
    /// renewed to `keep_for`.
    pub(super) fn read_events(
        &self,
        key: &str,
        from: Option<EventId>,
        count: usize,
        keep_for: Duration,
    ) -> (bool, Vec<RawEvent>) {
        let now = self.now();
        let mut inner = self.lock();
        if inner.streams.get(key).is_some_and(|s| s.expiry <= now) {
            inner.streams.remove(key);
        }
        let Some(stream) = inner.streams.get_mut(key) else { return (false, Vec::new()) };
        stream.expiry = now.saturating_add(millis(keep_for));
        let from = from.unwrap_or(EventId { ms: 0, seq: 0 });
        let entries = stream.entries.iter().filter(|(id, _, _)| *id >= from).take(count);
        (true, entries.map(|(id, sealed, previous)| (id.to_string(), sealed.clone(), previous.clone())).collect())
    }
}

fn uses_key(flow_key: &str) -> String {
    format!("{flow_key}\u{0}uses")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_if_eq_writes_only_over_the_expected_value() {
        let clock = Clock::system();
        let backend = MemoryBackend::new(clock.clone());
        let ttl = Duration::from_secs(60);
        backend.set("tok:a", b"read", ttl);
        assert!(!backend.set_if_eq("tok:a", b"other", b"lost", ttl), "another value");
        assert!(backend.set_if_eq("tok:a", b"read", b"won", ttl));
        assert_eq!(backend.get("tok:a"), Some(b"won".to_vec()));
        assert!(!backend.set_if_eq("tok:a", b"read", b"late", ttl), "already replaced");
        backend.del("tok:a");
        assert!(!backend.set_if_eq("tok:a", b"won", b"late", ttl), "deleted");
        assert_eq!(backend.get("tok:a"), None, "a deleted key stays deleted");
        backend.set("tok:b", b"read", ttl);
        clock.advance(Duration::from_secs(61));
        assert!(!backend.set_if_eq("tok:b", b"read", b"late", ttl), "expired counts as deleted");
        assert_eq!(backend.get("tok:b"), None);
    }
}
