//! What the provider keeps in the store (sealed, like every record; `store/oidc.rs`): a pending
//! authorization request while the user is at WeChat, its own code until the token request,
//! and an access token until it expires. The kinds name their keys (`oidc:{kind}:{hash}`).

use serde::{Deserialize, Serialize};

/// The kind of a pending authorization request, keyed by its id (the flow's `state` for
/// wxauth's own return URL).
pub(super) const PENDING: &str = "req";
/// The kind of one of the provider's codes.
pub(super) const CODE: &str = "code";
/// The kind of an access token.
pub(super) const ACCESS_TOKEN: &str = "at";

/// An authorization request waiting for its WeChat callback.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The client's id.
    pub client: String,
    /// Its redirect URI (one of the registered ones).
    pub redirect_uri: String,
    /// The client's `state`, sent back as given.
    pub state: Option<String>,
    /// The client's `nonce`, for the ID token.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge.
    pub challenge: Option<String>,
    /// The scopes granted (`openid`, and `profile` when asked and allowed).
    pub scopes: Vec<String>,
    /// The flow (the id the relay binds WeChat's code to).
    pub flow_id: String,
    /// The WeChat app of the flow.
    pub app: String,
}

/// Who signed in, as the client sees them: what its ID token and userinfo carry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Identity {
    /// The subject (pairwise, or the unionid).
    pub sub: String,
    /// When WeChat's sign-in happened (Unix seconds).
    pub auth_time: i64,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// The nickname (scope `profile` on a sign-in that read the profile).
    pub name: Option<String>,
    /// The avatar URL (as `name`).
    pub picture: Option<String>,
    /// WeChat's openid (clients with `wechat_ids`).
    pub openid: Option<String>,
    /// WeChat's unionid (clients with `wechat_ids`, when the sign-in gave one).
    pub unionid: Option<String>,
}

impl Identity {
    /// The user claims (OpenID Connect Core §5.1) of this identity.
    pub(super) fn claims(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), self.sub.clone().into());
        for (name, value) in
            [("name", &self.name), ("picture", &self.picture), ("openid", &self.openid), ("unionid", &self.unionid)]
        {
            if let Some(value) = value {
                claims.insert(name.into(), value.clone().into());
            }
        }
        claims
    }
}

/// One of the provider's codes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Code {
    /// The client it was issued to.
    pub client: String,
    /// The redirect URI it was sent to (the token request must name the same).
    pub redirect_uri: String,
    /// The PKCE S256 challenge the token request's verifier must answer.
    pub challenge: Option<String>,
    /// The `nonce` of the authorization request.
    pub nonce: Option<String>,
    /// When it stops being accepted (ms, service clock).
    pub expires_at_ms: i64,
    /// Who signed in.
    pub identity: Identity,
    /// The access token its one use issued: a second use revokes it.
    pub used_for: Option<String>,
}

/// An access token (opaque to the client; `/oidc/userinfo` reads it).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AccessToken {
    /// The client it was issued to.
    pub client: String,
    /// When it expires (Unix seconds, service clock).
    pub expires_at: i64,
    /// Who signed in.
    pub identity: Identity,
}
