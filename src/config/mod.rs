//! Typed configuration: one TOML file (the one helm renders) layered with `WXAUTH_*`
//! environment overrides (`WXAUTH_STORE__URL` sets `store.url`), secrets read from env or from
//! files (Kubernetes Secret mounts), everything validated once at start-up into [`Settings`].
//! A bad value stops start-up with an error that names the key.
//!
//! [`Settings`] has the file's sections, and start-up hands each to the part it configures.
//! The rooms: `raw.rs` is the file's shape and defaults as serde reads them; `validate.rs`
//! walks the sections in the file's order, each checked by its own module (`server.rs`,
//! `store.rs`, `apps.rs` with `[wechat]` and `push.rs` (an app's message push), `clients.rs` with `rates.rs`, the plain rate-limit
//! settings that [`crate::limits`] builds its buckets from; `oidc.rs`, the OpenID Provider's
//! keys and clients); `summary.rs` is `wxauth check`'s
//! view.

mod apps;
mod clients;
mod oidc;
mod push;
mod rates;
mod raw;
mod server;
mod store;
mod summary;
#[cfg(test)]
mod tests;
mod validate;

use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub use apps::{Apps, Device};
pub use clients::{Client, Grant, Users};
pub use oidc::{ClientAuth, OIDC_SCOPES, OidcClient, OidcSettings, Subject};
pub use push::PushSettings;
pub use rates::{ClientLimits, Family, OidcFamily, OidcLimits, Rate};
pub use server::{ListenerLimits, ServerSettings};
pub use store::{StoreBackend, StoreSettings};

use crate::tokens::TokenPolicy;
use crate::wechat::{App, WechatSettings};
use raw::RawConfig;

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

/// The validated configuration the service runs with, in the config file's sections: startup
/// hands each to the part of the service it configures.
#[derive(Debug)]
pub struct Settings {
    /// Production or development (`mode`).
    pub mode: Mode,
    /// The listeners and the callback URL (`[server]`).
    pub server: ServerSettings,
    /// Where records live and how they are sealed (`[store]`).
    pub store: StoreSettings,
    /// Upstream (`[wechat]`).
    pub wechat: WechatSettings,
    /// The WeChat apps (`[apps.<name>]`).
    pub apps: Apps,
    /// Callers (`[clients.<name>]`).
    pub clients: Vec<Client>,
    /// Sign-in flows (`[flow]`).
    pub flow: FlowSettings,
    /// Tokens and profiles (`[token]`).
    pub token: TokenPolicy,
    /// Logging (`[log]`).
    pub log: LogSettings,
    /// The OpenID Provider face and its clients (`[oidc]`), when configured.
    pub oidc: Option<std::sync::Arc<OidcSettings>>,
}

/// The validated `[flow]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// How long a flow waits for its callback.
    pub ttl: Duration,
    /// How long a used flow still relays (double callbacks, reloads).
    pub grace: Duration,
}

/// The validated `[log]` section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSettings {
    /// JSON logs.
    pub json: bool,
}

impl Settings {
    /// Loads `path` (TOML) layered with `WXAUTH_*` env overrides and validates it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("WXAUTH_CONFIG", format!("cannot read {}: {e}", path.display())))?;
        Self::from_sources(&text, env_overrides())
    }

    /// Parses TOML text layered with an env provider, then validates.
    pub(crate) fn from_sources(toml: &str, env: Env) -> Result<Self, ConfigError> {
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
        validate::validate(raw)
    }

    /// Parses TOML text alone (tests, examples).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_sources(toml, Env::prefixed("WXAUTH_UNUSED_IN_TESTS_"))
    }

    /// The app a request names, or the device's default when it names none.
    pub(crate) fn resolve_app(&self, name: &str, device: Option<Device>) -> Option<&App> {
        self.apps.resolve(name, device)
    }
}

/// The `WXAUTH_*` environment overrides: `WXAUTH_<SECTION>__<KEY>` (and `WXAUTH_MODE`).
/// Only names with the `__` separator count, so the variables Kubernetes injects for a Service
/// named `wxauth` (`WXAUTH_SERVICE_HOST`, `WXAUTH_PORT_50051_TCP`, ...) and `WXAUTH_CONFIG`
/// are not mistaken for config keys.
pub(crate) fn env_overrides() -> Env {
    Env::prefixed("WXAUTH_").filter(|key| key.as_str().contains("__") || key == "mode").split("__")
}

/// SHA-256 of a client key, as configured in `clients.<name>.key_sha256`.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The rule for app and client names (config keys, Redis key parts, request fields).
pub(crate) fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
