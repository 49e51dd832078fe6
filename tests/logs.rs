//! The logs of a whole flow, captured at debug level (trace for wxauth itself), hold none of
//! that flow's secrets: appsecret, client key, code, access and refresh tokens, sealing key.
//!
//! Nor does a phone number a product had kept and looked up (issue 21).
//!
//! Its own test binary: it installs the process-wide subscriber.

#[allow(dead_code, unused_macros)]
#[path = "api/helpers.rs"]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use wxauth::proto::{
    BuildAuthorizeUrlRequest, FindAccountsRequest, GetPhoneNumberRequest, RefreshTokenRequest, Scope,
    ValidateTokenRequest,
};

use helpers::{Backend, MINI_APPID, MP_APPID, PASSPORT_KEY, spawn_app_configured};

const SHOP_KEY: &str = "logs-shop-test-key";

/// `shop`, which keeps mini program users' phone numbers and looks them up.
fn shop() -> String {
    let digest = hex::encode(wxauth::config::key_digest(SHOP_KEY));
    format!(
        "[clients.shop]\nkey_sha256 = \"{digest}\"\napps = [\"mini\"]\nreturn_urls = [\"https://shop.example.com/\"]\n\
         grants = [\"phone_number\", \"phone_lookup\"]\n"
    )
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_flow_logs_no_secret() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("debug,wxauth=trace")
        .with_writer(logs.clone())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .init();

    let app = spawn_app_configured(Backend::Redis, &shop()).await;
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiUserinfo as i32,
        state: "product-csrf".into(),
        ..Default::default()
    };
    let flow = app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner().flow_id;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    assert_eq!(app.callback(&format!("code={code}&state={flow}")).await.status(), 302);
    let code = helpers::Relayed { flow_id: flow, code };
    let login = app.exchange("mp", &code).await.expect("exchange");
    let first = app.store.get_token("mp", &login.openid).await.expect("store").expect("record");
    app.user_info(&login.openid).await.expect("profile");
    let refresh = RefreshTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    app.grpc.clone().refresh_token(app.req(refresh)).await.expect("refresh");
    let second = app.store.get_token("mp", &login.openid).await.expect("store").expect("record");
    let validate = ValidateTokenRequest { app: "mp".into(), openid: login.openid.clone(), device: 0 };
    app.grpc.clone().validate_token(app.req(validate)).await.expect("validate");
    app.exchange("mp", &code).await.expect("idempotent repeat");
    let bogus = app.relayed("mp", "alice", "snsapi_userinfo").await.flow_id;
    app.relay(&bogus, "AnotherBogusCode123").await;
    app.exchange_as(PASSPORT_KEY, "mp", &bogus, "AnotherBogusCode123").await.expect_err("40029");
    let wrong_key = helpers::authed("wrong-client-key-value", wxauth::proto::GetUserInfoRequest::default());
    app.grpc.clone().get_user_info(wrong_key).await.expect_err("unauthenticated");
    let js_code = app.sim.js_code(MINI_APPID, "alice").expect("js_code");
    let mini = app.mini_sign_in_as(SHOP_KEY, &js_code).await.expect("mini sign-in");
    let phone_code = app.sim.phone_code(MINI_APPID, "alice").expect("phone code");
    let number = app.sim.phone_number_of("alice").expect("alice's number");
    let keep = GetPhoneNumberRequest { app: "mini".into(), code: phone_code.clone(), keep: true, openid: mini.openid };
    app.grpc.clone().get_phone_number(helpers::authed(SHOP_KEY, keep)).await.expect("kept");
    let lookup = FindAccountsRequest { pure_phone_number: number.clone(), ..Default::default() };
    let found = app.grpc.clone().find_accounts(helpers::authed(SHOP_KEY, lookup)).await.expect("found");
    assert_eq!(found.into_inner().accounts.len(), 1);

    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(text.contains("flow created") && text.contains("relayed"), "the logs were captured:\n{text}");
    assert!(text.contains("phone number kept"), "the keep's logs were captured too");
    let sealing_key = helpers::test_keyring();
    let secrets = [
        ("appsecret", "demo-mp-secret"),
        ("client key", PASSPORT_KEY),
        ("wrong client key", "wrong-client-key-value"),
        ("code", code.code.as_str()),
        ("bogus code", "AnotherBogusCode123"),
        ("access token", first.access_token.secret()),
        ("refreshed access token", second.access_token.secret()),
        ("refresh token", first.refresh_token.secret()),
        ("sealing key", sealing_key.split_once(':').map(|(_, k)| k).unwrap_or_default()),
        ("caller state", "product-csrf"),
        ("phone code", phone_code.as_str()),
        ("phone number", number.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret), "the {what} appears in the logs");
    }
}
