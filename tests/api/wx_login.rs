//! Embedded QR login (issue 12): BuildAuthorizeUrl's `wx_login` parameters for WeChat's
//! `wxLogin.js`, bound to the flow like the authorize URL, and the relay answering the callback
//! whether it comes in the whole window (`self_redirect` false) or inside the QR code's iframe
//! (`self_redirect` true).

use wxauth::proto::{BuildAuthorizeUrlRequest, BuildAuthorizeUrlResponse, Scope, WxLogin, WxLoginOptions};

use crate::both_backends;
use crate::helpers::{Backend, CALLBACK_HOST, TestApp, WEB_APPID, spawn_app};

const RETURN_URL: &str = "https://passport.example.com/login/";

async fn start(app: &TestApp, name: &str, options: WxLoginOptions) -> BuildAuthorizeUrlResponse {
    let request = BuildAuthorizeUrlRequest {
        app: name.into(),
        return_url: RETURN_URL.into(),
        state: "csrf-1".into(),
        wx_login_options: Some(options),
        ..Default::default()
    };
    app.grpc.clone().build_authorize_url(app.req(request)).await.expect("flow").into_inner()
}

/// The QR link `new WxLogin(wx_login)` frames, built as wxLogin.js builds it.
fn framed_link(app: &TestApp, wx: &WxLogin) -> String {
    let mut link = format!(
        "http://{}/connect/qrconnect?appid={}&scope={}&redirect_uri={}&state={}&login_type=jssdk&self_redirect={}\
         &styletype=&sizetype=&bgcolor=&rst=",
        app.sim_addr, wx.appid, wx.scope, wx.redirect_uri, wx.state, wx.self_redirect
    );
    if !wx.style.is_empty() {
        link += &format!("&style={}", wx.style);
    }
    if !wx.href.is_empty() {
        link += &format!("&href={}", wx.href);
    }
    if wx.stylelite {
        link += "&stylelite=1";
    }
    link
}

async fn wx_login_names_the_flow_the_callback_and_the_website_app(backend: Backend) {
    let app = spawn_app(backend).await;
    let options = WxLoginOptions {
        self_redirect: true,
        style: "white".into(),
        href: "https://cdn.example.com/qr.css".into(),
        stylelite: false,
    };

    let response = start(&app, "web", options).await;

    let wx = response.wx_login.clone().expect("wx_login for a website app");
    let expected = WxLogin {
        appid: WEB_APPID.into(),
        scope: "snsapi_login".into(),
        redirect_uri: format!("https%3A%2F%2F{CALLBACK_HOST}%2Fwechat%2Fcallback"),
        state: response.flow_id.clone(),
        self_redirect: true,
        style: "white".into(),
        href: "https://cdn.example.com/qr.css".into(),
        script_url: format!("http://{}/connect/zh_CN/htmledition/js/wxLogin.js", app.sim_addr),
        stylelite: false,
    };
    assert_eq!(wx, expected);
    assert_eq!(response.scope, Scope::SnsapiLogin as i32);
    assert!(response.authorize_url.contains(&format!("&redirect_uri={}&", wx.redirect_uri)), "the same callback");

    // The script is there, and the link it frames is one WeChat (the simulator) accepts.
    let script = app.http.get(&wx.script_url).send().await.expect("sim").text().await.expect("script");
    assert!(script.contains("window.WxLogin"), "{script}");
    let page = app.http.get(framed_link(&app, &wx)).send().await.expect("sim").text().await.expect("page");
    assert!(page.contains("id=\"qrcode\"") && page.contains("id=\"allow\""), "{page}");

    // A code WeChat gives for that QR code is relayed and exchanged through this flow.
    let code = app.code(WEB_APPID, "alice", "snsapi_login");
    let relayed = app.callback(&format!("code={code}&state={}", wx.state)).await;
    assert_eq!(relayed.status(), 302);
    assert_eq!(relayed.headers()["location"], format!("{RETURN_URL}?code={code}&state=csrf-1"));
    let exchanged = app.exchange("web", &crate::helpers::Relayed { flow_id: wx.state, code }).await.expect("exchange");
    assert_eq!(exchanged.openid, app.sim.openid(WEB_APPID, "alice").expect("openid"));
}

async fn an_official_account_flow_has_no_wx_login(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = start(&app, "mp", WxLoginOptions { self_redirect: true, ..Default::default() }).await;
    assert_eq!(response.wx_login, None, "official accounts have no embedded QR login");
    let web = start(&app, "web", WxLoginOptions::default()).await.wx_login.expect("wx_login");
    assert_eq!((web.self_redirect, web.style.as_str(), web.href.as_str()), (false, "", ""), "WeChat's defaults");
}

/// Through the simulator's framed QR page and its confirm form, as the browser goes: the
/// form answers in the iframe (`self_redirect`) or the whole window; the relay's answer is the
/// same 302 to the return URL and carries nothing that forbids framing (X-Frame-Options,
/// CSP `frame-ancestors`), so it also works inside the QR code's iframe — where the product's
/// return page then breaks out (README, "Embedded QR login").
async fn the_relay_answers_an_embedded_callback_in_either_window(backend: Backend) {
    let app = spawn_app(backend).await;
    for self_redirect in [false, true] {
        let wx = start(&app, "web", WxLoginOptions { self_redirect, ..Default::default() }).await.wx_login.expect("wx");
        let page = app.http.get(framed_link(&app, &wx)).send().await.expect("sim").text().await.expect("page");
        let target = if self_redirect { "_self" } else { "_top" };
        assert!(page.contains(&format!("target=\"{target}\"")), "{self_redirect}: {page}");

        let callback = format!("https://{CALLBACK_HOST}/wechat/callback");
        let form = [
            ("appid", WEB_APPID),
            ("redirect_uri", callback.as_str()),
            ("scope", "snsapi_login"),
            ("state", wx.state.as_str()),
            ("decision", "allow"),
            ("user", "bob"),
        ];
        let confirm = format!("http://{}/connect/qrconnect/confirm", app.sim_addr);
        let scanned = app.http.post(confirm).form(&form).send().await.expect("sim");
        assert_eq!(scanned.status(), 302);
        let location = url::Url::parse(scanned.headers()["location"].to_str().expect("ascii")).expect("url");
        assert_eq!(location.host_str(), Some(CALLBACK_HOST));
        let code = location.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).expect("code");

        let relayed = app.callback(location.query().expect("query")).await;
        assert_eq!(relayed.status(), 302, "{self_redirect}");
        assert_eq!(relayed.headers()["location"], format!("{RETURN_URL}?code={code}&state=csrf-1"));
        for header in ["x-frame-options", "content-security-policy"] {
            assert!(relayed.headers().get(header).is_none(), "{header} would break self_redirect");
        }
        let relayed = crate::helpers::Relayed { flow_id: wx.state, code };
        let exchanged = app.exchange("", &relayed).await.expect("exchange");
        assert_eq!(
            (exchanged.app.as_str(), exchanged.openid),
            ("web", app.sim.openid(WEB_APPID, "bob").expect("openid"))
        );
    }
    // The start-again page shows in the iframe too (it has nothing to click: no clickjacking).
    let refused = app.callback("code=x&state=UnknownFlow1").await;
    assert_eq!(refused.status(), 400);
    assert!(refused.headers().get("x-frame-options").is_none());
}

/// An href the product echoes into its page, or a browser would repair into another URL, is
/// refused with a field violation on `wx_login_options.href`, and never echoed back.
#[tokio::test]
async fn an_href_that_is_not_a_canonical_https_url_is_refused() {
    let app = spawn_app(Backend::Memory).await;
    for href in [
        "https://cdn.example/\"</script><script>alert(1)//",
        "https://cdn.example/x.css\"onload=\"alert(1)",
        "https://cdn.example/<x>.css",
        "https://cdn.example/x.css'",
        "https:cdn.example/x.css",
        "https:/cdn.example/x.css",
        "https://cdn.example\\@evil/x.css",
        "https://cdn.example\\x.css",
        "https://user@cdn.example/x.css",
        "https://:pw@cdn.example/x.css",
        "https://CDN.example/x.css",
        "https://cdn.example/a/../x.css",
        "https://cdn.example",
        "http://cdn.example/x.css",
        "https://cdn.example/x.css?a=1&b=2",
        "https://cdn.example/x.css#f",
        "https://cdn.example/x .css",
    ] {
        let (status, details) = href_refused(&app, href).await;
        assert!(!status.message().contains("cdn.example") && !format!("{details:?}").contains("cdn.example"), "{href}");
    }
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let scrape = scrape.text().await.expect("text");
    let counted = scrape
        .lines()
        .find(|l| l.starts_with("wxauth_malformed_requests_total{reason=\"wx_login_href\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(counted >= Some(17.0), "counted (process-wide): {counted:?}");
    let canonical = WxLoginOptions { href: "https://cdn.example.com/qr.css?v=2".into(), ..Default::default() };
    assert_eq!(
        start(&app, "web", canonical).await.wx_login.expect("wx_login").href,
        "https://cdn.example.com/qr.css?v=2"
    );
}

/// Products restyle the QR code with a CSS `data:` URL (the most common use in public guides)
/// and may ask for WeChat's light style (`stylelite`): both pass through to `wx_login`, the QR
/// link wxLogin.js builds from them opens, and a data: URL that is not plain base64 CSS (other
/// types, markup, bad base64) is refused (issue 20).
#[tokio::test]
async fn a_css_data_href_and_stylelite_pass_through_and_markup_is_refused() {
    let app = spawn_app(Backend::Memory).await;
    // base64 of ".impowerBox .qrcode {width: 200px;}\n.impowerBox .title {display: none;}\n"
    let css = "data:text/css;base64,LmltcG93ZXJCb3ggLnFyY29kZSB7d2lkdGg6IDIwMHB4O30KLmltcG93ZXJCb3ggLnRpdGxlIHtkaXNwbGF5OiBub25lO30K";
    let options = WxLoginOptions { href: css.into(), stylelite: true, ..Default::default() };
    let wx = start(&app, "web", options).await.wx_login.expect("wx_login");
    assert_eq!((wx.href.as_str(), wx.stylelite), (css, true));
    let link = framed_link(&app, &wx);
    assert!(link.ends_with(&format!("&href={css}&stylelite=1")), "{link}");
    let page = app.http.get(&link).send().await.expect("sim").text().await.expect("page");
    assert!(page.contains("id=\"qrcode\""), "{page}");

    for href in [
        "data:text/html;base64,PGgxPmhpPC9oMT4=",
        "data:text/css;base64,PC9zdHlsZT48c2NyaXB0PmFsZXJ0KDEpPC9zY3JpcHQ+",
        "data:text/css;base64,not base64!",
        "data:text/css,body{}",
        "data:text/javascript;base64,YWxlcnQoMSk=",
    ] {
        href_refused(&app, href).await;
    }
}

both_backends!(
    wx_login_names_the_flow_the_callback_and_the_website_app,
    an_official_account_flow_has_no_wx_login,
    the_relay_answers_an_embedded_callback_in_either_window,
);

/// Asks for a website flow with `href` and asserts the refusal names `wx_login_options.href`
/// alone; answers the status and its details.
async fn href_refused(app: &TestApp, href: &str) -> (tonic::Status, tonic_types::ErrorDetails) {
    let request = BuildAuthorizeUrlRequest {
        app: "web".into(),
        return_url: RETURN_URL.into(),
        wx_login_options: Some(WxLoginOptions { href: href.into(), ..Default::default() }),
        ..Default::default()
    };
    let status = app.grpc.clone().build_authorize_url(app.req(request)).await.expect_err(href);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{href}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    let fields: Vec<_> =
        details.bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default();
    assert_eq!(fields, ["wx_login_options.href"], "{href}");
    (status, details)
}
