use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use super::ops::refuses_expire_options;
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
