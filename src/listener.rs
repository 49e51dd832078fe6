//! The listeners' defences against slow, idle and greedy clients (docs/design.md §6), used by
//! [`crate::startup`] for all three listeners:
//! - every accepted socket gets `TCP_NODELAY` (without it each response waits ~40 ms for the
//!   client's delayed ACK) and holds one of `server.max_connections` permits per listener: with
//!   none left, the listener stops accepting and new clients wait in the kernel's accept queue
//!   (mini-redis's `MAX_CONNECTIONS` pattern);
//! - HTTP (public relay, admin) is served by hyper-util's connection builder, HTTP/1 only, with
//!   hyper's header-read timeout (which starts again when a keep-alive connection goes idle, so
//!   it also closes idle connections; counted in `wxauth_connections_closed_total`), a bounded
//!   read buffer, a cap on requests in progress (tower's `GlobalConcurrencyLimit`) and
//!   hyper-util's graceful shutdown;
//! - gRPC connections must deliver the 24-byte HTTP/2 preface and their SETTINGS within the same
//!   header timeout ([`GrpcConnection`]): hyper's HTTP/2 server waits for them forever, and
//!   tonic has no option for it (closes counted as `preface_timeout`); at the connection cap,
//!   the oldest connection still in that handshake is closed to make room for a new one
//!   (`evicted`). Requests on a connection are [`crate::grpc_gate`]'s; the rest (streams per
//!   connection, keepalive, connection age) is tonic's builder;
//! - the gRPC listener also serves HTTP/1.1, for the JSON face ([`crate::connect`]): a
//!   connection whose first bytes are not the HTTP/2 preface must deliver its first request's
//!   head (to its blank line) within the same header timeout, may then stay open while bytes
//!   come, and is closed after [`HTTP1_IDLE`] without one (`http1_idle`; HTTP/1.1 has no ping
//!   to find a peer that vanished, as HTTP/2's keepalive does).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::config::ListenerLimits;
use crate::telemetry::Metrics;

/// The largest read buffer of an HTTP/1 connection: a request line and headers that do not fit
/// are refused (431). It bounds what a client trickling headers can make the process hold;
/// browsers' cookies for the callback domain stay far below it (ingress-nginx's own default,
/// `large-client-header-buffers 4 8k`, is 32 KiB).
const HTTP1_MAX_BUF: usize = 64 * 1024;

/// Length of the HTTP/2 client connection preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`
/// (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;
/// Length of an HTTP/2 frame header; the preface must be followed by a SETTINGS frame.
const H2_FRAME_HEADER_LEN: usize = 9;

/// How long an HTTP/1.1 connection on the gRPC listener may go without a byte from its peer
/// once its first request's head is in: longer than any RPC may run (30 s), so a connection is
/// never closed under a call in progress, and as long as HTTP/2's keepalive takes to find a
/// vanished peer (a 30 s interval and a 10 s timeout).
pub const HTTP1_IDLE: Duration = Duration::from_secs(40);

/// How long accepting pauses after an error that is not about one connection (out of file
/// descriptors): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Serves `router` over HTTP/1 on `listener` until `shutdown` completes, then stops accepting
/// and lets open connections finish the request in progress (idle ones close at once). The
/// caller bounds that drain (`server.drain`).
pub async fn serve_http(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_buf_size(HTTP1_MAX_BUF);
    let service = TowerToHyperService::new(
        tower::ServiceBuilder::new()
            .layer(GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests))
            .service(router),
    );
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, permit) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &permits) => match accepted {
                Some(accepted) => accepted,
                None => continue,
            },
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service.clone()).into_owned());
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Header timeouts, resets and malformed requests: the client's doing.
                tracing::debug!(error = %e, "HTTP connection closed with an error");
                if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                    metrics.connections_closed.with_label_values(&[name, "header_timeout"]).inc();
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The gRPC listener's accepted connections, for tonic's `serve_with_incoming_shutdown`: each
/// with `TCP_NODELAY`, a connection permit and the handshake deadline. When the connection cap
/// is reached, the oldest connection still in its handshake is closed to make room for the new
/// one (a client that has not sent its preface and SETTINGS has nothing in progress), so silent
/// connections cannot keep new clients (a kubelet's probe) waiting; only when every connection
/// is past its handshake does the new one wait for a permit.
pub fn grpc_incoming(
    listener: TcpListener,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<GrpcConnection>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handshaking = Handshaking::default();
    let state = (listener, permits, handshaking, metrics);
    futures::stream::unfold(state, move |(listener, permits, handshaking, metrics)| async move {
        loop {
            let Some(tcp) = accept_tcp(&listener).await else { continue };
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    handshaking.evict_oldest();
                    // The semaphore is never closed.
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { continue };
                    permit
                }
            };
            let evict = handshaking.register(limits.max_connections);
            let connection = GrpcConnection::new(tcp, permit, limits.header_timeout, evict, Arc::clone(&metrics));
            return Some((Ok(connection), (listener, permits, handshaking, metrics)));
        }
    })
}

/// The gRPC connections still in their handshake, oldest first, each by the sender that closes
/// it (a sender whose connection finished its handshake, or closed, is closed itself).
#[derive(Clone, Debug, Default)]
struct Handshaking(Arc<std::sync::Mutex<VecDeque<oneshot::Sender<()>>>>);

impl Handshaking {
    /// A new connection's eviction signal. The queue is pruned of finished handshakes when it
    /// reaches `cap` (it holds at most the connections accepted since its oldest live entry).
    fn register(&self, cap: usize) -> oneshot::Receiver<()> {
        let (evict, evicted) = oneshot::channel();
        let mut queue = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() >= cap {
            queue.retain(|sender| !sender.is_closed());
        }
        queue.push_back(evict);
        evicted
    }

    /// Closes the oldest connection still in its handshake, if there is one.
    fn evict_oldest(&self) {
        let mut queue = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(sender) = queue.pop_front() {
            if sender.send(()).is_ok() {
                return;
            }
        }
    }
}

/// Waits for a connection permit, then for a connection; `None` after an accept error (logged,
/// and paused on when it is not about that one connection). Cancel-safe: dropping it while it
/// waits loses no connection.
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    // The semaphore is never closed.
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    Some((accept_tcp(listener).await?, permit))
}

/// Waits for a connection, with `TCP_NODELAY`; `None` after an accept error (as [`accept`]).
async fn accept_tcp(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((tcp, _)) => {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
            Some(tcp)
        }
        Err(e) if is_connection_error(&e) => None,
        Err(e) => {
            tracing::error!(error = %e, "accept failed; pausing");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            None
        }
    }
}

/// Errors about one connection that went away before it was accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// An accepted gRPC socket that must deliver its HTTP/2 handshake, the preface and the SETTINGS
/// frame that follows it (RFC 9113 §3.4), within the header timeout: until it has, a read that
/// is still waiting when the deadline passes fails with `TimedOut`, which ends the connection.
/// (After the preface alone, hyper would wait for a frame until its keepalive ping went
/// unanswered: 40 s.) Afterwards it is the plain socket (no per-read work beyond a branch). It
/// holds the listener's connection permit until dropped, with the connection.
#[derive(Debug)]
pub struct GrpcConnection {
    tcp: TcpStream,
    /// Set until the handshake has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How far the handshake has come.
    handshake: Handshake,
    /// Fires when the listener, at its connection cap, closes this connection (still in its
    /// handshake) to make room; dropped once the handshake is complete.
    evict: Option<oneshot::Receiver<()>>,
    /// Counts the connection when it is closed for its preface.
    metrics: Arc<Metrics>,
    /// HTTP/1.1 only, once its first request's head is in: closes the connection after
    /// [`HTTP1_IDLE`] without a byte.
    idle: Option<Pin<Box<Sleep>>>,
    _permit: OwnedSemaphorePermit,
}

impl GrpcConnection {
    fn new(
        tcp: TcpStream,
        permit: OwnedSemaphorePermit,
        header_timeout: Duration,
        evict: oneshot::Receiver<()>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tcp,
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
            handshake: Handshake::default(),
            evict: Some(evict),
            metrics,
            idle: None,
            _permit: permit,
        }
    }
}

impl AsyncRead for GrpcConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        let Some(deadline) = &mut this.deadline else { return this.idle(cx, polled, buf.filled().len() > before) };
        match polled {
            Poll::Ready(Ok(())) => {
                if this.handshake.feed(&buf.filled()[before..]) {
                    this.deadline = None;
                    this.evict = None;
                    if this.handshake.http1 {
                        this.idle = Some(Box::pin(tokio::time::sleep(HTTP1_IDLE)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let closed = if deadline.as_mut().poll(cx).is_ready() {
                    Some((
                        "preface_timeout",
                        "no HTTP/2 preface and SETTINGS (or HTTP/1.1 request head) within server.header_timeout",
                    ))
                } else {
                    match this.evict.as_mut().map(|evict| Pin::new(evict).poll(cx)) {
                        Some(Poll::Ready(Ok(()))) => Some(("evicted", "closed in its handshake at the connection cap")),
                        // The listener is gone (shutting down): the deadline still holds.
                        Some(Poll::Ready(Err(_))) => {
                            this.evict = None;
                            None
                        }
                        Some(Poll::Pending) | None => None,
                    }
                };
                let Some((reason, message)) = closed else { return Poll::Pending };
                // Once: the connection ends with this error.
                this.deadline = None;
                this.evict = None;
                this.metrics.connections_closed.with_label_values(&["grpc", reason]).inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, message)))
            }
            other => other,
        }
    }
}

impl GrpcConnection {
    /// After the handshake: an HTTP/1.1 connection's idle rule (bytes in start [`HTTP1_IDLE`]
    /// again; a read still waiting when it passes ends the connection); HTTP/2's reads as they are.
    fn idle(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<()>>, got_bytes: bool) -> Poll<io::Result<()>> {
        let Some(idle) = &mut self.idle else { return polled };
        match polled {
            Poll::Ready(Ok(())) if got_bytes => {
                idle.as_mut().reset(tokio::time::Instant::now() + HTTP1_IDLE);
                polled
            }
            Poll::Pending if idle.as_mut().poll(cx).is_ready() => {
                self.idle = None;
                self.metrics.connections_closed.with_label_values(&["grpc", "http1_idle"]).inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP/1.1 connection idle")))
            }
            other => other,
        }
    }
}

/// The client's side of a handshake as it arrives. HTTP/2: the 24-byte preface, then the first
/// frame's 9-byte header (whose first 3 bytes are its payload length), then that payload.
/// HTTP/1.1 (a first byte that departs from the preface): the first request's head, to the
/// blank line that ends it.
#[derive(Debug)]
struct Handshake {
    /// Bytes seen so far.
    seen: usize,
    /// Bytes the handshake takes: known once the frame header has arrived.
    needed: usize,
    /// The first frame's payload length, as its bytes arrive.
    length: usize,
    /// The connection is HTTP/1.1.
    http1: bool,
    /// HTTP/1.1: how much of the head's closing `\r\n\r\n` the last bytes matched.
    head_end: usize,
}

impl Default for Handshake {
    fn default() -> Self {
        Self { seen: 0, needed: H2_PREFACE_LEN + H2_FRAME_HEADER_LEN, length: 0, http1: false, head_end: 0 }
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; H2_PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The end of an HTTP/1.1 request's head (RFC 9112 §2.1).
const HTTP1_HEAD_END: &[u8; 4] = b"\r\n\r\n";

impl Handshake {
    /// Takes the next bytes read; true once the handshake is complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            if !self.http1 && self.seen < H2_PREFACE_LEN && byte != H2_PREFACE[self.seen] {
                self.http1 = true;
            }
            if self.http1 {
                self.head_end = match byte {
                    _ if byte == HTTP1_HEAD_END[self.head_end] => self.head_end + 1,
                    b'\r' => 1,
                    _ => 0,
                };
                self.seen += 1;
                if self.head_end == HTTP1_HEAD_END.len() {
                    return true;
                }
                continue;
            }
            if self.seen >= self.needed {
                break;
            }
            let at = self.seen;
            self.seen += 1;
            if (H2_PREFACE_LEN..H2_PREFACE_LEN + 3).contains(&at) {
                self.length = self.length << 8 | usize::from(byte);
                if at == H2_PREFACE_LEN + 2 {
                    self.needed += self.length;
                }
            }
        }
        !self.http1 && self.seen >= self.needed
    }
}

impl AsyncWrite for GrpcConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    /// No, on purpose: h2 decides from this how it writes DATA frames. Told "vectored", it
    /// keeps every payload of 256 bytes or more in a buffer of its own and flushes before the
    /// next frame, so each such answer costs a `writev` of its own (a BuildAuthorizeUrl's two
    /// URLs, most profiles). Told otherwise, it copies payloads up to 1 KiB into its 16 KiB
    /// write buffer and sends many answers in one `write`. Measured (issue 19, BENCHMARKS.md):
    /// BuildAuthorizeUrl's write calls per request fell from 2.1 to 1.2, and its throughput
    /// from 0.69x to 0.77x of the tonic SET ceiling. Payloads over 1 KiB (rare here) take two
    /// `write`s instead of one `writev`.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl Connected for GrpcConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[test]
    fn the_handshake_is_the_preface_and_the_whole_first_frame() {
        // SETTINGS with one 6-byte setting.
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        let mut handshake = Handshake::default();
        assert!(!handshake.feed(PREFACE), "the preface alone");
        assert!(!handshake.feed(&settings[..10]), "a frame cut off");
        assert!(handshake.feed(&settings[10..]));
    }

    #[test]
    fn a_handshake_in_one_read_with_more_behind_it_is_complete() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
        bytes.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1]); // WINDOW_UPDATE
        assert!(Handshake::default().feed(&bytes));
    }

    #[test]
    fn an_http1_connection_completes_its_handshake_with_its_first_head() {
        let mut handshake = Handshake::default();
        assert!(!handshake.feed(b"POST /wxauth.v1.WeChatOAuthService/GetUserInfo HTTP/1.1\r\nHost: x\r\n"));
        assert!(handshake.http1);
        assert!(!handshake.feed(b"Content-Type: application/json\r"), "a line end is not the head's end");
        assert!(handshake.feed(b"\n\r\n{}"));
        let mut bytewise = Handshake::default();
        let head = b"GET / HTTP/1.1\r\n\r\n";
        let (last, before) = head.split_last().expect("bytes");
        assert!(before.iter().all(|b| !bytewise.feed(std::slice::from_ref(b))));
        assert!(bytewise.feed(&[*last]));
        let mut preface = Handshake::default();
        assert!(!preface.feed(PREFACE));
        assert!(!preface.http1, "the preface is HTTP/2 however it ends");
    }

    #[test]
    fn bytes_one_at_a_time_count_the_same() {
        let mut handshake = Handshake::default();
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let (last, before) = bytes.split_last().expect("bytes");
        assert!(before.iter().all(|b| !handshake.feed(std::slice::from_ref(b))));
        assert!(handshake.feed(&[*last]));
    }
}
