//! The upstream client: WeChat's authorize URLs and its `sns` JSON endpoints, exactly as
//! WeChat documents them (docs/design.md §10), with errcode decoding. It knows nothing of gRPC or
//! Redis; the service reaches WeChat (or the simulator) only through the configured base URLs.
//!
//! Layout:
//! - `app`: the app kinds, scopes and languages, and a configured [`App`].
//! - `authorize`: the authorize URLs and `wxLogin.js`'s parameters (no call to WeChat).
//! - `client`: [`WechatClient`], the `sns` calls (retries, metrics) and where they go.
//! - `app_api`: the app-level `cgi-bin` calls: the app's own access token and jsapi_ticket.
//! - `reply`: the `sns` replies and their decoding: an errcode reply is a [`WechatError`].
//! - `error`: [`WechatError`], what a failed call was, and whether to try again.
//! - `errcodes`: every errcode wxauth maps, with WeChat's words for it (its tables).
//! - `jssdk`: the JS-SDK's `wx.config` signature.
//! - `open_data`: a mini program's `encryptedData`, decrypted with the user's session key.

mod app;
mod app_api;
mod authorize;
mod client;
pub mod errcodes;
mod error;
mod jssdk;
mod open_data;
mod reply;
#[cfg(test)]
mod tests;

use url::Url;

pub(crate) use self::app::Scope;
pub use self::app::{App, AppKind, Lang};
pub use self::app_api::{IssuedCredential, PhoneInfo, PhoneNumber, Watermark};
pub(crate) use self::authorize::{AuthorizeParams, WxLoginOptions, WxLoginParams, authorize_url};
pub use self::client::{Endpoint, WechatClient, WechatSettings};
pub use self::error::WechatError;
pub use self::jssdk::jssdk_signature;
pub use self::open_data::{OpenDataError, decrypt_open_data};
pub(crate) use self::reply::decode;
pub use self::reply::{MiniSession, Profile, TokenGrant};

/// Whether a browser is WeChat's in-app browser (`MicroMessenger` in its User-Agent): the only
/// one that opens an official account's authorize page (elsewhere WeChat shows
/// "请在微信客户端打开链接"); desktop browsers sign in with a website app's QR code. The one
/// place this rule lives: the service, the demo page and the simulator all ask it.
///
/// WeCom's (企业微信) browser says `MicroMessenger` too, with `wxwork/<version>`, yet an
/// official account's link shows "请在微信客户端打开链接" there (a WeCom staff answer in WeChat's
/// developer community; docs/wechat.md): it is not WeChat's browser, and gets the website app's
/// QR code like any other.
pub(crate) fn is_in_app_browser(user_agent: &str) -> bool {
    user_agent.contains("MicroMessenger") && !is_wecom_browser(user_agent)
}

/// WeCom's in-app browser: `wxwork` in its User-Agent (any case: `wxwork/4.1.x`, `wxWork`).
fn is_wecom_browser(user_agent: &str) -> bool {
    user_agent.as_bytes().windows(6).any(|w| w.eq_ignore_ascii_case(b"wxwork"))
}

/// The base URL as a prefix ending in `/`.
fn base(url: &Url) -> String {
    let s = url.as_str();
    if s.ends_with('/') { s.to_owned() } else { format!("{s}/") }
}
