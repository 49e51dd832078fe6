//! `[apps.<name>.push]`: an app's message push (消息推送), which WeChat sends to one URL per
//! official account: where it arrives on the callback domain, its Token and EncodingAESKey as
//! configured on WeChat's console, and the company's own message handler that every other
//! message is passed on to (docs/design.md §2.6).

use std::time::Duration;

use url::Url;

use super::apps::read_secret;
use super::raw::RawPush;
use super::{ConfigError, err};
use crate::secrets::{EncodingAesKey, PushToken};

/// The longest a forwarded message may wait for the company's handler: WeChat drops the
/// connection after 5 s (and retries), so wxauth must answer before.
pub const MAX_FORWARD_TIMEOUT: Duration = Duration::from_millis(4500);

/// One app's validated message push. `Debug` shows no secret.
#[derive(Clone, Debug)]
pub struct PushSettings {
    /// The app's config name.
    pub app: String,
    /// The path on the public listener WeChat posts to (`/wechat/push/<app>` by default).
    pub path: String,
    /// The Token: WeChat's signatures are made with it.
    pub token: PushToken,
    /// The EncodingAESKey of the safe mode; `None`: plaintext mode (the console's 明文模式).
    /// With a key, only encrypted messages are accepted (a plaintext body is not signed).
    pub aes_key: Option<EncodingAesKey>,
    /// The company's own message handler: every message wxauth does not consume goes there
    /// unchanged (same query string and body), and its answer goes back to WeChat.
    pub forward_to: Option<Url>,
    /// How long the handler may take (at most [`MAX_FORWARD_TIMEOUT`]).
    pub forward_timeout: Duration,
}

/// Validates one app's `push` table: the path, the Token (WeChat's rule: 3..32 letters or
/// digits), the EncodingAESKey (43 letters or digits), the handler URL and its timeout.
pub(super) fn validate(app: &str, raw: RawPush) -> Result<PushSettings, ConfigError> {
    let key = format!("apps.{app}.push");
    let path = raw.path.unwrap_or_else(|| format!("/wechat/push/{app}"));
    if !is_push_path(&path) {
        return Err(err(
            format!("{key}.path"),
            "an absolute path of 2..128 characters of [A-Za-z0-9/_.-], without `//` or dot segments",
        ));
    }
    let token = read_secret(&key, "token", raw.token, raw.token_file)?;
    if !(3..=32).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(err(format!("{key}.token"), "3..32 letters or digits (WeChat's rule for the Token)"));
    }
    let aes_key = match (raw.encoding_aes_key, raw.encoding_aes_key_file) {
        (None, None) => None,
        (inline, file) => Some(read_secret(&key, "encoding_aes_key", inline, file)?),
    };
    if let Some(aes) = &aes_key
        && crate::push::aes_key(aes).is_none()
    {
        return Err(err(
            format!("{key}.encoding_aes_key"),
            "43 letters or digits, as WeChat's console shows the EncodingAESKey",
        ));
    }
    let forward_to = raw.forward_to.map(|url| forward_url(&key, &url)).transpose()?;
    if raw.forward_timeout < Duration::from_millis(100) || raw.forward_timeout > MAX_FORWARD_TIMEOUT {
        return Err(err(format!("{key}.forward_timeout"), "between 100ms and 4.5s (WeChat waits 5 s)"));
    }
    Ok(PushSettings {
        app: app.to_owned(),
        path,
        token: PushToken::new(token),
        aes_key: aes_key.map(EncodingAesKey::new),
        forward_to,
        forward_timeout: raw.forward_timeout,
    })
}

/// The push paths are apart from the callback's (the configured URL's, and the relay's route)
/// and from each other: the router would refuse two routes on one path.
pub(super) fn check_paths(push: &[PushSettings], callback_path: &str) -> Result<(), ConfigError> {
    for (i, one) in push.iter().enumerate() {
        if one.path == callback_path || one.path == crate::relay::CALLBACK_PATH {
            return Err(err(format!("apps.{}.push.path", one.app), "must differ from the callback URL's path"));
        }
        if let Some(other) = push[..i].iter().find(|other| other.path == one.path) {
            return Err(err(
                format!("apps.{}.push.path", one.app),
                format!("already the push path of app `{}`", other.app),
            ));
        }
    }
    Ok(())
}

/// A path the router can take literally: `/`, then letters, digits, `/`, `_`, `.`, `-`; no
/// empty or dot segment.
fn is_push_path(path: &str) -> bool {
    (2..=128).contains(&path.len())
        && path.starts_with('/')
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'))
        && path[1..].split('/').all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// The handler's URL: absolute http(s), a host, no userinfo, query or fragment (wxauth appends
/// WeChat's query). Plain http is allowed in production too: the handler usually sits inside
/// the cluster, and a safe-mode body stays encrypted.
fn forward_url(key: &str, url: &str) -> Result<Url, ConfigError> {
    let parsed = Url::parse(url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    });
    parsed
        .ok_or_else(|| err(format!("{key}.forward_to"), "an absolute http(s) URL without userinfo, query or fragment"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// A dev-mode config with app `mp` and `push` appended (in `[clients.c]` until it opens a
    /// table of its own).
    fn settings(push: &str) -> Result<Settings, ConfigError> {
        Settings::from_toml(&format!(
            "mode = \"development\"\n[server]\ncallback_url = \"https://auth.example.com/wechat/callback\"\n\
             [store]\nkind = \"memory\"\n[apps.mp]\nkind = \"official_account\"\nappid = \"wx0123456789abcdef\"\n\
             secret = \"s\"\n[clients.c]\nkey_sha256 = \"{}1\"\napps = [\"mp\"]\n\
             return_urls = [\"https://p.example.com/\"]\n{push}",
            "0".repeat(63)
        ))
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    #[test]
    fn a_push_table_validates_with_defaults_and_shows_no_secret() {
        let push = format!(
            "[apps.mp.push]\ntoken = \"pushToken1\"\nencoding_aes_key = \"{KEY}\"\nforward_to = \"http://h.internal/wx\""
        );
        let valid = settings(&push).expect("valid");
        let [one] = valid.apps.push.as_slice() else { panic!("one push endpoint") };
        assert_eq!((one.app.as_str(), one.path.as_str()), ("mp", "/wechat/push/mp"));
        assert_eq!(one.forward_timeout, Duration::from_secs(4));
        assert_eq!(one.forward_to.as_ref().map(Url::as_str), Some("http://h.internal/wx"));
        let printed = format!("{valid:?}");
        assert!(!printed.contains("pushToken1") && !printed.contains(KEY), "{printed}");
        assert!(settings("[apps.mp.push]\ntoken = \"abc\"").expect("plaintext mode").apps.push[0].aes_key.is_none());
    }

    #[test]
    fn push_errors_name_the_key_at_fault() {
        let key_of = |push: &str| settings(&format!("[apps.mp.push]\n{push}")).map(|_| ()).expect_err(push).key;
        for (push, key) in [
            ("", "apps.mp.push.token"),
            ("token = \"ab\"", "apps.mp.push.token"),
            ("token = \"has-dash\"", "apps.mp.push.token"),
            ("token = \"abc\"\ntoken_file = \"/nonexistent\"", "apps.mp.push.token"),
            ("token = \"abc\"\nencoding_aes_key = \"short\"", "apps.mp.push.encoding_aes_key"),
            ("token = \"abc\"\npath = \"/wechat/callback\"", "apps.mp.push.path"),
            ("token = \"abc\"\npath = \"relative\"", "apps.mp.push.path"),
            ("token = \"abc\"\nforward_to = \"ftp://h/x\"", "apps.mp.push.forward_to"),
            ("token = \"abc\"\nforward_to = \"https://u:p@h/x\"", "apps.mp.push.forward_to"),
            ("token = \"abc\"\nforward_timeout = \"5s\"", "apps.mp.push.forward_timeout"),
            ("token = \"abc\"\nmode = \"safe\"", "apps.mp.push.mode"),
        ] {
            assert_eq!(key_of(push), key, "{push}");
        }
    }

    #[test]
    fn push_paths_are_plain_absolute_paths() {
        for good in ["/wechat/push/mp", "/p", "/a-b_c.d/e"] {
            assert!(is_push_path(good), "{good}");
        }
        for bad in ["", "/", "wechat", "/a//b", "/a/../b", "/a/./b", "/a/", "/a?b", "/a b", "/{app}", "/a%2f"] {
            assert!(!is_push_path(bad), "{bad}");
        }
    }
}
