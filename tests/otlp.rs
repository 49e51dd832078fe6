//! Traces: one flow with a caller's W3C `traceparent`, exported over OTLP to an in-process
//! collector (the OpenTelemetry trace service implemented with tonic here), arrives as spans
//! under the caller's trace with the right parent links.
//!
//! Its own test binary: it installs the process-wide subscriber.

#[allow(dead_code, unused_macros)]
#[path = "api/helpers.rs"]
mod helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};
use wxauth::proto::{BuildAuthorizeUrlRequest, ExchangeCodeRequest, Scope};
use wxauth::telemetry::{TelemetryConfig, init};

use helpers::{Backend, MP_APPID, spawn_app};

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traced<T>(message: T) -> Request<T> {
    let mut request = helpers::authed(helpers::PASSPORT_KEY, message);
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

fn find<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
        panic!("no span {name} among {names:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_spans_reach_the_collector_under_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    let telemetry =
        init(&TelemetryConfig { json_logs: false, otlp_endpoint: Some(format!("http://{addr}")) }).expect("telemetry");

    let app = spawn_app(Backend::Redis).await;
    let request = BuildAuthorizeUrlRequest {
        app: "mp".into(),
        return_url: "https://passport.example.com/login/".into(),
        scope: Scope::SnsapiUserinfo as i32,
        ..Default::default()
    };
    let flow = app.grpc.clone().build_authorize_url(traced(request)).await.expect("flow").into_inner().flow_id;
    let code = app.code(MP_APPID, "alice", "snsapi_userinfo");
    assert_eq!(app.callback(&format!("code={code}&state={flow}")).await.status(), 302);
    let request = ExchangeCodeRequest { flow_id: flow, code, ..Default::default() };
    app.grpc.clone().exchange_code(traced(request)).await.expect("exchange");

    let wanted = [
        "wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl",
        "wxauth.v1.WeChatOAuthService/ExchangeCode",
        "wechat.access_token",
        "relay.callback",
    ];
    let mut spans = Vec::new();
    for _ in 0..100 {
        telemetry.flush();
        spans = collector.spans.lock().expect("lock").clone();
        if wanted.iter().all(|w| spans.iter().any(|s| s.name == *w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let trace_id = hex::decode(TRACE_ID).expect("hex");
    let parent_id = hex::decode(PARENT_ID).expect("hex");
    let build = find(&spans, "wxauth.v1.WeChatOAuthService/BuildAuthorizeUrl");
    assert_eq!(build.trace_id, trace_id, "the caller's trace");
    assert_eq!(build.parent_span_id, parent_id, "the caller's span is the parent");
    let build_store: Vec<_> =
        spans.iter().filter(|s| s.name.starts_with("store.") && s.parent_span_id == build.span_id).collect();
    assert!(!build_store.is_empty(), "the flow write is a child of the RPC");
    assert!(build_store.iter().all(|s| s.trace_id == trace_id));

    let exchange = find(&spans, "wxauth.v1.WeChatOAuthService/ExchangeCode");
    assert_eq!((exchange.trace_id.clone(), exchange.parent_span_id.clone()), (trace_id.clone(), parent_id));
    let wechat = find(&spans, "wechat.access_token");
    assert_eq!(wechat.trace_id, trace_id);
    assert_eq!(wechat.parent_span_id, exchange.span_id, "the WeChat call is a child of the RPC");

    let relay = find(&spans, "relay.callback");
    assert_ne!(relay.trace_id, trace_id, "the browser's callback starts its own trace");
    assert!(spans.iter().any(|s| s.name == "store.use_flow_binding" && s.parent_span_id == relay.span_id));

    // Nothing secret in any span attribute.
    let dump = format!("{spans:?}");
    assert!(!dump.contains("demo-mp-secret") && !dump.contains(helpers::PASSPORT_KEY));
}
