//! Entry points for the coverage-guided fuzz targets in `fuzz/` (docs/fuzzing.md): the private
//! parsers that untrusted bytes reach, as thin wrappers, so the fuzzers run the service's own
//! code rather than a copy. Not an API: hidden from the docs, and nothing in the service calls
//! it. Everything else the targets need (the allowlist, the keyring, the config loader, the
//! error map) is public already.

use serde::de::DeserializeOwned;

use crate::store::seal::Keyring;
use crate::wechat::WechatError;

/// The relay's reading of a callback's query string: `Some((code, state))` when the relay
/// would go on to look the flow up, `None` when it answers "malformed".
pub fn callback_query(query: &str) -> Option<(Option<String>, String)> {
    crate::relay::parse_query(query).ok().map(|callback| (callback.code, callback.state))
}

/// The push endpoint's reading of a query string: `Some((timestamp, nonce, encrypted))` when
/// it would go on to check the signature, `None` when it refuses it as malformed.
pub fn push_query(query: &str) -> Option<(String, String, bool)> {
    crate::push::parse_query(query).ok().map(|s| (s.timestamp, s.nonce, s.encrypted))
}

/// Decodes the body of an HTTP 200 reply of an `sns` endpoint as the WeChat client does:
/// `{"errcode": N≠0, ...}` is [`WechatError::Api`], anything else the payload `T`
/// ([`crate::wechat::TokenGrant`], [`crate::wechat::Profile`], `serde_json::Value` for `sns/auth`).
pub fn wechat_reply<T: DeserializeOwned>(body: &[u8]) -> Result<T, WechatError> {
    crate::wechat::decode(body)
}

/// Opens a record read from a backend under its storage key as the store does (the seal, then
/// the JSON); `None` is what the store treats as a missing record.
pub fn open_record<T: DeserializeOwned>(keys: &Keyring, key: &str, sealed: &[u8]) -> Option<T> {
    crate::store::open_record(keys, key, sealed)
}

/// Opens a cached profile as the store does: the seal, then its own form (protobuf behind a
/// format byte) or the JSON of earlier versions.
pub fn open_profile_record(keys: &Keyring, key: &str, sealed: &[u8]) -> Option<crate::store::CachedProfile> {
    crate::store::open_profile_record(keys, key, sealed)
}

/// Reads an opened plaintext as a cached profile, as [`open_profile_record`] does after opening.
pub fn profile_plaintext(plain: &[u8]) -> Option<crate::store::CachedProfile> {
    crate::store::decode_profile_record(plain)
}

/// `/oidc/authorize`'s reading of a query for the fixture clients (`rp`, confidential, and
/// `spa`, public; both redirect to `https://rp.example.com/cb` and require PKCE): `Err("page")`
/// when it cannot answer a client, `Err(error)` for an OAuth error to the redirect URI, else the
/// PKCE challenge and the scopes granted.
pub fn oidc_authorize(query: &[u8]) -> Result<(Option<String>, Vec<String>), &'static str> {
    crate::oidc::fuzz::authorize(query)
}

/// `/oidc/token`'s reading of a request (`Authorization` header, form body) as if its code were
/// a live code of `rp` (secret `s3cret`) for `https://rp.example.com/cb` with the PKCE challenge
/// of RFC 7636 appendix B's verifier: `Ok` when it would issue tokens, else the error code.
pub fn oidc_token(authorization: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    crate::oidc::fuzz::token(authorization, body)
}
