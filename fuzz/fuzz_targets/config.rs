//! The config loader (`Settings::from_toml`, what `--config FILE` and `wxauth check` run) on
//! arbitrary TOML text. Invariants beyond "never panics":
//! - a refusal names a key (`config key `store.url`: ...`), never an empty one;
//! - an accepted config's summary (what `wxauth check` prints) holds no appsecret and, for
//!   every store URL, none of what stands before its last `@` after the scheme (user and
//!   password, found by what they are, never by a URL parse: a URL that parses with no password
//!   may still hold one, as `rediss:+/:PASSWORD@redis-1:6379` did).
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
            let summary_json = settings.summary();
            let summary = summary_json.to_string();
            for app in settings.apps.by_name.values() {
                let secret = app.secret.secret();
                assert!(secret.len() < 6 || !summary.contains(secret), "the summary shows apps.{}.secret", app.name);
            }
            let urls = match &settings.store.backend {
                StoreBackend::Memory => &[][..],
                StoreBackend::Redis(urls) | StoreBackend::Sentinel { urls, .. } => urls.as_slice(),
            };
            for (i, url) in urls.iter().enumerate() {
                let shown = summary_json["store"]["urls"][i].as_str().expect("each store URL is shown");
                let Some(at) = url.rfind('@') else { continue };
                let after_scheme = url.find("://").map(|c| c + 3).or_else(|| url.find(':').map(|c| c + 1)).unwrap_or(0);
                let credentials = &url[after_scheme.min(at)..at];
                for piece in credentials
                    .split([':', '/'])
                    .filter(|p| p.len() >= 6 && !url[at..].contains(*p) && !url[..after_scheme.min(at)].contains(*p))
                {
                    assert!(!shown.contains(piece), "the summary shows a store credential: {shown}");
                }
            }
        }
    }
});
