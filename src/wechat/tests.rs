use std::time::Duration;

use url::Url;

use super::*;
use crate::secrets::AppSecret;
use crate::telemetry::Metrics;

fn client() -> WechatClient {
    WechatClient::new(
        WechatSettings {
            open_base: Url::parse("https://open.weixin.qq.com").expect("url"),
            api_base: Url::parse("https://api.weixin.qq.com").expect("url"),
            timeout: Duration::from_secs(3),
            attempts: 3,
        },
        Metrics::new(),
    )
    .expect("client")
}

fn app(kind: AppKind) -> App {
    App { name: "mp".into(), appid: "wx0123456789abcdef".into(), secret: AppSecret::new("s"), kind }
}

#[test]
fn the_longest_retried_call_is_every_attempt_and_the_longest_backoffs() {
    // 3 attempts of 3 s, and backoffs of at most 2 x 100 ms and 2 x 200 ms between them.
    assert_eq!(client().settings().longest_retrying_call(), Duration::from_millis(9_600));
    let once = WechatSettings { attempts: 1, ..client().settings().clone() };
    assert_eq!(once.longest_retrying_call(), Duration::from_secs(3));
}

#[test]
fn official_account_url_has_wechats_parameter_order() {
    let app = app(AppKind::OfficialAccount);
    let url = client().authorize_url(&AuthorizeParams {
        app: &app,
        redirect_uri: "https://auth.example.com/wechat/callback",
        scope: Scope::UserInfo,
        state: "Flow123",
        force_popup: false,
    });
    assert_eq!(
        url,
        "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx0123456789abcdef\
         &redirect_uri=https%3A%2F%2Fauth.example.com%2Fwechat%2Fcallback&response_type=code\
         &scope=snsapi_userinfo&state=Flow123&connect_redirect=1#wechat_redirect"
    );
}

/// `forcePopup` is the official account's parameter; qrconnect does not document it, so a
/// website app's link never carries it (issue 20).
#[test]
fn website_url_uses_qrconnect_without_force_popup() {
    let app = app(AppKind::Website);
    let url = client().authorize_url(&AuthorizeParams {
        app: &app,
        redirect_uri: "https://auth.example.com/wechat/callback",
        scope: Scope::Login,
        state: "F",
        force_popup: true,
    });
    assert_eq!(
        url,
        "https://open.weixin.qq.com/connect/qrconnect?appid=wx0123456789abcdef\
         &redirect_uri=https%3A%2F%2Fauth.example.com%2Fwechat%2Fcallback&response_type=code\
         &scope=snsapi_login&state=F#wechat_redirect"
    );
    let official = self::app(AppKind::OfficialAccount);
    let url = client().authorize_url(&AuthorizeParams {
        app: &official,
        redirect_uri: "https://auth.example.com/wechat/callback",
        scope: Scope::UserInfo,
        state: "F",
        force_popup: true,
    });
    assert!(url.ends_with("&state=F&forcePopup=true&connect_redirect=1#wechat_redirect"), "{url}");
}

#[test]
fn wx_login_params_name_the_same_flow_as_the_qrconnect_url() {
    let app = app(AppKind::Website);
    let params = AuthorizeParams {
        app: &app,
        redirect_uri: "https://auth.example.com/wechat/callback",
        scope: Scope::Login,
        state: "Flow123",
        force_popup: false,
    };
    let options = WxLoginOptions { self_redirect: true, style: "white".into(), href: String::new(), stylelite: true };
    let wx = client().wx_login(&params, options.clone());
    assert_eq!(wx.appid, "wx0123456789abcdef");
    assert_eq!(wx.scope, "snsapi_login");
    assert_eq!(wx.redirect_uri, "https%3A%2F%2Fauth.example.com%2Fwechat%2Fcallback");
    assert!(client().authorize_url(&params).contains(&format!("&redirect_uri={}&", wx.redirect_uri)));
    assert_eq!(wx.state, "Flow123");
    assert_eq!(wx.options, options);
    assert_eq!(wx.script_url, "https://res.wx.qq.com/connect/zh_CN/htmledition/js/wxLogin.js");
}

#[test]
fn wx_login_js_comes_from_the_simulator_when_the_pages_do() {
    let settings =
        WechatSettings { open_base: Url::parse("http://127.0.0.1:8081").expect("url"), ..client().settings().clone() };
    let sim = WechatClient::new(settings, Metrics::new()).expect("client");
    assert_eq!(sim.wx_login_script_url(), "http://127.0.0.1:8081/connect/zh_CN/htmledition/js/wxLogin.js");
}

#[test]
fn errcode_replies_decode_as_api_errors() {
    let err = decode::<TokenGrant>(br#"{"errcode":40163,"errmsg":"code been used, rid: 1"}"#).unwrap_err();
    assert_eq!(err.errcode(), Some(40163));
    assert!(!err.is_transient());
    assert!(decode::<TokenGrant>(br#"{"errcode":-1,"errmsg":"busy"}"#).unwrap_err().is_transient());
    assert!(matches!(decode::<TokenGrant>(b"{\"access_tok"), Err(WechatError::Decode(_))));
}

#[test]
fn a_profile_reads_sex_as_a_number_or_a_numeric_string() {
    let number: Profile = decode(br#"{"openid":"o","sex":2}"#).expect("number");
    let string: Profile = decode(br#"{"openid":"o","sex":"1"}"#).expect("numeric string");
    assert_eq!((number.sex, string.sex), (2, 1));
    assert!(matches!(decode::<Profile>(br#"{"openid":"o","sex":"male"}"#), Err(WechatError::Decode(_))));
    let cached = serde_json::to_vec(&string).expect("serialize");
    assert_eq!(decode::<Profile>(&cached).expect("round trip"), string, "the sealed cache reads its own JSON");
}

#[test]
fn scope_rules_follow_the_app_kind() {
    assert!(AppKind::OfficialAccount.allows(Scope::UserInfo));
    assert!(!AppKind::OfficialAccount.allows(Scope::Login));
    assert!(AppKind::Website.allows(Scope::Login));
    assert!(!AppKind::Website.allows(Scope::Base));
}

/// WeCom's browser says `MicroMessenger` with `wxwork` (any case): not WeChat's in-app browser,
/// whose official-account pages it cannot open (issue 20).
#[test]
fn wecoms_browser_is_not_wechats() {
    let wechat = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                  Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN";
    let wecom = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 Mobile/15E148 wxwork/4.1.26 MicroMessenger/7.0.1 Language/zh ColorScheme/Light";
    assert!(super::is_in_app_browser(wechat));
    assert!(!super::is_in_app_browser(wecom));
    let windows = "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) \
                   Chrome/53.0.2785.116 Safari/537.36 QBCore/4.0.1326.400 QQBrowser/9.0.2524.400 \
                   Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) \
                   Chrome/81.0.4044.138 Safari/537.36 wxwork/3.1.16 (MicroMessenger/6.2) WindowsWechat";
    assert!(!super::is_in_app_browser(windows));
    assert!(!super::is_in_app_browser("Mozilla/5.0 MicroMessenger/7.0.1 wxWork/4.0.0"));
    assert!(!super::is_in_app_browser("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36"));
}
