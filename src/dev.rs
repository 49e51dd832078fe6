//! The out-of-the-box dev mode (DESIGN.md §8): `cargo run` with no config serves everything
//! on loopback against the WeChat simulator, with the documented demo apps, client and key.
//! These values are a contract that scripts and docs rely on.

use crate::config::{ConfigError, DEV_CLIENT_KEY, Settings, key_digest};

/// The simulator's address in dev mode.
pub const SIM_ADDR: &str = "127.0.0.1:8081";

/// The dev-mode settings: in-memory store, simulator URLs, the `demo` client.
pub fn settings() -> Result<Settings, ConfigError> {
    Settings::from_toml(&format!(
        r#"
mode = "development"

[server]
grpc_addr = "127.0.0.1:50051"
public_addr = "127.0.0.1:8080"
admin_addr = "127.0.0.1:9090"
callback_url = "http://127.0.0.1:8080/wechat/callback"
drain = "2s"

[store]
kind = "memory"

[wechat]
open_base = "http://{SIM_ADDR}"
api_base = "http://{SIM_ADDR}"

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

[clients.demo]
key_sha256 = "{}"
apps = ["demo-mp", "demo-web"]
return_urls = ["http://127.0.0.1:8082/", "http://localhost:8082/"]
"#,
        hex::encode(key_digest(DEV_CLIENT_KEY))
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dev_settings_are_valid_and_use_the_documented_values() {
        let settings = super::settings().expect("dev settings validate");
        assert_eq!(settings.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(settings.apps["demo-mp"].appid, "wxd0000000000000a1");
        assert_eq!(settings.clients[0].name, "demo");
    }
}
