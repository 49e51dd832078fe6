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
                stylelite: rng.random_bool(0.5),
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

/// Sends its bytes as the request message as they are, and reads no reply message: a client
/// that speaks gRPC but not the RPC's protobuf.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let rest = prost::bytes::Buf::remaining(buf);
        prost::bytes::Buf::advance(buf, rest);
        Ok(Some(()))
    }
}

/// A body that is not the RPC's protobuf message is the caller's fault: INVALID_ARGUMENT with
/// wxauth's ErrorInfo (INTERNAL is kept for bugs in wxauth), counted by reason; and the service
/// goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_protobuf_is_invalid_argument() {
    let app = spawn_app(Backend::Memory).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let garbage: [&[u8]; 3] = [
        &[0xff, 0xff, 0xff, 0xff],
        // Field 2 (return_url) as a string of invalid UTF-8.
        &[0x12, 0x02, 0xc3, 0x28],
        // A length that runs past the end.
        &[0x0a, 0x7f, b'm', b'p'],
    ];
    for body in garbage {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl");
        let request = crate::helpers::authed(crate::helpers::PASSPORT_KEY, body.to_vec());

        let status = grpc.unary(request, path, RawCodec).await.expect_err("not protobuf");

        assert_eq!(status.code(), Code::InvalidArgument, "{body:?}: {status:?}");
        let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), ("INVALID_ARGUMENT", wxauth::error::DOMAIN));
    }
    let scrape = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let scrape = scrape.text().await.expect("text");
    let counted = scrape
        .lines()
        .find(|l| l.starts_with("wxauth_malformed_requests_total{reason=\"undecodable_message\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(counted >= Some(3.0), "counted: {counted:?}");
    let fine = app.grpc.clone().build_authorize_url(app.req(crate::helpers::flow_request())).await;
    assert!(fine.is_ok(), "still serving: {fine:?}");
}
