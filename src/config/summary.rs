//! What a config amounts to, for `wxauth check`: every setting that shapes behaviour and no
//! secret.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Family, Rate, Settings, StoreBackend};

impl Settings {
    /// What this config amounts to, for `wxauth check`: every setting that shapes behaviour and
    /// no secret (no appsecret, key hash or sealing key; store URLs without their credentials).
    pub fn summary(&self) -> serde_json::Value {
        let humane = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        let server = &self.server;
        let limits = &server.listener_limits;
        let token = &self.token;
        serde_json::json!({
            "mode": format!("{:?}", self.mode),
            "listen": { "grpc": server.grpc_addr, "public": server.public_addr, "admin": server.admin_addr },
            "callback_url": without_credentials(server.callback_url.as_str()),
            "drain": humane(server.drain),
            "listener_limits": {
                "header_timeout": humane(limits.header_timeout),
                "max_connections": limits.max_connections,
                "max_concurrent_requests": limits.max_concurrent_requests,
                "grpc_max_concurrent_streams": limits.grpc_max_concurrent_streams,
                "grpc_max_connection_age": humane(limits.grpc_max_connection_age),
            },
            "store": self.store_summary(),
            "store_tls": format!("{:?}", self.store.tls),
            "key_prefix": self.store.key_prefix,
            "sealing_key_ids": self.store.keyring.ids(),
            "wechat": {
                "open_base": without_credentials(self.wechat.open_base.as_str()),
                "api_base": without_credentials(self.wechat.api_base.as_str()),
                "timeout": humane(self.wechat.timeout),
                "attempts": self.wechat.attempts,
            },
            "apps": self.apps_summary(),
            "clients": self.clients_summary(),
            "flow": { "ttl": humane(self.flow.ttl), "grace": humane(self.flow.grace) },
            "token": {
                "refresh_margin": humane(token.refresh_margin),
                "refresh_life": humane(token.refresh_life),
                "profile_cache": humane(token.profile_cache),
                "user_events_kept": token.user_events_kept,
            },
            "log_json": self.log.json,
            "oidc": self.oidc_summary(),
        })
    }

    /// The backend and its URLs, credentials replaced.
    fn store_summary(&self) -> serde_json::Value {
        match &self.store.backend {
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
        }
    }

    /// Each app with the devices it is the default of; no secret.
    fn apps_summary(&self) -> Vec<serde_json::Value> {
        let default_for = |app: &str| {
            self.apps
                .device_defaults
                .iter()
                .filter(|(_, name)| name.as_str() == app)
                .map(|(d, _)| format!("{d:?}"))
                .collect::<Vec<_>>()
        };
        self.apps
            .by_name
            .values()
            .map(|app| {
                serde_json::json!({
                    "name": app.name, "kind": format!("{:?}", app.kind), "appid": app.appid,
                    "default_for": default_for(&app.name),
                })
            })
            .collect()
    }

    /// Each client's apps, patterns, reach and limits; no key hash.
    fn clients_summary(&self) -> Vec<serde_json::Value> {
        self.clients
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "apps": c.apps, "return_url_patterns": c.allowlist.patterns(),
                    "users": format!("{:?}", c.users).to_lowercase(),
                    "rate_limits": Family::ALL.iter().map(|f| {
                        (f.as_str(), c.limits.rate(*f).map_or_else(|| "off".to_owned(), Rate::describe))
                    }).collect::<BTreeMap<_, _>>(),
                    "max_open_flows": c.limits.max_open_flows,
                    "grants": c.grants.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect()
    }
}

/// A URL-ish string for display, its credentials replaced by `***`, by what they are rather
/// than by what a parser makes of the string: everything between the scheme's `:` (and `//`,
/// when present) and the last `@` goes, whether or not the string parses, and however it
/// parses (`rediss:+/:PASSWORD@host` parses with no password at all). Without a scheme,
/// everything before the last `@` goes. Strings without `@` are shown as they are.
pub(super) fn without_credentials(url: &str) -> String {
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
