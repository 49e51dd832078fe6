//! The browser's doors into WeChat: the authorize URL of a flow and the parameters of
//! `wxLogin.js` (the QR code a website app can embed), one flow behind both. No call to WeChat.

use url::Url;

use super::{App, AppKind, Scope, WechatClient, base};

/// Where WeChat serves `wxLogin.js` (WeChat's 网站应用微信登录 doc).
const WX_LOGIN_JS_ORIGIN: &str = "https://res.wx.qq.com";
/// The path of `wxLogin.js` on WeChat's resource host; the simulator serves its stand-in there.
pub(crate) const WX_LOGIN_JS_PATH: &str = "connect/zh_CN/htmledition/js/wxLogin.js";
/// The host of WeChat's authorize pages.
const WECHAT_OPEN_HOST: &str = "open.weixin.qq.com";

/// The product's choices for its embedded QR code, validated (`style` one of WeChat's,
/// `href` an https stylesheet or a CSS `data:` URL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct WxLoginOptions {
    /// true: the callback lands inside the iframe; false: the whole window goes.
    pub self_redirect: bool,
    /// `black`, `white` or empty.
    pub style: String,
    /// An https stylesheet URL, a base64 CSS `data:` URL, or empty.
    pub href: String,
    /// WeChat's light QR style (`stylelite=1`; WeChat then ignores `href`).
    pub stylelite: bool,
}

/// The parameters of `new WxLogin({...})` for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WxLoginParams {
    /// The website app's appid.
    pub appid: String,
    /// `snsapi_login`.
    pub scope: &'static str,
    /// wxauth's callback URL, URL-encoded.
    pub redirect_uri: String,
    /// The flow id.
    pub state: String,
    /// As requested.
    pub options: WxLoginOptions,
    /// The `wxLogin.js` to load.
    pub script_url: String,
}

/// `redirect_uri` as WeChat's links carry it: form-URL-encoded. One rule for the authorize URL
/// and `wxLogin.js`.
fn encode_redirect_uri(redirect_uri: &str) -> String {
    url::form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect()
}

/// Parameters of one authorize URL.
#[derive(Debug)]
pub(crate) struct AuthorizeParams<'a> {
    /// The app.
    pub app: &'a App,
    /// wxauth's public callback URL.
    pub redirect_uri: &'a str,
    /// The scope.
    pub scope: Scope,
    /// The flow id.
    pub state: &'a str,
    /// Adds `forcePopup=true` on an official account's page (never on qrconnect, which does not
    /// document it).
    pub force_popup: bool,
}

impl WechatClient {
    /// The authorize URL, parameters in WeChat's order: `appid, redirect_uri, response_type,
    /// scope, state`, then `forcePopup` and `connect_redirect=1` (oauth2/authorize only), then
    /// `#wechat_redirect`. WeChat rejects other orders.
    pub(crate) fn authorize_url(&self, p: &AuthorizeParams<'_>) -> String {
        authorize_url(&self.settings().open_base, p)
    }

    /// What `new WxLogin({...})` needs to show the QR code of a website-app flow on the
    /// product's own page: the same app, scope, callback and state as [`Self::authorize_url`],
    /// so the embedded QR code and the redirect are two doors into one flow.
    pub(crate) fn wx_login(&self, p: &AuthorizeParams<'_>, options: WxLoginOptions) -> WxLoginParams {
        WxLoginParams {
            appid: p.app.appid.clone(),
            scope: p.scope.as_str(),
            // wxLogin.js puts `redirect_uri` on the QR link verbatim: WeChat's docs ask for it
            // URL-encoded.
            redirect_uri: encode_redirect_uri(p.redirect_uri),
            state: p.state.to_owned(),
            options,
            script_url: self.wx_login_script_url(),
        }
    }

    /// WeChat's `wxLogin.js`, or, when the authorize pages are not WeChat's (the simulator), the
    /// same path under their base, where the simulator serves its stand-in.
    pub(super) fn wx_login_script_url(&self) -> String {
        if self.settings().open_base.host_str() == Some(WECHAT_OPEN_HOST) {
            format!("{WX_LOGIN_JS_ORIGIN}/{WX_LOGIN_JS_PATH}")
        } else {
            format!("{}{WX_LOGIN_JS_PATH}", base(&self.settings().open_base))
        }
    }
}

/// The authorize URL on `open_base` ([`WechatClient::authorize_url`], which the relay's start
/// URL also uses for a flow's browser-bound id): parameters in WeChat's order.
pub(crate) fn authorize_url(open_base: &Url, p: &AuthorizeParams<'_>) -> String {
    let page = match p.app.kind {
        AppKind::OfficialAccount => "connect/oauth2/authorize",
        // Mobile apps and mini programs have no authorize page: BuildAuthorizeUrl refuses them.
        AppKind::Website | AppKind::MobileApp | AppKind::MiniProgram => "connect/qrconnect",
    };
    let redirect = encode_redirect_uri(p.redirect_uri);
    let mut out = format!(
        "{}{page}?appid={}&redirect_uri={redirect}&response_type=code&scope={}&state={}",
        base(open_base),
        p.app.appid,
        p.scope.as_str(),
        p.state,
    );
    // `forcePopup` is a parameter of the official account's page only: qrconnect's doc
    // (网站应用微信登录开发指南) lists appid, redirect_uri, response_type, scope, state and `lang`,
    // and a QR code always asks the user anyway (issue 20; docs/wechat.md).
    if p.force_popup && p.app.kind == AppKind::OfficialAccount {
        out.push_str("&forcePopup=true");
    }
    if p.app.kind == AppKind::OfficialAccount {
        out.push_str("&connect_redirect=1");
    }
    out.push_str("#wechat_redirect");
    out
}
