//! The gRPC listener's gate, in front of every service tonic routes (issue 18, finding 1): no
//! peer without a key holds anything, and health is answered ahead of everything else.
//!
//! A request slot (`server.max_concurrent_requests`) is taken only by a call ready to run:
//! - a call to `wxauth.v1.WeChatOAuthService` is authenticated from its HEADERS
//!   ([`ClientKeys::authenticate`], the handlers' own check) and refused at once
//!   (`UNAUTHENTICATED`, `CLIENT_UNAUTHENTICATED`) without a slot, before its body is read;
//! - its request body is then read to its end within `server.header_timeout` (the requests of
//!   the API and of health are unary: one small message, which tonic reads to the end before the
//!   handler runs). The chunks are kept as received and handed on to tonic's decoder (no copy);
//!   a body that does not end in time ends the call with `DEADLINE_EXCEEDED` /
//!   `REQUEST_BODY_TIMEOUT`, and one over 64 KiB with `INVALID_ARGUMENT`, never having held a
//!   slot;
//! - only then does the call wait for one of the API's slots.
//!
//! `grpc.health.v1.Health` has slots of its own ([`HEALTH_SLOTS`]; its bodies are read first the
//! same way), so a probe never queues behind API calls. Anything else (server reflection, whose
//! request stream stays open; unknown paths, answered `UNIMPLEMENTED`) is passed on without a
//! read, under [`OTHER_SLOTS`] of its own: their handlers answer at once, so a slot is held only
//! that long.
//!
//! A slot is held until the handler has answered (as tower's `GlobalConcurrencyLimit`, used
//! before, did). Calls refused before they take one are counted in `wxauth_grpc_refusals_total`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};

use crate::config::{self, Client};
use crate::error::ApiError;
use crate::telemetry::Metrics;

/// Health checks answered at once: health handlers only read a map, so a few suffice for any
/// number of probes, and none is shared with the API.
pub const HEALTH_SLOTS: usize = 32;
/// Reflection and unknown paths at once (their handlers answer without waiting on anything).
pub const OTHER_SLOTS: usize = 32;
/// The most a call's pre-read buffers: the API's largest request message (64 KiB, tonic's decode
/// limit for it) and its 5-byte gRPC frame header. A longer body is refused (`INVALID_ARGUMENT`)
/// as soon as it passes this.
const PREREAD_LIMIT: usize = 64 * 1024 + GRPC_FRAME_HEADER;
/// A gRPC message's frame header: a compression flag and a 4-byte big-endian length.
const GRPC_FRAME_HEADER: usize = 5;
/// The path prefix of wxauth's own service.
const API_PREFIX: &str = "/wxauth.v1.WeChatOAuthService/";
/// The path prefix of the gRPC health service.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The clients' keys by SHA-256 digest: the one check of `authorization: Bearer <key>`, used by
/// the gate (from the HEADERS) and by the handlers (which then find the client it names).
#[derive(Clone, Debug)]
pub struct ClientKeys {
    by_digest: Arc<HashMap<[u8; 32], usize>>,
}

/// The gate's verdict on a call's key, handed to the handler in the request's extensions (which
/// no peer can set): the index in `clients` of the client it names, so the key is hashed once per
/// call, not twice. A handler not behind the gate (none is in the service) authenticates itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Authenticated(pub(crate) usize);

impl ClientKeys {
    /// The keys of `clients` (their configured digests).
    pub fn new(clients: &[Client]) -> Self {
        Self { by_digest: Arc::new(clients.iter().enumerate().map(|(i, c)| (c.key_sha256, i)).collect()) }
    }

    /// The index in `clients` of the client whose key `headers` carry, compared by digest.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<usize, ApiError> {
        let header = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthenticated)?;
        let (scheme, key) = header.trim().split_once(' ').ok_or(ApiError::Unauthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthenticated);
        }
        self.by_digest.get(&config::key_digest(key.trim())).copied().ok_or(ApiError::Unauthenticated)
    }
}

/// The gate as a tower layer for tonic's `Server::layer`.
#[derive(Clone, Debug)]
pub struct GateLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The answers to refused calls, made once through [`ApiError::to_status`]: a flood of
    /// refusals costs a header map's clone each, not an encoding of the status details.
    unauthenticated: HeaderMap,
    body_timeout_answer: HeaderMap,
    keys: ClientKeys,
    api: Arc<Semaphore>,
    health: Arc<Semaphore>,
    other: Arc<Semaphore>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl GateLayer {
    /// A gate with `api_slots` (`server.max_concurrent_requests`) for the API, reading bodies
    /// within `body_timeout` (`server.header_timeout`).
    pub fn new(keys: ClientKeys, api_slots: usize, body_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let shared = Shared {
            unauthenticated: answer(&ApiError::Unauthenticated),
            body_timeout_answer: answer(&ApiError::RequestBodyTimeout),
            keys,
            api: Arc::new(Semaphore::new(api_slots)),
            health: Arc::new(Semaphore::new(HEALTH_SLOTS)),
            other: Arc::new(Semaphore::new(OTHER_SLOTS)),
            body_timeout,
            metrics,
        };
        Self { shared: Arc::new(shared) }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate { inner, shared: Arc::clone(&self.shared) }
    }
}

/// The gate around tonic's routes (see the module documentation).
#[derive(Clone, Debug)]
pub struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What the gate does with a path.
enum Route {
    /// wxauth's API: authenticate, read the body, then an API slot.
    Api,
    /// Health: read the body, then a health slot.
    Health,
    /// Reflection and the rest: a slot of their own, no read.
    Other,
}

fn route(path: &str) -> Route {
    if path.starts_with(API_PREFIX) {
        Route::Api
    } else if path.starts_with(HEALTH_PREFIX) {
        Route::Health
    } else {
        Route::Other
    }
}

impl<S> tower::Service<Request<Body>> for Gate<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The service polled ready goes with this call; its clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut request = request;
            let route = route(request.uri().path());
            if let Route::Api = route {
                match shared.keys.authenticate(request.headers()) {
                    Ok(index) => {
                        request.extensions_mut().insert(Authenticated(index));
                    }
                    Err(_) => return Ok(shared.refuse("unauthenticated", &shared.unauthenticated, peer(&request))),
                }
            }
            let request = match route {
                Route::Api | Route::Health => {
                    let peer = peer(&request);
                    let (parts, body) = request.into_parts();
                    // A unary call's one small message has usually arrived with its HEADERS: read
                    // once without a timer, and arm `body_timeout` only for a body still under
                    // way (the timer showed as ~2.5 % of a cached GetUserInfo's instructions).
                    let mut read = std::pin::pin!(preread(body));
                    let read = match futures::poll!(read.as_mut()) {
                        Poll::Ready(read) => Ok(read),
                        Poll::Pending => tokio::time::timeout(shared.body_timeout, read).await,
                    };
                    match read {
                        Ok(Ok(body)) => Request::from_parts(parts, body),
                        Ok(Err(too_large)) => return Ok(shared.refuse("body_too_large", &answer(&too_large), peer)),
                        Err(_) => return Ok(shared.refuse("body_timeout", &shared.body_timeout_answer, peer)),
                    }
                }
                Route::Other => request,
            };
            let slots = match route {
                Route::Api => &shared.api,
                Route::Health => &shared.health,
                Route::Other => &shared.other,
            };
            // The semaphores are never closed.
            let Ok(_slot) = Arc::clone(slots).acquire_owned().await else {
                return Ok(Status::new(Code::Unavailable, "shutting down").into_http());
            };
            inner.call(request).await
        })
    }
}

impl Shared {
    /// The answer to a call refused before it ran (a trailers-only response: `answer`'s
    /// headers), counted by `reason`; the peer's address is logged at DEBUG (to find a flood's
    /// source without logging every refusal at INFO).
    fn refuse(&self, reason: &str, answer: &HeaderMap, peer: Option<SocketAddr>) -> Response<Body> {
        self.metrics.grpc_refusals.with_label_values(&[reason]).inc();
        tracing::debug!(reason, ?peer, "gRPC call refused at the gate");
        let mut response = Response::new(Body::empty());
        response.headers_mut().clone_from(answer);
        response
    }
}

/// The address of the peer that sent `request`.
fn peer(request: &Request<Body>) -> Option<SocketAddr> {
    request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr)
}

/// The headers of a trailers-only gRPC answer with `error`'s status and details.
fn answer(error: &ApiError) -> HeaderMap {
    error.to_status().into_http::<Body>().into_parts().0.headers
}

/// Reads `body` to its end (tonic's unary decoding reads it all, trailers included, before the
/// handler runs) and returns a body that yields the same frames again; a body longer than
/// [`PREREAD_LIMIT`] is refused.
async fn preread(mut body: Body) -> Result<Body, ApiError> {
    let mut frames = VecDeque::new();
    let mut buffered = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await {
        if let Ok(data) = frame.as_ref().map(http_body::Frame::data_ref)
            && let Some(data) = data
        {
            buffered += data.len();
            if buffered > PREREAD_LIMIT {
                return Err(ApiError::invalid("request", format!("at most {PREREAD_LIMIT} bytes")));
            }
        }
        // A reset stream ends the read: tonic gets the error as the body's last frame.
        let failed = frame.is_err();
        frames.push_back(frame);
        if failed {
            break;
        }
    }
    Ok(Body::new(Replay { frames }))
}

/// A request body read ahead: its frames, as received.
struct Replay {
    frames: VecDeque<Result<http_body::Frame<Bytes>, Status>>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Poll::Ready(self.get_mut().frames.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_routed_by_service() {
        assert!(matches!(route("/wxauth.v1.WeChatOAuthService/ExchangeCode"), Route::Api));
        assert!(matches!(route("/grpc.health.v1.Health/Check"), Route::Health));
        assert!(matches!(route("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Route::Other));
        assert!(matches!(route("/wxauth.v1.WeChatOAuthServiceX/Check"), Route::Other));
    }
}
