//! The sign-ins without a browser: a mobile app's code from the WeChat SDK
//! (ExchangeMobileCode) and a mini program's `js_code` (SignInMiniProgram).

use super::OAuthService;
use super::convert::{scopes_to_proto, timestamp, user_info};
use super::validate::Violations;
use crate::config::Client;
use crate::consent;
use crate::error::ApiError;
use crate::proto;
use crate::secrets::AuthCode;
use crate::tokens::UsersRule;
use crate::wechat::AppKind;

impl OAuthService {
    pub(super) async fn exchange_mobile_code_inner(
        &self,
        client: &Client,
        req: proto::ExchangeMobileCodeRequest,
    ) -> Result<proto::ExchangeMobileCodeResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        let lang = v.lang(req.lang);
        v.code("code", &req.code);
        v.finish()?;
        let app = self.app_of_kind(client, &req.app, AppKind::MobileApp)?;
        let outcome = self.tokens.exchange_mobile(app, AuthCode::new(req.code), &client.name).await?;
        // Only a sign-in whose own grant reads the profile is shown one (`crate::consent`).
        let user_info = if req.include_user_info && consent::reads_profile(&outcome.scopes) {
            Some(user_info(self.tokens.userinfo(app, &outcome.openid, lang, true, UsersRule::Any).await?.profile))
        } else {
            None
        };
        Ok(proto::ExchangeMobileCodeResponse {
            app: app.name.clone(),
            openid: outcome.openid,
            unionid: outcome.unionid.unwrap_or_default(),
            scopes: scopes_to_proto(&outcome.scopes),
            access_token_expire_time: Some(timestamp(outcome.access_expires_at)),
            refresh_token_expire_time: Some(timestamp(outcome.refresh_expires_at)),
            user_info,
        })
    }

    pub(super) async fn sign_in_mini_program_inner(
        &self,
        client: &Client,
        req: proto::SignInMiniProgramRequest,
    ) -> Result<proto::SignInMiniProgramResponse, ApiError> {
        let mut v = Violations::default();
        v.named_app(&req.app);
        v.code("js_code", &req.js_code);
        v.finish()?;
        let app = self.app_of_kind(client, &req.app, AppKind::MiniProgram)?;
        let (openid, unionid) = self.tokens.sign_in_mini(app, &AuthCode::new(req.js_code), &client.name).await?;
        Ok(proto::SignInMiniProgramResponse { app: app.name.clone(), openid, unionid: unionid.unwrap_or_default() })
    }
}
