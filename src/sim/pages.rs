//! The browser side of WeChat (`open.weixin.qq.com/connect/...`): the authorize and QR-login
//! pages with their strict query rules, the consent page with test users and Allow/Deny, the
//! redirect back with a code (or two, in double-callback mode), and WeChat's error pages.
//! Everything is HTML with status 200, as WeChat answers, and every echoed value is escaped.

use crate::html::{escape, js_string};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use url::Url;

use super::Simulator;
use super::config::{SimApp, SimAppKind};
use super::control::{Answer, Endpoint};
use super::params::Params;
use super::state::{Core, errmsg};

/// The authorize pages answer HTML, an errcode as WeChat's error page.
const ANSWER: Answer = Answer::Html(error_page);

/// Which of WeChat's two authorize pages a request is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    /// `/connect/oauth2/authorize`, for official accounts.
    OAuth2,
    /// `/connect/qrconnect`, for website apps.
    QrConnect,
}

/// The parameters WeChat requires, in the only order it accepts.
const REQUIRED_KEYS: [&str; 5] = ["appid", "redirect_uri", "response_type", "scope", "state"];

/// The QR link `wxLogin.js` frames starts with these, in this order, and has no
/// `response_type`; it is accepted only with `login_type=jssdk`.
const JSSDK_KEYS: [&str; 4] = ["appid", "scope", "redirect_uri", "state"];

/// Where WeChat serves `wxLogin.js` (on `res.wx.qq.com`); the simulator serves its stand-in at
/// the same path.
pub const WX_LOGIN_JS: &str = "/connect/zh_CN/htmledition/js/wxLogin.js";

/// How the QR page was opened: as WeChat's own page, or framed by `wxLogin.js`
/// (`login_type=jssdk`) on a product's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// The whole window is WeChat's page.
    Window,
    /// In the product's iframe; `self_redirect` true: the callback loads in the iframe, false
    /// (or wxLogin.js's `default`): the iframe sends the whole window (`top.location`).
    Embedded { self_redirect: bool },
}

impl Page {
    fn kind(self) -> SimAppKind {
        match self {
            Self::OAuth2 => SimAppKind::OfficialAccount,
            Self::QrConnect => SimAppKind::Website,
        }
    }

    fn endpoint(self) -> Endpoint {
        match self {
            Self::OAuth2 => Endpoint::Authorize,
            Self::QrConnect => Endpoint::QrConnect,
        }
    }

    fn confirm_path(self) -> &'static str {
        match self {
            Self::OAuth2 => "/connect/oauth2/authorize/confirm",
            Self::QrConnect => "/connect/qrconnect/confirm",
        }
    }

    /// The parameters real links carry after the required ones, once each, in any order, with
    /// the values accepted (`None`: any value): `forcePopup`, `forceSnapShot` (the 快照页
    /// notice's parameter; its values are not confirmed, so any) and `connect_redirect` on
    /// official-account links; on QR links `lang` (`cn` or `en`, qrconnect's doc) and those
    /// `wxLogin.js` builds (`self_redirect`, `style`, `href`, `login_type=jssdk`, `stylelite`,
    /// `fast_login`). `forcePopup` is not a qrconnect parameter (issue 20): a QR link with it is
    /// refused, as any unknown parameter is. The service emits only WeChat's documented ones, in
    /// WeChat's order.
    fn optional_params(self) -> &'static [(&'static str, Option<&'static [&'static str]>)] {
        const BOOL: Option<&[&str]> = Some(&["true", "false"]);
        match self {
            Self::OAuth2 => &[("forcePopup", BOOL), ("forceSnapShot", None), ("connect_redirect", Some(&["1"]))],
            Self::QrConnect => &[
                ("self_redirect", Some(&["true", "false", "default"])),
                ("style", Some(&["black", "white", ""])),
                ("href", None),
                ("login_type", Some(&["jssdk"])),
                ("styletype", None),
                ("sizetype", None),
                ("bgcolor", None),
                ("rst", None),
                ("lang", Some(&["cn", "en"])),
                ("stylelite", Some(&["0", "1"])),
                ("fast_login", Some(&["0", "1"])),
            ],
        }
    }
}

/// Why WeChat shows its error page instead of the consent page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageError {
    /// Malformed link: parameter order, names, `response_type`, `state`.
    BadLink,
    /// No app with that appid.
    UnknownAppid,
    /// 10016: an open-platform (website) appid on the official-account page ("不支持微信开放平台
    /// 的Appid，请使用公众号Appid").
    OpenPlatformAppid,
    /// 10003: `redirect_uri` is not on the app's callback domain.
    RedirectUriMismatch,
    /// 10005: the app (or this page) does not have that scope.
    ScopeNotAllowed,
    /// An injected errcode fault.
    Upstream(i64),
}

impl PageError {
    fn errcode(self) -> Option<i64> {
        match self {
            Self::BadLink => None,
            Self::UnknownAppid => None,
            Self::OpenPlatformAppid => Some(10016),
            Self::RedirectUriMismatch => Some(10003),
            Self::ScopeNotAllowed => Some(10005),
            Self::Upstream(code) => Some(code),
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::BadLink => "请检查链接参数是否完整、顺序是否正确",
            Self::UnknownAppid => "appid参数错误",
            Self::OpenPlatformAppid => "不支持微信开放平台的Appid，请使用公众号Appid",
            Self::RedirectUriMismatch => "redirect_uri域名与后台配置不一致",
            Self::ScopeNotAllowed => "scope参数错误或没有scope权限",
            Self::Upstream(code) => errmsg(code),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        tracing::debug!(error = ?self, "simulated authorize error page");
        let (title, detail) = match self.errcode() {
            None => ("该链接无法访问".to_owned(), self.message().to_owned()),
            Some(code) => ("Oops! Something went wrong:(".to_owned(), format!("{code} {}", self.message())),
        };
        layout(&title, "", &format!("<h1>{}</h1><p class=\"err\">{}</p>", escape(&title), escape(&detail)))
            .into_response()
    }
}

/// WeChat's error page for an errcode (an injected errcode fault).
fn error_page(code: i64) -> Response {
    PageError::Upstream(code).into_response()
}

/// An authorize request that passed every check: what the consent page and its forms carry.
struct AuthorizeRequest<'a> {
    app: &'a SimApp,
    /// As given (percent-decoded), re-checked when a form comes back.
    redirect_uri: String,
    redirect: Url,
    scope: &'static str,
    state: String,
}

/// The browser pages and their form targets.
pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/connect/oauth2/authorize", get(oauth2_page))
        .route(Page::OAuth2.confirm_path(), post(oauth2_confirm))
        .route("/connect/qrconnect", get(qrconnect_page))
        .route(Page::QrConnect.confirm_path(), post(qrconnect_confirm))
        .route(WX_LOGIN_JS, get(wx_login_js))
}

/// A stand-in for WeChat's `wxLogin.js`: `new WxLogin({id, appid, scope, redirect_uri, state,
/// self_redirect, style, href, ...})` replaces the element `id`'s content with an iframe of the
/// QR page, its link built as WeChat's script builds it (parameters in its order, values put
/// on verbatim: `redirect_uri` comes URL-encoded), on this simulator's origin.
async fn wx_login_js() -> Response {
    const SCRIPT: &str = r#"// wxauth's WeChat simulator: a stand-in for https://res.wx.qq.com/connect/zh_CN/htmledition/js/wxLogin.js
(function (window, document) {
  var me = document.currentScript;
  var origin = me ? new URL(me.src).origin : "";
  window.WxLogin = function (e) {
    var r = "default";
    if (e.self_redirect === true) { r = "true"; } else if (e.self_redirect === false) { r = "false"; }
    var src = origin + "/connect/qrconnect?appid=" + e.appid + "&scope=" + e.scope + "&redirect_uri=" + e.redirect_uri +
      "&state=" + e.state + "&login_type=jssdk&self_redirect=" + r + "&styletype=" + (e.styletype || "") +
      "&sizetype=" + (e.sizetype || "") + "&bgcolor=" + (e.bgcolor || "") + "&rst=" + (e.rst || "");
    src += e.style ? "&style=" + e.style : "";
    src += e.href ? "&href=" + e.href : "";
    src += e.lang === "en" ? "&lang=en" : "";
    src += e.stylelite === 1 ? "&stylelite=1" : "";
    src += e.fast_login === 0 ? "&fast_login=0" : "";
    var frame = document.createElement("iframe");
    frame.src = src;
    // Desktop WeChat's fast login probes the local client from this frame; Chrome 142+ lets a
    // frame ask for local network access only when its embedder delegates it (issue 20).
    frame.allow = "local-network-access";
    frame.frameBorder = "0";
    frame.allowTransparency = "true";
    frame.scrolling = "no";
    frame.width = "300px";
    frame.height = "400px";
    var box = document.getElementById(e.id);
    box.innerHTML = "";
    box.appendChild(frame);
  };
})(window, document);
"#;
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], SCRIPT).into_response()
}

/// A User-Agent of WeChat's in-app browser (iOS), for tests and scripts that walk an
/// official-account flow.
pub const WECHAT_BROWSER_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 \
     (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.50(0x1800323b) NetType/WIFI Language/zh_CN";

/// A User-Agent of WeCom's (企业微信) in-app browser (iOS): `MicroMessenger` with `wxwork`.
pub const WECOM_BROWSER_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 \
     (KHTML, like Gecko) Mobile/15E148 wxwork/4.1.26 MicroMessenger/7.0.1 Language/zh ColorScheme/Light";

/// An official account's authorize page opens only in WeChat's in-app browser: elsewhere
/// WeChat shows "请在微信客户端打开链接" and no consent (docs/design.md §10.5;
/// desktop browsers use website apps and `qrconnect`). WeCom's browser is elsewhere too,
/// though its User-Agent says `MicroMessenger` (a WeCom staff answer in WeChat's developer
/// community; docs/wechat.md).
async fn oauth2_page(State(sim): State<Simulator>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !crate::wechat::is_in_app_browser(user_agent) {
        return outside_wechat();
    }
    show(&sim, Page::OAuth2, raw).await
}

/// WeChat's page for an official-account link opened outside its browser.
fn outside_wechat() -> Response {
    let title = "请在微信客户端打开链接";
    layout(title, "", &format!("<h1 id=\"outside-wechat\">{title}</h1>")).into_response()
}

async fn qrconnect_page(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    show(&sim, Page::QrConnect, raw).await
}

async fn oauth2_confirm(State(sim): State<Simulator>, body: Bytes) -> Response {
    confirm(&sim, Page::OAuth2, &body)
}

async fn qrconnect_confirm(State(sim): State<Simulator>, body: Bytes) -> Response {
    confirm(&sim, Page::QrConnect, &body)
}

/// `GET` of an authorize page: the consent page, or WeChat's error page.
async fn show(sim: &Simulator, page: Page, raw: Option<String>) -> Response {
    if let Err(faulted) = sim.enter(page.endpoint(), ANSWER).await {
        return faulted;
    }
    match check_query(sim.core(), page, raw.as_deref().unwrap_or("")) {
        Ok((request, frame)) => consent_page(sim, page, frame, &request).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The raw query's shape, as strictly as WeChat matches it, then the values; and whether
/// `wxLogin.js` framed the page (`login_type=jssdk`, whose link has its own order and no
/// `response_type`).
fn check_query<'a>(core: &'a Core, page: Page, raw: &str) -> Result<(AuthorizeRequest<'a>, Frame), PageError> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    let keys = |n: usize| pairs.iter().take(n).map(|(k, _)| k.as_str());
    let jssdk_link = page == Page::QrConnect && keys(JSSDK_KEYS.len()).eq(JSSDK_KEYS);
    let documented = keys(REQUIRED_KEYS.len()).eq(REQUIRED_KEYS) && pairs[2].1 == "code";
    if !jssdk_link && !documented {
        return Err(PageError::BadLink);
    }
    let (required, optional) = pairs.split_at(if jssdk_link { JSSDK_KEYS.len() } else { REQUIRED_KEYS.len() });
    for (i, (key, value)) in optional.iter().enumerate() {
        let known = page
            .optional_params()
            .iter()
            .any(|(k, values)| k == key && values.is_none_or(|values| values.contains(&value.as_str())));
        let repeated = optional[..i].iter().any(|(k, _)| k == key);
        if !known || repeated {
            return Err(PageError::BadLink);
        }
    }
    let optional_value = |name: &str| optional.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let frame = match optional_value("login_type") {
        Some("jssdk") => Frame::Embedded { self_redirect: optional_value("self_redirect") == Some("true") },
        _ if jssdk_link => return Err(PageError::BadLink),
        _ => Frame::Window,
    };
    let value = |i: usize| required[i].1.as_str();
    let request = if jssdk_link {
        check(core, page, value(0), value(2), value(1), value(3))
    } else {
        check(core, page, value(0), value(1), value(3), value(4))
    }?;
    Ok((request, frame))
}

/// The value rules, shared by the page and its forms: state, appid (unknown; 10016 for a
/// website appid on the official-account page), redirect_uri domain (10003), scope (10005).
fn check<'a>(
    core: &'a Core,
    page: Page,
    appid: &str,
    redirect_uri: &str,
    scope: &str,
    state: &str,
) -> Result<AuthorizeRequest<'a>, PageError> {
    if state.len() > 128 || !state.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(PageError::BadLink);
    }
    let app = core.app(appid).ok_or(PageError::UnknownAppid)?;
    let redirect = Url::parse(redirect_uri)
        .ok()
        .filter(|url| on_callback_domain(url, &app.callback_domain))
        .ok_or(PageError::RedirectUriMismatch)?;
    if page == Page::OAuth2 && app.kind == SimAppKind::Website {
        return Err(PageError::OpenPlatformAppid);
    }
    if app.kind != page.kind() {
        return Err(PageError::ScopeNotAllowed);
    }
    let scope = app.kind.scopes().iter().copied().find(|s| *s == scope).ok_or(PageError::ScopeNotAllowed)?;
    Ok(AuthorizeRequest { app, redirect_uri: redirect_uri.to_owned(), redirect, scope, state: state.to_owned() })
}

/// WeChat's callback-domain rule: an http(s) URL whose host is exactly the configured domain
/// (no subdomain, no parent), and whose port matches when the domain names one.
fn on_callback_domain(url: &Url, domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) => (host, Some(port)),
            Err(_) => (domain, None),
        },
        None => (domain, None),
    };
    matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host))
        && port.is_none_or(|p| url.port_or_known_default() == Some(p))
}

/// The consent page: pick a test user and Allow, or Deny. Framed by `wxLogin.js`, it is the
/// QR code with the simulator's "scan and confirm" (the same forms): with `self_redirect` the
/// forms answer inside the iframe, without it they target the whole window (`_top`), as
/// WeChat's iframe moves `top.location` to the callback.
fn consent_page(sim: &Simulator, page: Page, frame: Frame, request: &AuthorizeRequest<'_>) -> Html<String> {
    let core = sim.core();
    tracing::debug!(appid = %request.app.appid, scope = request.scope, "simulated consent page");
    let hidden = |decision: &str| {
        [
            ("appid", request.app.appid.as_str()),
            ("redirect_uri", request.redirect_uri.as_str()),
            ("scope", request.scope),
            ("state", request.state.as_str()),
            ("decision", decision),
        ]
        .iter()
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", escape(value)))
        .collect::<String>()
    };
    let users: String = core
        .users()
        .iter()
        .filter(|u| !u.snapshot || request.scope == "snsapi_userinfo")
        .enumerate()
        .map(|(i, u)| {
            format!(
                "<label><input type=\"radio\" name=\"user\" value=\"{}\"{}> {}</label>",
                escape(&u.key),
                if i == 0 { " checked" } else { "" },
                escape(&u.nickname)
            )
        })
        .collect();
    let asks = match request.scope {
        "snsapi_base" => "获取你的身份标识（openid）",
        "snsapi_userinfo" => "获取你的昵称、头像",
        _ => "使用你的微信帐号登录",
    };
    let action = page.confirm_path();
    if let Frame::Embedded { self_redirect } = frame {
        let target = if self_redirect { "_self" } else { "_top" };
        // A declined scan that does not call back leaves WeChat's frame where it is.
        let deny_target = if sim.controls().deny_stays() { "_self" } else { target };
        return layout(
            "微信登录",
            "<style>body{margin:0 auto;font-size:.8em}#qrcode{width:8em;height:8em;margin:.5em auto;\
             background:repeating-conic-gradient(#000 0 25%,#fff 0 50%) 0 0/1em 1em;border:.5em solid #fff}\
             h1{font-size:1em;text-align:center}button{padding:.3em 1em}label{display:inline;margin:0 .4em}</style>",
            &format!(
                "<h1>微信扫码登录（模拟器）</h1><div id=\"qrcode\" data-self-redirect=\"{self_redirect}\"></div>\
                 <form method=\"post\" action=\"{action}\" target=\"{target}\">{allow}<fieldset><legend>扫码的测试用户</legend>\
                 {users}</fieldset><button type=\"submit\" id=\"allow\">扫码并确认</button></form>\
                 <form method=\"post\" action=\"{action}\" target=\"{deny_target}\">{deny}<button type=\"submit\" id=\"deny\">取消</button></form>",
                allow = hidden("allow"),
                deny = hidden("deny"),
            ),
        );
    }
    layout(
        "微信授权",
        "",
        &format!(
            "<h1>微信授权（模拟器）</h1>\
             <p>应用 <code>{appid}</code> 申请{asks}（{scope}）</p>\
             <p>授权后将返回 <code>{host}</code></p>\
             <form method=\"post\" action=\"{action}\">{allow}<fieldset><legend>测试用户</legend>{users}</fieldset>\
             <button type=\"submit\" id=\"allow\">允许</button></form>\
             <form method=\"post\" action=\"{action}\">{deny}<button type=\"submit\" id=\"deny\">拒绝</button></form>",
            appid = escape(&request.app.appid),
            scope = escape(request.scope),
            host = escape(request.redirect.host_str().unwrap_or("")),
            allow = hidden("allow"),
            deny = hidden("deny"),
        ),
    )
}

/// `POST` from the consent page: the values are checked again (forms are input too), then
/// Deny stays on WeChat's page (today's behaviour, the default) or redirects with `state` only
/// (older docs', `Simulator::set_deny_stays(false)`), and Allow redirects with a fresh code.
fn confirm(sim: &Simulator, page: Page, body: &[u8]) -> Response {
    let form = Params::parse(body);
    let field = |name| form.get(name).unwrap_or("");
    let request = match check(sim.core(), page, field("appid"), field("redirect_uri"), field("scope"), field("state")) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    match field("decision") {
        "deny" if sim.controls().deny_stays() => denied_here(page),
        "deny" => found(&back(&request, None)),
        "allow" => allow(sim, &request, field("user")),
        _ => PageError::BadLink.into_response(),
    }
}

/// WeChat's page after Deny when it does not call back: the user stays on WeChat. The
/// official account's page says the user refused; a QR login was cancelled on the phone
/// ("若用户禁止授权，则不会发生重定向": 网站应用微信登录开发指南).
fn denied_here(page: Page) -> Response {
    let title = match page {
        Page::OAuth2 => "你已拒绝授权",
        Page::QrConnect => "你已取消此次登录",
    };
    layout(title, "", &format!("<h1 id=\"denied\">{title}</h1>")).into_response()
}

fn allow(sim: &Simulator, request: &AuthorizeRequest<'_>, user: &str) -> Response {
    let core = sim.core();
    let Ok(grant) = core.grant(&request.app.appid, user, request.scope) else {
        return PageError::BadLink.into_response();
    };
    if !sim.controls().double_callback() {
        return found(&back(request, Some(&core.issue_code(grant))));
    }
    let first = back(request, Some(&core.issue_code(grant.clone())));
    let second = back(request, Some(&core.issue_code(grant)));
    double_callback_page(&first, &second).into_response()
}

/// The callback URL: `redirect_uri` with `code` (when allowed) and `state` appended to any
/// query it already has.
fn back(request: &AuthorizeRequest<'_>, code: Option<&str>) -> String {
    let ours = match code {
        Some(code) => format!("code={code}&state={}", request.state),
        None => format!("state={}", request.state),
    };
    let mut url = request.redirect.clone();
    let query = match url.query() {
        Some(q) if !q.is_empty() && !q.ends_with('&') => format!("{q}&{ours}"),
        Some(q) => format!("{q}{ours}"),
        None => ours,
    };
    url.set_query(Some(&query));
    url.into()
}

/// `302 Found` to a URL the `url` crate serialized (so always a valid header value).
fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// WeChat's in-app browser hitting the callback twice: the first code is requested in the
/// background (cookies included), then the browser lands on the second.
fn double_callback_page(first: &str, second: &str) -> Html<String> {
    layout(
        "微信授权",
        &format!("<noscript><meta http-equiv=\"refresh\" content=\"0;url={}\"></noscript>", escape(second)),
        &format!(
            "<p>正在返回……</p><p><a id=\"continue\" href=\"{href}\">继续</a></p>\
             <script>(async function () {{\
             try {{ await fetch({first}, {{credentials: \"include\", mode: \"no-cors\"}}); }} catch (e) {{}}\
             location.replace({second});\
             }})();</script>",
            href = escape(second),
            first = js_string(first),
            second = js_string(second),
        ),
    )
}

/// The one page frame: small, UTF-8, readable on a phone.
fn layout(title: &str, head: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title>{head}\
         <style>body{{font-family:system-ui,sans-serif;max-width:28em;margin:2em auto;padding:0 1em}}\
         label{{display:block;margin:.4em 0}}button{{margin:.6em .4em .6em 0;padding:.5em 2em}}\
         #allow{{background:#07c160;color:#fff;border:0}}.err{{color:#c00}}</style>\
         </head><body>{body}</body></html>",
        escape(title)
    ))
}
