//! The browser sign-ins: BuildAuthorizeUrl starts a flow (checked, capped, stored) and gives
//! the authorize URL; ExchangeCode trades the code the relay brought back, bound to its flow.

use std::time::Duration;

use super::OAuthService;
use super::convert::{scope_to_proto, scopes_to_proto, timestamp, user_info, wx_login};
use super::validate::{MAX_RETURN_URL, MAX_STATE, MAX_USER_AGENT, Violations, device_of_browser, is_flow_id};
use crate::clock::secs;
use crate::config::Family;
use crate::config::{self, Client};
use crate::consent;
use crate::error::ApiError;
use crate::proto;
use crate::secrets::AuthCode;
use crate::store::{Admission, FLOW_ID_LEN, Flow};
use crate::tokens::UsersRule;
use crate::wechat::{App, AppKind, AuthorizeParams, Scope, WxLoginOptions};

impl OAuthService {
    pub(super) async fn build_authorize_url_inner(
        &self,
        client: &Client,
        mut req: proto::BuildAuthorizeUrlRequest,
    ) -> Result<proto::BuildAuthorizeUrlResponse, ApiError> {
        let Asked { device, scope, wx_login_options } = check_authorize_request(&mut req)?;
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

    pub(super) async fn exchange_code_inner(
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
}

/// What a BuildAuthorizeUrl request asks for, its fields checked.
struct Asked {
    /// The device whose default app to use (none: the request names its app).
    device: Option<config::Device>,
    /// The scope asked for (none: the app kind's default).
    scope: Option<Scope>,
    wx_login_options: WxLoginOptions,
}

/// Checks a BuildAuthorizeUrl request's fields, every violation at once; takes its
/// `wx_login_options`. Without an app or a device, a User-Agent picks the device
/// ([`device_of_browser`]).
fn check_authorize_request(req: &mut proto::BuildAuthorizeUrlRequest) -> Result<Asked, ApiError> {
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
    let wx_login_options = v.wx_login_options(req.wx_login_options.take().unwrap_or_default());
    v.finish()?;
    Ok(Asked { device, scope, wx_login_options })
}
