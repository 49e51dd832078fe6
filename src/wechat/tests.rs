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

#[test]
fn website_url_uses_qrconnect_and_force_popup() {
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
         &scope=snsapi_login&state=F&forcePopup=true#wechat_redirect"
    );
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
    let options = WxLoginOptions { self_redirect: true, style: "white".into(), href: String::new() };
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
