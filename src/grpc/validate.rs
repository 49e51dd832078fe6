//! A request's fields checked before any work: every invalid field is reported at once
//! ([`Violations`]), with the limits a caller can read in its answer.

use crate::config;
use crate::error::{ApiError, FieldViolation};
use crate::proto;
use crate::store::FLOW_ID_LEN;
use crate::wechat::{Lang, Scope, WxLoginOptions};

/// Longest `return_url` accepted.
pub(crate) const MAX_RETURN_URL: usize = 2048;
/// Longest caller `state` (kept server-side, never sent to WeChat).
pub(crate) const MAX_STATE: usize = 512;
/// Longest browser User-Agent accepted.
pub(crate) const MAX_USER_AGENT: usize = 1024;
/// Longest code accepted (WeChat's are 32 characters).
pub(crate) const MAX_CODE: usize = 256;
/// Longest https `wx_login_options.href` (a stylesheet URL on WeChat's QR link) accepted.
pub(crate) const MAX_HREF: usize = 1024;
/// Longest `data:text/css;base64,...` `wx_login_options.href` accepted: the stylesheet rides on
/// the QR link, so it stays small (public guides' restylings are a few hundred bytes).
pub(crate) const MAX_DATA_HREF: usize = 4096;
/// The one `data:` form `href` may take (the most common restyling in public guides).
const CSS_DATA_PREFIX: &str = "data:text/css;base64,";

/// Collects every invalid field of a request before answering, so a caller fixes all at once.
#[derive(Default)]
pub(super) struct Violations(pub(super) Vec<FieldViolation>);

impl Violations {
    pub(super) fn add(&mut self, field: &'static str, description: impl Into<String>) {
        self.0.push(FieldViolation { field, description: description.into() });
    }

    pub(super) fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(self.0)) }
    }

    pub(super) fn app(&mut self, app: &str) {
        // Empty means "the device's default app".
        if !app.is_empty() && !config::is_name(app) {
            self.add("app", "at most 64 of [a-z0-9_-]");
        }
    }

    /// An app that must be named (the sign-ins without a device default).
    pub(super) fn named_app(&mut self, app: &str) {
        if !config::is_name(app) {
            self.add("app", "1..64 of [a-z0-9_-]");
        }
    }

    /// A code (`code`, `js_code`): 1..MAX_CODE printable ASCII characters; never echoed.
    pub(super) fn code(&mut self, field: &'static str, code: &str) {
        if code.is_empty() || code.len() > MAX_CODE || !code.bytes().all(|b| b.is_ascii_graphic()) {
            self.add(field, format!("1..{MAX_CODE} printable ASCII characters"));
        }
    }

    pub(super) fn device(&mut self, device: i32, app: &str) -> Option<config::Device> {
        match proto::Device::try_from(device) {
            Ok(proto::Device::Unspecified) => {
                if app.is_empty() {
                    self.add("app", "required when device is DEVICE_UNSPECIFIED");
                }
                None
            }
            Ok(proto::Device::Mobile) => Some(config::Device::Mobile),
            Ok(proto::Device::Pc) => Some(config::Device::Pc),
            Err(_) => {
                self.add("device", "unknown Device value");
                None
            }
        }
    }

    pub(super) fn scope(&mut self, scope: i32) -> Option<Scope> {
        match proto::Scope::try_from(scope) {
            Ok(proto::Scope::Unspecified) => None,
            Ok(proto::Scope::SnsapiBase) => Some(Scope::Base),
            Ok(proto::Scope::SnsapiUserinfo) => Some(Scope::UserInfo),
            Ok(proto::Scope::SnsapiLogin) => Some(Scope::Login),
            Err(_) => {
                self.add("scope", "unknown Scope value");
                None
            }
        }
    }

    /// `style`: one of WeChat's; `href`: an https stylesheet URL or a base64 CSS `data:` URL
    /// that wxLogin.js can put on its QR link verbatim and that a product can echo into its
    /// page ([`is_stylesheet_href`]); `stylelite` passes through.
    pub(super) fn wx_login_options(&mut self, options: proto::WxLoginOptions) -> WxLoginOptions {
        if !matches!(options.style.as_str(), "" | "black" | "white") {
            self.add("wx_login_options.style", "\"black\", \"white\" or empty");
        }
        if !options.href.is_empty() && !is_stylesheet_href(&options.href) {
            crate::telemetry::count_malformed_request("wx_login_href");
            self.add(
                "wx_login_options.href",
                format!(
                    "an absolute https URL of at most {MAX_HREF} bytes written as a URL parser writes it \
                     (lowercase host, a path), without userinfo, quotes, '<', '>', '\\', '&', '#' or whitespace; \
                     or {CSS_DATA_PREFIX}<standard padded base64 of UTF-8 CSS without '<'> of at most \
                     {MAX_DATA_HREF} bytes"
                ),
            );
        }
        WxLoginOptions {
            self_redirect: options.self_redirect,
            style: options.style,
            href: options.href,
            stylelite: options.stylelite,
        }
    }

    pub(super) fn lang(&mut self, lang: i32) -> Lang {
        match proto::Lang::try_from(lang) {
            Ok(proto::Lang::Unspecified | proto::Lang::ZhCn) => Lang::ZhCn,
            Ok(proto::Lang::ZhTw) => Lang::ZhTw,
            Ok(proto::Lang::En) => Lang::En,
            Err(_) => {
                self.add("lang", "unknown Lang value");
                Lang::ZhCn
            }
        }
    }
}

/// The device whose default app suits a browser: only WeChat's in-app browser opens
/// official-account pages (docs/design.md §10).
pub(super) fn device_of_browser(user_agent: &str) -> config::Device {
    if crate::wechat::is_in_app_browser(user_agent) { config::Device::Mobile } else { config::Device::Pc }
}

pub(super) fn is_flow_id(flow_id: &str) -> bool {
    flow_id.len() == FLOW_ID_LEN && flow_id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `href` is fit to be put verbatim on wxLogin.js's QR link and into a product's page:
/// printable ASCII without the characters that would add or cut a parameter of that link
/// (`&`, `#`) or leave an HTML attribute or a script (quotes, `<`, `>`, `` ` ``), and an absolute
/// https URL with a host and no userinfo, written exactly as the URL parser writes it. The last
/// rule refuses every form a browser repairs into another URL (`https:cdn.example/x.css`,
/// `https://cdn.example\@evil/x.css`, an uppercase host, dot segments): what is checked is what
/// the browser loads.
///
/// Or a CSS `data:` URL, as products restyle the QR code in practice (issue 20):
/// `data:text/css;base64,` then standard base64 with its padding, of UTF-8 text without
/// control characters (but whitespace) or `<` (no markup can ride in it), at most
/// [`MAX_DATA_HREF`] bytes in all.
pub(super) fn is_stylesheet_href(href: &str) -> bool {
    if let Some(payload) = href.strip_prefix(CSS_DATA_PREFIX) {
        return href.len() <= MAX_DATA_HREF && is_plain_css_base64(payload);
    }
    let plain = href.len() <= MAX_HREF
        && href
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`' | b'\\'));
    plain
        && url::Url::parse(href).is_ok_and(|url| {
            url.scheme() == "https"
                && url.host_str().is_some()
                && url.username().is_empty()
                && url.password().is_none()
                && url.as_str() == href
        })
}

/// Standard padded base64 of UTF-8 CSS without `<` or control characters but whitespace.
fn is_plain_css_base64(payload: &str) -> bool {
    use base64::Engine as _;
    let Ok(css) = base64::engine::general_purpose::STANDARD.decode(payload) else { return false };
    let Ok(css) = String::from_utf8(css) else { return false };
    !css.is_empty() && css.chars().all(|c| c != '<' && (!c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\u{c}')))
}

pub(super) fn is_openid(openid: &str) -> bool {
    (1..=64).contains(&openid.len()) && openid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
