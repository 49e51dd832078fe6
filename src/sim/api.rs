//! The JSON endpoints of `api.weixin.qq.com/sns/...`: code exchange, refresh, userinfo and
//! token check. Each handler checks its parameters in WeChat's order and answers success JSON
//! or WeChat's `{"errcode","errmsg"}` (HTTP 200), built in one place: [`error_response`].

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::Simulator;
use super::config::SimAppKind;
use super::control::{Answer, Endpoint};
use super::params::Params;
use super::state::{self, Api, Core, Grant, Issued, errcode, errmsg};

/// The sns endpoints answer JSON, an errcode as WeChat's error JSON.
const ANSWER: Answer = Answer::Json(error_response);

/// WeChat's error answer: HTTP 200, `{"errcode": N, "errmsg": "<text>, rid: <hex>"}`.
pub(super) fn error_response(code: i64) -> Response {
    let errmsg = format!("{}, rid: {}", errmsg(code), state::random_rid());
    Json(json!({ "errcode": code, "errmsg": errmsg })).into_response()
}

/// The routes of `api.weixin.qq.com` the service calls.
pub(super) fn routes() -> Router<Simulator> {
    Router::new()
        .route("/sns/oauth2/access_token", get(access_token))
        .route("/sns/oauth2/refresh_token", get(refresh_token))
        .route("/sns/userinfo", get(userinfo))
        .route("/sns/auth", get(auth))
        .route("/sns/jscode2session", get(jscode2session))
}

type Rule = fn(&Core, &Params) -> Result<Value, i64>;

async fn access_token(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    answer(&sim, Endpoint::AccessToken, raw, exchange).await
}

async fn refresh_token(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    answer(&sim, Endpoint::RefreshToken, raw, refresh).await
}

async fn userinfo(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    answer(&sim, Endpoint::UserInfo, raw, profile).await
}

async fn auth(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    answer(&sim, Endpoint::Auth, raw, check_token).await
}

async fn jscode2session(State(sim): State<Simulator>, RawQuery(raw): RawQuery) -> Response {
    answer(&sim, Endpoint::JsCode2Session, raw, mini_session).await
}

/// Counts the call, applies an injected fault, else runs the endpoint's rule.
async fn answer(sim: &Simulator, endpoint: Endpoint, raw: Option<String>, rule: Rule) -> Response {
    let after_work = match sim.enter(endpoint, ANSWER).await {
        Ok(after_work) => after_work,
        Err(faulted) => return faulted,
    };
    let params = Params::parse(raw.unwrap_or_default().as_bytes());
    let result = rule(sim.core(), &params);
    tracing::debug!(
        endpoint = endpoint.name(),
        appid = params.get("appid"),
        errcode = result.as_ref().err().copied().unwrap_or(0),
        "simulated sns call"
    );
    let response = match result {
        Ok(body) => Json(body).into_response(),
        Err(code) => error_response(code),
    };
    match after_work {
        // The work is done (a code spent); the answer that reaches the caller is the fault's.
        Some(fault) => sim.fault_answer(fault, ANSWER).await.unwrap_or(response),
        None => response,
    }
}

/// `/sns/oauth2/access_token`: the code exchange, the one call that needs the secret.
fn exchange(core: &Core, p: &Params) -> Result<Value, i64> {
    use errcode::*;
    let appid = p.require("appid", MISSING_APPID)?;
    let secret = p.require("secret", MISSING_SECRET)?;
    let code = p.require("code", MISSING_CODE)?;
    if p.get("grant_type") != Some("authorization_code") {
        return Err(INVALID_GRANT_TYPE);
    }
    let app = core.app(appid).filter(|a| a.kind != SimAppKind::MiniProgram).ok_or(INVALID_APPID)?;
    core.spend_quota(appid, Api::AccessToken)?;
    if app.secret != secret {
        return Err(INVALID_SECRET);
    }
    let issued = core.redeem_code(appid, code)?;
    let mut body = token_body(core, &issued);
    // A messy snapshot (issue 20: the flag is missing for some snapshot users) has none.
    if core.user(issued.grant.user).is_some_and(|u| u.snapshot) && !core.messy_snapshots() {
        body["is_snapshotuser"] = json!(1);
    }
    if issued.grant.gives_unionid(app) {
        body["unionid"] = json!(unionid_of(core, &issued.grant));
    }
    Ok(body)
}

/// `/sns/jscode2session`: a mini program's `js_code` for `{openid, session_key, unionid?}`
/// (unionid when the mini program is bound to an open-platform account).
fn mini_session(core: &Core, p: &Params) -> Result<Value, i64> {
    use errcode::*;
    let appid = p.require("appid", MISSING_APPID)?;
    let secret = p.require("secret", MISSING_SECRET)?;
    let js_code = p.require("js_code", MISSING_CODE)?;
    if p.get("grant_type") != Some("authorization_code") {
        return Err(INVALID_GRANT_TYPE);
    }
    let app = core.app(appid).filter(|a| a.kind == SimAppKind::MiniProgram).ok_or(INVALID_APPID)?;
    core.spend_quota(appid, Api::JsCode2Session)?;
    if app.secret != secret {
        return Err(INVALID_SECRET);
    }
    let grant = core.redeem_js_code(appid, js_code)?;
    let session_key = state::random_session_key();
    core.note_session_key(appid, grant.user, &session_key);
    let mut body = json!({ "openid": core.openid_of(&grant), "session_key": session_key });
    if app.unionid_bound {
        body["unionid"] = json!(unionid_of(core, &grant));
    }
    Ok(body)
}

/// `/sns/oauth2/refresh_token`: no secret; a `secret` parameter is ignored.
fn refresh(core: &Core, p: &Params) -> Result<Value, i64> {
    use errcode::*;
    let appid = p.require("appid", MISSING_APPID)?;
    let refresh_token = p.require("refresh_token", MISSING_REFRESH_TOKEN)?;
    if p.get("grant_type") != Some("refresh_token") {
        return Err(INVALID_GRANT_TYPE);
    }
    core.app(appid).ok_or(INVALID_APPID)?;
    core.spend_quota(appid, Api::RefreshToken)?;
    let issued = core.refresh(appid, refresh_token)?;
    Ok(token_body(core, &issued))
}

fn token_body(core: &Core, issued: &Issued) -> Value {
    json!({
        "access_token": issued.access_token,
        "expires_in": 7200,
        "refresh_token": issued.refresh_token,
        "openid": core.openid_of(&issued.grant),
        "scope": issued.grant.scope,
    })
}

/// `/sns/userinfo`: the profile, for userinfo/login scopes only, as WeChat gives it since
/// 2021-10-20: `sex` 0 and empty `province`, `city` and `country` for everyone, whatever the
/// `lang` (WeChat's announcement of 2021-09-26, 关于网页授权获取用户基本信息接口调整; WxJava
/// #2331, EasyWeChat #2675). A snapshot-page virtual user gets 48001.
fn profile(core: &Core, p: &Params) -> Result<Value, i64> {
    use errcode::*;
    let grant = live_grant(core, p, Api::UserInfo)?;
    if grant.scope == "snsapi_base" {
        return Err(API_UNAUTHORIZED);
    }
    if !matches!(p.get("lang").unwrap_or("zh_CN"), "zh_CN" | "zh_TW" | "en") {
        return Err(INVALID_LANG);
    }
    let user = core.user(grant.user).ok_or(INVALID_ACCESS_TOKEN)?;
    if user.snapshot {
        return Err(API_UNAUTHORIZED);
    }
    let mut body = json!({
        "openid": core.openid_of(&grant),
        "nickname": user.nickname,
        "sex": 0,
        "province": "",
        "city": "",
        "country": "",
        "headimgurl": user.headimgurl,
        "privilege": [],
    });
    if core.app(&grant.appid).is_some_and(|app| grant.gives_unionid(app)) {
        body["unionid"] = json!(unionid_of(core, &grant));
    }
    Ok(body)
}

/// `/sns/auth`: is this access token alive and this openid's?
fn check_token(core: &Core, p: &Params) -> Result<Value, i64> {
    live_grant(core, p, Api::Auth)?;
    Ok(json!({ "errcode": 0, "errmsg": "ok" }))
}

/// The grant of a live `access_token` whose user is `openid`: 41001, 40014, 42001, 45009 /
/// 45011 (the app's daily / minute quota of `api`), 41009, 40003.
fn live_grant(core: &Core, p: &Params, api: Api) -> Result<Grant, i64> {
    use errcode::*;
    let grant = core.access(p.require("access_token", MISSING_ACCESS_TOKEN)?)?;
    core.spend_quota(&grant.appid, api)?;
    let openid = p.require("openid", MISSING_OPENID)?;
    if openid != core.openid_of(&grant) {
        return Err(INVALID_OPENID);
    }
    Ok(grant)
}

fn unionid_of(core: &Core, grant: &Grant) -> String {
    core.user(grant.user).map_or_else(String::new, |u| state::unionid(&u.key))
}
