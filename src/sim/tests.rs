//! The simulator's behaviour over real HTTP (reqwest against a simulator on 127.0.0.1:0, no
//! redirects followed), with its clock moved instead of slept on.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use super::state::Api;
use super::*;

const MP: &str = "wxd0000000000000a1";
const MP_SECRET: &str = "demo-mp-secret";
const WEB: &str = "wxd0000000000000b2";
const WEB_SECRET: &str = "demo-web-secret";
const CALLBACK: &str = "http://127.0.0.1:8080/wechat/callback";
const THIRTY_DAYS: u64 = 30 * 24 * 3600;

struct TestSim {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
}

async fn spawn() -> TestSim {
    spawn_with(SimConfig::demo()).await
}

async fn spawn_with(config: SimConfig) -> TestSim {
    let (sim, addr) = Simulator::spawn_local(config).await.unwrap();
    // A browser inside WeChat: official-account pages open nowhere else.
    let http = crate::http_client()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(super::WECHAT_BROWSER_UA)
        .build()
        .unwrap();
    TestSim { sim, base: format!("http://{addr}"), http }
}

/// A config with one official account on `auth.example.com`, optionally not unionid-bound.
fn example_config(unionid_bound: bool) -> SimConfig {
    let mut config = SimConfig::demo();
    config.apps = vec![SimApp {
        appid: "wx1111111111111111".into(),
        secret: "s3cret".into(),
        kind: SimAppKind::OfficialAccount,
        callback_domain: "auth.example.com".into(),
        unionid_bound,
    }];
    config
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An authorize-page path with the parameters in WeChat's order.
fn page_path(page: &str, appid: &str, redirect_uri: &str, scope: &str, state: &str) -> String {
    format!(
        "/connect/{page}?appid={appid}&redirect_uri={}&response_type=code&scope={scope}&state={state}",
        enc(redirect_uri)
    )
}

fn oauth2(appid: &str, redirect_uri: &str, scope: &str, state: &str) -> String {
    page_path("oauth2/authorize", appid, redirect_uri, scope, state) + "&connect_redirect=1"
}

fn errcode(body: &Value) -> i64 {
    body["errcode"].as_i64().unwrap_or(0)
}

/// WeChat's error shape: errcode plus an errmsg carrying a request id.
fn assert_error(body: &Value, code: i64) {
    assert_eq!(errcode(body), code, "{body}");
    let errmsg = body["errmsg"].as_str().unwrap();
    assert!(errmsg.contains(", rid: "), "{errmsg}");
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
}

fn location(response: &reqwest::Response) -> String {
    response.headers()[LOCATION].to_str().unwrap().to_owned()
}

/// The value of `name=` in a URL query (codes and states are alphanumeric).
fn query_value(url: &str, name: &str) -> String {
    let (_, query) = url.split_once('?').unwrap();
    query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).unwrap().to_owned()
}

impl TestSim {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
        response.text().await.unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).form(fields).send().await.unwrap()
    }

    async fn exchange(&self, appid: &str, secret: &str, code: &str) -> Value {
        self.json(&format!(
            "/sns/oauth2/access_token?appid={appid}&secret={secret}&code={code}&grant_type=authorization_code"
        ))
        .await
    }

    async fn refresh(&self, appid: &str, refresh_token: &str) -> Value {
        self.json(&format!(
            "/sns/oauth2/refresh_token?appid={appid}&grant_type=refresh_token&refresh_token={refresh_token}"
        ))
        .await
    }

    async fn userinfo(&self, token: &Value, lang: &str) -> Value {
        self.json(&format!(
            "/sns/userinfo?access_token={}&openid={}{lang}",
            token["access_token"].as_str().unwrap(),
            token["openid"].as_str().unwrap()
        ))
        .await
    }

    async fn auth(&self, token: &Value) -> Value {
        self.json(&format!(
            "/sns/auth?access_token={}&openid={}",
            token["access_token"].as_str().unwrap(),
            token["openid"].as_str().unwrap()
        ))
        .await
    }

    /// Consent without a browser, then the code exchange.
    async fn login(&self, appid: &str, secret: &str, user: &str, scope: &str) -> Value {
        let code = self.sim.authorize(appid, user, scope).unwrap();
        let token = self.exchange(appid, secret, &code).await;
        assert_eq!(errcode(&token), 0, "{token}");
        token
    }

    /// Submits the consent page's form as a browser would.
    async fn decide(&self, page: &str, decision: &str, redirect_uri: &str) -> reqwest::Response {
        self.post_form(
            &format!("/connect/{page}/confirm"),
            &[
                ("appid", MP),
                ("redirect_uri", redirect_uri),
                ("scope", "snsapi_userinfo"),
                ("state", "st8"),
                ("decision", decision),
                ("user", "alice"),
            ],
        )
        .await
    }
}

fn is_bad_link(page: &str) -> bool {
    page.contains("该链接无法访问") && !page.contains("id=\"allow\"")
}

// ---- authorize pages ----

#[tokio::test]
async fn consent_page_offers_users_with_allow_and_deny_forms() {
    let t = spawn().await;

    let page = t.page(&oauth2(MP, CALLBACK, "snsapi_userinfo", "abc123")).await;

    assert!(page.contains("<button type=\"submit\" id=\"allow\">"), "{page}");
    assert!(page.contains("<button type=\"submit\" id=\"deny\">"), "{page}");
    assert_eq!(page.matches("<form method=\"post\" action=\"/connect/oauth2/authorize/confirm\">").count(), 2);
    assert!(page.contains("<input type=\"radio\" name=\"user\" value=\"alice\" checked> Alice 爱丽丝</label>"));
    assert!(page.contains("<input type=\"radio\" name=\"user\" value=\"bob\"> Bob</label>"));
    assert!(page.contains("value=\"snap\"> 微信用户</label>"), "snapshot users come from snsapi_userinfo pages");
    assert!(
        page.contains("<input type=\"hidden\" name=\"redirect_uri\" value=\"http://127.0.0.1:8080/wechat/callback\">")
    );
    assert!(page.contains("<input type=\"hidden\" name=\"state\" value=\"abc123\">"));
}

/// Outside WeChat's in-app browser an official account's page shows "请在微信客户端打开链接" and
/// no consent; the website QR page opens in any browser.
#[tokio::test]
async fn official_account_pages_open_only_inside_wechat() {
    let t = spawn().await;
    let desktop = crate::http_client()
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36")
        .build()
        .unwrap();

    let outside =
        desktop.get(format!("{}{}", t.base, oauth2(MP, CALLBACK, "snsapi_userinfo", "s"))).send().await.unwrap();
    let qr = desktop.get(format!("{}{}", t.base, page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s")));

    assert_eq!(outside.status(), StatusCode::OK);
    let page = outside.text().await.unwrap();
    assert!(page.contains("请在微信客户端打开链接"), "{page}");
    assert!(!page.contains("id=\"allow\""), "no consent outside WeChat");
    assert!(qr.send().await.unwrap().text().await.unwrap().contains("id=\"allow\""));
    assert!(t.page(&oauth2(MP, CALLBACK, "snsapi_userinfo", "s")).await.contains("id=\"allow\""), "inside WeChat");
}

/// WeCom's (企业微信) browser says `MicroMessenger` (with `wxwork`), yet an official account's
/// link shows "请在微信客户端打开链接" there (issue 20); its QR page opens.
#[tokio::test]
async fn official_account_pages_refuse_wecoms_browser() {
    let t = spawn().await;
    let wecom = crate::http_client().user_agent(crate::sim::WECOM_BROWSER_UA).build().unwrap();

    let page = wecom.get(format!("{}{}", t.base, oauth2(MP, CALLBACK, "snsapi_base", "s"))).send().await.unwrap();
    let qr = wecom.get(format!("{}{}", t.base, page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s")));

    let page = page.text().await.unwrap();
    assert!(page.contains("请在微信客户端打开链接") && !page.contains("id=\"allow\""), "{page}");
    assert!(qr.send().await.unwrap().text().await.unwrap().contains("id=\"allow\""));
    assert!(crate::sim::WECOM_BROWSER_UA.contains("MicroMessenger"), "the trap: it says MicroMessenger");
}

#[tokio::test]
async fn snapshot_user_is_not_offered_for_snsapi_base() {
    let t = spawn().await;

    let page = t.page(&oauth2(MP, CALLBACK, "snsapi_base", "s")).await;

    assert!(!page.contains("value=\"snap\""), "a silent snsapi_base page has no snapshot mode: {page}");
}

#[tokio::test]
async fn malformed_authorize_links_show_the_unreachable_link_page() {
    let t = spawn().await;
    let cb = enc(CALLBACK);
    let long_state = "a".repeat(129);
    let cases = [
        format!("/connect/oauth2/authorize?redirect_uri={cb}&appid={MP}&response_type=code&scope=snsapi_base&state=s"),
        format!("/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&scope=snsapi_base&response_type=code&state=s"),
        format!("/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base"),
        format!(
            "/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state=s&state=t"
        ),
        format!(
            "/connect/oauth2/authorize?appid={MP}&appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state=s"
        ),
        format!("/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=token&scope=snsapi_base&state=s"),
        format!(
            "/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state={long_state}"
        ),
        format!(
            "/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state=a-b"
        ),
        format!(
            "/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state=s&lang=en"
        ),
        format!(
            "/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state=s&connect_redirect=1&connect_redirect=1"
        ),
        format!(
            "/connect/oauth2/authorize?appid={MP}&redirect_uri={cb}&response_type=code&scope=snsapi_base&state=s&forcePopup=maybe"
        ),
        format!(
            "/connect/qrconnect?appid={WEB}&redirect_uri={cb}&response_type=code&scope=snsapi_login&state=s&login_type=other"
        ),
        format!(
            "/connect/qrconnect?appid={WEB}&redirect_uri={cb}&response_type=code&scope=snsapi_login&state=s&connect_redirect=1"
        ),
        // forcePopup is not a qrconnect parameter (issue 20); lang is cn or en.
        format!(
            "/connect/qrconnect?appid={WEB}&redirect_uri={cb}&response_type=code&scope=snsapi_login&state=s&forcePopup=true"
        ),
        format!(
            "/connect/qrconnect?appid={WEB}&redirect_uri={cb}&response_type=code&scope=snsapi_login&state=s&lang=fr"
        ),
        "/connect/oauth2/authorize".to_owned(),
        "/connect/qrconnect?%FF%FE=%00&&&=".to_owned(),
    ];

    for path in &cases {
        let page = t.page(path).await;
        assert!(is_bad_link(&page), "{path}: {page}");
    }
}

#[tokio::test]
async fn optional_parameters_are_accepted_in_either_order_after_state() {
    let t = spawn().await;
    let base = page_path("oauth2/authorize", MP, CALLBACK, "snsapi_base", "s");
    let cases = [
        base.clone(),
        format!("{base}&forcePopup=true"),
        format!("{base}&connect_redirect=1"),
        format!("{base}&forcePopup=true&connect_redirect=1"),
        format!("{base}&connect_redirect=1&forcePopup=true"),
        format!("{base}&forcePopup=false"),
        // The 快照页 notice's parameter on official-account links (issue 20).
        format!("{base}&forceSnapShot=true&connect_redirect=1"),
        // qrconnect's `lang`: cn (the default) or en (issue 20).
        page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s") + "&lang=cn",
        page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s") + "&lang=en",
        // What wxLogin.js puts on the QR link it frames (WeChat accepts these).
        page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s")
            + "&login_type=jssdk&self_redirect=false&style=black&href=https%3A%2F%2Fa.example%2Fqr.css",
        page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s") + "&self_redirect=true&stylelite=1&fast_login=0",
        page_path("qrconnect", WEB, CALLBACK, "snsapi_login", &"Z9".repeat(64)),
    ];

    for path in &cases {
        let page = t.page(path).await;
        assert!(page.contains("id=\"allow\""), "{path}: {page}");
    }
}

#[tokio::test]
async fn unknown_appid_shows_an_error_page() {
    let t = spawn().await;

    let page = t.page(&oauth2("wx0000000000000000", CALLBACK, "snsapi_base", "s")).await;

    assert!(page.contains("appid参数错误"), "{page}");
    assert!(!page.contains("id=\"allow\""));
}

/// WeChat's 10016: a website (open-platform) appid on the official-account authorize page.
#[tokio::test]
async fn a_website_appid_on_the_official_account_page_shows_10016() {
    let t = spawn().await;

    let page = t.page(&oauth2(WEB, CALLBACK, "snsapi_login", "s")).await;

    assert!(page.contains("10016 不支持微信开放平台的Appid，请使用公众号Appid"), "{page}");
    assert!(!page.contains("id=\"allow\""));
}

#[tokio::test]
async fn redirect_uri_off_the_callback_domain_shows_10003() {
    let t = spawn_with(example_config(true)).await;
    let app = "wx1111111111111111";
    let rejected = [
        "https://evil.com/wechat/callback",
        "https://pay.auth.example.com/wechat/callback",
        "https://example.com/wechat/callback",
        "https://auth.example.com.evil.com/wechat/callback",
        "https://evil.com/?https://auth.example.com/",
        "ftp://auth.example.com/wechat/callback",
        "//auth.example.com/wechat/callback",
        "/wechat/callback",
        "not a url",
        "",
    ];
    let accepted =
        ["https://auth.example.com/wechat/callback", "http://auth.example.com:8443/x?y=1", "https://AUTH.example.com/"];

    for uri in rejected {
        let page = t.page(&oauth2(app, uri, "snsapi_base", "s")).await;
        assert!(page.contains("10003 redirect_uri域名与后台配置不一致"), "{uri}: {page}");
    }
    for uri in accepted {
        let page = t.page(&oauth2(app, uri, "snsapi_base", "s")).await;
        assert!(page.contains("id=\"allow\""), "{uri}: {page}");
    }
}

#[tokio::test]
async fn callback_domain_with_a_port_requires_that_port() {
    let t = spawn().await;

    for uri in [
        "http://127.0.0.1:9090/wechat/callback",
        "http://127.0.0.1/wechat/callback",
        "http://localhost:8080/wechat/callback",
    ] {
        let page = t.page(&oauth2(MP, uri, "snsapi_base", "s")).await;
        assert!(page.contains("10003"), "{uri}: {page}");
    }
}

#[tokio::test]
async fn scope_the_app_or_page_lacks_shows_10005() {
    let t = spawn().await;
    let cases = [
        oauth2(MP, CALLBACK, "snsapi_login", "s"),
        oauth2(MP, CALLBACK, "snsapi_everything", "s"),
        oauth2(MP, CALLBACK, "snsapi_base,snsapi_userinfo", "s"),
        page_path("qrconnect", WEB, CALLBACK, "snsapi_base", "s"),
        page_path("qrconnect", MP, CALLBACK, "snsapi_userinfo", "s"),
        page_path("qrconnect", MP, CALLBACK, "snsapi_login", "s"),
    ];

    for path in &cases {
        let page = t.page(path).await;
        assert!(page.contains("10005"), "{path}: {page}");
        assert!(!page.contains("id=\"allow\""));
    }
}

#[tokio::test]
async fn allow_redirects_with_code_and_state() {
    let t = spawn().await;

    let response = t.decide("oauth2/authorize", "allow", CALLBACK).await;

    assert_eq!(response.status(), StatusCode::FOUND);
    let location = location(&response);
    let code = query_value(&location, "code");
    assert_eq!(location, format!("{CALLBACK}?code={code}&state=st8"));
    assert_eq!(code.len(), 32);
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()));
    let token = t.exchange(MP, MP_SECRET, &code).await;
    assert_eq!(token["openid"], json!(t.sim.openid(MP, "alice").unwrap()));
    assert_eq!(token["scope"], "snsapi_userinfo");
}

#[tokio::test]
async fn allow_keeps_the_query_redirect_uri_already_has() {
    let t = spawn().await;
    let uri = "http://127.0.0.1:8080/wechat/callback?from=menu&x=%E4%B8%AD";

    let response = t.decide("oauth2/authorize", "allow", uri).await;

    let location = location(&response);
    let code = query_value(&location, "code");
    assert_eq!(location, format!("{uri}&code={code}&state=st8"));
}

/// Older docs, and still seen in the field: Deny calls back with `state` only. An option now
/// (issue 20).
#[tokio::test]
async fn deny_redirects_with_state_only_when_set_to_the_old_behaviour() {
    let t = spawn().await;
    t.sim.set_deny_stays(false);

    let response = t.decide("oauth2/authorize", "deny", CALLBACK).await;

    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(location(&response), format!("{CALLBACK}?state=st8"));
}

/// WeChat today, the default (issue 20): Deny leaves the user on WeChat's page, with no
/// callback, on an official account's page and on a website app's QR login alike.
#[tokio::test]
async fn deny_stays_on_wechats_page_by_default() {
    let t = spawn().await;

    let stays = t.decide("oauth2/authorize", "deny", CALLBACK).await;
    let qr_form = [
        ("appid", WEB),
        ("redirect_uri", CALLBACK),
        ("scope", "snsapi_login"),
        ("state", "st8"),
        ("decision", "deny"),
        ("user", "alice"),
    ];
    let qr = t.post_form("/connect/qrconnect/confirm", &qr_form).await;

    assert_eq!(stays.status(), StatusCode::OK);
    assert!(stays.headers().get("location").is_none(), "no callback");
    assert!(stays.text().await.unwrap().contains("你已拒绝授权"));
    assert_eq!(qr.status(), StatusCode::OK, "a denied QR login does not redirect");
    assert!(qr.headers().get("location").is_none());
    assert!(qr.text().await.unwrap().contains("id=\"denied\""));
}

#[tokio::test]
async fn consent_forms_are_checked_again() {
    let t = spawn().await;
    let confirm = "/connect/oauth2/authorize/confirm";
    let form = |redirect_uri, scope, user, decision| {
        vec![
            ("appid", MP),
            ("redirect_uri", redirect_uri),
            ("scope", scope),
            ("state", "s"),
            ("decision", decision),
            ("user", user),
        ]
    };

    let evil = t.post_form(confirm, &form("https://evil.com/", "snsapi_base", "alice", "allow")).await;
    let nobody = t.post_form(confirm, &form(CALLBACK, "snsapi_base", "mallory", "allow")).await;
    let snap = t.post_form(confirm, &form(CALLBACK, "snsapi_base", "snap", "allow")).await;
    let login = t.post_form(confirm, &form(CALLBACK, "snsapi_login", "alice", "allow")).await;
    let undecided = t.post_form(confirm, &form(CALLBACK, "snsapi_base", "alice", "maybe")).await;
    let website = t.post_form("/connect/qrconnect/confirm", &form(CALLBACK, "snsapi_base", "alice", "allow")).await;
    let empty = t.post_form(confirm, &[]).await;

    assert!(evil.text().await.unwrap().contains("10003"));
    assert!(is_bad_link(&nobody.text().await.unwrap()));
    assert!(is_bad_link(&snap.text().await.unwrap()));
    assert!(login.text().await.unwrap().contains("10005"));
    assert!(is_bad_link(&undecided.text().await.unwrap()));
    assert!(website.text().await.unwrap().contains("10005"));
    assert!(empty.text().await.unwrap().contains("appid参数错误"));
}

#[tokio::test]
async fn consent_page_escapes_what_it_echoes() {
    let t = spawn().await;
    let uri = "http://127.0.0.1:8080/cb?x=\"><script>alert('x')</script>&y=<b>";

    let page = t.page(&oauth2(MP, uri, "snsapi_base", "s")).await;

    assert!(!page.contains("<script>") && !page.contains("<b>"), "{page}");
    assert!(page.contains("value=\"http://127.0.0.1:8080/cb?x=&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;y=&lt;b&gt;\""), "{page}");
}

#[tokio::test]
async fn double_callback_page_fetches_the_first_code_then_lands_on_the_second() {
    let t = spawn().await;
    t.sim.set_double_callback(true);

    let response = t.decide("oauth2/authorize", "allow", CALLBACK).await;

    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    let url_after = |marker: &str| {
        let start = page.find(marker).unwrap() + marker.len();
        page[start..].split('"').next().unwrap().to_owned()
    };
    let first = query_value(&url_after("fetch(\""), "code");
    let second = query_value(&url_after("location.replace(\""), "code");
    assert_ne!(first, second);
    assert!(
        page.contains(&format!(
            "await fetch(\"{CALLBACK}?code={first}&state=st8\", {{credentials: \"include\", mode: \"no-cors\"}})"
        )),
        "{page}"
    );
    assert!(page.contains(&format!("location.replace(\"{CALLBACK}?code={second}&state=st8\")")), "{page}");
    assert!(page.contains(&format!("<noscript><meta http-equiv=\"refresh\" content=\"0;url={CALLBACK}?code={second}&amp;state=st8\"></noscript>")), "{page}");
    for code in [&first, &second] {
        assert_eq!(errcode(&t.exchange(MP, MP_SECRET, code).await), 0);
    }
}

#[tokio::test]
async fn qr_login_page_issues_a_login_code_with_unionid() {
    let t = spawn().await;
    let page = t.page(&page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "q1")).await;
    assert!(page.contains("action=\"/connect/qrconnect/confirm\""));
    let form = [
        ("appid", WEB),
        ("redirect_uri", CALLBACK),
        ("scope", "snsapi_login"),
        ("state", "q1"),
        ("decision", "allow"),
        ("user", "bob"),
    ];

    let response = t.post_form("/connect/qrconnect/confirm", &form).await;

    let code = query_value(&location(&response), "code");
    let token = t.exchange(WEB, WEB_SECRET, &code).await;
    assert_eq!(token["scope"], "snsapi_login");
    assert_eq!(token["unionid"], json!(t.sim.unionid("bob")));
    assert_eq!(token["openid"], json!(t.sim.openid(WEB, "bob").unwrap()));
}

// ---- codes ----

#[tokio::test]
async fn code_exchange_answers_tokens_in_wechats_shape() {
    let t = spawn().await;
    let code = t.sim.authorize(MP, "alice", "snsapi_userinfo").unwrap();

    let token = t.exchange(MP, MP_SECRET, &code).await;

    let access = token["access_token"].as_str().unwrap();
    let refresh = token["refresh_token"].as_str().unwrap();
    for t in [access, refresh] {
        assert_eq!(t.len(), 80);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
    assert_ne!(access, refresh);
    assert_eq!(
        token,
        json!({
            "access_token": access,
            "expires_in": 7200,
            "refresh_token": refresh,
            "openid": t.sim.openid(MP, "alice").unwrap(),
            "scope": "snsapi_userinfo",
            "unionid": t.sim.unionid("alice"),
        })
    );
}

#[tokio::test]
async fn used_code_answers_40163() {
    let t = spawn().await;
    let code = t.sim.authorize(MP, "alice", "snsapi_base").unwrap();
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &code).await), 0);

    let again = t.exchange(MP, MP_SECRET, &code).await;

    assert_error(&again, 40163);
}

#[tokio::test]
async fn official_account_code_expires_after_300_seconds() {
    let t = spawn().await;
    let late = t.sim.authorize(MP, "alice", "snsapi_base").unwrap();
    let on_time = t.sim.authorize(MP, "bob", "snsapi_base").unwrap();
    t.sim.advance(Duration::from_secs(299));
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &on_time).await), 0);

    t.sim.advance(Duration::from_secs(2));

    assert_error(&t.exchange(MP, MP_SECRET, &late).await, 40029);
}

#[tokio::test]
async fn website_code_lives_600_seconds() {
    let t = spawn().await;
    let early = t.sim.authorize(WEB, "alice", "snsapi_login").unwrap();
    let late = t.sim.authorize(WEB, "bob", "snsapi_login").unwrap();

    t.sim.advance(Duration::from_secs(301));
    let at_301 = t.exchange(WEB, WEB_SECRET, &early).await;
    t.sim.advance(Duration::from_secs(300));
    let at_601 = t.exchange(WEB, WEB_SECRET, &late).await;

    assert_eq!(errcode(&at_301), 0, "{at_301}");
    assert_error(&at_601, 40029);
}

#[tokio::test]
async fn code_exchange_checks_parameters_in_wechats_order() {
    let t = spawn().await;
    let code = t.sim.authorize(MP, "alice", "snsapi_base").unwrap();
    let web_code = t.sim.authorize(WEB, "alice", "snsapi_login").unwrap();
    let q = |s: &str| format!("/sns/oauth2/access_token?{s}");
    let cases = [
        (q(&format!("secret={MP_SECRET}&code={code}&grant_type=authorization_code")), 41002),
        (q(&format!("appid=&secret={MP_SECRET}&code={code}&grant_type=authorization_code")), 41002),
        (q(&format!("appid={MP}&code={code}&grant_type=authorization_code")), 41004),
        (q(&format!("appid={MP}&secret={MP_SECRET}&grant_type=authorization_code")), 41008),
        (q(&format!("appid={MP}&secret={MP_SECRET}&code={code}&grant_type=client_credential")), 40002),
        (q(&format!("appid={MP}&secret={MP_SECRET}&code={code}")), 40002),
        (q(&format!("appid=wx0000000000000000&secret={MP_SECRET}&code={code}&grant_type=authorization_code")), 40013),
        (q(&format!("appid={MP}&secret=wrong&code={code}&grant_type=authorization_code")), 40125),
        (q(&format!("appid={MP}&secret={MP_SECRET}&code=nosuchcode&grant_type=authorization_code")), 40029),
        (q(&format!("appid={MP}&secret={MP_SECRET}&code={web_code}&grant_type=authorization_code")), 40029),
    ];

    for (path, expected) in &cases {
        assert_error(&t.json(path).await, *expected);
    }
    // None of the failures spent the code.
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &code).await), 0);
}

#[tokio::test]
async fn unionid_comes_only_with_userinfo_or_login_scopes_of_bound_apps() {
    let t = spawn().await;
    let unbound = spawn_with(example_config(false)).await;

    let base = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;
    let userinfo = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    let login = t.login(WEB, WEB_SECRET, "alice", "snsapi_login").await;
    let not_bound = unbound.login("wx1111111111111111", "s3cret", "alice", "snsapi_userinfo").await;

    assert!(base.get("unionid").is_none(), "{base}");
    assert_eq!(userinfo["unionid"], json!(t.sim.unionid("alice")));
    assert_eq!(login["unionid"], json!(t.sim.unionid("alice")));
    assert!(not_bound.get("unionid").is_none(), "{not_bound}");
    assert!(unbound.userinfo(&not_bound, "").await.get("unionid").is_none());
    assert_eq!(t.userinfo(&userinfo, "").await["unionid"], json!(t.sim.unionid("alice")));
}

#[tokio::test]
async fn snapshot_user_is_flagged_is_snapshotuser_and_has_no_profile() {
    let t = spawn().await;

    let snap = t.login(MP, MP_SECRET, "snap", "snsapi_userinfo").await;
    let alice = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;

    assert_eq!(snap["is_snapshotuser"], 1);
    assert_eq!(snap["scope"], "snsapi_userinfo");
    assert_eq!(snap["openid"], json!(t.sim.openid(MP, "snap").unwrap()));
    assert_eq!(snap["unionid"], json!(t.sim.unionid("snap")), "a virtual unionid");
    assert!(alice.get("is_snapshotuser").is_none());
    assert_error(&t.userinfo(&snap, "").await, 48001);
    assert_eq!(errcode(&t.auth(&snap).await), 0, "its token itself is valid");
}

/// Snapshot pages as the field reports them (issue 20), on demand: no `is_snapshotuser`, and a
/// virtual openid per sign-in, all sharing one virtual unionid; still no profile.
#[tokio::test]
async fn messy_snapshots_lack_the_flag_and_share_one_virtual_unionid() {
    let t = spawn().await;
    t.sim.set_messy_snapshots(true);

    let first = t.login(MP, MP_SECRET, "snap", "snsapi_userinfo").await;
    let second = t.login(MP, MP_SECRET, "snap", "snsapi_userinfo").await;

    assert!(first.get("is_snapshotuser").is_none() && second.get("is_snapshotuser").is_none(), "{first}");
    assert_ne!(first["openid"], second["openid"], "a virtual openid per sign-in");
    assert_eq!((&first["unionid"], &second["unionid"]), (&json!(t.sim.unionid("snap")), &json!(t.sim.unionid("snap"))));
    assert_error(&t.userinfo(&first, "").await, 48001);
    let alice = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    assert_eq!(alice["openid"], json!(t.sim.openid(MP, "alice").unwrap()), "real users are not touched");
}

// ---- tokens ----

#[tokio::test]
async fn access_token_expires_after_7200_seconds() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    t.sim.advance(Duration::from_secs(7199));
    assert_eq!(errcode(&t.auth(&token).await), 0);

    t.sim.advance(Duration::from_secs(2));

    assert_error(&t.userinfo(&token, "").await, 42001);
    assert_error(&t.auth(&token).await, 42001);
}

#[tokio::test]
async fn refresh_after_expiry_gives_a_working_new_token_and_kills_the_old() {
    let t = spawn().await;
    let old = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    let refresh_token = old["refresh_token"].as_str().unwrap();
    t.sim.advance(Duration::from_secs(7201));

    let new = t.refresh(MP, refresh_token).await;

    let access = new["access_token"].as_str().unwrap();
    assert_ne!(access, old["access_token"].as_str().unwrap());
    assert_eq!(
        new,
        json!({
            "access_token": access,
            "expires_in": 7200,
            "refresh_token": refresh_token,
            "openid": old["openid"],
            "scope": "snsapi_userinfo",
        })
    );
    assert_eq!(t.userinfo(&new, "").await["nickname"], "Alice 爱丽丝");
    assert_error(&t.userinfo(&old, "").await, 40014);
    t.sim.advance(Duration::from_secs(7201));
    let newer = t.refresh(MP, refresh_token).await;
    assert_ne!(newer["access_token"], new["access_token"]);
    assert_error(&t.auth(&new).await, 40014);
    assert_eq!(t.auth(&newer).await, json!({"errcode": 0, "errmsg": "ok"}));
}

/// WeChat's doc (刷新access_token): "若access_token未超时，那么进行refresh_token不会改变
/// access_token，但超时时间会刷新，相当于续期access_token".
#[tokio::test]
async fn refresh_before_expiry_keeps_the_token_and_renews_its_expiry() {
    let t = spawn().await;
    let old = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    let refresh_token = old["refresh_token"].as_str().unwrap();
    t.sim.advance(Duration::from_secs(7000));

    let renewed = t.refresh(MP, refresh_token).await;

    assert_eq!(
        renewed,
        json!({
            "access_token": old["access_token"],
            "expires_in": 7200,
            "refresh_token": refresh_token,
            "openid": old["openid"],
            "scope": "snsapi_userinfo",
        }),
        "the same access token"
    );
    // Renewed: alive 7,000 s + 7,199 s after the sign-in, well past its first 7,200 s.
    t.sim.advance(Duration::from_secs(7199));
    assert_eq!(t.auth(&old).await, json!({"errcode": 0, "errmsg": "ok"}));
    t.sim.advance(Duration::from_secs(2));
    assert_error(&t.auth(&old).await, 42001);
    let fresh = t.refresh(MP, refresh_token).await;
    assert_ne!(fresh["access_token"], old["access_token"], "expired: a new one");
    assert_eq!(errcode(&t.auth(&fresh).await), 0);
}

#[tokio::test]
async fn refresh_takes_no_secret_and_ignores_one() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;

    let refreshed = t
        .json(&format!(
            "/sns/oauth2/refresh_token?appid={MP}&grant_type=refresh_token&refresh_token={}&secret=wrong",
            token["refresh_token"].as_str().unwrap()
        ))
        .await;

    assert_eq!(errcode(&refreshed), 0, "{refreshed}");
    assert_eq!(refreshed["scope"], "snsapi_base");
}

#[tokio::test]
async fn refresh_checks_its_parameters() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;
    let rt = token["refresh_token"].as_str().unwrap();
    let q = |s: &str| format!("/sns/oauth2/refresh_token?{s}");
    let cases = [
        (q(&format!("grant_type=refresh_token&refresh_token={rt}")), 41002),
        (q(&format!("appid={MP}&grant_type=refresh_token")), 41003),
        (q(&format!("appid={MP}&grant_type=authorization_code&refresh_token={rt}")), 40002),
        (q(&format!("appid=wx0000000000000000&grant_type=refresh_token&refresh_token={rt}")), 40013),
        (q(&format!("appid={MP}&grant_type=refresh_token&refresh_token=nosuchtoken")), 40030),
        (q(&format!("appid={WEB}&grant_type=refresh_token&refresh_token={rt}")), 40030),
    ];

    for (path, expected) in &cases {
        assert_error(&t.json(path).await, *expected);
    }
}

#[tokio::test]
async fn refresh_token_expires_after_30_days() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;
    let rt = token["refresh_token"].as_str().unwrap();
    t.sim.advance(Duration::from_secs(THIRTY_DAYS - 1));
    assert_eq!(errcode(&t.refresh(MP, rt).await), 0);

    t.sim.advance(Duration::from_secs(2));

    assert_error(&t.refresh(MP, rt).await, 42002);
}

#[tokio::test]
async fn userinfo_with_a_base_scope_token_answers_48001() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;

    assert_error(&t.userinfo(&token, "").await, 48001);
    assert_eq!(errcode(&t.auth(&token).await), 0);
}

/// Since 2021-10-20 WeChat answers `sex` 0 and empty `province`, `city` and `country` for
/// every user, in every `lang` (its announcement of 2021-09-26; WxJava #2331, EasyWeChat
/// #2675): only nickname, headimgurl, openid, unionid and privilege carry data.
#[tokio::test]
async fn userinfo_has_no_sex_or_region_in_any_language() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    let profile = json!({
        "openid": token["openid"],
        "nickname": "Alice 爱丽丝",
        "sex": 0,
        "province": "",
        "city": "",
        "country": "",
        "headimgurl": SimConfig::demo().users[0].headimgurl,
        "privilege": [],
        "unionid": t.sim.unionid("alice"),
    });

    for lang in ["", "&lang=zh_CN", "&lang=zh_TW", "&lang=en"] {
        assert_eq!(t.userinfo(&token, lang).await, profile, "{lang}");
    }
    assert_error(&t.userinfo(&token, "&lang=fr").await, 40033);
}

#[tokio::test]
async fn userinfo_and_auth_check_token_and_openid() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    let access = token["access_token"].as_str().unwrap();
    let openid = token["openid"].as_str().unwrap();
    let bob = t.sim.openid(MP, "bob").unwrap();
    let other_app = t.sim.openid(WEB, "alice").unwrap();

    for endpoint in ["/sns/userinfo", "/sns/auth"] {
        let cases = [
            (format!("{endpoint}?openid={openid}"), 41001),
            (format!("{endpoint}?access_token=&openid={openid}"), 41001),
            (format!("{endpoint}?access_token=nosuchtoken&openid={openid}"), 40014),
            (format!("{endpoint}?access_token={access}"), 41009),
            (format!("{endpoint}?access_token={access}&openid={bob}"), 40003),
            (format!("{endpoint}?access_token={access}&openid={other_app}"), 40003),
        ];
        for (path, expected) in &cases {
            assert_error(&t.json(path).await, *expected);
        }
    }
    assert_eq!(t.auth(&token).await, json!({"errcode": 0, "errmsg": "ok"}));
}

// ---- faults and counters ----

#[tokio::test]
async fn errcode_fault_answers_that_errcode_for_the_given_number_of_calls() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    t.sim.inject(Endpoint::UserInfo, Fault::Errcode(45011), 2);

    let first = t.userinfo(&token, "").await;
    let second = t.userinfo(&token, "").await;
    let third = t.userinfo(&token, "").await;

    assert_error(&first, 45011);
    assert_error(&second, 45011);
    assert_eq!(third["nickname"], "Alice 爱丽丝");
}

#[tokio::test]
async fn errcode_fault_comes_before_normal_processing() {
    let t = spawn().await;
    let code = t.sim.authorize(MP, "alice", "snsapi_base").unwrap();
    t.sim.inject(Endpoint::AccessToken, Fault::Errcode(-1), 1);

    assert_error(&t.exchange(MP, MP_SECRET, &code).await, -1);
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &code).await), 0, "the faulted call did not spend the code");
}

#[tokio::test]
async fn http_status_fault_answers_that_status() {
    let t = spawn().await;
    t.sim.inject(Endpoint::RefreshToken, Fault::HttpStatus(502), 1);

    let response = t.get(&format!("/sns/oauth2/refresh_token?appid={MP}")).await;

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.text().await.unwrap(), "simulated HTTP 502");
}

#[tokio::test]
async fn bad_json_fault_answers_a_truncated_body() {
    let t = spawn().await;
    t.sim.inject(Endpoint::Auth, Fault::BadJson, 1);

    let response = t.get("/sns/auth?access_token=x&openid=y").await;

    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    assert!(body.starts_with('{'));
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
}

#[tokio::test]
async fn delay_fault_waits_then_answers_normally() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;
    t.sim.inject(Endpoint::Auth, Fault::Delay(Duration::from_millis(150)), 1);

    let started = Instant::now();
    let answer = t.auth(&token).await;

    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(answer, json!({"errcode": 0, "errmsg": "ok"}));
}

#[tokio::test]
async fn faults_on_authorize_pages_answer_like_a_page() {
    let t = spawn().await;
    let path = oauth2(MP, CALLBACK, "snsapi_base", "s");
    t.sim.inject(Endpoint::Authorize, Fault::Errcode(10009), 1);
    t.sim.inject(Endpoint::Authorize, Fault::HttpStatus(503), 1);

    let errcode_page = t.page(&path).await;
    let unavailable = t.get(&path).await.status();
    let normal = t.page(&path).await;

    assert!(errcode_page.contains("10009"), "{errcode_page}");
    assert_eq!(unavailable, StatusCode::SERVICE_UNAVAILABLE);
    assert!(normal.contains("id=\"allow\""));
}

#[tokio::test]
async fn clear_faults_drops_queued_faults() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;
    t.sim.inject(Endpoint::Auth, Fault::Errcode(-1), 5);

    t.sim.clear_faults();

    assert_eq!(errcode(&t.auth(&token).await), 0);
}

#[tokio::test]
async fn call_counter_counts_every_request_including_faulted_ones() {
    let t = spawn().await;
    t.sim.inject(Endpoint::AccessToken, Fault::HttpStatus(500), 1);

    t.get(&oauth2(MP, CALLBACK, "snsapi_base", "s")).await;
    t.get(&page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s")).await;
    t.get(&page_path("qrconnect", WEB, CALLBACK, "snsapi_login", "s")).await;
    t.get("/sns/oauth2/access_token").await;
    t.get("/sns/oauth2/access_token?appid=x").await;
    t.get("/sns/userinfo").await;

    let counts: Vec<u64> = Endpoint::ALL.iter().map(|e| t.sim.calls(*e)).collect();
    assert_eq!(counts, [1, 2, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
}

// ---- the /sim control API ----

#[tokio::test]
async fn control_api_advances_the_clock() {
    let t = spawn().await;
    let code = t.sim.authorize(MP, "alice", "snsapi_base").unwrap();

    let response = t.http.post(format!("{}/sim/clock/advance?secs=301", t.base)).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"advanced_secs": 301}));
    assert_error(&t.exchange(MP, MP_SECRET, &code).await, 40029);
}

#[tokio::test]
async fn control_api_injects_each_fault_kind_and_clears_them() {
    let t = spawn().await;
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_base").await;
    let auth_path = format!(
        "/sns/auth?access_token={}&openid={}",
        token["access_token"].as_str().unwrap(),
        token["openid"].as_str().unwrap()
    );
    let inject = |fault: Value| {
        let request = t
            .http
            .post(format!("{}/sim/faults", t.base))
            .json(&json!({"endpoint": "auth", "fault": fault, "times": 1}));
        async move { request.send().await.unwrap().status() }
    };

    assert_eq!(inject(json!({"errcode": 45011})).await, StatusCode::NO_CONTENT);
    assert_eq!(inject(json!({"http_status": 502})).await, StatusCode::NO_CONTENT);
    assert_eq!(inject(json!("bad_json")).await, StatusCode::NO_CONTENT);
    assert_eq!(inject(json!({"delay_ms": 100})).await, StatusCode::NO_CONTENT);

    assert_error(&t.json(&auth_path).await, 45011);
    assert_eq!(t.get(&auth_path).await.status(), StatusCode::BAD_GATEWAY);
    assert!(t.get(&auth_path).await.json::<Value>().await.is_err());
    let started = Instant::now();
    assert_eq!(errcode(&t.json(&auth_path).await), 0);
    assert!(started.elapsed() >= Duration::from_millis(100));

    inject(json!({"errcode": -1})).await;
    let cleared = t.http.delete(format!("{}/sim/faults", t.base)).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert_eq!(errcode(&t.json(&auth_path).await), 0);
}

#[tokio::test]
async fn control_api_reports_calls_per_endpoint() {
    let t = spawn().await;
    t.get("/sns/userinfo").await;
    t.get("/sns/auth").await;
    t.get("/sns/auth").await;

    let calls = t.json("/sim/calls").await;

    assert_eq!(
        calls,
        json!({
            "authorize": 0, "qrconnect": 0, "access_token": 0, "refresh_token": 0, "userinfo": 1, "auth": 2,
            "jscode2session": 0, "token": 0, "stable_token": 0, "getticket": 0, "getuserphonenumber": 0
        })
    );
}

#[tokio::test]
async fn control_api_switches_double_callback() {
    let t = spawn().await;
    let switch = |on: &str| t.http.post(format!("{}/sim/double_callback?on={on}", t.base)).send();

    let on = switch("true").await.unwrap();
    let double = t.decide("oauth2/authorize", "allow", CALLBACK).await;
    let off = switch("false").await.unwrap();
    let single = t.decide("oauth2/authorize", "allow", CALLBACK).await;

    assert_eq!(on.json::<Value>().await.unwrap(), json!({"double_callback": true}));
    assert_eq!(double.status(), StatusCode::OK);
    assert_eq!(off.json::<Value>().await.unwrap(), json!({"double_callback": false}));
    assert_eq!(single.status(), StatusCode::FOUND);
}

#[tokio::test]
async fn control_api_rejects_what_it_cannot_act_on() {
    let t = spawn().await;
    let post = |path: &str, body: &str| {
        t.http.post(format!("{}{path}", t.base)).header("content-type", "application/json").body(body.to_owned()).send()
    };
    let cases = [
        ("/sim/clock/advance", ""),
        ("/sim/clock/advance?secs=-5", ""),
        ("/sim/clock/advance?secs=1.5", ""),
        ("/sim/double_callback?on=yes", ""),
        ("/sim/faults", "not json"),
        ("/sim/faults", r#"{"endpoint":"nope","fault":"bad_json"}"#),
        ("/sim/faults", r#"{"endpoint":"auth","fault":{"http_status":42}}"#),
        ("/sim/faults", r#"{"endpoint":"auth","fault":"explode"}"#),
    ];

    for (path, body) in cases {
        let response = post(path, body).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        assert!(response.json::<Value>().await.unwrap()["error"].is_string());
    }
    assert_eq!(t.sim.calls(Endpoint::Auth), 0);
}

// ---- the in-process API ----

#[tokio::test]
async fn authorize_refuses_what_the_consent_page_refuses() {
    let t = spawn().await;

    assert_eq!(t.sim.authorize("wxnope", "alice", "snsapi_base"), Err(SimError::UnknownApp("wxnope".into())));
    assert_eq!(t.sim.authorize(MP, "mallory", "snsapi_base"), Err(SimError::UnknownUser("mallory".into())));
    assert_eq!(
        t.sim.authorize(MP, "alice", "snsapi_login"),
        Err(SimError::ScopeNotAllowed { appid: MP.into(), scope: "snsapi_login".into() })
    );
    assert_eq!(
        t.sim.authorize(WEB, "alice", "snsapi_userinfo"),
        Err(SimError::ScopeNotAllowed { appid: WEB.into(), scope: "snsapi_userinfo".into() })
    );
    assert_eq!(t.sim.authorize(MP, "snap", "snsapi_base"), Err(SimError::SnapshotNeedsUserinfo("snap".into())));
    let code = t.sim.authorize(WEB, "alice", "snsapi_login").unwrap();
    assert_eq!(code.len(), 32);
}

#[test]
fn openid_and_unionid_are_stable_and_shaped_like_wechats() {
    let one = Simulator::new(SimConfig::demo());
    let two = Simulator::new(SimConfig::demo());

    let openid = one.openid(MP, "alice").unwrap();
    let unionid = one.unionid("alice");

    assert_eq!(Some(openid.clone()), two.openid(MP, "alice"));
    assert_ne!(Some(openid.clone()), one.openid(WEB, "alice"));
    assert_ne!(Some(openid.clone()), one.openid(MP, "bob"));
    assert_eq!(openid.len(), 28);
    assert!(openid.starts_with('o'));
    assert_eq!(unionid.len(), 28);
    assert!(unionid.starts_with("o6_bm"));
    assert_eq!(unionid, two.unionid("alice"));
    assert_ne!(unionid, one.unionid("bob"));
    assert_eq!(one.openid("wxnope", "alice"), None);
    assert_eq!(one.openid(MP, "mallory"), None);
}

#[test]
fn debug_output_of_an_app_redacts_its_secret() {
    let config = SimConfig::demo();

    let printed = format!("{config:?}");

    assert!(printed.contains("wxd0000000000000a1"));
    assert!(printed.contains("[redacted]"));
    assert!(!printed.contains("demo-mp-secret") && !printed.contains("demo-web-secret"));
}

#[test]
fn demo_config_has_the_documented_apps_and_users() {
    let config = SimConfig::demo();

    let apps: Vec<_> = config
        .apps
        .iter()
        .map(|a| (a.appid.as_str(), a.secret.as_str(), a.kind, a.callback_domain.as_str(), a.unionid_bound))
        .collect();
    let users: Vec<_> = config.users.iter().map(|u| (u.key.as_str(), u.snapshot)).collect();

    assert_eq!(
        apps,
        [
            ("wxd0000000000000a1", "demo-mp-secret", SimAppKind::OfficialAccount, "127.0.0.1:8080", true),
            ("wxd0000000000000b2", "demo-web-secret", SimAppKind::Website, "127.0.0.1:8080", true),
            ("wxd0000000000000c3", "demo-app-secret", SimAppKind::MobileApp, "", true),
            ("wxd0000000000000d4", "demo-mini-secret", SimAppKind::MiniProgram, "", true),
        ]
    );
    assert_eq!(users, [("alice", false), ("bob", false), ("snap", true)]);
    assert!(config.users[2].headimgurl.is_empty());
    assert!(
        config.users[0].headimgurl.starts_with("https://thirdwx.qlogo.cn/mmopen/vi_32/")
            && config.users[0].headimgurl.ends_with("/132")
    );
}

#[tokio::test]
async fn garbage_input_gets_errcodes_not_failures() {
    let t = spawn().await;
    let huge = "x".repeat(30_000);
    let paths = [
        "/sns/oauth2/access_token?%FF=%FE&appid=%00".to_owned(),
        format!("/sns/oauth2/access_token?appid={MP}&secret={MP_SECRET}&code={huge}&grant_type=authorization_code"),
        format!("/sns/oauth2/refresh_token?appid={huge}&grant_type=refresh_token&refresh_token=a"),
        format!("/sns/userinfo?access_token={huge}&openid=%E4%B8&lang=%FF"),
        "/sns/auth?access_token&openid&&&==".to_owned(),
    ];

    for path in &paths {
        let body = t.json(path).await;
        assert!(errcode(&body) > 0, "{body}");
    }
    let page = t.page(&oauth2(MP, &format!("http://127.0.0.1:8080/{huge}"), "snsapi_base", "s")).await;
    assert!(page.contains("id=\"allow\""));
}

/// 4000 exchanges on two threads, 256 in flight: enough to contend on the lock, few enough
/// connections for a default open-files limit of 1024.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_requests_are_answered() {
    const REQUESTS: u64 = 4000;
    let t = spawn().await;
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (sim, http, base) = (t.sim.clone(), t.http.clone(), t.base.clone());
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let _permit = in_flight.acquire().await.unwrap();
                let user = if i % 2 == 0 { "alice" } else { "bob" };
                let code = sim.authorize(MP, user, "snsapi_userinfo").unwrap();
                let url = format!(
                    "{base}/sns/oauth2/access_token?appid={MP}&secret={MP_SECRET}&code={code}&grant_type=authorization_code"
                );
                let token: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                token["openid"] == json!(sim.openid(MP, user).unwrap())
            })
        })
        .collect();

    let mut answered = 0;
    for task in tasks {
        answered += u64::from(task.await.unwrap());
    }

    assert_eq!(answered, REQUESTS);
    assert_eq!(t.sim.calls(Endpoint::AccessToken), REQUESTS);
}

// ---- the sns quota ----

#[tokio::test]
async fn each_app_gets_its_minute_quota_of_sns_calls_then_45011() {
    let t = spawn().await;
    let answered = t.http.post(format!("{}/sim/quota?per_minute=2", t.base)).send().await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await; // an exchange
    let web = t.login(WEB, WEB_SECRET, "alice", "snsapi_login").await;

    // Each endpoint counts apart (issue 20): two userinfo calls, then 45011; auth has its own two.
    assert_eq!(t.userinfo(&token, "").await["nickname"], "Alice 爱丽丝");
    assert_eq!(t.userinfo(&token, "").await["nickname"], "Alice 爱丽丝");
    assert_error(&t.userinfo(&token, "").await, 45011);
    assert_eq!(t.auth(&token).await["errcode"], 0);
    let refresh_token = token["refresh_token"].as_str().unwrap();
    let refreshed = t.refresh(MP, refresh_token).await;
    assert_eq!(errcode(&refreshed), 0, "refresh has its own quota");
    let code = t.sim.authorize(MP, "bob", "snsapi_base").unwrap();
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &code).await), 0, "the minute's second exchange");
    let refused = t.sim.authorize(MP, "bob", "snsapi_base").unwrap();
    assert_error(&t.exchange(MP, MP_SECRET, &refused).await, 45011);
    assert_eq!(t.userinfo(&web, "").await["nickname"], "Alice 爱丽丝", "another app has its own quota");

    t.sim.advance(Duration::from_secs(60));
    assert_eq!(t.userinfo(&refreshed, "").await["nickname"], "Alice 爱丽丝", "a new minute");
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &refused).await), 0, "the refused code was not spent");

    t.sim.set_quota(None);
    for _ in 0..10 {
        assert_eq!(t.auth(&refreshed).await["errcode"], 0);
    }
    let refused = t.http.post(format!("{}/sim/quota?per_minute=lots", t.base)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
}

/// WeChat's minute quotas per endpoint (网站应用微信登录开发指南, 调用频率限制): code exchange
/// 10,000, refresh and userinfo 50,000 each (issue 20: one shared pool of 50,000 let a sign-in
/// burst above 10,000 a minute pass).
#[tokio::test]
async fn the_code_exchange_has_wechats_10000_a_minute_and_refresh_and_userinfo_50000_each() {
    let t = spawn().await;
    assert_eq!((crate::sim::EXCHANGES_PER_MINUTE, crate::sim::SNS_CALLS_PER_MINUTE), (10_000, 50_000));
    let core = t.sim.core();
    for _ in 0..10_000 {
        core.spend_quota(MP, Api::AccessToken).unwrap();
    }
    assert_eq!(core.spend_quota(MP, Api::AccessToken), Err(45011), "the 10,001st exchange of the minute");
    for api in [Api::RefreshToken, Api::UserInfo] {
        for _ in 0..50_000 {
            core.spend_quota(MP, api).unwrap();
        }
        assert_eq!(core.spend_quota(MP, api), Err(45011), "{api:?}: the 50,001st call of the minute");
    }
    // Over HTTP too: the exchange endpoint answers 45011 once its own quota is spent.
    let code = t.sim.authorize(MP, "alice", "snsapi_base").unwrap();
    assert_error(&t.exchange(MP, MP_SECRET, &code).await, 45011);
    t.sim.advance(Duration::from_secs(60));
    assert_eq!(errcode(&t.exchange(MP, MP_SECRET, &code).await), 0, "a new minute");
}

/// A daily quota answers 45009 "reach max api daily quota limit" until the day turns; the
/// control API sets one per endpoint (issue 20).
#[tokio::test]
async fn a_spent_daily_quota_answers_45009_until_the_next_day() {
    let t = spawn().await;
    let set = t.http.post(format!("{}/sim/quota?endpoint=userinfo&per_day=2", t.base)).send().await.unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    assert_eq!(t.userinfo(&token, "").await["nickname"], "Alice 爱丽丝");
    t.sim.advance(Duration::from_secs(120));
    assert_eq!(t.userinfo(&token, "").await["nickname"], "Alice 爱丽丝", "the day's second call");
    t.sim.advance(Duration::from_secs(120));
    let refused = t.userinfo(&token, "").await;
    assert_error(&refused, 45009);
    assert!(refused["errmsg"].as_str().unwrap().starts_with("reach max api daily quota limit"), "{refused}");
    assert_eq!(t.auth(&token).await["errcode"], 0, "auth has its own quota");

    t.sim.advance(Duration::from_secs(24 * 3600));
    let token = t.login(MP, MP_SECRET, "alice", "snsapi_userinfo").await;
    assert_eq!(t.userinfo(&token, "").await["nickname"], "Alice 爱丽丝", "a new day");
    t.sim.set_daily_quota(Endpoint::UserInfo, None);

    for bad in ["endpoint=userinfo&per_day=many", "per_day=3", "endpoint=authorize&per_minute=3", "endpoint=userinfo"] {
        let answer = t.http.post(format!("{}/sim/quota?{bad}", t.base)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// The QR link `wxLogin.js` frames, in its order (no `response_type`), `redirect_uri` encoded.
fn jssdk_path(redirect_uri: &str, state: &str, self_redirect: &str) -> String {
    format!(
        "/connect/qrconnect?appid={WEB}&scope=snsapi_login&redirect_uri={}&state={state}&login_type=jssdk\
         &self_redirect={self_redirect}&styletype=&sizetype=&bgcolor=&rst=&style=white",
        enc(redirect_uri)
    )
}

#[tokio::test]
async fn wx_login_js_frames_the_qr_page_of_this_simulator() {
    let t = spawn().await;

    let response = t.get(WX_LOGIN_JS).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/javascript; charset=utf-8");
    let script = response.text().await.unwrap();
    assert!(script.contains("window.WxLogin = function (e)"), "{script}");
    assert!(script.contains("\"/connect/qrconnect?appid=\" + e.appid + \"&scope=\" + e.scope + \"&redirect_uri=\""));
    assert!(
        script.contains("&login_type=jssdk&self_redirect=") && script.contains("document.createElement(\"iframe\")")
    );
    // Its frame may ask for Chrome's local network access (desktop WeChat's fast login, issue 20).
    assert!(script.contains("frame.allow = \"local-network-access\""), "{script}");
}

#[tokio::test]
async fn the_framed_qr_page_confirms_in_the_iframe_or_the_whole_window() {
    let t = spawn().await;
    for (self_redirect, target) in [("true", "_self"), ("false", "_top"), ("default", "_top")] {
        let page = t.page(&jssdk_path(CALLBACK, "Flow1", self_redirect)).await;

        assert!(page.contains("id=\"qrcode\"") && page.contains("id=\"allow\""), "{page}");
        // The scan's redirect goes where self_redirect says; a declined scan (no callback
        // today) leaves WeChat's frame in place.
        let form_of = |decision: &str| {
            page.split("<form ").find(|form| form.contains(&format!("name=\"decision\" value=\"{decision}\""))).unwrap()
        };
        assert!(
            form_of("allow")
                .starts_with(&format!("method=\"post\" action=\"/connect/qrconnect/confirm\" target=\"{target}\">")),
            "{page}"
        );
        assert!(form_of("deny").contains("target=\"_self\""), "{self_redirect}: {page}");
    }
    let fields = [
        ("appid", WEB),
        ("redirect_uri", CALLBACK),
        ("scope", "snsapi_login"),
        ("state", "Flow1"),
        ("decision", "allow"),
        ("user", "alice"),
    ];
    let confirmed = t.post_form("/connect/qrconnect/confirm", &fields).await;
    assert_eq!(confirmed.status(), StatusCode::FOUND);
    let location = confirmed.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{CALLBACK}?code=")) && location.ends_with("&state=Flow1"), "{location}");
}

#[tokio::test]
async fn a_framed_qr_link_keeps_wechats_rules() {
    let t = spawn().await;
    // Without login_type=jssdk, wxLogin.js's order is not a valid link.
    let no_jssdk = format!("/connect/qrconnect?appid={WEB}&scope=snsapi_login&redirect_uri={}&state=s", enc(CALLBACK));
    assert!(t.page(&no_jssdk).await.contains("该链接无法访问"));
    // The callback domain and the scope are checked as on the QR page itself.
    let elsewhere = t.page(&jssdk_path("https://evil.example/cb", "s", "false")).await;
    assert!(elsewhere.contains("10003"), "{elsewhere}");
    let bad_style = jssdk_path(CALLBACK, "s", "false").replace("style=white", "style=red");
    assert!(t.page(&bad_style).await.contains("该链接无法访问"));
    let official = jssdk_path(CALLBACK, "s", "true").replace(WEB, MP);
    assert!(t.page(&official).await.contains("10005"));
}

// ---- mobile apps and mini programs ----

const APP: &str = "wxd0000000000000c3";
const APP_SECRET: &str = "demo-app-secret";
const MINI: &str = "wxd0000000000000d4";
const MINI_SECRET: &str = "demo-mini-secret";

impl TestSim {
    async fn post_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.post(format!("{}{path}", self.base)).send().await.unwrap();
        (response.status(), response.json().await.unwrap())
    }

    async fn jscode2session(&self, appid: &str, secret: &str, js_code: &str) -> Value {
        self.json(&format!(
            "/sns/jscode2session?appid={appid}&secret={secret}&js_code={js_code}&grant_type=authorization_code"
        ))
        .await
    }
}

#[tokio::test]
async fn a_mobile_apps_sdk_code_comes_from_the_control_api_and_works_once_for_ten_minutes() {
    let t = spawn().await;
    let (status, minted) = t.post_json(&format!("/sim/mobile_code?appid={APP}&user=alice")).await;
    assert_eq!(status, StatusCode::OK);
    let code = minted["code"].as_str().unwrap().to_owned();

    let token = t.exchange(APP, APP_SECRET, &code).await;
    assert_eq!(token["scope"], "snsapi_userinfo");
    assert_eq!(token["unionid"], json!(super::state::unionid("alice")), "the same person as on the web apps");
    assert_eq!(t.userinfo(&token, "").await["nickname"], "Alice 爱丽丝", "mobile tokens read sns/userinfo");
    assert_error(&t.exchange(APP, APP_SECRET, &code).await, 40163);

    let late = t.sim.authorize(APP, "bob", "snsapi_userinfo").unwrap();
    t.sim.advance(Duration::from_secs(601));
    assert_error(&t.exchange(APP, APP_SECRET, &late).await, 40029);
    let (status, _) = t.post_json(&format!("/sim/mobile_code?appid={MP}&user=alice")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an official account has no SDK codes");
}

#[tokio::test]
async fn jscode2session_gives_openid_session_key_and_unionid_once() {
    let t = spawn().await;
    let (status, minted) = t.post_json(&format!("/sim/js_code?appid={MINI}&user=alice")).await;
    assert_eq!(status, StatusCode::OK);
    let js_code = minted["js_code"].as_str().unwrap().to_owned();

    let session = t.jscode2session(MINI, MINI_SECRET, &js_code).await;
    assert_eq!(session["openid"], json!(super::state::openid(MINI, "alice")));
    assert_eq!(session["unionid"], json!(super::state::unionid("alice")));
    assert_eq!(session["session_key"].as_str().unwrap().len(), 24, "16 bytes in base64");
    assert_error(&t.jscode2session(MINI, MINI_SECRET, &js_code).await, 40163);
    assert_error(&t.jscode2session(MINI, MINI_SECRET, "made-up").await, 40029);
    assert_error(&t.jscode2session(MINI, "wrong", &t.sim.js_code(MINI, "bob").unwrap()).await, 40125);
    assert_error(&t.jscode2session(MP, MP_SECRET, &t.sim.js_code(MINI, "bob").unwrap()).await, 40013);
    assert_error(&t.exchange(MINI, MINI_SECRET, &t.sim.js_code(MINI, "bob").unwrap()).await, 40013);
    let expired = t.sim.js_code(MINI, "bob").unwrap();
    t.sim.advance(Duration::from_secs(301));
    assert_error(&t.jscode2session(MINI, MINI_SECRET, &expired).await, 40029);
}

#[tokio::test]
async fn a_mini_program_user_signs_in_at_most_100_times_a_minute() {
    let t = spawn().await;
    for _ in 0..MINI_LOGINS_PER_MINUTE {
        let session = t.jscode2session(MINI, MINI_SECRET, &t.sim.js_code(MINI, "alice").unwrap()).await;
        assert_eq!(errcode(&session), 0);
    }
    let refused = t.sim.js_code(MINI, "alice").unwrap();
    assert_error(&t.jscode2session(MINI, MINI_SECRET, &refused).await, 45011);
    assert_eq!(
        errcode(&t.jscode2session(MINI, MINI_SECRET, &t.sim.js_code(MINI, "bob").unwrap()).await),
        0,
        "per user"
    );
    t.sim.advance(Duration::from_secs(60));
    assert_eq!(errcode(&t.jscode2session(MINI, MINI_SECRET, &refused).await), 0, "not spent by the refusal");
}

// ---- an app's own credentials (issue 21) ----

impl TestSim {
    async fn stable_token(&self, appid: &str, secret: &str, force: Option<bool>) -> Value {
        let mut body = json!({ "grant_type": "client_credential", "appid": appid, "secret": secret });
        if let Some(force) = force {
            body["force_refresh"] = json!(force);
        }
        let response = self.http.post(format!("{}/cgi-bin/stable_token", self.base)).json(&body).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn classic_token(&self, appid: &str, secret: &str) -> Value {
        let url = format!("{}/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}", self.base);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    async fn getticket(&self, token: &str) -> Value {
        let url = format!("{}/cgi-bin/ticket/getticket?access_token={token}&type=jsapi", self.base);
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }
}

fn token_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap_or_else(|| panic!("no token: {body}")).to_owned()
}

#[tokio::test]
async fn stable_tokens_normal_mode_gives_the_same_token_until_its_last_five_minutes() {
    let t = spawn().await;
    let first = t.stable_token(MP, MP_SECRET, None).await;
    assert_eq!(first["expires_in"], json!(7200));
    t.sim.advance(Duration::from_secs(3600));
    let again = t.stable_token(MP, MP_SECRET, Some(false)).await;
    assert_eq!(token_of(&again), token_of(&first), "the same token while it lives");
    assert!(again["expires_in"].as_u64().unwrap() <= 3600, "with its remaining life: {again}");
    t.sim.advance(Duration::from_secs(3400));
    let renewed = t.stable_token(MP, MP_SECRET, None).await;
    assert_ne!(token_of(&renewed), token_of(&first), "a new one in the last five minutes");
    assert_eq!(renewed["expires_in"], json!(7200));
    assert!(t.sim.token_alive(MP, &token_of(&first)), "the old one lives to its end");
    t.sim.advance(Duration::from_secs(201));
    assert!(!t.sim.token_alive(MP, &token_of(&first)));
}

#[tokio::test]
async fn a_forced_refresh_kills_the_token_not_twice_in_30_seconds_and_20_a_day() {
    let t = spawn().await;
    let first = token_of(&t.stable_token(MP, MP_SECRET, None).await);
    let forced = token_of(&t.stable_token(MP, MP_SECRET, Some(true)).await);
    assert_ne!(forced, first);
    assert!(!t.sim.token_alive(MP, &first), "the token before a forced refresh dies at once");
    assert_eq!(token_of(&t.stable_token(MP, MP_SECRET, Some(true)).await), forced, "not again within 30 s");
    for _ in 1..20 {
        t.sim.advance(Duration::from_secs(31));
        assert_eq!(errcode(&t.stable_token(MP, MP_SECRET, Some(true)).await), 0);
    }
    assert_eq!(t.sim.forced_token_refreshes(), 20);
    t.sim.advance(Duration::from_secs(31));
    assert_error(&t.stable_token(MP, MP_SECRET, Some(true)).await, 45009);
    assert_eq!(errcode(&t.stable_token(MP, MP_SECRET, None).await), 0, "normal mode goes on");
}

#[tokio::test]
async fn stable_and_classic_tokens_are_apart_and_each_classic_fetch_replaces_the_last() {
    let t = spawn().await;
    let stable = token_of(&t.stable_token(MP, MP_SECRET, None).await);
    let classic = token_of(&t.classic_token(MP, MP_SECRET).await);
    let classic_next = token_of(&t.classic_token(MP, MP_SECRET).await);
    assert_ne!(classic, classic_next, "each cgi-bin/token call a new token");
    assert!(t.sim.token_alive(MP, &stable), "cgi-bin/token leaves the stable token alone");
    assert!(t.sim.token_alive(MP, &classic), "the one before lives 5 more minutes");
    t.sim.advance(Duration::from_secs(301));
    assert!(!t.sim.token_alive(MP, &classic));
    assert!(t.sim.token_alive(MP, &classic_next) && t.sim.token_alive(MP, &stable));
}

#[tokio::test]
async fn app_credentials_refuse_wrong_apps_secrets_and_grants() {
    let t = spawn().await;
    assert_error(&t.stable_token(MP, "wrong", None).await, 40125);
    assert_error(&t.classic_token(MP, "wrong").await, 40001);
    assert_error(&t.stable_token(WEB, WEB_SECRET, None).await, 40013);
    assert_error(&t.stable_token("wxnope", "x", None).await, 40013);
    let body = json!({ "grant_type": "authorization_code", "appid": MP, "secret": MP_SECRET });
    let wrong_grant = t.http.post(format!("{}/cgi-bin/stable_token", t.base)).json(&body).send().await.unwrap();
    assert_error(&wrong_grant.json().await.unwrap(), 40002);
}

#[tokio::test]
async fn getticket_needs_a_live_token_of_the_app() {
    let t = spawn().await;
    let token = token_of(&t.stable_token(MP, MP_SECRET, None).await);
    let ticket = t.getticket(&token).await;
    assert_eq!(
        (errcode(&ticket), ticket["errmsg"].clone(), ticket["expires_in"].clone()),
        (0, json!("ok"), json!(7200))
    );
    assert!(ticket["ticket"].as_str().is_some_and(|s| !s.is_empty()));
    assert_error(&t.getticket("made-up").await, 40001);
    t.sim.advance(Duration::from_secs(7201));
    assert_error(&t.getticket(&token).await, 40001);
}
