//! Wiring: [`Application::build`] binds the three listeners (port 0 works, for tests), builds
//! the store, the WeChat client and the services (the gRPC API, the relay, the message push) once, and [`Application::run_until`] serves
//! until the shutdown future completes, then drains. `main` and the tests both use it. The
//! listeners' timeouts and caps (`server.header_timeout`, `server.max_connections`, ...) are
//! [`crate::listener`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

use crate::clock::Clock;
use crate::config::{ListenerLimits, Settings, StoreBackend, StoreSettings};
use crate::connect::{ConnectLayer, Schema, TranscodeLayer};
use crate::grpc::OAuthService;
use crate::grpc_gate::GateLayer;
use crate::listener;
use crate::oidc::{self, OidcState};
use crate::proto::we_chat_o_auth_service_server::{SERVICE_NAME, WeChatOAuthServiceServer};
use crate::push::PushService;
use crate::relay::{self, RelayState};
use crate::store::{BreakerState, Store, StoreError};
use crate::telemetry::Metrics;
use crate::tokens::Tokens;
use crate::wechat::WechatClient;

/// A gRPC health name that is SERVING while the process answers, whatever the store does: the
/// target of liveness probes (restarting pods during a Redis outage would not help).
pub(crate) const LIVENESS_SERVICE: &str = "liveness";

/// How often the store is pinged for the health status (and the circuit breaker). With the
/// ping's own bound ([`crate::store::PING_TIMEOUT`]), a killed Redis turns health NOT_SERVING
/// within 0.3 s (a silent one after [`crate::store::SILENCE_TO_OPEN`]), and a returned one
/// SERVING within one interval and a round trip.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// The longest an RPC may run (tonic answers `CANCELLED` after it); also how long a gRPC
/// connection past `server.grpc_max_connection_age` may take to finish its RPCs before it is
/// closed.
const GRPC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// gRPC HTTP/2 keepalive: a ping after this long without a frame from the client...
const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed when the ping is not answered within this (a peer that
/// vanished without a FIN or RST).
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A listener could not bind.
    #[error("cannot bind {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Redis could not be reached at start-up.
    #[error("cannot connect to the store")]
    Store(#[from] StoreError),
    /// The HTTP client could not be built (TLS roots).
    #[error("cannot build the WeChat HTTP client")]
    Http(#[from] reqwest::Error),
}

/// A built, bound, not yet running wxauth.
pub struct Application {
    grpc: TcpListener,
    public: TcpListener,
    admin: TcpListener,
    settings: Arc<Settings>,
    store: Store,
    tokens: Arc<Tokens>,
    service: OAuthService,
    push: PushService,
    oidc: Option<OidcState>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("grpc", &self.grpc.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Application {
    /// Builds with the system clock.
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        Self::build_with_clock(settings, Clock::system()).await
    }

    /// Builds with a given clock (tests move it).
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> Result<Self, BuildError> {
        let metrics = Metrics::new();
        let store = build_store(&settings.store, &metrics, &clock).await?;
        let wechat = WechatClient::new(settings.wechat.clone(), Arc::clone(&metrics))?;
        let tokens = Tokens::new(store.clone(), wechat.clone(), clock.clone(), settings.token, Arc::clone(&metrics));
        let push =
            PushService::new(&settings, Arc::clone(&tokens), store.clone(), clock.clone(), Arc::clone(&metrics))?;
        let settings = Arc::new(settings);
        let oidc = OidcState::new(
            Arc::clone(&settings),
            store.clone(),
            Arc::clone(&tokens),
            clock.clone(),
            Arc::clone(&metrics),
        );
        let service = OAuthService::new(
            Arc::clone(&settings),
            store.clone(),
            wechat,
            Arc::clone(&tokens),
            clock,
            Arc::clone(&metrics),
        );
        Ok(Self {
            grpc: bind(settings.server.grpc_addr).await?,
            public: bind(settings.server.public_addr).await?,
            admin: bind(settings.server.admin_addr).await?,
            settings,
            store,
            tokens,
            service,
            push,
            oidc,
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        local(&self.grpc)
    }

    /// The bound public (relay) address.
    pub fn public_addr(&self) -> SocketAddr {
        local(&self.public)
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        local(&self.admin)
    }

    /// The store (tests inspect and corrupt records through it).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The metrics registry (served at the admin listener's `/metrics`).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The token service (tests read its refresh counters).
    pub fn tokens(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens)
    }

    /// Serves until `shutdown` completes: readiness goes NOT_SERVING first, then listeners stop
    /// accepting and in-flight requests get `server.drain` to finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (store, ready, drain) = (self.store.clone(), Arc::clone(&self.ready), self.settings.server.drain);
        let listeners = self.listeners(health, &stop_rx)?;

        // NOT_SERVING until the first store check says otherwise (tonic-health starts "" as
        // SERVING, and an unregistered service name would answer NOT_FOUND to probes).
        set_status(&reporter, ServingStatus::NotServing).await;
        reporter.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
        let health_task = tokio::spawn(watch_store(store, reporter.clone(), Arc::clone(&ready), stopped(&stop_rx)));

        let stopping = Stopping { stop_tx, stop_rx, ready, reporter, drain };
        let served = stopping.serve(listeners, shutdown).await;
        health_task.abort();
        served
    }

    /// The three listeners' serving futures, each ending once `stop` turns true.
    fn listeners(
        self,
        health: HealthServer<impl Health>,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<Vec<(&'static str, Listening)>> {
        let limits = self.settings.server.listener_limits;
        let metrics = &self.metrics;
        let grpc = serve_grpc(self.grpc, self.service, health, limits, Arc::clone(metrics), stop)?;
        // The callback domain's listener: the relay, WeChat's message push for the apps that
        // have one (docs/design.md §2.6), and the OpenID Provider when configured (src/oidc/).
        let mut relay = relay::router(RelayState::new(self.store.clone(), &self.settings, Arc::clone(metrics)))
            .merge(self.push.router());
        if let Some(state) = self.oidc {
            relay = relay.merge(oidc::router(state));
        }
        let public = listener::serve_http("public", self.public, relay, limits, Arc::clone(metrics), stopped(stop));
        let admin_router = admin_router(Arc::clone(&self.ready), Arc::clone(metrics));
        let admin = listener::serve_http("admin", self.admin, admin_router, limits, Arc::clone(metrics), stopped(stop));
        Ok(vec![
            ("grpc", grpc),
            (
                "public",
                Box::pin(async {
                    public.await;
                    Ok(())
                }),
            ),
            (
                "admin",
                Box::pin(async {
                    admin.await;
                    Ok(())
                }),
            ),
        ])
    }
}

/// The gRPC listener's serving future: the API behind its gate, health and reflection, with
/// the listener limits and keepalive.
fn serve_grpc(
    incoming: TcpListener,
    service: OAuthService,
    health: HealthServer<impl Health>,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Listening> {
    let reflection_v1 = reflection().build_v1().map_err(std::io::Error::other)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(std::io::Error::other)?;
    // Calls are authenticated from their headers and their bodies read before they take one
    // of the API's `max_concurrent_requests` slots; health has slots of its own.
    let gate = GateLayer::new(
        service.client_keys(),
        limits.max_concurrent_requests,
        limits.header_timeout,
        Arc::clone(&metrics),
    );
    // The JSON face (src/connect/): a rewrite outside the gate, so a JSON call is authenticated,
    // read and given a slot as a gRPC one; its body becomes protobuf inside the gate.
    let schema = Schema::load().map_err(std::io::Error::other)?;
    let grpc = tonic::transport::Server::builder()
        .layer(ConnectLayer::new(schema))
        .layer(gate)
        .layer(TranscodeLayer)
        // HTTP/1.1 for the JSON face (curl, PHP): its connections keep the listener's
        // defences (`listener::GrpcConnection`).
        .accept_http1(true)
        .timeout(GRPC_REQUEST_TIMEOUT)
        // RPCs per connection: advertised in SETTINGS (clients queue beyond it) and enforced
        // by the HTTP/2 layer itself (it refuses excess streams), so no per-request
        // `concurrency_limit_per_connection` layer is needed on top.
        .max_concurrent_streams(limits.grpc_max_concurrent_streams)
        .max_connection_age(limits.grpc_max_connection_age)
        .max_connection_age_grace(GRPC_REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            WeChatOAuthServiceServer::new(service)
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(256 * 1024),
        )
        // The incoming connections carry TCP_NODELAY, the connection cap and the preface
        // deadline (`Server::tcp_nodelay` covers only listeners tonic binds itself).
        .serve_with_incoming_shutdown(listener::grpc_incoming(incoming, limits, metrics), stopped(stop));
    Ok(Box::pin(async { grpc.await.map_err(std::io::Error::other) }))
}

/// What a shutdown (asked for, or forced by a failed listener) turns off: the stop signal to
/// the listeners, readiness and health; and how long the listeners get to drain.
struct Stopping {
    stop_tx: tokio::sync::watch::Sender<bool>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    reporter: HealthReporter,
    drain: Duration,
}

impl Stopping {
    /// Serves `listeners` until `shutdown` completes (then readiness off, stop, drain) or one of
    /// them fails or ends unasked (then readiness off and the others stopped with it).
    async fn serve(
        self,
        listeners: Vec<(&'static str, Listening)>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Self { stop_tx, stop_rx, ready, reporter, drain } = self;
        let (failed_ready, failed_reporter) = (Arc::clone(&ready), reporter.clone());
        let servers = async move {
            let served = serve_together(listeners, stop_rx).await;
            if let Err(error) = &served {
                // The others stop with it (the process exits): out of the Service at once.
                tracing::error!(%error, "a listener failed; stopping");
                failed_ready.store(false, Ordering::SeqCst);
                set_status(&failed_reporter, ServingStatus::NotServing).await;
            }
            served
        };
        let trigger = async move {
            shutdown.await;
            tracing::info!("shutting down: readiness off, draining");
            ready.store(false, Ordering::SeqCst);
            set_status(&reporter, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
        };
        tokio::pin!(servers, trigger);
        tokio::select! {
            // A listener failed or stopped on its own: the others are stopped with it.
            served = &mut servers => served,
            () = &mut trigger => match tokio::time::timeout(drain, &mut servers).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::warn!(?drain, "drain time over; exiting with requests in flight");
                    Ok(())
                }
            },
        }
    }
}

/// A future that completes once `stop` turns true (or its sender is gone).
fn stopped(stop: &tokio::sync::watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = stop.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The store the settings name, memory or Redis (one node, a Cluster, or behind Sentinel).
async fn build_store(settings: &StoreSettings, metrics: &Arc<Metrics>, clock: &Clock) -> Result<Store, StoreError> {
    let (keys, prefix, tls) = (settings.keyring.clone(), settings.key_prefix.as_str(), &settings.tls);
    Ok(match &settings.backend {
        StoreBackend::Memory => Store::memory(keys, prefix, Arc::clone(metrics), clock.clone()),
        StoreBackend::Redis(urls) => Store::redis(urls, tls, keys, prefix, Arc::clone(metrics)).await?,
        StoreBackend::Sentinel { urls, master } => {
            Store::redis_sentinel(urls, master, tls, keys, prefix, Arc::clone(metrics)).await?
        }
    })
}

/// A listener's serving future: it ends when told to stop (or when it fails).
type Listening = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// Runs `listeners` together until each has ended after `stop` turned true. One that ends
/// before (an error, or an end nobody asked for) ends them all at once with an error naming it:
/// a process whose gRPC server is gone must not go on serving the relay and answering ready.
async fn serve_together(
    listeners: Vec<(&'static str, Listening)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use futures::StreamExt as _;
    let mut running: futures::stream::FuturesUnordered<_> =
        listeners.into_iter().map(|(name, listening)| async move { (name, listening.await) }).collect();
    while let Some((name, ended)) = running.next().await {
        match ended {
            Err(error) => return Err(std::io::Error::new(error.kind(), ListenerFailed { name, source: Some(error) })),
            Ok(()) if !*stop.borrow() => {
                return Err(std::io::Error::other(ListenerFailed { name, source: None }));
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

/// Why a listener stopped serving before shutdown.
#[derive(Debug, thiserror::Error)]
#[error("the {name} listener stopped serving")]
struct ListenerFailed {
    name: &'static str,
    #[source]
    source: Option<std::io::Error>,
}

/// Server reflection of wxauth's service and the health service (served as v1 and v1alpha).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, BuildError> {
    TcpListener::bind(addr).await.map_err(|source| BuildError::Bind { addr, source })
}

fn local(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Keeps health and readiness in step with the store: SERVING while the circuit breaker is
/// closed. Pings every [`HEALTH_INTERVAL`] (the ping opens or closes the breaker), and at once
/// when calls open the breaker, so readiness never lags it.
async fn watch_store(
    store: Store,
    reporter: HealthReporter,
    ready: Arc<AtomicBool>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut changes = store.breaker_changes();
    let mut last = None;
    loop {
        // The ping's outcome goes to the breaker, which decides: one slow ping under load is
        // no reason to leave the Service endpoints.
        let _ = store.ping().await;
        // Transitions the ping itself made need no second look.
        changes.mark_unchanged();
        let serving = store.breaker_state() == BreakerState::Closed;
        if last != Some(serving) {
            tracing::info!(serving, "store health changed");
            ready.store(serving, Ordering::SeqCst);
            set_status(&reporter, if serving { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
            last = Some(serving);
        }
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            // Calls opened the breaker (or a probe closed it): look again now.
            Ok(()) = changes.changed() => {}
        }
    }
}

fn admin_router(ready: Arc<AtomicBool>, metrics: Arc<Metrics>) -> Router {
    let metrics = move || {
        let metrics = Arc::clone(&metrics);
        async move { ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.encode()) }
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(
            "/readyz",
            get(|State(ready): State<Arc<AtomicBool>>| async move {
                if ready.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state(ready)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pending() -> Listening {
        Box::pin(std::future::pending())
    }

    #[tokio::test]
    async fn a_listener_that_fails_alone_ends_them_all_with_its_error() {
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let failing: Listening = Box::pin(async { Err(std::io::Error::other("accept loop died")) });
        let listeners = vec![("grpc", failing), ("public", pending()), ("admin", pending())];
        let served = tokio::time::timeout(Duration::from_secs(5), serve_together(listeners, stop_rx)).await;
        let error = served.expect("ends at once, the others still running").expect_err("an error");
        assert_eq!(error.to_string(), "the grpc listener stopped serving");
    }

    #[tokio::test]
    async fn a_listener_that_ends_unasked_ends_them_all() {
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ended: Listening = Box::pin(async { Ok(()) });
        let listeners = vec![("grpc", pending()), ("public", ended), ("admin", pending())];
        let served = tokio::time::timeout(Duration::from_secs(5), serve_together(listeners, stop_rx)).await;
        let error = served.expect("ends at once").expect_err("an error");
        assert_eq!(error.to_string(), "the public listener stopped serving");
    }

    #[tokio::test]
    async fn listeners_asked_to_stop_end_together_without_an_error() {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let on_stop = |mut rx: tokio::sync::watch::Receiver<bool>| -> Listening {
            Box::pin(async move {
                let _ = rx.wait_for(|stop| *stop).await;
                Ok(())
            })
        };
        let listeners = vec![
            ("grpc", on_stop(stop_rx.clone())),
            ("public", on_stop(stop_rx.clone())),
            ("admin", on_stop(stop_rx.clone())),
        ];
        let serving = tokio::spawn(serve_together(listeners, stop_rx));
        stop_tx.send(true).expect("receivers");
        let served = tokio::time::timeout(Duration::from_secs(5), serving).await.expect("ends").expect("task");
        assert!(served.is_ok(), "{served:?}");
    }
}
