//! A candidate return URL judged as text before the WHATWG parser can repair it, then parsed
//! as a browser does and checked again (docs/design.md §5, steps 1 and 2).

use url::{Host, Url};

use super::pattern::Scheme;
use super::{MAX_URL_LEN, Rejection};

/// A raw URL text split at its authority without any repairing: the parts as written.
pub(super) struct RawAuthority<'a> {
    /// The host as written: `[v6]` with brackets, otherwise up to the port's `:`.
    pub(super) host: &'a str,
    /// Byte offset of the host in the input.
    pub(super) host_start: usize,
    /// The port text after `:`, when there is a `:`.
    pub(super) port: Option<&'a str>,
    /// Everything after the authority (path, query, fragment).
    pub(super) rest: &'a str,
}

impl<'a> RawAuthority<'a> {
    /// Every check made on the raw text, before the parser gets a chance to repair it.
    pub(super) fn split(input: &'a str) -> Result<Self, Rejection> {
        check_raw_length(input)?;
        check_raw_characters(input)?;
        let after_colon = check_raw_scheme(input)?;
        let after_slashes = input[after_colon..].strip_prefix("//").ok_or(Rejection::NotAbsolute)?;
        let host_start = after_colon + 2;
        let authority_len = after_slashes.find(['/', '?', '#']).unwrap_or(after_slashes.len());
        let (authority, rest) = after_slashes.split_at(authority_len);
        check_raw_authority(authority)?;
        let (host, port) = split_host_port(authority);
        check_raw_host(host)?;
        Ok(Self { host, host_start, port, rest })
    }
}

/// Parse a URL as a browser would, after refusing anything a browser would repair; check
/// that the result is a clean absolute http(s) URL; drop the fragment. No allowlist is
/// consulted: this is what every stored or redirected URL must be.
pub(super) fn parse_return_url(input: &str) -> Result<Url, Rejection> {
    let raw = RawAuthority::split(input)?;
    let mut url = Url::parse(input).map_err(|_| Rejection::Unparseable)?;
    check_parsed(&url, raw.host)?;
    url.set_fragment(None);
    check_normalized_length(&url)?;
    Ok(url)
}

/// Bound the work done on hostile input and the size of the `Location` header.
pub(super) fn check_raw_length(input: &str) -> Result<(), Rejection> {
    if input.len() > MAX_URL_LEN {
        return Err(Rejection::TooLong);
    }
    Ok(())
}

/// Normalization can grow a URL (percent-encoding, punycode); bound the result too.
fn check_normalized_length(url: &Url) -> Result<(), Rejection> {
    check_raw_length(url.as_str())
}

/// Backslashes become `/`; controls, tabs, newlines and whitespace vanish or are trimmed;
/// invisible characters are dropped by IDN mapping. All are refused, anywhere in the URL.
fn check_raw_characters(input: &str) -> Result<(), Rejection> {
    for c in input.chars() {
        if c == '\\' || c == '\u{FF3C}' || c == '\u{FE68}' {
            return Err(Rejection::Backslash);
        }
        if c.is_control() || c.is_whitespace() || is_invisible(c) {
            return Err(Rejection::ControlOrWhitespace);
        }
    }
    Ok(())
}

/// Default-ignorable and formatting characters that IDN mapping deletes or that hide text
/// (soft hyphen, zero-width characters, bidi controls, variation selectors, BOM, tags).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// The input must start with a scheme and `:`; only `http` and `https` (any case) pass.
/// Returns the offset just after the `:`.
fn check_raw_scheme(input: &str) -> Result<usize, Rejection> {
    let colon = input.find(':').ok_or(Rejection::NotAbsolute)?;
    let scheme = &input[..colon];
    let is_scheme_syntax = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme_syntax {
        return Err(Rejection::NotAbsolute);
    }
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        Ok(colon + 1)
    } else {
        Err(Rejection::SchemeNotAllowed)
    }
}

/// No userinfo (not even an empty `@`) and no percent-encoding in the authority, counting
/// the full-width forms that IDN mapping folds into `@` and `%`.
fn check_raw_authority(authority: &str) -> Result<(), Rejection> {
    if authority.contains(['@', '\u{FF20}', '\u{FE6B}']) {
        return Err(Rejection::Userinfo);
    }
    if authority.contains(['%', '\u{FF05}', '\u{FE6A}']) {
        return Err(Rejection::EncodedHost);
    }
    Ok(())
}

/// Split an authority without userinfo into the host (`[v6]` with its brackets) and the
/// text after the port's `:`, if any.
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    let host_end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, after) = authority.split_at(host_end);
    (host, after.strip_prefix(':'))
}

/// Non-empty, and no leading or trailing dot (in any of the forms IDN folds into `.`): the
/// parser keeps some of those and silently drops others (`127.0.0.1.`).
fn check_raw_host(host: &str) -> Result<(), Rejection> {
    let is_dot = |c: char| matches!(c, '.' | '\u{3002}' | '\u{FF0E}' | '\u{FF61}');
    if host.is_empty() || host.starts_with(is_dot) || host.ends_with(is_dot) {
        return Err(Rejection::BadHost);
    }
    Ok(())
}

/// Checks on the parsed URL, shared by patterns, candidates and stored values.
pub(super) fn check_parsed(url: &Url, raw_host: &str) -> Result<(), Rejection> {
    if Scheme::of(url).is_none() {
        return Err(Rejection::SchemeNotAllowed);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Rejection::Userinfo);
    }
    let host = url.host().ok_or(Rejection::BadHost)?;
    check_parsed_host(&host, raw_host)?;
    check_path(url.path())
}

/// A domain must be plain labels of letters, digits, `-` and `_` (punycode for IDN); an IP
/// address must have been written in its canonical notation (no `0x7f.1`, `2130706433`).
fn check_parsed_host(host: &Host<&str>, raw_host: &str) -> Result<(), Rejection> {
    match host {
        Host::Domain(domain) => {
            let label_ok = |label: &str| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
            };
            if domain.split('.').all(label_ok) { Ok(()) } else { Err(Rejection::BadHost) }
        }
        Host::Ipv4(_) | Host::Ipv6(_) => {
            if raw_host.eq_ignore_ascii_case(&host.to_string()) {
                Ok(())
            } else {
                Err(Rejection::IpLiteral)
            }
        }
    }
}

/// The normalized path may not hide a way out of the pattern's prefix from servers that
/// decode `%2F` or treat `..;x` as `..` (Tomcat and friends), nor read as a network-path
/// reference ([`is_network_path`]) to a product that copies it into a relative redirect.
fn check_path(path: &str) -> Result<(), Rejection> {
    if is_network_path(path) {
        return Err(Rejection::NetworkPath);
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(Rejection::PathTraversal);
    }
    let is_disguised_dot_segment = |segment: &str| {
        let before_params = segment.split(';').next().unwrap_or(segment);
        let dots = before_params.replace("%2e", ".");
        dots == "." || dots == ".."
    };
    if lower.split('/').any(is_disguised_dot_segment) {
        return Err(Rejection::PathTraversal);
    }
    Ok(())
}

/// Whether a path, copied alone into a `Location` or a link, reads as another host: `//host`,
/// and `/\host` (browsers read `\` as `/` in http(s) URLs).
pub(super) fn is_network_path(path: &str) -> bool {
    path.starts_with("//") || path.starts_with("/\\")
}
