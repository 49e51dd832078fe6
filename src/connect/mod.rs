//! The JSON face of the gRPC API (issue 23): the Connect protocol's unary form on the gRPC
//! listener, over HTTP/1.1 and HTTP/2 (docs/design.md §3.4). `POST
//! /wxauth.v1.WeChatOAuthService/<Method>` with `Content-Type: application/json` (proto3 JSON)
//! or `application/proto`; errors are Connect's error JSON with the same `google.rpc` details.
//!
//! It is the gRPC API by construction: [`ConnectLayer`], OUTSIDE the gRPC gate, rewrites a
//! Connect call into a gRPC one (its headers: `Connect-Timeout-Ms` becomes `grpc-timeout`, the
//! content type gRPC's; `authorization` and `traceparent` pass as they are) without touching
//! its body, and the gRPC answer (a message, a handler's error, or the gate's own refusal) back
//! into Connect's shape. So the gate authenticates it from its headers before any of its body
//! is held, reads the body within `server.header_timeout` and 64 KiB, and gives it an API slot,
//! exactly as for gRPC; then [`transcode::TranscodeLayer`], INSIDE the gate, turns the body
//! read into the framed protobuf message tonic decodes. The handlers, their metrics, `rpc`
//! spans and error reasons are gRPC's, unchanged. Transcoding is generic over the proto's
//! descriptor set, so an RPC added to the proto is reachable as JSON without code.
//!
//! Not supported, each answered with a clear Connect error before anything is read: the GET
//! form (405, `Allow: POST`), streaming content types and any other content type (415 with
//! `Accept-Post`), compressed requests (`unimplemented`, `Accept-Encoding: identity`).

pub mod openapi;
pub mod transcode;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use futures::future::Either;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::{Code, Status};

use crate::error::ApiError;
use transcode::{ConnectCall, proto_to_json};
pub use transcode::{Schema, SchemaError, TranscodeLayer};

/// wxauth's own service, the one the JSON face serves.
pub const SERVICE: &str = "wxauth.v1.WeChatOAuthService";
/// Its path prefix.
const API_PREFIX: &str = "/wxauth.v1.WeChatOAuthService/";
/// Every gRPC code, for the error schema of [`openapi`].
const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];
/// The most of a response the layer reads back: the service's own encoding limit (256 KiB) and
/// a frame header.
const MAX_RESPONSE: usize = 256 * 1024 + 5;
/// What `Accept-Post` lists: the unary content types served.
const ACCEPT_POST: &str = "application/json, application/proto";

/// The JSON face as a tower layer for tonic's `Server::layer`, outside the gate.
#[derive(Clone, Debug)]
pub struct ConnectLayer {
    schema: Arc<Schema>,
}

impl ConnectLayer {
    /// The face of the RPCs `schema` describes.
    pub fn new(schema: Arc<Schema>) -> Self {
        Self { schema }
    }
}

impl<S> tower::Layer<S> for ConnectLayer {
    type Service = Connect<S>;

    fn layer(&self, inner: S) -> Connect<S> {
        Connect { inner, schema: Arc::clone(&self.schema) }
    }
}

/// [`ConnectLayer`]'s service.
#[derive(Clone, Debug)]
pub struct Connect<S> {
    inner: S,
    schema: Arc<Schema>,
}

/// A Connect call's encoding and its RPC's response message (to write the answer).
struct Reply {
    json: bool,
    output: Option<prost_reflect::MessageDescriptor>,
}

impl<S> tower::Service<Request<Body>> for Connect<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    /// gRPC calls pass through as the inner service's own future (no box of their own).
    type Future = Either<S::Future, Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // gRPC calls, health, reflection: not the face's.
        if !request.uri().path().starts_with(API_PREFIX) || is_grpc(request.headers()) {
            return Either::Left(self.inner.call(request));
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (request, reply) = match rewrite(&self.schema, request) {
            Ok(rewritten) => rewritten,
            Err(refusal) => return Either::Right(Box::pin(async move { Ok(*refusal) })),
        };
        let schema = Arc::clone(&self.schema);
        Either::Right(Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(answer(&schema, &reply, response).await)
        }))
    }
}

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// A Connect unary call as the gRPC call the gate and tonic serve, or the answer to one the face
/// does not serve. Reads only headers.
fn rewrite(schema: &Schema, request: Request<Body>) -> Result<(Request<Body>, Reply), Box<Response<Body>>> {
    if request.method() != Method::POST {
        let mut refused =
            error_response(&refusal(Code::Unimplemented, "only POST: the Connect GET form is not served"));
        *refused.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(Box::new(refused));
    }
    let json = match media_type(request.headers()).as_deref() {
        Some("application/json") => true,
        Some("application/proto") => false,
        Some("application/connect+json" | "application/connect+proto") => {
            return Err(Box::new(unsupported_media("Connect streaming is not served: every RPC is unary")));
        }
        _ => return Err(Box::new(unsupported_media("Content-Type must be application/json or application/proto"))),
    };
    let (mut parts, body) = request.into_parts();
    let headers = &mut parts.headers;
    if headers.get(header::CONTENT_ENCODING).is_some_and(|e| e != "identity") {
        let mut refused = error_response(&refusal(Code::Unimplemented, "compressed requests are not served"));
        refused.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        return Err(Box::new(refused));
    }
    if headers.get("connect-protocol-version").is_some_and(|v| v != "1") {
        return Err(Box::new(error_response(&refusal(Code::InvalidArgument, "Connect-Protocol-Version must be 1"))));
    }
    if let Some(timeout) = headers.get("connect-timeout-ms") {
        let Some(ms) = timeout_ms(timeout) else {
            let message = "Connect-Timeout-Ms must be a positive integer of at most 10 digits";
            return Err(Box::new(error_response(&refusal(Code::InvalidArgument, message))));
        };
        headers.insert("grpc-timeout", grpc_timeout(ms));
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    headers.remove("connect-timeout-ms");
    headers.remove("connect-protocol-version");
    headers.remove("connect-accept-encoding");
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    let method = schema.method(parts.uri.path());
    let (input, output) = method.map_or((None, None), |(input, output)| (Some(input), Some(output)));
    parts.extensions.insert(ConnectCall { json, input });
    Ok((Request::from_parts(parts, body), Reply { json, output }))
}

/// `grpc-timeout` for `ms` milliseconds: gRPC allows at most 8 digits, so a longer deadline is
/// given in whole seconds (rounded up).
fn grpc_timeout(ms: u64) -> HeaderValue {
    let value = if ms < 100_000_000 { format!("{ms}m") } else { format!("{}S", ms.div_ceil(1000)) };
    // Digits and a letter: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("1S"))
}

/// `Connect-Timeout-Ms`: 1 to 10 ASCII digits (the Connect protocol's rule).
fn timeout_ms(value: &HeaderValue) -> Option<u64> {
    let digits = value.to_str().ok()?;
    if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|ms| *ms > 0)
}

/// The request's media type, lower-cased, without parameters; `None` for a charset other than
/// UTF-8 (JSON is UTF-8).
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?.to_ascii_lowercase();
    let mut params = value.split(';');
    let media = params.next()?.trim().to_owned();
    for param in params {
        if let Some((name, charset)) = param.split_once('=')
            && name.trim() == "charset"
            && !charset.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return None;
        }
    }
    Some(media)
}

/// A 415 answer naming the unary content types served.
fn unsupported_media(message: &'static str) -> Response<Body> {
    let mut refused = error_response(&refusal(Code::Unknown, message));
    *refused.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    refused.headers_mut().insert("accept-post", HeaderValue::from_static(ACCEPT_POST));
    refused
}

/// A refusal of the face itself (not of the API): no details to give.
fn refusal(code: Code, message: &'static str) -> Status {
    Status::new(code, message)
}

/// The gRPC answer `response` in Connect's shape.
async fn answer(schema: &Schema, reply: &Reply, response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    // A trailers-only answer (the gate's refusals, a handler's error) has its status in the
    // headers.
    if let Some(status) = Status::from_header_map(&parts.headers) {
        return connect_error_or_empty(schema, reply, &status, Bytes::new());
    }
    match read_grpc_body(body).await {
        Ok((message, trailers)) => {
            let status = trailers.as_ref().and_then(Status::from_header_map);
            match status {
                Some(status) => connect_error_or_empty(schema, reply, &status, message),
                None => connect_error(schema, &Status::internal("no grpc-status in the answer")),
            }
        }
        Err(status) => connect_error(schema, &status),
    }
}

/// `status` with the message it came with: the message as JSON (or protobuf) when OK, else the
/// error.
fn connect_error_or_empty(schema: &Schema, reply: &Reply, status: &Status, message: Bytes) -> Response<Body> {
    if status.code() != Code::Ok {
        return connect_error(schema, status);
    }
    let (content_type, body) = if reply.json {
        let Some(output) = &reply.output else { return connect_error(schema, &Status::internal("no such RPC")) };
        match proto_to_json(output, &message) {
            Ok(json) => ("application/json", Bytes::from(json)),
            Err(error) => return connect_error(schema, &error.to_status()),
        }
    } else {
        ("application/proto", message)
    };
    let mut response = Response::new(full(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The unframed message and the trailers of a gRPC response body (read to its end, at most
/// [`MAX_RESPONSE`]).
async fn read_grpc_body(body: Body) -> Result<(Bytes, Option<HeaderMap>), Status> {
    let mut body = body;
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > MAX_RESPONSE {
                    return Err(Status::internal("answer too large"));
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    // One message (the RPCs are unary): a flag byte, a 4-byte length, the message.
    let message = match data.get(5..) {
        Some(message) if data.first() == Some(&0) => Bytes::from(message.to_vec()),
        None if data.is_empty() => Bytes::new(),
        _ => return Err(Status::internal("answer not one uncompressed message")),
    };
    Ok((message, trailers))
}

/// The Connect error of `status`: its HTTP status, and the JSON with the code, the message and
/// each `google.rpc.Status` detail as `{type, value (base64 protobuf), debug (its JSON)}`.
fn connect_error(schema: &Schema, status: &Status) -> Response<Body> {
    let details: Vec<serde_json::Value> = status_details(status.details())
        .iter()
        .map(|any| {
            let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
            let mut detail = serde_json::json!({
                "type": type_name,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            });
            if let Some(debug) = transcode::detail_json(schema, type_name, &any.value) {
                detail["debug"] = debug;
            }
            detail
        })
        .collect();
    let mut body = serde_json::json!({ "code": code_name(status.code()) });
    if !status.message().is_empty() {
        body["message"] = status.message().into();
    }
    if !details.is_empty() {
        body["details"] = details.into();
    }
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = http_status(status.code());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The answer to a call the face refused (no details).
fn error_response(status: &Status) -> Response<Body> {
    let mut body = serde_json::json!({ "code": code_name(status.code()) });
    body["message"] = status.message().into();
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = http_status(status.code());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The details of `grpc-status-details-bin` (a `google.rpc.Status`).
fn status_details(bytes: &[u8]) -> Vec<prost_types::Any> {
    use prost::Message as _;
    if bytes.is_empty() {
        return Vec::new();
    }
    tonic_types::pb::Status::decode(bytes).map(|s| s.details).unwrap_or_default()
}

/// Connect's name of a code (the gRPC name in snake case; `canceled` with one l).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a Connect error, the Connect protocol's table (google.rpc.Code's HTTP
/// mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request: not in the http crate's table, but a valid code.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// A request or response body read to its end, at most `limit` bytes.
pub(crate) async fn collect(body: Body, limit: usize) -> Result<Vec<u8>, Status> {
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await {
        if let Ok(chunk) = frame?.into_data() {
            if bytes.len() + chunk.len() > limit {
                return Err(ApiError::invalid("request", format!("at most {limit} bytes")).to_status());
            }
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok(bytes)
}

/// A body of one chunk.
pub(crate) fn full(bytes: Bytes) -> Body {
    Body::new(Once(Some(bytes)))
}

/// [`full`]'s body.
struct Once(Option<Bytes>);

impl http_body::Body for Once {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.take().map(|bytes| Ok(http_body::Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_connects_names_and_http_statuses() {
        assert_eq!((code_name(Code::Cancelled), http_status(Code::Cancelled).as_u16()), ("canceled", 499));
        assert_eq!(
            (code_name(Code::InvalidArgument), http_status(Code::InvalidArgument).as_u16()),
            ("invalid_argument", 400)
        );
        assert_eq!(http_status(Code::FailedPrecondition).as_u16(), 400);
        assert_eq!(http_status(Code::Unauthenticated).as_u16(), 401);
        assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 429);
        assert_eq!(http_status(Code::Unavailable).as_u16(), 503);
        assert_eq!(http_status(Code::DeadlineExceeded).as_u16(), 504);
    }

    #[test]
    fn a_connect_timeout_is_one_to_ten_digits() {
        for (value, ms) in [("1", Some(1)), ("2500", Some(2500)), ("9999999999", Some(9_999_999_999))] {
            assert_eq!(timeout_ms(&HeaderValue::from_static(value)), ms, "{value}");
        }
        for bad in ["", "0", "-1", "12345678901", "1.5", "1s", " 1"] {
            assert_eq!(timeout_ms(&HeaderValue::from_static(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_long_deadline_is_given_in_seconds() {
        assert_eq!(grpc_timeout(2500), "2500m");
        assert_eq!(grpc_timeout(99_999_999), "99999999m");
        assert_eq!(grpc_timeout(100_000_001), "100001S");
    }

    #[test]
    fn media_types_are_read_without_their_parameters() {
        let of = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            media_type(&headers)
        };
        assert_eq!(of("application/json").as_deref(), Some("application/json"));
        assert_eq!(of("Application/JSON; charset=utf-8").as_deref(), Some("application/json"));
        assert_eq!(of("application/json; charset=\"UTF-8\"").as_deref(), Some("application/json"));
        assert_eq!(of("application/json; charset=latin1"), None);
    }
}
