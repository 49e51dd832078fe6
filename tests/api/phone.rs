//! A mini program's phone number (issue 21): the button's code traded with the app's own token,
//! for clients granted `phone_number`, once per code, counted by app and client.

use tonic::Code;
use wxauth::proto::GetPhoneNumberRequest;
use wxauth::sim::{Endpoint, Fault};

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
    let request = GetPhoneNumberRequest { app: "mini".into(), code: code.into() };
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
