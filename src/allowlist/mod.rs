//! Return-URL allowlist: where a WeChat authorization code may be sent.
//!
//! # The threat
//! After WeChat calls back, the relay 302-redirects the browser to the caller's `return_url`
//! with the authorization `code` appended. A code is worth an access token (and the user's
//! identity) to whoever holds it, so a `return_url` that leads anywhere but an internal product
//! is an open redirect that leaks codes. The allowlist is the only thing between a hostile
//! `return_url` and that leak, so it must judge the URL exactly as the browser will follow it.
//!
//! # The approach (docs/design.md §5)
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

mod pattern;
mod raw;
mod return_url;
#[cfg(test)]
mod tests;

use url::{Host, Url};

use pattern::Pattern;
use raw::parse_return_url;
pub use return_url::ReturnUrl;
pub(crate) use return_url::{form_pairs, redirect_from_stored};

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
        let patterns = patterns.iter().map(|p| Pattern::parse(p.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns })
    }

    /// Judge a candidate URL as a browser would parse it.
    ///
    /// On success the URL is returned parsed and normalized, its fragment removed; that value,
    /// not the candidate text, is what must be stored and redirected to.
    pub fn check(&self, candidate: &str) -> Result<ReturnUrl, Rejection> {
        let url = parse_return_url(candidate)?;
        self.judge(&url)?;
        Ok(ReturnUrl(url))
    }

    /// The patterns in normalized form (`https://*.example.com/`), for `wxauth check`.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns.iter().map(Pattern::to_string).collect()
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
        if same_scheme.any(|p| p.port_and_path_match(url)) { Ok(()) } else { Err(Rejection::NotAllowed) }
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
    /// A path that starts with `//` or `/\` once normalized (`/..//evil.example`): a product
    /// that echoes it into a relative redirect (`Location: //evil.example`) sends the browser
    /// to another host.
    #[error("URL path must not start with two slashes")]
    NetworkPath,
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
            Self::NetworkPath => "NETWORK_PATH",
            Self::NotAllowed => "NOT_IN_ALLOWLIST",
        }
    }
}
