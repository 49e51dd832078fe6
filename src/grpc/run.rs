//! The wrapper every RPC runs in ([`OAuthService::run`]), and what it reads and writes: the
//! caller's `grpc-timeout`, the status code's name in the metrics.

use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::OAuthService;
use crate::config::Client;
use crate::error::ApiError;
use crate::telemetry;

impl OAuthService {
    /// Runs one RPC: authenticate, then the body within the caller's deadline (tonic does not
    /// pass `grpc-timeout` on by itself), then map the error.
    pub(super) async fn run<Req, Res>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        body: impl AsyncFnOnce(&Self, &Client, Req) -> Result<Res, ApiError>,
    ) -> Result<Response<Res>, Status> {
        // `rpc` is the full gRPC name, a static string: no per-request formatting.
        let method = rpc.rsplit('/').next().unwrap_or(rpc);
        // The span is made here, not by `#[instrument]`, so it takes the caller's trace
        // context (W3C `traceparent`) before it starts.
        let exporting = telemetry::exporting();
        let span = if exporting {
            let span = tracing::info_span!(
                "rpc",
                otel.name = rpc,
                rpc.system = "grpc",
                rpc.method = method,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            telemetry::adopt_remote_parent(&span, request.metadata());
            span
        } else {
            // For log lines alone, and only at DEBUG: making, formatting and closing even a
            // one-field span through the log layer for every call showed as ~4-5 % of a cached
            // GetUserInfo's instructions in callgrind (issue 19; `scripts/instructions
            // userinfo`). At the default level a line logged inside an RPC has no `rpc` context;
            // the one line a failed RPC writes (below) names the method itself, as a failed
            // store call names its operation.
            tracing::debug_span!("rpc", rpc.method = method)
        };
        let started = std::time::Instant::now();
        let deadline = grpc_timeout(request.metadata());
        let result = async {
            let client = self.authenticate(request.extensions(), request.metadata())?;
            // The client's own rate limit, before any store or WeChat work.
            self.limiters.check(client, method)?;
            let work = body(self, client, request.into_inner());
            match deadline {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or(Err(ApiError::DeadlineExceeded)),
                None => work.await,
            }
        }
        .instrument(span.clone())
        .await;
        let code = match &result {
            Ok(_) => "OK",
            Err(error) => {
                span.in_scope(|| {
                    tracing::info!(method, reason = error.reason(), errcode = error.errcode(), "rpc failed")
                });
                code_name(error.code())
            }
        };
        if exporting {
            span.record("rpc.grpc.status_code", code);
        }
        self.metrics.rpc_requests.with_label_values(&[method, code]).inc();
        self.metrics.rpc_duration.with_label_values(&[method, code]).observe(started.elapsed().as_secs_f64());
        result.map(Response::new).map_err(|e| e.to_status())
    }
}

/// The canonical gRPC code name, as gRPC's own metrics spell it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// The caller's deadline from `grpc-timeout` (`<digits><H|M|S|m|u|n>`).
pub(super) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
