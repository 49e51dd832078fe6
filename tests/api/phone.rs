//! A mini program's phone number (issue 21): the button's code traded with the app's own token,
//! for clients granted `phone_number`, once per code, counted by app and client; kept only when
//! the client asks, found again by phone for clients granted `phone_lookup`, removed by
//! ForgetUser and a pushed revoke.

use sha2::{Digest as _, Sha256};
use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{AppKind, FindAccountsRequest, ForgetUserRequest, GetPhoneNumberRequest, GetPhoneNumberResponse};
use wxauth::sim::{Endpoint, Fault, PushEvent, PushFormat, PushTarget};

use crate::both_backends;
use crate::helpers::{Backend, MINI_APPID, PASSPORT_KEY, TestApp, authed, metadata, reason, spawn_app_configured};

const SHOP_KEY: &str = "phone-shop-test-key";

/// `shop`, a product of the mini program, granted `phone_number`.
fn shop() -> String {
    let digest = hex::encode(wxauth::config::key_digest(SHOP_KEY));
    format!(
        "[clients.shop]\nkey_sha256 = \"{digest}\"\napps = [\"mini\"]\nreturn_urls = [\"https://shop.example.com/\"]\n\
         grants = [\"phone_number\"]\nrate_limits = {{ authorize = \"off\", exchange = \"off\", user = \"off\" }}\n"
    )
}

async fn phone(app: &TestApp, key: &str, code: &str) -> Result<wxauth::proto::GetPhoneNumberResponse, tonic::Status> {
    let request = GetPhoneNumberRequest { app: "mini".into(), code: code.into(), ..Default::default() };
    app.grpc.clone().get_phone_number(authed(key, request)).await.map(tonic::Response::into_inner)
}

async fn scrape(app: &TestApp) -> String {
    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    metrics.text().await.expect("metrics text")
}

/// The button's code gives the user's number once; a second use is INVALID_CODE; every call is
/// counted by app and client, and the number is in no metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_code_gives_the_number_once_and_is_counted_by_app_and_client() {
    let app = spawn_app_configured(Backend::Memory, &shop()).await;
    let code = app.sim.phone_code(MINI_APPID, "alice").expect("a code");
    let number = app.sim.phone_number_of("alice").expect("alice's number");

    let answer = phone(&app, SHOP_KEY, &code).await.expect("the number");
    let again = phone(&app, SHOP_KEY, &code).await.expect_err("a code works once");

    assert_eq!((answer.phone_number.as_str(), answer.pure_phone_number.as_str()), (number.as_str(), number.as_str()));
    assert_eq!(answer.country_code, "86");
    assert_eq!((again.code(), reason(&again)), (Code::InvalidArgument, "INVALID_CODE".into()));
    assert_eq!(app.sim.calls(Endpoint::StableToken), 1, "one app token for both calls");
    let metrics = scrape(&app).await;
    assert!(metrics.contains(r#"wxauth_phone_numbers_total{app="mini",client="shop",result="ok"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"wxauth_phone_numbers_total{app="mini",client="shop",result="INVALID_CODE"} 1"#));
    assert!(!metrics.contains(&number), "the number is in no metric");
}

/// Without the grant: GRANT_MISSING, WeChat never asked. WeChat's refusals map: -1 (the code
/// may be spent) SIGN_IN_AGAIN, 1400001 the daily allowance, an expired code INVALID_CODE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_map_and_a_client_without_the_grant_is_denied() {
    let app = spawn_app_configured(Backend::Memory, &shop()).await;
    let code = app.sim.phone_code(MINI_APPID, "bob").expect("a code");

    let denied = phone(&app, PASSPORT_KEY, &code).await.expect_err("passport holds no grant");
    assert_eq!((denied.code(), reason(&denied)), (Code::PermissionDenied, "GRANT_MISSING".into()));
    assert_eq!(metadata(&denied, "grant").as_deref(), Some("phone_number"));
    assert_eq!(app.sim.calls(Endpoint::PhoneNumber), 0, "WeChat never asked");

    for (errcode, grpc, why) in [
        (-1, Code::FailedPrecondition, "SIGN_IN_AGAIN"),
        (1_400_001, Code::ResourceExhausted, "WECHAT_DAILY_QUOTA_EXHAUSTED"),
    ] {
        app.sim.inject(Endpoint::PhoneNumber, Fault::Errcode(errcode), 1);
        let refused = phone(&app, SHOP_KEY, &code).await.expect_err("refused");
        assert_eq!((refused.code(), reason(&refused)), (grpc, why.into()), "{errcode}");
    }
    app.advance(std::time::Duration::from_secs(301));
    let expired = phone(&app, SHOP_KEY, &code).await.expect_err("5 minutes passed");
    assert_eq!(reason(&expired), "INVALID_CODE");
}

const DESK_KEY: &str = "phone-desk-test-key";
const OFFICE_KEY: &str = "phone-office-test-key";
const MINI_PUSH_TOKEN: &str = "miniPushToken7";

/// Three products of the mini program: `shop` (users = "own", keeps numbers and looks them up),
/// `desk` (the same, for users it signs in itself) and `office` (users = "app", looks up only);
/// and the mini program's message push (plaintext JSON), for the revoke.
fn products() -> String {
    let digest = |key: &str| hex::encode(wxauth::config::key_digest(key));
    let client = |name: &str, key: &str, users: &str, grants: &str| {
        format!(
            "[clients.{name}]\nkey_sha256 = \"{}\"\napps = [\"mini\"]\nreturn_urls = [\"https://{name}.example.com/\"]\n\
             users = \"{users}\"\ngrants = [{grants}]\n\
             rate_limits = {{ authorize = \"off\", exchange = \"off\", user = \"off\" }}\n",
            digest(key)
        )
    };
    let both = "\"phone_number\", \"phone_lookup\"";
    [
        client("shop", SHOP_KEY, "own", both),
        client("desk", DESK_KEY, "own", both),
        client("office", OFFICE_KEY, "app", "\"phone_lookup\""),
        format!("[apps.mini.push]\ntoken = \"{MINI_PUSH_TOKEN}\"\n"),
    ]
    .concat()
}

async fn spawn_products(backend: Backend) -> TestApp {
    let app = spawn_app_configured(backend, &products()).await;
    let target = PushTarget {
        url: format!("http://{}/wechat/push/mini", app.public_addr),
        token: MINI_PUSH_TOKEN.into(),
        encoding_aes_key: None,
        format: PushFormat::Json,
    };
    app.sim.set_push_target(MINI_APPID, target);
    app
}

/// `user` signs in to the mini program through the client with `key`; their openid.
async fn sign_in(app: &TestApp, key: &str, user: &str) -> String {
    let js_code = app.sim.js_code(MINI_APPID, user).expect("js_code");
    app.mini_sign_in_as(key, &js_code).await.expect("mini sign-in").openid
}

/// GetPhoneNumber for `user`'s button, kept with `openid` when one is given.
async fn phone_kept(
    app: &TestApp,
    key: &str,
    user: &str,
    keep_with: Option<&str>,
) -> Result<GetPhoneNumberResponse, tonic::Status> {
    let code = app.sim.phone_code(MINI_APPID, user).expect("a code");
    let request = GetPhoneNumberRequest {
        app: "mini".into(),
        code,
        keep: keep_with.is_some(),
        openid: keep_with.unwrap_or_default().into(),
    };
    app.grpc.clone().get_phone_number(authed(key, request)).await.map(tonic::Response::into_inner)
}

/// FindAccounts by phone as the client with `key`: the openids found.
async fn by_phone(app: &TestApp, key: &str, pure: &str, country: &str) -> Result<Vec<String>, tonic::Status> {
    let request =
        FindAccountsRequest { pure_phone_number: pure.into(), country_code: country.into(), ..Default::default() };
    let found = app.grpc.clone().find_accounts(authed(key, request)).await?.into_inner().accounts;
    assert!(found.iter().all(|a| a.app == "mini" && a.kind == AppKind::MiniProgram as i32), "{found:?}");
    Ok(found.into_iter().map(|a| a.openid).collect())
}

/// Every key wxauth wrote to Redis with each value, to look for the number in clear or hashed.
async fn redis_dump(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let redis = app.redis.as_ref().expect("a Redis backend");
    let mut conn = redis.lock().await.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.expect("KEYS");
    let mut dump = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.expect("TYPE");
        let value: Vec<u8> = match kind.as_str() {
            "hash" => {
                let all: Vec<Vec<u8>> = redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await.expect("HGETALL");
                all.concat()
            }
            _ => redis::cmd("GET").arg(&key).query_async(&mut conn).await.unwrap_or_default(),
        };
        dump.push((key, value));
    }
    dump
}

/// The keys of kept numbers and of their index still in Redis.
async fn phone_keys(app: &TestApp) -> Vec<String> {
    redis_dump(app).await.into_iter().map(|(k, _)| k).filter(|k| k.contains(":phone:")).collect()
}

/// A number is kept only when the client asks, and then FindAccounts finds the account by phone
/// for a granted client that kept it (`users = "own"`) or reaches every user (`users = "app"`);
/// an ungranted client is refused; a `users = "own"` client that never signed the user in finds
/// nothing. In Redis the number is in no key and no value, neither in clear nor as its SHA-256.
async fn a_number_is_kept_only_when_asked_and_found_by_phone_for_granted_clients(backend: Backend) {
    let app = spawn_products(backend).await;
    let alice = sign_in(&app, SHOP_KEY, "alice").await;
    let number = app.sim.phone_number_of("alice").expect("alice's number");

    phone_kept(&app, SHOP_KEY, "alice", None).await.expect("the number, not kept");
    assert_eq!(by_phone(&app, SHOP_KEY, &number, "").await.expect("found"), Vec::<String>::new(), "not asked");
    assert_eq!(by_phone(&app, OFFICE_KEY, &number, "86").await.expect("found"), Vec::<String>::new());
    let answer = phone_kept(&app, SHOP_KEY, "alice", Some(&alice)).await.expect("the number, kept");
    assert_eq!(answer.pure_phone_number, number);

    assert_eq!(by_phone(&app, SHOP_KEY, &number, "").await.expect("found"), [alice.as_str()]);
    assert_eq!(by_phone(&app, SHOP_KEY, &number, "86").await.expect("found"), [alice.as_str()]);
    assert_eq!(by_phone(&app, OFFICE_KEY, &number, "").await.expect("found"), [alice.as_str()], "users = app");
    assert!(by_phone(&app, SHOP_KEY, &number, "852").await.expect("found").is_empty(), "another country");
    assert!(by_phone(&app, SHOP_KEY, "13800000000", "").await.expect("found").is_empty(), "another number");
    assert!(by_phone(&app, DESK_KEY, &number, "").await.expect("found").is_empty(), "desk never signed her in");
    let denied = by_phone(&app, PASSPORT_KEY, &number, "").await.expect_err("passport holds no phone_lookup");
    assert_eq!((denied.code(), reason(&denied)), (Code::PermissionDenied, "GRANT_MISSING".into()));
    assert_eq!(metadata(&denied, "grant").as_deref(), Some("phone_lookup"));
    // desk signs her in but never kept her number: still nothing (the number was shop's).
    sign_in(&app, DESK_KEY, "alice").await;
    assert!(by_phone(&app, DESK_KEY, &number, "").await.expect("found").is_empty(), "desk kept nothing");

    if backend == Backend::Redis {
        let dump = redis_dump(&app).await;
        let sha = |text: &str| hex::encode(Sha256::digest(text.as_bytes()));
        let hashes = [sha(&number), sha(&format!("86{number}")), sha(&format!("+86{number}"))];
        assert!(dump.iter().any(|(k, _)| k.starts_with("wxauth:phone:")), "the index is in Redis");
        for (key, value) in &dump {
            assert!(!key.contains(&number) && !value.windows(number.len()).any(|w| w == number.as_bytes()), "{key}");
            assert!(hashes.iter().all(|h| !key.contains(h)), "{key} is a plain hash of the number");
        }
    }
}

/// ForgetUser of a `users = "own"` client drops its own entry (another product that kept the
/// number still finds the user); the last one's ForgetUser, and a pushed revoke, remove the
/// number and every index entry.
async fn forget_user_and_a_pushed_revoke_remove_the_number_and_its_index(backend: Backend) {
    let app = spawn_products(backend).await;
    let number = app.sim.phone_number_of("alice").expect("alice's number");
    let alice = sign_in(&app, SHOP_KEY, "alice").await;
    sign_in(&app, DESK_KEY, "alice").await;
    phone_kept(&app, SHOP_KEY, "alice", Some(&alice)).await.expect("kept by shop");
    phone_kept(&app, DESK_KEY, "alice", Some(&alice)).await.expect("kept by desk");
    let forget = |key: &'static str, openid: String| {
        let request = ForgetUserRequest { app: "mini".into(), openid, ..Default::default() };
        let mut grpc = app.grpc.clone();
        async move { grpc.forget_user(authed(key, request)).await.expect("forgotten").into_inner() }
    };

    forget(SHOP_KEY, alice.clone()).await;
    assert!(by_phone(&app, SHOP_KEY, &number, "").await.expect("found").is_empty(), "shop forgot her");
    assert_eq!(by_phone(&app, DESK_KEY, &number, "").await.expect("found"), [alice.as_str()], "desk kept her");
    assert!(app.store.get_phone("mini", &alice).await.expect("store").is_some(), "desk still reaches her");
    forget(DESK_KEY, alice.clone()).await;
    assert!(by_phone(&app, OFFICE_KEY, &number, "").await.expect("found").is_empty(), "nobody reaches her");
    assert!(app.store.get_phone("mini", &alice).await.expect("store").is_none(), "her number is gone");
    assert!(app.store.phone_entries("86", &number).await.expect("store").is_empty(), "and its index entries");

    let bob_number = app.sim.phone_number_of("bob").expect("bob's number");
    let bob = sign_in(&app, SHOP_KEY, "bob").await;
    phone_kept(&app, SHOP_KEY, "bob", Some(&bob)).await.expect("kept");
    assert_eq!(by_phone(&app, OFFICE_KEY, &bob_number, "").await.expect("found"), [bob.as_str()]);
    let pushed = app.sim.push_event(MINI_APPID, "bob", PushEvent::AuthorizationRevoke).await.expect("pushed");
    assert_eq!(pushed, (200, "success".to_owned()));
    assert!(by_phone(&app, OFFICE_KEY, &bob_number, "").await.expect("found").is_empty(), "revoked");
    assert!(app.store.get_phone("mini", &bob).await.expect("store").is_none());
    assert!(app.store.phone_entries("86", &bob_number).await.expect("store").is_empty());
    if backend == Backend::Redis {
        assert_eq!(phone_keys(&app).await, Vec::<String>::new(), "no number and no index left in Redis");
    }
}

both_backends!(
    a_number_is_kept_only_when_asked_and_found_by_phone_for_granted_clients,
    forget_user_and_a_pushed_revoke_remove_the_number_and_its_index,
);

/// A number is kept only with a user the client reaches, checked before WeChat is asked (the
/// code is not spent); `keep` needs an openid and an openid needs `keep`; FindAccounts takes
/// one of unionid and a number of digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_is_kept_only_with_a_user_the_client_reaches_and_requests_are_checked() {
    let app = spawn_products(Backend::Memory).await;
    let bob = app.mini_login("bob").await.openid; // passport's user, not shop's

    let code = app.sim.phone_code(MINI_APPID, "bob").expect("a code");
    let keep = |code: &str, keep: bool, openid: &str| GetPhoneNumberRequest {
        app: "mini".into(),
        code: code.into(),
        keep,
        openid: openid.into(),
    };
    let not_reached = app.grpc.clone().get_phone_number(authed(SHOP_KEY, keep(&code, true, &bob))).await;
    let not_reached = not_reached.expect_err("shop does not reach bob");
    assert_eq!((not_reached.code(), reason(&not_reached)), (Code::NotFound, "TOKEN_NOT_FOUND".into()));
    let unknown = app.grpc.clone().get_phone_number(authed(OFFICE_KEY, keep(&code, true, "oNobody"))).await;
    assert_eq!(unknown.expect_err("office holds no phone_number").code(), Code::PermissionDenied);
    assert_eq!(app.sim.calls(Endpoint::PhoneNumber), 0, "WeChat never asked: the code is unspent");
    for (request, field) in [(keep(&code, true, ""), "openid"), (keep(&code, false, &bob), "openid")] {
        let refused = app.grpc.clone().get_phone_number(authed(SHOP_KEY, request)).await.expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument);
        let fields: Vec<_> = refused
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, [field]);
    }
    app.grpc.clone().get_phone_number(authed(SHOP_KEY, keep(&code, false, ""))).await.expect("the code still works");

    for (unionid, pure, country) in [("oUnion", "13800138000", ""), ("", "138-0013", ""), ("", "1380", "+86")] {
        let request = FindAccountsRequest {
            unionid: unionid.into(),
            pure_phone_number: pure.into(),
            country_code: country.into(),
        };
        let refused = app.grpc.clone().find_accounts(authed(OFFICE_KEY, request)).await.expect_err("invalid");
        assert_eq!(refused.code(), Code::InvalidArgument, "{unionid} {pure} {country}");
    }
}
