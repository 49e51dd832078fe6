//! The records the store keeps, as the service reads and writes them (each sealed under its
//! key before it reaches a backend: [`super::seal`]), and the small handles its operations
//! give back (a token's version, a flow's place under the cap, a held lock).

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::Store;
use crate::secrets::{AccessToken, RefreshToken, SessionKey};
use crate::wechat::Profile;

/// A user's tokens as kept server-side. `Debug` shows no token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// The user's openid in the app.
    pub openid: String,
    /// The unionid, when WeChat gave one.
    pub unionid: Option<String>,
    /// Granted scopes, as WeChat spells them.
    pub scopes: Vec<String>,
    /// A snapshot-page virtual user.
    pub is_snapshot_user: bool,
    /// The web access token.
    pub access_token: AccessToken,
    /// When the access token expires, Unix seconds (by the service clock).
    pub access_expires_at: i64,
    /// The refresh token.
    pub refresh_token: RefreshToken,
    /// When the refresh token expires, Unix seconds.
    pub refresh_expires_at: i64,
    /// When a refresh last renewed or replaced the access token, Unix milliseconds by the
    /// service clock; 0 when none has since the code exchange (and in records sealed before the
    /// field existed). WeChat's refresh returns the *same* access token while it is alive, so
    /// this stamp, never a token comparison, tells a waiter that someone refreshed.
    #[serde(default)]
    pub refreshed_at_ms: i64,
}

/// The sealed bytes a token record was read as. [`Store::replace_token`] and
/// [`Store::delete_token_if`] act only while the key still holds exactly these bytes: every
/// seal draws a random nonce, so equal bytes mean no one wrote since the read. `Debug` shows
/// only the length.
#[derive(Clone)]
pub struct TokenVersion(pub(super) Vec<u8>);

impl std::fmt::Debug for TokenVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenVersion({} bytes)", self.0.len())
    }
}

/// One authorization in progress, created by `BuildAuthorizeUrl` and read by the relay.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flow {
    /// The app's config name.
    pub app: String,
    /// The allowlisted URL the relay sends the code to (fixed here, never taken from input).
    pub return_url: String,
    /// The product's own state, handed back verbatim.
    pub caller_state: String,
    /// The scope asked for.
    pub scope: String,
    /// The client that started the flow.
    pub caller: String,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Whether the authorize URL forces WeChat's consent page (`forcePopup=true`): the start
    /// URL builds the flow's authorize URL again, for its browser-bound id. False in flows
    /// sealed before the field existed.
    #[serde(default)]
    pub force_popup: bool,
}

/// Whether a relay read of a flow was its first use or a repeat within the grace window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowUse {
    /// The first callback: it started the grace window.
    First,
    /// A later callback within the grace window (WeChat's double callback, a reload).
    Repeat,
}

/// What wxauth knows of one WeChat code, kept for the code's life under its hash: the relay
/// records the flow it came through, `ExchangeCode` claims it (one WeChat call however many
/// exchanges run at once) and then records the result, so a repeat of the same `(flow, code)`
/// gets the same answer and the same code with any other flow is refused (docs/design.md §2).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeRecord {
    /// The flow the relay sent the code through; its id names the client that created it and
    /// the app ([`Store::flow_is_of`]), the only ones that may exchange the code.
    pub flow_id: String,
    /// How far the exchange has come.
    pub state: CodeState,
}

/// The life of a relayed code.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum CodeState {
    /// Relayed to the product; not exchanged yet.
    Relayed,
    /// A replica is exchanging it with WeChat now (since this time, Unix ms).
    Pending(i64),
    /// Exchanged, with this result.
    Done(ExchangeOutcome),
    /// The exchange was sent and its answer lost: WeChat may have spent the code, so every
    /// later exchange of it is told to start a new sign-in, without asking WeChat.
    Lost,
}

/// What the relay made of a code it was handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeRelay {
    /// First seen: now bound to this flow.
    Bound,
    /// Seen before through the same flow (a reload, WeChat's double callback).
    Again,
    /// Already bound to another flow: never relayed through this one.
    OtherFlow,
}

/// What the relay read and bound in its one round trip ([`Store::relay`]).
#[derive(Debug)]
pub struct Relayed {
    /// The flow.
    pub flow: Flow,
    /// Whether this callback was the flow's first.
    pub used: FlowUse,
    /// The flow's callbacks so far, this one included.
    pub uses: u64,
    /// What became of the callback's code, when it carried one.
    pub code: Option<CodeRelay>,
}

/// A sealed code record as read, with the bytes it was read as (for compare-and-set).
#[derive(Debug)]
pub struct ReadCode {
    /// The record.
    pub record: CodeRecord,
    pub(super) sealed: Vec<u8>,
}

/// The result of a successful exchange (no tokens: those are in the token record).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExchangeOutcome {
    /// openid of the user.
    pub openid: String,
    /// unionid when given.
    pub unionid: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Snapshot-page virtual user.
    pub is_snapshot_user: bool,
    /// Access token expiry, Unix seconds.
    pub access_expires_at: i64,
    /// Refresh token expiry, Unix seconds.
    pub refresh_expires_at: i64,
    /// The client whose exchange this was: a mobile code's result is shared only with that
    /// client's concurrent duplicates, never with another client's exchange of the same code.
    /// `None` in records written before it was kept (shared with no one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchanged_by: Option<String>,
}

/// A client's claim on a user: it exchanged one of the user's codes itself, and what those
/// sign-ins of its own were granted. Clients with `users = "own"` reach only users they hold
/// one for, and read only what its scopes grant (`crate::consent`): consent given to one
/// product is not another's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reach {
    /// When the client last exchanged a code of the user.
    pub since: i64,
    /// The scopes this client's own sign-ins were granted (a userinfo grant outlives a later
    /// `snsapi_base` sign-in while the token can still read the profile). Empty: a mini
    /// program sign-in (no scopes), or a record written before scopes were kept, which
    /// `crate::consent::Grant::of` reads as no more than the app kind's least scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// A mini program user's session, as `sns/jscode2session` gave it at the last sign-in. `Debug`
/// shows no key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MiniSession {
    /// openid in the mini program.
    pub openid: String,
    /// unionid, when the mini program is bound to an open-platform account.
    pub unionid: Option<String>,
    /// The session key: decrypts the mini program's encrypted user data, signs its checks.
    pub session_key: SessionKey,
    /// When the user signed in, Unix seconds.
    pub signed_in_at: i64,
}

/// One account of a person (a unionid) in one app, as the account index keeps it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Account {
    /// The app's config name.
    pub app: String,
    /// openid in that app.
    pub openid: String,
    /// The app's kind (`official_account`, `website`, `mobile_app`, `mini_program`).
    pub kind: String,
    /// The last sign-in with this account, Unix seconds.
    pub last_sign_in: i64,
}

/// A profile as `sns/userinfo` gave it, and when: answers `GetUserInfo` without a WeChat call
/// while it is younger than the configured cache age.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedProfile {
    /// The profile.
    pub profile: Profile,
    /// When WeChat gave it, Unix seconds (by the service clock).
    pub fetched_at: i64,
}

/// A held refresh lock; pass it back to [`Store::unlock`].
#[derive(Debug)]
pub struct LockToken(pub(super) Vec<u8>);
