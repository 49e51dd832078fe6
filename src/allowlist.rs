//! Return-URL allowlist: where a WeChat authorization code may be sent.
//!
//! # The threat
//! After WeChat calls back, the relay 302-redirects the browser to the caller's `return_url`
//! with the authorization `code` appended. A code is worth an access token (and the user's
//! identity) to whoever holds it, so a `return_url` that leads anywhere but an internal product
//! is an open redirect that leaks codes. The allowlist is the only thing between a hostile
//! `return_url` and that leak, so it must judge the URL exactly as the browser will follow it.
//!
//! # The approach (DESIGN.md §5)
//! 1. **Reject what a browser would silently repair.** Before parsing, the raw text is refused
//!    if it holds anything the WHATWG parser would quietly drop or rewrite into something else:
//!    backslashes, control characters, whitespace, invisible characters, percent-encoding or
//!    `@` in the authority, a missing `//` after the scheme, a host with a leading or trailing
//!    dot. Legitimate callers never send those; attackers do.
//! 2. **Parse as a browser does** with [`url::Url::parse`] (WHATWG: IDN to punycode, full-width
//!    letters and `。` folded, IPv4 in any notation normalized, dot segments resolved).
//! 3. **Judge the parsed parts, never string prefixes**: scheme, [`url::Host`], port (default
//!    port when none is given) and normalized path are compared with the patterns parsed once
//!    at start-up.
//!
//! # Patterns
//! - `https://passport.example.com/login/notify`: exactly this scheme, host and port; the path
//!   must be `/login/notify` or continue it at a segment boundary (`/login/notify/x`), never
//!   `/login/notifyevil`. A pattern path ending in `/` is a plain prefix.
//! - `https://*.example.com/`: any host of one or more labels under `example.com`, never the
//!   apex `example.com` itself (list it separately if wanted).
//! - `http://127.0.0.1:8082/`, `http://localhost:8082/`: IP literals and `localhost` match only a
//!   pattern naming exactly that host (and port).
//!
//! Patterns must be written in canonical form (lowercase ASCII host, punycode for IDN,
//! normalized path), so what an operator reads in the config is exactly what is matched.

use url::{Host, Url};

/// Longest return URL accepted, in bytes, both as given and once normalized.
const MAX_URL_LEN: usize = 2048;

/// One client's list of allowed return-URL patterns, parsed once at start-up.
///
/// An empty allowlist allows nothing.
#[derive(Debug, Clone)]
pub struct Allowlist {
    patterns: Vec<Pattern>,
}

impl Allowlist {
    /// Parse config patterns; an error names the offending pattern and why.
    ///
    /// Each pattern is an absolute `http`/`https` URL in canonical form without userinfo, query
    /// or fragment; `*` may appear only as the whole first label of the host, followed by at
    /// least two labels (`https://*.example.com/`, not `https://*.com/`).
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns })
    }

    /// Judge a candidate URL as a browser would parse it.
    ///
    /// On success the URL is returned parsed and normalized, its fragment removed; that value,
    /// not the candidate text, is what must be stored and redirected to.
    pub fn check(&self, candidate: &str) -> Result<ReturnUrl, Rejection> {
        let mut url = parse_http_url(candidate)?;
        url.set_fragment(None);
        check_normalized_length(&url)?;
        self.judge(&url)?;
        Ok(ReturnUrl(url))
    }

    /// Whether the allowlist has no pattern (and so allows nothing).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Compare a well-formed URL with the patterns. The order of the questions only chooses
    /// the most useful rejection; every path to `Ok` needs one pattern matching all parts.
    fn judge(&self, url: &Url) -> Result<(), Rejection> {
        let host = url.host().ok_or(Rejection::BadHost)?;
        let mut same_host = self.patterns.iter().filter(|p| p.host.matches(&host)).peekable();
        if same_host.peek().is_none() {
            return Err(match host {
                Host::Ipv4(_) | Host::Ipv6(_) => Rejection::IpLiteral,
                Host::Domain(_) => Rejection::NotAllowed,
            });
        }
        let mut same_scheme = same_host.filter(|p| p.scheme.as_str() == url.scheme()).peekable();
        if same_scheme.peek().is_none() {
            return Err(Rejection::SchemeNotAllowed);
        }
        if same_scheme.any(|p| p.port_and_path_match(url)) {
            Ok(())
        } else {
            Err(Rejection::NotAllowed)
        }
    }
}

/// A return URL that passed the allowlist: the parsed, normalized URL (fragment removed).
///
/// It can only be made by [`Allowlist::check`] or, for a value read back from storage, by
/// [`ReturnUrl::from_stored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnUrl(Url);

impl ReturnUrl {
    /// The normalized URL text, the form to store.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL the browser is sent to: the stored URL, its own query kept, the fragment dropped,
    /// with the given parameters appended (correctly percent-encoded, with url's
    /// `query_pairs_mut`).
    ///
    /// The result is pure printable ASCII: every byte of a parameter that could break out of
    /// the query or a `Location` header (`&`, `=`, `#`, CR, LF, non-ASCII) is percent-encoded.
    pub fn with_params(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.0.clone();
        url.set_fragment(None);
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params.iter().copied());
        }
        url
    }

    /// Re-validate a URL read back from storage without re-checking an allowlist (it was
    /// checked when stored); fails if it is not an absolute http(s) URL.
    ///
    /// The same well-formedness rules as [`Allowlist::check`] apply, so a tampered record
    /// still cannot produce a `javascript:` or userinfo redirect.
    pub fn from_stored(s: &str) -> Result<Self, Rejection> {
        let mut url = parse_http_url(s)?;
        url.set_fragment(None);
        Ok(Self(url))
    }
}

/// A configured return-URL pattern that cannot be used; stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// The URL parser refused the pattern.
    #[error("return-URL pattern {pattern:?} is not a valid URL: {source}")]
    Unparseable {
        /// The pattern as configured.
        pattern: String,
        /// Why the parser refused it.
        #[source]
        source: url::ParseError,
    },
    /// The pattern breaks a rule that every URL must follow (the same rules as candidates).
    #[error("return-URL pattern {pattern:?} is malformed: {reason}")]
    Malformed {
        /// The pattern as configured.
        pattern: String,
        /// The rule it breaks.
        #[source]
        reason: Rejection,
    },
    /// Patterns match origin and path only; a query or fragment would be silently ignored.
    #[error("return-URL pattern {pattern:?} must not have a query or a fragment")]
    QueryOrFragment {
        /// The pattern as configured.
        pattern: String,
    },
    /// `*` anywhere but as the whole first label of the host.
    #[error(
        "return-URL pattern {pattern:?} has a misplaced `*`: it may only be the whole first \
         label of the host, as in https://*.example.com/"
    )]
    MisplacedWildcard {
        /// The pattern as configured.
        pattern: String,
    },
    /// `*.` followed by fewer than two labels, or by an IP address.
    #[error(
        "return-URL pattern {pattern:?} is too broad: `*.` must be followed by a domain name \
         of at least two labels"
    )]
    WildcardTooBroad {
        /// The pattern as configured.
        pattern: String,
    },
    /// The host or path is not written as the parser normalizes it.
    #[error("return-URL pattern {pattern:?} is not in canonical form; write it as {canonical:?}")]
    NotCanonical {
        /// The pattern as configured.
        pattern: String,
        /// The same pattern in canonical form.
        canonical: String,
    },
}

/// Why a return URL was refused. Messages never echo the URL: it may be hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The URL parser refused it.
    #[error("URL is not valid")]
    Unparseable,
    /// Relative, protocol-relative (`//host`), or no `//` after the scheme.
    #[error("URL must be absolute, as scheme://host/path")]
    NotAbsolute,
    /// Not `http`/`https`, or `http` where only an `https` pattern matches.
    #[error("URL scheme is not allowed")]
    SchemeNotAllowed,
    /// `user@`, `user:pass@` or even an empty `@` before the host.
    #[error("URL must not contain userinfo (@)")]
    Userinfo,
    /// A `\`, which browsers turn into `/`.
    #[error("URL must not contain a backslash")]
    Backslash,
    /// A control, whitespace or invisible character, which browsers drop or fold.
    #[error("URL must not contain control, whitespace or invisible characters")]
    ControlOrWhitespace,
    /// Percent-encoding in the host (`%2e` is decoded into a dot by browsers).
    #[error("URL host must not be percent-encoded")]
    EncodedHost,
    /// An IP address host that no pattern lists, or written in a non-canonical notation.
    #[error("URL host is an IP address that is not allowed")]
    IpLiteral,
    /// Empty host, leading or trailing dot, empty label, or a character outside
    /// letters, digits, `-` and `_`.
    #[error("URL host is malformed")]
    BadHost,
    /// Longer than the limit, as given or once normalized.
    #[error("URL is too long")]
    TooLong,
    /// An encoded `/` or `\` in the path, or a dot segment disguised with `;` parameters,
    /// which servers may resolve to escape the allowed path.
    #[error("URL path has an encoded separator or a disguised dot segment")]
    PathTraversal,
    /// Well-formed, but no pattern matched its host, port and path.
    #[error("URL matches no allowed return-URL pattern")]
    NotAllowed,
}

impl Rejection {
    /// Stable SCREAMING_SNAKE code for error details, e.g. `"USERINFO_NOT_ALLOWED"`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unparseable => "URL_UNPARSEABLE",
            Self::NotAbsolute => "URL_NOT_ABSOLUTE",
            Self::SchemeNotAllowed => "SCHEME_NOT_ALLOWED",
            Self::Userinfo => "USERINFO_NOT_ALLOWED",
            Self::Backslash => "BACKSLASH_NOT_ALLOWED",
            Self::ControlOrWhitespace => "CONTROL_OR_WHITESPACE",
            Self::EncodedHost => "ENCODED_HOST",
            Self::IpLiteral => "IP_LITERAL_NOT_ALLOWED",
            Self::BadHost => "BAD_HOST",
            Self::TooLong => "URL_TOO_LONG",
            Self::PathTraversal => "PATH_TRAVERSAL",
            Self::NotAllowed => "NOT_IN_ALLOWLIST",
        }
    }
}

/// One parsed pattern.
#[derive(Debug, Clone)]
struct Pattern {
    scheme: Scheme,
    host: PatternHost,
    /// The explicit port, or the scheme's default.
    port: u16,
    /// Normalized path, always starting with `/`.
    path: String,
}

/// The two schemes a return URL may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The scheme as [`Url::scheme`] spells it (lowercase).
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The scheme of an already-validated URL.
    fn of(url: &Url) -> Option<Self> {
        match url.scheme() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }
}

/// The host part of a pattern.
#[derive(Debug, Clone)]
enum PatternHost {
    /// Exactly this host: a domain (including `localhost`) or an IP address.
    Exact(Host<String>),
    /// `*.parent`: any domain of one or more labels under `parent`, never `parent` itself.
    Subdomains {
        /// `.parent`, with the leading dot, so a suffix match falls on a label boundary.
        dot_parent: String,
    },
}

impl PatternHost {
    /// Whether a candidate's parsed host is covered. IP hosts only ever match `Exact`.
    fn matches(&self, host: &Host<&str>) -> bool {
        match self {
            Self::Exact(exact) => *exact == host.to_owned(),
            Self::Subdomains { dot_parent } => match host {
                Host::Domain(domain) => {
                    domain.len() > dot_parent.len() && domain.ends_with(dot_parent.as_str())
                }
                Host::Ipv4(_) | Host::Ipv6(_) => false,
            },
        }
    }
}

impl Pattern {
    /// Parse and validate one configured pattern.
    fn parse(pattern: &str) -> Result<Self, PatternError> {
        let malformed = |reason| PatternError::Malformed {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.contains(['?', '#']) {
            return Err(PatternError::QueryOrFragment {
                pattern: pattern.to_owned(),
            });
        }
        let raw = RawAuthority::split(pattern).map_err(malformed)?;
        let (is_wildcard, raw_host) = match raw.host.strip_prefix("*.") {
            Some(parent) => (true, parent),
            None => (false, raw.host),
        };
        if raw_host.contains('*') {
            return Err(PatternError::MisplacedWildcard {
                pattern: pattern.to_owned(),
            });
        }
        // Parse the pattern with the `*.` label removed: the rest is an ordinary URL.
        let text = if is_wildcard {
            format!(
                "{}{}",
                &pattern[..raw.host_start],
                &pattern[raw.host_start + 2..]
            )
        } else {
            pattern.to_owned()
        };
        let url = Url::parse(&text).map_err(|source| PatternError::Unparseable {
            pattern: pattern.to_owned(),
            source,
        })?;
        check_parsed(&url, raw_host).map_err(malformed)?;
        check_pattern_is_canonical(pattern, &text, &url, is_wildcard)?;
        let (scheme, host, port) = match (Scheme::of(&url), url.host(), url.port_or_known_default())
        {
            (Some(scheme), Some(host), Some(port)) => (scheme, host, port),
            // check_parsed guarantees all three for http(s); keep the refusal explicit anyway.
            _ => return Err(malformed(Rejection::NotAbsolute)),
        };
        let host = if is_wildcard {
            wildcard_host(pattern, host)?
        } else {
            PatternHost::Exact(host.to_owned())
        };
        Ok(Self {
            scheme,
            host,
            port,
            path: url.path().to_owned(),
        })
    }

    /// Port equal (defaults filled in) and path inside the pattern's path.
    fn port_and_path_match(&self, url: &Url) -> bool {
        url.port_or_known_default() == Some(self.port) && self.path_matches(url.path())
    }

    /// `/login/` is a plain prefix; `/login/notify` allows itself and `/login/notify/...`,
    /// never `/login/notifyevil`.
    fn path_matches(&self, path: &str) -> bool {
        if self.path.ends_with('/') {
            return path.starts_with(self.path.as_str());
        }
        match path.strip_prefix(self.path.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

/// Build the `*.parent` host of a wildcard pattern: the parent must be a domain name of at
/// least two labels (`*.com` and `*.localhost` would cover the world or the machine).
fn wildcard_host(pattern: &str, parent: Host<&str>) -> Result<PatternHost, PatternError> {
    match parent {
        Host::Domain(domain) if domain.split('.').count() >= 2 => Ok(PatternHost::Subdomains {
            dot_parent: format!(".{domain}"),
        }),
        _ => Err(PatternError::WildcardTooBroad {
            pattern: pattern.to_owned(),
        }),
    }
}

/// A pattern must read exactly as it will be matched: host, port and path as the parser
/// normalizes them (lowercase, punycode, canonical IP, no default port, no dot segments);
/// only an empty path may stand for `/`. Scheme and host may differ in case.
fn check_pattern_is_canonical(
    pattern: &str,
    raw: &RawAuthority<'_>,
    url: &Url,
    is_wildcard: bool,
) -> Result<(), PatternError> {
    let host = raw.host.strip_prefix("*.").unwrap_or(raw.host);
    let host_ok = url
        .host_str()
        .is_some_and(|parsed| host.eq_ignore_ascii_case(parsed));
    let port_ok = raw.port.map(str::parse::<u16>).and_then(Result::ok) == url.port()
        && raw.port.is_none_or(|p| Some(p) == url.port().map(|n| n.to_string()).as_deref());
    let path_ok = raw.rest == url.path() || (raw.rest.is_empty() && url.path() == "/");
    if host_ok && port_ok && path_ok {
        return Ok(());
    }
    let canonical = if is_wildcard {
        url.as_str().replacen("://", "://*.", 1)
    } else {
        url.as_str().to_owned()
    };
    Err(PatternError::NotCanonical {
        pattern: pattern.to_owned(),
        canonical,
    })
}

/// The authority of a raw URL text, located without any repairing: where the host starts and
/// its text as given.
struct RawAuthority<'a> {
    /// The host as written: `[v6]` with brackets, otherwise up to the port's `:`.
    host: &'a str,
    /// Byte offset of the host in the input.
    host_start: usize,
}

impl<'a> RawAuthority<'a> {
    /// Every check made on the raw text, before the parser gets a chance to repair it.
    fn split(input: &'a str) -> Result<Self, Rejection> {
        check_raw_length(input)?;
        check_raw_characters(input)?;
        let after_colon = check_raw_scheme(input)?;
        let rest = input[after_colon..]
            .strip_prefix("//")
            .ok_or(Rejection::NotAbsolute)?;
        let host_start = after_colon + 2;
        let authority = rest
            .find(['/', '?', '#'])
            .map_or(rest, |end| &rest[..end]);
        check_raw_authority(authority)?;
        let host = host_of_authority(authority);
        check_raw_host(host)?;
        Ok(Self { host, host_start })
    }
}

/// Parse a URL as a browser would, after refusing anything a browser would repair, and check
/// that the result is a clean absolute http(s) URL. No allowlist is consulted.
fn parse_http_url(input: &str) -> Result<Url, Rejection> {
    let raw = RawAuthority::split(input)?;
    let url = Url::parse(input).map_err(|_| Rejection::Unparseable)?;
    check_parsed(&url, raw.host)?;
    Ok(url)
}

/// Bound the work done on hostile input and the size of the `Location` header.
fn check_raw_length(input: &str) -> Result<(), Rejection> {
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
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
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

/// The host of an authority without userinfo: `[v6]` with its brackets, else up to `:port`.
fn host_of_authority(authority: &str) -> &str {
    let end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    &authority[..end]
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
fn check_parsed(url: &Url, raw_host: &str) -> Result<(), Rejection> {
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
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
            };
            if domain.split('.').all(label_ok) {
                Ok(())
            } else {
                Err(Rejection::BadHost)
            }
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
/// decode `%2F` or treat `..;x` as `..` (Tomcat and friends).
fn check_path(path: &str) -> Result<(), Rejection> {
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
