//! The return URL that passed the allowlist, and the redirect made from it: the code and
//! state appended to its query, form-urlencoded, replacing pairs of the same name.

use std::borrow::Cow;

use url::Url;

use super::Rejection;
use super::raw::{check_raw_length, is_network_path, parse_return_url};

/// A return URL that passed the allowlist: the parsed, normalized URL (fragment removed).
///
/// It can only be made by [`super::Allowlist::check`] or, for a value read back from storage, by
/// [`ReturnUrl::from_stored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnUrl(pub(super) Url);

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
    /// The same well-formedness rules as [`super::Allowlist::check`] apply, so a tampered record
    /// still cannot produce a `javascript:` or userinfo redirect.
    pub fn from_stored(s: &str) -> Result<Self, Rejection> {
        parse_return_url(s).map(Self)
    }
}

/// The browser's redirect for a return URL read back from a flow record: the same text as
/// `ReturnUrl::from_stored(stored)?.with_params(params)`, without parsing the URL again (the
/// relay does this for every callback; the parse was a tenth of its work).
///
/// `stored` is `url`'s own serialization of a URL [`super::Allowlist::check`] accepted, and the
/// record it comes from is sealed, so it cannot be altered without the sealing key. A few
/// byte checks still stand in for the parse, so that even a damaged record cannot make a
/// redirect to anything but an absolute http(s) URL without userinfo, or break the `Location`
/// header: nothing but printable ASCII, no fragment, no `@` or `\` in the authority.
pub(crate) fn redirect_from_stored(stored: &str, params: &[(&str, &str)]) -> Result<String, Rejection> {
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
