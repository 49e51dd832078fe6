//! The per-user RPCs (RefreshToken, GetUserInfo, ValidateToken, ForgetUser) and FindAccounts
//! (by unionid, or by a kept phone number for clients granted `phone_lookup`):
//! whom a client reaches, and what it is told of them.

use super::OAuthService;
use super::convert::{kind_to_proto, scopes_to_proto, timestamp, user_info};
use super::validate::{Violations, is_openid};
use crate::config::{Client, Grant as ClientGrant, Users};
use crate::consent::Grant;
use crate::error::ApiError;
use crate::proto;
use crate::tokens::UsersRule;
use crate::wechat::{App, AppKind, Lang};

impl OAuthService {
    pub(super) async fn refresh_token_inner(
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

    pub(super) async fn get_user_info_inner(
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

    pub(super) async fn validate_token_inner(
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

    pub(super) async fn forget_user_inner(
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

    pub(super) async fn find_accounts_inner(
        &self,
        client: &Client,
        req: proto::FindAccountsRequest,
    ) -> Result<proto::FindAccountsResponse, ApiError> {
        let by_phone = !req.pure_phone_number.is_empty() || !req.country_code.is_empty();
        let found = if by_phone {
            let mut v = Violations::default();
            if !req.unionid.is_empty() {
                v.add("unionid", "exactly one of unionid and pure_phone_number");
            }
            if !is_digits(&req.pure_phone_number, 20) {
                v.add("pure_phone_number", "1..20 digits: the number without country code");
            }
            if !req.country_code.is_empty() && !is_digits(&req.country_code, 4) {
                v.add("country_code", "1..4 digits, or empty for 86");
            }
            v.finish()?;
            // Looking a person up by phone is a grant of its own: no sign-in client needs it.
            if !client.holds(ClientGrant::PhoneLookup) {
                return Err(ApiError::GrantMissing(ClientGrant::PhoneLookup));
            }
            let country = if req.country_code.is_empty() { "86" } else { req.country_code.as_str() };
            self.tokens.accounts_by_phone((country, &req.pure_phone_number), &client.apps, reach(client)).await?
        } else {
            if !is_openid(&req.unionid) {
                return Err(ApiError::invalid("unionid", "1..64 of [A-Za-z0-9_-]"));
            }
            self.tokens.accounts(&req.unionid, &client.apps, reach(client)).await?
        };
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

/// The scopes to report to a client: what its own sign-ins were granted, as far as the token
/// serves them; a `users = "app"` client (`grant` is `None`): the token's.
fn scopes_of(grant: Option<Grant>, token_scopes: &[String]) -> Vec<String> {
    match grant {
        Some(grant) => grant.scopes_served_by(token_scopes),
        None => token_scopes.to_vec(),
    }
}

/// Whether `text` is 1..`max` ASCII digits.
fn is_digits(text: &str, max: usize) -> bool {
    (1..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

/// Whose users `client` reaches (`clients.<name>.users`).
pub(super) fn reach(client: &Client) -> UsersRule<'_> {
    match client.users {
        Users::Own => UsersRule::Own(&client.name),
        Users::App => UsersRule::Any,
    }
}
