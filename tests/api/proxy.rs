//! A test-only TCP fault proxy, put between wxauth and Redis or between wxauth and WeChat (the
//! simulator) to show what callers see when the network misbehaves: added latency, a stall
//! (bytes held, nothing forwarded, connections kept open), a partition (bytes dropped both ways,
//! live connections included) and resets of live connections. Clearing a fault lets bytes flow
//! again; healing a partition resets every connection that lived through it, as TCP gives up on
//! a stream with a hole in it.
//!
//! Small on purpose (tokio only): each accepted connection is paired with a fresh connection to
//! the upstream and pumped both ways in chunks; every chunk looks at the current fault first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the link does to the bytes crossing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkFault {
    /// Forwarded as they come.
    None,
    /// Each chunk waits this long before it is forwarded.
    Latency(Duration),
    /// Nothing is read or forwarded: bytes wait in the senders' buffers (a hung peer, a full
    /// queue); connections stay open. Cleared, the held bytes flow on.
    Stall,
    /// Every byte is read and dropped, both ways, on live and new connections alike.
    Partition,
}

/// The proxy: listens on a loopback port and forwards to `upstream` through the current fault.
/// Stops accepting when dropped; connections it pumps end with their peers.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<LinkFault>,
    /// Bumped to reset every live connection (RST to both peers).
    resets: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// A proxy on `127.0.0.1:<free port>` in front of `upstream`, forwarding faithfully.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, _) = watch::channel(LinkFault::None);
        let (resets, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let (fault, resets, accepted) = (fault.clone(), resets.clone(), Arc::clone(&accepted));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (faults, resets) = (fault.subscribe(), resets.subscribe());
                    tokio::spawn(async move {
                        // Upstream gone (Redis killed): the client sees its connection close.
                        if let Ok(upstream) = TcpStream::connect(upstream).await {
                            serve(client, upstream, faults, resets).await;
                        }
                    });
                }
            })
        };
        Self { addr, fault, resets, accepted, accept }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (a client that reconnected shows here).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Applies `fault` from now on, to live and new connections. Leaving a partition resets
    /// every live connection: each of them may have lost bytes.
    pub fn set(&self, fault: LinkFault) {
        let previous = self.fault.send_replace(fault);
        if previous == LinkFault::Partition && fault != LinkFault::Partition {
            self.reset();
        }
    }

    /// Back to faithful forwarding.
    pub fn clear(&self) {
        self.set(LinkFault::None);
    }

    /// Resets every live connection now (an abortive close: RST to both peers), as a
    /// restarted load balancer or a NAT that forgot its entries does.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

/// Pumps one connection both ways until either peer closes or fails, or a reset comes.
async fn serve(
    mut client: TcpStream,
    mut upstream: TcpStream,
    faults: watch::Receiver<LinkFault>,
    mut resets: watch::Receiver<u64>,
) {
    let reset = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        tokio::select! {
            _ = pump(client_read, upstream_write, faults.clone()) => false,
            _ = pump(upstream_read, client_write, faults) => false,
            changed = resets.changed() => changed.is_ok(),
        }
    };
    if reset {
        // SO_LINGER 0: dropping the sockets sends RST instead of FIN, and never blocks.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// One direction: read a chunk, then deliver it as the current fault says.
async fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    mut faults: watch::Receiver<LinkFault>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // A stalled link reads nothing: the bytes wait in the sender's buffers.
        if faults.wait_for(|f| *f != LinkFault::Stall).await.is_err() {
            return Ok(());
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        // A chunk read just before a stall began waits it out too.
        let Ok(fault) = faults.wait_for(|f| *f != LinkFault::Stall).await.map(|f| *f) else { return Ok(()) };
        match fault {
            LinkFault::Partition => continue,
            LinkFault::Latency(by) => tokio::time::sleep(by).await,
            LinkFault::None | LinkFault::Stall => {}
        }
        to.write_all(&buf[..n]).await?;
    }
}
