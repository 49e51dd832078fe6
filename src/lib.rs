//! wxauth: WeChat web authorization (公众号网页授权 and 开放平台 QR login) for a whole company
//! behind one callback domain.
//!
//! # Layout
//!
//! The service, one layer per concern, wired once in [`startup::Application`]:
//! - [`config`]: the typed config (TOML + `WXAUTH_*` env), validated at start-up.
//! - [`grpc`]: the tonic service `wxauth.v1.WeChatOAuthService`: validation, caller
//!   authentication, allowlists; [`error`] is the one mapping of failures to gRPC statuses;
//!   [`codec`] answers a request body that is not protobuf INVALID_ARGUMENT.
//!   [`grpc_gate`] authenticates calls from their headers and reads their bodies before they
//!   take a request slot (no peer without a key holds one), health on slots of its own.
//!   [`connect`] is the same API as JSON (the Connect protocol's unary form) on the same
//!   listener: a rewrite around the gate, transcoding from the proto's descriptor set.
//! - [`limits`]: per-client rate limits (governor token buckets per client and RPC family)
//!   and the open-flow cap's sizes.
//! - [`tokens`]: the token lifecycle: idempotent code exchange, refresh single-flight and the
//!   cross-replica refresh lock; [`consent`] decides what each client may read of a user from
//!   its own sign-ins.
//! - [`wechat`]: the upstream client: authorize URLs and the `sns` endpoints.
//! - [`store`]: sealed records (AES-256-GCM) in Redis (single node, Sentinel, Cluster) or memory;
//!   a circuit breaker answers at once while Redis is known down.
//! - [`relay`]: the public `/wechat/callback` relay; [`allowlist`] judges return URLs.
//! - [`oidc`]: an OpenID Provider on the same listener (`[oidc]`): any OpenID Connect relying
//!   party signs users in with WeChat through the relay's own flows.
//! - [`push`]: WeChat's message push on the same listener: the authorization events
//!   (revoke, cancellation, profile change) act on the user; other messages go on to the
//!   company's own handler.
//! - [`listener`]: the listeners' timeouts and caps against slow, idle and greedy clients.
//! - [`telemetry`]: logs, OTLP traces, Prometheus metrics.
//! - [`secrets`], [`clock`], [`proto`], [`html`]: credential newtypes, the service clock,
//!   generated types, HTML and script-literal escaping.
//!
//! Around it, never in the request path: [`sim`] (the WeChat simulator for tests, benchmarks and
//! the dev mode), [`dev`] and [`demo`] (the dev mode and its demo product page), all three only
//! with the `dev` feature (on by default; the production image builds without it, so its binary
//! carries none of their code); `fuzzing` (hidden) gives the fuzz targets in `fuzz/` the private
//! parsers that untrusted bytes reach. The benchmark harness (`wxauth-bench`) is a workspace
//! member of its own, `bench/`, built on this library's public API with the default features.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Rooms of a readable size (issue 19): no function of the service over 80 lines (clippy.toml);
// tests may be longer.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod allowlist;
pub mod clock;
pub mod codec;
pub mod config;
pub mod connect;
pub mod consent;
#[cfg(feature = "dev")]
pub mod demo;
#[cfg(feature = "dev")]
pub mod demo_oidc;
#[cfg(feature = "dev")]
pub mod dev;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod grpc_gate;
pub mod html;
pub mod limits;
pub mod listener;
pub mod oidc;
pub mod proto;
pub mod push;
pub mod relay;
pub mod secrets;
#[cfg(feature = "dev")]
pub mod sim;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tokens;
pub mod wechat;

/// A random id of `len` characters of `[A-Za-z0-9]` (≈5.95 bits each) from the OS-seeded
/// thread RNG: flow ids (22 characters ≥ 128 bits), lock tokens.
pub fn random_id(len: usize) -> String {
    use rand::Rng as _;
    use rand::distr::Alphanumeric;
    rand::rng().sample_iter(Alphanumeric).take(len).map(char::from).collect()
}

/// The one way to start an HTTP client (the WeChat client, and the simulator's, the tests' and
/// the benchmark's clients): rustls with ring as its crypto provider, trusting the web roots,
/// HTTP/1.1. reqwest 0.13 would otherwise need a process-wide crypto provider installed before
/// any client is built, or bring in aws-lc-rs and the platform's trust store.
pub fn http_client() -> reqwest::ClientBuilder {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder().tls_backend_preconfigured(tls)
}
