//! The token service's unit tests: the refresh single-flight's ends (abort, panic, a runtime
//! shutting down), a waiter's back-off, the lock's life.

use super::*;
use crate::secrets::{AppSecret, AuthCode};
use crate::sim::{Endpoint, Fault, SimConfig, Simulator};
use crate::store::seal::Keyring;
use crate::wechat::{App, AppKind, WechatSettings};

/// The token service on the in-memory store, a simulator, and alice signed in to `mp`.
struct Setup {
    tokens: Arc<Tokens>,
    sim: Simulator,
    app: App,
    openid: String,
}

async fn setup() -> Setup {
    let (sim, addr) = Simulator::spawn_local(SimConfig::demo()).await.expect("simulator");
    let (metrics, clock) = (Metrics::new(), Clock::system());
    let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
    let store = Store::memory(keys, "wxauth", Arc::clone(&metrics), clock.clone());
    let base = url::Url::parse(&format!("http://{addr}")).expect("url");
    let settings =
        WechatSettings { open_base: base.clone(), api_base: base, timeout: Duration::from_secs(30), attempts: 1 };
    let wechat = WechatClient::new(settings, Arc::clone(&metrics)).expect("client");
    let policy = TokenPolicy {
        refresh_margin: Duration::from_secs(300),
        refresh_life: Duration::from_secs(30 * 86400),
        profile_cache: Duration::ZERO,
        user_events_kept: 10_000,
    };
    let tokens = Tokens::new(store.clone(), wechat, clock, policy, metrics);
    let app = App {
        name: "mp".into(),
        appid: "wxd0000000000000a1".into(),
        secret: AppSecret::new("demo-mp-secret"),
        kind: AppKind::OfficialAccount,
    };
    let code = sim.authorize(&app.appid, "alice", "snsapi_userinfo").expect("code");
    // As the relay would: the code bound to a flow of client `test`.
    let flow_id = store.new_flow_id("test", &app.name);
    let flow = crate::store::Flow {
        app: app.name.clone(),
        return_url: "https://product.example.com/cb".into(),
        caller_state: "s".into(),
        scope: "snsapi_userinfo".into(),
        caller: "test".into(),
        created_at: 0,
        force_popup: false,
    };
    let ttl = Duration::from_secs(360);
    assert!(store.put_flow(&flow_id, &flow, ttl).await.expect("flow"));
    let code = AuthCode::new(code);
    let relayed = store.relay(&flow_id, Duration::from_secs(60), Some(&code), ttl).await.expect("relay");
    assert_eq!(relayed.and_then(|r| r.code), Some(crate::store::CodeRelay::Bound));
    let (outcome, _) = tokens.exchange(&app, &flow_id, code, "test").await.expect("exchange");
    Setup { tokens, sim, app, openid: outcome.openid }
}

fn flights(tokens: &Tokens) -> usize {
    tokens.flights.lock().map(|f| f.len()).unwrap_or_default()
}

#[test]
fn the_lock_outlives_every_attempt_backoff_and_store_call_under_it() {
    let defaults = WechatSettings {
        open_base: url::Url::parse("https://open.weixin.qq.com").expect("url"),
        api_base: url::Url::parse("https://api.weixin.qq.com").expect("url"),
        timeout: Duration::from_secs(3),
        attempts: 3,
    };
    // 3 x 3 s + 200 ms + 400 ms of backoff, 7 store calls of 2 s, 1 s of margin.
    assert_eq!(lock_ttl(&defaults), Duration::from_millis(24_600));
    let quick = WechatSettings { timeout: Duration::from_millis(500), attempts: 1, ..defaults };
    assert_eq!(lock_ttl(&quick), Duration::from_millis(15_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_refresh_leaves_no_flight_and_no_lock_behind() {
    let Setup { tokens, sim, app, openid } = setup().await;
    sim.inject(Endpoint::RefreshToken, Fault::Delay(Duration::from_secs(60)), 1);
    let stuck = tokio::spawn({
        let (tokens, app, openid) = (Arc::clone(&tokens), app.clone(), openid.clone());
        async move { tokens.force_refresh(&app, &openid).await }
    });
    for _ in 0..500 {
        if sim.calls(Endpoint::RefreshToken) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.calls(Endpoint::RefreshToken), 1, "the refresh is waiting for WeChat");

    let abort = tokens.flights.lock().expect("flights").values().next().and_then(|f| f.abort.clone());
    abort.expect("a flight under way").abort();

    assert!(matches!(stuck.await.expect("join"), Err(ApiError::Internal)));
    assert_eq!(flights(&tokens), 0, "the aborted flight left the map");
    // A new refresh proceeds at once: no dead flight to join, no lock to wait out (24.6 s).
    let next = tokio::time::timeout(Duration::from_secs(5), tokens.force_refresh(&app, &openid)).await;
    next.expect("not stuck behind the dead refresh's lock").expect("refreshed");
    assert_eq!(sim.calls(Endpoint::RefreshToken), 2);
    assert_eq!(flights(&tokens), 0);
}

/// Log lines written while it is the thread's default subscriber (a current-thread runtime
/// runs every task on this thread).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panicked_refresh_is_logged_at_error_level_with_its_operation() {
    let Setup { tokens, app, openid, .. } = setup().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // With a single registered dispatcher, tracing judges a callsite's interest by the
    // default of the thread that hits it first: another test's thread, with no subscriber,
    // would make it "never" for this one too. A second one makes it ask every dispatcher.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _default = tracing::subscriber::set_default(subscriber);
    tokens.panic_next_refresh.store(true, Ordering::Relaxed);

    let panicked = tokens.force_refresh(&app, &openid).await;

    assert!(matches!(panicked, Err(ApiError::Internal)));
    let text = logs.text();
    let line = text.lines().find(|l| l.contains("ERROR")).unwrap_or_default();
    assert!(line.contains("token refresh") && line.contains("panicked"), "logged: {text:?}");
}

#[test]
fn a_refresh_started_while_its_runtime_shuts_down_answers_instead_of_deadlocking() {
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let Setup { tokens, sim, app, openid } = main.block_on(setup());
    let (answer_tx, answer_rx) = std::sync::mpsc::channel();
    let caller = Arc::clone(&tokens);
    std::thread::spawn(move || {
        // A runtime already shut down: a task spawned on it is dropped at once, in the
        // spawning call, and with it the flight's guard.
        let dying = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let handle = dying.handle().clone();
        drop(dying);
        let answer = handle.block_on(caller.force_refresh(&app, &openid));
        let _ = answer_tx.send(answer);
    });

    let answer = answer_rx.recv_timeout(Duration::from_secs(10));

    assert!(matches!(answer, Ok(Err(ApiError::Internal))), "answered, not deadlocked: {answer:?}");
    assert_eq!(flights(&tokens), 0, "the dropped flight left the map");
    assert_eq!(sim.calls(Endpoint::RefreshToken), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_waiter_backs_off_and_stops_at_its_callers_deadline() {
    let Setup { tokens, sim, app, openid } = setup().await;
    // Another replica holds the user's lock and never finishes (until its lock expires).
    let held = tokens.store.try_lock(&app.name, &openid, Duration::from_secs(60)).await.expect("store");
    assert!(held.is_some());
    let reads = || tokens.metrics.store_duration.with_label_values(&["get"]).get_sample_count();
    let before = reads();

    let waited = tokio::time::timeout(Duration::from_secs(1), tokens.force_refresh(&app, &openid)).await;

    assert!(waited.is_err(), "the caller's deadline passed");
    let during = reads() - before;
    // 20-40 ms each: about 33 reads a second; doubling to 500 ms: at most 7.
    assert!((2..=8).contains(&during), "{during} reads in one second");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(reads() - before, during, "no read after the caller left");
    assert_eq!(flights(&tokens), 0, "the waiting flight ended with its caller");
    assert_eq!(sim.calls(Endpoint::RefreshToken), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_refresh_leaves_no_flight_behind() {
    let Setup { tokens, sim, app, openid } = setup().await;
    tokens.panic_next_refresh.store(true, Ordering::Relaxed);

    let panicked = tokens.force_refresh(&app, &openid).await;

    assert!(matches!(panicked, Err(ApiError::Internal)));
    assert_eq!(flights(&tokens), 0, "the panicked flight left the map");
    assert_eq!(sim.calls(Endpoint::RefreshToken), 0);
    tokens.force_refresh(&app, &openid).await.expect("a new refresh, not the dead flight's error");
    assert_eq!(sim.calls(Endpoint::RefreshToken), 1);
}
