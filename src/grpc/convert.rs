//! The proto forms of what the service answers: scopes, app kinds, profiles, times, the
//! `wxLogin.js` parameters.

use prost_types::Timestamp;

use crate::proto;
use crate::wechat::{AppKind, Profile, Scope, WxLoginParams};

/// The proto form of [`WxLoginParams`].
pub(super) fn wx_login(p: WxLoginParams) -> proto::WxLogin {
    proto::WxLogin {
        appid: p.appid,
        scope: p.scope.to_owned(),
        redirect_uri: p.redirect_uri,
        state: p.state,
        self_redirect: p.options.self_redirect,
        style: p.options.style,
        href: p.options.href,
        script_url: p.script_url,
        stylelite: p.options.stylelite,
    }
}

pub(super) fn scope_to_proto(scope: Scope) -> proto::Scope {
    match scope {
        Scope::Base => proto::Scope::SnsapiBase,
        Scope::UserInfo => proto::Scope::SnsapiUserinfo,
        Scope::Login => proto::Scope::SnsapiLogin,
    }
}

pub(super) fn kind_to_proto(kind: Option<AppKind>) -> proto::AppKind {
    match kind {
        Some(AppKind::OfficialAccount) => proto::AppKind::OfficialAccount,
        Some(AppKind::Website) => proto::AppKind::Website,
        Some(AppKind::MobileApp) => proto::AppKind::MobileApp,
        Some(AppKind::MiniProgram) => proto::AppKind::MiniProgram,
        None => proto::AppKind::Unspecified,
    }
}

pub(super) fn scopes_to_proto(scopes: &[String]) -> Vec<i32> {
    scopes.iter().filter_map(|s| Scope::parse(s)).map(|s| scope_to_proto(s) as i32).collect()
}

pub(super) fn user_info(p: Profile) -> proto::UserInfo {
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

pub(super) fn timestamp(unix_secs: i64) -> Timestamp {
    Timestamp { seconds: unix_secs, nanos: 0 }
}
