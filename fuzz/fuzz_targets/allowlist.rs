//! The return-URL allowlist: patterns parsed as at start-up, a candidate judged as
//! `BuildAuthorizeUrl` judges it, and the relay's `with_params` on what was accepted.
//!
//! Input (UTF-8 text, one item a line): the candidate URL; then the `code` and `state` to append
//! (default `CODE` and `s`); then the patterns (default: the README's examples and the dev-mode
//! loopback ones). Invariants checked beyond "never panics":
//! - an accepted URL names a host, scheme, port and path prefix of one pattern; it is
//!   normalized (re-checking it gives itself), has no fragment and is printable ASCII; its path
//!   never starts with `//` or `/\` (copied into a relative redirect, it would name a host);
//! - `from_stored` of what was accepted gives it back;
//! - `with_params(code, state)` stays accepted, on the same origin, and carries `code` and
//!   `state` exactly once each, with their values intact, after the stored query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use url::{Host, Url};
use wxauth::allowlist::{Allowlist, ReturnUrl};

const DEFAULT_PATTERNS: [&str; 5] = [
    "https://passport.example.com/login/",
    "https://*.example.com/",
    "https://api.example.org:8443/cb",
    "http://127.0.0.1:8082/",
    "http://localhost:8082/",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let candidate = lines.next().unwrap_or_default();
    let code = lines.next().unwrap_or("CODE");
    let state = lines.next().unwrap_or("s");
    let given: Vec<&str> = lines.collect();
    let patterns: &[&str] = if given.is_empty() { &DEFAULT_PATTERNS } else { &given };

    // A stored value is re-validated without an allowlist: never a panic, whatever it is.
    let _ = ReturnUrl::from_stored(candidate);
    let Ok(list) = Allowlist::parse(patterns) else { return };
    let normalized = list.patterns();
    // Normalized patterns are canonical: they parse again to themselves.
    let reparsed = Allowlist::parse(&normalized).expect("normalized patterns parse again");
    assert_eq!(reparsed.patterns(), normalized);

    let Ok(accepted) = list.check(candidate) else { return };
    let url = Url::parse(accepted.as_str()).expect("an accepted URL parses");
    assert!(matches!(url.scheme(), "http" | "https"), "{url}");
    assert_eq!(url.fragment(), None);
    assert!(url.username().is_empty() && url.password().is_none(), "{url}");
    assert!(accepted.as_str().bytes().all(|b| b.is_ascii_graphic()), "{url}");
    assert!(!url.path().starts_with("//") && !url.path().starts_with("/\\"), "a network-path reference: {url}");
    assert!(normalized.iter().any(|p| covers(p, &url)), "{url} matches none of {normalized:?}");
    assert_eq!(list.check(accepted.as_str()).as_ref(), Ok(&accepted), "normalization is stable");
    assert_eq!(ReturnUrl::from_stored(accepted.as_str()).as_ref(), Ok(&accepted));

    let location = accepted.with_params(&[("code", code), ("state", state)]);
    assert!(location.as_str().bytes().all(|b| b.is_ascii_graphic()), "{location}");
    // (Within the length limit: a long code or state makes a Location the check would refuse.)
    if location.as_str().len() <= 2048 {
        let relayed = list.check(location.as_str()).expect("the relayed URL stays allowed");
        assert_eq!(relayed.as_str(), location.as_str(), "the relayed URL is already normalized");
    }
    let back = Url::parse(location.as_str()).expect("the relayed URL parses");
    assert_eq!((back.scheme(), back.host(), back.port()), (url.scheme(), url.host(), url.port()));
    assert_eq!(back.path(), url.path());
    let pairs: Vec<(String, String)> = back.query_pairs().into_owned().collect();
    let named = |name: &str| pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(named("code"), [code], "{location}");
    assert_eq!(named("state"), [state], "{location}");
    let tail: Vec<_> = pairs.iter().rev().take(2).rev().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(tail, [("code", code), ("state", state)], "appended last, in order");
});

/// Whether a normalized pattern (`https://*.example.com/`, `http://[::1]:9443/cb`) covers a
/// URL's scheme, host, port and path: the allowlist's rule, re-derived independently and
/// loosely (the path as a plain prefix), so it can only be weaker than the real one.
fn covers(pattern: &str, url: &Url) -> bool {
    let (wildcard, text) = match pattern.split_once("://*.") {
        Some((scheme, rest)) => (true, format!("{scheme}://{rest}")),
        None => (false, pattern.to_owned()),
    };
    let Ok(p) = Url::parse(&text) else { return false };
    let host_ok = match (url.host(), p.host()) {
        (Some(Host::Domain(host)), Some(Host::Domain(parent))) if wildcard => {
            host.len() > parent.len() + 1 && host.ends_with(&format!(".{parent}"))
        }
        (Some(host), Some(exact)) => !wildcard && host == exact,
        _ => false,
    };
    host_ok
        && p.scheme() == url.scheme()
        && p.port_or_known_default() == url.port_or_known_default()
        && url.path().starts_with(p.path())
}
