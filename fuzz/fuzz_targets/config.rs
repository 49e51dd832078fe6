//! The config loader (`Settings::from_toml`, what `--config FILE` and `wxauth check` run) on
//! arbitrary TOML text. Invariants beyond "never panics":
//! - a refusal names a key (`config key `store.url`: ...`), never an empty one;
//! - an accepted config's summary (what `wxauth check` prints) holds no appsecret and no store
//!   URL password.
//!
//! The loader reads the files a config names (`secret_file`, `sealing_keys_file`, `tls_*_file`);
//! inputs naming device or kernel files (`/dev/zero` never ends) are skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxauth::config::{Settings, StoreBackend};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if ["/dev", "/proc", "/sys", "fd/"].iter().any(|dir| text.contains(dir)) {
        return;
    }
    match Settings::from_toml(text) {
        Err(error) => {
            assert!(!error.key.is_empty(), "{error}");
            assert!(error.to_string().starts_with(&format!("config key `{}`: ", error.key)), "{error}");
        }
        Ok(settings) => {
            let summary = settings.summary().to_string();
            for app in settings.apps.values() {
                let secret = app.secret.secret();
                assert!(secret.len() < 6 || !summary.contains(secret), "the summary shows apps.{}.secret", app.name);
            }
            let urls = match &settings.store {
                StoreBackend::Memory => &[][..],
                StoreBackend::Redis(urls) | StoreBackend::Sentinel { urls, .. } => urls.as_slice(),
            };
            for url in urls.iter().filter_map(|u| url::Url::parse(u).ok()) {
                let password = url.password().unwrap_or_default();
                assert!(password.len() < 6 || !summary.contains(password), "the summary shows a store password");
            }
        }
    }
});
