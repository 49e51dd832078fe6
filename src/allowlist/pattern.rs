//! The configured patterns: parsed once at start-up, required to be canonical, and matched
//! part by part (scheme, host or wildcard, port, path at a segment boundary).

use url::{Host, Url};

use super::raw::{RawAuthority, check_parsed};
use super::{PatternError, Rejection};

/// One parsed pattern.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    pub(super) scheme: Scheme,
    pub(super) host: PatternHost,
    /// The explicit port, or the scheme's default.
    port: u16,
    /// Normalized path, always starting with `/`.
    path: String,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let default_port = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            PatternHost::Exact(host) => write!(f, "{host}")?,
            PatternHost::Subdomains { dot_parent } => write!(f, "*{dot_parent}")?,
        }
        if self.port != default_port {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
    }
}

/// The two schemes a return URL may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The scheme as [`Url::scheme`] spells it (lowercase).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The scheme of an already-validated URL.
    pub(super) fn of(url: &Url) -> Option<Self> {
        match url.scheme() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            _ => None,
        }
    }
}

/// The host part of a pattern.
#[derive(Debug, Clone)]
pub(super) enum PatternHost {
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
    pub(super) fn matches(&self, host: &Host<&str>) -> bool {
        match self {
            Self::Exact(exact) => *exact == host.to_owned(),
            Self::Subdomains { dot_parent } => match host {
                Host::Domain(domain) => domain.len() > dot_parent.len() && domain.ends_with(dot_parent.as_str()),
                Host::Ipv4(_) | Host::Ipv6(_) => false,
            },
        }
    }
}

impl Pattern {
    /// Parse and validate one configured pattern.
    pub(super) fn parse(pattern: &str) -> Result<Self, PatternError> {
        let malformed = |reason| PatternError::Malformed { pattern: pattern.to_owned(), reason };
        if pattern.contains(['?', '#']) {
            return Err(PatternError::QueryOrFragment { pattern: pattern.to_owned() });
        }
        let raw = RawAuthority::split(pattern).map_err(malformed)?;
        let (is_wildcard, raw_host) = match raw.host.strip_prefix("*.") {
            Some(parent) => (true, parent),
            None => (false, raw.host),
        };
        if raw_host.contains('*') {
            return Err(PatternError::MisplacedWildcard { pattern: pattern.to_owned() });
        }
        // Parse the pattern with the `*.` label removed: the rest is an ordinary URL.
        let text = if is_wildcard {
            format!("{}{}", &pattern[..raw.host_start], &pattern[raw.host_start + 2..])
        } else {
            pattern.to_owned()
        };
        let url =
            Url::parse(&text).map_err(|source| PatternError::Unparseable { pattern: pattern.to_owned(), source })?;
        check_pattern_is_canonical(pattern, &raw, &url, is_wildcard)?;
        check_parsed(&url, raw_host).map_err(malformed)?;
        let (scheme, host, port) = match (Scheme::of(&url), url.host(), url.port_or_known_default()) {
            (Some(scheme), Some(host), Some(port)) => (scheme, host, port),
            // check_parsed guarantees all three for http(s); keep the refusal explicit anyway.
            _ => return Err(malformed(Rejection::NotAbsolute)),
        };
        let host = if is_wildcard { wildcard_host(pattern, host)? } else { PatternHost::Exact(host.to_owned()) };
        Ok(Self { scheme, host, port, path: url.path().to_owned() })
    }

    /// Port equal (defaults filled in) and path inside the pattern's path.
    pub(super) fn port_and_path_match(&self, url: &Url) -> bool {
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
        Host::Domain(domain) if domain.split('.').count() >= 2 => {
            Ok(PatternHost::Subdomains { dot_parent: format!(".{domain}") })
        }
        _ => Err(PatternError::WildcardTooBroad { pattern: pattern.to_owned() }),
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
    let host_ok = url.host_str().is_some_and(|parsed| host.eq_ignore_ascii_case(parsed));
    let port_ok = match raw.port {
        None => url.port().is_none(),
        Some(port) => url.port().is_some_and(|n| n.to_string() == port),
    };
    let path_ok = raw.rest == url.path() || (raw.rest.is_empty() && url.path() == "/");
    if host_ok && port_ok && path_ok {
        return Ok(());
    }
    let canonical = if is_wildcard { url.as_str().replacen("://", "://*.", 1) } else { url.as_str().to_owned() };
    Err(PatternError::NotCanonical { pattern: pattern.to_owned(), canonical })
}
