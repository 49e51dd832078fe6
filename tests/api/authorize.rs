//! BuildAuthorizeUrl: the WeChat URL, flows, caller authentication and allowlists.

use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{BuildAuthorizeUrlRequest, Device, Scope, WxLoginOptions};

use crate::both_backends;
use crate::helpers::{Backend, CALLBACK_HOST, MP_APPID, TRADE_KEY, authed, metadata, reason, spawn_app};

fn request(return_url: &str) -> BuildAuthorizeUrlRequest {
    BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: return_url.into(),
        scope: Scope::SnsapiUserinfo as i32,
        state: "csrf-Ω-123".into(),
        ..Default::default()
    }
}

async fn the_url_follows_wechats_order_and_the_simulator_accepts_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .grpc
        .clone()
        .build_authorize_url(app.req(request("https://passport.example.com/login/done")))
        .await
        .expect("ok")
        .into_inner();

    let flow = &response.flow_id;
    assert_eq!(flow.len(), 54, "22 random characters and the hex of a 128-bit tag");
    assert!(flow.bytes().all(|b| b.is_ascii_alphanumeric()));
    let expected = format!(
        "http://{}/connect/oauth2/authorize?appid={MP_APPID}&redirect_uri=https%3A%2F%2F{CALLBACK_HOST}%2Fwechat%2Fcallback\
         &response_type=code&scope=snsapi_userinfo&state={flow}&connect_redirect=1#wechat_redirect",
        app.sim_addr
    );
    assert_eq!(response.authorize_url, expected);
    assert_eq!(response.app, "mp");
    assert_eq!(response.scope, Scope::SnsapiUserinfo as i32);
    let expire = response.expire_time.expect("expire_time").seconds;
    assert!((expire - app.clock.now_secs() - 600).abs() <= 2, "flow lives 10 minutes");

    // The simulator enforces WeChat's order and callback domain: it shows its consent page.
    let page = app.http.get(&response.authorize_url).send().await.expect("sim").text().await.expect("body");
    assert!(page.contains("id=\"allow\""), "consent page, not an error page: {page}");
}

async fn device_picks_the_default_app_and_force_popup_stays_off_qrconnect(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = request("https://www.example.com/");
    req.app = String::new();
    req.device = Device::Pc as i32;
    req.scope = Scope::Unspecified as i32;
    req.force_popup = true;
    let response = app.grpc.clone().build_authorize_url(app.req(req)).await.expect("ok").into_inner();
    assert_eq!(response.app, "web");
    assert_eq!(response.scope, Scope::SnsapiLogin as i32);
    assert!(response.authorize_url.contains("/connect/qrconnect?appid=wxd0000000000000b2&"));
    // forcePopup is the official account's parameter; qrconnect does not document it (issue 20).
    assert!(
        response.authorize_url.ends_with(&format!("&scope=snsapi_login&state={}#wechat_redirect", response.flow_id)),
        "{}",
        response.authorize_url
    );
    let page = app.http.get(&response.authorize_url).send().await.expect("sim").text().await.expect("body");
    assert!(page.contains("id=\"allow\""), "{page}");
}

/// With neither app nor device, the browser's User-Agent picks the app as WeChat requires:
/// WeChat's in-app browser the official account, any other browser the website QR app.
async fn the_browsers_user_agent_picks_the_app(backend: Backend) {
    let app = spawn_app(backend).await;
    let pick = |user_agent: &str| {
        let mut req = request("https://www.example.com/");
        (req.app, req.scope, req.user_agent) = (String::new(), 0, user_agent.to_owned());
        let mut grpc = app.grpc.clone();
        let req = app.req(req);
        async move { grpc.build_authorize_url(req).await.expect("ok").into_inner() }
    };
    let inside = pick(wxauth::sim::WECHAT_BROWSER_UA).await;
    assert_eq!((inside.app.as_str(), inside.scope), ("mp", Scope::SnsapiBase as i32));
    assert!(inside.authorize_url.contains("/connect/oauth2/authorize?"));
    let desktop = pick("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Safari/605.1.15").await;
    assert_eq!((desktop.app.as_str(), desktop.scope), ("web", Scope::SnsapiLogin as i32));
    assert!(desktop.authorize_url.contains("/connect/qrconnect?"));
    // WeCom's browser says MicroMessenger too (with wxwork), but an official account's page
    // answers "请在微信客户端打开链接" there: it gets the website app's QR code (issue 20).
    let wecom = pick(wxauth::sim::WECOM_BROWSER_UA).await;
    assert_eq!((wecom.app.as_str(), wecom.scope), ("web", Scope::SnsapiLogin as i32));
    assert!(wecom.authorize_url.contains("/connect/qrconnect?"));
    let wecom_http = wxauth::http_client().user_agent(wxauth::sim::WECOM_BROWSER_UA).build().expect("http");
    let page = wecom_http.get(&wecom.authorize_url).send().await.expect("sim").text().await.expect("body");
    assert!(page.contains("id=\"allow\""), "the QR page opens in WeCom: {page}");
    let refused = wecom_http.get(&inside.authorize_url).send().await.expect("sim").text().await.expect("body");
    assert!(refused.contains("请在微信客户端打开链接") && !refused.contains("id=\"allow\""), "{refused}");
}

async fn an_unspecified_scope_is_silent_for_official_accounts(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = request("https://passport.example.com/login/");
    req.scope = 0;
    let response = app.grpc.clone().build_authorize_url(app.req(req)).await.expect("ok").into_inner();
    assert_eq!(response.scope, Scope::SnsapiBase as i32);
    assert!(response.authorize_url.contains("&scope=snsapi_base&"));
}

async fn return_urls_off_the_allowlist_are_denied(backend: Backend) {
    let app = spawn_app(backend).await;
    for url in [
        "https://evil.com/",
        "https://passport.example.com@evil.com/",
        "https://example.com/",
        "http://passport.example.com/login/",
        "//evil.com",
    ] {
        let status = app.grpc.clone().build_authorize_url(app.req(request(url))).await.expect_err(url);
        assert_eq!(status.code(), Code::PermissionDenied, "{url}");
        assert_eq!(reason(&status), "RETURN_URL_NOT_ALLOWED", "{url}");
        assert!(metadata(&status, "rejection").is_some());
        assert!(!status.message().contains("evil"), "the message does not echo input");
    }
    // A path that would name another host if a product copied it into a relative redirect.
    for url in ["https://passport.example.com/login/..//evil.example", "https://passport.example.com//evil.example"] {
        let status = app.grpc.clone().build_authorize_url(app.req(request(url))).await.expect_err(url);
        assert_eq!(metadata(&status, "rejection").as_deref(), Some("NETWORK_PATH"), "{url}");
    }
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let scrape = scrape.text().await.expect("text");
    assert!(scrape.contains("wxauth_return_url_refusals_total{reason=\"NETWORK_PATH\"} 2\n"), "{scrape}");
    // Another client's allowlist is its own.
    let status = app
        .grpc
        .clone()
        .build_authorize_url(authed(TRADE_KEY, request("https://passport.example.com/login/")))
        .await
        .expect_err("trade");
    assert_eq!(reason(&status), "RETURN_URL_NOT_ALLOWED");
}

async fn callers_without_a_valid_key_are_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut bare = tonic::Request::new(request("https://passport.example.com/login/"));
    let status = app.grpc.clone().build_authorize_url(bare).await.expect_err("no key");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::Unauthenticated, "CLIENT_UNAUTHENTICATED"));
    for header in ["Bearer wrong-key", "Basic cGFzc3BvcnQ=", "Bearer", ""] {
        bare = tonic::Request::new(request("https://passport.example.com/login/"));
        bare.metadata_mut().insert("authorization", header.parse().expect("ascii"));
        let status = app.grpc.clone().build_authorize_url(bare).await.expect_err(header);
        assert_eq!(reason(&status), "CLIENT_UNAUTHENTICATED", "{header}");
    }
}

async fn a_client_may_only_use_its_apps(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut req = request("https://trade.example.com/");
    req.app = "web".into();
    req.scope = Scope::SnsapiLogin as i32;
    let status = app.grpc.clone().build_authorize_url(authed(TRADE_KEY, req)).await.expect_err("not allowed");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::PermissionDenied, "APP_NOT_ALLOWED"));
}

async fn invalid_fields_are_all_reported_with_bad_request(backend: Backend) {
    let app = spawn_app(backend).await;
    let req = BuildAuthorizeUrlRequest {
        app: "MP!".into(),
        return_url: String::new(),
        scope: 99,
        state: "s".repeat(513),
        device: 7,
        force_popup: false,
        user_agent: "u".repeat(1025),
        wx_login_options: Some(WxLoginOptions {
            self_redirect: true,
            style: "red".into(),
            href: "https://cdn.example.com/qr.css&redirect_uri=https%3A%2F%2Fevil.example".into(),
            stylelite: false,
        }),
    };
    let status = app.grpc.clone().build_authorize_url(app.req(req)).await.expect_err("invalid");
    assert_eq!((status.code(), reason(&status).as_str()), (Code::InvalidArgument, "INVALID_ARGUMENT"));
    let details = status.get_error_details();
    let mut fields: Vec<_> =
        details.bad_request().expect("BadRequest").field_violations.iter().map(|v| v.field.clone()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "app",
            "device",
            "return_url",
            "scope",
            "state",
            "user_agent",
            "wx_login_options.href",
            "wx_login_options.style"
        ]
    );

    let mut wrong_scope = request("https://passport.example.com/login/");
    wrong_scope.scope = Scope::SnsapiLogin as i32;
    let status = app.grpc.clone().build_authorize_url(app.req(wrong_scope)).await.expect_err("scope");
    assert_eq!(status.get_error_details().bad_request().expect("BadRequest").field_violations[0].field, "scope");

    let mut unknown_app = request("https://passport.example.com/login/");
    unknown_app.app = "nope".into();
    let status = app.grpc.clone().build_authorize_url(app.req(unknown_app)).await.expect_err("app");
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn long_and_unusual_caller_state_is_kept_verbatim(backend: Backend) {
    let app = spawn_app(backend).await;
    let state = "🙂 a&b=c\r\n<script>".to_owned() + &"x".repeat(480);
    let mut req = request("https://passport.example.com/login/");
    req.state = state.clone();
    let response = app.grpc.clone().build_authorize_url(app.req(req)).await.expect("ok").into_inner();
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    let relayed = app.callback(&format!("code={code}&state={}", response.flow_id)).await;
    let location = relayed.headers()["location"].to_str().expect("ascii location").to_owned();
    let url = url::Url::parse(&location).expect("url");
    let got: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(got, [("code".to_owned(), code), ("state".to_owned(), state)]);
}

both_backends!(
    the_url_follows_wechats_order_and_the_simulator_accepts_it,
    device_picks_the_default_app_and_force_popup_stays_off_qrconnect,
    the_browsers_user_agent_picks_the_app,
    an_unspecified_scope_is_silent_for_official_accounts,
    return_urls_off_the_allowlist_are_denied,
    callers_without_a_valid_key_are_unauthenticated,
    a_client_may_only_use_its_apps,
    invalid_fields_are_all_reported_with_bad_request,
    long_and_unusual_caller_state_is_kept_verbatim,
);
