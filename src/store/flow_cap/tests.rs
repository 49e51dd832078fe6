//! The cap's arithmetic alone, then the same scenarios on both backends through `Store`, with
//! the service clock moved (never slept on).

use std::sync::Arc;

use super::*;
use crate::clock::Clock;
use crate::store::seal::Keyring;
use crate::store::{RedisTls, Store};
use crate::telemetry::Metrics;

const TTL: Duration = Duration::from_secs(600);
/// One window at `TTL`.
const W: i64 = 60_000;

fn refused_for(admission: &Admission) -> Option<i64> {
    match admission {
        Admission::Refused { retry_after } => Some(millis(*retry_after)),
        Admission::Admitted(_) => None,
    }
}

#[test]
fn a_window_is_a_tenth_of_the_ttl_rounded_up() {
    assert_eq!(window_ms(TTL), W);
    assert_eq!(window_ms(Duration::from_millis(60_001)), 6_001);
    assert_eq!(window_ms(Duration::from_millis(3)), 1, "never 0");
    assert_eq!(Windows::at(TTL, 0).life(), Duration::from_secs(660), "read for 11 windows");
}

#[test]
fn the_sum_of_eleven_windows_is_held_to_the_cap() {
    let windows = Windows::at(TTL, 100 * W + 5_000);
    // The ten windows before the current one (90..=99), then the next one (101).
    let mut earlier = vec![0; 11];
    assert!(matches!(windows.judge(3, 3, &earlier), Admission::Admitted(_)));
    earlier[0] = 1;
    // 1 + 3 > 3: the oldest window (index 90) leaves when window 101 begins, 55 s from now.
    assert_eq!(refused_for(&windows.judge(3, 3, &earlier)), Some(W - 5_000));
    earlier[4] = 2;
    // Under a cap of 2, 1 + 2 + 1 fits only once window 94 has left too (at window 105).
    assert_eq!(refused_for(&windows.judge(2, 1, &earlier)), Some(5 * W - 5_000));
    // The current window alone is over the cap: it leaves when window 111 begins.
    assert_eq!(refused_for(&windows.judge(3, 4, &[0; 11])), Some(11 * W - 5_000));
    // A count in the next window (an admission racing across the window's start) counts too,
    // and leaves last.
    let mut next = vec![0; 11];
    next[10] = 1;
    assert_eq!(refused_for(&windows.judge(3, 3, &next)), Some(11 * W - 5_000));
    assert_eq!(refused_for(&windows.judge(1, 1, &next)), Some(12 * W - 5_000));
}

#[test]
fn a_block_shrinks_to_the_room_left() {
    let windows = Windows::at(TTL, 20 * W + 5_000);
    // 6 counted before this block of 4: under a cap of 8, two places are left.
    let earlier = [1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0];
    let (admission, granted) = windows.judge_block(8, 4, 3 + 4, &earlier);
    assert!(matches!(admission, Admission::Admitted(_)));
    assert_eq!(granted, 2);
    assert_eq!(windows.judge_block(20, 4, 3 + 4, &earlier).1, 4, "room for the whole block");
    let (refused, none) = windows.judge_block(6, 4, 3 + 4, &earlier);
    assert_eq!((refused_for(&refused).is_some(), none), (true, 0));
}

#[test]
fn blocks_are_a_thousandth_of_the_cap_within_1_and_64() {
    assert_eq!([block(1), block(1_999), block(2_000), block(50_000), block(10_000_000)], [1, 1, 2, 50, 64]);
}

#[test]
fn held_places_serve_their_window_only_and_older_ones_are_given_back() {
    let leases = Leases::default();
    assert!(!leases.take("passport", 7), "nothing held");
    assert_eq!(leases.keep("passport", 7, 2), None);
    assert!(leases.take("passport", 7) && leases.take("passport", 7));
    assert!(!leases.take("passport", 7), "two held, two taken");
    assert_eq!(leases.keep("passport", 7, 3), None);
    assert!(!leases.take("passport", 8), "a window's places do not serve the next");
    assert_eq!(leases.keep("passport", 8, 1), Some(Unused { window: 7, places: 3 }));
    assert_eq!(leases.keep("passport", 7, 5), Some(Unused { window: 7, places: 5 }), "a lagging caller's block");
    assert!(leases.take("passport", 8) && !leases.take("trade", 8));
}

#[test]
fn counts_below_zero_make_no_room() {
    let windows = Windows::at(TTL, 0);
    let mut earlier = vec![0; 11];
    earlier[9] = -5;
    assert!(refused_for(&windows.judge(2, 3, &earlier)).is_some());
    assert!(matches!(windows.judge(1, -2, &[0; 11]), Admission::Admitted(_)), "the current one counts as 1");
}

/// Moves `clock` to the start of the next window; answers that window's start.
fn to_next_window(clock: &Clock) -> i64 {
    let now = clock.now_ms();
    let start = (now.div_euclid(W) + 1) * W;
    clock.advance(Duration::from_millis(u64::try_from(start - now).expect("ahead")));
    start
}

/// Moves `clock` to `at` (service ms), which must be ahead.
fn advance_to(clock: &Clock, at: i64) {
    clock.advance(Duration::from_millis(u64::try_from(at - clock.now_ms()).expect("ahead")));
}

async fn admit(store: &Store, clock: &Clock, cap: u32) -> Admission {
    store.admit_flow("passport", cap, TTL, clock.now_ms()).await.expect("admit")
}

/// Asserts a refusal whose delay ends at `free_at` (service ms), to the millisecond the call
/// took.
async fn assert_refused_until(store: &Store, clock: &Clock, cap: u32, free_at: i64) {
    let before = clock.now_ms();
    let admission = admit(store, clock, cap).await;
    let after = clock.now_ms();
    let wait = refused_for(&admission).unwrap_or_else(|| panic!("refused, not {admission:?}"));
    assert!(wait <= free_at - before && wait >= free_at - after, "{wait} ms, free at {free_at}, now {before}");
}

async fn the_cap_admits_refuses_releases_and_rolls(store: &Store, clock: &Clock) {
    let start = to_next_window(clock);
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)));
    clock.advance(Duration::from_secs(30));
    let Admission::Admitted(slot) = admit(store, clock, 3).await else { panic!("second") };
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)));
    // Three flows started in the first window: it leaves the range when the 12th begins.
    for _ in 0..5 {
        assert_refused_until(store, clock, 3, start + 11 * W).await;
    }
    store.release_flow_slot("passport", &slot).await.expect("release");
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)), "refusals took their counts back");
    assert_refused_until(store, clock, 3, start + 11 * W).await;

    // `flow.ttl` after the first flows they still count: their window is in range until 11 W.
    advance_to(clock, start + 10 * W + 59_000);
    assert_refused_until(store, clock, 3, start + 11 * W).await;
    advance_to(clock, start + 11 * W);
    for _ in 0..3 {
        assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)), "the first window left");
    }
    assert_refused_until(store, clock, 3, start + 22 * W).await;
}

async fn windows_leave_one_by_one(store: &Store, clock: &Clock) {
    let start = to_next_window(clock);
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)));
    advance_to(clock, start + W);
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)));
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)));
    advance_to(clock, start + 5 * W);
    // One place frees when the first window leaves, two more when the second does.
    assert_refused_until(store, clock, 3, start + 11 * W).await;
    advance_to(clock, start + 11 * W);
    assert!(matches!(admit(store, clock, 3).await, Admission::Admitted(_)));
    assert_refused_until(store, clock, 3, start + 12 * W).await;
}

fn memory_store() -> (Store, Clock) {
    let clock = Clock::system();
    let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
    (Store::memory(keys, "wxauth", Metrics::new(), clock.clone()), clock)
}

#[tokio::test]
async fn the_memory_cap_admits_refuses_releases_and_rolls() {
    let (store, clock) = memory_store();
    the_cap_admits_refuses_releases_and_rolls(&store, &clock).await;
}

#[tokio::test]
async fn the_memory_cap_lets_windows_leave_one_by_one() {
    let (store, clock) = memory_store();
    windows_leave_one_by_one(&store, &clock).await;
}

/// A private redis-server, killed and reaped when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn redis_store() -> (Server, Store, Clock) {
    let (server, store, _) = redis_server().await;
    (server, store, Clock::system())
}

/// A private redis-server, a store on it and its URL.
async fn redis_server() -> (Server, Store, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let server = Server(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if let Some(store) = replica(&url).await {
            return (server, store, url);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("redis-server on {port} did not come up");
}

/// One more replica's store on the Redis at `url`, if it answers.
async fn replica(url: &str) -> Option<Store> {
    let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
    let metrics: Arc<Metrics> = Metrics::new();
    Store::redis(&[url.to_owned()], &RedisTls::default(), keys, "wxauth", metrics).await.ok()
}

/// Round trips of the cap's count so far (the `admit` operations `store` timed).
fn counted_round_trips(store: &Store) -> u64 {
    store.inner.metrics.store_duration.with_label_values(&["admit"]).get_sample_count()
}

/// The count of `client`'s counter for the window `index`.
async fn counter(store: &Store, client: &str, index: i64) -> i64 {
    let key = format!("{}:{index}", store.client_flows_key(client));
    let value = store.call(crate::store::backend::Op::Get, |b| b.get(&key)).await.expect("get");
    value.map_or(0, |v| String::from_utf8(v).expect("utf-8").parse().expect("a count"))
}

/// Replicas admit a client with a cap of 4,000 (a block of 4) in turns until both are refused:
/// exactly the cap is admitted, in a quarter of the round trips, and a block held when the
/// window turns is given back to that window's counter.
async fn blocks_hold_the_cap_across_replicas(replicas: &[Store], clock: &Clock) {
    const CAP: u32 = 4_000;
    assert_eq!(block(CAP), 4);
    let start = to_next_window(clock);
    let mut admitted = 0_u32;
    let mut refused = vec![false; replicas.len()];
    for turn in 0.. {
        if refused.iter().all(|r| *r) {
            break;
        }
        let which = turn % replicas.len();
        match replicas[which].admit_flow("passport", CAP, TTL, clock.now_ms()).await.expect("admit") {
            Admission::Admitted(_) => admitted += 1,
            Admission::Refused { .. } => refused[which] = true,
        }
        assert!(turn < 10 * CAP as usize, "no end");
    }
    assert_eq!(admitted, CAP, "every place counted is handed out, none past the cap");
    let trips: u64 = replicas.iter().map(counted_round_trips).sum();
    assert!(trips <= u64::from(CAP) / 4 + 2 * replicas.len() as u64 + 4, "{trips} round trips for {CAP} flows");
    assert_eq!(counter(&replicas[0], "passport", start.div_euclid(W)).await, i64::from(CAP));

    // Another client, one flow in a window, then one in the next: the 3 places held of the
    // first window go back to its counter.
    let first = replicas[0].admit_flow("trade", CAP, TTL, clock.now_ms()).await.expect("admit");
    assert!(matches!(first, Admission::Admitted(_)));
    assert_eq!(counter(&replicas[0], "trade", start.div_euclid(W)).await, 4, "a block counted");
    let next = to_next_window(clock);
    let second = replicas[0].admit_flow("trade", CAP, TTL, clock.now_ms()).await.expect("admit");
    assert!(matches!(second, Admission::Admitted(_)));
    assert_eq!(counter(&replicas[0], "trade", start.div_euclid(W)).await, 1, "the held places given back");
    assert_eq!(counter(&replicas[0], "trade", next.div_euclid(W)).await, 4);
}

#[tokio::test]
async fn the_redis_cap_admits_refuses_releases_and_rolls() {
    let (_server, store, clock) = redis_store().await;
    the_cap_admits_refuses_releases_and_rolls(&store, &clock).await;
}

#[tokio::test]
async fn the_redis_cap_lets_windows_leave_one_by_one() {
    let (_server, store, clock) = redis_store().await;
    windows_leave_one_by_one(&store, &clock).await;
}

#[tokio::test]
async fn the_memory_cap_counts_blocks_and_gives_back_held_places() {
    let (store, clock) = memory_store();
    blocks_hold_the_cap_across_replicas(&[store], &clock).await;
}

#[tokio::test]
async fn the_redis_cap_counts_blocks_across_replicas() {
    let (_server, store, url) = redis_server().await;
    let other = replica(&url).await.expect("a second replica");
    blocks_hold_the_cap_across_replicas(&[store, other], &Clock::system()).await;
}
