//! Typed configuration: one TOML file (the one helm renders) layered with `WXAUTH_*`
//! environment overrides (`WXAUTH_STORE__URL` sets `store.url`), secrets read from env or from
//! files (Kubernetes Secret mounts), everything validated once at start-up into [`Settings`].
//! A bad value stops start-up with an error that names the key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::allowlist::Allowlist;
use crate::limits::{ClientLimits, Family, MAX_OPEN_FLOWS, Rate};
use crate::secrets::{AppSecret, RedisClientKey};
use crate::store::RedisTls;
use crate::store::seal::Keyring;
use crate::wechat::{App, AppKind, WechatSettings};

/// The dev-mode client key (docs/design.md §8). Production refuses it.
pub const DEV_CLIENT_KEY: &str = "dev-only-key";

/// A configuration error; `Display` names the key and never prints a secret value.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub struct ConfigError {
    /// The dotted key (`apps.mp.secret_file`).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), message: message.into() }
}

/// Production refuses dev-only settings; development allows http and loopback upstreams.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The default for a config file.
    #[default]
    Production,
    /// Dev mode and tests: simulator URLs and the demo key allowed.
    Development,
}

/// A device whose default app a request may pick.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Device {
    /// Inside WeChat on a phone.
    #[serde(rename = "MOBILE", alias = "mobile")]
    Mobile,
    /// A desktop browser.
    #[serde(rename = "PC", alias = "pc")]
    Pc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    wechat: RawWechat,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    #[serde(default)]
    clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    flow: RawFlow,
    #[serde(default)]
    token: RawToken,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "defaults::grpc_addr")]
    grpc_addr: SocketAddr,
    #[serde(default = "defaults::public_addr")]
    public_addr: SocketAddr,
    #[serde(default = "defaults::admin_addr")]
    admin_addr: SocketAddr,
    callback_url: String,
    #[serde(default = "defaults::drain", with = "humantime_serde")]
    drain: Duration,
    #[serde(default = "defaults::header_timeout", with = "humantime_serde")]
    header_timeout: Duration,
    #[serde(default = "defaults::max_connections")]
    max_connections: usize,
    #[serde(default = "defaults::max_concurrent_requests")]
    max_concurrent_requests: usize,
    #[serde(default = "defaults::grpc_max_concurrent_streams")]
    grpc_max_concurrent_streams: u32,
    #[serde(default = "defaults::grpc_max_connection_age", with = "humantime_serde")]
    grpc_max_connection_age: Duration,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    #[default]
    Redis,
    Memory,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    kind: StoreKind,
    url: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default = "defaults::key_prefix")]
    key_prefix: String,
    sealing_keys: Option<String>,
    sealing_keys_file: Option<PathBuf>,
    sentinel_master: Option<String>,
    tls_ca_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
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
struct RawWechat {
    #[serde(default = "defaults::open_base")]
    open_base: String,
    #[serde(default = "defaults::api_base")]
    api_base: String,
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "defaults::attempts")]
    attempts: u32,
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
struct RawApp {
    kind: AppKind,
    appid: String,
    secret: Option<AppSecret>,
    secret_file: Option<PathBuf>,
    default_for: Option<Device>,
}

impl std::fmt::Debug for RawApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawApp").field("kind", &self.kind).field("appid", &self.appid).finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    key_sha256: String,
    apps: Vec<String>,
    return_urls: Vec<String>,
    #[serde(default)]
    users: Users,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default = "defaults::max_open_flows")]
    max_open_flows: u32,
}

/// `clients.<name>.rate_limits`: a rate per RPC family (`"200/s"`, `"off"`; unset: the
/// default of [`Family::default_rate`]) and optionally its bucket size.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    authorize: Option<String>,
    authorize_burst: Option<u32>,
    exchange: Option<String>,
    exchange_burst: Option<u32>,
    user: Option<String>,
    user_burst: Option<u32>,
}

impl RawRateLimits {
    fn get(&self, family: Family) -> (Option<&str>, Option<u32>) {
        match family {
            Family::Authorize => (self.authorize.as_deref(), self.authorize_burst),
            Family::Exchange => (self.exchange.as_deref(), self.exchange_burst),
            Family::User => (self.user.as_deref(), self.user_burst),
        }
    }
}

/// Which users of its apps a client may reach with the per-user RPCs (GetUserInfo,
/// ValidateToken, RefreshToken, ForgetUser, FindAccounts), and what it reads of them
/// (`crate::consent`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Users {
    /// Only users for whom this client exchanged a code itself; any other openid answers as an
    /// unknown user does (no oracle). It reads only what its own sign-ins were granted, and its
    /// ForgetUser forgets the user for itself. The default: one product cannot read another's
    /// users, nor what another product's consent gave.
    #[default]
    Own,
    /// Every user of the client's apps (a trusted back office, an account service), read as
    /// the token allows; its ForgetUser forgets the user for every client of the app.
    App,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    #[serde(default = "defaults::flow_ttl", with = "humantime_serde")]
    ttl: Duration,
    #[serde(default = "defaults::grace", with = "humantime_serde")]
    grace: Duration,
}

impl Default for RawFlow {
    fn default() -> Self {
        Self { ttl: defaults::flow_ttl(), grace: defaults::grace() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    #[serde(default = "defaults::refresh_margin", with = "humantime_serde")]
    refresh_margin: Duration,
    #[serde(default = "defaults::refresh_life", with = "humantime_serde")]
    refresh_life: Duration,
    #[serde(default = "defaults::profile_cache", with = "humantime_serde")]
    profile_cache: Duration,
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            refresh_margin: defaults::refresh_margin(),
            refresh_life: defaults::refresh_life(),
            profile_cache: defaults::profile_cache(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    json: bool,
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
    pub fn max_open_flows() -> u32 {
        crate::limits::DEFAULT_MAX_OPEN_FLOWS
    }
}

/// Where records live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// In process memory: one replica only.
    Memory,
    /// Redis: one URL for a single node, several for a Cluster.
    Redis(Vec<String>),
    /// Redis behind Sentinel: the Sentinels' URLs and the master's name.
    Sentinel {
        /// `redis://host:26379` of each Sentinel.
        urls: Vec<String>,
        /// The monitored master's name (`mymaster`).
        master: String,
    },
}

/// Timeouts and caps of the three listeners (`server.*`): what keeps slow, idle and greedy
/// clients from holding connections, tasks and memory (docs/design.md §6, docs/operations.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// HTTP listeners: a request's headers must arrive within this, counted from the connection's
    /// start or from the end of the previous response (so it also closes idle keep-alive
    /// connections). gRPC: the HTTP/2 connection preface must arrive within it.
    pub header_timeout: Duration,
    /// Open connections per listener; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Requests in progress per listener; further requests wait for a slot.
    pub max_concurrent_requests: usize,
    /// gRPC: concurrent streams (RPCs) per HTTP/2 connection, advertised to the client.
    pub grpc_max_concurrent_streams: u32,
    /// gRPC: a connection older than this is sent GOAWAY (the client reconnects, which also
    /// spreads callers over new replicas), then closed once its RPCs finish.
    pub grpc_max_connection_age: Duration,
}

/// A caller of the gRPC API.
#[derive(Debug)]
pub struct Client {
    /// Its config name.
    pub name: String,
    /// SHA-256 of its key.
    pub key_sha256: [u8; 32],
    /// Apps it may use.
    pub apps: BTreeSet<String>,
    /// Where it may send codes.
    pub allowlist: Allowlist,
    /// Which users it may reach.
    pub users: Users,
    /// Its rate limits and open-flow cap.
    pub limits: ClientLimits,
}

/// The validated configuration the service runs with.
#[derive(Debug)]
pub struct Settings {
    /// Production or development.
    pub mode: Mode,
    /// gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Public HTTP listener (the relay).
    pub public_addr: SocketAddr,
    /// Admin HTTP listener.
    pub admin_addr: SocketAddr,
    /// The one callback URL WeChat knows (`https://auth.example.com/wechat/callback`).
    pub callback_url: Url,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain: Duration,
    /// Timeouts and caps of the listeners.
    pub listener_limits: ListenerLimits,
    /// Store backend.
    pub store: StoreBackend,
    /// What `rediss://` connections trust and present (`store.tls_*`); empty without TLS files.
    pub redis_tls: RedisTls,
    /// Prefix of every store key.
    pub key_prefix: String,
    /// Sealing keys; the first seals.
    pub keyring: Keyring,
    /// Upstream.
    pub wechat: WechatSettings,
    /// Apps by config name.
    pub apps: BTreeMap<String, App>,
    /// The default app of each device.
    pub device_defaults: BTreeMap<Device, String>,
    /// Callers.
    pub clients: Vec<Client>,
    /// How long a flow waits for its callback.
    pub flow_ttl: Duration,
    /// How long a used flow still relays (double callbacks, reloads).
    pub grace: Duration,
    /// Refresh an access token this long before it expires.
    pub refresh_margin: Duration,
    /// Life of a refresh token (and of the stored record).
    pub refresh_life: Duration,
    /// How long a fetched profile answers `GetUserInfo` without a WeChat call (zero: off).
    pub profile_cache: Duration,
    /// JSON logs.
    pub log_json: bool,
}

impl Settings {
    /// What this config amounts to, for `wxauth check`: every setting that shapes behaviour and
    /// no secret (no appsecret, key hash or sealing key; store URLs without their credentials).
    pub fn summary(&self) -> serde_json::Value {
        let humane = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        let store = match &self.store {
            StoreBackend::Memory => serde_json::json!({ "kind": "memory" }),
            StoreBackend::Redis(urls) => serde_json::json!({
                "kind": if urls.len() > 1 { "redis cluster" } else { "redis" },
                "urls": urls.iter().map(|u| without_credentials(u)).collect::<Vec<_>>(),
            }),
            StoreBackend::Sentinel { urls, master } => serde_json::json!({
                "kind": "redis sentinel",
                "urls": urls.iter().map(|u| without_credentials(u)).collect::<Vec<_>>(),
                "master": master,
            }),
        };
        let default_for = |app: &str| {
            self.device_defaults
                .iter()
                .filter(|(_, name)| name.as_str() == app)
                .map(|(d, _)| format!("{d:?}"))
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "mode": format!("{:?}", self.mode),
            "listen": { "grpc": self.grpc_addr, "public": self.public_addr, "admin": self.admin_addr },
            "callback_url": without_credentials(self.callback_url.as_str()),
            "drain": humane(self.drain),
            "listener_limits": {
                "header_timeout": humane(self.listener_limits.header_timeout),
                "max_connections": self.listener_limits.max_connections,
                "max_concurrent_requests": self.listener_limits.max_concurrent_requests,
                "grpc_max_concurrent_streams": self.listener_limits.grpc_max_concurrent_streams,
                "grpc_max_connection_age": humane(self.listener_limits.grpc_max_connection_age),
            },
            "store": store,
            "store_tls": format!("{:?}", self.redis_tls),
            "key_prefix": self.key_prefix,
            "sealing_key_ids": self.keyring.ids(),
            "wechat": {
                "open_base": without_credentials(self.wechat.open_base.as_str()),
                "api_base": without_credentials(self.wechat.api_base.as_str()),
                "timeout": humane(self.wechat.timeout),
                "attempts": self.wechat.attempts,
            },
            "apps": self.apps.values().map(|app| serde_json::json!({
                "name": app.name, "kind": format!("{:?}", app.kind), "appid": app.appid,
                "default_for": default_for(&app.name),
            })).collect::<Vec<_>>(),
            "clients": self.clients.iter().map(|c| serde_json::json!({
                "name": c.name, "apps": c.apps, "return_url_patterns": c.allowlist.patterns(),
                "users": format!("{:?}", c.users).to_lowercase(),
                "rate_limits": Family::ALL.iter().map(|f| {
                    (f.as_str(), c.limits.rate(*f).map_or_else(|| "off".to_owned(), Rate::describe))
                }).collect::<BTreeMap<_, _>>(),
                "max_open_flows": c.limits.max_open_flows,
            })).collect::<Vec<_>>(),
            "flow": { "ttl": humane(self.flow_ttl), "grace": humane(self.grace) },
            "token": {
                "refresh_margin": humane(self.refresh_margin),
                "refresh_life": humane(self.refresh_life),
                "profile_cache": humane(self.profile_cache),
            },
            "log_json": self.log_json,
        })
    }

    /// Loads `path` (TOML) layered with `WXAUTH_*` env overrides and validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("WXAUTH_CONFIG", format!("cannot read {}: {e}", path.display())))?;
        Self::from_sources(&text, env_overrides())
    }

    /// Parses TOML text layered with an env provider, then validates.
    pub fn from_sources(toml: &str, env: Env) -> Result<Self, ConfigError> {
        let raw: RawConfig = Figment::from(Toml::string(toml)).merge(env).extract().map_err(|e| {
            let mut path = e.path.clone();
            match &e.kind {
                figment::error::Kind::MissingField(field) => path.push(field.to_string()),
                figment::error::Kind::UnknownField(field, _) if path.last() != Some(field) => path.push(field.clone()),
                _ => {}
            }
            let key = path.join(".");
            err(if key.is_empty() { "<root>".into() } else { key }, e.kind.to_string())
        })?;
        validate(raw)
    }

    /// Parses TOML text alone (tests, examples).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_sources(toml, Env::prefixed("WXAUTH_UNUSED_IN_TESTS_"))
    }

    /// The app a request names, or the device's default when it names none.
    pub fn resolve_app(&self, name: &str, device: Option<Device>) -> Option<&App> {
        if name.is_empty() {
            return device.and_then(|d| self.device_defaults.get(&d)).and_then(|n| self.apps.get(n));
        }
        self.apps.get(name)
    }
}

/// The `WXAUTH_*` environment overrides: `WXAUTH_<SECTION>__<KEY>` (and `WXAUTH_MODE`).
/// Only names with the `__` separator count, so the variables Kubernetes injects for a Service
/// named `wxauth` (`WXAUTH_SERVICE_HOST`, `WXAUTH_PORT_50051_TCP`, ...) and `WXAUTH_CONFIG`
/// are not mistaken for config keys.
pub fn env_overrides() -> Env {
    Env::prefixed("WXAUTH_").filter(|key| key.as_str().contains("__") || key == "mode").split("__")
}

/// SHA-256 of a client key, as configured in `clients.<name>.key_sha256`.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let dev = raw.mode == Mode::Development;
    let callback_url = parse_base("server.callback_url", &raw.server.callback_url, dev)?;
    if callback_url.query().is_some() || callback_url.fragment().is_some() {
        return Err(err("server.callback_url", "must not have a query or fragment"));
    }
    let listener_limits = listener_limits(&raw.server)?;
    let store = match raw.store.kind {
        StoreKind::Memory => {
            if let Some(key) = tls_keys_set(&raw.store).first() {
                return Err(err(format!("store.{key}"), "is set, but store.kind is \"memory\""));
            }
            StoreBackend::Memory
        }
        StoreKind::Redis => {
            let urls: Vec<String> = raw.store.url.iter().cloned().chain(raw.store.urls.iter().cloned()).collect();
            if urls.is_empty() {
                return Err(err("store.url", "required when store.kind = \"redis\" (or store.urls for a cluster)"));
            }
            let mut over_tls = None;
            for (i, u) in urls.iter().enumerate() {
                let parsed = Url::parse(u).map_err(|e| err(format!("store.urls[{i}]"), e.to_string()))?;
                if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                    return Err(err(format!("store.urls[{i}]"), "must be a redis:// or rediss:// URL"));
                }
                if matches!(parsed.scheme(), "redis" | "rediss") && parsed.host_str().is_none_or(str::is_empty) {
                    return Err(err(format!("store.urls[{i}]"), "must name a host, as redis://host:port"));
                }
                let tls = parsed.scheme() == "rediss";
                if *over_tls.get_or_insert(tls) != tls {
                    return Err(err(format!("store.urls[{i}]"), "mixes rediss:// and plain URLs; use one for all"));
                }
            }
            if over_tls != Some(true)
                && let Some(key) = tls_keys_set(&raw.store).first()
            {
                return Err(err(
                    format!("store.{key}"),
                    "is set, but the store URLs are not rediss://: the connection would not use TLS",
                ));
            }
            match raw.store.sentinel_master {
                Some(master) if master.is_empty() => return Err(err("store.sentinel_master", "is empty")),
                Some(master) => StoreBackend::Sentinel { urls, master },
                None => StoreBackend::Redis(urls),
            }
        }
    };
    let redis_tls = load_redis_tls(raw.store.tls_ca_file, raw.store.tls_cert_file, raw.store.tls_key_file)?;
    let prefix = raw.store.key_prefix;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
        return Err(err("store.key_prefix", "1+ characters of [A-Za-z0-9_.-]"));
    }
    let keyring = load_keyring(raw.store.sealing_keys, raw.store.sealing_keys_file, dev)?;

    let open_base = parse_base("wechat.open_base", &raw.wechat.open_base, dev)?;
    let api_base = parse_base("wechat.api_base", &raw.wechat.api_base, dev)?;
    if raw.wechat.timeout.is_zero() || raw.wechat.timeout > Duration::from_secs(60) {
        return Err(err("wechat.timeout", "between 1ms and 60s"));
    }
    if !(1..=5).contains(&raw.wechat.attempts) {
        return Err(err("wechat.attempts", "between 1 and 5"));
    }
    let wechat = WechatSettings { open_base, api_base, timeout: raw.wechat.timeout, attempts: raw.wechat.attempts };

    let mut apps = BTreeMap::new();
    let mut device_defaults = BTreeMap::new();
    for (name, app) in raw.apps {
        let key = format!("apps.{name}");
        if !is_name(&name) {
            return Err(err(key, "app names are 1..64 of [a-z0-9_-]"));
        }
        if !(app.appid.starts_with("wx")
            && app.appid.len() == 18
            && app.appid.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(err(format!("{key}.appid"), "a WeChat appid: `wx` and 16 letters or digits"));
        }
        let secret = read_secret(&key, "secret", app.secret, app.secret_file)?;
        if let Some(device) = app.default_for {
            if !app.kind.has_authorize_page() {
                return Err(err(
                    format!("{key}.default_for"),
                    format!("a {} has no authorize page to be a device's default", app.kind.as_str()),
                ));
            }
            if let Some(other) = device_defaults.insert(device, name.clone()) {
                return Err(err(
                    format!("{key}.default_for"),
                    format!("{device:?} is already the default of app `{other}`"),
                ));
            }
        }
        apps.insert(name.clone(), App { name, appid: app.appid, secret, kind: app.kind });
    }
    if apps.is_empty() {
        return Err(err("apps", "at least one app"));
    }

    let mut clients = Vec::new();
    for (name, client) in raw.clients {
        let key = format!("clients.{name}");
        if !is_name(&name) {
            return Err(err(key, "client names are 1..64 of [a-z0-9_-]"));
        }
        let digest: [u8; 32] = hex::decode(client.key_sha256.trim())
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| err(format!("{key}.key_sha256"), "64 hex digits (sha256 of the client key)"))?;
        if !dev && digest == key_digest(DEV_CLIENT_KEY) {
            return Err(err(format!("{key}.key_sha256"), "is the dev-mode demo key; production refuses it"));
        }
        if clients.iter().any(|c: &Client| c.key_sha256 == digest) {
            return Err(err(format!("{key}.key_sha256"), "another client has the same key"));
        }
        if let Some(unknown) = client.apps.iter().find(|a| !apps.contains_key(*a)) {
            return Err(err(format!("{key}.apps"), format!("no app named `{unknown}`")));
        }
        if client.return_urls.is_empty() {
            return Err(err(format!("{key}.return_urls"), "at least one pattern"));
        }
        let allowlist =
            Allowlist::parse(&client.return_urls).map_err(|e| err(format!("{key}.return_urls"), e.to_string()))?;
        let limits = client_limits(&key, &client.rate_limits, client.max_open_flows)?;
        let apps = client.apps.into_iter().collect();
        clients.push(Client { name, key_sha256: digest, apps, allowlist, users: client.users, limits });
    }
    if clients.is_empty() {
        return Err(err("clients", "at least one client"));
    }

    let (flow_ttl, grace) = (raw.flow.ttl, raw.flow.grace);
    if flow_ttl < Duration::from_secs(60) || flow_ttl > Duration::from_secs(3600) {
        return Err(err("flow.ttl", "between 1m and 1h"));
    }
    if grace.is_zero() || grace > Duration::from_secs(600) || grace >= flow_ttl {
        return Err(err("flow.grace", "between 1ms and 10m, and shorter than flow.ttl"));
    }
    if raw.token.refresh_margin > Duration::from_secs(3600) {
        return Err(err("token.refresh_margin", "at most 1h (access tokens live 2h)"));
    }
    if raw.token.refresh_life < Duration::from_secs(3600) {
        return Err(err("token.refresh_life", "at least 1h"));
    }
    if raw.token.profile_cache > Duration::from_secs(24 * 3600) {
        return Err(err("token.profile_cache", "at most 24h (0s turns the cache off)"));
    }
    Ok(Settings {
        mode: raw.mode,
        grpc_addr: raw.server.grpc_addr,
        public_addr: raw.server.public_addr,
        admin_addr: raw.server.admin_addr,
        callback_url,
        drain: raw.server.drain,
        listener_limits,
        store,
        redis_tls,
        key_prefix: prefix,
        keyring,
        wechat,
        apps,
        device_defaults,
        clients,
        flow_ttl,
        grace,
        refresh_margin: raw.token.refresh_margin,
        refresh_life: raw.token.refresh_life,
        profile_cache: raw.token.profile_cache,
        log_json: raw.log.json,
    })
}

/// The `server.*` timeouts and caps, each within a range that keeps the service both usable and
/// protected (docs/operations.md says why each default is what it is).
fn listener_limits(server: &RawServer) -> Result<ListenerLimits, ConfigError> {
    if server.header_timeout < Duration::from_millis(100) || server.header_timeout > Duration::from_secs(60) {
        return Err(err("server.header_timeout", "between 100ms and 60s"));
    }
    if !(1..=1_000_000).contains(&server.max_connections) {
        return Err(err("server.max_connections", "between 1 and 1000000"));
    }
    if !(1..=1_000_000).contains(&server.max_concurrent_requests) {
        return Err(err("server.max_concurrent_requests", "between 1 and 1000000"));
    }
    if !(1..=100_000).contains(&server.grpc_max_concurrent_streams) {
        return Err(err("server.grpc_max_concurrent_streams", "between 1 and 100000"));
    }
    if server.grpc_max_connection_age < Duration::from_secs(10)
        || server.grpc_max_connection_age > Duration::from_secs(7 * 24 * 3600)
    {
        return Err(err("server.grpc_max_connection_age", "between 10s and 7days"));
    }
    Ok(ListenerLimits {
        header_timeout: server.header_timeout,
        max_connections: server.max_connections,
        max_concurrent_requests: server.max_concurrent_requests,
        grpc_max_concurrent_streams: server.grpc_max_concurrent_streams,
        grpc_max_connection_age: server.grpc_max_connection_age,
    })
}

/// A client's limits from `clients.<name>.rate_limits` and `max_open_flows` (`key` is
/// `clients.<name>`): unset families take their default, errors name the key at fault.
fn client_limits(key: &str, raw: &RawRateLimits, max_open_flows: u32) -> Result<ClientLimits, ConfigError> {
    let mut limits = ClientLimits::default();
    for (slot, family) in limits.rates.iter_mut().zip(Family::ALL) {
        let name = family.as_str();
        *slot = match raw.get(family) {
            (Some(spec), burst) => Rate::parse(spec, burst).map_err(|message| {
                let at = if message.starts_with("burst") { format!("{name}_burst") } else { name.to_owned() };
                err(format!("{key}.rate_limits.{at}"), message)
            })?,
            (None, Some(_)) => {
                return Err(err(
                    format!("{key}.rate_limits.{name}_burst"),
                    format!("set only with `{name}` (a rate such as \"200/s\")"),
                ));
            }
            (None, None) => *slot,
        };
    }
    if !(1..=MAX_OPEN_FLOWS).contains(&max_open_flows) {
        return Err(err(format!("{key}.max_open_flows"), format!("between 1 and {MAX_OPEN_FLOWS}")));
    }
    limits.max_open_flows = max_open_flows;
    Ok(limits)
}

/// A URL-ish string for display, its credentials replaced by `***`, by what they are rather
/// than by what a parser makes of the string: everything between the scheme's `:` (and `//`,
/// when present) and the last `@` goes, whether or not the string parses, and however it
/// parses (`rediss:+/:PASSWORD@host` parses with no password at all). Without a scheme,
/// everything before the last `@` goes. Strings without `@` are shown as they are.
fn without_credentials(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let scheme_len = url
        .find(':')
        .filter(|&colon| {
            let scheme = &url[..colon];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
        .map_or(0, |colon| colon + 1);
    let kept = if url[scheme_len..].starts_with("//") { scheme_len + 2 } else { scheme_len };
    if kept > at {
        return url.to_owned();
    }
    format!("{}***{}", &url[..kept], &url[at..])
}

/// The rule for app and client names (config keys, Redis key parts, request fields).
pub(crate) fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An absolute base URL; production requires https and a non-loopback host.
fn parse_base(key: &str, value: &str, dev: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| err(key, format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(err(key, "must be an http(s) URL with a host"));
    }
    if !dev {
        if url.scheme() != "https" {
            return Err(err(key, "must be https in production (http is for the dev-mode simulator)"));
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
            None => true,
        };
        if loopback {
            return Err(err(key, "points at a loopback address (the dev-mode simulator); production refuses it"));
        }
    }
    Ok(url)
}

/// A secret given inline (env) or as a file (Secret mount), exactly one of them.
fn read_secret(
    key: &str,
    field: &str,
    inline: Option<AppSecret>,
    file: Option<PathBuf>,
) -> Result<AppSecret, ConfigError> {
    let secret = match (inline, file) {
        (Some(s), None) => s.secret().trim().to_owned(),
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| err(format!("{key}.{field}_file"), format!("cannot read {}: {}", path.display(), e.kind())))?
            .trim()
            .to_owned(),
        (Some(_), Some(_)) => {
            return Err(err(format!("{key}.{field}"), format!("set `{field}` or `{field}_file`, not both")));
        }
        (None, None) => {
            return Err(err(format!("{key}.{field}"), format!("required (`{field}` from env, or `{field}_file`)")));
        }
    };
    if secret.is_empty() {
        return Err(err(format!("{key}.{field}"), "is empty"));
    }
    Ok(AppSecret::new(secret))
}

/// The `store.tls_*` keys that are set, in the order errors name them.
fn tls_keys_set(store: &RawStore) -> Vec<&'static str> {
    [
        ("tls_ca_file", &store.tls_ca_file),
        ("tls_cert_file", &store.tls_cert_file),
        ("tls_key_file", &store.tls_key_file),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_ref().map(|_| key))
    .collect()
}

/// Reads and checks the Redis TLS files: the CA bundle and the client certificate must hold
/// PEM certificates that redis-rs accepts, the key one PEM private key, and the certificate
/// and key come together. Errors name the key and the file, never a file's contents.
fn load_redis_tls(
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
) -> Result<RedisTls, ConfigError> {
    let ca_pem = match ca_file {
        Some(path) => {
            let pem = read_pem_file("store.tls_ca_file", &path)?;
            check_certificates("store.tls_ca_file", &path, &pem)?;
            // redis-rs turns the bundle into trust anchors at each connection; do it once now
            // so a certificate it cannot use stops start-up here, naming the key.
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
            redis::Client::build_with_tls("rediss://127.0.0.1/", certs).map_err(|e| {
                err("store.tls_ca_file", format!("{}: not usable as CA certificates: {e}", path.display()))
            })?;
            Some(pem)
        }
        None => None,
    };
    let client = match (cert_file, key_file) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem_file("store.tls_cert_file", &cert_path)?;
            check_certificates("store.tls_cert_file", &cert_path, &cert)?;
            let key = read_pem_file("store.tls_key_file", &key_path)?;
            check_private_key("store.tls_key_file", &key_path, &key)?;
            let key = String::from_utf8(key)
                .map_err(|_| err("store.tls_key_file", format!("{}: not PEM text", key_path.display())))?;
            Some((cert, RedisClientKey::new(key)))
        }
        (Some(_), None) => {
            return Err(err("store.tls_key_file", "required with store.tls_cert_file (mutual TLS needs both)"));
        }
        (None, Some(_)) => {
            return Err(err("store.tls_cert_file", "required with store.tls_key_file (mutual TLS needs both)"));
        }
        (None, None) => None,
    };
    Ok(RedisTls::new(ca_pem, client))
}

fn read_pem_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| err(key, format!("cannot read {}: {}", path.display(), e.kind())))
}

/// One or more PEM `CERTIFICATE` blocks, all well-formed.
fn check_certificates(key: &str, path: &Path, pem: &[u8]) -> Result<(), ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| err(key, format!("{}: bad PEM: {e}", path.display())))?;
        count += 1;
    }
    if count == 0 {
        return Err(err(key, format!("{}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in it", path.display())));
    }
    Ok(())
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted). The parser's error text is not
/// passed on: it could quote the key file.
fn check_private_key(key: &str, path: &Path, pem: &[u8]) -> Result<(), ConfigError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;

    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|_| {
        err(
            key,
            format!(
                "{}: no unencrypted PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`) in it",
                path.display()
            ),
        )
    })
}

fn load_keyring(inline: Option<String>, file: Option<PathBuf>, dev: bool) -> Result<Keyring, ConfigError> {
    let text = match (inline, file) {
        (Some(s), None) => s,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| err("store.sealing_keys_file", format!("cannot read {}: {}", path.display(), e.kind())))?,
        (Some(_), Some(_)) => {
            return Err(err("store.sealing_keys", "set `sealing_keys` or `sealing_keys_file`, not both"));
        }
        (None, None) if dev => {
            tracing::warn!("no sealing key configured: using a random one; records will not survive a restart");
            Keyring::generate_line(1)
        }
        (None, None) => {
            return Err(err(
                "store.sealing_keys_file",
                "required: lines of `<id>:<base64 32 bytes>` (`wxauth gen-key` makes one)",
            ));
        }
    };
    Keyring::parse(&text).map_err(|e| err("store.sealing_keys", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn base(overrides: &str) -> String {
        format!(
            r#"
[server]
callback_url = "https://auth.example.com/wechat/callback"
[store]
url = "redis://redis:6379/0"
sealing_keys = "{keys}"
[apps.mp]
kind = "official_account"
appid = "wx0123456789abcdef"
secret = "s3cret"
default_for = "MOBILE"
[clients.passport]
key_sha256 = "{KEY}"
apps = ["mp"]
return_urls = ["https://passport.example.com/login/"]
{overrides}
"#,
            keys = Keyring::generate_line(1)
        )
    }

    fn key_of(toml: &str) -> String {
        Settings::from_toml(toml).map(|_| ()).expect_err("invalid").key
    }

    #[test]
    fn a_production_config_validates_with_defaults() {
        let settings = Settings::from_toml(&base("")).expect("valid");
        assert_eq!(settings.mode, Mode::Production);
        assert_eq!(settings.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(settings.flow_ttl, Duration::from_secs(600));
        assert_eq!(settings.profile_cache, Duration::from_secs(300));
        assert_eq!(settings.store, StoreBackend::Redis(vec!["redis://redis:6379/0".into()]));
        assert_eq!(settings.resolve_app("", Some(Device::Mobile)).map(|a| a.name.as_str()), Some("mp"));
        assert!(settings.resolve_app("", Some(Device::Pc)).is_none());
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        assert_eq!(
            key_of(&base("").replace("callback_url = \"https://auth.example.com/wechat/callback\"", "")),
            "server.callback_url"
        );
        assert_eq!(key_of(&base("").replace("wx0123456789abcdef", "nope")), "apps.mp.appid");
        assert_eq!(key_of(&base("").replace("apps = [\"mp\"]", "apps = [\"web\"]")), "clients.passport.apps");
        assert_eq!(
            key_of(&base("").replace("passport.example.com/login/", "passport.example.com@evil")),
            "clients.passport.return_urls"
        );
        assert_eq!(key_of(&base("").replace("secret = \"s3cret\"", "")), "apps.mp.secret");
        assert_eq!(key_of(&base("[flow]\nttl = \"10s\"")), "flow.ttl");
        assert_eq!(key_of(&base("[flow]\ngrace = \"forever\"")), "flow.grace");
        assert_eq!(key_of(&base("[token]\nprofile_cache = \"2d\"")), "token.profile_cache");
        assert!(Settings::from_toml(&base("[token]\nprofile_cache = \"0s\"")).is_ok(), "0s turns it off");
        assert_eq!(key_of(&base("").replacen("[server]\n", "[server]\nbogus = 1\n", 1)), "server.bogus");
    }

    #[test]
    fn listener_limits_have_protective_defaults_and_named_errors() {
        let settings = Settings::from_toml(&base("")).expect("valid");
        let limits = settings.listener_limits;
        assert_eq!(limits.header_timeout, Duration::from_secs(10));
        assert_eq!((limits.max_connections, limits.max_concurrent_requests), (4096, 1024));
        assert_eq!(limits.grpc_max_concurrent_streams, 256);
        assert_eq!(limits.grpc_max_connection_age, Duration::from_secs(600));
        let server = |line: &str| base("").replacen("[server]\n", &format!("[server]\n{line}\n"), 1);
        let set = Settings::from_toml(&server("header_timeout = \"1s\"")).expect("valid");
        assert_eq!(set.listener_limits.header_timeout, Duration::from_secs(1));
        let summary = set.summary();
        assert_eq!(summary["listener_limits"]["header_timeout"], "1s");
        assert_eq!(summary["listener_limits"]["max_connections"], 4096);
        assert_eq!(summary["listener_limits"]["grpc_max_connection_age"], "10m");
        for (line, key) in [
            ("header_timeout = \"0s\"", "server.header_timeout"),
            ("header_timeout = \"5m\"", "server.header_timeout"),
            ("max_connections = 0", "server.max_connections"),
            ("max_concurrent_requests = 0", "server.max_concurrent_requests"),
            ("grpc_max_concurrent_streams = 0", "server.grpc_max_concurrent_streams"),
            ("grpc_max_connection_age = \"1s\"", "server.grpc_max_connection_age"),
            ("max_connections = -1", "server.max_connections"),
        ] {
            assert_eq!(key_of(&server(line)), key, "{line}");
        }
    }

    #[test]
    fn clients_get_default_limits_and_configured_ones() {
        let settings = Settings::from_toml(&base("")).expect("valid");
        assert_eq!(settings.clients[0].limits, ClientLimits::default());

        let limited = base(
            "max_open_flows = 200\n[clients.passport.rate_limits]\nauthorize = \"5/s\"\nauthorize_burst = 9\nuser = \"off\"",
        );
        let limits = &Settings::from_toml(&limited).expect("valid").clients[0].limits;
        let authorize = limits.rate(Family::Authorize).expect("on");
        assert_eq!((authorize.count.get(), authorize.burst.get()), (5, 9));
        assert_eq!(limits.rate(Family::Exchange), Family::Exchange.default_rate().into());
        assert_eq!(limits.rate(Family::User), None);
        assert_eq!(limits.max_open_flows, 200);
    }

    #[test]
    fn limit_errors_name_the_key_at_fault() {
        let at = |lines: &str| key_of(&base(&format!("[clients.passport.rate_limits]\n{lines}")));
        assert_eq!(at("exchange = \"fast\""), "clients.passport.rate_limits.exchange");
        assert_eq!(at("user = \"0/s\""), "clients.passport.rate_limits.user");
        assert_eq!(at("authorize = \"5/s\"\nauthorize_burst = 0"), "clients.passport.rate_limits.authorize_burst");
        assert_eq!(at("user_burst = 10"), "clients.passport.rate_limits.user_burst");
        assert_eq!(at("refresh = \"5/s\""), "clients.passport.rate_limits.refresh");
        assert_eq!(at("exchange = 5"), "clients.passport.rate_limits.exchange");
        assert_eq!(key_of(&base("max_open_flows = 0")), "clients.passport.max_open_flows");
        assert_eq!(key_of(&base("max_open_flows = 20000000")), "clients.passport.max_open_flows");
        assert_eq!(key_of(&base("max_open_flows = -1")), "clients.passport.max_open_flows");
    }

    #[test]
    fn a_sentinel_master_makes_the_urls_sentinels() {
        let toml = base("").replace(
            "url = \"redis://redis:6379/0\"",
            "urls = [\"redis://s1:26379\", \"redis://s2:26379\"]\nsentinel_master = \"mymaster\"",
        );
        let settings = Settings::from_toml(&toml).expect("valid");
        let urls = vec!["redis://s1:26379".to_owned(), "redis://s2:26379".to_owned()];
        assert_eq!(settings.store, StoreBackend::Sentinel { urls, master: "mymaster".into() });
    }

    #[test]
    fn production_refuses_dev_settings() {
        let demo_key = hex::encode(key_digest(DEV_CLIENT_KEY));
        assert_eq!(key_of(&base("").replace(KEY, &demo_key)), "clients.passport.key_sha256");
        let sim = base("[wechat]\napi_base = \"http://127.0.0.1:8081\"");
        assert_eq!(key_of(&sim), "wechat.api_base");
        let loopback = base("[wechat]\nopen_base = \"https://localhost:8081\"");
        assert_eq!(key_of(&loopback), "wechat.open_base");
        assert!(Settings::from_toml(&format!("mode = \"development\"\n{sim}")).is_ok());
    }

    #[test]
    fn secret_values_never_reach_error_messages() {
        let toml = base("").replace("secret = \"s3cret\"", "secret = \"s3cret\"\nsecret_file = \"/nonexistent\"");
        let err = Settings::from_toml(&toml).map(|_| ()).expect_err("both");
        assert!(!err.to_string().contains("s3cret"));
        let debug = format!("{:?}", Settings::from_toml(&base("")).expect("valid"));
        assert!(!debug.contains("s3cret"), "{debug}");
    }

    /// PEM files for the TLS keys in a fresh temp dir: a CA certificate, a leaf certificate and
    /// its key, and a file that is not PEM. Removed on drop.
    struct PemFiles {
        dir: PathBuf,
    }

    impl PemFiles {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("wxauth-config-tls-{}", crate::random_id(8)));
            std::fs::create_dir_all(&dir).expect("dir");
            let ca_key = rcgen::KeyPair::generate().expect("key");
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let leaf_key = rcgen::KeyPair::generate().expect("key");
            let leaf = rcgen::CertificateParams::new(vec!["wxauth".to_owned()]).expect("params");
            let issuer = rcgen::Issuer::new(ca.clone(), &ca_key);
            std::fs::write(dir.join("ca.crt"), ca.self_signed(&ca_key).expect("ca").pem()).expect("write");
            std::fs::write(dir.join("tls.crt"), leaf.signed_by(&leaf_key, &issuer).expect("leaf").pem())
                .expect("write");
            std::fs::write(dir.join("tls.key"), leaf_key.serialize_pem()).expect("write");
            std::fs::write(dir.join("junk"), "not PEM at all\n").expect("write");
            Self { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        /// The base config on `rediss://` with `tls` lines added under `[store]`.
        fn config(&self, tls: &str) -> String {
            base("").replace("url = \"redis://redis:6379/0\"", &format!("url = \"rediss://redis:6380/0\"\n{tls}"))
        }
    }

    impl Drop for PemFiles {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn tls_files_are_read_and_checked_at_load() {
        let pem = PemFiles::new();
        let tls = format!(
            "tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
            pem.path("ca.crt"),
            pem.path("tls.crt"),
            pem.path("tls.key")
        );

        let settings = Settings::from_toml(&pem.config(&tls)).expect("valid");

        let certs = settings.redis_tls.certificates().expect("configured");
        assert!(certs.root_cert.is_some());
        assert!(certs.client_tls.is_some());
        let key = std::fs::read_to_string(pem.dir.join("tls.key")).expect("key");
        let body = key.lines().nth(1).expect("a base64 line");
        let debug = format!("{settings:?}");
        assert!(!debug.contains(body) && !debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn no_tls_files_means_no_custom_certificates() {
        let settings = Settings::from_toml(&base("")).expect("valid");
        assert!(settings.redis_tls.certificates().is_none());
    }

    #[test]
    fn tls_errors_name_the_key_at_fault() {
        let pem = PemFiles::new();
        let (cert, key, junk) = (pem.path("tls.crt"), pem.path("tls.key"), pem.path("junk"));
        let cases = [
            (format!("tls_cert_file = \"{cert}\""), "store.tls_key_file"),
            (format!("tls_key_file = \"{key}\""), "store.tls_cert_file"),
            (format!("tls_ca_file = \"{}\"", pem.path("missing.crt")), "store.tls_ca_file"),
            (format!("tls_ca_file = \"{junk}\""), "store.tls_ca_file"),
            (format!("tls_ca_file = \"{key}\""), "store.tls_ca_file"),
            (format!("tls_cert_file = \"{junk}\"\ntls_key_file = \"{key}\""), "store.tls_cert_file"),
            (format!("tls_cert_file = \"{cert}\"\ntls_key_file = \"{cert}\""), "store.tls_key_file"),
            (format!("tls_cert_file = \"{cert}\"\ntls_key_file = \"{junk}\""), "store.tls_key_file"),
        ];
        for (tls, key_at_fault) in cases {
            assert_eq!(key_of(&pem.config(&tls)), key_at_fault, "{tls}");
        }
    }

    #[test]
    fn tls_files_without_a_rediss_url_stop_start_up() {
        let pem = PemFiles::new();
        let ca = format!("tls_ca_file = \"{}\"", pem.path("ca.crt"));
        let plain =
            base("").replace("url = \"redis://redis:6379/0\"", &format!("url = \"redis://redis:6379/0\"\n{ca}"));
        let error = Settings::from_toml(&plain).map(|_| ()).expect_err("plain URL");
        assert_eq!(error.key, "store.tls_ca_file");
        assert!(error.message.contains("not rediss://"), "{error}");
        let memory = plain.replace("[store]\n", "[store]\nkind = \"memory\"\n");
        assert_eq!(key_of(&memory), "store.tls_ca_file");
        let mixed =
            base("").replace("url = \"redis://redis:6379/0\"", "urls = [\"rediss://a:6380\", \"redis://b:6379\"]");
        assert_eq!(key_of(&mixed), "store.urls[1]");
    }

    #[test]
    fn credentials_are_redacted_whether_or_not_the_url_parses() {
        for (url, shown) in [
            ("rediss://:PASSWORD@redis-0:6379", "rediss://***@redis-0:6379"),
            ("rediss:+/:PASSWORD@redis-1:6379", "rediss:***@redis-1:6379"),
            ("redis://user:PASSWORD@redis:6379/0", "redis://***@redis:6379/0"),
            ("redis://u:PASS@WORD@redis:6379", "redis://***@redis:6379"),
            ("redis://redis:6379/0", "redis://redis:6379/0"),
            (":PASSWORD@host", "***@host"),
            ("not a url:PASSWORD@x", "***@x"),
            ("redis:/PASSWORD@h", "redis:***@h"),
            ("https://user:PASSWORD@api.example/", "https://***@api.example/"),
        ] {
            assert_eq!(without_credentials(url), shown, "{url}");
        }
    }

    /// The `config` fuzz target's finding: a second store URL that parses with no password
    /// (`rediss:+/:...` has no authority) showed the password in `wxauth check`'s summary.
    #[test]
    fn the_summary_shows_no_store_password_of_any_url() {
        let urls = "urls = [\"rediss://:PASSWORD@redis-0:6379\", \"rediss:+/:PASSWORD@redis-1:6379\"]";
        let found = base("").replace("url = \"redis://redis:6379/0\"", urls);
        let error = Settings::from_toml(&found).map(|_| ()).expect_err("a store URL without a host");
        assert_eq!(error.key, "store.urls[1]");
        assert!(!error.to_string().contains("PASSWORD"), "{error}");

        let urls = "urls = [\"rediss://:PASSWORD@redis-0:6379\", \"rediss://user:PASSWORD@redis-1:6379\"]";
        let cluster = Settings::from_toml(&base("").replace("url = \"redis://redis:6379/0\"", urls)).expect("valid");
        let summary = cluster.summary().to_string();
        assert!(!summary.contains("PASSWORD"), "{summary}");
        assert!(summary.contains("rediss://***@redis-1:6379"), "{summary}");
    }

    #[test]
    fn key_file_errors_do_not_quote_the_file() {
        let pem = PemFiles::new();
        let cert_pem = std::fs::read_to_string(pem.dir.join("tls.crt")).expect("cert");
        let body = cert_pem.lines().nth(1).expect("a base64 line");
        let tls = format!("tls_cert_file = \"{0}\"\ntls_key_file = \"{0}\"", pem.path("tls.crt"));
        let error = Settings::from_toml(&pem.config(&tls)).map(|_| ()).expect_err("a certificate is no key");
        assert!(!error.to_string().contains(body), "{error}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn env_sets_the_tls_files() {
        let pem = PemFiles::new();
        let toml = pem.config("");
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXAUTH_STORE__TLS_CA_FILE", pem.path("ca.crt"));
            jail.set_env("WXAUTH_STORE__TLS_CERT_FILE", pem.path("tls.crt"));
            jail.set_env("WXAUTH_STORE__TLS_KEY_FILE", pem.path("tls.key"));
            let settings = Settings::from_sources(&toml, env_overrides()).map_err(|e| e.to_string())?;
            let certs = settings.redis_tls.certificates().ok_or("no TLS from env")?;
            assert!(certs.root_cert.is_some() && certs.client_tls.is_some());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
    fn env_overrides_the_file_with_double_underscore_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WXAUTH_STORE__URL", "redis://other:6380/1");
            jail.set_env("WXAUTH_APPS__MP__SECRET", "from-env");
            // What Kubernetes injects for a Service named `wxauth`, and the config path.
            jail.set_env("WXAUTH_SERVICE_HOST", "10.0.0.1");
            jail.set_env("WXAUTH_PORT_50051_TCP_PORT", "50051");
            jail.set_env("WXAUTH_CONFIG", "/etc/wxauth/config.toml");
            let settings = Settings::from_sources(&base(""), env_overrides()).map_err(|e| e.to_string())?;
            assert_eq!(settings.store, StoreBackend::Redis(vec!["redis://other:6380/1".into()]));
            assert_eq!(settings.apps["mp"].secret.secret(), "from-env");
            Ok(())
        });
    }
}
