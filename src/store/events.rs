//! Each client's feed of user events (docs/design.md §2.6, key in §4.1): what WeChat's
//! authorization events did to users that client signed in, for `ReadUserEvents`. One Redis
//! stream per client (`{prefix}:client:{{client}}:events`), each entry the sealed event and the
//! id of the entry before it: a reader whose cursor is not the first unread entry's predecessor
//! missed entries that were trimmed (a gap), and is told so.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::backend::Op;
use super::{Store, StoreError};

/// How long a feed keeps an event: adding one trims the entries older than this before it, and
/// a feed neither written nor read for this long expires (each read renews it). A product that
/// polls keeps its feed; one that stopped polling for longer is told of a gap when it returns
/// (it may have missed events that expired with the feed).
pub const USER_EVENTS_LIFE: Duration = Duration::from_secs(30 * 24 * 3600);

/// An entry's id in a feed: Redis's stream id, `{ms}-{seq}` (the memory backend makes the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    /// Milliseconds of the clock that added the entry.
    pub ms: u64,
    /// The entry's number within its millisecond.
    pub seq: u64,
}

impl EventId {
    /// Reads `{ms}-{seq}` (decimal digits only, as Redis writes them); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        let number = |s: &str| {
            if (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
        };
        Some(Self { ms: number(ms)?, seq: number(seq)? })
    }

    /// The smallest id after this one: where a read "after" it starts (an inclusive start, which
    /// every Redis with streams takes; the exclusive `(` needs 6.2).
    pub(crate) fn next(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => Self { ms: self.ms.saturating_add(1), seq: 0 },
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// An entry as a backend reads it: its id, the sealed event and the id of the entry before it
/// in the feed (empty for a feed's first).
pub(crate) type RawEvent = (String, Vec<u8>, String);

/// What a feed said about one user: only what the client was given already (the app and the
/// openid its own sign-in answered), what happened, and when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserEventRecord {
    /// The app's config name.
    pub app: String,
    /// The user's openid in the app.
    pub openid: String,
    /// WeChat's name of the event (`user_authorization_revoke`, ...).
    pub event: String,
    /// The push's `CreateTime`, Unix seconds; 0 when it had none.
    pub wechat_time: i64,
    /// When wxauth acted on it, Unix milliseconds by the service clock.
    pub acted_at_ms: i64,
}

/// One read of a feed.
#[derive(Debug, Default)]
pub struct EventPage {
    /// The events after the cursor, oldest first (an entry that does not open is passed over,
    /// counted as every unopenable record is).
    pub events: Vec<UserEventRecord>,
    /// Where the next read starts: the last entry read, else the cursor given; `None` when the
    /// reader should start from the oldest entry kept.
    pub next: Option<EventId>,
    /// Entries after the cursor were trimmed (or the feed expired) before this read.
    pub gap: bool,
}

impl Store {
    /// The client's feed: the client in braces, a Cluster hash tag, as for its flow counters.
    fn events_key(&self, client: &str) -> String {
        format!("{}:client:{{{client}}}:events", self.inner.prefix)
    }

    /// Appends `event` to `client`'s feed, keeping at most `kept` entries (and none older than
    /// [`USER_EVENTS_LIFE`] before it): one step on one key.
    pub async fn add_user_event(&self, client: &str, event: &UserEventRecord, kept: u64) -> Result<(), StoreError> {
        let key = self.events_key(client);
        let sealed = self.seal(&key, event)?;
        self.call(Op::AddEvent, |b| b.add_event(&key, &sealed, kept.max(1), USER_EVENTS_LIFE)).await.map(|_| ())
    }

    /// Up to `limit` events of `client`'s feed after `after` (`None`: from the oldest kept).
    pub async fn read_user_events(
        &self,
        client: &str,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let key = self.events_key(client);
        let (exists, raw) = self
            .call(Op::ReadEvents, |b| b.read_events(&key, after.map(EventId::next), limit, USER_EVENTS_LIFE))
            .await?;
        let gap = match (after, raw.first()) {
            (None, _) => false,
            // The first unread entry must follow the cursor's: else entries between were trimmed.
            (Some(after), Some((_, _, previous))) => *previous != after.to_string(),
            // Nothing after the cursor: a feed that exists had nothing new; one that expired
            // may have held events the reader never saw.
            (Some(_), None) => !exists,
        };
        let mut page =
            EventPage { next: if gap && raw.is_empty() { None } else { after }, gap, ..EventPage::default() };
        for (id, sealed, _) in raw {
            let Some(id) = EventId::parse(&id) else { continue };
            page.next = Some(id);
            page.events.extend(self.open::<UserEventRecord>(&key, &sealed));
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::seal::Keyring;
    use crate::telemetry::Metrics;

    fn event(n: i64) -> UserEventRecord {
        let event = "user_info_modified".to_owned();
        UserEventRecord { app: "mp".into(), openid: format!("o{n}"), event, wechat_time: n, acted_at_ms: n }
    }

    fn openids(page: &EventPage) -> Vec<&str> {
        page.events.iter().map(|e| e.openid.as_str()).collect()
    }

    /// The memory twin on a clock the test moves: entries older than the life before a new one
    /// are trimmed without a gap for a reader who had read them; an expired feed is a gap.
    #[tokio::test]
    async fn a_feed_forgets_by_age_and_tells_only_readers_who_missed_something() {
        let clock = Clock::system();
        let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
        let store = Store::memory(keys, "wxauth", Metrics::new(), clock.clone());
        store.add_user_event("passport", &event(1), 10).await.expect("add");
        clock.advance(Duration::from_millis(5));
        store.add_user_event("passport", &event(2), 10).await.expect("add");
        let first = store.read_user_events("passport", None, 1).await.expect("read");
        assert_eq!((openids(&first), first.gap), (vec!["o1"], false));
        let second = store.read_user_events("passport", first.next, 10).await.expect("read");
        assert_eq!((openids(&second), second.gap), (vec!["o2"], false));

        // The reader polls within the month (a read renews the feed); the entries age meanwhile.
        clock.advance(USER_EVENTS_LIFE / 2);
        let polled = store.read_user_events("passport", second.next, 10).await.expect("read");
        assert_eq!((polled.events.len(), polled.gap), (0, false));
        clock.advance(USER_EVENTS_LIFE / 2 + Duration::from_secs(1));
        store.add_user_event("passport", &event(3), 10).await.expect("add");
        let all = store.read_user_events("passport", None, 10).await.expect("read");
        assert_eq!(openids(&all), vec!["o3"], "the month-old entries are trimmed");
        let caught_up = store.read_user_events("passport", second.next, 10).await.expect("read");
        assert_eq!((openids(&caught_up), caught_up.gap), (vec!["o3"], false), "nothing missed");
        let behind = store.read_user_events("passport", first.next, 10).await.expect("read");
        assert_eq!((openids(&behind), behind.gap), (vec!["o3"], true), "o2 was missed");
        let none = store.read_user_events("passport", caught_up.next, 10).await.expect("read");
        assert_eq!((none.events.len(), none.gap, none.next), (0, false, caught_up.next), "nothing new");

        clock.advance(USER_EVENTS_LIFE + Duration::from_secs(1));
        let expired = store.read_user_events("passport", caught_up.next, 10).await.expect("read");
        assert_eq!((expired.events.len(), expired.gap, expired.next), (0, true, None), "expired unread: a gap");
        let fresh = store.read_user_events("passport", None, 10).await.expect("read");
        assert_eq!((fresh.events.len(), fresh.gap, fresh.next), (0, false, None));
        let other = store.read_user_events("trade", None, 10).await.expect("read");
        assert!(other.events.is_empty(), "each client has its own feed");
    }

    #[test]
    fn event_ids_read_only_what_redis_writes() {
        assert_eq!(EventId::parse("1700000000000-3"), Some(EventId { ms: 1_700_000_000_000, seq: 3 }));
        for bad in
            ["", "1", "1-", "-1", "1-2-3", "a-1", "1-+2", " 1-2", "1-2 ", &"9".repeat(21), "1-99999999999999999999"]
        {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
        let id = EventId { ms: 5, seq: u64::MAX };
        assert_eq!(id.next(), EventId { ms: 6, seq: 0 });
        assert_eq!(EventId { ms: 5, seq: 1 }.next().to_string(), "5-2");
    }
}
