//! WeChat's message push (消息推送) as the simulator sends it: the authorization events
//! (授权用户资料变更: `user_info_modified`, `user_authorization_revoke`,
//! `user_authorization_cancellation`, each with `OpenID`, `AppID`, `RevokeInfo`; the 服务号 H5
//! doc, "Authorized User Information Change") and ordinary text messages, in XML or JSON,
//! POSTed to the URL configured for the app with `signature`, `timestamp`, `nonce` and
//! `openid` in the query; in the safe mode also `encrypt_type=aes` and `msg_signature`, the
//! body an envelope `{ToUserName, Encrypt}` (WeChat's 消息加解密说明 and its `WXBizMsgCrypt`
//! sample code). The encryption is written here on its own, from WeChat's description, not
//! shared with the service's decryption: a test then checks one against the other.
//!
//! Tests set an app's push target (`Simulator::set_push_target`, or `POST /sim/push_target`)
//! once the service's address is known, then push (`Simulator::push_event`, `POST /sim/push`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aes::cipher::{BlockModeEncrypt as _, KeyIvInit as _, block_padding::NoPadding};
use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::Rng as _;
use serde_json::json;
use sha1::{Digest as _, Sha1};

use super::Simulator;
use super::params::Params;

/// Where and how WeChat pushes an app's messages, as its console configures it.
#[derive(Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The URL (服务器地址), with no query.
    pub url: String,
    /// The Token (令牌).
    pub token: String,
    /// The EncodingAESKey: `Some` is the safe mode (安全模式), `None` plaintext (明文模式).
    pub encoding_aes_key: Option<String>,
    /// The data format (数据格式).
    pub format: PushFormat,
}

impl std::fmt::Debug for PushTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTarget").field("url", &self.url).field("format", &self.format).finish_non_exhaustive()
    }
}

/// A push's body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFormat {
    /// `<xml>…</xml>` (every official account's default).
    Xml,
    /// A JSON object.
    Json,
}

/// An authorization event WeChat pushes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushEvent {
    /// `user_info_modified`: the platform cleaned the user's avatar or nickname.
    InfoModified,
    /// `user_authorization_revoke`: the user withdrew the authorization.
    AuthorizationRevoke,
    /// `user_authorization_cancellation`: the user closed their account.
    AuthorizationCancellation,
}

impl PushEvent {
    /// WeChat's `Event` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::InfoModified => "user_info_modified",
            Self::AuthorizationRevoke => "user_authorization_revoke",
            Self::AuthorizationCancellation => "user_authorization_cancellation",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::InfoModified, Self::AuthorizationRevoke, Self::AuthorizationCancellation]
            .into_iter()
            .find(|e| e.name() == name)
    }
}

/// One push, signed (and encrypted) and ready to send: tests may send it again (a replay) or
/// change it (a forgery).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPush {
    /// The target URL with WeChat's query.
    pub url: String,
    /// Its query alone.
    pub query: String,
    /// `text/xml` or `application/json`.
    pub content_type: &'static str,
    /// The body as sent.
    pub body: String,
}

/// Why the simulator cannot push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No push target for the appid (`set_push_target` first).
    #[error("no push target for {0}")]
    NoTarget(String),
    /// The user is not one of the simulator's, or the app unknown.
    #[error("unknown user {0} or app")]
    UnknownUser(String),
    /// The target's EncodingAESKey is not 43 letters or digits, or text with `]]>`.
    #[error("cannot build the push: {0}")]
    Build(&'static str),
    /// The request did not complete.
    #[error("push not delivered: {0}")]
    Send(String),
}

/// The push targets, by appid.
#[derive(Default)]
pub(super) struct Targets(Mutex<HashMap<String, PushTarget>>);

impl Targets {
    fn get(&self, appid: &str) -> Option<PushTarget> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(appid).cloned()
    }
}

/// The `FromUserName` of the authorization events: the doc calls it the platform push
/// service's user name (its sample shows an openid-like id).
const PLATFORM_SENDER: &str = "owAqB1v0ahK_Xlc7GshIDdf2yf7E";

impl Simulator {
    /// Configures `appid`'s message push, as its console does.
    pub fn set_push_target(&self, appid: &str, target: PushTarget) {
        self.inner.push.0.lock().unwrap_or_else(PoisonError::into_inner).insert(appid.to_owned(), target);
    }

    /// The plaintext of an authorization event about `user` in `appid`, in the target's format.
    pub fn event_message(&self, appid: &str, user: &str, event: PushEvent) -> Result<String, PushError> {
        let target = self.inner.push.get(appid).ok_or_else(|| PushError::NoTarget(appid.to_owned()))?;
        let openid = self.openid(appid, user).ok_or_else(|| PushError::UnknownUser(user.to_owned()))?;
        let (to, at) = (original_id(appid), self.core().unix_now());
        // `RevokeInfo`'s values are not documented; the doc's XML sample has `1`.
        Ok(match target.format {
            PushFormat::Json => json!({
                "ToUserName": to, "FromUserName": PLATFORM_SENDER, "CreateTime": at, "MsgType": "event",
                "Event": event.name(), "OpenID": openid, "AppID": appid, "RevokeInfo": "1",
            })
            .to_string(),
            PushFormat::Xml => format!(
                "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{PLATFORM_SENDER}]]></FromUserName>\
                 <CreateTime>{at}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{}]]></Event>\
                 <OpenID><![CDATA[{openid}]]></OpenID><AppID><![CDATA[{appid}]]></AppID>\
                 <RevokeInfo><![CDATA[1]]></RevokeInfo></xml>",
                event.name()
            ),
        })
    }

    /// The plaintext of a text message `user` sends the official account `appid`.
    pub fn text_message(&self, appid: &str, user: &str, content: &str) -> Result<String, PushError> {
        let target = self.inner.push.get(appid).ok_or_else(|| PushError::NoTarget(appid.to_owned()))?;
        let openid = self.openid(appid, user).ok_or_else(|| PushError::UnknownUser(user.to_owned()))?;
        let (to, at, id) = (original_id(appid), self.core().unix_now(), rand::rng().random::<u64>() >> 1);
        Ok(match target.format {
            PushFormat::Json => json!({
                "ToUserName": to, "FromUserName": openid, "CreateTime": at, "MsgType": "text",
                "Content": content, "MsgId": id,
            })
            .to_string(),
            PushFormat::Xml if content.contains("]]>") => return Err(PushError::Build("`]]>` in a CDATA section")),
            PushFormat::Xml => format!(
                "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>\
                 <CreateTime>{at}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content>\
                 <MsgId>{id}</MsgId></xml>"
            ),
        })
    }

    /// Signs `plaintext` for `appid`'s target as WeChat does, encrypting it in the safe mode,
    /// with the simulator's clock as `timestamp` and a fresh `nonce`.
    pub fn sign_push(&self, appid: &str, plaintext: &str) -> Result<SignedPush, PushError> {
        let target = self.inner.push.get(appid).ok_or_else(|| PushError::NoTarget(appid.to_owned()))?;
        let timestamp = self.core().unix_now().to_string();
        let nonce = rand::rng().random_range(100_000_000u32..4_000_000_000).to_string();
        let signature = sign(&[&target.token, &timestamp, &nonce]);
        let openid = plaintext_openid(plaintext);
        let mut query = format!("signature={signature}&timestamp={timestamp}&nonce={nonce}&openid={openid}");
        let body = match &target.encoding_aes_key {
            None => plaintext.to_owned(),
            Some(key) => {
                let encrypted = encrypt(key, appid, plaintext.as_bytes())?;
                let msg_signature = sign(&[&target.token, &timestamp, &nonce, &encrypted]);
                query.push_str(&format!("&encrypt_type=aes&msg_signature={msg_signature}"));
                match target.format {
                    PushFormat::Json => json!({ "ToUserName": original_id(appid), "Encrypt": encrypted }).to_string(),
                    PushFormat::Xml => format!(
                        "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>",
                        original_id(appid)
                    ),
                }
            }
        };
        let content_type = if target.format == PushFormat::Json { "application/json" } else { "text/xml" };
        Ok(SignedPush { url: format!("{}?{query}", target.url), query, content_type, body })
    }

    /// POSTs a signed push; the answer's status and body.
    pub async fn send_push(&self, push: &SignedPush) -> Result<(u16, String), PushError> {
        let client = crate::http_client().build().map_err(|e| PushError::Send(e.to_string()))?;
        let sent = client.post(&push.url).header("content-type", push.content_type).body(push.body.clone()).send();
        let response = sent.await.map_err(|e| PushError::Send(e.to_string()))?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| PushError::Send(e.to_string()))?))
    }

    /// Pushes an authorization event about `user` to `appid`'s target: its answer.
    pub async fn push_event(&self, appid: &str, user: &str, event: PushEvent) -> Result<(u16, String), PushError> {
        let signed = self.sign_push(appid, &self.event_message(appid, user, event)?)?;
        self.send_push(&signed).await
    }
}

/// An official account's original id (`gh_` and 12 hex digits), stable per appid.
fn original_id(appid: &str) -> String {
    format!("gh_{}", &hex::encode(Sha1::digest(appid.as_bytes()))[..12])
}

/// The `openid` of the query: the message's sender (`FromUserName`), as WeChat adds it.
fn plaintext_openid(plaintext: &str) -> String {
    for (open, close) in [("<FromUserName><![CDATA[", "]]>"), ("\"FromUserName\":\"", "\"")] {
        if let Some(rest) = plaintext.split_once(open).map(|(_, rest)| rest)
            && let Some((value, _)) = rest.split_once(close)
        {
            return value.to_owned();
        }
    }
    String::new()
}

/// SHA-1 of the parts sorted and joined, in lower-case hex.
fn sign(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    hex::encode(Sha1::digest(sorted.concat().as_bytes()))
}

/// The safe mode's ciphertext: AES-256-CBC (key: the EncodingAESKey and `=` in base64, IV its
/// first 16 bytes) of 16 random characters, the message's length in 4 bytes (network order),
/// the message and the appid, PKCS#7-padded to a multiple of 32 bytes; in base64.
fn encrypt(encoding_aes_key: &str, appid: &str, message: &[u8]) -> Result<String, PushError> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bad_key = PushError::Build("the EncodingAESKey is not 43 letters or digits");
    if encoding_aes_key.len() != 43 || !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad_key);
    }
    let key: [u8; 32] =
        LENIENT.decode([encoding_aes_key, "="].concat()).ok().and_then(|k| k.try_into().ok()).ok_or(bad_key)?;
    let random: String = rand::rng().sample_iter(rand::distr::Alphanumeric).take(16).map(char::from).collect();
    let length = u32::try_from(message.len()).map_err(|_| PushError::Build("message too long"))?;
    let mut plain = [random.as_bytes(), &length.to_be_bytes(), message, appid.as_bytes()].concat();
    let pad = 32 - plain.len() % 32;
    plain.resize(plain.len() + pad, u8::try_from(pad).unwrap_or(32));
    let encryptor =
        cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &key[..16]).map_err(|_| PushError::Build("AES key"))?;
    let len = plain.len();
    let ciphertext = encryptor.encrypt_padded::<NoPadding>(&mut plain, len).map_err(|_| PushError::Build("AES"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(ciphertext))
}

/// A control request the simulator cannot act on.
fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

/// `POST /sim/push_target?appid=..&url=..&token=..[&encoding_aes_key=..][&format=xml|json]`
pub(super) async fn control_target(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    let (Some(appid), Some(url), Some(token)) = (params.get("appid"), params.get("url"), params.get("token")) else {
        return bad_request("appid, url and token are required");
    };
    let format = match params.get("format") {
        None | Some("xml") => PushFormat::Xml,
        Some("json") => PushFormat::Json,
        Some(_) => return bad_request("format is xml or json"),
    };
    let encoding_aes_key = params.get("encoding_aes_key").map(str::to_owned);
    sim.set_push_target(appid, PushTarget { url: url.to_owned(), token: token.to_owned(), encoding_aes_key, format });
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /sim/push?appid=..&user=..&event=user_authorization_revoke` (or `&text=..` for a
/// text message): `{"status": N, "body": "..."}`, the target's answer.
pub(super) async fn control_push(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    let (Some(appid), Some(user)) = (params.get("appid"), params.get("user")) else {
        return bad_request("appid and user are required");
    };
    let plaintext = match (params.get("event"), params.get("text")) {
        (Some(event), None) => match PushEvent::parse(event) {
            Some(event) => sim.event_message(appid, user, event),
            None => return bad_request("unknown event"),
        },
        (None, Some(text)) => sim.text_message(appid, user, text),
        _ => return bad_request("one of event and text"),
    };
    let pushed = match plaintext.and_then(|p| sim.sign_push(appid, &p)) {
        Ok(signed) => sim.send_push(&signed).await,
        Err(e) => Err(e),
    };
    match pushed {
        Ok((status, body)) => Json(json!({ "status": status, "body": body })).into_response(),
        Err(e) => bad_request(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::{UserEvent, aes_key, decrypt, parse, signature_matches};
    use crate::sim::SimConfig;

    const APPID: &str = "wxd0000000000000a1";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn sim(format: PushFormat, key: Option<&str>) -> Simulator {
        let sim = Simulator::new(SimConfig::demo());
        let target = PushTarget {
            url: "http://127.0.0.1:9/p".into(),
            token: "tok123".into(),
            encoding_aes_key: key.map(Into::into),
            format,
        };
        sim.set_push_target(APPID, target);
        sim
    }

    /// The simulator's pushes, read by the service's own parser and decryption: the event, the
    /// user and the app come through in both formats and both modes.
    #[test]
    fn its_events_are_what_wechats_doc_shows_in_both_formats_and_modes() {
        let openid = Simulator::new(SimConfig::demo()).openid(APPID, "alice").expect("alice");
        for format in [PushFormat::Xml, PushFormat::Json] {
            for key in [None, Some(KEY)] {
                let sim = sim(format, key);
                let plaintext = sim.event_message(APPID, "alice", PushEvent::AuthorizationCancellation).expect("event");
                let signed = sim.sign_push(APPID, &plaintext).expect("signed");
                let param = |name: &str| {
                    signed.query.split('&').find_map(|p| p.strip_prefix(&format!("{name}="))).map(str::to_owned)
                };
                let (ts, nonce) = (param("timestamp").expect("timestamp"), param("nonce").expect("nonce"));
                assert!(signature_matches(&param("signature").expect("signature"), &["tok123", &ts, &nonce]));
                let message = match key {
                    None => signed.body.clone().into_bytes(),
                    Some(key) => {
                        let encrypt = parse(signed.body.as_bytes()).expect("envelope").encrypt.expect("Encrypt");
                        let msg_signature = param("msg_signature").expect("msg_signature");
                        assert!(signature_matches(&msg_signature, &["tok123", &ts, &nonce, &encrypt]));
                        let decrypted = decrypt(&aes_key(key).expect("key"), &encrypt).expect("decrypts");
                        assert_eq!(decrypted.appid, APPID);
                        decrypted.message
                    }
                };
                let fields = parse(&message).expect("a message");
                assert_eq!(UserEvent::of(&fields), Some(UserEvent::AccountCancelled), "{format:?} {key:?}");
                assert_eq!((fields.open_id.as_deref(), fields.app_id.as_deref()), (Some(openid.as_str()), Some(APPID)));
            }
        }
    }

    #[test]
    fn it_refuses_what_wechat_could_not_send() {
        let sim = sim(PushFormat::Xml, Some("too-short"));
        let text = sim.text_message(APPID, "alice", "hi").expect("text");
        assert_eq!(
            sim.sign_push(APPID, &text),
            Err(PushError::Build("the EncodingAESKey is not 43 letters or digits"))
        );
        assert!(matches!(sim.text_message(APPID, "alice", "a]]>b"), Err(PushError::Build(_))));
        assert!(matches!(
            sim.event_message("wx0000000000000000", "alice", PushEvent::InfoModified),
            Err(PushError::NoTarget(_))
        ));
        assert!(matches!(sim.event_message(APPID, "nobody", PushEvent::InfoModified), Err(PushError::UnknownUser(_))));
    }
}
