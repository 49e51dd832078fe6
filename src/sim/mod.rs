//! A faithful WeChat web-authorization simulator (docs/design.md §7, §10), because WeChat
//! itself is unreachable from tests, benchmarks and the dev mode.
//!
//! It serves what the service reaches through its configured base URLs — the authorize pages
//! (`/connect/oauth2/authorize`, `/connect/qrconnect`, also framed by its stand-in `wxLogin.js`
//! at [`WX_LOGIN_JS`] with `login_type=jssdk`) and the `sns` JSON endpoints — with
//! WeChat's rules, plus a `/sim/...` control API. Tests steer it in process through
//! [`Simulator`]: move its clock, inject faults, count calls, issue codes without a browser,
//! set the per-app quotas of each sns endpoint (WeChat's: 10,000 code exchanges and 50,000
//! refreshes and userinfo calls a minute; past it, 45011; daily quotas on demand, past them
//! 45009).
//!
//! Layout, each file using only those above it (this one wires them into [`Simulator`]):
//! - `config`: the apps and test users it knows ([`SimConfig::demo`] for the dev mode).
//! - `params`: query and form parameters, read leniently as WeChat does.
//! - `state`: the clock, the issued codes and tokens, the quota, the ids WeChat derives, and
//!   WeChat's errcodes with their texts.
//! - `control`: call counters, faults, the double-callback switch and the `/sim` API; a fault
//!   answers in its endpoint's shape, the endpoint saying how it shows an errcode.
//! - `pages`: the browser pages: query rules, consent page, redirects, error pages.
//! - `api`: the `sns` JSON endpoints and WeChat's error JSON.
//! - `app_token`: an app's own credentials: `cgi-bin/token`, `cgi-bin/stable_token` (normal
//!   and forced, WeChat's 20 forced refreshes a day), `cgi-bin/ticket/getticket`.
//! - `open_data`: a mini program's `encryptedData`, made with the user's session key.
//! - `phone`: the phone-number button's codes and `wxa/business/getuserphonenumber`.
//! - `push`: the message push WeChat sends an app's server (the authorization events, text
//!   messages), signed and, in the safe mode, encrypted.

mod api;
mod app_token;
mod config;
mod control;
mod jssdk;
mod open_data;
mod pages;
mod params;
mod phone;
mod push;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use self::config::{SimApp, SimAppKind, SimConfig, SimUser};
pub use self::control::{Endpoint, Fault};
pub use self::jssdk::JWEIXIN_JS;
pub use self::pages::{WECHAT_BROWSER_UA, WECOM_BROWSER_UA, WX_LOGIN_JS};
pub use self::push::{PushError, PushEvent, PushFormat, PushTarget, SignedPush};
pub use self::state::{EXCHANGES_PER_MINUTE, MINI_LOGINS_PER_MINUTE, SNS_CALLS_PER_MINUTE, SimError};

use self::control::Controls;
use self::state::Core;

/// A running simulated WeChat: cheap to clone, every clone steers the same instance.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    controls: Controls,
    /// Where each app's message push goes (`push.rs`).
    push: push::Targets,
    /// The apps' own access tokens and tickets (`app_token.rs`).
    app_tokens: app_token::AppTokens,
    /// The phone-number button's codes not yet used (`phone.rs`).
    phone_codes: phone::PhoneCodes,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

impl Simulator {
    /// Builds a simulator that knows `config`'s apps and users, with its clock at real time.
    pub fn new(config: SimConfig) -> Self {
        let inner = Inner {
            core: Core::new(config),
            controls: Controls::default(),
            push: push::Targets::default(),
            app_tokens: app_token::AppTokens::default(),
            phone_codes: phone::PhoneCodes::default(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Every page, `sns` endpoint and `/sim` control route, to serve or to nest.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .merge(pages::routes())
            .merge(api::routes())
            .merge(app_token::routes())
            .merge(phone::routes())
            .merge(jssdk::routes())
            .merge(control::routes())
            .with_state(self.clone())
    }

    /// Serves [`Self::router`] on `listener` until `shutdown` completes (then finishes
    /// in-flight requests).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::debug!(addr = ?listener.local_addr().ok(), "WeChat simulator serving");
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }

    /// Starts a simulator on `127.0.0.1:<free port>` in a background task, for tests.
    pub async fn spawn_local(config: SimConfig) -> std::io::Result<(Simulator, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let sim = Simulator::new(config);
        let server = sim.clone();
        tokio::spawn(async move {
            if let Err(error) = server.serve(listener, std::future::pending()).await {
                tracing::warn!(%error, "WeChat simulator stopped");
            }
        });
        Ok((sim, addr))
    }

    /// Moves the simulator's clock forward, so expiry is tested without sleeping.
    pub fn advance(&self, by: Duration) {
        self.core().advance(by);
    }

    /// How many requests reached `endpoint` (faulted ones included), to assert caching,
    /// single-flight and retries.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.controls().calls(endpoint)
    }

    /// The next `times` calls to `endpoint` get `fault` (after faults already queued for it).
    pub fn inject(&self, endpoint: Endpoint, fault: Fault, times: u32) {
        self.controls().inject(endpoint, fault, times);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.controls().clear_faults();
    }

    /// Sets every sns endpoint's minute quota per app to `per_minute` (each endpoint counts
    /// apart, as WeChat's do); `None` lifts every quota, the daily ones and the mini program
    /// users' 100 sign-ins a minute ([`MINI_LOGINS_PER_MINUTE`]) with them (the benchmark does,
    /// to measure the simulator itself). Minutes are the simulator's clock's.
    pub fn set_quota(&self, per_minute: Option<u32>) {
        self.core().set_quota(per_minute);
    }

    /// Sets one sns endpoint's minute quota per app; past it, 45011. WeChat's defaults: code
    /// exchange [`EXCHANGES_PER_MINUTE`] (10,000), refresh and userinfo
    /// [`SNS_CALLS_PER_MINUTE`] (50,000); `sns/auth` the same (unconfirmed); `jscode2session`
    /// none per app (its 100 a minute per user stay). `None`: no limit. The pages have no
    /// quota: ignored for them.
    pub fn set_minute_quota(&self, endpoint: Endpoint, per_minute: Option<u32>) {
        if let Some(api) = endpoint.quota() {
            self.core().set_minute_quota(api, per_minute);
        }
    }

    /// Sets one sns endpoint's daily quota per app (none by default: WeChat publishes no
    /// figure for these); past it, 45009 "reach max api daily quota limit" until the
    /// simulator's clock enters its next day. The pages have no quota: ignored for them.
    pub fn set_daily_quota(&self, endpoint: Endpoint, per_day: Option<u32>) {
        if let Some(api) = endpoint.quota() {
            self.core().set_daily_quota(api, per_day);
        }
    }

    /// On: Allow answers a page that hits the callback twice with two codes, as WeChat's
    /// in-app browser is known to do.
    pub fn set_double_callback(&self, on: bool) {
        self.controls().set_double_callback(on);
    }

    /// On (the default): Deny leaves the user on WeChat's page and never calls back, as WeChat
    /// does today: an official account's consent page stays ("你已拒绝授权"), and a website
    /// app's QR login does not redirect (网站应用微信登录开发指南: "若用户禁止授权，则不会发生
    /// 重定向"). Products must treat a flow that never returns as a normal ending. Off: Deny
    /// calls back with `state` only, as older docs said and as is still seen in the field.
    pub fn set_deny_stays(&self, on: bool) {
        self.controls().set_deny_stays(on);
    }

    /// On: snapshot pages (快照页) as the field reports them, not as documented (issue 20): a
    /// snapshot user's exchange lacks `is_snapshotuser`, and every sign-in gets a virtual
    /// openid of its own, all sharing the user's one virtual unionid. Off (the default): the
    /// documented snapshot user (`is_snapshotuser: 1`, one virtual openid per app).
    pub fn set_messy_snapshots(&self, on: bool) {
        self.core().set_messy_snapshots(on);
    }

    /// Issues a code as if `user` had consented to `scope` for `appid`, for tests without a
    /// browser; refuses what the consent page would refuse.
    pub fn authorize(&self, appid: &str, user: &str, scope: &str) -> Result<String, SimError> {
        let grant = self.core().grant(appid, user, scope)?;
        Ok(self.core().issue_code(grant))
    }

    /// A `js_code` as `wx.login()` gives `user` in mini program `appid`, for tests.
    pub fn js_code(&self, appid: &str, user: &str) -> Result<String, SimError> {
        self.core().issue_js_code(appid, user)
    }

    /// The openid WeChat gives `user` in `appid`; `None` when either is unknown.
    pub fn openid(&self, appid: &str, user: &str) -> Option<String> {
        let known = self.core().app(appid).is_some() && self.core().users().iter().any(|u| u.key == user);
        known.then(|| state::openid(appid, user))
    }

    /// The unionid WeChat gives `user` across bound apps.
    pub fn unionid(&self, user: &str) -> String {
        state::unionid(user)
    }

    fn core(&self) -> &Core {
        &self.inner.core
    }

    fn controls(&self) -> &Controls {
        &self.inner.controls
    }

    fn app_tokens(&self) -> &app_token::AppTokens {
        &self.inner.app_tokens
    }

    fn phone_codes(&self) -> &phone::PhoneCodes {
        &self.inner.phone_codes
    }
}
