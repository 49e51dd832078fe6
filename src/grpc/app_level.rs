//! The app-level RPCs (issue 21): what an app's own credentials buy, for the clients granted
//! it (`clients.<name>.grants`): GetAppAccessToken, InvalidateAppAccessToken, SignJsSdkConfig,
//! GetPhoneNumber, DecryptMiniProgramData.
//! The appsecret, and every credential but the one a grant hands out, stay in wxauth.

use super::OAuthService;
use super::convert::timestamp;
use super::validate::{Violations, is_openid};
use crate::config::{Client, Grant, Users};
use crate::error::ApiError;
use crate::proto;
use crate::secrets::AuthCode;
use crate::wechat::{App, decrypt_open_data, jssdk_signature};

/// At most this many `js_api_list` names (WeChat's JS interfaces number about 60).
const MAX_JS_APIS: usize = 100;

/// The longest `encrypted_data` taken (base64): open data is a few kilobytes.
const MAX_ENCRYPTED_DATA: usize = 64 * 1024;

/// The longest token a product may report (WeChat: "至少要保留512个字符"; twice that for room).
const MAX_REPORTED_TOKEN: usize = 1024;

impl OAuthService {
    pub(super) async fn get_app_access_token_inner(
        &self,
        client: &Client,
        req: proto::GetAppAccessTokenRequest,
    ) -> Result<proto::GetAppAccessTokenResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        v.finish()?;
        let app = self.granted_app(client, &req.app, Grant::AppAccessToken)?;
        let token = self.tokens.app_access_token(app).await?;
        Ok(proto::GetAppAccessTokenResponse {
            access_token: token.value.secret().to_owned(),
            expire_time: Some(timestamp(token.expires_at)),
        })
    }

    pub(super) async fn invalidate_app_access_token_inner(
        &self,
        client: &Client,
        req: proto::InvalidateAppAccessTokenRequest,
    ) -> Result<proto::InvalidateAppAccessTokenResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        if req.access_token.is_empty() || req.access_token.len() > MAX_REPORTED_TOKEN {
            v.add("access_token", format!("1..{MAX_REPORTED_TOKEN} characters"));
        }
        v.finish()?;
        let app = self.granted_app(client, &req.app, Grant::AppAccessToken)?;
        let done = self.tokens.invalidate_app_access_token(app, &req.access_token).await?;
        Ok(proto::InvalidateAppAccessTokenResponse {
            access_token: done.credential.value.secret().to_owned(),
            expire_time: Some(timestamp(done.credential.expires_at)),
            replaced: done.replaced,
        })
    }

    pub(super) async fn sign_js_sdk_config_inner(
        &self,
        client: &Client,
        req: proto::SignJsSdkConfigRequest,
    ) -> Result<proto::SignJsSdkConfigResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        if req.url.is_empty() {
            v.add("url", "required: the page's URL (location.href)");
        }
        let names_ok = req
            .js_api_list
            .iter()
            .all(|n| (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if req.js_api_list.len() > MAX_JS_APIS || !names_ok {
            v.add("js_api_list", format!("at most {MAX_JS_APIS} names, each 1..64 of [A-Za-z0-9_]"));
        }
        v.finish()?;
        let app = self.granted_app(client, &req.app, Grant::Jssdk)?;
        // A product signs only its own pages: the URL is judged as a return URL is (parsed as
        // a browser does, its fragment cut), by the client's own patterns.
        let page = client.allowlist.check(&req.url).map_err(|r| ApiError::ReturnUrlNotAllowed(r.code()))?;
        let ticket = self.tokens.jsapi_ticket(app).await?;
        let (timestamp, nonce_str) = (self.clock.now_secs(), crate::random_id(16));
        let signature = jssdk_signature(ticket.value.secret(), &nonce_str, timestamp, page.as_str());
        Ok(proto::SignJsSdkConfigResponse {
            app_id: app.appid.clone(),
            timestamp,
            nonce_str,
            signature,
            js_api_list: req.js_api_list,
            url: page.as_str().to_owned(),
        })
    }

    pub(super) async fn decrypt_mini_program_data_inner(
        &self,
        client: &Client,
        req: proto::DecryptMiniProgramDataRequest,
    ) -> Result<proto::DecryptMiniProgramDataResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        if !is_openid(&req.openid) {
            v.add("openid", "1..64 of [A-Za-z0-9_-]");
        }
        if req.encrypted_data.is_empty() || req.encrypted_data.len() > MAX_ENCRYPTED_DATA {
            v.add("encrypted_data", format!("1..{MAX_ENCRYPTED_DATA} characters of base64"));
        }
        if req.iv.len() != 24 {
            v.add("iv", "24 characters: base64 of 16 bytes");
        }
        v.finish()?;
        let app = self.granted_app(client, &req.app, Grant::MiniData)?;
        // As every per-user RPC: a `users = "own"` client reaches only users it signed in; any
        // other answers as an unknown user does.
        if client.users == Users::Own && self.store.get_reach(&app.name, &req.openid, &client.name).await?.is_none() {
            return Err(ApiError::TokenNotFound);
        }
        let session = self.store.get_session(&app.name, &req.openid).await?.ok_or(ApiError::TokenNotFound)?;
        let data = decrypt_open_data(session.session_key.secret(), &req.encrypted_data, &req.iv, &app.appid)
            .map_err(|e| ApiError::invalid("encrypted_data", e.to_string()))?;
        Ok(proto::DecryptMiniProgramDataResponse { json: data.to_string() })
    }

    pub(super) async fn get_phone_number_inner(
        &self,
        client: &Client,
        req: proto::GetPhoneNumberRequest,
    ) -> Result<proto::GetPhoneNumberResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        v.code("code", &req.code);
        if req.keep && !is_openid(&req.openid) {
            v.add("openid", "required with keep: the user's openid, 1..64 of [A-Za-z0-9_-]");
        } else if !req.keep && !req.openid.is_empty() {
            v.add("openid", "only with keep: the user the number is kept with");
        }
        v.finish()?;
        let app = self.granted_app(client, &req.app, Grant::PhoneNumber)?;
        if req.keep {
            // Before WeChat is asked: a number that cannot be kept must not spend the code.
            self.tokens.may_keep_phone(app, &req.openid, super::users::reach(client)).await?;
        }
        let result = self.tokens.phone_number(app, &AuthCode::new(req.code)).await;
        // WeChat bills every number: counted by app and client. The number itself is in no
        // label, log or error.
        let outcome = result.as_ref().map_or_else(ApiError::reason, |_| "ok");
        self.metrics.phone_numbers.with_label_values(&[&app.name, &client.name, outcome]).inc();
        let info = result?;
        if req.keep {
            // WeChat's answer names no user: the number is kept with the one the caller named
            // and reaches (docs/design.md §12.9).
            self.tokens.keep_phone(app, &req.openid, &client.name, &info).await?;
        }
        Ok(proto::GetPhoneNumberResponse {
            phone_number: info.phone_number.secret().to_owned(),
            pure_phone_number: info.pure_phone_number.secret().to_owned(),
            country_code: info.country_code,
        })
    }

    /// The app an app-level RPC names, if the client may use it, holds `grant`, and the app is
    /// of a kind the grant serves. The grant is checked before the app's kind: a client without
    /// it learns nothing of the app.
    fn granted_app(&self, client: &Client, name: &str, grant: Grant) -> Result<&App, ApiError> {
        let app = self.app_for(client, name, None)?;
        if !client.holds(grant) {
            return Err(ApiError::GrantMissing(grant));
        }
        let kinds = grant.kinds();
        if !kinds.contains(&app.kind) {
            let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::invalid("app", format!("not an app of kind {}", names.join(" or "))));
        }
        Ok(app)
    }
}
