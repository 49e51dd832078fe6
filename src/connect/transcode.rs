//! Proto3 JSON to and from the service's protobuf messages, generic over the descriptor set
//! `build.rs` has protoc emit (`crate::proto::FILE_DESCRIPTOR_SET`): every RPC of the proto,
//! including one added later, is transcoded without code of its own.
//!
//! Also the inner half of the JSON face, [`TranscodeLayer`]: between the gRPC gate and tonic, it
//! turns a Connect call's body, which the gate has already read within its limit and time, into
//! the one framed protobuf message tonic's unary decoding expects.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{Request, Response};

use crate::error::ApiError;

/// The most a request body may hold once framed: the gate's own limit on what it reads (64 KiB
/// and a frame header) bounds the JSON before it gets here; this bounds the re-encoded message.
const MAX_MESSAGE: usize = 64 * 1024;

/// The service's messages and the error detail types (`google.rpc.*`), by full name.
#[derive(Debug)]
pub struct Schema {
    pool: DescriptorPool,
}

/// The descriptor set did not load (a build fault, never a caller's).
#[derive(Debug, thiserror::Error)]
#[error("the proto descriptor set does not load: {0}")]
pub struct SchemaError(#[from] prost_reflect::DescriptorError);

impl Schema {
    /// wxauth's descriptor set and tonic-types' (ErrorInfo, BadRequest, RetryInfo, ...).
    pub fn load() -> Result<Arc<Self>, SchemaError> {
        let mut pool = DescriptorPool::new();
        pool.decode_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)?;
        // Both sets carry google/protobuf/*.proto; a file already in the pool is skipped.
        pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
        Ok(Arc::new(Self { pool }))
    }

    /// The RPC a Connect path names (`/wxauth.v1.WeChatOAuthService/<Method>`): its request and
    /// response messages; `None` for a method the service does not have.
    pub fn method(&self, path: &str) -> Option<(MessageDescriptor, MessageDescriptor)> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        let method = self.pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)?;
        Some((method.input(), method.output()))
    }

    /// Every RPC of `service` with its request and response messages, in the proto's order.
    pub fn methods(&self, service: &str) -> Vec<prost_reflect::MethodDescriptor> {
        self.pool.get_service_by_name(service).map(|s| s.methods().collect()).unwrap_or_default()
    }

    /// A message type by full name (`google.rpc.ErrorInfo`).
    pub fn message(&self, name: &str) -> Option<MessageDescriptor> {
        self.pool.get_message_by_name(name)
    }
}

/// Proto3 JSON (`json`) as the protobuf encoding of `message`. Unknown fields are refused, as
/// protojson's `Unmarshal` does by default: a misspelt field silently dropped would change what
/// the caller asked for. The error names the line and column, never the value found there (a
/// value may be a code or a token).
pub fn json_to_proto(message: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let decoded = DynamicMessage::deserialize_with_options(message.clone(), &mut deserializer, &options)
        .and_then(|decoded| deserializer.end().map(|()| decoded));
    match decoded {
        Ok(decoded) => Ok(decoded.encode_to_vec()),
        Err(error) => {
            tracing::debug!(line = error.line(), column = error.column(), "request JSON does not decode");
            crate::telemetry::count_malformed_request("undecodable_message");
            let what = match error.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
                _ => "not the RPC's request message in proto3 JSON (an unknown field, or a value of the wrong type)",
            };
            Err(ApiError::invalid("request", format!("{what} at line {} column {}", error.line(), error.column())))
        }
    }
}

/// The protobuf encoding `bytes` of `message` as proto3 JSON, as protojson writes it: fields by
/// their JSON names, enums by name, 64-bit integers as strings, default values left out.
pub fn proto_to_json(message: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let decoded = DynamicMessage::decode(message.clone(), bytes).map_err(|_| ApiError::Internal)?;
    let mut json = Vec::with_capacity(bytes.len() * 2 + 2);
    let mut serializer = serde_json::Serializer::new(&mut json);
    decoded.serialize_with_options(&mut serializer, &SerializeOptions::new()).map_err(|_| ApiError::Internal)?;
    Ok(json)
}

/// The protobuf encoding of a `google.*` message as proto3 JSON, for the `debug` of an error
/// detail; `None` for a type the schema does not know.
pub fn detail_json(schema: &Schema, type_name: &str, bytes: &[u8]) -> Option<serde_json::Value> {
    let message = schema.message(type_name)?;
    let decoded = DynamicMessage::decode(message, bytes).ok()?;
    serde_json::to_value(&decoded).ok()
}

/// `message` in gRPC's length-prefixed framing (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    // The length fits: `message` is at most MAX_MESSAGE (checked by the caller).
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(message);
    Bytes::from(framed)
}

/// How a Connect call's body is encoded, and its RPC's request message (`None` for a method the
/// service does not have: tonic answers UNIMPLEMENTED whatever the body). Set by the outer
/// layer on the request it hands on; read by [`TranscodeLayer`].
#[derive(Clone, Debug)]
pub(crate) struct ConnectCall {
    pub(crate) json: bool,
    pub(crate) input: Option<MessageDescriptor>,
}

/// The inner half of the JSON face, between the gate and tonic (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct TranscodeLayer;

impl<S> tower::Layer<S> for TranscodeLayer {
    type Service = Transcode<S>;

    fn layer(&self, inner: S) -> Transcode<S> {
        Transcode { inner }
    }
}

/// [`TranscodeLayer`]'s service.
#[derive(Clone, Debug)]
pub struct Transcode<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for Transcode<S>
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
        let Some(call) = request.extensions().get::<ConnectCall>().cloned() else {
            return Either::Left(self.inner.call(request));
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let (parts, body) = request.into_parts();
            match reframe(&call, body).await {
                Ok(body) => inner.call(Request::from_parts(parts, body)).await,
                Err(status) => Ok(status.into_http()),
            }
        }))
    }
}

/// A Connect call's body (already read by the gate: this only gathers its frames) as one framed
/// protobuf message.
async fn reframe(call: &ConnectCall, body: Body) -> Result<Body, tonic::Status> {
    let Some(input) = &call.input else { return Ok(body) };
    let bytes = super::collect(body, MAX_MESSAGE * 4).await?;
    let message = if call.json { json_to_proto(input, &bytes)? } else { bytes };
    if message.len() > MAX_MESSAGE {
        return Err(ApiError::invalid("request", format!("at most {MAX_MESSAGE} bytes")).into());
    }
    Ok(super::full(frame(&message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Arc<Schema> {
        Schema::load().expect("the descriptor set loads")
    }

    fn get_user_info() -> MessageDescriptor {
        schema().method("/wxauth.v1.WeChatOAuthService/GetUserInfo").expect("GetUserInfo").0
    }

    #[test]
    fn every_rpc_of_the_service_is_found_by_its_path() {
        let schema = schema();
        let methods = schema.methods("wxauth.v1.WeChatOAuthService");
        assert!(methods.len() >= 14, "{methods:?}");
        for method in methods {
            let path = format!("/wxauth.v1.WeChatOAuthService/{}", method.name());
            assert!(schema.method(&path).is_some(), "{path}");
        }
        assert!(schema.method("/wxauth.v1.WeChatOAuthService/Nope").is_none());
        assert!(schema.method("/nope").is_none());
    }

    #[test]
    fn json_names_and_proto_names_both_decode_and_unknown_fields_do_not() {
        let message = get_user_info();
        let by_json_name = json_to_proto(&message, br#"{"app": "mp", "openid": "o1"}"#).expect("decodes");
        let decoded = crate::proto::GetUserInfoRequest::decode(by_json_name.as_slice()).expect("protobuf");
        assert_eq!((decoded.app.as_str(), decoded.openid.as_str()), ("mp", "o1"));
        let unknown = json_to_proto(&message, br#"{"app": "mp", "opneid": "o1"}"#).expect_err("unknown field");
        assert_eq!(unknown.reason(), "INVALID_ARGUMENT");
        for bad in [&b"{"[..], b"[1]", b"{\"app\": 3}", b"{} {}", b""] {
            let error = json_to_proto(&message, bad).expect_err("malformed");
            let status = error.to_status();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_value_in_the_wrong_place_is_not_echoed() {
        let error = json_to_proto(&get_user_info(), br#"{"openid": 12345678}"#).expect_err("wrong type");
        let ApiError::InvalidArgument(violations) = &error else { panic!("{error:?}") };
        assert!(!violations[0].description.contains("12345678"), "{violations:?}");
    }

    #[test]
    fn a_response_comes_out_as_protojson_writes_it() {
        let schema = schema();
        let (_, output) = schema.method("/wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl").expect("rpc");
        let response = crate::proto::BuildAuthorizeUrlResponse {
            flow_id: "f1".into(),
            authorize_url: "https://open.weixin.qq.com/x".into(),
            ..Default::default()
        };
        let json = proto_to_json(&output, &response.encode_to_vec()).expect("encodes");
        let json: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(json["flowId"], "f1");
        assert_eq!(json["authorizeUrl"], "https://open.weixin.qq.com/x");
        assert!(json.get("startUrl").is_none(), "defaults are left out: {json}");
    }

    #[test]
    fn a_frame_is_a_flag_a_length_and_the_message() {
        assert_eq!(&frame(b"abc")[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
    }
}
