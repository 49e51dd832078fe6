//! The upstream client: WeChat's authorize URLs and its `sns` JSON endpoints, exactly as
//! WeChat documents them (docs/design.md §10), with errcode decoding. It knows nothing of gRPC or
//! Redis; the service reaches WeChat (or the simulator) only through the configured base URLs.

use std::time::Duration;

use rand::Rng as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::secrets::{AccessToken, AppSecret, AuthCode, RefreshToken, SessionKey};
use crate::telemetry::Metrics;

/// What kind of WeChat app, which decides the authorize page and the scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// 公众号: `connect/oauth2/authorize`, scopes `snsapi_base` and `snsapi_userinfo`.
    OfficialAccount,
    /// 开放平台网站应用: `connect/qrconnect`, scope `snsapi_login` (PC QR login).
    Website,
    /// 开放平台移动应用: the native WeChat SDK hands the app a code (`snsapi_userinfo`, 10
    /// minutes, single use), exchanged at the same `sns/oauth2/access_token`; no authorize page.
    MobileApp,
    /// 小程序: `wx.login()` gives a `js_code`, traded at `sns/jscode2session` for the openid,
    /// the session key and (bound apps) the unionid; no authorize page, no user tokens.
    MiniProgram,
}

impl AppKind {
    /// Every kind, in declaration order.
    pub const ALL: [AppKind; 4] =
        [AppKind::OfficialAccount, AppKind::Website, AppKind::MobileApp, AppKind::MiniProgram];

    /// The code's life at WeChat: 5 minutes for official accounts and mini programs' `js_code`,
    /// 10 for website and mobile apps.
    pub fn code_life(self) -> Duration {
        match self {
            AppKind::OfficialAccount | AppKind::MiniProgram => Duration::from_secs(300),
            AppKind::Website | AppKind::MobileApp => Duration::from_secs(600),
        }
    }

    /// The scope used when a request leaves it unspecified.
    pub fn default_scope(self) -> Scope {
        match self {
            AppKind::OfficialAccount | AppKind::MiniProgram => Scope::Base,
            AppKind::Website => Scope::Login,
            AppKind::MobileApp => Scope::UserInfo,
        }
    }

    /// Whether an app of this kind may ask for `scope` on an authorize page (mobile apps and
    /// mini programs have none: their codes come from the WeChat SDK / `wx.login()`).
    pub fn allows(self, scope: Scope) -> bool {
        match self {
            AppKind::OfficialAccount => matches!(scope, Scope::Base | Scope::UserInfo),
            AppKind::Website => scope == Scope::Login,
            AppKind::MobileApp | AppKind::MiniProgram => false,
        }
    }

    /// Whether sign-ins go through a browser, an authorize page and the relay.
    pub fn has_authorize_page(self) -> bool {
        matches!(self, AppKind::OfficialAccount | AppKind::Website)
    }

    /// The config spelling (`official_account`, ...), also the `kind` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::OfficialAccount => "official_account",
            AppKind::Website => "website",
            AppKind::MobileApp => "mobile_app",
            AppKind::MiniProgram => "mini_program",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A WeChat authorization scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `snsapi_base`: silent, openid only.
    Base,
    /// `snsapi_userinfo`: consent, profile.
    UserInfo,
    /// `snsapi_login`: website QR login, profile.
    Login,
}

impl Scope {
    /// WeChat's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Base => "snsapi_base",
            Scope::UserInfo => "snsapi_userinfo",
            Scope::Login => "snsapi_login",
        }
    }

    /// Parses WeChat's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Scope::Base, Scope::UserInfo, Scope::Login].into_iter().find(|v| v.as_str() == s)
    }

    /// Whether a token of this scope may read the profile.
    pub fn grants_userinfo(self) -> bool {
        matches!(self, Scope::UserInfo | Scope::Login)
    }
}

/// Language of the profile's place names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    /// Simplified Chinese, WeChat's default.
    #[default]
    ZhCn,
    /// Traditional Chinese.
    ZhTw,
    /// English.
    En,
}

impl Lang {
    /// Every language WeChat offers.
    pub const ALL: [Lang; 3] = [Lang::ZhCn, Lang::ZhTw, Lang::En];

    /// WeChat's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::ZhCn => "zh_CN",
            Lang::ZhTw => "zh_TW",
            Lang::En => "en",
        }
    }
}

/// One configured WeChat app. `Debug` hides the secret.
#[derive(Clone, Debug)]
pub struct App {
    /// The config name (`mp`), used in keys and requests.
    pub name: String,
    /// WeChat's appid.
    pub appid: String,
    /// The appsecret.
    pub secret: AppSecret,
    /// Official account or website app.
    pub kind: AppKind,
}

/// Why a WeChat call failed. Transport, upstream reply and decoding stay apart; no variant
/// carries a URL (they hold secrets and codes) or a token.
#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with an errcode.
    #[error("WeChat errcode {errcode}")]
    Api {
        /// The errcode.
        errcode: i64,
        /// WeChat's message (carries a request id hint).
        errmsg: String,
    },
    /// No answer: connect error, timeout, reset.
    #[error("WeChat unreachable")]
    Transport(#[source] reqwest::Error),
    /// An HTTP status other than 200.
    #[error("WeChat answered HTTP {0}")]
    Status(u16),
    /// A 200 whose body is not the JSON WeChat documents.
    #[error("WeChat reply not understood")]
    Decode(#[source] serde_json::Error),
}

impl WechatError {
    /// The errcode, when WeChat gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            WechatError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// Whether trying again soon may succeed (busy, 5xx, network).
    pub fn is_transient(&self) -> bool {
        match self {
            WechatError::Api { errcode, .. } => *errcode == -1,
            WechatError::Transport(_) | WechatError::Decode(_) => true,
            WechatError::Status(s) => *s >= 500,
        }
    }

    /// Whether WeChat may have acted on the request though its answer was lost: a transient
    /// failure once the request could have arrived (everything but a failed connection). For a
    /// code exchange that means the code may be spent (docs/design.md §10.5).
    pub fn may_have_acted(&self) -> bool {
        match self {
            WechatError::Transport(e) => !e.is_connect(),
            other => other.is_transient(),
        }
    }
}

/// Whether a browser is WeChat's in-app browser (`MicroMessenger` in its User-Agent): the only
/// one that opens an official account's authorize page (elsewhere WeChat shows
/// "请在微信客户端打开链接"); desktop browsers sign in with a website app's QR code. The one
/// place this rule lives: the service, the demo page and the simulator all ask it.
pub fn is_in_app_browser(user_agent: &str) -> bool {
    user_agent.contains("MicroMessenger")
}

/// `sns/oauth2/access_token` and `sns/oauth2/refresh_token` replies.
#[derive(Debug, Deserialize)]
pub struct TokenGrant {
    /// New access token.
    pub access_token: AccessToken,
    /// Its life in seconds (7200).
    pub expires_in: i64,
    /// The refresh token.
    pub refresh_token: RefreshToken,
    /// The user's openid.
    pub openid: String,
    /// Comma-separated granted scopes.
    pub scope: String,
    /// unionid, with snsapi_userinfo/snsapi_login on a bound app.
    #[serde(default)]
    pub unionid: Option<String>,
    /// 1 for a snapshot-page virtual user.
    #[serde(default)]
    pub is_snapshotuser: i64,
}

/// `sns/jscode2session` reply: `openid`, `session_key`, and `unionid` when the mini program is
/// bound to an open-platform account.
#[derive(Debug, Deserialize)]
pub struct MiniSession {
    /// The user's openid in the mini program.
    pub openid: String,
    /// The session key (decrypts `wx.getUserInfo`-style encrypted data, signs checks).
    pub session_key: SessionKey,
    /// unionid, on a bound mini program.
    #[serde(default)]
    pub unionid: Option<String>,
}

/// `sns/userinfo` reply (also what the profile cache keeps, sealed).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Profile {
    /// openid.
    pub openid: String,
    /// Nickname.
    #[serde(default)]
    pub nickname: String,
    /// 0 unknown, 1 male, 2 female. WeChat sends a number; its older web-authorization doc (and
    /// SDK fixtures copied from it) show the string `"1"`, which is read as the same number.
    #[serde(default, deserialize_with = "number_or_numeric_string")]
    pub sex: i64,
    /// Province.
    #[serde(default)]
    pub province: String,
    /// City.
    #[serde(default)]
    pub city: String,
    /// Country.
    #[serde(default)]
    pub country: String,
    /// Avatar URL.
    #[serde(default)]
    pub headimgurl: String,
    /// Privileges.
    #[serde(default)]
    pub privilege: Vec<String>,
    /// unionid, when bound.
    #[serde(default)]
    pub unionid: Option<String>,
}

/// WeChat endpoints, for metrics and spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `sns/oauth2/access_token`.
    AccessToken,
    /// `sns/oauth2/refresh_token`.
    RefreshToken,
    /// `sns/userinfo`.
    UserInfo,
    /// `sns/auth`.
    Auth,
    /// `sns/jscode2session` (mini programs).
    JsCode2Session,
}

impl Endpoint {
    /// Every endpoint, in declaration order (so `endpoint as usize` indexes it).
    pub const ALL: [Endpoint; 5] =
        [Endpoint::AccessToken, Endpoint::RefreshToken, Endpoint::UserInfo, Endpoint::Auth, Endpoint::JsCode2Session];

    /// The path under the API base.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::AccessToken => "sns/oauth2/access_token",
            Endpoint::RefreshToken => "sns/oauth2/refresh_token",
            Endpoint::UserInfo => "sns/userinfo",
            Endpoint::Auth => "sns/auth",
            Endpoint::JsCode2Session => "sns/jscode2session",
        }
    }
}

/// How the upstream is reached.
#[derive(Clone, Debug)]
pub struct WechatSettings {
    /// Base of the authorize pages (`https://open.weixin.qq.com`).
    pub open_base: Url,
    /// Base of the sns endpoints (`https://api.weixin.qq.com`).
    pub api_base: Url,
    /// Whole-request timeout of one call.
    pub timeout: Duration,
    /// Attempts for retryable calls (refresh, userinfo, auth); exchange is never retried.
    pub attempts: u32,
}

impl WechatSettings {
    /// The longest a retried call (refresh, userinfo, auth) can take: every attempt up to the
    /// timeout, with the longest jittered backoff between them. The refresh lock is sized by it.
    pub fn longest_retrying_call(&self) -> Duration {
        let backoffs: u64 = (1..self.attempts).map(|attempt| 2 * backoff_base_ms(attempt)).sum();
        self.timeout * self.attempts + Duration::from_millis(backoffs)
    }
}

/// Backoff before retry `attempt + 1`, in ms: this plus a jitter of up to as much again.
fn backoff_base_ms(attempt: u32) -> u64 {
    50u64 << attempt.min(6)
}

/// Where WeChat serves `wxLogin.js` (WeChat's 网站应用微信登录 doc).
const WX_LOGIN_JS_ORIGIN: &str = "https://res.wx.qq.com";
/// The path of `wxLogin.js` on WeChat's resource host; the simulator serves its stand-in there.
pub const WX_LOGIN_JS_PATH: &str = "connect/zh_CN/htmledition/js/wxLogin.js";
/// The host of WeChat's authorize pages.
const WECHAT_OPEN_HOST: &str = "open.weixin.qq.com";

/// The product's choices for its embedded QR code, validated (`style` one of WeChat's,
/// `href` an https stylesheet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WxLoginOptions {
    /// true: the callback lands inside the iframe; false: the whole window goes.
    pub self_redirect: bool,
    /// `black`, `white` or empty.
    pub style: String,
    /// An https stylesheet URL, or empty.
    pub href: String,
}

/// The parameters of `new WxLogin({...})` for one flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WxLoginParams {
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

/// The one HTTP client to WeChat (rustls, pooled, timeouts set).
#[derive(Clone, Debug)]
pub struct WechatClient {
    http: reqwest::Client,
    /// The sns endpoint URLs, parsed once (in [`Endpoint`] order).
    endpoints: std::sync::Arc<[Url; 5]>,
    settings: WechatSettings,
    metrics: std::sync::Arc<Metrics>,
}

/// Parameters of one authorize URL.
#[derive(Debug)]
pub struct AuthorizeParams<'a> {
    /// The app.
    pub app: &'a App,
    /// wxauth's public callback URL.
    pub redirect_uri: &'a str,
    /// The scope.
    pub scope: Scope,
    /// The flow id.
    pub state: &'a str,
    /// Adds `forcePopup=true`.
    pub force_popup: bool,
}

impl WechatClient {
    /// Builds the client.
    pub fn new(settings: WechatSettings, metrics: std::sync::Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let http = crate::http_client()
            .connect_timeout(settings.timeout.min(Duration::from_secs(2)))
            .timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            // The sns endpoints never redirect; a redirect would be an upstream fault.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let endpoint = |e: Endpoint| {
            Url::parse(&format!("{}{}", base(&settings.api_base), e.path()))
                .unwrap_or_else(|_| settings.api_base.clone())
        };
        let endpoints = Endpoint::ALL.map(endpoint);
        Ok(Self { http, endpoints: std::sync::Arc::new(endpoints), settings, metrics })
    }

    /// How the upstream is reached (timeouts and attempts size the refresh lock).
    pub fn settings(&self) -> &WechatSettings {
        &self.settings
    }

    fn endpoint_url(&self, endpoint: Endpoint) -> Url {
        self.endpoints[endpoint as usize].clone()
    }

    /// The authorize URL, parameters in WeChat's order: `appid, redirect_uri, response_type,
    /// scope, state`, then `forcePopup`, then `connect_redirect=1` (oauth2/authorize only), then
    /// `#wechat_redirect`. WeChat rejects other orders.
    pub fn authorize_url(&self, p: &AuthorizeParams<'_>) -> String {
        authorize_url(&self.settings.open_base, p)
    }

    /// What `new WxLogin({...})` needs to show the QR code of a website-app flow on the
    /// product's own page: the same app, scope, callback and state as [`Self::authorize_url`],
    /// so the embedded QR code and the redirect are two doors into one flow.
    pub fn wx_login(&self, p: &AuthorizeParams<'_>, options: WxLoginOptions) -> WxLoginParams {
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
    fn wx_login_script_url(&self) -> String {
        if self.settings.open_base.host_str() == Some(WECHAT_OPEN_HOST) {
            format!("{WX_LOGIN_JS_ORIGIN}/{WX_LOGIN_JS_PATH}")
        } else {
            format!("{}{WX_LOGIN_JS_PATH}", base(&self.settings.open_base))
        }
    }

    /// Exchanges a code. Sent once, never retried: a code works once.
    #[tracing::instrument(name = "wechat.access_token", skip_all, fields(app = %app.name))]
    pub async fn exchange_code(&self, app: &App, code: &AuthCode) -> Result<TokenGrant, WechatError> {
        let query = [
            ("appid", app.appid.as_str()),
            ("secret", app.secret.secret()),
            ("code", code.secret()),
            ("grant_type", "authorization_code"),
        ];
        self.call(app, Endpoint::AccessToken, &query).await
    }

    /// Trades a mini program's `js_code` (from `wx.login()`) for its session. Sent once, never
    /// retried: a `js_code` works once.
    #[tracing::instrument(name = "wechat.jscode2session", skip_all, fields(app = %app.name))]
    pub async fn jscode2session(&self, app: &App, js_code: &AuthCode) -> Result<MiniSession, WechatError> {
        let query = [
            ("appid", app.appid.as_str()),
            ("secret", app.secret.secret()),
            ("js_code", js_code.secret()),
            ("grant_type", "authorization_code"),
        ];
        self.call(app, Endpoint::JsCode2Session, &query).await
    }

    /// Refreshes an access token (no secret: WeChat's refresh takes none).
    #[tracing::instrument(name = "wechat.refresh_token", skip_all, fields(app = %app.name))]
    pub async fn refresh(&self, app: &App, refresh_token: &RefreshToken) -> Result<TokenGrant, WechatError> {
        let query =
            [("appid", app.appid.as_str()), ("grant_type", "refresh_token"), ("refresh_token", refresh_token.secret())];
        self.call_retrying(app, Endpoint::RefreshToken, &query).await
    }

    /// Reads the profile with a token of `app`.
    #[tracing::instrument(name = "wechat.userinfo", skip_all, fields(app = %app.name))]
    pub async fn userinfo(
        &self,
        app: &App,
        token: &AccessToken,
        openid: &str,
        lang: Lang,
    ) -> Result<Profile, WechatError> {
        let query = [("access_token", token.secret()), ("openid", openid), ("lang", lang.as_str())];
        self.call_retrying(app, Endpoint::UserInfo, &query).await
    }

    /// Asks whether a token of `app` is valid (`sns/auth`).
    #[tracing::instrument(name = "wechat.auth", skip_all, fields(app = %app.name))]
    pub async fn auth(&self, app: &App, token: &AccessToken, openid: &str) -> Result<(), WechatError> {
        let query = [("access_token", token.secret()), ("openid", openid)];
        self.call_retrying::<serde_json::Value>(app, Endpoint::Auth, &query).await.map(|_| ())
    }

    async fn call_retrying<T: DeserializeOwned>(
        &self,
        app: &App,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<T, WechatError> {
        let mut attempt = 1;
        loop {
            match self.call(app, endpoint, query).await {
                Err(e) if e.is_transient() && attempt < self.settings.attempts => {
                    let base_ms = backoff_base_ms(attempt);
                    let jitter = rand::rng().random_range(0..=base_ms);
                    tracing::debug!(attempt, error = %e, "retrying WeChat call");
                    tokio::time::sleep(Duration::from_millis(base_ms + jitter)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One call, counted by app (WeChat's quota is per app: 50,000 sns calls a minute).
    async fn call<T: DeserializeOwned>(
        &self,
        app: &App,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<T, WechatError> {
        let started = std::time::Instant::now();
        let reply = self.send(endpoint, query).await;
        // The errcode label is bounded: known codes by number, any other as `other`.
        let (result, errcode) = match &reply {
            Ok(_) => ("ok", "0"),
            Err(WechatError::Api { errcode, .. }) => ("errcode", crate::error::errcode_label(*errcode)),
            Err(WechatError::Status(_)) => ("http_error", ""),
            Err(WechatError::Transport(e)) if e.is_timeout() => ("timeout", ""),
            Err(WechatError::Transport(_)) => ("transport_error", ""),
            Err(WechatError::Decode(_)) => ("decode_error", ""),
        };
        let name = endpoint.path();
        self.metrics.wechat_requests.with_label_values(&[&app.name, name, result, errcode]).inc();
        self.metrics.wechat_duration.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        reply
    }

    async fn send<T: DeserializeOwned>(&self, endpoint: Endpoint, query: &[(&str, &str)]) -> Result<T, WechatError> {
        let url = self.endpoint_url(endpoint);
        // `without_url`: the URL holds the secret, the code or a token.
        let response =
            self.http.get(url).query(query).send().await.map_err(|e| WechatError::Transport(e.without_url()))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(WechatError::Status(status.as_u16()));
        }
        let body = response.bytes().await.map_err(|e| WechatError::Transport(e.without_url()))?;
        let reply = decode(&body);
        if let Err(e) = &reply {
            tracing::info!(endpoint = endpoint.path(), errcode = e.errcode(), "WeChat call failed");
        }
        reply
    }
}

/// Decodes a 200 reply: `{"errcode": N≠0, ...}` is an error, anything else the payload.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WechatError> {
    #[derive(Deserialize)]
    struct ErrorReply {
        #[serde(default)]
        errcode: i64,
        #[serde(default)]
        errmsg: String,
    }
    // Two typed passes over the bytes (errcode first, then the payload) cost less than building
    // a `serde_json::Value` tree.
    let error: ErrorReply = serde_json::from_slice(body).map_err(WechatError::Decode)?;
    if error.errcode != 0 {
        return Err(WechatError::Api { errcode: error.errcode, errmsg: error.errmsg });
    }
    serde_json::from_slice(body).map_err(WechatError::Decode)
}

/// Reads `1` or `"1"` as 1: a profile field that drifted to a string must not fail the whole reply.
fn number_or_numeric_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(i64),
        String(String),
    }
    match NumberOrString::deserialize(deserializer)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// The base URL as a prefix ending in `/`.
/// The authorize URL on `open_base` ([`WechatClient::authorize_url`], which the relay's start
/// URL also uses for a flow's browser-bound id): parameters in WeChat's order.
pub fn authorize_url(open_base: &Url, p: &AuthorizeParams<'_>) -> String {
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
    if p.force_popup {
        out.push_str("&forcePopup=true");
    }
    if p.app.kind == AppKind::OfficialAccount {
        out.push_str("&connect_redirect=1");
    }
    out.push_str("#wechat_redirect");
    out
}

fn base(url: &Url) -> String {
    let s = url.as_str();
    if s.ends_with('/') { s.to_owned() } else { format!("{s}/") }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let settings = WechatSettings {
            open_base: Url::parse("http://127.0.0.1:8081").expect("url"),
            ..client().settings().clone()
        };
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
}
