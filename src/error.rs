//! The service's error and its one mapping to gRPC statuses (docs/design.md §3). Every failure a
//! caller can see is an [`ApiError`]; [`ApiError::to_status`] is the only place a status is
//! made, with `ErrorInfo{reason, domain: "wxauth.dev", metadata}`, `BadRequest` field
//! violations and `RetryInfo` where a retry helps. Messages are short and stable; causes go to
//! the logs, never to callers.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::store::StoreError;
use crate::wechat::WechatError;
use crate::wechat::errcodes::{self, Outcome};

/// `ErrorInfo.domain` of every wxauth error.
pub const DOMAIN: &str = "wxauth.dev";

/// The `errcode` metric label of a WeChat answer: its number when wxauth knows the code
/// (`crate::wechat::errcodes::ERRCODES`), `other` for any other value WeChat sends, so a WeChat
/// that invents codes cannot grow the scrape without bound.
pub fn errcode_label(errcode: i64) -> &'static str {
    errcodes::errcode(errcode).map_or("other", |row| row.label)
}

/// How long callers are told to wait before retrying a transient failure.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A request field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field name.
    pub field: &'static str,
    /// What is wrong, without echoing the value.
    pub description: String,
}

/// Everything a caller can be told. `Clone` so a coalesced refresh can hand one result to
/// every waiter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Invalid request fields.
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// The request body is not the RPC's protobuf message (src/codec.rs): the caller's fault,
    /// reason `INVALID_ARGUMENT` with no field to name.
    #[error("request message is not valid protobuf")]
    MalformedMessage,
    /// No or unknown client key.
    #[error("client key missing or unknown")]
    Unauthenticated,
    /// The client may not use this app.
    #[error("client may not use this app")]
    AppNotAllowed,
    /// The client does not hold the grant an app-level RPC needs (`clients.<name>.grants`).
    #[error("client does not hold the grant")]
    GrantMissing(crate::config::Grant),
    /// InvalidateAppAccessToken: the app's forced refreshes of the day are spent (WeChat allows
    /// 20 a day; wxauth counts them across replicas). The token stays what it is until the
    /// day turns or it expires; no RetryInfo.
    #[error("forced refreshes of the day spent")]
    ForceRefreshAllowanceSpent {
        /// The day's allowance.
        limit: u32,
    },
    /// return_url is not on the client's allowlist (with the rejection's code).
    #[error("return_url not allowed")]
    ReturnUrlNotAllowed(&'static str),
    /// WeChat: 40029.
    #[error("invalid code")]
    InvalidCode(Upstream),
    /// WeChat: 42003.
    #[error("code expired")]
    CodeExpired(Upstream),
    /// WeChat: 40163, and no exchange result of ours for the code; or (no upstream) a mobile
    /// app's code wxauth already exchanged, refused without asking WeChat.
    #[error("code already used")]
    CodeUsed(Option<Upstream>),
    /// The code was not relayed through the flow named (or the flow is another client's, or
    /// of another app): refused before WeChat is called.
    #[error("code not relayed through this flow")]
    CodeNotFromFlow,
    /// 50002, 40226 (jscode2session's high-risk user): the user is restricted, or the account
    /// frozen or closed (docs/design.md §10.4).
    #[error("user restricted")]
    UserRestricted(Upstream),
    /// The code exchange was sent but its answer was lost (a timeout, HTTP 5xx, -1, a reply not
    /// understood): WeChat may have spent the code, so a retry could only meet 40163. The
    /// product must start a new sign-in; no RetryInfo.
    #[error("the sign-in must start again")]
    SignInAgain(Upstream),
    /// No token record for (app, openid), or a user this client may not reach.
    #[error("no token for this openid")]
    TokenNotFound,
    /// The user's authorisation is gone: a dead refresh token (42002, 40030), a changed WeChat
    /// password (42007), or an API the user has not authorised (50001, "用户未授权该api": never
    /// given, or withdrawn). The user must consent again.
    #[error("the user must authorize again")]
    ReauthorizationRequired(Option<Upstream>),
    /// 48001, 10005, a snsapi_base token asked for the profile, or a client whose own sign-ins
    /// did not grant the profile (another product's consent is not its own: `consent`).
    #[error("scope not granted")]
    ScopeNotGranted(Option<Upstream>),
    /// 45011, 10009: too many calls a minute.
    #[error("WeChat rate limit")]
    RateLimited(Upstream),
    /// 45009 ("reach max api daily quota limit"): the app's daily quota is spent. A retry
    /// cannot help before WeChat's quota day turns, whose hour WeChat does not document: no
    /// RetryInfo (docs/design.md §3.3).
    #[error("WeChat daily quota exhausted")]
    DailyQuotaExhausted(Upstream),
    /// 40013, 40125, 41002, 41004: the app's appid or secret is wrong.
    #[error("app misconfigured")]
    AppMisconfigured(Upstream),
    /// -1, HTTP errors, timeouts, bad JSON.
    #[error("WeChat unavailable")]
    WechatUnavailable(Option<Upstream>),
    /// Redis unreachable.
    #[error("store unavailable")]
    StoreUnavailable,
    /// Any other errcode.
    #[error("WeChat error")]
    Wechat(Upstream),
    /// The client is over its rate limit for this RPC family (`clients.<name>.rate_limits`):
    /// governor's wait until its bucket has room again.
    #[error("client rate limit exceeded")]
    ClientRateLimited {
        /// The RPC family (`authorize`, `exchange`, `user`).
        family: &'static str,
        /// How long until a call would be let through.
        retry_after: Duration,
    },
    /// The client started `clients.<name>.max_open_flows` flows in the windows the cap still
    /// counts (`crate::store::flow_cap`): one more fits after `retry_after`.
    #[error("too many open flows")]
    TooManyOpenFlows {
        /// The configured cap.
        limit: u32,
        /// How long until enough of the oldest windows leave the count (at most a window after
        /// the oldest flow expires).
        retry_after: Duration,
    },
    /// The caller's deadline passed.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The request's body did not arrive within `server.header_timeout` of its headers: the
    /// gRPC gate ended the call before it took a request slot.
    #[error("request body not received within server.header_timeout")]
    RequestBodyTimeout,
    /// A bug or an impossible state (a refresh task that panicked).
    #[error("internal error")]
    Internal,
}

/// What WeChat said, for `ErrorInfo.metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// The errcode (0 for HTTP or transport failures).
    pub errcode: i64,
    /// WeChat's errmsg, cut short.
    pub errmsg: String,
}

impl ApiError {
    /// One invalid field.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation { field, description: description.into() }])
    }

    /// The upstream errcode, when WeChat gave one.
    pub fn errcode(&self) -> Option<i64> {
        self.upstream().map(|u| u.errcode)
    }

    /// What WeChat said, for the errors that come from WeChat.
    fn upstream(&self) -> Option<&Upstream> {
        use ApiError::*;
        match self {
            InvalidCode(u)
            | CodeExpired(u)
            | UserRestricted(u)
            | SignInAgain(u)
            | RateLimited(u)
            | DailyQuotaExhausted(u)
            | AppMisconfigured(u)
            | Wechat(u) => Some(u),
            CodeUsed(u) | ReauthorizationRequired(u) | ScopeNotGranted(u) | WechatUnavailable(u) => u.as_ref(),
            _ => None,
        }
    }

    /// The stable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidArgument(_) | MalformedMessage => "INVALID_ARGUMENT",
            Unauthenticated => "CLIENT_UNAUTHENTICATED",
            AppNotAllowed => "APP_NOT_ALLOWED",
            GrantMissing(_) => "GRANT_MISSING",
            ForceRefreshAllowanceSpent { .. } => "FORCE_REFRESH_ALLOWANCE_SPENT",
            ReturnUrlNotAllowed(_) => "RETURN_URL_NOT_ALLOWED",
            InvalidCode(_) => "INVALID_CODE",
            CodeExpired(_) => "CODE_EXPIRED",
            CodeUsed(_) => "CODE_USED",
            CodeNotFromFlow => "CODE_NOT_FROM_FLOW",
            UserRestricted(_) => "USER_RESTRICTED",
            SignInAgain(_) => "SIGN_IN_AGAIN",
            TokenNotFound => "TOKEN_NOT_FOUND",
            ReauthorizationRequired(_) => "REAUTHORIZATION_REQUIRED",
            ScopeNotGranted(_) => "SCOPE_NOT_GRANTED",
            RateLimited(_) => "WECHAT_RATE_LIMITED",
            DailyQuotaExhausted(_) => "WECHAT_DAILY_QUOTA_EXHAUSTED",
            AppMisconfigured(_) => "APP_MISCONFIGURED",
            WechatUnavailable(_) => "WECHAT_UNAVAILABLE",
            StoreUnavailable => "STORE_UNAVAILABLE",
            Wechat(_) => "WECHAT_ERROR",
            ClientRateLimited { .. } => "CLIENT_RATE_LIMITED",
            TooManyOpenFlows { .. } => "TOO_MANY_OPEN_FLOWS",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            RequestBodyTimeout => "REQUEST_BODY_TIMEOUT",
            Internal => "INTERNAL",
        }
    }

    /// The gRPC code of docs/design.md §3's table.
    pub fn code(&self) -> Code {
        use ApiError::*;
        match self {
            InvalidArgument(_) | MalformedMessage | InvalidCode(_) | CodeExpired(_) | CodeUsed(_) => {
                Code::InvalidArgument
            }
            Unauthenticated => Code::Unauthenticated,
            AppNotAllowed
            | GrantMissing(_)
            | ReturnUrlNotAllowed(_)
            | ScopeNotGranted(_)
            | CodeNotFromFlow
            | UserRestricted(_) => Code::PermissionDenied,
            TokenNotFound => Code::NotFound,
            ReauthorizationRequired(_) | AppMisconfigured(_) | SignInAgain(_) => Code::FailedPrecondition,
            RateLimited(_)
            | DailyQuotaExhausted(_)
            | ClientRateLimited { .. }
            | TooManyOpenFlows { .. }
            | ForceRefreshAllowanceSpent { .. } => Code::ResourceExhausted,
            WechatUnavailable(_) | StoreUnavailable => Code::Unavailable,
            Wechat(_) => Code::Unknown,
            DeadlineExceeded | RequestBodyTimeout => Code::DeadlineExceeded,
            Internal => Code::Internal,
        }
    }

    /// The status the caller receives.
    pub fn to_status(&self) -> Status {
        let mut metadata = HashMap::new();
        if let Some(u) = self.upstream() {
            metadata.insert("errcode".to_owned(), u.errcode.to_string());
            if !u.errmsg.is_empty() {
                metadata.insert("errmsg".to_owned(), u.errmsg.clone());
            }
        }
        match self {
            ApiError::ReturnUrlNotAllowed(rejection) => {
                metadata.insert("rejection".to_owned(), (*rejection).to_owned());
            }
            ApiError::ClientRateLimited { family, .. } => {
                metadata.insert("family".to_owned(), (*family).to_owned());
            }
            ApiError::TooManyOpenFlows { limit, .. } => {
                metadata.insert("max_open_flows".to_owned(), limit.to_string());
            }
            ApiError::GrantMissing(grant) => {
                metadata.insert("grant".to_owned(), grant.as_str().to_owned());
            }
            ApiError::ForceRefreshAllowanceSpent { limit } => {
                metadata.insert("forced_refreshes_per_day".to_owned(), limit.to_string());
            }
            _ => {}
        }
        let mut details = ErrorDetails::with_error_info(self.reason(), DOMAIN, metadata);
        if let ApiError::InvalidArgument(violations) = self {
            for v in violations {
                details.add_bad_request_violation(v.field, v.description.clone());
            }
        }
        match self {
            ApiError::RateLimited(_) | ApiError::WechatUnavailable(_) | ApiError::StoreUnavailable => {
                details.set_retry_info(Some(RETRY_AFTER));
            }
            // The limiter's own wait, never zero (a zero delay reads as "retry at once").
            ApiError::ClientRateLimited { retry_after, .. } | ApiError::TooManyOpenFlows { retry_after, .. } => {
                details.set_retry_info(Some((*retry_after).max(Duration::from_millis(1))));
            }
            _ => {}
        }
        Status::with_error_details(self.code(), self.to_string(), details)
    }

    /// This failure as the answer to a code exchange that was sent: an answer that was lost
    /// (`WECHAT_UNAVAILABLE`: timeout, 5xx, -1, a reply not understood) becomes
    /// `SIGN_IN_AGAIN`, since WeChat may have spent the code; anything else stays.
    pub fn spent_code(self) -> Self {
        match self {
            ApiError::WechatUnavailable(u) => {
                ApiError::SignInAgain(u.unwrap_or(Upstream { errcode: 0, errmsg: String::new() }))
            }
            other => other,
        }
    }

    /// This failure as the answer to an exchange that took over a lapsed claim on its code: a
    /// 40163 then means the earlier exchange reached WeChat and its answer was lost, so the
    /// product is told to sign in again (`SIGN_IN_AGAIN`), as the earlier one would have been.
    pub fn spent_code_of_lapsed_claim(self) -> Self {
        match self {
            ApiError::CodeUsed(u) => {
                ApiError::SignInAgain(u.unwrap_or(Upstream { errcode: 40163, errmsg: String::new() }))
            }
            other => other,
        }
    }

    /// Maps a WeChat failure by its errcode's row in WeChat's tables
    /// (`crate::wechat::errcodes::ERRCODES`, docs/design.md §10.4). Token-expiry codes (42001,
    /// 40001, 40014) are handled by the callers before they get here.
    pub fn from_wechat(error: &WechatError) -> Self {
        let upstream = |errcode: i64, errmsg: &str| Upstream { errcode, errmsg: errmsg.chars().take(200).collect() };
        match error {
            WechatError::Api { errcode, errmsg } => {
                let u = upstream(*errcode, errmsg);
                match errcodes::errcode(*errcode).map(|row| row.outcome) {
                    Some(Outcome::InvalidCode) => ApiError::InvalidCode(u),
                    Some(Outcome::CodeExpired) => ApiError::CodeExpired(u),
                    Some(Outcome::CodeUsed) => ApiError::CodeUsed(Some(u)),
                    Some(Outcome::Reauthorize) => ApiError::ReauthorizationRequired(Some(u)),
                    Some(Outcome::ScopeNotGranted) => ApiError::ScopeNotGranted(Some(u)),
                    Some(Outcome::UserRestricted) => ApiError::UserRestricted(u),
                    Some(Outcome::MinuteQuota) => ApiError::RateLimited(u),
                    Some(Outcome::DailyQuota) => ApiError::DailyQuotaExhausted(u),
                    Some(Outcome::AppMisconfigured) => ApiError::AppMisconfigured(u),
                    Some(Outcome::Busy) => ApiError::WechatUnavailable(Some(u)),
                    Some(Outcome::DeadAccessToken | Outcome::Other) | None => ApiError::Wechat(u),
                }
            }
            WechatError::Status(status) => ApiError::WechatUnavailable(Some(upstream(0, &format!("HTTP {status}")))),
            WechatError::Transport(e) if e.is_timeout() => ApiError::WechatUnavailable(Some(upstream(0, "timeout"))),
            WechatError::Transport(_) => ApiError::WechatUnavailable(Some(upstream(0, "unreachable"))),
            WechatError::Decode(_) => ApiError::WechatUnavailable(Some(upstream(0, "reply not understood"))),
        }
    }
}

/// Silent: the store logged the failure once, where the operation that failed is known (its
/// `call!` macro, or the seal of the record).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            // A record that could not be written is a bug in wxauth, not an outage.
            StoreError::Seal { .. } => ApiError::Internal,
            StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::KnownDown => ApiError::StoreUnavailable,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        error.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(errcode: i64) -> ApiError {
        ApiError::from_wechat(&WechatError::Api { errcode, errmsg: "m".into() })
    }

    /// The gRPC code and reason each outcome gives a caller (docs/design.md §3.3).
    fn expected(outcome: Outcome) -> (Code, &'static str) {
        match outcome {
            Outcome::InvalidCode => (Code::InvalidArgument, "INVALID_CODE"),
            Outcome::CodeExpired => (Code::InvalidArgument, "CODE_EXPIRED"),
            Outcome::CodeUsed => (Code::InvalidArgument, "CODE_USED"),
            Outcome::Reauthorize => (Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED"),
            Outcome::ScopeNotGranted => (Code::PermissionDenied, "SCOPE_NOT_GRANTED"),
            Outcome::UserRestricted => (Code::PermissionDenied, "USER_RESTRICTED"),
            Outcome::MinuteQuota => (Code::ResourceExhausted, "WECHAT_RATE_LIMITED"),
            Outcome::DailyQuota => (Code::ResourceExhausted, "WECHAT_DAILY_QUOTA_EXHAUSTED"),
            Outcome::AppMisconfigured => (Code::FailedPrecondition, "APP_MISCONFIGURED"),
            Outcome::Busy => (Code::Unavailable, "WECHAT_UNAVAILABLE"),
            Outcome::DeadAccessToken | Outcome::Other => (Code::Unknown, "WECHAT_ERROR"),
        }
    }

    /// docs/design.md §10.4, the errcode table.
    fn design_errcode_table() -> &'static str {
        let design = include_str!("../docs/design.md");
        let start = design.find("### 10.4").expect("design.md §10.4");
        let end = design[start..].find("### 10.5").map_or(design.len(), |end| start + end);
        &design[start..end]
    }

    #[test]
    fn every_errcode_of_the_table_maps_by_its_meaning_and_is_in_the_design_table() {
        let design = design_errcode_table();
        for row in errcodes::ERRCODES {
            let code = row.code;
            assert!(!row.meaning.is_empty(), "errcode {code} has WeChat's words");
            assert_eq!(row.label, code.to_string(), "a label is its number");
            assert_eq!(errcodes::ERRCODES.iter().filter(|r| r.code == code).count(), 1, "errcode {code} once");
            let status = api(code).to_status();
            let (grpc, reason) = expected(row.outcome);
            assert_eq!(status.code(), grpc, "errcode {code}");
            let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (reason, DOMAIN), "errcode {code}");
            assert_eq!(info.metadata.get("errcode"), Some(&code.to_string()));
            let line = design
                .lines()
                .find(|line| line.starts_with(&format!("| {code} | {}", row.meaning)))
                .unwrap_or_else(|| panic!("docs/design.md §10.4 has no row `| {code} | {} ...`", row.meaning));
            let says =
                if row.outcome == Outcome::DeadAccessToken { "refresh once".to_owned() } else { format!("`{reason}`") };
            assert!(line.contains(&says), "design.md's row of {code} says {says}: {line}");
        }
    }

    #[test]
    fn user_not_authorised_sends_the_user_through_consent_and_the_restriction_stays() {
        // 50001 "用户未授权该api": consent again; 50002 "用户受限": tell the user.
        let unauthorised = api(50001).to_status();
        assert_eq!(unauthorised.code(), Code::FailedPrecondition);
        assert_eq!(
            unauthorised.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(),
            Some("REAUTHORIZATION_REQUIRED")
        );
        assert!(unauthorised.get_error_details().retry_info().is_none());
        assert_eq!(api(50002).reason(), "USER_RESTRICTED");
    }

    #[test]
    fn a_spent_daily_quota_says_so_without_retry_info_and_a_minute_quota_retries() {
        let daily = api(45009).to_status();
        assert_eq!(daily.code(), Code::ResourceExhausted);
        let info = daily.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, "WECHAT_DAILY_QUOTA_EXHAUSTED");
        assert!(daily.get_error_details().retry_info().is_none(), "a daily quota does not come back in a second");
        for minute in [45011, 10009] {
            let status = api(minute).to_status();
            assert_eq!(
                status.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(),
                Some("WECHAT_RATE_LIMITED")
            );
            assert!(status.get_error_details().retry_info().is_some(), "errcode {minute}");
        }
    }

    #[test]
    fn unknown_errcodes_are_wechat_errors_labelled_other() {
        for unknown in [0, 1, 99_999, 40_000, 10_016, i64::MAX, i64::MIN] {
            assert_eq!(errcode_label(unknown), "other", "errcode {unknown}");
            assert_eq!(api(unknown).reason(), "WECHAT_ERROR", "errcode {unknown}");
        }
        for dead_token in [42001, 40001, 40014] {
            assert_eq!(errcode_label(dead_token), dead_token.to_string());
        }
    }

    #[test]
    fn a_code_from_another_flow_is_permission_denied_with_nothing_to_retry() {
        let status = ApiError::CodeNotFromFlow.to_status();
        assert_eq!(status.code(), Code::PermissionDenied);
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("CODE_NOT_FROM_FLOW", DOMAIN));
        assert!(info.metadata.is_empty(), "WeChat was never asked: no errcode");
        assert!(status.get_error_details().retry_info().is_none());
    }

    #[test]
    fn a_lost_exchange_answer_asks_for_a_new_sign_in_without_retry_info() {
        let lost = ApiError::WechatUnavailable(Some(Upstream { errcode: 0, errmsg: "timeout".into() }));
        let status = lost.spent_code().to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(), Some("SIGN_IN_AGAIN"));
        assert!(status.get_error_details().retry_info().is_none(), "the code may be spent: never retry");
        assert_eq!(api(40029).spent_code(), api(40029), "a definite answer stays what it is");
    }

    #[test]
    fn a_code_used_under_a_lapsed_claim_asks_for_a_new_sign_in() {
        let status = api(40163).spent_code_of_lapsed_claim().to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.get_error_details().error_info().map(|i| i.reason.clone()).as_deref(), Some("SIGN_IN_AGAIN"));
        assert!(status.get_error_details().retry_info().is_none());
        assert_eq!(api(40029).spent_code_of_lapsed_claim(), api(40029), "other answers stay what they are");
    }

    #[test]
    fn transient_failures_carry_retry_info() {
        let status = ApiError::from_wechat(&WechatError::Status(502)).to_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
        assert!(ApiError::StoreUnavailable.to_status().get_error_details().retry_info().is_some());
        assert!(api(40029).to_status().get_error_details().retry_info().is_none());
    }

    #[test]
    fn client_limits_are_resource_exhausted_with_their_own_reason_and_delay() {
        let limited = ApiError::ClientRateLimited { family: "exchange", retry_after: Duration::from_millis(250) };
        let flows = ApiError::TooManyOpenFlows { limit: 10, retry_after: Duration::from_secs(90) };
        for (error, reason, key, value, delay) in [
            (limited, "CLIENT_RATE_LIMITED", "family", "exchange", Duration::from_millis(250)),
            (flows, "TOO_MANY_OPEN_FLOWS", "max_open_flows", "10", Duration::from_secs(90)),
        ] {
            let status = error.to_status();
            assert_eq!(status.code(), Code::ResourceExhausted, "{reason}");
            let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.metadata.get(key).map(String::as_str), Some(value));
            let retry = status.get_error_details().retry_info().cloned().expect("RetryInfo");
            assert_eq!(retry.retry_delay, Some(delay), "{reason}");
        }
        let zero = ApiError::ClientRateLimited { family: "user", retry_after: Duration::ZERO }.to_status();
        assert!(zero.get_error_details().retry_info().and_then(|r| r.retry_delay).is_some_and(|d| !d.is_zero()));
    }

    #[test]
    fn a_missing_grant_names_it_and_a_spent_allowance_has_no_retry_info() {
        let status = ApiError::GrantMissing(crate::config::Grant::Jssdk).to_status();
        assert_eq!(status.code(), Code::PermissionDenied);
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.metadata.get("grant").map(String::as_str)),
            ("GRANT_MISSING", Some("jssdk"))
        );
        let spent = ApiError::ForceRefreshAllowanceSpent { limit: 20 }.to_status();
        assert_eq!(spent.code(), Code::ResourceExhausted);
        let info = spent.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!(info.reason, "FORCE_REFRESH_ALLOWANCE_SPENT");
        assert_eq!(info.metadata.get("forced_refreshes_per_day").map(String::as_str), Some("20"));
        assert!(spent.get_error_details().retry_info().is_none(), "the day must turn: no delay to give");
    }

    #[test]
    fn invalid_arguments_list_their_fields() {
        let status = ApiError::invalid("return_url", "required").to_status();
        let bad = status.get_error_details().bad_request().cloned().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "return_url");
        assert_eq!(bad.field_violations[0].description, "required");
    }
}
