//! The one HTTP client to WeChat's `sns` endpoints: one call each, counted by app and endpoint,
//! the idempotent ones retried with jittered backoff.

use std::time::Duration;

use rand::Rng as _;
use serde::de::DeserializeOwned;
use url::Url;

use super::reply::decode;
use super::{App, Lang, MiniSession, Profile, TokenGrant, WechatError, base};
use crate::secrets::{AccessToken, AuthCode, RefreshToken};
use crate::telemetry::Metrics;

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
    /// `cgi-bin/stable_token` (the app's own access token, POST JSON).
    StableToken,
    /// `cgi-bin/ticket/getticket` (the app's `jsapi_ticket`).
    JsapiTicket,
    /// `wxa/business/getuserphonenumber` (a mini program's phone-number button).
    PhoneNumber,
}

impl Endpoint {
    /// Every endpoint, in declaration order (so `endpoint as usize` indexes it).
    pub const ALL: [Endpoint; 8] = [
        Endpoint::AccessToken,
        Endpoint::RefreshToken,
        Endpoint::UserInfo,
        Endpoint::Auth,
        Endpoint::JsCode2Session,
        Endpoint::StableToken,
        Endpoint::JsapiTicket,
        Endpoint::PhoneNumber,
    ];

    /// The path under the API base.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::AccessToken => "sns/oauth2/access_token",
            Endpoint::RefreshToken => "sns/oauth2/refresh_token",
            Endpoint::UserInfo => "sns/userinfo",
            Endpoint::Auth => "sns/auth",
            Endpoint::JsCode2Session => "sns/jscode2session",
            Endpoint::StableToken => "cgi-bin/stable_token",
            Endpoint::JsapiTicket => "cgi-bin/ticket/getticket",
            Endpoint::PhoneNumber => "wxa/business/getuserphonenumber",
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
    pub(crate) fn longest_retrying_call(&self) -> Duration {
        let backoffs: u64 = (1..self.attempts).map(|attempt| 2 * backoff_base_ms(attempt)).sum();
        self.timeout * self.attempts + Duration::from_millis(backoffs)
    }
}

/// Backoff before retry `attempt + 1`, in ms: this plus a jitter of up to as much again.
fn backoff_base_ms(attempt: u32) -> u64 {
    50u64 << attempt.min(6)
}

/// The one HTTP client to WeChat (rustls, pooled, timeouts set).
#[derive(Clone, Debug)]
pub struct WechatClient {
    http: reqwest::Client,
    /// The sns endpoint URLs, parsed once (in [`Endpoint`] order).
    endpoints: std::sync::Arc<[Url; Endpoint::ALL.len()]>,
    settings: WechatSettings,
    metrics: std::sync::Arc<Metrics>,
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
    pub(crate) fn settings(&self) -> &WechatSettings {
        &self.settings
    }

    fn endpoint_url(&self, endpoint: Endpoint) -> Url {
        self.endpoints[endpoint as usize].clone()
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

    pub(super) async fn call_retrying<T: DeserializeOwned>(
        &self,
        app: &App,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<T, WechatError> {
        self.retrying(|| self.call(app, endpoint, query)).await
    }

    /// `attempt` until it succeeds, fails for good, or `wechat.attempts` are spent, with
    /// jittered backoff between attempts.
    pub(super) async fn retrying<T, F: Future<Output = Result<T, WechatError>>>(
        &self,
        attempt_once: impl Fn() -> F,
    ) -> Result<T, WechatError> {
        let mut attempt = 1;
        loop {
            match attempt_once().await {
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
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        app: &App,
        endpoint: Endpoint,
        query: &[(&str, &str)],
    ) -> Result<T, WechatError> {
        self.counted(app, endpoint, self.send(endpoint, query)).await
    }

    /// One POST of a JSON body (`cgi-bin/stable_token` takes only that), with `query` in the
    /// URL (an access token), counted as [`Self::call`].
    pub(super) async fn call_json<T: DeserializeOwned>(
        &self,
        app: &App,
        endpoint: Endpoint,
        query: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Result<T, WechatError> {
        let url = self.endpoint_url(endpoint);
        let request = self.http.post(url).query(query).json(body);
        self.counted(app, endpoint, self.receive(endpoint, request)).await
    }

    /// Times and counts one call by app, endpoint and result.
    async fn counted<T>(
        &self,
        app: &App,
        endpoint: Endpoint,
        call: impl Future<Output = Result<T, WechatError>>,
    ) -> Result<T, WechatError> {
        let started = std::time::Instant::now();
        let reply = call.await;
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
        self.receive(endpoint, self.http.get(url).query(query)).await
    }

    /// Sends `request` and decodes WeChat's answer.
    async fn receive<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<T, WechatError> {
        // `without_url`: the URL holds the secret, the code or a token.
        let response = request.send().await.map_err(|e| WechatError::Transport(e.without_url()))?;
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
