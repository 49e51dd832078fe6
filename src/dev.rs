//! The out-of-the-box dev mode (docs/design.md §8): `cargo run` with no config serves everything
//! on loopback against the WeChat simulator, with the documented demo apps, client and key.
//! These values are a contract that scripts and docs rely on.

use std::net::SocketAddr;

use crate::config::{ConfigError, DEV_CLIENT_KEY, Settings, key_digest};

/// The dev mode's OpenID Connect client (the demo page's "Sign in through OIDC"; README).
pub const DEV_OIDC_CLIENT_ID: &str = "demo-oidc";
/// Its secret: in the repository, so dev only (the production config has no such client).
pub const DEV_OIDC_CLIENT_SECRET: &str = "dev-only-oidc-secret";
/// The dev mode's client registered for ES256 ID tokens (signed with the repository's dev EC
/// key): the demo page's "Sign in through OIDC (ES256)"; the same secret and redirect URIs.
pub const DEV_OIDC_ES256_CLIENT_ID: &str = "demo-oidc-es256";

/// The third redirect URI of [`DEV_OIDC_CLIENT_ID`]: the example relying party's
/// (`examples/oidc-node/serve.js`), run by hand beside `cargo run` (docs/oidc.md).
pub const DEV_OIDC_EXAMPLE_REDIRECT: &str = "http://127.0.0.1:8083/callback";

/// The simulator's address in dev mode.
pub const SIM_ADDR: &str = "127.0.0.1:8081";

/// Where the pieces of the dev mode listen. [`DevAddrs::default`] holds the documented values;
/// the browser test moves them all to free ports and keeps everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevAddrs {
    /// wxauth's gRPC listener.
    pub grpc: SocketAddr,
    /// wxauth's public listener: the callback URL WeChat (the simulator) redirects to.
    pub public: SocketAddr,
    /// wxauth's admin listener.
    pub admin: SocketAddr,
    /// The WeChat simulator.
    pub sim: SocketAddr,
    /// The demo product page, whose origin the `demo` client may return to.
    pub demo: SocketAddr,
}

impl Default for DevAddrs {
    fn default() -> Self {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self { grpc: at(50051), public: at(8080), admin: at(9090), sim: at(8081), demo: at(8082) }
    }
}

/// The dev-mode settings: in-memory store, simulator URLs, the `demo` client.
pub fn settings() -> Result<Settings, ConfigError> {
    settings_at(&DevAddrs::default())
}

/// The dev-mode settings with the listeners at `addrs` (the callback URL and the `demo`
/// client's return URLs follow them).
pub fn settings_at(addrs: &DevAddrs) -> Result<Settings, ConfigError> {
    let DevAddrs { grpc, public, admin, sim, demo } = addrs;
    let demo_port = demo.port();
    Settings::from_toml(&format!(
        r#"
mode = "development"

[server]
grpc_addr = "{grpc}"
public_addr = "{public}"
admin_addr = "{admin}"
callback_url = "http://{public}/wechat/callback"
drain = "2s"

[store]
kind = "memory"

[wechat]
open_base = "http://{sim}"
api_base = "http://{sim}"

[apps.demo-mp]
kind = "official_account"
appid = "wxd0000000000000a1"
secret = "demo-mp-secret"
default_for = "MOBILE"

[apps.demo-web]
kind = "website"
appid = "wxd0000000000000b2"
secret = "demo-web-secret"
default_for = "PC"

# A mobile app and a mini program on the same open-platform account: one test user has one
# unionid across all four apps.
[apps.demo-app]
kind = "mobile_app"
appid = "wxd0000000000000c3"
secret = "demo-app-secret"

[apps.demo-mini]
kind = "mini_program"
appid = "wxd0000000000000d4"
secret = "demo-mini-secret"

[clients.demo]
key_sha256 = "{}"
apps = ["demo-mp", "demo-web", "demo-app", "demo-mini"]
return_urls = ["http://{demo}/", "http://localhost:{demo_port}/"]
# Dev mode: the demo client holds every app-level grant, so each of those RPCs answers a
# `grpcurl` right after `cargo run` (production clients hold none unless given).
grants = ["app_access_token", "jssdk", "phone_number", "mini_data", "phone_lookup"]

# Dev mode: no rate limits for the demo client (a developer clicking and scripting against
# it should never meet CLIENT_RATE_LIMITED); the open-flow cap keeps its default.
[clients.demo.rate_limits]
authorize = "off"
exchange = "off"
user = "off"

# The OpenID Provider (docs/oidc.md) with the repository's dev keys (RSA and EC: the defaults in
# development) and the demo page as a relying party, once for RS256 and once for ES256.
# The last redirect URI is the example relying party's, run by hand beside `cargo run`
# (examples/oidc-node/serve.js, docs/oidc.md).
[oidc.clients.demo-oidc]
redirect_uris = ["http://{demo}/oidc/back", "http://localhost:{demo_port}/oidc/back", "{DEV_OIDC_EXAMPLE_REDIRECT}"]
post_logout_redirect_uris = ["http://{demo}/"]
auth_method = "client_secret_basic"
secret_sha256 = "{oidc_secret}"
apps = ["demo-mp", "demo-web"]

[oidc.clients.{DEV_OIDC_ES256_CLIENT_ID}]
redirect_uris = ["http://{demo}/oidc/back", "http://localhost:{demo_port}/oidc/back"]
post_logout_redirect_uris = ["http://{demo}/"]
auth_method = "client_secret_basic"
secret_sha256 = "{oidc_secret}"
apps = ["demo-mp", "demo-web"]
id_token_signed_response_alg = "ES256"
# As the demo client: no rate limits in development.
[oidc.clients.demo-oidc.rate_limits]
authorize = "off"
token = "off"
token_auth_failures = "off"

[oidc.clients.{DEV_OIDC_ES256_CLIENT_ID}.rate_limits]
authorize = "off"
token = "off"
token_auth_failures = "off"
"#,
        hex::encode(key_digest(DEV_CLIENT_KEY)),
        oidc_secret = hex::encode(key_digest(DEV_OIDC_CLIENT_SECRET)),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dev_settings_are_valid_and_use_the_documented_values() {
        let settings = super::settings().expect("dev settings validate");
        assert_eq!(settings.server.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(settings.apps.by_name["demo-mp"].appid, "wxd0000000000000a1");
        assert_eq!(settings.clients[0].name, "demo");
        assert!(crate::config::Family::ALL.iter().all(|f| settings.clients[0].limits.rate(*f).is_none()), "no limits");
        assert!(crate::config::Grant::ALL.iter().all(|g| settings.clients[0].holds(*g)), "every grant");
        assert_eq!(settings.server.callback_url.as_str(), "http://127.0.0.1:8080/wechat/callback");
        assert_eq!(super::SIM_ADDR, super::DevAddrs::default().sim.to_string());
        assert_eq!(crate::demo::DEMO_ADDR, super::DevAddrs::default().demo.to_string());
        let oidc = settings.oidc.as_deref().expect("the dev mode serves the OpenID Provider");
        assert!(oidc.signing_key.is_dev_key());
        let es256 = oidc.signer(crate::oidc::Alg::Es256).expect("the dev EC key signs ES256");
        assert!(es256.is_dev_key() && es256.kid() == crate::oidc::DEV_ES256_KEY_ID);
        let es256_client = oidc.client(super::DEV_OIDC_ES256_CLIENT_ID).expect("the ES256 demo client");
        assert_eq!(es256_client.id_token_alg, crate::oidc::Alg::Es256);
        assert_eq!(oidc.clients[0].redirect_uris[0], "http://127.0.0.1:8082/oidc/back");
        assert_eq!(oidc.clients[0].redirect_uris[2], super::DEV_OIDC_EXAMPLE_REDIRECT);
    }
}
