//! The config file's shape as serde reads it (sections, keys, defaults), before validation
//! turns it into [`super::Settings`]. `deny_unknown_fields` everywhere: a misspelt key stops
//! start-up, naming it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Device, Family, Mode, Users};
use crate::secrets::AppSecret;
use crate::wechat::AppKind;
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) wechat: RawWechat,
    #[serde(default)]
    pub(super) apps: BTreeMap<String, RawApp>,
    #[serde(default)]
    pub(super) clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    pub(super) flow: RawFlow,
    #[serde(default)]
    pub(super) token: RawToken,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) oidc: Option<RawOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    #[serde(default = "defaults::grpc_addr")]
    pub(super) grpc_addr: SocketAddr,
    #[serde(default = "defaults::public_addr")]
    pub(super) public_addr: SocketAddr,
    #[serde(default = "defaults::admin_addr")]
    pub(super) admin_addr: SocketAddr,
    pub(super) callback_url: String,
    #[serde(default = "defaults::drain", with = "humantime_serde")]
    pub(super) drain: Duration,
    #[serde(default = "defaults::header_timeout", with = "humantime_serde")]
    pub(super) header_timeout: Duration,
    #[serde(default = "defaults::max_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "defaults::max_concurrent_requests")]
    pub(super) max_concurrent_requests: usize,
    #[serde(default = "defaults::grpc_max_concurrent_streams")]
    pub(super) grpc_max_concurrent_streams: u32,
    #[serde(default = "defaults::grpc_max_connection_age", with = "humantime_serde")]
    pub(super) grpc_max_connection_age: Duration,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum StoreKind {
    #[default]
    Redis,
    Memory,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(default)]
    pub(super) kind: StoreKind,
    pub(super) url: Option<String>,
    #[serde(default)]
    pub(super) urls: Vec<String>,
    #[serde(default = "defaults::key_prefix")]
    pub(super) key_prefix: String,
    pub(super) sealing_keys: Option<String>,
    pub(super) sealing_keys_file: Option<PathBuf>,
    pub(super) sentinel_master: Option<String>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) tls_cert_file: Option<PathBuf>,
    pub(super) tls_key_file: Option<PathBuf>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: StoreKind::Redis,
            url: None,
            urls: Vec::new(),
            key_prefix: defaults::key_prefix(),
            sealing_keys: None,
            sealing_keys_file: None,
            sentinel_master: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWechat {
    #[serde(default = "defaults::open_base")]
    pub(super) open_base: String,
    #[serde(default = "defaults::api_base")]
    pub(super) api_base: String,
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "defaults::attempts")]
    pub(super) attempts: u32,
}

impl Default for RawWechat {
    fn default() -> Self {
        Self {
            open_base: defaults::open_base(),
            api_base: defaults::api_base(),
            timeout: defaults::timeout(),
            attempts: defaults::attempts(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) kind: AppKind,
    pub(super) appid: String,
    pub(super) secret: Option<AppSecret>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) default_for: Option<Device>,
    /// The app's message push (`[apps.<name>.push]`), if wxauth receives it.
    pub(super) push: Option<RawPush>,
}

/// `[apps.<name>.push]`: where WeChat's message push for the app arrives, its Token and
/// EncodingAESKey (inline from env, or files), and the company's own handler it forwards the
/// other messages to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPush {
    pub(super) path: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) encoding_aes_key: Option<String>,
    pub(super) encoding_aes_key_file: Option<PathBuf>,
    pub(super) forward_to: Option<String>,
    #[serde(default = "defaults::forward_timeout", with = "humantime_serde")]
    pub(super) forward_timeout: Duration,
}

impl std::fmt::Debug for RawPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawPush")
            .field("path", &self.path)
            .field("forward_to", &self.forward_to)
            .field("forward_timeout", &self.forward_timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RawApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawApp").field("kind", &self.kind).field("appid", &self.appid).finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) key_sha256: String,
    pub(super) apps: Vec<String>,
    pub(super) return_urls: Vec<String>,
    #[serde(default)]
    pub(super) users: Users,
    #[serde(default)]
    pub(super) rate_limits: RawRateLimits,
    #[serde(default = "defaults::max_open_flows")]
    pub(super) max_open_flows: u32,
    #[serde(default)]
    pub(super) grants: Vec<String>,
}

/// `clients.<name>.rate_limits`: a rate per RPC family (`"200/s"`, `"off"`; unset: the
/// default of [`Family::default_rate`]) and optionally its bucket size.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimits {
    pub(super) authorize: Option<String>,
    pub(super) authorize_burst: Option<u32>,
    pub(super) exchange: Option<String>,
    pub(super) exchange_burst: Option<u32>,
    pub(super) user: Option<String>,
    pub(super) user_burst: Option<u32>,
}

impl RawRateLimits {
    pub(super) fn get(&self, family: Family) -> (Option<&str>, Option<u32>) {
        match family {
            Family::Authorize => (self.authorize.as_deref(), self.authorize_burst),
            Family::Exchange => (self.exchange.as_deref(), self.exchange_burst),
            Family::User => (self.user.as_deref(), self.user_burst),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlow {
    #[serde(default = "defaults::flow_ttl", with = "humantime_serde")]
    pub(super) ttl: Duration,
    #[serde(default = "defaults::grace", with = "humantime_serde")]
    pub(super) grace: Duration,
}

impl Default for RawFlow {
    fn default() -> Self {
        Self { ttl: defaults::flow_ttl(), grace: defaults::grace() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    #[serde(default = "defaults::refresh_margin", with = "humantime_serde")]
    pub(super) refresh_margin: Duration,
    #[serde(default = "defaults::refresh_life", with = "humantime_serde")]
    pub(super) refresh_life: Duration,
    #[serde(default = "defaults::profile_cache", with = "humantime_serde")]
    pub(super) profile_cache: Duration,
    #[serde(default = "defaults::user_events_kept")]
    pub(super) user_events_kept: u64,
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            refresh_margin: defaults::refresh_margin(),
            refresh_life: defaults::refresh_life(),
            profile_cache: defaults::profile_cache(),
            user_events_kept: defaults::user_events_kept(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) json: bool,
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn grpc_addr() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 50051))
    }
    pub fn public_addr() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
    pub fn admin_addr() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 9090))
    }
    pub fn drain() -> Duration {
        Duration::from_secs(20)
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_connections() -> usize {
        4096
    }
    pub fn max_concurrent_requests() -> usize {
        1024
    }
    pub fn grpc_max_concurrent_streams() -> u32 {
        256
    }
    pub fn grpc_max_connection_age() -> Duration {
        Duration::from_secs(600)
    }
    pub fn key_prefix() -> String {
        "wxauth".into()
    }
    pub fn open_base() -> String {
        "https://open.weixin.qq.com".into()
    }
    pub fn api_base() -> String {
        "https://api.weixin.qq.com".into()
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub fn attempts() -> u32 {
        3
    }
    pub fn flow_ttl() -> Duration {
        Duration::from_secs(600)
    }
    pub fn grace() -> Duration {
        Duration::from_secs(60)
    }
    pub fn refresh_margin() -> Duration {
        Duration::from_secs(300)
    }
    pub fn refresh_life() -> Duration {
        Duration::from_secs(30 * 24 * 3600)
    }
    pub fn profile_cache() -> Duration {
        Duration::from_secs(300)
    }
    pub fn user_events_kept() -> u64 {
        10_000
    }
    pub fn forward_timeout() -> Duration {
        Duration::from_secs(4)
    }
    pub fn max_open_flows() -> u32 {
        crate::config::rates::DEFAULT_MAX_OPEN_FLOWS
    }
    pub fn oidc_code_ttl() -> Duration {
        Duration::from_secs(60)
    }
    pub fn oidc_access_token_ttl() -> Duration {
        Duration::from_secs(600)
    }
    pub fn oidc_scopes() -> Vec<String> {
        vec!["openid".into(), "profile".into()]
    }
    pub fn yes() -> bool {
        true
    }
}

/// `[oidc]`: the OpenID Provider face (src/oidc/): its signing keys (the current one and, after
/// a rotation, the previous one: inline PEM from env, or files), its codes' and access tokens'
/// lives, and its clients.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    pub(super) signing_key_id: Option<String>,
    pub(super) signing_key: Option<String>,
    pub(super) signing_key_file: Option<PathBuf>,
    pub(super) previous_signing_key_id: Option<String>,
    pub(super) previous_signing_key: Option<String>,
    pub(super) previous_signing_key_file: Option<PathBuf>,
    // The EC P-256 keys (ES256) of the clients registered for them, beside the RSA ones.
    pub(super) es256_signing_key_id: Option<String>,
    pub(super) es256_signing_key: Option<String>,
    pub(super) es256_signing_key_file: Option<PathBuf>,
    pub(super) previous_es256_signing_key_id: Option<String>,
    pub(super) previous_es256_signing_key: Option<String>,
    pub(super) previous_es256_signing_key_file: Option<PathBuf>,
    #[serde(default = "defaults::oidc_code_ttl", with = "humantime_serde")]
    pub(super) code_ttl: Duration,
    #[serde(default = "defaults::oidc_access_token_ttl", with = "humantime_serde")]
    pub(super) access_token_ttl: Duration,
    #[serde(default)]
    pub(super) clients: BTreeMap<String, RawOidcClient>,
}

impl std::fmt::Debug for RawOidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawOidc")
            .field("signing_key_id", &self.signing_key_id)
            .field("previous_signing_key_id", &self.previous_signing_key_id)
            .field("es256_signing_key_id", &self.es256_signing_key_id)
            .field("previous_es256_signing_key_id", &self.previous_es256_signing_key_id)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

/// `[oidc.clients.<id>]`: one relying party.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidcClient {
    pub(super) redirect_uris: Vec<String>,
    #[serde(default)]
    pub(super) post_logout_redirect_uris: Vec<String>,
    pub(super) auth_method: String,
    pub(super) secret_sha256: Option<String>,
    pub(super) apps: Vec<String>,
    #[serde(default = "defaults::oidc_scopes")]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) users: Users,
    #[serde(default = "defaults::yes")]
    pub(super) require_pkce: bool,
    #[serde(default)]
    pub(super) subject: Option<String>,
    pub(super) sector: Option<String>,
    #[serde(default)]
    pub(super) wechat_ids: bool,
    #[serde(default = "defaults::max_open_flows")]
    pub(super) max_open_flows: u32,
    /// `RS256` (the default) or `ES256` (OpenID Connect Dynamic Client Registration §2's name).
    pub(super) id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    pub(super) rate_limits: RawOidcRateLimits,
}

/// `oidc.clients.<id>.rate_limits`: a rate per provider family (`"20/s"`, `"off"`; unset: the
/// default of [`crate::config::OidcFamily::default_rate`]) and optionally its bucket size.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidcRateLimits {
    pub(super) authorize: Option<String>,
    pub(super) authorize_burst: Option<u32>,
    pub(super) token: Option<String>,
    pub(super) token_burst: Option<u32>,
    pub(super) token_auth_failures: Option<String>,
    pub(super) token_auth_failures_burst: Option<u32>,
}

impl RawOidcRateLimits {
    pub(super) fn get(&self, family: crate::config::OidcFamily) -> (Option<&str>, Option<u32>) {
        use crate::config::OidcFamily;
        match family {
            OidcFamily::Authorize => (self.authorize.as_deref(), self.authorize_burst),
            OidcFamily::Token => (self.token.as_deref(), self.token_burst),
            OidcFamily::TokenAuthFailures => (self.token_auth_failures.as_deref(), self.token_auth_failures_burst),
        }
    }
}
