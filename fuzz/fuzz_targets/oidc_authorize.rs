//! The OpenID Provider's reading of `GET /oidc/authorize?<query>` (issue 22): arbitrary query
//! bytes against fixed clients that require PKCE. Invariants beyond "never panics": a request
//! it would start a flow for names each parameter once, asks `response_type=code` (and, if any,
//! `response_mode=query`), includes the `openid` scope and is granted only offered scopes,
//! carries an S256 challenge of 43 base64url characters, and never `prompt=none`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((challenge, scopes)) = wxauth::fuzzing::oidc_authorize(data) else { return };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(data).into_owned().collect();
    let value = |name: &str| pairs.iter().find(|(n, v)| n == name && !v.is_empty()).map(|(_, v)| v.as_str());
    for (i, (name, _)) in pairs.iter().enumerate() {
        assert!(!pairs[..i].iter().any(|(seen, _)| seen == name), "{name} repeated");
    }
    assert_eq!(value("response_type"), Some("code"));
    assert!(value("response_mode").is_none_or(|m| m == "query"));
    assert!(value("scope").is_some_and(|s| s.split(' ').any(|s| s == "openid")));
    assert!(scopes.iter().all(|s| s == "openid" || s == "profile"), "{scopes:?}");
    assert!(scopes.iter().any(|s| s == "openid"));
    let challenge = challenge.expect("the fixture clients require PKCE");
    assert_eq!(challenge.len(), 43);
    assert!(challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(value("code_challenge_method"), Some("S256"));
    assert!(!value("prompt").is_some_and(|p| p.split(' ').any(|v| v == "none")));
});
