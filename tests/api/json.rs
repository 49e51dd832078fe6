//! The JSON face (src/connect/, docs/design.md §3.4): the Connect protocol's unary form on the
//! gRPC listener, through real HTTP (reqwest over HTTP/1.1, a raw h2 client over HTTP/2) against
//! the real service. Each RPC is reachable; a sign-in runs end to end in JSON; errors carry the
//! reasons and details gRPC gives, down to the gate's refusals before a body is read; metrics
//! count JSON calls as gRPC ones; what the face does not serve is answered clearly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::codegen::Bytes;
use tonic_types::StatusExt as _;
use wxauth::proto;
use wxauth::sim::{Endpoint, Fault};

use crate::helpers::{
    Backend, MP_APPID, PASSPORT_KEY, TestApp, reason, settings, spawn_app, spawn_settings, spawn_sim,
};

const SERVICE: &str = "wxauth.v1.WeChatOAuthService";

/// POSTs `body` as JSON to `method` with `key` (none: no `authorization`); the HTTP status and
/// the JSON answer.
async fn call(app: &TestApp, method: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = app
        .http
        .post(format!("http://{}/{SERVICE}/{method}", app.grpc_addr))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("the gRPC port answers HTTP/1.1");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").cloned();
    let text = response.text().await.expect("body");
    assert_eq!(content_type.as_ref().map(|v| v.to_str().expect("ascii")), Some("application/json"), "{text}");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The `debug` of the Connect error detail of `type_name`.
fn detail<'a>(error: &'a Value, type_name: &str) -> Option<&'a Value> {
    error["details"].as_array()?.iter().find(|d| d["type"] == type_name).map(|d| &d["debug"])
}

/// The reason of a Connect error's ErrorInfo, checked against its base64 protobuf `value`.
fn connect_reason(error: &Value) -> String {
    let info = error["details"].as_array().and_then(|d| d.iter().find(|d| d["type"] == "google.rpc.ErrorInfo"));
    let Some(info) = info else { return String::new() };
    let value = info["value"].as_str().expect("value");
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(value).expect("unpadded base64");
    let decoded = tonic_types::pb::ErrorInfo::decode(bytes.as_slice()).expect("ErrorInfo");
    assert_eq!(info["debug"]["reason"], decoded.reason.as_str(), "debug and value agree");
    assert_eq!(decoded.domain, "wxauth.dev");
    decoded.reason
}

/// A raw gRPC call over HTTP/2 (any RPC, a protobuf body given as bytes): its status.
async fn grpc_raw(addr: SocketAddr, method: &str, key: &str, message: &[u8]) -> tonic::Status {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2");
    tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = tonic::codegen::http::Request::post(format!("http://{addr}/{SERVICE}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .expect("request");
    let (response, mut body) = send.send_request(request, false).expect("send");
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    framed.extend_from_slice(message);
    body.send_data(Bytes::from(framed), true).expect("data");
    let response = response.await.expect("response");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("data");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("grpc-status");
    tonic::Status::from_header_map(&trailers).expect("status")
}

#[tokio::test]
async fn every_rpc_answers_json_as_its_grpc_twin_answers() {
    let app = spawn_app(Backend::Memory).await;
    let schema = wxauth::connect::Schema::load().expect("schema");
    let methods = schema.methods(SERVICE);
    assert!(methods.len() >= 14, "{methods:?}");
    for method in methods {
        let name = method.name();
        let (status, answer) = call(&app, name, Some(PASSPORT_KEY), &json!({})).await;
        assert_ne!(answer["code"], "unimplemented", "{name} is reachable as JSON: {answer}");
        let twin = grpc_raw(app.grpc_addr, name, PASSPORT_KEY, &[]).await;
        if twin.code() == tonic::Code::Ok {
            assert_eq!(status, 200, "{name}: {answer}");
            assert!(answer.get("code").is_none(), "{name}: {answer}");
        } else {
            let code = wxauth::connect::code_name(twin.code());
            assert_eq!(
                (answer["code"].as_str(), status),
                (Some(code), wxauth::connect::http_status(twin.code()).as_u16()),
                "{name}: {answer}"
            );
            assert_eq!(connect_reason(&answer), reason(&twin), "{name}: {answer}");
            assert_eq!(answer["message"], twin.message(), "{name}");
            let violations = |v: &Value| {
                v["fieldViolations"].as_array().map(|a| a.iter().map(|f| f["field"].clone()).collect::<Vec<_>>())
            };
            let twin_fields = twin
                .get_error_details()
                .bad_request()
                .map(|b| b.field_violations.iter().map(|f| Value::from(f.field.clone())).collect::<Vec<_>>());
            assert_eq!(detail(&answer, "google.rpc.BadRequest").and_then(violations), twin_fields, "{name}");
        }
    }
}

#[tokio::test]
async fn a_user_signs_in_end_to_end_in_json() {
    let app = spawn_app(Backend::Redis).await;
    let key = Some(PASSPORT_KEY);
    let flow =
        json!({"app": "mp", "returnUrl": "https://passport.example.com/login/", "scope": "SCOPE_SNSAPI_USERINFO"});
    let (status, built) = call(&app, "BuildAuthorizeUrl", key, &flow).await;
    assert_eq!(status, 200, "{built}");
    assert!(built["authorizeUrl"].as_str().is_some_and(|u| u.ends_with("#wechat_redirect")), "{built}");
    assert!(built["expireTime"].as_str().is_some_and(|t| t.ends_with('Z')), "a Timestamp as RFC 3339: {built}");
    let flow_id = built["flowId"].as_str().expect("flowId").to_owned();
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    app.relay(&flow_id, &code).await;

    // Proto field names are accepted as well as JSON names (`flow_id`, `flowId`).
    let exchange = json!({"app": "mp", "flow_id": flow_id, "code": code});
    let (status, first) = call(&app, "ExchangeCode", key, &exchange).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = call(&app, "ExchangeCode", key, &exchange).await;
    assert_eq!(first, again, "a reload gets the same result, no 40163");
    let openid = first["openid"].as_str().expect("openid").to_owned();
    assert_eq!(openid, app.sim.openid(MP_APPID, "alice").expect("alice"));

    let (status, info) = call(&app, "GetUserInfo", key, &json!({"app": "mp", "openid": openid})).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["userInfo"]["nickname"], "Alice 爱丽丝");
    let (status, refreshed) = call(&app, "RefreshToken", key, &json!({"app": "mp", "openid": openid})).await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, valid) = call(&app, "ValidateToken", key, &json!({"app": "mp", "open_id": openid})).await;
    assert_eq!((status, &valid["code"]), (400, &json!("invalid_argument")), "open_id is not a field: {valid}");
}

#[tokio::test]
async fn bad_input_gets_the_grpc_reason_and_field_violations() {
    let app = spawn_app(Backend::Memory).await;
    let (status, error) = call(&app, "GetUserInfo", Some(PASSPORT_KEY), &json!({"app": "mp"})).await;
    let twin = app
        .grpc
        .clone()
        .get_user_info(app.req(proto::GetUserInfoRequest { app: "mp".into(), ..Default::default() }))
        .await;
    let twin = twin.expect_err("no openid");
    assert_eq!((status, error["code"].as_str()), (400, Some("invalid_argument")), "{error}");
    assert_eq!(connect_reason(&error), reason(&twin));
    let fields = detail(&error, "google.rpc.BadRequest").expect("BadRequest")["fieldViolations"].clone();
    assert_eq!(fields[0]["field"], "openid", "{error}");

    let (status, unknown) = call(&app, "GetUserInfo", Some(PASSPORT_KEY), &json!({"openid": "o", "bogus": 1})).await;
    assert_eq!((status, connect_reason(&unknown)), (400, "INVALID_ARGUMENT".to_owned()), "{unknown}");
    let violation = &detail(&unknown, "google.rpc.BadRequest").expect("BadRequest")["fieldViolations"][0];
    assert_eq!(violation["field"], "request");
    assert!(violation["description"].as_str().is_some_and(|d| d.contains("line 1")), "{violation}");

    for malformed in ["{", "[]", "{\"openid\": 7}", "{} {}"] {
        let response = app
            .http
            .post(format!("http://{}/{SERVICE}/GetUserInfo", app.grpc_addr))
            .header("content-type", "application/json")
            .bearer_auth(PASSPORT_KEY)
            .body(malformed)
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 400, "{malformed}");
        let error: Value = response.json().await.expect("JSON");
        assert_eq!(connect_reason(&error), "INVALID_ARGUMENT", "{malformed}: {error}");
    }
    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.contains("wxauth_malformed_requests_total{reason=\"undecodable_message\"}"), "{metrics}");
}

/// Sends a request head promising a body of `length` bytes and `body` of it; what the server
/// answered, and how long it took.
async fn half_sent(addr: SocketAddr, key: Option<&str>, length: usize, body: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST /{SERVICE}/GetUserInfo HTTP/1.1\r\nHost: wxauth\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(body).await.expect("body");
    let mut answer = vec![0u8; 8192];
    let n =
        tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer)).await.expect("answered").expect("read");
    (String::from_utf8_lossy(&answer[..n]).into_owned(), started.elapsed())
}

#[tokio::test]
async fn a_caller_without_a_key_is_refused_before_its_body_and_a_slow_body_is_ended() {
    let (sim, sim_addr) = spawn_sim().await;
    let mut settings = settings(sim_addr, "kind = \"memory\"", "");
    settings.server.listener_limits.header_timeout = Duration::from_secs(1);
    let app = spawn_settings(sim, sim_addr, None, settings).await;

    // No key, or a wrong one: answered at once though the body never comes.
    for key in [None, Some("not-a-key")] {
        let (answer, took) = half_sent(app.grpc_addr, key, 100, b"{").await;
        assert!(took < Duration::from_millis(900), "refused before the body: {took:?}");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.contains("\"code\":\"unauthenticated\"") && answer.contains("CLIENT_UNAUTHENTICATED"),
            "{answer}"
        );
    }
    // A key, and a body that stops coming: ended after the header timeout, without a slot.
    let (answer, took) = half_sent(app.grpc_addr, Some(PASSPORT_KEY), 100, b"{\"app\": ").await;
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("deadline_exceeded") && answer.contains("REQUEST_BODY_TIMEOUT"), "{answer}");
    // A body over the gate's 64 KiB.
    let big = json!({"app": "mp", "openid": "o".repeat(70 * 1024)});
    let (status, error) = call(&app, "GetUserInfo", Some(PASSPORT_KEY), &big).await;
    assert_eq!((status, connect_reason(&error)), (400, "INVALID_ARGUMENT".to_owned()), "{error}");
    assert_eq!(detail(&error, "google.rpc.BadRequest").expect("BadRequest")["fieldViolations"][0]["field"], "request");

    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let metrics = metrics.text().await.expect("text");
    for line in [
        "wxauth_grpc_refusals_total{reason=\"unauthenticated\"} 2",
        "wxauth_grpc_refusals_total{reason=\"body_timeout\"} 1",
        "wxauth_grpc_refusals_total{reason=\"body_too_large\"} 1",
    ] {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
}

#[tokio::test]
async fn redis_down_answers_unavailable_with_retry_info_and_json_calls_are_counted() {
    let app = spawn_app(Backend::Redis).await;
    let (status, _) = call(&app, "GetUserInfo", Some(PASSPORT_KEY), &json!({"app": "mp", "openid": "nobody"})).await;
    assert_eq!(status, 404);
    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let metrics = metrics.text().await.expect("text");
    let line = "wxauth_grpc_requests_total{grpc_code=\"NotFound\",grpc_method=\"GetUserInfo\"} 1";
    assert!(metrics.contains(line), "a JSON call is counted as a gRPC one: no `{line}` in\n{metrics}");

    app.redis.as_ref().expect("redis").lock().await.kill();
    let (status, error) =
        call(&app, "GetUserInfo", Some(PASSPORT_KEY), &json!({"app": "mp", "openid": "nobody"})).await;
    assert_eq!((status, error["code"].as_str()), (503, Some("unavailable")), "{error}");
    assert_eq!(connect_reason(&error), "STORE_UNAVAILABLE");
    assert_eq!(detail(&error, "google.rpc.RetryInfo").expect("RetryInfo")["retryDelay"], "1s", "{error}");
}

#[tokio::test]
async fn a_connect_deadline_becomes_the_calls_deadline() {
    let app = spawn_app(Backend::Memory).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    app.sim.inject(Endpoint::UserInfo, Fault::Delay(Duration::from_secs(3)), 1);
    let started = Instant::now();
    let response = app
        .http
        .post(format!("http://{}/{SERVICE}/GetUserInfo", app.grpc_addr))
        .header("content-type", "application/json")
        .header("connect-timeout-ms", "300")
        .bearer_auth(PASSPORT_KEY)
        .body(json!({"app": "mp", "openid": login.openid, "fresh": true}).to_string())
        .send()
        .await
        .expect("answer");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(
        (error["code"].as_str(), connect_reason(&error).as_str()),
        (Some("deadline_exceeded"), "DEADLINE_EXCEEDED")
    );
}

#[tokio::test]
async fn what_the_face_does_not_serve_is_answered_clearly() {
    let app = spawn_app(Backend::Memory).await;
    let url = format!("http://{}/{SERVICE}/GetUserInfo", app.grpc_addr);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/connect+json",
        "application/json; charset=latin1",
    ] {
        let response = app
            .http
            .post(&url)
            .header("content-type", content_type)
            .bearer_auth(PASSPORT_KEY)
            .body("{}")
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 415, "{content_type}");
        assert_eq!(response.headers()["accept-post"], "application/json, application/proto");
    }
    let get = app
        .http
        .get(format!("{url}?encoding=json&message=%7B%7D"))
        .bearer_auth(PASSPORT_KEY)
        .send()
        .await
        .expect("answer");
    assert_eq!((get.status().as_u16(), get.headers()["allow"].to_str().ok()), (405, Some("POST")));
    let gzip = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .bearer_auth(PASSPORT_KEY)
        .body("{}")
        .send()
        .await
        .expect("answer");
    assert_eq!(gzip.status(), 501);
    let error: Value = gzip.json().await.expect("JSON");
    assert_eq!(error["code"], "unimplemented");
    let nope = call(&app, "Nope", Some(PASSPORT_KEY), &json!({})).await;
    assert_eq!(nope, (501, json!({"code": "unimplemented"})), "an unknown method, after authentication");
    let nope = call(&app, "Nope", None, &json!({})).await;
    assert_eq!(nope.0, 401, "an unknown method without a key: refused first");

    // Protobuf works as JSON does.
    let message = proto::GetUserInfoRequest { app: "mp".into(), openid: "nobody".into(), ..Default::default() };
    let response = app
        .http
        .post(&url)
        .header("content-type", "application/proto")
        .bearer_auth(PASSPORT_KEY)
        .body(message.encode_to_vec())
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json", "Connect errors are JSON");
}

#[tokio::test]
async fn json_over_http2_answers_as_over_http1() {
    let app = spawn_app(Backend::Memory).await;
    let login = app.login("alice", "snsapi_userinfo").await;
    let tcp = TcpStream::connect(app.grpc_addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2");
    tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let request = tonic::codegen::http::Request::post(format!("http://{}/{SERVICE}/GetUserInfo", app.grpc_addr))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {PASSPORT_KEY}"))
        .body(())
        .expect("request");
    let (response, mut body) = send.send_request(request, false).expect("send");
    body.send_data(Bytes::from(json!({"app": "mp", "openid": login.openid}).to_string()), true).expect("data");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        bytes.extend_from_slice(&chunk.expect("data"));
    }
    let info: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(info["userInfo"]["openid"], login.openid.as_str(), "{info}");
}

#[tokio::test]
async fn an_http1_connection_that_never_finishes_its_head_is_closed_after_the_header_timeout() {
    let (sim, sim_addr) = spawn_sim().await;
    let mut settings = settings(sim_addr, "kind = \"memory\"", "");
    settings.server.listener_limits.header_timeout = Duration::from_secs(1);
    let app = spawn_settings(sim, sim_addr, None, settings).await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(app.grpc_addr).await.expect("connect");
    tcp.write_all(b"POST /wxauth.v1.WeChatOAuthService/GetUserInfo HTTP/1.1\r\nHost: w").await.expect("write");
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("closed");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    let metrics = app.http.get(format!("http://{}/metrics", app.admin_addr)).send().await.expect("admin");
    let metrics = metrics.text().await.expect("text");
    assert!(
        metrics.contains("wxauth_connections_closed_total{listener=\"grpc\",reason=\"preface_timeout\"} 1"),
        "{metrics}"
    );
}

#[test]
fn docs_api_has_a_curl_line_for_every_rpc_whose_json_is_its_request() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).expect("api.md");
    let schema = wxauth::connect::Schema::load().expect("schema");
    let methods = schema.methods(SERVICE);
    assert!(methods.len() >= 14, "{methods:?}");
    for method in methods {
        let url = format!(" http://127.0.0.1:50051/{SERVICE}/{}", method.name());
        let line = doc
            .lines()
            .find(|l| l.starts_with("curl ") && l.ends_with(&url))
            .unwrap_or_else(|| panic!("docs/api.md has no `curl ...{url}` line"));
        let body = line.split(" -d '").nth(1).and_then(|b| b.split("' ").next()).expect("a -d body");
        let decoded = wxauth::connect::transcode::json_to_proto(&method.input(), body.as_bytes());
        assert!(decoded.is_ok(), "{}: the documented body is not its request: {decoded:?}", method.name());
        assert!(line.contains("authorization: Bearer ") && line.contains("content-type: application/json"), "{line}");
    }
}

/// docs/openapi.json is what the proto makes now: regenerated here, and a stale one fails (the
/// new one is written in its place, to be committed).
#[test]
fn the_published_openapi_document_is_the_one_the_proto_makes() {
    let schema = wxauth::connect::Schema::load().expect("schema");
    let document = wxauth::connect::openapi::document(&schema);
    let paths = document["paths"].as_object().expect("paths");
    for method in schema.methods(SERVICE) {
        let path = &paths[&format!("/{SERVICE}/{}", method.name())]["post"];
        let input = format!("#/components/schemas/{}", method.input().full_name());
        assert_eq!(path["requestBody"]["content"]["application/json"]["schema"]["$ref"], input.as_str());
        assert_eq!(
            path["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/connect.Error"
        );
    }
    assert_eq!(paths.len(), schema.methods(SERVICE).len());
    let request = &document["components"]["schemas"]["wxauth.v1.BuildAuthorizeUrlRequest"]["properties"];
    assert_eq!(request["returnUrl"]["type"], "string", "fields by JSON name: {request}");
    assert!(request["scope"]["enum"].as_array().is_some_and(|e| e.contains(&json!("SCOPE_SNSAPI_USERINFO"))));
    assert_eq!(document["components"]["securitySchemes"]["clientKey"]["scheme"], "bearer");

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let fresh = format!("{}\n", serde_json::to_string_pretty(&document).expect("JSON"));
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    if committed != fresh {
        std::fs::write(path, &fresh).expect("write docs/openapi.json");
        panic!("docs/openapi.json was stale; regenerated from the proto: commit it");
    }
}
