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

/// `ErrorInfo.domain` of every wxauth error.
pub const DOMAIN: &str = "wxauth.dev";

/// Every errcode wxauth knows (the table of docs/design.md §3, the token-expiry codes its callers
/// handle and the rest of WeChat's sns table), each with its metric label: the
/// `errcode` label of `wxauth_wechat_requests_total` is one of these or `other`
/// ([`errcode_label`]), so a WeChat that invents codes cannot grow the scrape without bound.
const KNOWN_ERRCODES: [(i64, &str); 25] = [
    (-1, "-1"),
    (10005, "10005"),
    (10009, "10009"),
    (40001, "40001"),
    (40003, "40003"),
    (40013, "40013"),
    (40014, "40014"),
    (40029, "40029"),
    (40030, "40030"),
    (40125, "40125"),
    (40163, "40163"),
    (40226, "40226"),
    (41001, "41001"),
    (41002, "41002"),
    (41003, "41003"),
    (41004, "41004"),
    (41008, "41008"),
    (42001, "42001"),
    (42002, "42002"),
    (42003, "42003"),
    (45009, "45009"),
    (45011, "45011"),
    (48001, "48001"),
    (50001, "50001"),
    (50002, "50002"),
];

/// The `errcode` metric label of a WeChat answer: its number when wxauth knows the code
/// ([`KNOWN_ERRCODES`]), `other` for any other value WeChat sends.
pub fn errcode_label(errcode: i64) -> &'static str {
    KNOWN_ERRCODES.iter().find(|(known, _)| *known == errcode).map_or("other", |(_, label)| label)
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
    /// 50001, 50002, 40226 (jscode2session's high-risk user): the user is restricted or the account frozen (docs/design.md §10).
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
    /// The refresh token is dead (42002, 40030): the user must authorize again.
    #[error("the user must authorize again")]
    ReauthorizationRequired(Option<Upstream>),
    /// 48001, 10005, a snsapi_base token asked for the profile, or a client whose own sign-ins
    /// did not grant the profile (another product's consent is not its own: `consent`).
    #[error("scope not granted")]
    ScopeNotGranted(Option<Upstream>),
    /// 45009, 45011, 10009.
    #[error("WeChat rate limit")]
    RateLimited(Upstream),
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
            InvalidCode(u) | CodeExpired(u) | UserRestricted(u) | SignInAgain(u) | RateLimited(u)
            | AppMisconfigured(u) | Wechat(u) => Some(u),
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
            AppNotAllowed | ReturnUrlNotAllowed(_) | ScopeNotGranted(_) | CodeNotFromFlow | UserRestricted(_) => {
                Code::PermissionDenied
            }
            TokenNotFound => Code::NotFound,
            ReauthorizationRequired(_) | AppMisconfigured(_) | SignInAgain(_) => Code::FailedPrecondition,
            RateLimited(_) | ClientRateLimited { .. } | TooManyOpenFlows { .. } => Code::ResourceExhausted,
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

    /// Maps a WeChat failure by its errcode (the table of docs/design.md §3). Token-expiry codes
    /// (42001, 40001, 40014) are handled by the callers before they get here.
    pub fn from_wechat(error: &WechatError) -> Self {
        let upstream = |errcode: i64, errmsg: &str| Upstream { errcode, errmsg: errmsg.chars().take(200).collect() };
        match error {
            WechatError::Api { errcode, errmsg } => {
                let u = upstream(*errcode, errmsg);
                match errcode {
                    40029 => ApiError::InvalidCode(u),
                    42003 => ApiError::CodeExpired(u),
                    40163 => ApiError::CodeUsed(Some(u)),
                    42002 | 40030 => ApiError::ReauthorizationRequired(Some(u)),
                    48001 | 10005 => ApiError::ScopeNotGranted(Some(u)),
                    // 40226: jscode2session's "high risk user" (mini programs).
                    50001 | 50002 | 40226 => ApiError::UserRestricted(u),
                    45009 | 45011 | 10009 => ApiError::RateLimited(u),
                    40013 | 40125 | 41002 | 41004 => ApiError::AppMisconfigured(u),
                    -1 => ApiError::WechatUnavailable(Some(u)),
                    _ => ApiError::Wechat(u),
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

    /// docs/design.md §3's errcode rows: errcode, gRPC code, reason.
    const DESIGN_TABLE: [(i64, Code, &str); 19] = [
        (40029, Code::InvalidArgument, "INVALID_CODE"),
        (42003, Code::InvalidArgument, "CODE_EXPIRED"),
        (40163, Code::InvalidArgument, "CODE_USED"),
        (42002, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED"),
        (40030, Code::FailedPrecondition, "REAUTHORIZATION_REQUIRED"),
        (48001, Code::PermissionDenied, "SCOPE_NOT_GRANTED"),
        (10005, Code::PermissionDenied, "SCOPE_NOT_GRANTED"),
        (45009, Code::ResourceExhausted, "WECHAT_RATE_LIMITED"),
        (45011, Code::ResourceExhausted, "WECHAT_RATE_LIMITED"),
        (10009, Code::ResourceExhausted, "WECHAT_RATE_LIMITED"),
        (40013, Code::FailedPrecondition, "APP_MISCONFIGURED"),
        (40125, Code::FailedPrecondition, "APP_MISCONFIGURED"),
        (41002, Code::FailedPrecondition, "APP_MISCONFIGURED"),
        (41004, Code::FailedPrecondition, "APP_MISCONFIGURED"),
        (50001, Code::PermissionDenied, "USER_RESTRICTED"),
        (50002, Code::PermissionDenied, "USER_RESTRICTED"),
        (40226, Code::PermissionDenied, "USER_RESTRICTED"),
        (-1, Code::Unavailable, "WECHAT_UNAVAILABLE"),
        (40003, Code::Unknown, "WECHAT_ERROR"),
    ];

    #[test]
    fn every_errcode_row_of_the_design_table_maps_to_its_code_and_reason() {
        for (errcode, code, reason) in DESIGN_TABLE {
            let status = api(errcode).to_status();
            assert_eq!(status.code(), code, "errcode {errcode}");
            let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (reason, DOMAIN), "errcode {errcode}");
            assert_eq!(info.metadata.get("errcode"), Some(&errcode.to_string()));
        }
    }

    #[test]
    fn known_errcodes_are_labelled_by_number_and_the_rest_as_other() {
        for (errcode, _, _) in DESIGN_TABLE {
            assert_eq!(errcode_label(errcode), errcode.to_string(), "errcode {errcode}");
        }
        for dead_token in [42001, 40001, 40014] {
            assert_eq!(errcode_label(dead_token), dead_token.to_string());
        }
        for unknown in [0, 1, 99_999, 40_000, i64::MAX, i64::MIN] {
            assert_eq!(errcode_label(unknown), "other", "errcode {unknown}");
        }
        assert!(KNOWN_ERRCODES.iter().all(|(code, label)| code.to_string() == *label), "a label is its number");
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
    fn invalid_arguments_list_their_fields() {
        let status = ApiError::invalid("return_url", "required").to_status();
        let bad = status.get_error_details().bad_request().cloned().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "return_url");
        assert_eq!(bad.field_violations[0].description, "required");
    }
}
