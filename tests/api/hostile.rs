//! Hostile input: random field values for every RPC get a status with wxauth's ErrorInfo (or
//! an answer), never a panic, a hang or a dropped connection, and the service keeps serving.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic_types::StatusExt as _;
use wxauth::proto::{
    BuildAuthorizeUrlRequest, ExchangeCodeRequest, ForgetUserRequest, GetUserInfoRequest, RefreshTokenRequest,
    ValidateTokenRequest, WxLoginOptions,
};

use crate::helpers::{Backend, spawn_app};

/// A random string from a palette of troublemakers: controls, separators, unicode, long runs.
fn nasty(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "",
        "a",
        "mp",
        "web",
        "Z9",
        "\0",
        "\r\n",
        "\t",
        " ",
        "%00",
        "%2F",
        "../",
        "\\",
        "@",
        "#",
        "?",
        "&",
        "=",
        "'",
        "\"",
        "<script>",
        "😀",
        "ｅｖｉｌ",
        "。",
        "\u{202e}",
        "https://",
        "http://evil.com/",
        "javascript:",
        "https://passport.example.com/login/",
        "//evil.com",
        "wechat_redirect",
        "o",
        "-",
        "_",
    ];
    let mut s = String::new();
    for _ in 0..rng.random_range(0..8) {
        s.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    if rng.random_bool(0.05) {
        s.push_str(&"x".repeat(rng.random_range(100..20_000)));
    }
    s
}

fn enum_value(rng: &mut StdRng) -> i32 {
    if rng.random_bool(0.8) { rng.random_range(0..4) } else { rng.random_range(i32::MIN..i32::MAX) }
}

fn acceptable(result: Result<(), tonic::Status>) {
    if let Err(status) = result {
        let allowed = [Code::InvalidArgument, Code::PermissionDenied, Code::NotFound];
        assert!(allowed.contains(&status.code()), "unexpected status {status:?}");
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo on every error");
        assert_eq!(info.domain, "wxauth.dev");
    }
}

async fn random_requests_get_clean_answers(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
    for _ in 0..150 {
        let mut grpc = app.grpc.clone();
        let request = BuildAuthorizeUrlRequest {
            app: nasty(&mut rng),
            return_url: nasty(&mut rng),
            scope: enum_value(&mut rng),
            state: nasty(&mut rng),
            device: enum_value(&mut rng),
            force_popup: rng.random_bool(0.5),
            user_agent: nasty(&mut rng),
            wx_login_options: Some(WxLoginOptions {
                self_redirect: rng.random_bool(0.5),
                style: nasty(&mut rng),
                href: nasty(&mut rng),
            }),
        };
        acceptable(grpc.build_authorize_url(app.req(request)).await.map(|_| ()));
        let request = ExchangeCodeRequest {
            app: nasty(&mut rng),
            flow_id: nasty(&mut rng),
            code: nasty(&mut rng),
            include_user_info: rng.random_bool(0.5),
            lang: enum_value(&mut rng),
            device: enum_value(&mut rng),
        };
        // A well-formed code the relay never saw is refused: PERMISSION_DENIED.
        acceptable(grpc.exchange_code(app.req(request)).await.map(|_| ()));
        let (a, o, d) = (nasty(&mut rng), nasty(&mut rng), enum_value(&mut rng));
        let lang = enum_value(&mut rng);
        let request = GetUserInfoRequest { app: a.clone(), openid: o.clone(), lang, device: d, fresh: rng.random() };
        acceptable(grpc.get_user_info(app.req(request)).await.map(|_| ()));
        let request = RefreshTokenRequest { app: a.clone(), openid: o.clone(), device: d };
        acceptable(grpc.refresh_token(app.req(request)).await.map(|_| ()));
        let request = ValidateTokenRequest { app: a.clone(), openid: o.clone(), device: d };
        acceptable(grpc.validate_token(app.req(request)).await.map(|_| ()));
        let request = ForgetUserRequest { app: a, openid: o, device: d };
        acceptable(grpc.forget_user(app.req(request)).await.map(|_| ()));
        let query = nasty(&mut rng);
        let relay = app.http.get(format!("http://{}/wechat/callback?{}", app.public_addr, query)).send().await;
        let response = relay.expect("the relay answers");
        assert_eq!(response.status(), 400, "no flow of that id exists: a page, never a redirect");
        assert!(response.headers().get("location").is_none());
    }
    // Still serving.
    app.login("alice", "snsapi_userinfo").await;
}

crate::both_backends!(random_requests_get_clean_answers);
