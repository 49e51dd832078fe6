//! A pushed message's fields, from XML (`<xml><Name><![CDATA[..]]></Name>…</xml>`, every
//! official-account push) or JSON (`{"Name": "..", …}`, the JSON samples of the authorization
//! events and of mini programs' push). Only the top-level text fields wxauth reads are kept;
//! everything else is passed on untouched (the forward sends the original bytes).

use serde_json::Value;

/// The fields of a pushed message (plaintext, or a safe-mode envelope) that wxauth reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// `ToUserName`: the official account's original id (`gh_…`).
    pub to_user: Option<String>,
    /// `Encrypt`: a safe-mode envelope's ciphertext.
    pub encrypt: Option<String>,
    /// `MsgType`: `event`, `text`, ...
    pub msg_type: Option<String>,
    /// `Event`: the event's name, for `MsgType` `event`.
    pub event: Option<String>,
    /// `OpenID`: the user an authorization event is about.
    pub open_id: Option<String>,
    /// `AppID`: the app whose authorization changed.
    pub app_id: Option<String>,
    /// `RevokeInfo`: what was withdrawn (its values are not documented).
    pub revoke_info: Option<String>,
    /// `CreateTime`: when WeChat made the message, Unix seconds (the doc's samples of the
    /// authorization events carry it, XML and JSON).
    pub create_time: Option<String>,
}

/// Why a body is not a message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Neither an `<xml>` document nor a JSON object (a DTD is refused too).
    #[error("not a WeChat message")]
    Form,
}

/// The largest number of XML nodes a message may have: a WeChat message has a few dozen.
const MAX_NODES: u32 = 4096;

/// Reads the fields of a message, XML or JSON by its first non-blank byte.
pub fn parse(body: &[u8]) -> Result<Fields, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::Form)?;
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if trimmed.starts_with('{') { parse_json(trimmed) } else { parse_xml(trimmed) }
}

fn parse_xml(text: &str) -> Result<Fields, ParseError> {
    // No DTD (so no entity expansion) and a node budget: the body is untrusted until its
    // signature is checked, and it is parsed before that for the safe mode's `Encrypt`.
    let options = roxmltree::ParsingOptions { allow_dtd: false, nodes_limit: MAX_NODES, ..Default::default() };
    let document = roxmltree::Document::parse_with_options(text, options).map_err(|_| ParseError::Form)?;
    let root = document.root_element();
    if root.tag_name().name() != "xml" {
        return Err(ParseError::Form);
    }
    let mut fields = Fields::default();
    for child in root.children().filter(roxmltree::Node::is_element) {
        // Text and CDATA sections of the element (whitespace around a CDATA section is not
        // part of the value, as WeChat's own samples read it).
        let value: String = child.children().filter(roxmltree::Node::is_text).filter_map(|n| n.text()).collect();
        set(&mut fields, child.tag_name().name(), value.trim().to_owned());
    }
    Ok(fields)
}

fn parse_json(text: &str) -> Result<Fields, ParseError> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else { return Err(ParseError::Form) };
    let mut fields = Fields::default();
    for (name, value) in object {
        let value = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        // WeChat's JSON sample of the authorization events writes `" OpenID"`, `" AppID"` and
        // `" RevokeInfo"` with a leading space: a name is read trimmed.
        set(&mut fields, name.trim(), value);
    }
    Ok(fields)
}

/// Keeps `value` under its field; the first of a repeated name wins.
fn set(fields: &mut Fields, name: &str, value: String) {
    let slot = match name {
        "ToUserName" => &mut fields.to_user,
        "Encrypt" => &mut fields.encrypt,
        "MsgType" => &mut fields.msg_type,
        "Event" => &mut fields.event,
        "OpenID" => &mut fields.open_id,
        "AppID" => &mut fields.app_id,
        "RevokeInfo" => &mut fields.revoke_info,
        "CreateTime" => &mut fields.create_time,
        _ => return,
    };
    slot.get_or_insert(value);
}

/// The authorization events (授权用户资料变更) wxauth acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserEvent {
    /// `user_info_modified`: the platform cleaned the user's avatar or nickname.
    InfoModified,
    /// `user_authorization_revoke`: the user withdrew the authorization.
    AuthorizationRevoked,
    /// `user_authorization_cancellation`: the user closed their WeChat account.
    AccountCancelled,
}

impl UserEvent {
    /// Every event, in the order of WeChat's doc.
    pub const ALL: [UserEvent; 3] =
        [UserEvent::InfoModified, UserEvent::AuthorizationRevoked, UserEvent::AccountCancelled];

    /// WeChat's name of the event (`Event`), also the `event` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            UserEvent::InfoModified => "user_info_modified",
            UserEvent::AuthorizationRevoked => "user_authorization_revoke",
            UserEvent::AccountCancelled => "user_authorization_cancellation",
        }
    }

    /// The event a message is, if it is one of these.
    pub fn of(fields: &Fields) -> Option<UserEvent> {
        if fields.msg_type.as_deref() != Some("event") {
            return None;
        }
        let event = fields.event.as_deref()?;
        Self::ALL.into_iter().find(|e| e.as_str() == event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The XML sample of WeChat's doc (服务号 H5, "Authorized User Information Change").
    const DOC_XML: &str = "<xml>\n<ToUserName><![CDATA[gh_870882ca4b1]]></ToUserName>\n<FromUserName><![CDATA[owAqB1v0ahK_Xlc7GshIDdf2yf7E]]></FromUserName>\n<CreateTime>1626857200</CreateTime>\n<MsgType><![CDATA[event]]></MsgType>\n<Event><![CDATA[user_authorization_revoke]]></Event>\n<OpenID><![CDATA[owAqB1nqaOYYWl0Ng484G2z5NIwU]]></OpenID>\n<AppID><![CDATA[wx13974bf780d3dc89]]></AppID>\n<RevokeInfo><![CDATA[1]]></RevokeInfo>\n</xml>";

    #[test]
    fn the_docs_xml_sample_is_a_revoke() {
        let fields = parse(DOC_XML.as_bytes()).expect("parses");
        assert_eq!(UserEvent::of(&fields), Some(UserEvent::AuthorizationRevoked));
        assert_eq!(fields.open_id.as_deref(), Some("owAqB1nqaOYYWl0Ng484G2z5NIwU"));
        assert_eq!(fields.app_id.as_deref(), Some("wx13974bf780d3dc89"));
        assert_eq!(fields.revoke_info.as_deref(), Some("1"));
        assert_eq!(fields.to_user.as_deref(), Some("gh_870882ca4b1"));
        assert_eq!(fields.create_time.as_deref(), Some("1626857200"));
    }

    /// The doc's JSON sample, with its names as written (`" OpenID"`), less the trailing comma
    /// that no JSON parser takes (docs/wechat.md lists it among what cannot be confirmed).
    #[test]
    fn the_docs_json_sample_is_a_revoke() {
        let json = r#"{"ToUserName": "gh_870882ca4b1", "FromUserName": "oaKk346BaWE-eIn4oSRWbaM9vR7s", "CreateTime": 1627359464, "MsgType": "event", "Event": "user_authorization_revoke", " OpenID": "oaKk343WOktAaT2ygsX138BGblrg", " AppID": "wx13974bf780d3dc89", " RevokeInfo": "201"}"#;
        let fields = parse(json.as_bytes()).expect("parses");
        assert_eq!(UserEvent::of(&fields), Some(UserEvent::AuthorizationRevoked));
        assert_eq!(fields.open_id.as_deref(), Some("oaKk343WOktAaT2ygsX138BGblrg"));
        assert_eq!(fields.revoke_info.as_deref(), Some("201"));
        assert_eq!(fields.create_time.as_deref(), Some("1627359464"), "a JSON number, read as its digits");
    }

    #[test]
    fn other_messages_and_other_events_are_not_authorization_events() {
        let text = "<xml><MsgType><![CDATA[text]]></MsgType><Event>user_authorization_revoke</Event></xml>";
        assert_eq!(UserEvent::of(&parse(text.as_bytes()).expect("parses")), None);
        let subscribe = "<xml><MsgType>event</MsgType><Event><![CDATA[subscribe]]></Event></xml>";
        assert_eq!(UserEvent::of(&parse(subscribe.as_bytes()).expect("parses")), None);
        let envelope = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><Encrypt><![CDATA[abc=]]></Encrypt></xml>";
        assert_eq!(parse(envelope.as_bytes()).expect("parses").encrypt.as_deref(), Some("abc="));
    }

    #[test]
    fn what_is_not_a_message_is_refused() {
        let dtd = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY a \"b\">]><xml><Event>&a;</Event></xml>";
        for bad in ["", "[]", "{", "<html></html>", "<xml>", "\"x\"", dtd] {
            assert_eq!(parse(bad.as_bytes()), Err(ParseError::Form), "{bad}");
        }
        assert_eq!(parse(&[0xff, 0xfe]), Err(ParseError::Form));
    }
}
