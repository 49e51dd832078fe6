//! The OpenID Provider's reading of `POST /oidc/token` (issue 22): the input's first line is
//! the `Authorization` header (empty: none), the rest the form body, judged as if its code were
//! a live code of the fixture client `rp` (HTTP Basic, secret `s3cret`) for
//! `https://rp.example.com/cb` with the PKCE challenge of RFC 7636 appendix B's verifier.
//! Invariants beyond "never panics": a request it would issue tokens for authenticated as `rp`
//! with its secret over HTTP Basic, asked `grant_type=authorization_code`, named that redirect
//! URI, and sent that verifier.
#![no_main]

use libfuzzer_sys::fuzz_target;

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let Ok(header) = std::str::from_utf8(header) else { return };
    let authorization = (!header.is_empty()).then_some(header);
    if wxauth::fuzzing::oidc_token(authorization, body).is_err() {
        return;
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let value = |name: &str| pairs.iter().find(|(n, v)| n == name && !v.is_empty()).map(|(_, v)| v.as_str());
    assert_eq!(value("grant_type"), Some("authorization_code"));
    assert_eq!(value("redirect_uri"), Some("https://rp.example.com/cb"));
    assert_eq!(value("code_verifier"), Some(VERIFIER));
    assert!(value("client_secret").is_none(), "rp authenticates with HTTP Basic only");
    let basic = header.strip_prefix("Basic ").expect("HTTP Basic");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).expect("base64");
    let decoded = String::from_utf8(decoded).expect("utf-8");
    let (id, secret) = decoded.split_once(':').expect("id:secret");
    let decode = |s: &str| url::form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
    assert_eq!((decode(id).as_deref(), decode(secret).as_deref()), (Some("rp"), Some("s3cret")));
});
