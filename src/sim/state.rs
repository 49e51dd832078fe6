//! The simulator's memory: its movable clock, the codes and tokens it has issued with their
//! lifetimes, and the ids WeChat derives for each user. Each record-level WeChat rule (code
//! single use and expiry, token expiry, refresh renewing or replacing the access token) lives
//! here once; request parameters are checked by the callers in `api.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use sha2::{Digest as _, Sha256};

use super::config::{SimApp, SimAppKind, SimConfig, SimUser};

/// Web access tokens live two hours.
const ACCESS_LIFE: Duration = Duration::from_secs(7200);
/// Refresh tokens live 30 days and are not extended by refreshing.
const REFRESH_LIFE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Records this long past their life are forgotten, so a long benchmark does not grow forever.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// A sweep of forgettable records runs once per this many issued records.
const SWEEP_EVERY: u64 = 4096;
/// WeChat's rate for refresh and userinfo: calls a minute per app; past it, 45011 (the
/// 调用频率限制 table of 网站应用微信登录开发指南: "刷新access_token 5万/分钟", "获取用户基本信息
/// 5万/分钟"). `sns/auth` is not in the table; the simulator gives it the same, unconfirmed.
pub const SNS_CALLS_PER_MINUTE: u32 = 50_000;
/// WeChat's rate for the code exchange (`sns/oauth2/access_token`): "通过 code 换取access_token
/// 1万/分钟" (the same table). A sign-in burst above it meets 45011.
pub const EXCHANGES_PER_MINUTE: u32 = 10_000;
/// `jscode2session` calls a minute per mini program user; past it, 45011 (WeChat's 小程序登录
/// limit: 100 a minute per user).
pub const MINI_LOGINS_PER_MINUTE: u32 = 100;

/// An `sns` endpoint with quotas of its own: calls a minute and calls a day, per app. WeChat
/// counts each endpoint apart (the 网站应用 doc's table); 45011 past the minute's, 45009 past the
/// day's ("reach max api daily quota limit").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `sns/oauth2/access_token`: 10,000 a minute.
    AccessToken,
    /// `sns/oauth2/refresh_token`: 50,000 a minute.
    RefreshToken,
    /// `sns/userinfo`: 50,000 a minute.
    UserInfo,
    /// `sns/auth`: not in WeChat's table; 50,000 a minute here (unconfirmed).
    Auth,
    /// `sns/jscode2session`: its own daily quota per mini program (its size is not published,
    /// so none by default) and 100 sign-ins a minute per user ([`MINI_LOGINS_PER_MINUTE`]).
    JsCode2Session,
}

impl Api {
    /// Every endpoint with a quota.
    pub const ALL: [Api; 5] = [Self::AccessToken, Self::RefreshToken, Self::UserInfo, Self::Auth, Self::JsCode2Session];

    /// WeChat's minute quota per app (0: none known).
    pub const fn default_per_minute(self) -> u32 {
        match self {
            Self::AccessToken => EXCHANGES_PER_MINUTE,
            Self::RefreshToken | Self::UserInfo | Self::Auth => SNS_CALLS_PER_MINUTE,
            Self::JsCode2Session => 0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The errcodes the simulator answers, named after WeChat's meanings (docs/design.md §10).
pub(super) mod errcode {
    pub const SYSTEM_BUSY: i64 = -1;
    pub const INVALID_GRANT_TYPE: i64 = 40002;
    pub const INVALID_OPENID: i64 = 40003;
    pub const INVALID_APPID: i64 = 40013;
    pub const INVALID_ACCESS_TOKEN: i64 = 40014;
    pub const INVALID_CODE: i64 = 40029;
    pub const INVALID_REFRESH_TOKEN: i64 = 40030;
    pub const INVALID_LANG: i64 = 40033;
    pub const INVALID_SECRET: i64 = 40125;
    pub const CODE_USED: i64 = 40163;
    pub const MISSING_ACCESS_TOKEN: i64 = 41001;
    pub const MISSING_APPID: i64 = 41002;
    pub const MISSING_REFRESH_TOKEN: i64 = 41003;
    pub const MISSING_SECRET: i64 = 41004;
    pub const MISSING_CODE: i64 = 41008;
    pub const MISSING_OPENID: i64 = 41009;
    pub const ACCESS_TOKEN_EXPIRED: i64 = 42001;
    pub const REFRESH_TOKEN_EXPIRED: i64 = 42002;
    pub const CODE_EXPIRED: i64 = 42003;
    pub const MINUTE_QUOTA: i64 = 45011;
    pub const DAILY_QUOTA: i64 = 45009;
    pub const HIGH_RISK_USER: i64 = 40226;
    pub const API_UNAUTHORIZED: i64 = 48001;
}

/// WeChat's errmsg text for an errcode (before the request-id hint).
pub(super) fn errmsg(code: i64) -> &'static str {
    use errcode::*;
    match code {
        SYSTEM_BUSY => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        INVALID_GRANT_TYPE => "invalid grant_type",
        INVALID_OPENID => "invalid openid",
        INVALID_APPID => "invalid appid",
        INVALID_ACCESS_TOKEN => "invalid access_token",
        INVALID_CODE => "invalid code",
        INVALID_REFRESH_TOKEN => "invalid refresh_token",
        INVALID_LANG => "invalid lang",
        INVALID_SECRET => "invalid appsecret",
        CODE_USED => "code been used",
        MISSING_ACCESS_TOKEN => "access_token missing",
        MISSING_APPID => "appid missing",
        MISSING_REFRESH_TOKEN => "refresh_token missing",
        MISSING_SECRET => "appsecret missing",
        MISSING_CODE => "code missing",
        MISSING_OPENID => "openid missing",
        ACCESS_TOKEN_EXPIRED => "access_token expired",
        REFRESH_TOKEN_EXPIRED => "refresh_token expired",
        CODE_EXPIRED => "code expired",
        45009 => "reach max api daily quota limit",
        40164 => "invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist",
        45011 => "api minute-quota reach-limit mustslower retry next minute",
        API_UNAUTHORIZED => "api unauthorized",
        HIGH_RISK_USER => "high risk user",
        42007 => "access_token and refresh_token exception",
        50001 => "user unauthorized",
        50002 => "user limited",
        _ => "simulated error",
    }
}

/// Why `Simulator::authorize` would not issue a code: the same refusals the consent page makes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No app with this appid is configured.
    #[error("unknown appid {0}")]
    UnknownApp(String),
    /// No test user with this key is configured.
    #[error("unknown test user {0}")]
    UnknownUser(String),
    /// The app's kind does not have this scope (WeChat's 10005).
    #[error("app {appid} has no scope {scope} (errcode 10005)")]
    ScopeNotAllowed {
        /// The app asked for.
        appid: String,
        /// The scope it does not have.
        scope: String,
    },
    /// Snapshot-page virtual users come only from `snsapi_userinfo` pages.
    #[error("snapshot user {0} comes only from snsapi_userinfo pages")]
    SnapshotNeedsUserinfo(String),
}

/// What one authorization granted: which user, in which app, with which scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) appid: String,
    pub(super) kind: SimAppKind,
    /// Index into the configured users.
    pub(super) user: usize,
    /// One of the app kind's scopes.
    pub(super) scope: &'static str,
    /// A snapshot user's virtual openid of this one sign-in, when snapshots are messy
    /// ([`Core::set_messy_snapshots`]); `None`: the openid derived from the user and app.
    pub(super) virtual_openid: Option<String>,
}

impl Grant {
    /// WeChat gives unionid for userinfo/login scopes of bound apps, never for `snsapi_base`.
    pub(super) fn gives_unionid(&self, app: &SimApp) -> bool {
        app.unionid_bound && self.scope != "snsapi_base"
    }
}

/// A fresh token pair, as the code exchange answers it.
pub(super) struct Issued {
    pub(super) access_token: String,
    pub(super) refresh_token: String,
    pub(super) grant: Grant,
}

struct CodeRecord {
    grant: Grant,
    issued: Duration,
    used: bool,
}

struct AccessRecord {
    grant: Grant,
    issued: Duration,
}

struct RefreshRecord {
    grant: Grant,
    issued: Duration,
    /// The one access token currently alive for this refresh token.
    access_token: String,
}

#[derive(Default)]
struct Records {
    codes: HashMap<String, CodeRecord>,
    access: HashMap<String, AccessRecord>,
    refresh: HashMap<String, RefreshRecord>,
    issued_since_sweep: u64,
}

/// The simulated WeChat's data: fixed configuration plus records behind one briefly held lock.
pub(super) struct Core {
    apps: HashMap<String, SimApp>,
    users: Vec<SimUser>,
    started: Instant,
    offset_nanos: AtomicU64,
    records: Mutex<Records>,
    /// Calls allowed a minute per app, by [`Api`]; 0: no limit.
    per_minute: [AtomicU32; 5],
    /// Calls allowed a day per app, by [`Api`]; 0: no limit.
    per_day: [AtomicU32; 5],
    /// Every quota lifted (`set_quota(None)`: benchmarks), the mini program users' too.
    lifted: AtomicBool,
    /// Snapshot users as the field reports them ([`Core::set_messy_snapshots`]).
    messy_snapshots: AtomicBool,
    /// Per appid, by [`Api`]: what it spent in the current minute and day.
    spent: Mutex<HashMap<String, [Spent; 5]>>,
    /// Per (mini program, user): the minute and the `jscode2session` calls in it.
    logins: Mutex<HashMap<(String, usize), (u64, u32)>>,
    /// Per (mini program, user): the last sign-in's session key (`encryptedData` is made with it).
    session_keys: Mutex<HashMap<(String, usize), String>>,
}

impl Core {
    pub(super) fn new(config: SimConfig) -> Self {
        Self {
            apps: config.apps.into_iter().map(|app| (app.appid.clone(), app)).collect(),
            users: config.users,
            started: Instant::now(),
            offset_nanos: AtomicU64::new(0),
            records: Mutex::new(Records::default()),
            per_minute: Api::ALL.map(|api| AtomicU32::new(api.default_per_minute())),
            per_day: Default::default(),
            lifted: AtomicBool::new(false),
            messy_snapshots: AtomicBool::new(false),
            spent: Mutex::default(),
            logins: Mutex::default(),
            session_keys: Mutex::default(),
        }
    }

    /// The simulator's time since it started: real time plus every `advance`.
    pub(super) fn now(&self) -> Duration {
        self.started.elapsed() + Duration::from_nanos(self.offset_nanos.load(Ordering::Relaxed))
    }

    /// The simulator's wall clock in Unix seconds (real time plus every `advance`): the
    /// `timestamp` and `CreateTime` of the messages it pushes.
    pub(super) fn unix_now(&self) -> u64 {
        let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (real + Duration::from_nanos(self.offset_nanos.load(Ordering::Relaxed))).as_secs()
    }

    pub(super) fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // The closure always returns Some, so this cannot fail.
        let _ = self.offset_nanos.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(by)));
    }

    /// Sets every endpoint's minute quota per app to `per_minute`; `None` lifts every quota,
    /// the mini program users' 100 sign-ins a minute too (benchmarks).
    pub(super) fn set_quota(&self, per_minute: Option<u32>) {
        self.lifted.store(per_minute.is_none(), Ordering::Relaxed);
        if let Some(limit) = per_minute {
            self.per_minute.iter().for_each(|q| q.store(limit, Ordering::Relaxed));
        }
    }

    /// Sets one endpoint's minute quota per app (`None`: no limit).
    pub(super) fn set_minute_quota(&self, api: Api, per_minute: Option<u32>) {
        self.per_minute[api.index()].store(per_minute.unwrap_or(0), Ordering::Relaxed);
    }

    /// Sets one endpoint's daily quota per app (`None`: no limit, the default).
    pub(super) fn set_daily_quota(&self, api: Api, per_day: Option<u32>) {
        self.per_day[api.index()].store(per_day.unwrap_or(0), Ordering::Relaxed);
    }

    /// Counts one call of `appid` to `api` against that endpoint's quotas: 45009 once its day's
    /// is spent, 45011 once its minute's is. A refused call counts for neither. Days and
    /// minutes are the simulator's clock's (WeChat does not document when its quota day turns).
    pub(super) fn spend_quota(&self, appid: &str, api: Api) -> Result<(), i64> {
        if self.lifted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let per_minute = self.per_minute[api.index()].load(Ordering::Relaxed);
        let per_day = self.per_day[api.index()].load(Ordering::Relaxed);
        if per_minute == 0 && per_day == 0 {
            return Ok(());
        }
        let now = self.now().as_secs();
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = match spent.get_mut(appid) {
            Some(entries) => entries,
            None => spent.entry(appid.to_owned()).or_default(),
        };
        let entry = &mut entries[api.index()];
        entry.turn(now / 60, now / 86_400);
        if per_day != 0 && entry.in_day >= per_day {
            return Err(errcode::DAILY_QUOTA);
        }
        if per_minute != 0 && entry.in_minute >= per_minute {
            return Err(errcode::MINUTE_QUOTA);
        }
        entry.in_minute += 1;
        entry.in_day += 1;
        Ok(())
    }

    pub(super) fn app(&self, appid: &str) -> Option<&SimApp> {
        self.apps.get(appid)
    }

    pub(super) fn users(&self) -> &[SimUser] {
        &self.users
    }

    pub(super) fn user(&self, index: usize) -> Option<&SimUser> {
        self.users.get(index)
    }

    fn user_index(&self, key: &str) -> Option<usize> {
        self.users.iter().position(|u| u.key == key)
    }

    /// Checks that `user` may give `scope` to `appid`, as the consent page and
    /// `Simulator::authorize` both require.
    pub(super) fn grant(&self, appid: &str, user: &str, scope: &str) -> Result<Grant, SimError> {
        let app = self.app(appid).ok_or_else(|| SimError::UnknownApp(appid.to_owned()))?;
        let scope = app
            .kind
            .scopes()
            .iter()
            .copied()
            .find(|s| *s == scope)
            .ok_or_else(|| SimError::ScopeNotAllowed { appid: appid.to_owned(), scope: scope.to_owned() })?;
        let index = self.user_index(user).ok_or_else(|| SimError::UnknownUser(user.to_owned()))?;
        if self.users[index].snapshot && scope != "snsapi_userinfo" {
            return Err(SimError::SnapshotNeedsUserinfo(user.to_owned()));
        }
        // Field reports (issue 20): a virtual unionid shared by many virtual openids.
        let virtual_openid =
            (self.users[index].snapshot && self.messy_snapshots()).then(|| format!("o{}", random_alphanumeric(27)));
        Ok(Grant { appid: app.appid.clone(), kind: app.kind, user: index, scope, virtual_openid })
    }

    /// The openid WeChat gives this user in this app (a messy snapshot's: its own virtual one).
    pub(super) fn openid_of(&self, grant: &Grant) -> String {
        if let Some(virtual_openid) = &grant.virtual_openid {
            return virtual_openid.clone();
        }
        self.users.get(grant.user).map_or_else(String::new, |u| openid(&grant.appid, &u.key))
    }

    /// On: snapshot pages as the field reports them (issue 20): the exchange of a snapshot
    /// user's code lacks `is_snapshotuser`, and each sign-in gets a virtual openid of its own,
    /// all sharing the user's virtual unionid. Off (the default): WeChat's documented snapshot.
    /// Remembers the session key a sign-in gave `user` in mini program `appid` (and what the
    /// user's `encryptedData` is made with until the next sign-in).
    pub(super) fn note_session_key(&self, appid: &str, user: usize, key: &str) {
        let mut keys = self.session_keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.insert((appid.to_owned(), user), key.to_owned());
    }

    /// The session key of `user`'s last sign-in to mini program `appid`.
    pub(super) fn session_key(&self, appid: &str, user: &str) -> Option<String> {
        let user = self.user_index(user)?;
        self.session_keys.lock().unwrap_or_else(PoisonError::into_inner).get(&(appid.to_owned(), user)).cloned()
    }

    pub(super) fn set_messy_snapshots(&self, on: bool) {
        self.messy_snapshots.store(on, Ordering::Relaxed);
    }

    pub(super) fn messy_snapshots(&self) -> bool {
        self.messy_snapshots.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Issues a fresh single-use code for a consented authorization.
    pub(super) fn issue_code(&self, grant: Grant) -> String {
        let code = random_alphanumeric(32);
        let issued = self.now();
        let mut records = self.lock();
        records.codes.insert(code.clone(), CodeRecord { grant, issued, used: false });
        records.note_issued(issued);
        code
    }

    /// A `js_code` as `wx.login()` gives it to `user` in mini program `appid`.
    pub(super) fn issue_js_code(&self, appid: &str, user: &str) -> Result<String, SimError> {
        let app = self.app(appid).filter(|a| a.kind == SimAppKind::MiniProgram);
        let app = app.ok_or_else(|| SimError::UnknownApp(appid.to_owned()))?;
        let index = self.user_index(user).ok_or_else(|| SimError::UnknownUser(user.to_owned()))?;
        if self.users[index].snapshot {
            return Err(SimError::SnapshotNeedsUserinfo(user.to_owned()));
        }
        let grant = Grant { appid: app.appid.clone(), kind: app.kind, user: index, scope: "", virtual_openid: None };
        Ok(self.issue_code(grant))
    }

    /// Spends a `js_code` of `appid`: 40029 unknown, another app's or expired, 40163 used,
    /// 45011 past the user's 100 logins a minute (the code is not spent then).
    pub(super) fn redeem_js_code(&self, appid: &str, js_code: &str) -> Result<Grant, i64> {
        let now = self.now();
        let mut records = self.lock();
        let record = records.codes.get_mut(js_code).filter(|r| r.grant.appid == appid).ok_or(errcode::INVALID_CODE)?;
        if record.used {
            return Err(errcode::CODE_USED);
        }
        if now.saturating_sub(record.issued) > Duration::from_secs(record.grant.kind.code_life_secs()) {
            return Err(errcode::INVALID_CODE);
        }
        let minute = now.as_secs() / 60;
        let mut logins = self.logins.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, calls) = logins.entry((appid.to_owned(), record.grant.user)).or_insert((minute, 0));
        if *at != minute {
            (*at, *calls) = (minute, 0);
        }
        // No per-user limit either when the quotas are lifted (`set_quota(None)`: benchmarks).
        if *calls >= MINI_LOGINS_PER_MINUTE && !self.lifted.load(Ordering::Relaxed) {
            return Err(errcode::MINUTE_QUOTA);
        }
        *calls += 1;
        record.used = true;
        Ok(record.grant.clone())
    }

    /// Spends a code of `appid` and issues the token pair: 40029 unknown, another app's or
    /// expired, 40163 already used. WeChat's global errcode table describes 40029 as
    /// "不合法或已过期的code" and that is what an expired code gets in practice; 42003 ("code
    /// expired") is documented but rarely seen (docs/design.md §10.5).
    pub(super) fn redeem_code(&self, appid: &str, code: &str) -> Result<Issued, i64> {
        let now = self.now();
        let mut records = self.lock();
        let record = records.codes.get_mut(code).filter(|r| r.grant.appid == appid).ok_or(errcode::INVALID_CODE)?;
        if record.grant.kind == SimAppKind::MiniProgram {
            return Err(errcode::INVALID_CODE); // a js_code is traded at jscode2session only
        }
        if record.used {
            return Err(errcode::CODE_USED);
        }
        let life = Duration::from_secs(record.grant.kind.code_life_secs());
        if now.saturating_sub(record.issued) > life {
            return Err(errcode::INVALID_CODE);
        }
        record.used = true;
        let grant = record.grant.clone();
        let access_token = random_token();
        let refresh_token = random_token();
        records.access.insert(access_token.clone(), AccessRecord { grant: grant.clone(), issued: now });
        records.refresh.insert(
            refresh_token.clone(),
            RefreshRecord { grant: grant.clone(), issued: now, access_token: access_token.clone() },
        );
        records.note_issued(now);
        Ok(Issued { access_token, refresh_token, grant })
    }

    /// Refreshes the access token of a refresh token of `appid`: 40030 unknown or another
    /// app's, 42002 older than 30 days.
    ///
    /// WeChat's open-platform doc for 刷新access_token: "若access_token已超时，那么进行
    /// refresh_token会获取一个新的access_token，新的超时时间；若access_token未超时，那么进行
    /// refresh_token不会改变access_token，但超时时间会刷新，相当于续期access_token". So while
    /// the current access token is alive it is kept and its 7200 s start again (renewed); once
    /// it has expired a new one replaces it and the old one stops working.
    pub(super) fn refresh(&self, appid: &str, refresh_token: &str) -> Result<Issued, i64> {
        let now = self.now();
        let mut records = self.lock();
        let Records { refresh, access, .. } = &mut *records;
        let record =
            refresh.get_mut(refresh_token).filter(|r| r.grant.appid == appid).ok_or(errcode::INVALID_REFRESH_TOKEN)?;
        if now.saturating_sub(record.issued) > REFRESH_LIFE {
            return Err(errcode::REFRESH_TOKEN_EXPIRED);
        }
        if let Some(alive) =
            access.get_mut(&record.access_token).filter(|a| now.saturating_sub(a.issued) <= ACCESS_LIFE)
        {
            alive.issued = now;
            let grant = record.grant.clone();
            return Ok(Issued {
                access_token: record.access_token.clone(),
                refresh_token: refresh_token.to_owned(),
                grant,
            });
        }
        let access_token = random_token();
        let old = std::mem::replace(&mut record.access_token, access_token.clone());
        let grant = record.grant.clone();
        access.remove(&old);
        access.insert(access_token.clone(), AccessRecord { grant: grant.clone(), issued: now });
        records.note_issued(now);
        Ok(Issued { access_token, refresh_token: refresh_token.to_owned(), grant })
    }

    /// What a live access token grants: 40014 unknown (or replaced), 42001 expired.
    pub(super) fn access(&self, access_token: &str) -> Result<Grant, i64> {
        let now = self.now();
        let records = self.lock();
        let record = records.access.get(access_token).ok_or(errcode::INVALID_ACCESS_TOKEN)?;
        if now.saturating_sub(record.issued) > ACCESS_LIFE {
            return Err(errcode::ACCESS_TOKEN_EXPIRED);
        }
        Ok(record.grant.clone())
    }
}

/// One app's calls to one endpoint in the current minute and day.
#[derive(Default)]
struct Spent {
    minute: u64,
    in_minute: u32,
    day: u64,
    in_day: u32,
}

impl Spent {
    /// Starts a new minute or day when the clock has moved into one.
    fn turn(&mut self, minute: u64, day: u64) {
        if self.minute != minute {
            (self.minute, self.in_minute) = (minute, 0);
        }
        if self.day != day {
            (self.day, self.in_day) = (day, 0);
        }
    }
}

impl Records {
    /// Counts an issued record and, now and then, forgets records long past their life.
    fn note_issued(&mut self, now: Duration) {
        self.issued_since_sweep += 1;
        if self.issued_since_sweep < SWEEP_EVERY {
            return;
        }
        self.issued_since_sweep = 0;
        let alive = |issued: Duration, life: Duration| now.saturating_sub(issued) <= life + FORGET_AFTER;
        self.codes.retain(|_, r| alive(r.issued, Duration::from_secs(r.grant.kind.code_life_secs())));
        self.access.retain(|_, r| alive(r.issued, ACCESS_LIFE));
        self.refresh.retain(|_, r| alive(r.issued, REFRESH_LIFE));
    }
}

/// WeChat's openid shape: `o` and 27 base64url characters, stable per (app, user).
pub(super) fn openid(appid: &str, user: &str) -> String {
    format!("o{}", &digest_b64(&format!("openid|{appid}|{user}"))[..27])
}

/// WeChat's unionid shape: `o6_bm` and 23 base64url characters, stable per user.
pub(super) fn unionid(user: &str) -> String {
    format!("o6_bm{}", &digest_b64(&format!("unionid|{user}"))[..23])
}

/// A mini program session key: 16 random bytes in base64, as WeChat's.
pub(super) fn random_session_key() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// 43 base64url characters of SHA-256: long enough for both id shapes.
fn digest_b64(input: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(input.as_bytes()))
}

fn random_alphanumeric(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// 80 characters of `[A-Za-z0-9_-]`, like WeChat's web access and refresh tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 60];
    rand::rng().fill(&mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// WeChat's request-id hint, `xxxxxxxx-xxxxxxxx-xxxxxxxx` in hex.
pub(super) fn random_rid() -> String {
    let bytes: [u8; 12] = rand::rng().random();
    format!("{}-{}-{}", hex::encode(&bytes[..4]), hex::encode(&bytes[4..8]), hex::encode(&bytes[8..]))
}
