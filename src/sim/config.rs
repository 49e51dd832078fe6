//! What the simulated WeChat knows before any request: the apps registered on it and the
//! test users who can be picked on its consent page, plus the dev-mode defaults.

use std::fmt;

/// Everything a [`super::Simulator`] is built from; fixed for its whole life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The apps WeChat knows, as registered on its admin console.
    pub apps: Vec<SimApp>,
    /// The test users offered on the consent page, in the order shown (the first is preselected).
    pub users: Vec<SimUser>,
}

impl SimConfig {
    /// The apps and users of the dev mode (docs/design.md §8), so `cargo run`, the demo page and the
    /// docs all walk the flow against the same known values.
    pub fn demo() -> Self {
        Self {
            apps: vec![
                SimApp {
                    appid: "wxd0000000000000a1".into(),
                    secret: "demo-mp-secret".into(),
                    kind: SimAppKind::OfficialAccount,
                    callback_domain: "127.0.0.1:8080".into(),
                    unionid_bound: true,
                },
                SimApp {
                    appid: "wxd0000000000000b2".into(),
                    secret: "demo-web-secret".into(),
                    kind: SimAppKind::Website,
                    callback_domain: "127.0.0.1:8080".into(),
                    unionid_bound: true,
                },
                SimApp {
                    appid: "wxd0000000000000c3".into(),
                    secret: "demo-app-secret".into(),
                    kind: SimAppKind::MobileApp,
                    callback_domain: String::new(),
                    unionid_bound: true,
                },
                SimApp {
                    appid: "wxd0000000000000d4".into(),
                    secret: "demo-mini-secret".into(),
                    kind: SimAppKind::MiniProgram,
                    callback_domain: String::new(),
                    unionid_bound: true,
                },
            ],
            users: vec![
                SimUser {
                    key: "alice".into(),
                    nickname: "Alice 爱丽丝".into(),
                    headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/Q0j4TwGTfTKx8ib2bK3ciaEHq9nGcDvh1ZiaQhyWbL7vXWoZicS9Jp2Nrt1hYk0mVqCIC4ypuFLk8jMq7AHvD3ibgaw/132".into(),
                    snapshot: false,
                },
                SimUser {
                    key: "bob".into(),
                    nickname: "Bob".into(),
                    headimgurl: "https://thirdwx.qlogo.cn/mmopen/vi_32/DYAIOgq83eoT4RZ1Hh8k7Bw0ibq2ZIsX9Nxv6f5MicUiaBYLqkE0jzR1p3ibsqN9gOYcJ2hUHvLwTx0kRiaQvmPbK5A/132".into(),
                    snapshot: false,
                },
                SimUser {
                    key: "snap".into(),
                    nickname: "微信用户".into(),
                    headimgurl: String::new(),
                    snapshot: true,
                },
            ],
        }
    }
}

/// One app registered on WeChat; the simulator enforces its kind, secret and callback domain
/// the way WeChat does.
#[derive(Clone, PartialEq, Eq)]
pub struct SimApp {
    /// The public app id (`wx...`).
    pub appid: String,
    /// The appsecret the code exchange must present (a test value, still never printed).
    pub secret: String,
    /// Official account or website app: decides the authorize page and the scopes.
    pub kind: SimAppKind,
    /// The authorization callback domain as configured on WeChat: `auth.example.com`, or
    /// `127.0.0.1:8080` (the port is compared only when given).
    pub callback_domain: String,
    /// Bound to an open-platform account: `unionid` is given with the userinfo/login scopes.
    pub unionid_bound: bool,
}

impl fmt::Debug for SimApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimApp")
            .field("appid", &self.appid)
            .field("secret", &"[redacted]")
            .field("kind", &self.kind)
            .field("callback_domain", &self.callback_domain)
            .field("unionid_bound", &self.unionid_bound)
            .finish()
    }
}

/// The kinds of WeChat app: the two that do web authorization have their own page and
/// scopes; mobile apps get codes from the WeChat SDK and mini programs `js_code`s from
/// `wx.login()` (minted here by [`super::Simulator::authorize`] / [`super::Simulator::js_code`]
/// and the `/sim/mobile_code`, `/sim/js_code` control routes: there is no page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimAppKind {
    /// 公众号: `/connect/oauth2/authorize`, scopes `snsapi_base` and `snsapi_userinfo`.
    OfficialAccount,
    /// 开放平台网站应用: `/connect/qrconnect`, scope `snsapi_login`.
    Website,
    /// 开放平台移动应用: SDK codes of scope `snsapi_userinfo`, exchanged at
    /// `sns/oauth2/access_token`.
    MobileApp,
    /// 小程序: `js_code`s, traded at `sns/jscode2session`.
    MiniProgram,
}

impl SimAppKind {
    /// The scopes WeChat grants to this kind of app: the one place that rule lives.
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Self::OfficialAccount => &["snsapi_base", "snsapi_userinfo"],
            Self::Website => &["snsapi_login"],
            Self::MobileApp => &["snsapi_userinfo"],
            Self::MiniProgram => &[],
        }
    }

    /// How long an unused code of this kind of app lives (5 min official accounts and
    /// `js_code`s, 10 min website and mobile apps).
    pub(super) fn code_life_secs(self) -> u64 {
        match self {
            Self::OfficialAccount | Self::MiniProgram => 300,
            Self::Website | Self::MobileApp => 600,
        }
    }
}

/// A test user who can consent on the simulator's page; its profile is what `sns/userinfo`
/// answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// The short name tests and the consent form use (`alice`).
    pub key: String,
    /// The WeChat nickname, also the label on the consent page.
    pub nickname: String,
    /// Avatar URL (last path segment is the size), empty when the user has none.
    pub headimgurl: String,
    /// A snapshot-page virtual user (快照页, since 2022-07): someone who opened a
    /// `snsapi_userinfo` page from Moments or a chat and did not tap through to the full page.
    /// Only `snsapi_userinfo` pages offer it; its code answers `is_snapshotuser: 1` with a
    /// virtual openid and unionid, and `sns/userinfo` answers it 48001 (WxJava #2828,
    /// Senparc #3100).
    ///
    /// There is no sex or region: WeChat answers `sex` 0 and empty `province`, `city` and
    /// `country` for every user since 2021-10-20 (its announcement of 2021-09-26; WxJava #2331,
    /// EasyWeChat #2675), so the simulator has none to give.
    pub snapshot: bool,
}
