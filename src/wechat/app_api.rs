//! The app-level endpoints (issue 21): the app's own access token (`cgi-bin/stable_token`), its
//! `jsapi_ticket` (`cgi-bin/ticket/getticket`) and what the token buys for a mini program, the
//! phone-number button's number (`wxa/business/getuserphonenumber`). Facts and sources:
//! docs/wechat.md (the rows on `stable_token`, `jsapi_ticket` and the phone number).

use serde::Deserialize;

use super::client::Endpoint;
use super::{App, WechatClient, WechatError};
use crate::secrets::{AppCredentialValue, AuthCode};

/// A credential WeChat issued: `stable_token`'s `{access_token, expires_in}` or
/// `getticket`'s `{ticket, expires_in}` (with `errcode: 0`).
#[derive(Debug, Deserialize)]
pub struct IssuedCredential {
    /// The token or ticket.
    #[serde(alias = "access_token", alias = "ticket")]
    pub value: AppCredentialValue,
    /// Its life left in seconds ("目前是7200秒之内的值": less near the end of a token's life,
    /// when normal mode answers the token it gave before).
    pub expires_in: i64,
}

impl WechatClient {
    /// The app's access token from `cgi-bin/stable_token` (POST JSON, `grant_type =
    /// client_credential`). Normal mode (`force = false`) answers the same token while it
    /// lives, so it is retried like any idempotent call; a forced refresh invalidates the token
    /// before it and counts against WeChat's 20 a day, so it is sent once, never retried.
    #[tracing::instrument(name = "wechat.stable_token", skip_all, fields(app = %app.name, force))]
    pub async fn stable_token(&self, app: &App, force: bool) -> Result<IssuedCredential, WechatError> {
        let body = serde_json::json!({
            "grant_type": "client_credential",
            "appid": app.appid,
            "secret": app.secret.secret(),
            "force_refresh": force,
        });
        if force {
            return self.call_json(app, Endpoint::StableToken, &[], &body).await;
        }
        self.retrying(|| self.call_json(app, Endpoint::StableToken, &[], &body)).await
    }

    /// The phone number behind a mini program's phone-number button `code`
    /// (`wxa/business/getuserphonenumber?access_token=..`, POST `{code}`). Sent once, never
    /// retried: a code works once ("每个 code 只能使用一次").
    #[tracing::instrument(name = "wechat.getuserphonenumber", skip_all, fields(app = %app.name))]
    pub async fn phone_number(
        &self,
        app: &App,
        token: &AppCredentialValue,
        code: &AuthCode,
    ) -> Result<PhoneInfo, WechatError> {
        let query = [("access_token", token.secret())];
        let body = serde_json::json!({ "code": code.secret() });
        let reply: PhoneReply = self.call_json(app, Endpoint::PhoneNumber, &query, &body).await?;
        Ok(reply.phone_info)
    }

    /// The app's `jsapi_ticket` (`cgi-bin/ticket/getticket?access_token=..&type=jsapi`),
    /// fetched with its access token. Retried: a ticket fetched twice only costs quota.
    #[tracing::instrument(name = "wechat.getticket", skip_all, fields(app = %app.name))]
    pub async fn jsapi_ticket(&self, app: &App, token: &AppCredentialValue) -> Result<IssuedCredential, WechatError> {
        let query = [("access_token", token.secret()), ("type", "jsapi")];
        self.call_retrying(app, Endpoint::JsapiTicket, &query).await
    }
}

/// A phone number (`phoneNumber`, `purePhoneNumber`): personal data, never in a log or a
/// `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// The number itself: only for the caller's answer.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneNumber([redacted])")
    }
}

/// `wxa/business/getuserphonenumber`'s `phone_info`.
#[derive(Debug, Deserialize)]
pub struct PhoneInfo {
    /// The number with its country code for numbers outside China ("国外手机号会有区号").
    #[serde(rename = "phoneNumber")]
    pub phone_number: PhoneNumber,
    /// The number without country code.
    #[serde(rename = "purePhoneNumber")]
    pub pure_phone_number: PhoneNumber,
    /// The country code: a string in the doc's table, a number in its sample; read as text.
    #[serde(rename = "countryCode", deserialize_with = "text_or_number")]
    pub country_code: String,
    /// Which mini program it was given for, and when.
    pub watermark: Watermark,
}

/// The data watermark WeChat adds.
#[derive(Debug, Deserialize)]
pub struct Watermark {
    /// The mini program's appid.
    pub appid: String,
    /// When the user shared the number, Unix seconds.
    pub timestamp: i64,
}

#[derive(Deserialize)]
struct PhoneReply {
    phone_info: PhoneInfo,
}

fn text_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Text(String),
        Number(i64),
    }
    Ok(match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(s) => s,
        TextOrNumber::Number(n) => n.to_string(),
    })
}
