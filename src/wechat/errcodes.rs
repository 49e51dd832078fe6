//! Every errcode wxauth maps, each with WeChat's own words for it and the table they come from,
//! so no errcode is mapped by a guess (issue 20). `crate::error::ApiError::from_wechat` turns an
//! [`Outcome`] into a caller's error; docs/design.md §10.4 lists the same rows, and the unit
//! test `every_errcode_of_the_table_maps_by_its_meaning_and_is_in_the_design_table` walks them.

/// Where an errcode's meaning is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// WeChat's global return-code table (全局返回码说明; the open platform's 开放平台全局返回码,
    /// Return_code_descriptions_new), quoted verbatim in the SDKs' maps (WxJava
    /// `WxOpenErrorMsgEnum`, Senparc, EasyWeChat). Long rows are cut after their first clause.
    Global,
    /// The 返回码 list of the authorize step in WeChat's 网页授权 doc: error *pages* of
    /// `open.weixin.qq.com`, never `sns` JSON.
    AuthorizePage,
    /// The errcode table of the mini program's `auth.code2Session`.
    Code2Session,
    /// The errcode table of `getAccessToken` / `getStableAccessToken` (获取 Access token).
    AccessToken,
    /// The errcode table of the mini program's `getPhoneNumber` (手机号快速验证).
    PhoneNumber,
}

/// What an errcode tells the caller to do; `crate::error::ApiError::from_wechat` gives each its
/// reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The code is not (or no longer) valid: start a new sign-in (`INVALID_CODE`).
    InvalidCode,
    /// The code timed out (`CODE_EXPIRED`).
    CodeExpired,
    /// The code was used (`CODE_USED`).
    CodeUsed,
    /// The user's authorisation is gone: send the user through consent again
    /// (`REAUTHORIZATION_REQUIRED`).
    Reauthorize,
    /// The app or the token lacks the scope (`SCOPE_NOT_GRANTED`).
    ScopeNotGranted,
    /// The user is restricted or the account frozen or closed (`USER_RESTRICTED`).
    UserRestricted,
    /// Too many calls a minute: retry soon (`WECHAT_RATE_LIMITED`).
    MinuteQuota,
    /// The app's daily quota is spent: nothing helps before the quota day turns
    /// (`WECHAT_DAILY_QUOTA_EXHAUSTED`).
    DailyQuota,
    /// The appid or secret is wrong (`APP_MISCONFIGURED`).
    AppMisconfigured,
    /// WeChat is busy (`WECHAT_UNAVAILABLE`).
    Busy,
    /// A dead access token: the token code refreshes once before any caller sees it
    /// (`WECHAT_ERROR` if one ever reaches the map).
    DeadAccessToken,
    /// Known, with nothing a caller can do but look (`WECHAT_ERROR`).
    Other,
}

/// One row: an errcode, WeChat's words for it, where they are written, what wxauth does.
#[derive(Clone, Copy, Debug)]
pub struct Errcode {
    /// The errcode.
    pub code: i64,
    /// Its metric label: the number as text (`wxauth_wechat_requests_total{errcode}`).
    pub label: &'static str,
    /// WeChat's description, verbatim from `table`.
    pub meaning: &'static str,
    /// The table `meaning` is quoted from.
    pub table: Table,
    /// What wxauth makes of it.
    pub outcome: Outcome,
}

const fn row(code: i64, label: &'static str, meaning: &'static str, table: Table, outcome: Outcome) -> Errcode {
    Errcode { code, label, meaning, table, outcome }
}

use Outcome::*;
use Table::*;

/// Every errcode wxauth knows, by number. Any other errcode is `WECHAT_ERROR` and the metric
/// label `other`, so a WeChat that invents codes cannot grow the scrape without bound.
pub const ERRCODES: [Errcode; 29] = [
    row(-1, "-1", "系统繁忙，此时请开发者稍候再试", Global, Busy),
    row(10005, "10005", "此公众号并没有这些scope的权限", AuthorizePage, ScopeNotGranted),
    row(10009, "10009", "操作太频繁了，请稍后重试", AuthorizePage, MinuteQuota),
    row(40001, "40001", "获取 access_token 时 AppSecret 错误，或者 access_token 无效", Global, DeadAccessToken),
    row(40003, "40003", "不合法的 OpenID", Global, Other),
    row(40013, "40013", "不合法的appid", Global, AppMisconfigured),
    row(40014, "40014", "不合法的 access_token", Global, DeadAccessToken),
    row(40029, "40029", "无效的 oauth_code", Global, InvalidCode),
    row(40030, "40030", "不合法的 refresh_token", Global, Reauthorize),
    // The global table's Chinese text for 40125 repeats 40013's ("不合法的 AppID"); its
    // errmsg is "invalid appsecret", which is what WeChat answers for a wrong secret.
    row(40125, "40125", "invalid appsecret", Global, AppMisconfigured),
    row(40163, "40163", "oauth_code已使用", Global, CodeUsed),
    // The app's own access token (issue 21): the server's IP is not on the account's API IP
    // whitelist (errmsg "invalid ip <ip> ipv6 ::ffff:<ip>, not in whitelist"). The operator
    // must add it in WeChat's console: no retry helps.
    row(40164, "40164", "调用接口的IP地址不在白名单中，请在接口IP白名单中进行设置", AccessToken, AppMisconfigured),
    row(40226, "40226", "高风险等级用户，小程序登录拦截", Code2Session, UserRestricted),
    row(41001, "41001", "缺少 access_token 参数", Global, Other),
    row(41002, "41002", "缺少 appid 参数", Global, AppMisconfigured),
    row(41003, "41003", "缺少 refresh_token 参数", Global, Other),
    row(41004, "41004", "缺少 secret 参数", Global, AppMisconfigured),
    row(41008, "41008", "缺少 oauth code", Global, Other),
    row(42001, "42001", "access_token 超时", Global, DeadAccessToken),
    row(42002, "42002", "refresh_token 超时", Global, Reauthorize),
    row(42003, "42003", "oauth_code 超时", Global, CodeExpired),
    row(42007, "42007", "用户修改微信密码， accesstoken 和 refreshtoken 失效，需要重新授权", Global, Reauthorize),
    row(45009, "45009", "接口调用超过限制", Global, DailyQuota),
    row(45011, "45011", "API 调用太频繁，请稍候再试", Global, MinuteQuota),
    row(48001, "48001", "api 功能未授权", Global, ScopeNotGranted),
    // 50001 is the user's missing (never given, or withdrawn) authorisation, not a restriction:
    // consent again. 50002 is the restriction (older copies of the table: "用户受限，可能是违规后
    // 接口被封禁").
    row(50001, "50001", "用户未授权该 api", Global, Reauthorize),
    row(50002, "50002", "用户受限，可能是用户帐号被冻结或注销", Global, UserRestricted),
    // A new server IP getting the app's access token waits for the account's administrator to
    // confirm it in WeChat's console (docs/wechat.md: the text is not confirmed by a stored copy).
    row(89503, "89503", "此IP调用需要管理员确认,请联系管理员", AccessToken, AppMisconfigured),
    // The mini program's phone numbers are billed and capped (issue 21): the cap reached, no
    // number until it is raised (docs/wechat.md: the text is not confirmed by a stored copy).
    row(1_400_001, "1400001", "该功能使用次数已达当前小程序上限，暂时无法使用", PhoneNumber, DailyQuota),
];

/// The row of `code`, when wxauth knows it.
pub fn errcode(code: i64) -> Option<&'static Errcode> {
    ERRCODES.iter().find(|row| row.code == code)
}
