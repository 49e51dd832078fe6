//! The demo product page of the dev mode (docs/design.md §8): a stand-in for an internal service
//! that signs its users in with WeChat through wxauth, the way a product team would.
//!
//! - `GET /` offers "Sign in with WeChat" for a phone (app `demo-mp`, `snsapi_userinfo`) and
//!   for a PC (app `demo-web`, QR login).
//! - `GET /login` picks the app by User-Agent, as real products do: inside WeChat's in-app
//!   browser the official account, elsewhere the website app's QR code.
//! - `GET /login/mobile`, `GET /login/pc` call `BuildAuthorizeUrl` over gRPC with a fresh CSRF
//!   `state`, bind that state and the flow id wxauth returns to the browser with cookies, and
//!   send the browser to wxauth's `start_url`, which binds the flow to this browser (a cookie
//!   on the callback domain) and sends it on to WeChat: the flow id alone is then worth nothing
//!   to anyone else.
//! - `GET /login/qr` ("QR on this page") shows the website app's QR code on the demo's own page
//!   with WeChat's `wxLogin.js` (the simulator's stand-in in dev mode), from the `wx_login`
//!   parameters `BuildAuthorizeUrl` returns; `?self_redirect=true` makes the callback land inside
//!   the QR code's iframe, from which the callback page breaks out to the whole window.
//! - `GET /callback?app=..&code=..&state=..` is where the relay brings the browser back: the
//!   state must match the cookie, then `ExchangeCode` with the code and this browser's flow id
//!   (a code is bound to the flow it came through: one pasted into another browser's sign-in
//!   is refused) and `GetUserInfo` (from wxauth's profile cache) give what the page shows. No `code` means the
//!   user declined. A reload calls `ExchangeCode` again with the same code and flow, which
//!   wxauth answers idempotently. A return with neither `code` nor `state` is a refusal too:
//!   the relay gives the state only to the browser a flow was bound to, and the QR code on
//!   this page is not bound to one.
//!
//! - `GET /jssdk` runs `wx.config` as an H5 page inside WeChat does: `SignJsSdkConfig` for the
//!   page's own URL (app `demo-mp`), WeChat's JS-SDK script (the simulator's stand-in in dev
//!   mode, which checks the signature against the tickets the simulator issued), and
//!   `wx.ready` / `wx.error` shown on the page (`#jssdk-status`).
//!
//! Every value from a request or from wxauth is HTML-escaped; codes and keys are never logged.

use crate::html::{escape, js_string};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tonic::transport::{Channel, Endpoint};

use crate::proto::we_chat_o_auth_service_client::WeChatOAuthServiceClient;
use crate::proto::{
    BuildAuthorizeUrlRequest, BuildAuthorizeUrlResponse, ExchangeCodeRequest, FindAccountsRequest, GetUserInfoRequest,
    Scope, SignJsSdkConfigRequest, UserInfo, WxLoginOptions,
};

/// The demo page's address in dev mode.
pub const DEMO_ADDR: &str = "127.0.0.1:8082";

/// The cookie that binds a login's CSRF `state` to the browser that started it.
const STATE_COOKIE: &str = "wxauth_demo_state";
/// The cookie that keeps the login's flow id (`BuildAuthorizeUrlResponse.flow_id`) for
/// `ExchangeCode`.
const FLOW_COOKIE: &str = "wxauth_demo_flow";

/// How a login is started: which wxauth app and scope.
#[derive(Clone, Copy, Debug)]
enum Device {
    /// Inside WeChat on a phone: the official account app, with the consent page.
    Mobile,
    /// A desktop browser: the website app's QR-code login.
    Pc,
}

impl Device {
    fn app(self) -> &'static str {
        match self {
            Self::Mobile => "demo-mp",
            Self::Pc => "demo-web",
        }
    }

    fn scope(self) -> Scope {
        match self {
            Self::Mobile => Scope::SnsapiUserinfo,
            Self::Pc => Scope::SnsapiLogin,
        }
    }
}

/// What the handlers share: the gRPC client, the client key, and the page's own origin.
#[derive(Clone)]
struct Demo {
    grpc: WeChatOAuthServiceClient<Channel>,
    key: String,
    /// `http://host:port` the browser uses; the return URL is `{origin}/callback`.
    origin: String,
    /// WeChat's JS-SDK script: the simulator's stand-in (`http://{sim}/open/js/jweixin-1.6.0.js`).
    jweixin: String,
}

impl fmt::Debug for Demo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Demo").field("key", &"[redacted]").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl Demo {
    /// A request carrying the client key: the one place the key leaves.
    fn authed<T>(&self, message: T) -> Result<tonic::Request<T>, PageError> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.key).parse().map_err(|_| PageError::Unavailable)?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// The demo page's routes, calling wxauth over `grpc` with the client `key`. `origin`
/// (`http://127.0.0.1:8082`) is where browsers reach the page; it must be on the client's
/// return-URL allowlist.
pub fn router(grpc: Channel, key: String, origin: String) -> Router {
    let sim: SocketAddr = crate::dev::SIM_ADDR.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8081)));
    router_beside(grpc, key, origin, sim)
}

/// [`router`] with the simulator (whose JS-SDK stand-in `/jssdk` loads) at `sim`.
fn router_beside(grpc: Channel, key: String, origin: String, sim: SocketAddr) -> Router {
    let jweixin = format!("http://{sim}{}", crate::sim::JWEIXIN_JS);
    let demo = Demo { grpc: WeChatOAuthServiceClient::new(grpc), key, origin, jweixin };
    Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/login/mobile", get(login_mobile))
        .route("/login/pc", get(login_pc))
        .route("/login/qr", get(login_qr))
        .route("/callback", get(callback))
        .route("/jssdk", get(jssdk))
        .with_state(demo)
}

/// [`serve`] with the simulator at `sim` rather than the dev mode's address (tests that run
/// the simulator on a port of their own).
pub async fn serve_beside(
    listener: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    sim: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let origin = format!("http://{}", listener.local_addr()?);
    let endpoint = Endpoint::from_shared(format!("http://{grpc_addr}")).map_err(std::io::Error::other)?;
    let app = router_beside(endpoint.connect_lazy(), crate::config::DEV_CLIENT_KEY.to_owned(), origin, sim);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Serves the demo page on `listener` as the dev-mode client `demo` (key `dev-only-key`) of
/// the wxauth gRPC service at `grpc_addr`, until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let origin = format!("http://{}", listener.local_addr()?);
    let endpoint = Endpoint::from_shared(format!("http://{grpc_addr}")).map_err(std::io::Error::other)?;
    let app = router(endpoint.connect_lazy(), crate::config::DEV_CLIENT_KEY.to_owned(), origin);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// [`serve`] with the demo page's "Sign in through OIDC" too ([`crate::demo_oidc`]), a relying
/// party of the OpenID Provider at `issuer` (wxauth's public listener).
pub async fn serve_with_oidc(
    listener: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    issuer: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let origin = format!("http://{}", listener.local_addr()?);
    let endpoint = Endpoint::from_shared(format!("http://{grpc_addr}")).map_err(std::io::Error::other)?;
    let oidc = crate::demo_oidc::router(issuer, origin.clone()).map_err(std::io::Error::other)?;
    let app = router(endpoint.connect_lazy(), crate::config::DEV_CLIENT_KEY.to_owned(), origin).merge(oidc);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Why a page could not be shown as hoped; each becomes a small page with a retry link.
#[derive(Debug)]
enum PageError {
    /// The callback's `state` is not the one this browser's cookie holds (CSRF, or cookies off).
    StateMismatch,
    /// The callback's query is not one the relay sends.
    BadCallback,
    /// wxauth refused, with its `ErrorInfo.reason`.
    Refused(String),
    /// wxauth could not be reached.
    Unavailable,
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        use tonic_types::StatusExt as _;
        tracing::warn!(code = ?status.code(), "wxauth call failed");
        match status.get_error_details().error_info() {
            Some(info) => Self::Refused(info.reason.clone()),
            None => Self::Unavailable,
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, text) = match &self {
            Self::StateMismatch => (
                StatusCode::BAD_REQUEST,
                "This sign-in was not started here",
                "The state in the link does not match this browser. Start again.".to_owned(),
            ),
            Self::BadCallback => {
                (StatusCode::BAD_REQUEST, "Malformed sign-in link", "The link is not one wxauth sends.".to_owned())
            }
            Self::Refused(reason) => {
                (StatusCode::BAD_GATEWAY, "Sign-in failed", format!("wxauth answered {}.", escape(reason)))
            }
            Self::Unavailable => {
                (StatusCode::BAD_GATEWAY, "wxauth is unavailable", "Is wxauth running? Try again.".to_owned())
            }
        };
        let body = format!("<p id=\"error\">{text}</p><p><a id=\"retry\" href=\"/\">Start again</a></p>");
        (status, page(title, &body)).into_response()
    }
}

async fn home(State(demo): State<Demo>, headers: HeaderMap) -> Response {
    if let Some(redirect) = canonical_origin(&demo, &headers) {
        return redirect;
    }
    page(
        "Demo product",
        "<p>This page stands in for an internal service. It signs you in with WeChat through \
         wxauth; the WeChat here is the simulator.</p>\
         <p><a class=\"button\" id=\"login\" href=\"/login\">Sign in with WeChat</a></p>\
         <p>Or pick: <a id=\"login-mobile\" href=\"/login/mobile\">inside WeChat (official account)</a> · \
         <a id=\"login-pc\" href=\"/login/pc\">QR code (website app)</a> · \
         <a id=\"login-qr\" href=\"/login/qr\">QR on this page</a> \
         (<a id=\"login-qr-self\" href=\"/login/qr?self_redirect=true\">callback in the QR frame</a>)</p>\
         <p>Or as any OpenID Connect application would: \
         <a id=\"login-oidc\" href=\"/oidc/login\">Sign in through OIDC</a> (wxauth's OpenID Provider; \
         <a id=\"login-oidc-es256\" href=\"/oidc/login?alg=ES256\">with an ES256 ID token</a>)</p>\
         <p>Or an H5 page's <a id=\"jssdk\" href=\"/jssdk\">wx.config</a>, signed by wxauth (SignJsSdkConfig)</p>",
    )
    .into_response()
}

/// An H5 page of the official account running `wx.config`, signed by wxauth for this page's own
/// URL: the product never holds the `jsapi_ticket`. `wx.ready` or `wx.error` shows the outcome.
async fn jssdk(State(demo): State<Demo>) -> Result<Response, PageError> {
    let url = format!("{}/jssdk", demo.origin);
    let request = SignJsSdkConfigRequest {
        app: Device::Mobile.app().into(),
        url,
        js_api_list: vec!["updateAppMessageShareData".into()],
    };
    let signed = demo.grpc.clone().sign_js_sdk_config(demo.authed(request)?).await?.into_inner();
    let apis: Vec<String> = signed.js_api_list.iter().map(|a| js_string(a)).collect();
    // The values go into a script: as JavaScript string literals, never spliced raw.
    let body = format!(
        "<p>An H5 page inside WeChat: <code>wx.config</code> with a signature from wxauth.</p>\
         <p id=\"jssdk-status\">checking…</p>\
         <script src=\"{script}\"></script>\
         <script>var shown = document.getElementById(\"jssdk-status\");\
         wx.config({{debug: false, appId: {app_id}, timestamp: {timestamp}, nonceStr: {nonce}, signature: {signature}, \
         jsApiList: [{apis}]}});\
         wx.ready(function () {{ shown.textContent = \"ready\"; }});\
         wx.error(function (res) {{ shown.textContent = \"error: \" + res.errMsg; }});</script>\
         <p><a id=\"retry\" href=\"/\">Back</a></p>",
        script = escape(&demo.jweixin),
        app_id = js_string(&signed.app_id),
        timestamp = signed.timestamp,
        nonce = js_string(&signed.nonce_str),
        signature = js_string(&signed.signature),
        apis = apis.join(", "),
    );
    Ok(page("JS-SDK", &body).into_response())
}

/// "Sign in with WeChat" as real products do it: inside WeChat's in-app browser the official
/// account (its authorize page opens nowhere else), in any other browser the website app's QR
/// code.
async fn login(State(demo): State<Demo>, headers: HeaderMap) -> Result<Response, PageError> {
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let device = if crate::wechat::is_in_app_browser(user_agent) { Device::Mobile } else { Device::Pc };
    start_login(&demo, device).await
}

async fn login_mobile(State(demo): State<Demo>) -> Result<Response, PageError> {
    start_login(&demo, Device::Mobile).await
}

async fn login_pc(State(demo): State<Demo>) -> Result<Response, PageError> {
    start_login(&demo, Device::Pc).await
}

/// "QR on this page": the website app's QR code in `wxLogin.js`'s iframe on this page.
async fn login_qr(State(demo): State<Demo>, RawQuery(query): RawQuery) -> Result<Response, PageError> {
    let self_redirect = param(query.as_deref().unwrap_or(""), "self_redirect").as_deref() == Some("true");
    let options = WxLoginOptions { self_redirect, ..Default::default() };
    let (started, state) = start_flow(&demo, Device::Pc, Some(options)).await?;
    let wx = started.wx_login.ok_or(PageError::Unavailable)?;
    // WeChat today does not call back when the user declines a QR login (issue 20): the flow's
    // expire_time is how this page learns the user gave up, so the QR code gives way to
    // "sign-in not completed" then.
    let expire_time = started.expire_time.map_or(0, |t| t.seconds);
    // The values go into a script: as JavaScript string literals, never spliced raw.
    let body = format!(
        "<p>Scan the QR code with WeChat (in the simulator: pick a user and confirm).</p>\
         <div id=\"wx-qr\" data-expire-time=\"{expire_time}\"></div>\
         <script>setTimeout(function () {{ document.getElementById(\"wx-qr\").innerHTML = \
         \"<p id=\\\"qr-expired\\\">Sign-in not completed: the QR code expired (declined, or not scanned in time).</p>\"; }}, \
         Math.max(0, {expire_time} * 1000 - Date.now()));</script>\
         <script src=\"{script}\"></script>\
         <script>new WxLogin({{id: \"wx-qr\", appid: {appid}, scope: {scope}, redirect_uri: {redirect_uri}, \
         state: {state}, self_redirect: {self_redirect}, style: {style}, href: {href}, stylelite: {stylelite}}});</script>\
         <p><a id=\"retry\" href=\"/\">Back</a></p>",
        script = escape(&wx.script_url),
        appid = js_string(&wx.appid),
        scope = js_string(&wx.scope),
        redirect_uri = js_string(&wx.redirect_uri),
        state = js_string(&wx.state),
        self_redirect = wx.self_redirect,
        style = js_string(&wx.style),
        href = js_string(&wx.href),
        stylelite = u8::from(wx.stylelite),
    );
    with_flow_cookies(page("Sign in with WeChat", &body).into_response(), &state, &started.flow_id)
}

/// Asks wxauth for a flow with a fresh CSRF state, remembers the state in a cookie, and sends
/// the browser to the flow's start URL (which binds the flow to this browser, then redirects to
/// WeChat).
async fn start_login(demo: &Demo, device: Device) -> Result<Response, PageError> {
    let (started, state) = start_flow(demo, device, None).await?;
    let location = HeaderValue::from_str(&started.start_url).map_err(|_| PageError::Unavailable)?;
    let mut response = StatusCode::FOUND.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    with_flow_cookies(response, &state, &started.flow_id)
}

/// `BuildAuthorizeUrl` for `device`'s app with a fresh CSRF state; returns wxauth's answer and
/// the state.
async fn start_flow(
    demo: &Demo,
    device: Device,
    wx_login_options: Option<WxLoginOptions>,
) -> Result<(BuildAuthorizeUrlResponse, String), PageError> {
    let state = crate::random_id(22);
    let request = BuildAuthorizeUrlRequest {
        app: device.app().into(),
        return_url: format!("{}/callback?app={}", demo.origin, device.app()),
        scope: device.scope() as i32,
        state: state.clone(),
        wx_login_options,
        ..Default::default()
    };
    let started = demo.grpc.clone().build_authorize_url(demo.authed(request)?).await?.into_inner();
    Ok((started, state))
}

/// Binds the login's state and flow id to this browser.
fn with_flow_cookies(mut response: Response, state: &str, flow_id: &str) -> Result<Response, PageError> {
    for (name, value) in [(STATE_COOKIE, state), (FLOW_COOKIE, flow_id)] {
        let cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age=600");
        let cookie = HeaderValue::from_str(&cookie).map_err(|_| PageError::Unavailable)?;
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// Where the relay brings the browser back: checks the state, then shows the profile (or
/// that the user declined).
async fn callback(
    State(demo): State<Demo>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    // An embedded QR code with `self_redirect` brings the browser back inside its iframe:
    // break out first, and sign in in the whole window (the code is exchanged once, there).
    if headers.get("sec-fetch-dest").is_some_and(|dest| dest == "iframe") {
        return Ok(break_out());
    }
    let query = query.unwrap_or_default();
    if param(&query, "state").is_none() && param(&query, "code").is_none() {
        // A refusal in a flow not bound to a browser (the QR code on this page): the relay
        // keeps the state back.
        return Ok(declined());
    }
    let state = param(&query, "state").ok_or(PageError::BadCallback)?;
    if cookie(&headers, STATE_COOKIE).is_none_or(|expected| expected != state) {
        return Err(PageError::StateMismatch);
    }
    let Some(code) = param(&query, "code") else {
        return Ok(declined());
    };
    let device = match param(&query, "app").as_deref() {
        Some("demo-mp") => Device::Mobile,
        Some("demo-web") => Device::Pc,
        _ => return Err(PageError::BadCallback),
    };
    let flow_id = cookie(&headers, FLOW_COOKIE).ok_or(PageError::StateMismatch)?;
    let (profile, again) = sign_in(&demo, device, flow_id, code).await?;
    Ok(profile_page(&profile, &again).into_response())
}

/// `ExchangeCode` with the profile (zh_CN, WeChat's default), then `GetUserInfo` (answered from the profile cache the exchange filled)
/// with the token wxauth now holds.
async fn sign_in(
    demo: &Demo,
    device: Device,
    flow_id: String,
    code: String,
) -> Result<(Exchanged, UserInfo), PageError> {
    let request =
        ExchangeCodeRequest { app: device.app().into(), flow_id, code, include_user_info: true, ..Default::default() };
    let exchanged = demo.grpc.clone().exchange_code(demo.authed(request)?).await?.into_inner();
    let profile = exchanged.user_info.clone().unwrap_or_default();
    let request =
        GetUserInfoRequest { app: device.app().into(), openid: exchanged.openid.clone(), ..Default::default() };
    let again = demo.grpc.clone().get_user_info(demo.authed(request)?).await?.into_inner().user_info;
    // The same person's accounts in the other demo apps (one open-platform account: one unionid).
    let mut also = Vec::new();
    if !exchanged.unionid.is_empty() {
        let request = FindAccountsRequest { unionid: exchanged.unionid.clone(), ..Default::default() };
        let found = demo.grpc.clone().find_accounts(demo.authed(request)?).await?.into_inner().accounts;
        also = found.into_iter().filter(|a| a.app != exchanged.app).map(|a| a.app).collect();
    }
    let exchanged =
        Exchanged { app: exchanged.app, openid: exchanged.openid, unionid: exchanged.unionid, profile, also };
    Ok((exchanged, again.unwrap_or_default()))
}

/// What `ExchangeCode` told the product about the user.
struct Exchanged {
    app: String,
    openid: String,
    unionid: String,
    profile: UserInfo,
    /// The other apps this person signed in through (`FindAccounts` by unionid).
    also: Vec<String>,
}

fn profile_page(user: &Exchanged, again: &UserInfo) -> Html<String> {
    let profile = &user.profile;
    let initial = profile.nickname.chars().next().map(String::from).unwrap_or_else(|| "?".into());
    // No sex or region: WeChat answers sex 0 and empty province, city and country for every
    // user since 2021-10-20, so a product must not build on them.
    let rows = [
        ("app", "app", user.app.clone()),
        ("openid", "openid", user.openid.clone()),
        ("unionid", "unionid", user.unionid.clone()),
        (
            "also signed in through",
            "also",
            if user.also.is_empty() { "no other app yet".into() } else { user.also.join(", ") },
        ),
        ("nickname again (GetUserInfo: wxauth's profile cache)", "nickname-again", again.nickname.clone()),
        ("avatar URL", "avatar", profile.head_image_url.clone()),
    ];
    let rows: String = rows
        .iter()
        .map(|(label, id, value)| format!("<tr><th>{label}</th><td id=\"{id}\">{}</td></tr>", escape(value)))
        .collect();
    let body = format!(
        "<div class=\"user\"><span class=\"avatar\">{}</span><h2>Signed in as <span id=\"nickname\">{}</span></h2></div>\
         <table>{rows}</table><p><a id=\"retry\" href=\"/\">Sign in again</a></p>{BREAK_OUT}",
        escape(&initial),
        escape(&profile.nickname),
    );
    page("Welcome", &body)
}

/// The callback page loaded inside the QR code's iframe: it loads itself in the whole window.
/// (The same script suits any product; browsers without `Sec-Fetch-Dest` get the profile page,
/// which carries it too.)
fn break_out() -> Response {
    page("Signing in…", &format!("<p id=\"breaking-out\">Signing in…</p>{BREAK_OUT}")).into_response()
}

/// Loads this page in the whole window when it is in a frame (an embedded QR code with
/// `self_redirect`). Same origin as the top window, so no browser blocks it.
const BREAK_OUT: &str =
    "<script>if (window.top !== window.self) { window.top.location.replace(window.location.href); }</script>";

fn declined() -> Response {
    page(
        "You declined",
        "<p id=\"declined\">You declined to sign in with WeChat. Nothing was shared.</p>\
         <p><a id=\"retry\" href=\"/\">Try again</a></p>",
    )
    .into_response()
}

/// Redirects to the configured origin when the browser came by another name (`localhost`
/// vs `127.0.0.1`): the state cookie must live where the relay will bring the browser back.
fn canonical_origin(demo: &Demo, headers: &HeaderMap) -> Option<Response> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let expected = demo.origin.strip_prefix("http://")?;
    (host != expected).then(|| {
        let mut response = StatusCode::FOUND.into_response();
        if let Ok(location) = HeaderValue::from_str(&format!("{}/", demo.origin)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        response
    })
}

/// The first value of `name` in a query string, decoded.
fn param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// The value of cookie `name`, if the browser sent it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The page frame. `body` is trusted HTML built here; every value in it was escaped.
fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{title} · demo product</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         .button{{display:inline-block;padding:.6rem 1.2rem;border-radius:.4rem;background:#07c160;color:#fff;text-decoration:none}}\
         .user{{display:flex;align-items:center;gap:1rem}}\
         .avatar{{display:inline-flex;width:3rem;height:3rem;border-radius:50%;background:#07c160;color:#fff;\
         align-items:center;justify-content:center;font-size:1.4rem}}\
         table{{border-collapse:collapse;margin:1rem 0}}th,td{{text-align:left;padding:.3rem .8rem;border-bottom:1px solid #ddd;\
         font-size:.9rem}}th{{white-space:nowrap}}td{{word-break:break-all}}header{{color:#888;font-size:.85rem}}</style></head>\
         <body><header>demo product · signs in through wxauth</header><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(escape("<img src=x onerror='a'>&\""), "&lt;img src=x onerror=&#39;a&#39;&gt;&amp;&quot;");
    }

    #[test]
    fn the_state_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; wxauth_demo_state=Abc123; b=2"));
        assert_eq!(cookie(&headers, STATE_COOKIE).as_deref(), Some("Abc123"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(param("app=demo-mp&code=a%2Bb&state=s", "code").as_deref(), Some("a+b"));
        assert_eq!(param("state=s", "code"), None);
    }

    #[test]
    fn a_profile_page_escapes_what_wechat_sent() {
        let user = Exchanged {
            app: "demo-mp".into(),
            openid: "o1".into(),
            unionid: "u1".into(),
            profile: UserInfo { nickname: "<script>x</script>".into(), ..Default::default() },
            also: vec!["demo-mini".into()],
        };
        let Html(body) = profile_page(&user, &UserInfo::default());
        assert!(body.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!body.contains("<script>x"));
        assert!(body.contains("<td id=\"also\">demo-mini</td>"));
    }
}
