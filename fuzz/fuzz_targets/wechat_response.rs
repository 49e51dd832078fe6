//! Decoding of an `sns` endpoint's HTTP 200 body, as WeChat (or anything posing as it) may send
//! it, for each reply type the client reads: the token grant (`access_token`, `refresh_token`),
//! the profile (`userinfo`) and `sns/auth`'s plain errcode reply. Invariants beyond "never
//! panics":
//! - the three decodings agree on whether the body is an errcode reply, and on the errcode; an
//!   errcode reply has a non-zero errcode, the one in the body, and a payload has none;
//! - the error map is total: every failure maps to a reason and a gRPC status whose errcode
//!   metadata is WeChat's, and the status encodes into response headers;
//! - a decoded profile survives the profile cache's round trip (serialized, decoded again).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wxauth::error::ApiError;
use wxauth::fuzzing::wechat_reply;
use wxauth::wechat::{Profile, TokenGrant, WechatError};

fuzz_target!(|body: &[u8]| {
    let grant = wechat_reply::<TokenGrant>(body);
    let profile = wechat_reply::<Profile>(body);
    let auth = wechat_reply::<Value>(body);

    let errcodes = [errcode(&grant), errcode(&profile), errcode(&auth)];
    assert!(errcodes.iter().all(|e| *e == errcodes[0]), "{errcodes:?}");
    // (serde also reads a struct from a JSON array, `[40029, "msg"]`: only objects name a key.)
    let sent = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Some(object.get("errcode").and_then(Value::as_i64).unwrap_or(0)),
        _ => None,
    };
    if let Some(errcode) = errcodes[0] {
        assert_ne!(errcode, 0);
        assert!(sent.is_none_or(|sent| sent == errcode), "{sent:?} != {errcode}");
    } else if grant.is_ok() || profile.is_ok() || auth.is_ok() {
        assert!(sent.is_none_or(|sent| sent == 0), "a payload with errcode {sent:?}");
    }

    for error in [grant.as_ref().err(), profile.as_ref().err(), auth.as_ref().err()].into_iter().flatten() {
        check_error_map(error);
    }

    if let Ok(profile) = profile {
        let cached = serde_json::to_vec(&profile).expect("a profile serializes");
        let back = wechat_reply::<Profile>(&cached).expect("the cache reads its own JSON");
        assert_eq!(back, profile);
    }
});

fn errcode<T>(reply: &Result<T, WechatError>) -> Option<i64> {
    reply.as_ref().err().and_then(WechatError::errcode)
}

/// Every decoding failure maps, as the RPCs map it, to a reason and a status that can be sent.
fn check_error_map(error: &WechatError) {
    let api = ApiError::from_wechat(error);
    assert!(!api.reason().is_empty());
    if let Some(errcode) = error.errcode() {
        assert_eq!(api.errcode(), Some(errcode));
    }
    let status = api.to_status();
    assert_eq!(status.code(), api.code());
    // Whatever WeChat sent, the caller's message is the fixed one of the reason.
    assert_eq!(status.message(), api.to_string());
    // Encoded into the response headers as tonic sends it (grpc-status-details-bin).
    let response = status.into_http::<()>();
    assert!(response.headers().contains_key("grpc-status-details-bin"));
}
