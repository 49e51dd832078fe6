//! What WeChat apps are: their kinds (which decide the authorize page and the scopes), the
//! scopes, the profile languages, and one configured app.

use std::time::Duration;

use serde::Deserialize;

use crate::secrets::AppSecret;

/// What kind of WeChat app, which decides the authorize page and the scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// 公众号: `connect/oauth2/authorize`, scopes `snsapi_base` and `snsapi_userinfo`.
    OfficialAccount,
    /// 开放平台网站应用: `connect/qrconnect`, scope `snsapi_login` (PC QR login).
    Website,
    /// 开放平台移动应用: the native WeChat SDK hands the app a code (`snsapi_userinfo`, 10
    /// minutes, single use), exchanged at the same `sns/oauth2/access_token`; no authorize page.
    MobileApp,
    /// 小程序: `wx.login()` gives a `js_code`, traded at `sns/jscode2session` for the openid,
    /// the session key and (bound apps) the unionid; no authorize page, no user tokens.
    MiniProgram,
}

impl AppKind {
    /// Every kind, in declaration order.
    pub const ALL: [AppKind; 4] =
        [AppKind::OfficialAccount, AppKind::Website, AppKind::MobileApp, AppKind::MiniProgram];

    /// The code's life at WeChat: 5 minutes for official accounts and mini programs' `js_code`,
    /// 10 for website and mobile apps.
    pub(crate) fn code_life(self) -> Duration {
        match self {
            AppKind::OfficialAccount | AppKind::MiniProgram => Duration::from_secs(300),
            AppKind::Website | AppKind::MobileApp => Duration::from_secs(600),
        }
    }

    /// The scope used when a request leaves it unspecified.
    pub(crate) fn default_scope(self) -> Scope {
        match self {
            AppKind::OfficialAccount | AppKind::MiniProgram => Scope::Base,
            AppKind::Website => Scope::Login,
            AppKind::MobileApp => Scope::UserInfo,
        }
    }

    /// Whether an app of this kind may ask for `scope` on an authorize page (mobile apps and
    /// mini programs have none: their codes come from the WeChat SDK / `wx.login()`).
    pub(crate) fn allows(self, scope: Scope) -> bool {
        match self {
            AppKind::OfficialAccount => matches!(scope, Scope::Base | Scope::UserInfo),
            AppKind::Website => scope == Scope::Login,
            AppKind::MobileApp | AppKind::MiniProgram => false,
        }
    }

    /// Whether sign-ins go through a browser, an authorize page and the relay.
    pub(crate) fn has_authorize_page(self) -> bool {
        matches!(self, AppKind::OfficialAccount | AppKind::Website)
    }

    /// The config spelling (`official_account`, ...), also the `kind` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::OfficialAccount => "official_account",
            AppKind::Website => "website",
            AppKind::MobileApp => "mobile_app",
            AppKind::MiniProgram => "mini_program",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A WeChat authorization scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// `snsapi_base`: silent, openid only.
    Base,
    /// `snsapi_userinfo`: consent, profile.
    UserInfo,
    /// `snsapi_login`: website QR login, profile.
    Login,
}

impl Scope {
    /// WeChat's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scope::Base => "snsapi_base",
            Scope::UserInfo => "snsapi_userinfo",
            Scope::Login => "snsapi_login",
        }
    }

    /// Parses WeChat's spelling.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [Scope::Base, Scope::UserInfo, Scope::Login].into_iter().find(|v| v.as_str() == s)
    }

    /// Whether a token of this scope may read the profile.
    pub(crate) fn grants_userinfo(self) -> bool {
        matches!(self, Scope::UserInfo | Scope::Login)
    }
}

/// Language of the profile's place names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    /// Simplified Chinese, WeChat's default.
    #[default]
    ZhCn,
    /// Traditional Chinese.
    ZhTw,
    /// English.
    En,
}

impl Lang {
    /// Every language WeChat offers.
    pub const ALL: [Lang; 3] = [Lang::ZhCn, Lang::ZhTw, Lang::En];

    /// WeChat's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::ZhCn => "zh_CN",
            Lang::ZhTw => "zh_TW",
            Lang::En => "en",
        }
    }
}

/// One configured WeChat app. `Debug` hides the secret.
#[derive(Clone, Debug)]
pub struct App {
    /// The config name (`mp`), used in keys and requests.
    pub name: String,
    /// WeChat's appid.
    pub appid: String,
    /// The appsecret.
    pub secret: AppSecret,
    /// Official account or website app.
    pub kind: AppKind,
}
