//! The tonic service `wxauth.v1.WeChatOAuthService`: each RPC validates its request,
//! authenticates the caller by client key, checks what the caller may do, and hands over to
//! [`Tokens`] / the store. No HTTP or Redis detail lives here; errors become statuses only
//! through [`ApiError::to_status`].
//!
//! Layout: this file holds the service, its app lookups and the tonic trait, each RPC one line
//! into [`OAuthService::run`] (`run`: the wrapper every RPC goes through — span, caller,
//! rate limit, deadline, metrics, status). The RPCs by family: `flows` (BuildAuthorizeUrl,
//! ExchangeCode: the browser sign-ins), `users` (RefreshToken, GetUserInfo, ValidateToken,
//! ForgetUser, FindAccounts), `sign_ins` (ExchangeMobileCode, SignInMiniProgram), `app_level`
//! (GetAppAccessToken, InvalidateAppAccessToken, SignJsSdkConfig, GetPhoneNumber,
//! DecryptMiniProgramData: what an app's own credentials buy), `events` (ReadUserEvents: the
//! caller's feed of user events).
//! What they
//! share: `validate` (a request's fields, every violation at once) and `convert` (the proto
//! forms of the answers).

mod app_level;
mod convert;
mod events;
mod flows;
mod run;
mod sign_ins;
#[cfg(test)]
mod tests;
mod users;
mod validate;

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Response, Status};

use crate::clock::Clock;
use crate::config::{self, Client, Settings};
use crate::error::ApiError;
use crate::grpc_gate::{Authenticated, ClientKeys};
use crate::limits::RateLimiters;
use crate::proto::{self, we_chat_o_auth_service_server::WeChatOAuthService};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::tokens::Tokens;
use crate::wechat::{App, AppKind, WechatClient};

/// The gRPC service.
#[derive(Clone, Debug)]
pub(crate) struct OAuthService {
    settings: Arc<Settings>,
    keys: ClientKeys,
    store: Store,
    wechat: WechatClient,
    tokens: Arc<Tokens>,
    clock: Clock,
    metrics: Arc<Metrics>,
    limiters: Arc<RateLimiters>,
}

impl OAuthService {
    /// Builds the service over shared parts.
    pub(crate) fn new(
        settings: Arc<Settings>,
        store: Store,
        wechat: WechatClient,
        tokens: Arc<Tokens>,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        let keys = ClientKeys::new(&settings.clients);
        let limiters = Arc::new(RateLimiters::new(&settings.clients, Arc::clone(&metrics)));
        Self { settings, keys, store, wechat, tokens, clock, metrics, limiters }
    }

    /// The clients' keys, for the gRPC gate's check of a call's headers (the same check as
    /// [`Self::authenticate`]'s).
    pub(crate) fn client_keys(&self) -> ClientKeys {
        self.keys.clone()
    }

    /// The client whose key the `authorization: Bearer <key>` metadata carries: the gate's
    /// verdict when the call came through it ([`Authenticated`]), else checked here.
    fn authenticate(&self, extensions: &Extensions, metadata: &MetadataMap) -> Result<&Client, ApiError> {
        let index = match extensions.get::<Authenticated>() {
            Some(&Authenticated(index)) => index,
            None => self.keys.authenticate(metadata.as_ref())?,
        };
        self.settings.clients.get(index).ok_or(ApiError::Unauthenticated)
    }

    /// The app a request names (or its device's default), if this client may use it.
    fn app_for(&self, client: &Client, name: &str, device: Option<config::Device>) -> Result<&App, ApiError> {
        let app = self.settings.resolve_app(name, device).ok_or_else(|| {
            if name.is_empty() {
                ApiError::invalid("device", "no app is configured as this device's default")
            } else {
                ApiError::invalid("app", "no app of that name")
            }
        })?;
        if !client.apps.contains(&app.name) {
            return Err(ApiError::AppNotAllowed);
        }
        Ok(app)
    }

    /// The app a sign-in RPC names, if this client may use it and it is of `kind`.
    fn app_of_kind(&self, client: &Client, name: &str, kind: AppKind) -> Result<&App, ApiError> {
        let app = self.app_for(client, name, None)?;
        if app.kind != kind {
            return Err(ApiError::invalid("app", format!("not a {} app", kind.as_str())));
        }
        Ok(app)
    }
}

#[tonic::async_trait]
impl WeChatOAuthService for OAuthService {
    async fn build_authorize_url(
        &self,
        request: Request<proto::BuildAuthorizeUrlRequest>,
    ) -> Result<Response<proto::BuildAuthorizeUrlResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl", request, Self::build_authorize_url_inner).await
    }

    async fn exchange_code(
        &self,
        request: Request<proto::ExchangeCodeRequest>,
    ) -> Result<Response<proto::ExchangeCodeResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/ExchangeCode", request, Self::exchange_code_inner).await
    }

    async fn refresh_token(
        &self,
        request: Request<proto::RefreshTokenRequest>,
    ) -> Result<Response<proto::RefreshTokenResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/RefreshToken", request, Self::refresh_token_inner).await
    }

    async fn get_user_info(
        &self,
        request: Request<proto::GetUserInfoRequest>,
    ) -> Result<Response<proto::GetUserInfoResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/GetUserInfo", request, Self::get_user_info_inner).await
    }

    async fn validate_token(
        &self,
        request: Request<proto::ValidateTokenRequest>,
    ) -> Result<Response<proto::ValidateTokenResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/ValidateToken", request, Self::validate_token_inner).await
    }

    async fn forget_user(
        &self,
        request: Request<proto::ForgetUserRequest>,
    ) -> Result<Response<proto::ForgetUserResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/ForgetUser", request, Self::forget_user_inner).await
    }

    async fn exchange_mobile_code(
        &self,
        request: Request<proto::ExchangeMobileCodeRequest>,
    ) -> Result<Response<proto::ExchangeMobileCodeResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/ExchangeMobileCode", request, Self::exchange_mobile_code_inner).await
    }

    async fn sign_in_mini_program(
        &self,
        request: Request<proto::SignInMiniProgramRequest>,
    ) -> Result<Response<proto::SignInMiniProgramResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/SignInMiniProgram", request, Self::sign_in_mini_program_inner).await
    }

    async fn find_accounts(
        &self,
        request: Request<proto::FindAccountsRequest>,
    ) -> Result<Response<proto::FindAccountsResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/FindAccounts", request, Self::find_accounts_inner).await
    }

    async fn get_app_access_token(
        &self,
        request: Request<proto::GetAppAccessTokenRequest>,
    ) -> Result<Response<proto::GetAppAccessTokenResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/GetAppAccessToken", request, Self::get_app_access_token_inner).await
    }

    async fn invalidate_app_access_token(
        &self,
        request: Request<proto::InvalidateAppAccessTokenRequest>,
    ) -> Result<Response<proto::InvalidateAppAccessTokenResponse>, Status> {
        self.run(
            "wxauth.v1.WeChatOAuthService/InvalidateAppAccessToken",
            request,
            Self::invalidate_app_access_token_inner,
        )
        .await
    }

    async fn sign_js_sdk_config(
        &self,
        request: Request<proto::SignJsSdkConfigRequest>,
    ) -> Result<Response<proto::SignJsSdkConfigResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/SignJsSdkConfig", request, Self::sign_js_sdk_config_inner).await
    }

    async fn decrypt_mini_program_data(
        &self,
        request: Request<proto::DecryptMiniProgramDataRequest>,
    ) -> Result<Response<proto::DecryptMiniProgramDataResponse>, Status> {
        let rpc = "wxauth.v1.WeChatOAuthService/DecryptMiniProgramData";
        self.run(rpc, request, Self::decrypt_mini_program_data_inner).await
    }

    async fn get_phone_number(
        &self,
        request: Request<proto::GetPhoneNumberRequest>,
    ) -> Result<Response<proto::GetPhoneNumberResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/GetPhoneNumber", request, Self::get_phone_number_inner).await
    }

    async fn read_user_events(
        &self,
        request: Request<proto::ReadUserEventsRequest>,
    ) -> Result<Response<proto::ReadUserEventsResponse>, Status> {
        self.run("wxauth.v1.WeChatOAuthService/ReadUserEvents", request, Self::read_user_events_inner).await
    }
}
