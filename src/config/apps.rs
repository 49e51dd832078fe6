//! `[wechat]` and `[apps.<name>]`: the upstream WeChat endpoints and the WeChat apps wxauth
//! signs users in with, each with its appid, secret and the device it is the default of.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::push::PushSettings;
use super::raw::{RawApp, RawWechat};
use super::server::parse_base;
use super::{ConfigError, err, is_name};
use crate::secrets::AppSecret;
use crate::wechat::{App, WechatSettings};

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

/// The validated `[apps]` section.
#[derive(Debug)]
pub struct Apps {
    /// Apps by config name.
    pub by_name: BTreeMap<String, App>,
    /// The default app of each device (`apps.<name>.default_for`).
    pub device_defaults: BTreeMap<Device, String>,
    /// The message-push endpoints (`apps.<name>.push`), one per app that has one.
    pub push: Vec<PushSettings>,
}

impl Apps {
    /// The app a request names, or the device's default when it names none.
    pub(crate) fn resolve(&self, name: &str, device: Option<Device>) -> Option<&App> {
        if name.is_empty() {
            return device.and_then(|d| self.device_defaults.get(&d)).and_then(|n| self.by_name.get(n));
        }
        self.by_name.get(name)
    }
}

/// Validates `[wechat]`: the bases (https and not loopback in production), the timeout and
/// the attempts of one call.
pub(super) fn validate_wechat(wechat: &RawWechat, dev: bool) -> Result<WechatSettings, ConfigError> {
    let open_base = parse_base("wechat.open_base", &wechat.open_base, dev)?;
    let api_base = parse_base("wechat.api_base", &wechat.api_base, dev)?;
    if wechat.timeout.is_zero() || wechat.timeout > Duration::from_secs(60) {
        return Err(err("wechat.timeout", "between 1ms and 60s"));
    }
    if !(1..=5).contains(&wechat.attempts) {
        return Err(err("wechat.attempts", "between 1 and 5"));
    }
    Ok(WechatSettings { open_base, api_base, timeout: wechat.timeout, attempts: wechat.attempts })
}

/// Validates `[apps.<name>]`: names, appids, secrets, at most one default app per device, the
/// message-push endpoints (paths apart from the callback's `callback_path` and from each
/// other); at least one app.
pub(super) fn validate(raw: BTreeMap<String, RawApp>, callback_path: &str) -> Result<Apps, ConfigError> {
    let mut by_name = BTreeMap::new();
    let mut device_defaults = BTreeMap::new();
    let mut push = Vec::new();
    for (name, app) in raw {
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
        let secret =
            AppSecret::new(read_secret(&key, "secret", app.secret.map(|s| s.secret().to_owned()), app.secret_file)?);
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
        if let Some(raw) = app.push {
            push.push(super::push::validate(&name, raw)?);
        }
        by_name.insert(name.clone(), App { name, appid: app.appid, secret, kind: app.kind });
    }
    if by_name.is_empty() {
        return Err(err("apps", "at least one app"));
    }
    super::push::check_paths(&push, callback_path)?;
    Ok(Apps { by_name, device_defaults, push })
}

/// A secret given inline (env) or as a file (Secret mount), exactly one of them, trimmed; the
/// caller wraps it in its newtype at once.
pub(super) fn read_secret(
    key: &str,
    field: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<String, ConfigError> {
    let secret = match (inline, file) {
        (Some(s), None) => s.trim().to_owned(),
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
    Ok(secret)
}
