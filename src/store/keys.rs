//! The store's key schema: one function per kind of key, under `store.key_prefix`. The table
//! of the keys, their values and their lives is docs/design.md §4.1 (a wire contract: other
//! replicas and operators read the same keys).

use sha2::{Digest as _, Sha256};

use super::Store;
use crate::secrets::AuthCode;
use crate::wechat::Lang;

impl Store {
    pub(super) fn flow_key(&self, flow_id: &str) -> String {
        // The keys of hot paths are concatenated, not `format!`ted: the relay builds this key and
        // the code's on every callback, GetUserInfo the reach's and the profile's, and the
        // formatting machinery cost more than the copying (~4 % of a cached GetUserInfo).
        [self.inner.prefix.as_str(), ":flow:", flow_id].concat()
    }

    pub(super) fn token_key(&self, app: &str, openid: &str) -> String {
        [self.inner.prefix.as_str(), ":", app, ":tok:", openid].concat()
    }

    pub(super) fn code_key(&self, code: &AuthCode) -> String {
        let digest = Sha256::digest(code.secret().as_bytes());
        [self.inner.prefix.as_str(), ":code:", &hex::encode(digest)].concat()
    }

    pub(super) fn reach_key(&self, app: &str, openid: &str, client: &str) -> String {
        [self.inner.prefix.as_str(), ":", app, ":reach:", openid, ":", client].concat()
    }

    pub(super) fn session_key(&self, app: &str, openid: &str) -> String {
        [self.inner.prefix.as_str(), ":", app, ":sess:", openid].concat()
    }

    pub(super) fn union_key(&self, unionid: &str) -> String {
        format!("{}:union:{unionid}", self.inner.prefix)
    }

    pub(super) fn lock_key(&self, app: &str, openid: &str) -> String {
        format!("{}:{app}:lock:{openid}", self.inner.prefix)
    }

    pub(super) fn profile_key(&self, app: &str, openid: &str, lang: Lang) -> String {
        [self.inner.prefix.as_str(), ":", app, ":prof:", openid, ":", lang.as_str()].concat()
    }

    /// A message push's nonce, remembered so that the same signed message is not acted on twice
    /// (`{app}:push:{sha256(timestamp NUL nonce)}`): the hash keeps the key's length fixed
    /// whatever the nonce WeChat (or an attacker) sends.
    pub(super) fn push_nonce_key(&self, app: &str, timestamp: &str, nonce: &str) -> String {
        let digest = Sha256::digest([timestamp, "\0", nonce].concat().as_bytes());
        format!("{}:{app}:push:{}", self.inner.prefix, hex::encode(digest))
    }

    /// The stem of the client's open-flow counters ([`super::flow_cap`] adds `:{window}`): the
    /// client in braces, a Cluster hash tag, so that one pipeline may touch all of them.
    pub(super) fn client_flows_key(&self, client: &str) -> String {
        format!("{}:client:{{{client}}}:flows", self.inner.prefix)
    }
}

/// The field of an account in a unionid's index.
pub(super) fn account_field(app: &str, openid: &str) -> String {
    format!("{app}:{openid}")
}

/// What an account's value is sealed under: the index key and the field.
pub(super) fn account_aad(key: &str, field: &str) -> String {
    format!("{key}\u{0}{field}")
}

/// The kind of a key (`tok`, `flow`, ...) for logs: never the openid, code hash or flow id.
pub(super) fn key_kind(key: &str) -> &'static str {
    ["tok", "flow", "code", "lock", "prof", "reach", "sess", "union", "client", "push", "apptok", "oidc", "phone"]
        .into_iter()
        .find(|kind| key.contains(&format!(":{kind}:")))
        .unwrap_or("other")
}
