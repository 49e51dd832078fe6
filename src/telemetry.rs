//! Telemetry: the `tracing` subscriber (human-readable or JSON logs), OpenTelemetry trace
//! export over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables
//! are honoured by the exporter), W3C trace-context propagation, and the Prometheus metrics the
//! admin listener serves.
//!
//! Metric names and labels follow Prometheus conventions (`_total` counters, `_seconds`
//! histograms, base units, bounded label values: no openid, code or URL is ever a label).

use std::sync::Arc;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Latency buckets (seconds) from 0.5 ms to 10 s: Redis calls sit at the low end, WeChat calls
/// in the middle, timeouts at the top.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Where telemetry goes.
#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    /// JSON log lines instead of human-readable ones.
    pub json_logs: bool,
    /// Export traces over OTLP/gRPC. `Some("")` uses the exporter's own `OTEL_*` settings.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// From the standard environment: OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
    /// traces-specific variable) is set and `OTEL_SDK_DISABLED` is not `true`.
    pub fn from_env(json_logs: bool) -> Self {
        let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let otlp = !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
        Self { json_logs, otlp_endpoint: otlp.then(String::new) }
    }
}

/// Keeps the trace pipeline alive; flushes and stops it on [`TelemetryGuard::shutdown`] or drop.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::debug!(error = %e, "trace flush failed");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP trace exporter")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Installs the global subscriber (filtered by `RUST_LOG`, default `info`) and, when
/// configured, the OTLP trace pipeline and the W3C trace-context propagator. Call once.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if !endpoint.is_empty() {
                use opentelemetry_otlp::WithExportConfig as _;
                builder = builder.with_endpoint(endpoint.clone());
            }
            let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name()).build();
            Some(SdkTracerProvider::builder().with_batch_exporter(builder.build()?).with_resource(resource).build())
        }
        None => None,
    };
    EXPORTING.store(provider.is_some(), std::sync::atomic::Ordering::Relaxed);
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("wxauth")));
    let (json, text) = if config.json_logs {
        (Some(tracing_subscriber::fmt::layer().json().with_target(false)), None)
    } else {
        (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            ),
        )
    };
    // Without an exporter, the spans made for traces alone are not made at all (see `for_traces`).
    let untraced = otel.is_none().then(untraced_filter);
    let installed =
        tracing_subscriber::registry().with(filter).with(untraced).with(otel).with(json).with(text).try_init();
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
    Ok(TelemetryGuard { provider })
}

/// Spans that only a trace exporter has a use for: one per store call (`store.*`) and one per
/// relay callback (`relay.callback`), the hottest paths there are. In a log line they would add
/// no more than their name (no event is logged inside a store call but its errors, which say
/// what failed; the callback's outcome is counted in `wxauth_relay_callbacks_total`), and the
/// log formatter's bookkeeping for them (formatting each span's fields, an extension per span)
/// was a tenth of a relay's instructions. Without an OTLP endpoint they are disabled (interest
/// cached per callsite: nothing is done for them at all).
fn for_traces(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && (metadata.name().starts_with("store.") || metadata.name() == "relay.callback")
}

/// The global filter of a subscriber that exports no traces: everything but [`for_traces`].
fn untraced_filter<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber,
{
    tracing_subscriber::filter::filter_fn(|metadata| !for_traces(metadata))
}

fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "wxauth".into())
}

/// Reads W3C `traceparent`/`tracestate` from gRPC metadata.
struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Whether spans go to a trace exporter (an OTLP endpoint is configured): set once by [`init`].
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans go to a trace exporter. Without one, a span's OpenTelemetry fields
/// (`otel.name`, `rpc.system`, the status recorded at its end) and the caller's trace context
/// serve nobody, and the log formatter would format them for every RPC.
pub(crate) fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// For tests that install their own OpenTelemetry layer instead of [`init`]'s exporter: the
/// service makes its spans for traces as it does with an OTLP endpoint.
#[cfg(feature = "test-util")]
pub fn export_spans_for_tests() {
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes `span` a child of the caller's trace, when the request carries one. Call it before
/// the span is first entered.
pub(crate) fn adopt_remote_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    if opentelemetry::trace::TraceContextExt::span(&parent).span_context().is_valid()
        && let Err(e) = span.set_parent(parent)
    {
        tracing::debug!(error = %e, "remote trace context not adopted");
    }
}

/// The service's Prometheus metrics, in a registry of their own (several apps in one test
/// process do not collide).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// RPCs by method and gRPC code.
    pub rpc_requests: IntCounterVec,
    /// RPC latency by method and gRPC code.
    pub rpc_duration: HistogramVec,
    /// WeChat calls by endpoint, result and errcode.
    pub wechat_requests: IntCounterVec,
    /// WeChat call latency by endpoint.
    pub wechat_duration: HistogramVec,
    /// Relay callbacks by outcome.
    pub relay_callbacks: IntCounterVec,
    /// Visits of flows' start URLs by outcome (`started`, or the refusal).
    pub relay_starts: IntCounterVec,
    /// Flows started, by app: with the relay's first callbacks (`relayed`, `denied_relayed`),
    /// the flows that ended without a callback (a user who closed WeChat's page, or denied on an
    /// official account, which may not call back) are their difference, once `flow.ttl` passed.
    pub flows_started: IntCounterVec,
    /// Store operation latency by operation.
    pub store_duration: HistogramVec,
    /// Store operation failures by operation.
    pub store_errors: IntCounterVec,
    /// Token refreshes by result: `upstream` (a WeChat call), `coalesced` (a call saved) or
    /// `superseded` (a result not stored: the record changed while WeChat answered).
    pub refreshes: IntCounterVec,
    /// Profile lookups by result: `hit` (no WeChat call), `miss`, or `skipped` (caller asked for a
    /// fresh one, or the cache is off).
    pub profile_cache: IntCounterVec,
    /// Requests refused by a client's own limits, by client (`oidc:<id>` for a relying party),
    /// RPC or endpoint family and reason
    /// (`CLIENT_RATE_LIMITED`, `TOO_MANY_OPEN_FLOWS`).
    pub client_refusals: IntCounterVec,
    /// Sign-ins that left a user behind (not replays, not snapshot users), by app kind.
    pub sign_ins: IntCounterVec,
    /// A client asking for more of a user than its own sign-ins gave it, by client and reason:
    /// `scope_not_granted` (its grant does not read the profile or unionid), `not_reached`
    /// (a user of the app it never signed in), `code_of_another_client` (a mobile code another
    /// client is exchanging). Cross-client probing shows here.
    pub consent_refusals: IntCounterVec,
    /// The OpenID Provider's requests (src/oidc/), by endpoint and outcome (`ok`, or the
    /// OAuth error answered).
    pub oidc_requests: IntCounterVec,
    /// Sealed records that did not open.
    pub unopenable_records: IntCounter,
    /// The store's circuit breaker: 0 closed, 1 half-open, 2 open.
    pub store_breaker_state: IntGauge,
    /// The breaker's transitions, by the state entered (`closed`, `open`, `half_open`).
    pub store_breaker_transitions: IntCounterVec,
    /// Store calls the open breaker answered at once, without touching Redis.
    pub store_breaker_rejections: IntCounter,
    /// Return URLs refused by a client's allowlist, by the rejection's code (`NETWORK_PATH`,
    /// `USERINFO_NOT_ALLOWED`, `NOT_IN_ALLOWLIST`, ...).
    pub return_url_refusals: IntCounterVec,
    /// gRPC calls the gate ended before they took a request slot, by reason: `unauthenticated`
    /// (no valid key in the headers), `body_timeout` (no whole body within
    /// `server.header_timeout`), `body_too_large`.
    pub grpc_refusals: IntCounterVec,
    /// Connections closed for their slowness, by listener (`grpc`, `public`, `admin`) and reason:
    /// `preface_timeout` (gRPC: no HTTP/2 preface and SETTINGS within `server.header_timeout`),
    /// `evicted` (gRPC: closed in its handshake to make room at the connection cap),
    /// `header_timeout` (HTTP: no whole request head within it).
    pub connections_closed: IntCounterVec,
    /// WeChat's message pushes at the public listener, by app and outcome: `acted` (an
    /// authorization event wxauth acted on), `forwarded` / `forward_failed` (another message,
    /// passed on to the company's handler), `ignored` (another message, no handler), `verified`
    /// (the console's URL check), or the refusal (`bad_signature`, `stale_timestamp`,
    /// `replayed`, `unknown_app`, ...).
    pub push_messages: IntCounterVec,
    /// Authorization events WeChat pushed and wxauth acted on, by app and event
    /// (`user_info_modified`, `user_authorization_revoke`, `user_authorization_cancellation`).
    pub user_events: IntCounterVec,
    /// Events written to the clients' feeds (`ReadUserEvents`), by app and event: one per
    /// client that had signed the user in.
    pub user_events_recorded: IntCounterVec,
    /// Events read from the feeds by `ReadUserEvents`, by client.
    pub user_events_read: IntCounterVec,
    /// Renewals of an app's own credentials, by app, kind (`access_token`, `jsapi_ticket`) and
    /// result: `upstream` (a WeChat call), `coalesced` (a call saved), `superseded`.
    pub app_credential_renewals: IntCounterVec,
    /// InvalidateAppAccessToken by app and result: `refreshed` (a forced refresh, one of
    /// WeChat's 20 a day), `stale` (the reported token was no longer current: nothing to do),
    /// `too_soon` (within 30 s of the last forced refresh, which WeChat ignores),
    /// `allowance_spent`.
    pub app_token_invalidations: IntCounterVec,
    /// GetPhoneNumber by app, client and result (`ok`, or the error's reason): WeChat bills the
    /// mini program's phone numbers.
    pub phone_numbers: IntCounterVec,
}

/// Requests refused as malformed before any handler saw them, or for a field whose form is an
/// attack rather than a mistake, by reason: `undecodable_message` (a body that is not the
/// RPC's protobuf message, refused by the codec) and `wx_login_href`. Process-wide, since the
/// codec is made by the generated code and reaches no app's [`Metrics`]; every registry
/// exports it (`wxauth_malformed_requests_total`).
static MALFORMED_REQUESTS: std::sync::LazyLock<IntCounterVec> = std::sync::LazyLock::new(|| {
    let opts = Opts::new(
        "wxauth_malformed_requests_total",
        "Requests refused INVALID_ARGUMENT as malformed, by reason: undecodable_message (not the RPC's protobuf), wx_login_href.",
    );
    IntCounterVec::new(opts, &["reason"]).unwrap_or_else(|e| unreachable!("{e}"))
});

/// Counts one malformed request (see [`MALFORMED_REQUESTS`]); `reason` is one of a fixed set.
pub(crate) fn count_malformed_request(reason: &'static str) {
    MALFORMED_REQUESTS.with_label_values(&[reason]).inc();
}

impl Metrics {
    /// A fresh registry with every metric registered, and `wxauth_build_info` set.
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let r = Registrar(&registry);
        let build_info = r.register(
            IntGaugeVec::new(Opts::new("wxauth_build_info", "Build information; always 1."), &["version"])
                .unwrap_or_else(|e| unreachable!("{e}")),
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(MALFORMED_REQUESTS.clone());
        let (rpc_requests, rpc_duration) = grpc_metrics(&r);
        let (grpc_refusals, connections_closed) = listener_metrics(&r);
        let (wechat_requests, wechat_duration) = wechat_metrics(&r);
        let (relay_callbacks, relay_starts, flows_started) = relay_metrics(&r);
        let (store_duration, store_errors, unopenable_records) = store_metrics(&r);
        let (store_breaker_state, store_breaker_transitions, store_breaker_rejections) = breaker_metrics(&r);
        let (refreshes, profile_cache, sign_ins) = token_metrics(&r);
        let (client_refusals, consent_refusals, return_url_refusals) = client_metrics(&r);
        let (push_messages, user_events) = push_metrics(&r);
        let (user_events_recorded, user_events_read) = feed_metrics(&r);
        let (app_credential_renewals, app_token_invalidations, phone_numbers) = app_credential_metrics(&r);
        let oidc_requests = r.counter(
            "wxauth_oidc_requests_total",
            "Requests at the OpenID Provider's endpoints, by endpoint and outcome (ok, or the OAuth error answered).",
            &["endpoint", "outcome"],
        );
        Arc::new(Self {
            rpc_requests,
            rpc_duration,
            wechat_requests,
            wechat_duration,
            relay_callbacks,
            relay_starts,
            flows_started,
            store_duration,
            store_errors,
            refreshes,
            profile_cache,
            client_refusals,
            sign_ins,
            consent_refusals,
            oidc_requests,
            unopenable_records,
            store_breaker_state,
            store_breaker_transitions,
            store_breaker_rejections,
            return_url_refusals,
            grpc_refusals,
            connections_closed,
            push_messages,
            user_events,
            user_events_recorded,
            user_events_read,
            app_credential_renewals,
            app_token_invalidations,
            phone_numbers,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Makes metrics and registers them in one registry. A metric's name, help and labels are
/// fixed text, so a failure here is a bug in this file (`unreachable!`), not a runtime error.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0.register(Box::new(metric.clone())).unwrap_or_else(|e| unreachable!("{e}"));
        metric
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable!("{e}")))
    }

    fn histogram(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
        self.register(HistogramVec::new(opts, labels).unwrap_or_else(|e| unreachable!("{e}")))
    }
}

/// The gRPC API's requests and latency.
fn grpc_metrics(r: &Registrar<'_>) -> (IntCounterVec, HistogramVec) {
    let requests = r.counter(
        "wxauth_grpc_requests_total",
        "gRPC requests handled, by method and status code.",
        &["grpc_method", "grpc_code"],
    );
    let duration = r.histogram(
        "wxauth_grpc_request_duration_seconds",
        "gRPC request latency, by method and status code.",
        &["grpc_method", "grpc_code"],
    );
    (requests, duration)
}

/// The listeners' refusals: gRPC calls the gate ended, connections closed for slowness.
fn listener_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec) {
    let grpc_refusals = r.counter(
        "wxauth_grpc_refusals_total",
        "gRPC calls refused before they took a request slot, by reason (unauthenticated, body_timeout, body_too_large).",
        &["reason"],
    );
    let connections_closed = r.counter(
        "wxauth_connections_closed_total",
        "Connections closed for slowness, by listener and reason (preface_timeout, evicted, header_timeout, http1_idle).",
        &["listener", "reason"],
    );
    (grpc_refusals, connections_closed)
}

/// Calls to WeChat and their latency.
fn wechat_metrics(r: &Registrar<'_>) -> (IntCounterVec, HistogramVec) {
    let requests = r.counter(
        "wxauth_wechat_requests_total",
        "Calls to WeChat, by app (the config name; WeChat's quota is per app), endpoint, result and errcode.",
        &["app", "endpoint", "result", "errcode"],
    );
    let duration = r.histogram(
        "wxauth_wechat_request_duration_seconds",
        "Latency of calls to WeChat, by endpoint.",
        &["endpoint"],
    );
    (requests, duration)
}

/// The relay's callbacks and start-URL visits, and the flows started.
fn relay_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec, IntCounterVec) {
    let callbacks = r.counter("wxauth_relay_callbacks_total", "Callbacks at the relay, by outcome.", &["outcome"]);
    let starts = r.counter(
        "wxauth_relay_starts_total",
        "Start URL visits at the relay (a flow bound to a browser), by outcome.",
        &["outcome"],
    );
    let flows_started = r.counter(
        "wxauth_flows_started_total",
        "Flows started by BuildAuthorizeUrl, by app (minus first callbacks: flows that never came back).",
        &["app"],
    );
    (callbacks, starts, flows_started)
}

/// Store operations' latency and failures, and the sealed records that did not open.
fn store_metrics(r: &Registrar<'_>) -> (HistogramVec, IntCounterVec, IntCounter) {
    let duration = r.histogram(
        "wxauth_store_operation_duration_seconds",
        "Store operation latency, by operation.",
        &["operation"],
    );
    let errors = r.counter(
        "wxauth_store_errors_total",
        "Store operations that failed (unreachable, timeout), by operation.",
        &["operation"],
    );
    let unopenable = r.register(
        IntCounter::new(
            "wxauth_sealed_records_unopenable_total",
            "Sealed records that did not open (wrong key, tampered, moved); treated as missing.",
        )
        .unwrap_or_else(|e| unreachable!("{e}")),
    );
    (duration, errors, unopenable)
}

/// The store's circuit breaker: its state, transitions and the calls it answered at once.
fn breaker_metrics(r: &Registrar<'_>) -> (IntGauge, IntCounterVec, IntCounter) {
    let state = r.register(
        IntGauge::new(
            "wxauth_store_breaker_state",
            "The store's circuit breaker: 0 closed (Redis answers), 1 half-open (probing), 2 open (calls refused at once).",
        )
        .unwrap_or_else(|e| unreachable!("{e}")),
    );
    let transitions = r.counter(
        "wxauth_store_breaker_transitions_total",
        "Transitions of the store's circuit breaker, by the state entered (closed, open, half_open).",
        &["state"],
    );
    let rejections = r.register(
        IntCounter::new(
            "wxauth_store_breaker_rejections_total",
            "Store calls answered STORE_UNAVAILABLE at once by the open circuit breaker, without touching Redis.",
        )
        .unwrap_or_else(|e| unreachable!("{e}")),
    );
    (state, transitions, rejections)
}

/// Tokens and users: refreshes, the profile cache, sign-ins.
fn token_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec, IntCounterVec) {
    let refreshes = r.counter(
        "wxauth_token_refreshes_total",
        "Token refreshes, by result: upstream (a WeChat call), coalesced (a call saved) or superseded (a result not stored: the record changed meanwhile).",
        &["result"],
    );
    let profile_cache = r.counter(
        "wxauth_profile_cache_total",
        "GetUserInfo profile lookups, by result: hit (no WeChat call), miss, or skipped.",
        &["result"],
    );
    let sign_ins = r.counter(
        "wxauth_sign_ins_total",
        "Sign-ins that stored a user (code exchanges, mobile-app exchanges, mini-program sign-ins), by app kind.",
        &["kind"],
    );
    (refreshes, profile_cache, sign_ins)
}

/// WeChat's message pushes and the authorization events acted on (docs/design.md §2.6).
fn feed_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec) {
    let recorded = r.counter(
        "wxauth_user_events_recorded_total",
        "User events written to the clients' feeds (one per client that had signed the user in), by app and event.",
        &["app", "event"],
    );
    let read =
        r.counter("wxauth_user_events_read_total", "User events read by ReadUserEvents, by client.", &["client"]);
    (recorded, read)
}

fn push_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec) {
    let messages = r.counter(
        "wxauth_push_messages_total",
        "WeChat message pushes, by app and outcome (acted, forwarded, forward_failed, ignored, verified, or the refusal).",
        &["app", "outcome"],
    );
    let events = r.counter(
        "wxauth_user_events_total",
        "Authorization events WeChat pushed and wxauth acted on, by app and event (user_info_modified, user_authorization_revoke, user_authorization_cancellation).",
        &["app", "event"],
    );
    (messages, events)
}

/// An app's own credentials (docs/design.md §12.9): renewals, InvalidateAppAccessToken, and the
/// phone numbers they buy.
fn app_credential_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec, IntCounterVec) {
    let renewals = r.counter(
        "wxauth_app_credential_renewals_total",
        "Renewals of an app's own access token or jsapi_ticket, by app, kind and result: upstream (a WeChat call), coalesced (a call saved) or superseded.",
        &["app", "kind", "result"],
    );
    let invalidations = r.counter(
        "wxauth_app_token_invalidations_total",
        "InvalidateAppAccessToken calls, by app and result: refreshed (a forced refresh, WeChat allows 20 a day), stale, too_soon or allowance_spent.",
        &["app", "result"],
    );
    let phone_numbers = r.counter(
        "wxauth_phone_numbers_total",
        "GetPhoneNumber calls (WeChat bills them), by app, client and result: ok, or the error's reason.",
        &["app", "client", "result"],
    );
    (renewals, invalidations, phone_numbers)
}

/// What a client was refused by its own settings: its limits, its consent, its allowlist.
fn client_metrics(r: &Registrar<'_>) -> (IntCounterVec, IntCounterVec, IntCounterVec) {
    let limits = r.counter(
        "wxauth_client_refusals_total",
        "Requests refused by the client's own limits, by client (oidc:<id> for an OpenID Connect relying party), RPC or endpoint family and reason (CLIENT_RATE_LIMITED, TOO_MANY_OPEN_FLOWS).",
        &["client", "family", "reason"],
    );
    let consent = r.counter(
        "wxauth_consent_refusals_total",
        "Per-user requests refused because they asked beyond the calling client's own sign-ins, by client and reason (scope_not_granted, not_reached, code_of_another_client).",
        &["client", "reason"],
    );
    let return_urls = r.counter(
        "wxauth_return_url_refusals_total",
        "BuildAuthorizeUrl return URLs refused by the client's allowlist, by rejection code (NETWORK_PATH, USERINFO_NOT_ALLOWED, NOT_IN_ALLOWLIST, ...).",
        &["reason"],
    );
    (limits, consent, return_urls)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::{Context, SubscriberExt as _};

    use super::*;

    /// Records the names of the spans made and of the events seen.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, _: &tracing::span::Id, _: Context<'_, S>) {
            self.0.lock().expect("seen").push(format!("span {}", attrs.metadata().name()));
        }

        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.lock().expect("seen").push(format!("event {}", event.metadata().name()));
        }
    }

    #[test]
    fn without_an_exporter_only_the_spans_for_traces_are_not_made() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(untraced_filter()).with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            let rpc = tracing::info_span!("wxauth.v1.WeChatOAuthService/GetUserInfo");
            let _rpc = rpc.enter();
            let store = tracing::info_span!("store.get");
            let _store = store.enter();
            tracing::warn!(name: "inside a store call", "kept");
            let relay = tracing::info_span!("relay.callback");
            let _relay = relay.enter();
            tracing::info!(name: "inside a callback", "kept");
            drop(tracing::info_span!("wechat.userinfo"));
        });
        let seen = seen.0.lock().expect("seen").clone();
        let expected = [
            "span wxauth.v1.WeChatOAuthService/GetUserInfo",
            "event inside a store call",
            "event inside a callback",
            "span wechat.userinfo",
        ];
        assert_eq!(seen, expected);
    }
}
