//! The `sns` endpoints' replies, and how a 200 reply is read: an errcode is an error, anything
//! else the payload.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::WechatError;
use crate::secrets::{AccessToken, RefreshToken, SessionKey};

/// `sns/oauth2/access_token` and `sns/oauth2/refresh_token` replies.
#[derive(Debug, Deserialize)]
pub struct TokenGrant {
    /// New access token.
    pub access_token: AccessToken,
    /// Its life in seconds (7200).
    pub expires_in: i64,
    /// The refresh token.
    pub refresh_token: RefreshToken,
    /// The user's openid.
    pub openid: String,
    /// Comma-separated granted scopes.
    pub scope: String,
    /// unionid, with snsapi_userinfo/snsapi_login on a bound app.
    #[serde(default)]
    pub unionid: Option<String>,
    /// 1 for a snapshot-page virtual user.
    #[serde(default)]
    pub is_snapshotuser: i64,
}

/// `sns/jscode2session` reply: `openid`, `session_key`, and `unionid` when the mini program is
/// bound to an open-platform account.
#[derive(Debug, Deserialize)]
pub struct MiniSession {
    /// The user's openid in the mini program.
    pub openid: String,
    /// The session key (decrypts `wx.getUserInfo`-style encrypted data, signs checks).
    pub session_key: SessionKey,
    /// unionid, on a bound mini program.
    #[serde(default)]
    pub unionid: Option<String>,
}

/// `sns/userinfo` reply (also what the profile cache keeps, sealed).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Profile {
    /// openid.
    pub openid: String,
    /// Nickname.
    #[serde(default)]
    pub nickname: String,
    /// 0 unknown, 1 male, 2 female. WeChat sends a number; its older web-authorization doc (and
    /// SDK fixtures copied from it) show the string `"1"`, which is read as the same number.
    #[serde(default, deserialize_with = "number_or_numeric_string")]
    pub sex: i64,
    /// Province.
    #[serde(default)]
    pub province: String,
    /// City.
    #[serde(default)]
    pub city: String,
    /// Country.
    #[serde(default)]
    pub country: String,
    /// Avatar URL.
    #[serde(default)]
    pub headimgurl: String,
    /// Privileges.
    #[serde(default)]
    pub privilege: Vec<String>,
    /// unionid, when bound.
    #[serde(default)]
    pub unionid: Option<String>,
}

/// Decodes a 200 reply: `{"errcode": N≠0, ...}` is an error, anything else the payload.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WechatError> {
    #[derive(Deserialize)]
    struct ErrorReply {
        #[serde(default)]
        errcode: i64,
        #[serde(default)]
        errmsg: String,
    }
    // Two typed passes over the bytes (errcode first, then the payload) cost less than building
    // a `serde_json::Value` tree.
    let error: ErrorReply = serde_json::from_slice(body).map_err(WechatError::Decode)?;
    if error.errcode != 0 {
        return Err(WechatError::Api { errcode: error.errcode, errmsg: error.errmsg });
    }
    serde_json::from_slice(body).map_err(WechatError::Decode)
}

/// Reads `1` or `"1"` as 1: a profile field that drifted to a string must not fail the whole reply.
fn number_or_numeric_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(i64),
        String(String),
    }
    match NumberOrString::deserialize(deserializer)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}
