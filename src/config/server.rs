//! `[server]`: the three listeners' addresses, the callback URL WeChat knows, the drain time,
//! and the listeners' timeouts and caps (docs/design.md §6, docs/operations.md).

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::raw::RawServer;
use super::{ConfigError, err};

/// The validated `[server]` section: what [`crate::startup`] binds and serves with.
#[derive(Debug)]
pub struct ServerSettings {
    /// gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Public HTTP listener (the relay).
    pub public_addr: SocketAddr,
    /// Admin HTTP listener.
    pub admin_addr: SocketAddr,
    /// The one callback URL WeChat knows (`https://auth.example.com/wechat/callback`).
    pub callback_url: Url,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain: Duration,
    /// Timeouts and caps of the listeners.
    pub listener_limits: ListenerLimits,
}

/// Timeouts and caps of the three listeners (`server.*`): what keeps slow, idle and greedy
/// clients from holding connections, tasks and memory (docs/design.md §6, docs/operations.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// HTTP listeners: a request's headers must arrive within this, counted from the connection's
    /// start or from the end of the previous response (so it also closes idle keep-alive
    /// connections). gRPC: the HTTP/2 connection preface must arrive within it.
    pub header_timeout: Duration,
    /// Open connections per listener; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Requests in progress per listener; further requests wait for a slot.
    pub max_concurrent_requests: usize,
    /// gRPC: concurrent streams (RPCs) per HTTP/2 connection, advertised to the client.
    pub grpc_max_concurrent_streams: u32,
    /// gRPC: a connection older than this is sent GOAWAY (the client reconnects, which also
    /// spreads callers over new replicas), then closed once its RPCs finish.
    pub grpc_max_connection_age: Duration,
}

/// Validates `[server]`: the callback URL (https and not loopback in production, no query or
/// fragment) and the listener limits.
pub(super) fn validate(server: &RawServer, dev: bool) -> Result<ServerSettings, ConfigError> {
    let callback_url = parse_base("server.callback_url", &server.callback_url, dev)?;
    if callback_url.query().is_some() || callback_url.fragment().is_some() {
        return Err(err("server.callback_url", "must not have a query or fragment"));
    }
    Ok(ServerSettings {
        grpc_addr: server.grpc_addr,
        public_addr: server.public_addr,
        admin_addr: server.admin_addr,
        callback_url,
        drain: server.drain,
        listener_limits: listener_limits(server)?,
    })
}

/// The `server.*` timeouts and caps, each within a range that keeps the service both usable and
/// protected (docs/operations.md says why each default is what it is).
fn listener_limits(server: &RawServer) -> Result<ListenerLimits, ConfigError> {
    if server.header_timeout < Duration::from_millis(100) || server.header_timeout > Duration::from_secs(60) {
        return Err(err("server.header_timeout", "between 100ms and 60s"));
    }
    if !(1..=1_000_000).contains(&server.max_connections) {
        return Err(err("server.max_connections", "between 1 and 1000000"));
    }
    if !(1..=1_000_000).contains(&server.max_concurrent_requests) {
        return Err(err("server.max_concurrent_requests", "between 1 and 1000000"));
    }
    if !(1..=100_000).contains(&server.grpc_max_concurrent_streams) {
        return Err(err("server.grpc_max_concurrent_streams", "between 1 and 100000"));
    }
    if server.grpc_max_connection_age < Duration::from_secs(10)
        || server.grpc_max_connection_age > Duration::from_secs(7 * 24 * 3600)
    {
        return Err(err("server.grpc_max_connection_age", "between 10s and 7days"));
    }
    Ok(ListenerLimits {
        header_timeout: server.header_timeout,
        max_connections: server.max_connections,
        max_concurrent_requests: server.max_concurrent_requests,
        grpc_max_concurrent_streams: server.grpc_max_concurrent_streams,
        grpc_max_connection_age: server.grpc_max_connection_age,
    })
}

/// An absolute base URL (`server.callback_url`, `wechat.*_base`); production requires https
/// and a non-loopback host.
pub(super) fn parse_base(key: &str, value: &str, dev: bool) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| err(key, format!("not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(err(key, "must be an http(s) URL with a host"));
    }
    if !dev {
        if url.scheme() != "https" {
            return Err(err(key, "must be https in production (http is for the dev-mode simulator)"));
        }
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
            None => true,
        };
        if loopback {
            return Err(err(key, "points at a loopback address (the dev-mode simulator); production refuses it"));
        }
    }
    Ok(url)
}
