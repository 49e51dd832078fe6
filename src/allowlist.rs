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

use std::borrow::Cow;

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
    /// Pairs of the stored query that bear one of the appended names are removed first, so a
    /// return URL like `?code=planted` cannot put a second `code` in front of the real one.
    pub fn with_params(&self, params: &[(&str, &str)]) -> Url {
        let mut url = self.0.clone();
        url.set_fragment(None);
        if params.is_empty() {
            return url;
        }
        let kept = url.query().map(|query| without_names(query, params));
        url.set_query(kept.as_deref().filter(|q| !q.is_empty()));
        url.query_pairs_mut().extend_pairs(params.iter().copied());
        url
    }

    /// Re-validate a URL read back from storage without re-checking an allowlist (it was
    /// checked when stored); fails if it is not an absolute http(s) URL.
    ///
    /// The same well-formedness rules as [`Allowlist::check`] apply, so a tampered record
    /// still cannot produce a `javascript:` or userinfo redirect.
    pub fn from_stored(s: &str) -> Result<Self, Rejection> {
        parse_return_url(s).map(Self)
    }
}

/// The browser's redirect for a return URL read back from a flow record: the same text as
/// `ReturnUrl::from_stored(stored)?.with_params(params)`, without parsing the URL again (the
/// relay does this for every callback; the parse was a tenth of its work).
///
/// `stored` is `url`'s own serialization of a URL [`Allowlist::check`] accepted, and the
/// record it comes from is sealed, so it cannot be altered without the sealing key. A few
/// byte checks still stand in for the parse, so that even a damaged record cannot make a
/// redirect to anything but an absolute http(s) URL without userinfo, or break the `Location`
/// header: nothing but printable ASCII, no fragment, no `@` or `\` in the authority.
pub fn redirect_from_stored(stored: &str, params: &[(&str, &str)]) -> Result<String, Rejection> {
    check_raw_length(stored)?;
    let rest =
        stored.strip_prefix("https://").or_else(|| stored.strip_prefix("http://")).ok_or(Rejection::NotAbsolute)?;
    if !stored.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::ControlOrWhitespace);
    }
    if stored.contains('#') {
        return Err(Rejection::Unparseable);
    }
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if authority.is_empty() {
        return Err(Rejection::BadHost);
    }
    if authority.contains('@') {
        return Err(Rejection::Userinfo);
    }
    if authority.contains('\\') {
        return Err(Rejection::Backslash);
    }
    if is_network_path(&rest[authority.len()..]) {
        return Err(Rejection::NetworkPath);
    }
    if params.is_empty() {
        return Ok(stored.to_owned());
    }
    let (base, query) = stored.split_once('?').unwrap_or((stored, ""));
    let kept = without_names(query, params);
    let mut location =
        String::with_capacity(stored.len() + 16 + params.iter().map(|(k, v)| k.len() + 3 * v.len()).sum::<usize>());
    location.push_str(base);
    location.push('?');
    let start = location.len();
    location.push_str(&kept);
    // As `url`'s `query_pairs_mut` appends: `&` between pairs, form-urlencoded.
    Ok(url::form_urlencoded::Serializer::for_suffix(location, start).extend_pairs(params.iter().copied()).finish())
}

/// The `&`-separated pairs of `query`, as written, except those whose decoded name is one of
/// the names in `params`.
fn without_names(query: &str, params: &[(&str, &str)]) -> String {
    let is_replaced = |pair: &&str| {
        form_pairs(pair).next().is_some_and(|(name, _)| params.iter().any(|(replaced, _)| name == *replaced))
    };
    query.split('&').filter(|pair| !pair.is_empty() && !is_replaced(pair)).collect::<Vec<_>>().join("&")
}

/// The name-value pairs of an `application/x-www-form-urlencoded` query, decoded exactly as
/// `url::form_urlencoded::parse` decodes them, which does the decoding of any pair that holds a
/// `%` or a `+`. A pair with neither (all of WeChat's callbacks) is split as written instead:
/// the parse's answer for it, without its byte-by-byte work on every relayed callback.
pub(crate) fn form_pairs(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query.split('&').filter(|pair| !pair.is_empty()).filter_map(|pair| {
        if pair.contains(['%', '+']) {
            return url::form_urlencoded::parse(pair.as_bytes()).next();
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        Some((Cow::Borrowed(name), Cow::Borrowed(value)))
    })
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
                Host::Domain(domain) => domain.len() > dot_parent.len() && domain.ends_with(dot_parent.as_str()),
                Host::Ipv4(_) | Host::Ipv6(_) => false,
            },
        }
    }
}

impl Pattern {
    /// Parse and validate one configured pattern.
    fn parse(pattern: &str) -> Result<Self, PatternError> {
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

/// A raw URL text split at its authority without any repairing: the parts as written.
struct RawAuthority<'a> {
    /// The host as written: `[v6]` with brackets, otherwise up to the port's `:`.
    host: &'a str,
    /// Byte offset of the host in the input.
    host_start: usize,
    /// The port text after `:`, when there is a `:`.
    port: Option<&'a str>,
    /// Everything after the authority (path, query, fragment).
    rest: &'a str,
}

impl<'a> RawAuthority<'a> {
    /// Every check made on the raw text, before the parser gets a chance to repair it.
    fn split(input: &'a str) -> Result<Self, Rejection> {
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
fn parse_return_url(input: &str) -> Result<Url, Rejection> {
    let raw = RawAuthority::split(input)?;
    let mut url = Url::parse(input).map_err(|_| Rejection::Unparseable)?;
    check_parsed(&url, raw.host)?;
    url.set_fragment(None);
    check_normalized_length(&url)?;
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
fn is_network_path(path: &str) -> bool {
    path.starts_with("//") || path.starts_with("/\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact-host patterns: a path prefix, a path with a segment boundary, the dev-mode hosts.
    const EXACT: &[&str] = &[
        "https://passport.example.com/login/",
        "https://passport.example.com/notify/done",
        "http://127.0.0.1:8082/",
        "http://localhost:8082/",
    ];

    /// A wildcard pattern for every subdomain of `example.com`.
    const WILDCARD: &[&str] = &["https://*.example.com/"];

    fn allowlist(patterns: &[&str]) -> Allowlist {
        Allowlist::parse(patterns).expect("test patterns are valid")
    }

    fn accepted(patterns: &[&str], candidate: &str) -> String {
        match allowlist(patterns).check(candidate) {
            Ok(url) => url.as_str().to_owned(),
            Err(rejection) => panic!("{candidate:?} was rejected: {rejection:?}"),
        }
    }

    /// One hostile candidate, the allowlist it is tried against, and the expected refusal.
    struct Hostile {
        label: &'static str,
        patterns: &'static [&'static str],
        candidate: String,
        expected: Rejection,
    }

    fn hostile(
        label: &'static str,
        patterns: &'static [&'static str],
        candidate: &str,
        expected: Rejection,
    ) -> Hostile {
        Hostile { label, patterns, candidate: candidate.to_owned(), expected }
    }

    #[rustfmt::skip]
    fn hostile_cases() -> Vec<Hostile> {
        use Rejection::*;
        let table: &[(&'static str, &'static [&'static str], &str, Rejection)] = &[
            // Userinfo: the browser goes to the host after the `@`.
            ("allowed host as username",            EXACT,    "https://passport.example.com@evil.com/", Userinfo),
            ("allowed host and port as userinfo",   EXACT,    "https://passport.example.com:443@evil.com/", Userinfo),
            ("empty userinfo",                      EXACT,    "https://@passport.example.com/login/", Userinfo),
            ("user and password",                   EXACT,    "https://user:pass@passport.example.com/login/", Userinfo),
            ("full-width at sign",                  EXACT,    "https://passport.example.com\u{FF20}evil.com/", Userinfo),
            // Fragments and backslashes that move the real host.
            ("at sign hidden in fragment",          EXACT,    "https://evil.com#@passport.example.com/", NotAllowed),
            ("backslash before at sign",            EXACT,    "https://evil.com\\@passport.example.com/", Backslash),
            ("slash backslash after scheme",        EXACT,    "https:/\\evil.com", Backslash),
            ("double backslash after scheme",       EXACT,    "https:\\\\evil.com/", Backslash),
            ("slash backslash relative",            EXACT,    "/\\evil.com", Backslash),
            ("full-width backslash",                EXACT,    "https://passport.example.com/login/\u{FF3C}x", Backslash),
            // Not absolute.
            ("protocol-relative",                   EXACT,    "//evil.com", NotAbsolute),
            ("relative path",                       EXACT,    "/login/", NotAbsolute),
            ("host without scheme",                 EXACT,    "passport.example.com/login/", NotAbsolute),
            ("empty string",                        EXACT,    "", NotAbsolute),
            ("http without slashes",                EXACT,    "http:evil.com", NotAbsolute),
            ("https with one slash",                EXACT,    "https:/evil.com", NotAbsolute),
            // Schemes.
            ("javascript with allowed url after",   EXACT,    "javascript:alert(1)//https://passport.example.com/login/", SchemeNotAllowed),
            ("mixed-case javascript",               EXACT,    "JaVaScRiPt:alert(1)", SchemeNotAllowed),
            ("data url",                            EXACT,    "data:text/html,<script>alert(1)</script>", SchemeNotAllowed),
            ("file url",                            EXACT,    "file:///etc/passwd", SchemeNotAllowed),
            ("ftp on allowed host",                 EXACT,    "ftp://passport.example.com/login/", SchemeNotAllowed),
            ("http for an https pattern",           EXACT,    "http://passport.example.com/login/", SchemeNotAllowed),
            ("https for an http localhost pattern", EXACT,    "https://localhost:8082/", SchemeNotAllowed),
            ("http for an https wildcard",          WILDCARD, "http://a.example.com/", SchemeNotAllowed),
            // Hosts that merely contain or end with the allowed text.
            ("allowed host as subdomain of evil",   EXACT,    "https://passport.example.com.evil.com/login/", NotAllowed),
            ("uppercase evil host",                 EXACT,    "HTTPS://EVIL.COM", NotAllowed),
            ("full-width evil host",                EXACT,    "https://\u{FF45}\u{FF56}\u{FF49}\u{FF4C}.com/", NotAllowed),
            ("host ending with the wildcard parent", WILDCARD, "https://evilexample.com/", NotAllowed),
            ("wildcard apex",                       WILDCARD, "https://example.com/", NotAllowed),
            ("wildcard parent under evil",          WILDCARD, "https://example.com.evil.com/", NotAllowed),
            ("wildcard subdomain under evil",       WILDCARD, "https://a.example.com.evil.com/", NotAllowed),
            // Percent-encoding in the host.
            ("encoded dot joins evil host",         EXACT,    "https://passport.example.com%2eevil.com/", EncodedHost),
            ("encoded dot inside allowed host",     EXACT,    "https://passport%2Eexample.com/login/", EncodedHost),
            ("encoded slash in host",               EXACT,    "https://evil.com%2fpassport.example.com/login/", EncodedHost),
            ("full-width percent in host",          EXACT,    "https://passport.example.com\u{FF05}2eevil.com/", EncodedHost),
            // Malformed hosts.
            ("trailing dot",                        EXACT,    "https://passport.example.com./login/", BadHost),
            ("leading dot",                         EXACT,    "https://.passport.example.com/login/", BadHost),
            ("ideographic trailing dot",            EXACT,    "https://passport.example.com\u{3002}/login/", BadHost),
            ("empty host the parser would skip",    EXACT,    "https:///evil.com", BadHost),
            ("empty label",                         WILDCARD, "https://a..example.com/", BadHost),
            ("wildcard trailing dot",               WILDCARD, "https://a.example.com./", BadHost),
            ("sub-delimiter in host",               WILDCARD, "https://evil$.example.com/", BadHost),
            ("asterisk host",                       WILDCARD, "https://*.example.com/", BadHost),
            ("localhost trailing dot",              EXACT,    "http://localhost.:8082/", BadHost),
            ("ip trailing dot",                     EXACT,    "http://127.0.0.1.:8082/", BadHost),
            // IP literals.
            ("hex ipv4",                            EXACT,    "https://0x7f.0.0.1/", IpLiteral),
            ("integer ipv4",                        EXACT,    "https://2130706433/", IpLiteral),
            ("ipv6 loopback",                       EXACT,    "https://[::1]/", IpLiteral),
            ("listed ip in integer notation",       EXACT,    "http://2130706433:8082/", IpLiteral),
            ("other loopback address",              EXACT,    "http://127.0.0.2:8082/", IpLiteral),
            ("ipv4-mapped ipv6",                    EXACT,    "http://[::ffff:127.0.0.1]:8082/", IpLiteral),
            ("ip against wildcard",                 WILDCARD, "https://93.184.216.34/", IpLiteral),
            // Ports.
            ("other port on allowed host",          EXACT,    "https://passport.example.com:8443/login/", NotAllowed),
            ("http default port on https host",     EXACT,    "https://passport.example.com:80/login/", NotAllowed),
            ("other port on listed localhost",      EXACT,    "http://localhost:8083/", NotAllowed),
            ("other port on wildcard",              WILDCARD, "https://a.example.com:8443/", NotAllowed),
            ("full-width colon port",               EXACT,    "https://passport.example.com\u{FF1A}8443/login/", Unparseable),
            ("port out of range",                   EXACT,    "https://passport.example.com:99999/login/", Unparseable),
            // Paths.
            ("dot segments leave the prefix",       EXACT,    "https://passport.example.com/login/../admin", NotAllowed),
            ("encoded dot segments leave prefix",   EXACT,    "https://passport.example.com/login/%2e%2E/admin", NotAllowed),
            ("prefix without segment boundary",     EXACT,    "https://passport.example.com/notify/doneevil", NotAllowed),
            ("pattern directory without slash",     EXACT,    "https://passport.example.com/login", NotAllowed),
            ("path outside every pattern",          EXACT,    "https://passport.example.com/logout", NotAllowed),
            ("tomcat dot-dot with parameter",       EXACT,    "https://passport.example.com/login/..;/admin", PathTraversal),
            ("encoded slash in path",               EXACT,    "https://passport.example.com/login/..%2Fadmin", PathTraversal),
            ("encoded backslash in path",           EXACT,    "https://passport.example.com/login/..%5cadmin", PathTraversal),
            // Paths that a product echoing them into a relative redirect sends to another host.
            ("path starting with two slashes",      WILDCARD, "https://a.example.com//evil.example", NetworkPath),
            ("dot-dot to two slashes",              WILDCARD, "https://a.example.com/..//evil.example", NetworkPath),
            ("dot-dot out of a prefix to two slashes", WILDCARD, "https://a.example.com/login/..//evil.example/x", NetworkPath),
            ("dot to two slashes",                  EXACT,    "http://localhost:8082/.//evil.example/", NetworkPath),
            ("encoded dots to two slashes",         EXACT,    "http://localhost:8082/%2e%2e//evil.example", NetworkPath),
            ("three slashes",                       EXACT,    "http://127.0.0.1:8082///evil.example", NetworkPath),
            // Characters a browser drops or trims.
            ("tab inside host",                     EXACT,    "https://passport.exa\tmple.com/login/", ControlOrWhitespace),
            ("newline inside path",                 EXACT,    "https://passport.example.com/login/\nx", ControlOrWhitespace),
            ("carriage return after host",          EXACT,    "https://evil.com\r/", ControlOrWhitespace),
            ("leading space",                       EXACT,    " https://passport.example.com/login/", ControlOrWhitespace),
            ("trailing space",                      EXACT,    "https://passport.example.com/login/ ", ControlOrWhitespace),
            ("nul byte",                            EXACT,    "https://passport.example.com/login/\u{0}", ControlOrWhitespace),
            ("ideographic space",                   EXACT,    "https://passport.example.com\u{3000}/login/", ControlOrWhitespace),
            ("zero-width space in host",            EXACT,    "https://pass\u{200B}port.example.com/login/", ControlOrWhitespace),
            ("soft hyphen in host",                 EXACT,    "https://pass\u{AD}port.example.com/login/", ControlOrWhitespace),
            ("right-to-left override",              EXACT,    "https://passport.example.com/login/\u{202E}x", ControlOrWhitespace),
        ];
        let too_long = format!("https://passport.example.com/login/{}", "a".repeat(MAX_URL_LEN));
        let too_long_encoded = format!("https://passport.example.com/login/{}", "\u{FC}".repeat(700));
        let mut cases: Vec<Hostile> = table
            .iter()
            .map(|&(label, patterns, candidate, expected)| hostile(label, patterns, candidate, expected))
            .collect();
        cases.push(hostile("longer than the limit", EXACT, &too_long, TooLong));
        cases.push(hostile("too long once percent-encoded", EXACT, &too_long_encoded, TooLong));
        cases
    }

    #[test]
    fn form_pairs_decode_every_query_as_the_form_urlencoded_parse_does() {
        for query in [
            "code=0a1B2c&state=Flow123",
            "&&code=0a1B2c&&state=Flow123&",
            "code&state=Flow123&=x&a==b",
            "code=a%2Bb&state=F+1&st%61te=x",
            "from=x&co+de=1&%63ode=2&q=%E4%B8%AD&bad=%FF%zz&plus=+",
            "",
            "&",
        ] {
            let ours: Vec<_> = form_pairs(query).collect();
            let theirs: Vec<_> = url::form_urlencoded::parse(query.as_bytes()).collect();
            assert_eq!(ours, theirs, "{query}");
        }
        let plain: Vec<_> = form_pairs("code=c&state=s").collect();
        assert!(plain.iter().all(|(n, v)| matches!((n, v), (Cow::Borrowed(_), Cow::Borrowed(_)))), "split as written");
    }

    #[test]
    fn every_hostile_url_is_rejected_for_its_reason() {
        let cases = hostile_cases();
        assert!(cases.len() >= 40, "only {} hostile cases", cases.len());

        let failures: Vec<String> = cases
            .iter()
            .filter_map(|case| {
                let outcome = allowlist(case.patterns).check(&case.candidate);
                (outcome != Err(case.expected))
                    .then(|| format!("{}: expected {:?}, got {outcome:?}", case.label, case.expected))
            })
            .collect();

        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_accepted_splice_of_hostile_pieces_lands_on_an_allowed_origin() {
        // Arrange: splice hosts with the separators attackers use to move the real host.
        let list = allowlist(&["https://passport.example.com/login/", "https://*.example.com/"]);
        let prefixes = ["https://", "HTTPS://", "https:/", "https:", "//", "http://", "https:///"];
        let hosts = ["passport.example.com", "evil.com", "a.example.com", "example.com", ""];
        let joins = [
            "", "@", ":443@", "#@", "?@", "/", "/../", "\\", ".", "%2e", "%40", "\u{3002}", ":8443", "\u{FF0E}",
            "\u{FF20}", ";", ",", "&",
        ];
        let tails = ["", "/", "/login/", "/login/../x", "#/login/"];
        let mut accepted_count = 0;

        for prefix in prefixes {
            for first in hosts {
                for join in joins {
                    for second in hosts {
                        for tail in tails {
                            let candidate = format!("{prefix}{first}{join}{second}{tail}");
                            // Act
                            let Ok(url) = list.check(&candidate) else {
                                continue;
                            };
                            accepted_count += 1;
                            // Assert: the browser lands on https, port 443, under example.com.
                            let reparsed = Url::parse(url.as_str()).expect("normalized URL parses");
                            let host = reparsed.host_str().unwrap_or_default();
                            assert_eq!(reparsed.scheme(), "https", "{candidate:?}");
                            assert_eq!(reparsed.port_or_known_default(), Some(443), "{candidate:?}");
                            assert!(host.ends_with(".example.com"), "{candidate:?} -> {host}");
                            assert_eq!(reparsed.fragment(), None, "{candidate:?}");
                            assert!(url.as_str().bytes().all(|b| b.is_ascii_graphic()));
                            assert_eq!(list.check(url.as_str()).as_ref(), Ok(&url), "{candidate:?}");
                        }
                    }
                }
            }
        }

        assert!(accepted_count > 0, "the splice produced no legitimate URL at all");
    }

    #[test]
    fn hostile_case_labels_are_unique() {
        let cases = hostile_cases();
        let mut labels: Vec<_> = cases.iter().map(|c| c.label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), cases.len());
    }

    #[test]
    fn rejection_messages_never_echo_the_candidate() {
        for case in hostile_cases() {
            let Err(rejection) = allowlist(case.patterns).check(&case.candidate) else {
                panic!("{} was accepted", case.label);
            };
            let message = rejection.to_string();
            assert!(!message.contains("evil"), "{}: {message}", case.label);
            assert!(!message.contains("passport"), "{}: {message}", case.label);
        }
    }

    #[test]
    fn accepted_url_is_normalized_without_its_fragment() {
        let url = accepted(EXACT, "https://PASSPORT.example.com/login/x?a=1#frag");
        assert_eq!(url, "https://passport.example.com/login/x?a=1");
    }

    #[test]
    fn uppercase_scheme_and_explicit_default_port_normalize_away() {
        let url = accepted(EXACT, "HTTPS://passport.example.com:443/login/");
        assert_eq!(url, "https://passport.example.com/login/");
    }

    #[test]
    fn pattern_path_without_slash_allows_itself_its_query_and_its_children() {
        for (candidate, expected) in [
            ("https://passport.example.com/notify/done", "https://passport.example.com/notify/done"),
            ("https://passport.example.com/notify/done?a=1", "https://passport.example.com/notify/done?a=1"),
            ("https://passport.example.com/notify/done/x", "https://passport.example.com/notify/done/x"),
        ] {
            assert_eq!(accepted(EXACT, candidate), expected);
        }
    }

    #[test]
    fn dot_segments_that_stay_inside_the_prefix_are_resolved_and_allowed() {
        let url = accepted(EXACT, "https://passport.example.com/login/a/../b");
        assert_eq!(url, "https://passport.example.com/login/b");
    }

    #[test]
    fn wildcard_allows_subdomains_of_any_depth() {
        assert_eq!(accepted(WILDCARD, "https://a.example.com/"), "https://a.example.com/");
        assert_eq!(accepted(WILDCARD, "https://a.b.example.com/x?y=1"), "https://a.b.example.com/x?y=1");
    }

    #[test]
    fn idn_subdomain_is_compared_as_punycode() {
        let url = accepted(WILDCARD, "https://b\u{FC}cher.example.com/");
        assert_eq!(url, "https://xn--bcher-kva.example.com/");
    }

    #[test]
    fn full_width_letters_and_ideographic_dots_fold_to_the_host_the_browser_visits() {
        let url = accepted(WILDCARD, "https://\u{FF41}\u{3002}example.com/");
        assert_eq!(url, "https://a.example.com/");
    }

    #[test]
    fn listed_localhost_and_loopback_ip_are_allowed_on_their_port() {
        assert_eq!(accepted(EXACT, "http://localhost:8082/"), "http://localhost:8082/");
        assert_eq!(accepted(EXACT, "http://LOCALHOST:8082/cb"), "http://localhost:8082/cb");
        assert_eq!(accepted(EXACT, "http://127.0.0.1:8082/cb?x=1#f"), "http://127.0.0.1:8082/cb?x=1");
    }

    #[test]
    fn listed_ipv6_literal_is_allowed() {
        let url = accepted(&["https://[::1]:9443/"], "https://[::1]:9443/cb");
        assert_eq!(url, "https://[::1]:9443/cb");
    }

    #[test]
    fn listed_non_default_port_is_required() {
        let list = allowlist(&["https://api.example.org:8443/cb"]);

        assert_eq!(
            list.check("https://api.example.org:8443/cb?x=1").map(|u| u.as_str().to_owned()),
            Ok("https://api.example.org:8443/cb?x=1".to_owned())
        );
        assert_eq!(list.check("https://api.example.org/cb"), Err(Rejection::NotAllowed));
    }

    #[test]
    fn apex_is_allowed_only_when_listed_beside_the_wildcard() {
        let list = allowlist(&["https://*.example.com/", "https://example.com/"]);
        assert!(list.check("https://example.com/").is_ok());
        assert!(list.check("https://a.example.com/").is_ok());
    }

    #[test]
    fn empty_allowlist_allows_nothing() {
        let list = allowlist(&[]);
        assert!(list.is_empty());
        assert_eq!(list.check("https://passport.example.com/"), Err(Rejection::NotAllowed));
    }

    fn return_url(candidate: &str) -> ReturnUrl {
        allowlist(EXACT).check(candidate).expect("candidate is allowed")
    }

    #[test]
    fn a_stored_return_url_redirects_exactly_as_a_parsed_one() {
        let stored = [
            "https://passport.example.com/login/",
            "https://passport.example.com/login/x?a=1",
            "https://passport.example.com/login/?code=planted&a=1&st%61te=x&b",
            "https://passport.example.com/login/?code=only&state=these",
            "https://passport.example.com/login/?%63ode=x&co+de=1&state&State=2",
            "https://passport.example.com/login/?",
            "https://passport.example.com/login/?&&a=%E4%B8%AD&&",
            "https://passport.example.com:8443/login/p%20q?x=y+z",
            "http://passport.example.com/login/",
        ];
        let params: [&[(&str, &str)]; 4] = [
            &[("code", "CODE"), ("state", "s1")],
            &[("state", "a&b=c d#e\r\n\u{FC}\u{1F600}+%")],
            &[("code", "c"), ("state", "s"), ("k&=", "v")],
            &[],
        ];
        for url in stored {
            for params in params {
                let parsed = ReturnUrl::from_stored(url).expect("stored").with_params(params);
                assert_eq!(redirect_from_stored(url, params).as_deref(), Ok(parsed.as_str()), "{url} {params:?}");
            }
        }
    }

    #[test]
    fn a_damaged_stored_return_url_makes_no_redirect() {
        let damaged = [
            ("javascript:alert(1)//", Rejection::NotAbsolute),
            ("//evil.example/", Rejection::NotAbsolute),
            ("data:text/html,x", Rejection::NotAbsolute),
            ("https://user@evil.example/", Rejection::Userinfo),
            ("https://passport.example.com@evil.example/", Rejection::Userinfo),
            ("https://evil.example\\@passport.example.com/", Rejection::Userinfo),
            ("https:///path", Rejection::BadHost),
            ("https://passport.example.com/\r\nSet-Cookie: x", Rejection::ControlOrWhitespace),
            ("https://passport.example.com/\u{4E2D}", Rejection::ControlOrWhitespace),
            ("https://passport.example.com/#frag", Rejection::Unparseable),
            ("https://passport.example.com//evil.example/", Rejection::NetworkPath),
            ("http://passport.example.com//evil.example?a=1", Rejection::NetworkPath),
            ("https://passport.example.com/\\evil.example/", Rejection::NetworkPath),
        ];
        for (url, why) in damaged {
            assert_eq!(redirect_from_stored(url, &[("state", "s")]), Err(why), "{url}");
        }
        let too_long = format!("https://passport.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(redirect_from_stored(&too_long, &[]), Err(Rejection::TooLong));
    }

    #[test]
    fn with_params_keeps_the_query_drops_the_fragment_and_appends_in_order() {
        let url = return_url("https://passport.example.com/login/x?a=1#frag");

        let location = url.with_params(&[("code", "CODE"), ("state", "s1")]);

        assert_eq!(location.as_str(), "https://passport.example.com/login/x?a=1&code=CODE&state=s1");
    }

    #[test]
    fn with_params_percent_encodes_everything_that_could_break_out() {
        let url = return_url("https://passport.example.com/login/");

        let location = url.with_params(&[
            ("state", "a&b=c d#e"),
            ("x", "\r\nLocation: https://evil.com/"),
            ("u", "\u{FC}\u{4E2D}+%"),
            ("k&=", "v"),
        ]);

        assert_eq!(
            location.as_str(),
            "https://passport.example.com/login/?state=a%26b%3Dc+d%23e\
             &x=%0D%0ALocation%3A+https%3A%2F%2Fevil.com%2F\
             &u=%C3%BC%E4%B8%AD%2B%25&k%26%3D=v"
        );
        assert!(location.as_str().bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn with_params_round_trips_values_through_a_query_parser() {
        let url = return_url("https://passport.example.com/login/?a=1");
        let state = "s t&a=te\r\n\u{1F600}";

        let location = url.with_params(&[("code", "c"), ("state", state)]);

        let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            [
                ("a".to_owned(), "1".to_owned()),
                ("code".to_owned(), "c".to_owned()),
                ("state".to_owned(), state.to_owned()),
            ]
        );
    }

    #[test]
    fn with_params_replaces_stored_pairs_of_the_same_name() {
        let url = return_url("https://passport.example.com/login/?code=planted&a=1&st%61te=x&b");

        let location = url.with_params(&[("code", "real"), ("state", "s")]);

        assert_eq!(location.as_str(), "https://passport.example.com/login/?a=1&b&code=real&state=s");
    }

    #[test]
    fn with_params_on_a_query_of_only_replaced_pairs_leaves_no_stray_separator() {
        let url = return_url("https://passport.example.com/login/?code=planted");

        let location = url.with_params(&[("code", "real")]);

        assert_eq!(location.as_str(), "https://passport.example.com/login/?code=real");
    }

    #[test]
    fn with_no_params_the_url_is_unchanged() {
        let url = return_url("https://passport.example.com/login/x");
        assert_eq!(url.with_params(&[]).as_str(), "https://passport.example.com/login/x");
    }

    #[test]
    fn stored_url_round_trips() {
        let url = return_url("https://passport.example.com/login/x?a=1");
        assert_eq!(ReturnUrl::from_stored(url.as_str()), Ok(url));
    }

    #[test]
    fn stored_url_loses_its_fragment() {
        let url = ReturnUrl::from_stored("https://a.example.com/x#frag").expect("valid");
        assert_eq!(url.as_str(), "https://a.example.com/x");
    }

    #[test]
    fn stored_value_that_is_not_absolute_http_is_refused() {
        for (stored, expected) in [
            ("javascript:alert(1)", Rejection::SchemeNotAllowed),
            ("/login/", Rejection::NotAbsolute),
            ("//evil.com/", Rejection::NotAbsolute),
            ("https://user@evil.com/", Rejection::Userinfo),
            ("https://evil.com\\@a.example.com/", Rejection::Backslash),
            ("not a url", Rejection::ControlOrWhitespace),
            ("https://a.example.com//evil.example", Rejection::NetworkPath),
            ("https://a.example.com/..//evil.example", Rejection::NetworkPath),
        ] {
            assert_eq!(ReturnUrl::from_stored(stored), Err(expected), "{stored:?}");
        }
    }

    #[test]
    fn rejection_codes_are_distinct_screaming_snake() {
        use Rejection::*;
        let all = [
            Unparseable,
            NotAbsolute,
            SchemeNotAllowed,
            Userinfo,
            Backslash,
            ControlOrWhitespace,
            EncodedHost,
            IpLiteral,
            BadHost,
            TooLong,
            PathTraversal,
            NetworkPath,
            NotAllowed,
        ];
        let mut codes: Vec<_> = all.iter().map(Rejection::code).collect();
        assert!(codes.iter().all(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')));
        assert_eq!(Userinfo.code(), "USERINFO_NOT_ALLOWED");
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }

    fn pattern_error(pattern: &str) -> PatternError {
        match Allowlist::parse(&[pattern]) {
            Ok(_) => panic!("{pattern:?} was accepted"),
            Err(error) => error,
        }
    }

    #[test]
    fn wildcard_over_a_single_label_is_too_broad() {
        for pattern in ["https://*.com/", "http://*.localhost:8082/", "https://*.127.0.0.1/"] {
            assert!(matches!(pattern_error(pattern), PatternError::WildcardTooBroad { .. }), "{pattern}");
        }
    }

    #[test]
    fn wildcard_anywhere_but_the_whole_first_label_is_refused() {
        for pattern in [
            "https://a.*.example.com/",
            "https://*example.com/",
            "https://*.*.example.com/",
            "https://a*.example.com/",
            "https://*/",
        ] {
            assert!(matches!(pattern_error(pattern), PatternError::MisplacedWildcard { .. }), "{pattern}");
        }
    }

    #[test]
    fn pattern_with_query_or_fragment_is_refused() {
        for pattern in ["https://passport.example.com/login/?a=1", "https://passport.example.com/#x"] {
            assert!(matches!(pattern_error(pattern), PatternError::QueryOrFragment { .. }), "{pattern}");
        }
    }

    #[test]
    fn pattern_breaking_a_url_rule_is_malformed_with_that_rule() {
        for (pattern, expected) in [
            ("https://user@passport.example.com/", Rejection::Userinfo),
            ("ftp://passport.example.com/", Rejection::SchemeNotAllowed),
            ("passport.example.com/login/", Rejection::NotAbsolute),
            ("https://passport.example.com./", Rejection::BadHost),
            ("https://pass%2eport.example.com/", Rejection::EncodedHost),
            ("https://passport.example.com/a b/", Rejection::ControlOrWhitespace),
            ("https://passport.example.com/a%2fb/", Rejection::PathTraversal),
        ] {
            match pattern_error(pattern) {
                PatternError::Malformed { reason, .. } => assert_eq!(reason, expected, "{pattern}"),
                other => panic!("{pattern}: {other:?}"),
            }
        }
    }

    #[test]
    fn unparseable_pattern_keeps_the_parser_reason() {
        let error = pattern_error("https://passport.example.com:99999/");
        assert!(matches!(error, PatternError::Unparseable { .. }));
        assert!(error.to_string().contains("invalid port number"), "{error}");
    }

    #[test]
    fn non_canonical_pattern_is_refused_with_its_canonical_form() {
        for (pattern, canonical) in [
            ("https://b\u{FC}cher.example.com/", "https://xn--bcher-kva.example.com/"),
            ("https://*.b\u{FC}cher.example/", "https://*.xn--bcher-kva.example/"),
            ("https://passport.example.com/a/../b/", "https://passport.example.com/b/"),
            ("https://passport.example.com:443/", "https://passport.example.com/"),
            ("http://2130706433:8082/", "http://127.0.0.1:8082/"),
            ("https://[0:0::1]/", "https://[::1]/"),
        ] {
            match pattern_error(pattern) {
                PatternError::NotCanonical { canonical: got, .. } => assert_eq!(got, canonical),
                other => panic!("{pattern}: {other:?}"),
            }
        }
    }

    #[test]
    fn pattern_error_names_the_pattern_and_the_reason() {
        let message = pattern_error("https://*.com/").to_string();
        assert!(message.contains("\"https://*.com/\""), "{message}");
        assert!(message.contains("too broad"), "{message}");

        let message = pattern_error("https://a.example.com/\n").to_string();
        assert!(message.contains("\\n"), "control characters are escaped: {message}");
        assert!(message.contains("whitespace"), "{message}");
    }

    #[test]
    fn pattern_host_case_and_missing_path_are_accepted() {
        let list = allowlist(&["HTTPS://Passport.Example.com", "https://*.Example.ORG/cb"]);
        assert!(list.check("https://passport.example.com/anything").is_ok());
        assert!(list.check("https://a.example.org/cb/x").is_ok());
        assert_eq!(list.check("https://a.example.org/CB"), Err(Rejection::NotAllowed));
    }

    #[test]
    fn one_bad_pattern_fails_the_whole_list() {
        let result = Allowlist::parse(&["https://passport.example.com/", "https://*.com/"]);
        assert!(matches!(result, Err(PatternError::WildcardTooBroad { pattern }) if pattern == "https://*.com/"));
    }
}
