use super::flows::{BROWSER_SUFFIX, FLOW_ID_PURPOSE, FLOW_ID_RANDOM, START_TOKEN_LEN};
use super::*;
use crate::clock::Clock;
use crate::error::ApiError;
use crate::secrets::AuthCode;

fn store_with(lines: &[String]) -> Store {
    let keys = Keyring::parse(&lines.join("\n")).expect("keyring");
    Store::memory(keys, "wxauth", Metrics::new(), Clock::system())
}

#[test]
fn a_flow_id_names_its_client_and_app_and_nothing_else() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let id = store.new_flow_id("passport", "mp");
    assert_eq!(id.len(), FLOW_ID_LEN);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!(store.flow_is_of(&id, "passport", "mp"));
    assert!(!store.flow_is_of(&id, "trade", "mp"), "another client");
    assert!(!store.flow_is_of(&id, "passport", "web"), "another app");
    assert!(!store.flow_is_of(&id, "passportm", "p"), "the parts are length-prefixed");
    let mut forged = id.clone().into_bytes();
    forged[0] = if forged[0] == b'a' { b'b' } else { b'a' };
    assert!(!store.flow_is_of(&String::from_utf8(forged).expect("ascii"), "passport", "mp"), "another random part");
    assert!(!store.flow_is_of(&id[..FLOW_ID_LEN - 2], "passport", "mp"), "truncated");
    let not_hex = format!("{}zz{}", &id[..FLOW_ID_RANDOM], &id[FLOW_ID_RANDOM + 2..]);
    assert!(!store.flow_is_of(&not_hex, "passport", "mp"), "not hex");
    assert!(!store.flow_is_of("", "passport", "mp"));
    assert_ne!(store.new_flow_id("passport", "mp"), id, "random");
}

#[test]
fn the_relay_tells_a_flow_id_from_a_made_up_one_without_its_client_or_app() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let id = store.new_flow_id("passport", "mp");
    assert!(store.is_flow_id(&id));
    let mut forged = id.clone().into_bytes();
    forged[3] = if forged[3] == b'a' { b'b' } else { b'a' };
    assert!(!store.is_flow_id(&String::from_utf8(forged).expect("ascii")), "another random part");
    assert!(!store.is_flow_id(&"a".repeat(FLOW_ID_LEN)), "made up");
    assert!(!store.is_flow_id(&id[..FLOW_ID_LEN - 1]), "truncated");
    assert!(!store_with(&[Keyring::generate_line(2)]).is_flow_id(&id), "another deployment's key");
}

#[test]
fn a_flow_id_made_before_the_relay_tag_still_names_its_client_and_app() {
    // Arrange: the earlier form, the random part and the whole 128-bit owner's tag.
    let store = store_with(&[Keyring::generate_line(1)]);
    let random = crate::random_id(FLOW_ID_RANDOM);
    let legacy =
        format!("{random}{}", hex::encode(store.inner.keys.tag(&[FLOW_ID_PURPOSE, &random, "passport", "mp"])));
    // Act / Assert
    assert!(store.flow_is_of(&legacy, "passport", "mp"));
    assert!(!store.flow_is_of(&legacy, "trade", "mp"));
    assert!(!store.is_flow_id(&legacy), "the relay does not know it");
}

#[test]
fn a_start_token_starts_its_flow_and_a_flow_id_is_no_start_token() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let (id, token) = store.new_flow("passport", "mp");
    assert_eq!(token.len(), START_TOKEN_LEN);
    assert!(token.starts_with(&id));
    assert_eq!(store.flow_of_start_token(&token), Some(id.as_str()));
    assert_eq!(store.flow_of_start_token(&id), None, "the flow id alone");
    let guessed = format!("{id}{}", "0".repeat(START_TOKEN_LEN - FLOW_ID_LEN));
    assert_eq!(store.flow_of_start_token(&guessed), None, "a made-up start key");
    let (other, _) = store.new_flow("passport", "mp");
    let spliced = format!("{other}{}", &token[FLOW_ID_LEN..]);
    assert_eq!(store.flow_of_start_token(&spliced), None, "another flow's start key");
}

#[test]
fn a_browser_tag_holds_for_its_bound_id_only() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let bound = format!("{}{}", store.new_flow_id("passport", "mp"), crate::random_id(BROWSER_SUFFIX));
    let tag = store.browser_tag(&bound);
    assert!(store.is_browser_of(&bound, &tag));
    let other = format!("{}{}", &bound[..FLOW_ID_LEN], crate::random_id(BROWSER_SUFFIX));
    assert!(!store.is_browser_of(&other, &tag), "another bound id of the same flow");
    assert!(!store.is_browser_of(&bound, &tag[..16]), "a truncated cookie");
    assert!(!store.is_browser_of(&bound, ""), "no cookie");
    assert_eq!(Store::flow_id_of(&bound), &bound[..FLOW_ID_LEN]);
}

#[tokio::test]
async fn a_flow_moves_to_a_browser_once_and_its_first_id_stops_relaying() {
    // Arrange
    let store = store_with(&[Keyring::generate_line(1)]);
    let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
    let id = store.new_flow_id("passport", "mp");
    assert!(store.put_flow(&id, &test_flow(), ttl).await.expect("put"));
    // Act
    let (bound, flow, left) = store.bind_to_browser(&id).await.expect("bind").expect("moved");
    // Assert
    assert_eq!((bound.len(), &bound[..FLOW_ID_LEN], flow), (BOUND_FLOW_ID_LEN, id.as_str(), test_flow()));
    assert!(left <= ttl && left > Duration::from_secs(590), "{left:?}");
    assert!(store.bind_to_browser(&id).await.expect("again").is_none(), "a start works once");
    let code = AuthCode::new("CODE".to_owned());
    assert!(store.relay(&id, grace, Some(&code), ttl).await.expect("relay").is_none(), "the first id is gone");
    let relayed = store.relay(&bound, grace, Some(&code), ttl).await.expect("relay").expect("found");
    assert_eq!((relayed.uses, relayed.code), (1, Some(CodeRelay::Bound)));
    let record = store.get_code(&code).await.expect("get").expect("bound");
    assert_eq!(record.record.flow_id, id, "bound to the id the product holds");
    assert!(store.bind_to_browser(&bound).await.expect("bound").is_none());
}

#[tokio::test]
async fn a_flow_that_relayed_a_callback_cannot_be_started() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
    let id = store.new_flow_id("passport", "mp");
    assert!(store.put_flow(&id, &test_flow(), ttl).await.expect("put"));
    let code = AuthCode::new("QRCODE".to_owned());
    store.relay(&id, grace, Some(&code), ttl).await.expect("relay").expect("found");
    assert!(store.bind_to_browser(&id).await.expect("start").is_none());
    let again = store.relay(&id, grace, Some(&code), ttl).await.expect("relay").expect("the flow is still there");
    assert_eq!(again.uses, 2, "the refused start left the flow and its count alone");
}

#[tokio::test]
async fn a_callback_past_the_budget_binds_no_code() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
    let id = store.new_flow_id("passport", "mp");
    assert!(store.put_flow(&id, &test_flow(), ttl).await.expect("put"));
    for n in 1..=crate::relay::MAX_CALLBACKS {
        let code = AuthCode::new(format!("CODE{n}"));
        store.relay(&id, grace, Some(&code), ttl).await.expect("relay").expect("found");
    }
    let late = AuthCode::new("LATE".to_owned());
    let relayed = store.relay(&id, grace, Some(&late), ttl).await.expect("relay").expect("found");
    assert_eq!(relayed.uses, crate::relay::MAX_CALLBACKS + 1);
    assert!(store.get_code(&late).await.expect("get").is_none(), "the 4th callback's code is bound to nothing");
    assert!(store.get_code(&AuthCode::new("CODE1".to_owned())).await.expect("get").is_some());
}

#[tokio::test]
async fn a_released_flow_slot_frees_its_place_under_the_cap() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let ttl = Duration::from_secs(600);
    let Admission::Admitted(slot) = store.admit_flow("passport", 1, ttl, 0).await.expect("admit") else {
        panic!("the first flow is admitted");
    };
    assert!(matches!(store.admit_flow("passport", 1, ttl, 0).await.expect("admit"), Admission::Refused { .. }));
    store.release_flow_slot("passport", &slot).await.expect("release");
    assert!(matches!(store.admit_flow("passport", 1, ttl, 0).await.expect("admit"), Admission::Admitted(_)));
}

fn test_flow() -> Flow {
    Flow {
        app: "mp".into(),
        return_url: "https://passport.example.com/cb".into(),
        caller_state: "s".into(),
        scope: "snsapi_base".into(),
        caller: "passport".into(),
        created_at: 0,
        force_popup: true,
    }
}

#[test]
fn flow_ids_verify_across_a_key_rotation_and_not_under_other_keys() {
    let (old, new) = (Keyring::generate_line(1), Keyring::generate_line(2));
    let id = store_with(std::slice::from_ref(&old)).new_flow_id("passport", "mp");
    assert!(store_with(&[new.clone(), old]).flow_is_of(&id, "passport", "mp"), "the old key still configured");
    assert!(!store_with(&[new]).flow_is_of(&id, "passport", "mp"), "another deployment's key");
}

#[tokio::test]
async fn a_code_is_bound_to_the_first_flow_that_relays_it() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let flow = |app: &str| Flow {
        app: app.into(),
        return_url: "https://passport.example.com/cb".into(),
        caller_state: "s".into(),
        scope: "snsapi_base".into(),
        caller: "passport".into(),
        created_at: 0,
        force_popup: false,
    };
    let (ttl, grace) = (Duration::from_secs(600), Duration::from_secs(60));
    let (first, second) = (store.new_flow_id("passport", "mp"), store.new_flow_id("passport", "mp"));
    for id in [&first, &second] {
        assert!(store.put_flow(id, &flow("mp"), ttl).await.expect("put"));
    }
    let code = AuthCode::new("CODE".to_owned());
    let relay = |id: &str| {
        let (store, id, code) = (store.clone(), id.to_owned(), code.clone());
        async move { store.relay(&id, grace, Some(&code), ttl).await.expect("relay").map(|r| (r.used, r.uses, r.code)) }
    };
    assert_eq!(relay(&first).await, Some((FlowUse::First, 1, Some(CodeRelay::Bound))));
    assert_eq!(relay(&first).await, Some((FlowUse::Repeat, 2, Some(CodeRelay::Again))));
    assert_eq!(relay(&second).await, Some((FlowUse::First, 1, Some(CodeRelay::OtherFlow))));
    let unknown = store.new_flow_id("passport", "mp");
    assert_eq!(relay(&unknown).await, None);
    assert_eq!(store.get_code(&code).await.expect("get").map(|r| r.record.flow_id), Some(first.clone()));
    let fresh = AuthCode::new("FRESH".to_owned());
    assert_eq!(store.relay(&unknown, grace, Some(&fresh), ttl).await.expect("relay").map(|r| r.uses), None);
    assert!(store.get_code(&fresh).await.expect("get").is_none(), "a code sent with an unknown flow is not kept");
}

/// A value whose serialisation fails, as a map with a non-string key would.
struct Unserialisable;

impl Serialize for Unserialisable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("secret-looking content"))
    }
}

#[test]
fn a_record_that_cannot_be_serialised_is_an_error_naming_its_kind() {
    let store = store_with(&[Keyring::generate_line(1)]);
    let key = store.token_key("mp", "o1");
    let sealed = store.seal(&key, &Unserialisable);
    assert!(matches!(sealed, Err(StoreError::Seal { kind: "tok" })), "{sealed:?}");
    let error = sealed.map(|_| ()).expect_err("refused");
    assert!(!error.to_string().contains("secret"), "{error}");
    assert_eq!(ApiError::from(error), ApiError::Internal, "a bug in wxauth, not an outage");
}

/// Every event logged, as `LEVEL message operation=...`.
#[derive(Clone, Default)]
struct Events(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if matches!(field.name(), "message" | "operation") {
                    self.0.push_str(&format!(" {}={value:?}", field.name()));
                }
            }
        }
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        self.0.lock().expect("events").push(fields.0);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_store_call_is_logged_once_with_its_operation() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup installs it)");
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut store = None;
    for _ in 0..100 {
        let keys = Keyring::parse(&Keyring::generate_line(1)).expect("keyring");
        if let Ok(s) = Store::redis(std::slice::from_ref(&url), &RedisTls::default(), keys, "t", Metrics::new()).await {
            store = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = store.expect("connected to redis-server");
    redis.kill().expect("kill redis-server");
    redis.wait().expect("reaped");
    let events = Events::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));

    let error = store.get_token("mp", "o1").await.expect_err("Redis is gone");
    let logged = events.0.lock().expect("events").clone();
    let api = ApiError::from(error);

    assert_eq!(api, ApiError::StoreUnavailable);
    let failures: Vec<_> = logged.iter().filter(|e| e.contains("store call failed")).collect();
    assert_eq!(failures.len(), 1, "{logged:?}");
    assert!(failures[0].starts_with("WARN") && failures[0].contains("operation=\"get\""), "{logged:?}");
    assert_eq!(events.0.lock().expect("events").len(), logged.len(), "the conversion logs nothing");
}

#[test]
fn each_primitive_runs_in_a_span_named_after_it() {
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    for op in super::backend::Op::ALL {
        let span = op.span();
        let name = span.metadata().map(tracing::Metadata::name);
        assert_eq!(name, Some(format!("store.{}", op.name()).as_str()), "{op:?}");
    }
}

#[tokio::test]
async fn a_cached_profile_reads_back_in_its_own_form_and_in_the_json_of_earlier_versions() {
    // Arrange
    use crate::wechat::Lang;
    let store = store_with(&[Keyring::generate_line(1)]);
    let profile = crate::wechat::Profile {
        openid: "oAlice".into(),
        nickname: "Alice".into(),
        sex: 2,
        province: String::new(),
        city: String::new(),
        country: "CN".into(),
        headimgurl: String::new(),
        privilege: Vec::new(),
        unionid: Some("uAlice".into()),
    };
    let cached = CachedProfile { profile, fetched_at: 1_767_225_600 };
    let ttl = Duration::from_secs(300);
    // Act: this version's write, then a record as an earlier version wrote it (sealed JSON).
    store.put_profile("mp", "oAlice", Lang::ZhCn, &cached, ttl).await.expect("put");
    let key = store.profile_key("mp", "oBob", Lang::ZhCn);
    let old = store.seal(&key, &cached).expect("sealed JSON");
    store.call(backend::Op::Set, |b| b.set(&key, &old, ttl)).await.expect("set");
    // Assert
    let written = store.profile_key("mp", "oAlice", Lang::ZhCn);
    let sealed = store.call(backend::Op::Get, |b| b.get(&written)).await.expect("get").expect("stored");
    let plain = store.inner.keys.open(&written, &sealed).expect("opens");
    assert_eq!(plain[0], 1, "the profile's own form, not JSON");
    assert_eq!(store.get_profile("mp", "oAlice", Lang::ZhCn).await.expect("read"), Some(cached.clone()));
    assert_eq!(store.get_profile("mp", "oBob", Lang::ZhCn).await.expect("read old"), Some(cached.clone()));
    let (_, both) = store.get_reach_and_profile("mp", "oBob", "passport", Lang::ZhCn).await.expect("read two");
    assert_eq!(both, Some(cached), "the claim's read takes the JSON form too");
    assert_eq!(store.inner.metrics.unopenable_records.get(), 0);
}
