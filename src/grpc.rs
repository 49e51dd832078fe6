//! The tonic service `wxauth.v1.WeChatOAuthService`: each RPC validates its request,
//! authenticates the caller by client key, checks what the caller may do, and hands over to
//! [`Tokens`] / the store. No HTTP or Redis detail lives here; errors become statuses only
//! through [`ApiError::to_status`].

use std::sync::Arc;
use std::time::Duration;

use prost_types::Timestamp;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::clock::{Clock, secs};
use crate::config::{self, Client, Family, Settings, Users};
use crate::consent::{self, Grant};
use crate::error::{ApiError, FieldViolation};
use crate::grpc_gate::ClientKeys;
use crate::limits::RateLimiters;
use crate::proto::{self, we_chat_o_auth_service_server::WeChatOAuthService};
use crate::secrets::AuthCode;
use crate::store::{Admission, Flow, Store};
use crate::telemetry::{self, Metrics};
use crate::tokens::{Tokens, UsersRule};
use crate::wechat::{App, AppKind, AuthorizeParams, Lang, Profile, Scope, WechatClient, WxLoginOptions, WxLoginParams};

/// Longest `return_url` accepted.
pub const MAX_RETURN_URL: usize = 2048;
/// Longest caller `state` (kept server-side, never sent to WeChat).
pub const MAX_STATE: usize = 512;
/// Longest browser User-Agent accepted.
pub const MAX_USER_AGENT: usize = 1024;
/// Longest code accepted (WeChat's are 32 characters).
pub const MAX_CODE: usize = 256;
/// Longest `wx_login_options.href` (a stylesheet URL on WeChat's QR link) accepted.
pub const MAX_HREF: usize = 1024;
/// Length of a flow id: 22 random alphanumerics (≈ 131 bits) and a 128-bit tag naming its
/// client and app, well inside WeChat's 128-byte `state`.
pub use crate::store::FLOW_ID_LEN;

/// The gRPC service.
#[derive(Clone, Debug)]
pub struct OAuthService {
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
    pub fn new(
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
    pub fn client_keys(&self) -> ClientKeys {
        self.keys.clone()
    }

    /// The client whose key the `authorization: Bearer <key>` metadata carries.
    fn authenticate(&self, metadata: &MetadataMap) -> Result<&Client, ApiError> {
        let index = self.keys.authenticate(metadata.as_ref())?;
        Ok(&self.settings.clients[index])
    }

    /// Runs one RPC: authenticate, then the body within the caller's deadline (tonic does not
    /// pass `grpc-timeout` on by itself), then map the error.
    async fn run<Req, Res>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        body: impl AsyncFnOnce(&Self, &Client, Req) -> Result<Res, ApiError>,
    ) -> Result<Response<Res>, Status> {
        // `rpc` is the full gRPC name, a static string: no per-request formatting.
        let method = rpc.rsplit('/').next().unwrap_or(rpc);
        // The span is made here, not by `#[instrument]`, so it takes the caller's trace
        // context (W3C `traceparent`) before it starts.
        let span = tracing::info_span!(
            "rpc",
            otel.name = rpc,
            rpc.system = "grpc",
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        telemetry::adopt_remote_parent(&span, request.metadata());
        let started = std::time::Instant::now();
        let deadline = grpc_timeout(request.metadata());
        let result = async {
            let client = self.authenticate(request.metadata())?;
            // The client's own rate limit, before any store or WeChat work.
            self.limiters.check(client, method)?;
            let work = body(self, client, request.into_inner());
            match deadline {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or(Err(ApiError::DeadlineExceeded)),
                None => work.await,
            }
        }
        .instrument(span.clone())
        .await;
        let code = match &result {
            Ok(_) => "OK",
            Err(error) => {
                span.in_scope(|| {
                    tracing::info!(method, reason = error.reason(), errcode = error.errcode(), "rpc failed")
                });
                code_name(error.code())
            }
        };
        span.record("rpc.grpc.status_code", code);
        self.metrics.rpc_requests.with_label_values(&[method, code]).inc();
        self.metrics.rpc_duration.with_label_values(&[method, code]).observe(started.elapsed().as_secs_f64());
        result.map(Response::new).map_err(|e| e.to_status())
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

    async fn build_authorize_url_inner(
        &self,
        client: &Client,
        req: proto::BuildAuthorizeUrlRequest,
    ) -> Result<proto::BuildAuthorizeUrlResponse, ApiError> {
        let mut v = Violations::default();
        v.app(&req.app);
        let device = if req.app.is_empty() && req.device == 0 && !req.user_agent.is_empty() {
            Some(device_of_browser(&req.user_agent))
        } else {
            v.device(req.device, &req.app)
        };
        if req.user_agent.len() > MAX_USER_AGENT {
            v.add("user_agent", format!("at most {MAX_USER_AGENT} bytes"));
        }
        let scope = v.scope(req.scope);
        if req.return_url.is_empty() {
            v.add("return_url", "required");
        } else if req.return_url.len() > MAX_RETURN_URL {
            v.add("return_url", format!("at most {MAX_RETURN_URL} bytes"));
        }
        if req.state.len() > MAX_STATE {
            v.add("state", format!("at most {MAX_STATE} bytes"));
        }
        let wx_login_options = v.wx_login_options(req.wx_login_options.unwrap_or_default());
        v.finish()?;
        let app = self.app_for(client, &req.app, device)?;
        if !app.kind.has_authorize_page() {
            let message = format!("a {} has no authorize page (its sign-in has an RPC of its own)", app.kind.as_str());
            return Err(ApiError::invalid("app", message));
        }
        let scope = scope.unwrap_or_else(|| app.kind.default_scope());
        if !app.kind.allows(scope) {
            return Err(ApiError::invalid("scope", format!("{} is not a scope of this app's kind", scope.as_str())));
        }
        let return_url = client.allowlist.check(&req.return_url).map_err(|r| {
            self.metrics.return_url_refusals.with_label_values(&[r.code()]).inc();
            ApiError::ReturnUrlNotAllowed(r.code())
        })?;

        let (flow_id, start_token) = self.store.new_flow(&client.name, &app.name);
        let now = self.clock.now_secs();
        let flow = Flow {
            app: app.name.clone(),
            return_url: return_url.as_str().to_owned(),
            caller_state: req.state,
            scope: scope.as_str().to_owned(),
            caller: client.name.clone(),
            created_at: now,
            force_popup: req.force_popup,
        };
        self.start_flow(client, &flow_id, &flow).await?;
        self.metrics.flows_started.with_label_values(&[app.name.as_str()]).inc();
        let params = AuthorizeParams {
            app,
            redirect_uri: self.settings.server.callback_url.as_str(),
            scope,
            state: &flow_id,
            force_popup: req.force_popup,
        };
        let authorize_url = self.wechat.authorize_url(&params);
        // Only website apps have the embedded QR code (wxLogin.js frames `qrconnect`).
        let wx_login =
            (app.kind == AppKind::Website).then(|| wx_login(self.wechat.wx_login(&params, wx_login_options)));
        tracing::debug!(client = %client.name, app = %app.name, scope = scope.as_str(), "flow created");
        Ok(proto::BuildAuthorizeUrlResponse {
            authorize_url,
            flow_id,
            expire_time: Some(timestamp(now + secs(self.settings.flow.ttl))),
            app: app.name.clone(),
            scope: scope_to_proto(scope) as i32,
            wx_login,
            start_url: crate::relay::start_url(&self.settings.server.callback_url, &start_token),
        })
    }

    /// Stores a new flow and counts it against the client's `max_open_flows`. The two go out
    /// together (one round trip's wait, not two; different keys, so concurrent commands, not a
    /// pipeline): on the rare refusal the flow just written is deleted again, and when the
    /// write fails the place just counted is given back.
    async fn start_flow(&self, client: &Client, flow_id: &str, flow: &Flow) -> Result<(), ApiError> {
        let ttl = self.settings.flow.ttl;
        let (stored, admission) = tokio::join!(
            self.store.put_flow(flow_id, flow, ttl),
            self.store.admit_flow(&client.name, client.limits.max_open_flows, ttl, self.clock.now_ms()),
        );
        let slot = match admission? {
            Admission::Admitted(slot) => slot,
            Admission::Refused { retry_after } => {
                return Err(self.refuse_flow(client, flow_id, stored, retry_after).await);
            }
        };
        match stored {
            Ok(true) => Ok(()),
            failed => {
                if let Err(e) = self.store.release_flow_slot(&client.name, &slot).await {
                    // It frees itself when the flow would have expired.
                    tracing::warn!(error = %e, "open-flow place of an unwritten flow left to expire");
                }
                Err(failed.map_or_else(ApiError::from, |_| ApiError::Internal))
            }
        }
    }

    /// The open-flow cap's refusal: the flow written meanwhile is deleted, the refusal counted.
    async fn refuse_flow(
        &self,
        client: &Client,
        flow_id: &str,
        stored: Result<bool, crate::store::StoreError>,
        retry_after: Duration,
    ) -> ApiError {
        if matches!(stored, Ok(true))
            && let Err(e) = self.store.delete_flow(flow_id).await
        {
            // It expires by itself; it was never handed to the caller.
            tracing::warn!(error = %e, "refused flow left to expire");
        }
        let error = ApiError::TooManyOpenFlows { limit: client.limits.max_open_flows, retry_after };
        let labels = [client.name.as_str(), Family::Authorize.as_str(), error.reason()];
        self.metrics.client_refusals.with_label_values(&labels).inc();
        error
    }

    async fn exchange_code_inner(
        &self,
        client: &Client,
        req: proto::ExchangeCodeRequest,
    ) -> Result<proto::ExchangeCodeResponse, ApiError> {
        let mut v = Violations::default();
        v.app(&req.app);
        let lang = v.lang(req.lang);
        if !is_flow_id(&req.flow_id) {
            v.add("flow_id", format!("{FLOW_ID_LEN} characters of [A-Za-z0-9]: BuildAuthorizeUrlResponse.flow_id"));
        }
        v.code("code", &req.code);
        v.finish()?;
        let code = AuthCode::new(req.code);
        // The flow id names its client and app; `app`, when given, must be the flow's.
        let app = if req.app.is_empty() {
            self.app_of_flow(client, &req.flow_id)?
        } else {
            self.app_for(client, &req.app, None)?
        };
        let (outcome, new) = self.tokens.exchange(app, &req.flow_id, code, &client.name).await?;
        // The caller's own grant decides (`crate::consent`), never the token another product's
        // consent may have left.
        let grants_userinfo = consent::reads_profile(&outcome.scopes);
        // A snapshot-page user has no profile (WeChat answers 48001) and no stored token.
        let user_info = if req.include_user_info && grants_userinfo && !outcome.is_snapshot_user {
            // A new sign-in shows the profile as WeChat has it now (the user may just have
            // changed it); a replay of the same code answers from the profile cache.
            Some(user_info(self.tokens.userinfo(app, &outcome.openid, lang, new, UsersRule::Any).await?.profile))
        } else {
            None
        };
        Ok(proto::ExchangeCodeResponse {
            app: app.name.clone(),
            openid: outcome.openid,
            unionid: outcome.unionid.unwrap_or_default(),
            scopes: scopes_to_proto(&outcome.scopes),
            is_snapshot_user: outcome.is_snapshot_user,
            // Unset for a snapshot-page user: no token is kept.
            access_token_expire_time: (!outcome.is_snapshot_user).then(|| timestamp(outcome.access_expires_at)),
            refresh_token_expire_time: (!outcome.is_snapshot_user).then(|| timestamp(outcome.refresh_expires_at)),
            user_info,
        })
    }

    /// The app (of the client's) that `flow_id` was started in, from the id's tag alone; an
    /// exchange that names no app uses its flow's. Another client's flow names none of them.
    fn app_of_flow(&self, client: &Client, flow_id: &str) -> Result<&App, ApiError> {
        let mut apps = client.apps.iter().filter_map(|name| self.settings.apps.by_name.get(name));
        apps.find(|app| self.store.flow_is_of(flow_id, &client.name, &app.name)).ok_or(ApiError::CodeNotFromFlow)
    }

    async fn refresh_token_inner(
        &self,
        client: &Client,
        req: proto::RefreshTokenRequest,
    ) -> Result<proto::RefreshTokenResponse, ApiError> {
        let (app, openid) = self.user_request(client, &req.app, req.device, &req.openid, |_| ())?;
        // The claim check rides along a read; the forced refresh reads the record itself.
        let (grant, _) = self.tokens.reachable(app, &openid, reach(client), self.tokens.stored(app, &openid)).await?;
        let record = self.tokens.force_refresh(app, &openid).await?;
        Ok(proto::RefreshTokenResponse {
            access_token_expire_time: Some(timestamp(record.access_expires_at)),
            refresh_token_expire_time: Some(timestamp(record.refresh_expires_at)),
            scopes: scopes_to_proto(&scopes_of(grant, &record.scopes)),
        })
    }

    async fn get_user_info_inner(
        &self,
        client: &Client,
        req: proto::GetUserInfoRequest,
    ) -> Result<proto::GetUserInfoResponse, ApiError> {
        let mut lang = Lang::default();
        let (app, openid) =
            self.user_request(client, &req.app, req.device, &req.openid, |v| lang = v.lang(req.lang))?;
        let fetched = self.tokens.userinfo(app, &openid, lang, req.fresh, reach(client)).await?;
        Ok(proto::GetUserInfoResponse {
            user_info: Some(user_info(fetched.profile)),
            fetch_time: Some(timestamp(fetched.fetched_at)),
        })
    }

    async fn validate_token_inner(
        &self,
        client: &Client,
        req: proto::ValidateTokenRequest,
    ) -> Result<proto::ValidateTokenResponse, ApiError> {
        let (app, openid) = self.user_request(client, &req.app, req.device, &req.openid, |_| ())?;
        let (grant, record, rejected) = self.tokens.validate(app, &openid, reach(client)).await?;
        Ok(proto::ValidateTokenResponse {
            valid: rejected.is_none(),
            errcode: rejected.and_then(|c| i32::try_from(c).ok()).unwrap_or(0),
            access_token_expire_time: Some(timestamp(record.access_expires_at)),
            scopes: scopes_to_proto(&scopes_of(grant, &record.scopes)),
        })
    }

    /// Validates the (app, device, openid) triple shared by the per-user RPCs.
    fn user_request(
        &self,
        client: &Client,
        app: &str,
        device: i32,
        openid: &str,
        more: impl FnOnce(&mut Violations),
    ) -> Result<(&App, String), ApiError> {
        let mut v = Violations::default();
        v.app(app);
        let device = v.device(device, app);
        if !is_openid(openid) {
            v.add("openid", "1..64 of [A-Za-z0-9_-]");
        }
        more(&mut v);
        v.finish()?;
        Ok((self.app_for(client, app, device)?, openid.to_owned()))
    }

    async fn forget_user_inner(
        &self,
        client: &Client,
        req: proto::ForgetUserRequest,
    ) -> Result<proto::ForgetUserResponse, ApiError> {
        let (app, openid) = self.user_request(client, &req.app, req.device, &req.openid, |_| ())?;
        // Every client of the app in config: a user's records go only when none reaches them.
        let clients: Vec<&str> =
            self.settings.clients.iter().filter(|c| c.apps.contains(&app.name)).map(|c| c.name.as_str()).collect();
        if client.users == Users::Own {
            // For this client alone; another product's user answers as an unknown one does.
            let had_token = self.tokens.forget_for(app, &openid, &client.name, &clients).await?;
            return Ok(proto::ForgetUserResponse { had_token, forgot_for_all_clients: false });
        }
        // A client trusted app-wide forgets the user for the whole app.
        let had_token = self.tokens.forget(app, &openid).await?;
        // After the record (a failure here leaves the claims, so a retry still reaches the
        // user): the user is forgotten for every client of the app.
        self.store.forget_reach(&app.name, &openid, &clients).await?;
        Ok(proto::ForgetUserResponse { had_token, forgot_for_all_clients: true })
    }

    /// The app a sign-in RPC names, if this client may use it and it is of `kind`.
    fn app_of_kind(&self, client: &Client, name: &str, kind: AppKind) -> Result<&App, ApiError> {
        let app = self.app_for(client, name, None)?;
        if app.kind != kind {
            return Err(ApiError::invalid("app", format!("not a {} app", kind.as_str())));
        }
        Ok(app)
    }

    async fn exchange_mobile_code_inner(
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

    async fn sign_in_mini_program_inner(
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

    async fn find_accounts_inner(
        &self,
        client: &Client,
        req: proto::FindAccountsRequest,
    ) -> Result<proto::FindAccountsResponse, ApiError> {
        if !is_openid(&req.unionid) {
            return Err(ApiError::invalid("unionid", "1..64 of [A-Za-z0-9_-]"));
        }
        let found = self.tokens.accounts(&req.unionid, &client.apps, reach(client)).await?;
        let accounts = found
            .into_iter()
            .map(|a| proto::Account {
                kind: kind_to_proto(AppKind::parse(&a.kind)) as i32,
                app: a.app,
                openid: a.openid,
                last_sign_in_time: Some(timestamp(a.last_sign_in)),
            })
            .collect();
        Ok(proto::FindAccountsResponse { accounts })
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
}

/// Collects every invalid field of a request before answering, so a caller fixes all at once.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: &'static str, description: impl Into<String>) {
        self.0.push(FieldViolation { field, description: description.into() });
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() { Ok(()) } else { Err(ApiError::InvalidArgument(self.0)) }
    }

    fn app(&mut self, app: &str) {
        // Empty means "the device's default app".
        if !app.is_empty() && !config::is_name(app) {
            self.add("app", "at most 64 of [a-z0-9_-]");
        }
    }

    /// An app that must be named (the sign-ins without a device default).
    fn named_app(&mut self, app: &str) {
        if !config::is_name(app) {
            self.add("app", "1..64 of [a-z0-9_-]");
        }
    }

    /// A code (`code`, `js_code`): 1..MAX_CODE printable ASCII characters; never echoed.
    fn code(&mut self, field: &'static str, code: &str) {
        if code.is_empty() || code.len() > MAX_CODE || !code.bytes().all(|b| b.is_ascii_graphic()) {
            self.add(field, format!("1..{MAX_CODE} printable ASCII characters"));
        }
    }

    fn device(&mut self, device: i32, app: &str) -> Option<config::Device> {
        match proto::Device::try_from(device) {
            Ok(proto::Device::Unspecified) => {
                if app.is_empty() {
                    self.add("app", "required when device is DEVICE_UNSPECIFIED");
                }
                None
            }
            Ok(proto::Device::Mobile) => Some(config::Device::Mobile),
            Ok(proto::Device::Pc) => Some(config::Device::Pc),
            Err(_) => {
                self.add("device", "unknown Device value");
                None
            }
        }
    }

    fn scope(&mut self, scope: i32) -> Option<Scope> {
        match proto::Scope::try_from(scope) {
            Ok(proto::Scope::Unspecified) => None,
            Ok(proto::Scope::SnsapiBase) => Some(Scope::Base),
            Ok(proto::Scope::SnsapiUserinfo) => Some(Scope::UserInfo),
            Ok(proto::Scope::SnsapiLogin) => Some(Scope::Login),
            Err(_) => {
                self.add("scope", "unknown Scope value");
                None
            }
        }
    }

    /// `style`: one of WeChat's; `href`: an https stylesheet URL that wxLogin.js can put on
    /// its QR link verbatim and that a product can echo into its page ([`is_stylesheet_href`]).
    fn wx_login_options(&mut self, options: proto::WxLoginOptions) -> WxLoginOptions {
        if !matches!(options.style.as_str(), "" | "black" | "white") {
            self.add("wx_login_options.style", "\"black\", \"white\" or empty");
        }
        if !options.href.is_empty() && !is_stylesheet_href(&options.href) {
            crate::telemetry::count_malformed_request("wx_login_href");
            self.add(
                "wx_login_options.href",
                format!(
                    "an absolute https URL of at most {MAX_HREF} bytes written as a URL parser writes it \
                     (lowercase host, a path), without userinfo, quotes, '<', '>', '\\', '&', '#' or whitespace"
                ),
            );
        }
        WxLoginOptions { self_redirect: options.self_redirect, style: options.style, href: options.href }
    }

    fn lang(&mut self, lang: i32) -> Lang {
        match proto::Lang::try_from(lang) {
            Ok(proto::Lang::Unspecified | proto::Lang::ZhCn) => Lang::ZhCn,
            Ok(proto::Lang::ZhTw) => Lang::ZhTw,
            Ok(proto::Lang::En) => Lang::En,
            Err(_) => {
                self.add("lang", "unknown Lang value");
                Lang::ZhCn
            }
        }
    }
}

/// The canonical gRPC code name, as gRPC's own metrics spell it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The device whose default app suits a browser: only WeChat's in-app browser opens
/// official-account pages (docs/design.md §10).
fn device_of_browser(user_agent: &str) -> config::Device {
    if crate::wechat::is_in_app_browser(user_agent) { config::Device::Mobile } else { config::Device::Pc }
}

/// The scopes to report to a client: what its own sign-ins were granted, as far as the token
/// serves them; a `users = "app"` client (`grant` is `None`): the token's.
fn scopes_of(grant: Option<Grant>, token_scopes: &[String]) -> Vec<String> {
    match grant {
        Some(grant) => grant.scopes_served_by(token_scopes),
        None => token_scopes.to_vec(),
    }
}

/// Whose users `client` reaches (`clients.<name>.users`).
fn reach(client: &Client) -> UsersRule<'_> {
    match client.users {
        Users::Own => UsersRule::Own(&client.name),
        Users::App => UsersRule::Any,
    }
}

fn is_flow_id(flow_id: &str) -> bool {
    flow_id.len() == FLOW_ID_LEN && flow_id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Whether `href` is fit to be put verbatim on wxLogin.js's QR link and into a product's page:
/// printable ASCII without the characters that would add or cut a parameter of that link
/// (`&`, `#`) or leave an HTML attribute or a script (quotes, `<`, `>`, `` ` ``), and an absolute
/// https URL with a host and no userinfo, written exactly as the URL parser writes it. The last
/// rule refuses every form a browser repairs into another URL (`https:cdn.example/x.css`,
/// `https://cdn.example\@evil/x.css`, an uppercase host, dot segments): what is checked is what
/// the browser loads.
fn is_stylesheet_href(href: &str) -> bool {
    let plain = href.len() <= MAX_HREF
        && href
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'`' | b'\\'));
    plain
        && url::Url::parse(href).is_ok_and(|url| {
            url.scheme() == "https"
                && url.host_str().is_some()
                && url.username().is_empty()
                && url.password().is_none()
                && url.as_str() == href
        })
}

/// The proto form of [`WxLoginParams`].
fn wx_login(p: WxLoginParams) -> proto::WxLogin {
    proto::WxLogin {
        appid: p.appid,
        scope: p.scope.to_owned(),
        redirect_uri: p.redirect_uri,
        state: p.state,
        self_redirect: p.options.self_redirect,
        style: p.options.style,
        href: p.options.href,
        script_url: p.script_url,
    }
}

fn is_openid(openid: &str) -> bool {
    (1..=64).contains(&openid.len()) && openid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn scope_to_proto(scope: Scope) -> proto::Scope {
    match scope {
        Scope::Base => proto::Scope::SnsapiBase,
        Scope::UserInfo => proto::Scope::SnsapiUserinfo,
        Scope::Login => proto::Scope::SnsapiLogin,
    }
}

fn kind_to_proto(kind: Option<AppKind>) -> proto::AppKind {
    match kind {
        Some(AppKind::OfficialAccount) => proto::AppKind::OfficialAccount,
        Some(AppKind::Website) => proto::AppKind::Website,
        Some(AppKind::MobileApp) => proto::AppKind::MobileApp,
        Some(AppKind::MiniProgram) => proto::AppKind::MiniProgram,
        None => proto::AppKind::Unspecified,
    }
}

fn scopes_to_proto(scopes: &[String]) -> Vec<i32> {
    scopes.iter().filter_map(|s| Scope::parse(s)).map(|s| scope_to_proto(s) as i32).collect()
}

fn user_info(p: Profile) -> proto::UserInfo {
    let sex = match p.sex {
        1 => proto::Sex::Male,
        2 => proto::Sex::Female,
        _ => proto::Sex::Unspecified,
    };
    proto::UserInfo {
        openid: p.openid,
        nickname: p.nickname,
        sex: sex as i32,
        province: p.province,
        city: p.city,
        country: p.country,
        head_image_url: p.headimgurl,
        privileges: p.privilege,
        unionid: p.unionid.unwrap_or_default(),
    }
}

fn timestamp(unix_secs: i64) -> Timestamp {
    Timestamp { seconds: unix_secs, nanos: 0 }
}

/// The caller's deadline from `grpc-timeout` (`<digits><H|M|S|m|u|n>`).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_is_parsed_in_every_unit() {
        let cases = [("5S", 5_000), ("250m", 250), ("2M", 120_000), ("1H", 3_600_000), ("1000u", 1)];
        for (header, ms) in cases {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", header.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&metadata), Some(Duration::from_millis(ms)), "{header}");
        }
        let mut bad = MetadataMap::new();
        bad.insert("grpc-timeout", "xS".parse().expect("ascii"));
        assert_eq!(grpc_timeout(&bad), None);
    }

    #[test]
    fn wx_login_styles_are_wechats_and_hrefs_plain_https_urls() {
        let mut v = Violations::default();
        for style in ["", "black", "white"] {
            v.wx_login_options(proto::WxLoginOptions { style: style.into(), ..Default::default() });
        }
        for href in ["https://cdn.example.com/qr.css", "https://cdn.example.com/a/qr.css?v=2"] {
            v.wx_login_options(proto::WxLoginOptions { href: href.into(), ..Default::default() });
        }
        assert!(v.0.is_empty(), "{:?}", v.0.iter().map(|f| f.field).collect::<Vec<_>>());
    }

    #[test]
    fn a_bad_wx_login_style_or_href_is_a_field_violation() {
        let too_long = format!("https://cdn.example.com/{}.css", "a".repeat(MAX_HREF));
        let bad_hrefs = [
            "http://cdn.example.com/qr.css",
            "javascript:alert(1)",
            "data:text/css;base64,Ym9keXt9",
            "//cdn.example.com/qr.css",
            "https://cdn.example.com/qr.css&redirect_uri=https%3A%2F%2Fevil.example",
            "https://cdn.example.com/qr.css#x",
            "https://cdn.example.com/q r.css",
            "https://user:pw@cdn.example.com/qr.css",
            too_long.as_str(),
        ];
        for href in bad_hrefs {
            let mut v = Violations::default();
            v.wx_login_options(proto::WxLoginOptions { href: href.into(), ..Default::default() });
            assert_eq!(v.0.iter().map(|f| f.field).collect::<Vec<_>>(), ["wx_login_options.href"], "{href}");
        }
        let mut v = Violations::default();
        v.wx_login_options(proto::WxLoginOptions { style: "red".into(), ..Default::default() });
        assert_eq!(v.0.iter().map(|f| f.field).collect::<Vec<_>>(), ["wx_login_options.style"]);
    }

    #[test]
    fn openids_are_checked_for_charset_and_length() {
        assert!(is_openid("oLVPpjqs9BhvzwPj5A-vTYAX3GLc"));
        assert!(!is_openid(""));
        assert!(!is_openid("o/../x"));
        assert!(!is_openid(&"o".repeat(65)));
    }
}
