//! Why a WeChat call failed, and what that means for trying again.

/// Why a WeChat call failed. Transport, upstream reply and decoding stay apart; no variant
/// carries a URL (they hold secrets and codes) or a token.
#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered with an errcode.
    #[error("WeChat errcode {errcode}")]
    Api {
        /// The errcode.
        errcode: i64,
        /// WeChat's message (carries a request id hint).
        errmsg: String,
    },
    /// No answer: connect error, timeout, reset.
    #[error("WeChat unreachable")]
    Transport(#[source] reqwest::Error),
    /// An HTTP status other than 200.
    #[error("WeChat answered HTTP {0}")]
    Status(u16),
    /// A 200 whose body is not the JSON WeChat documents.
    #[error("WeChat reply not understood")]
    Decode(#[source] serde_json::Error),
}

impl WechatError {
    /// The errcode, when WeChat gave one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            WechatError::Api { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// Whether trying again soon may succeed (busy, 5xx, network).
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            WechatError::Api { errcode, .. } => *errcode == -1,
            WechatError::Transport(_) | WechatError::Decode(_) => true,
            WechatError::Status(s) => *s >= 500,
        }
    }

    /// Whether WeChat may have acted on the request though its answer was lost: a transient
    /// failure once the request could have arrived (everything but a failed connection). For a
    /// code exchange that means the code may be spent (docs/design.md §10.5).
    pub(crate) fn may_have_acted(&self) -> bool {
        match self {
            WechatError::Transport(e) => !e.is_connect(),
            other => other.is_transient(),
        }
    }
}
