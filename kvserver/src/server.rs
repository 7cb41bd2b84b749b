//! The HTTP server loop: accept, serve each connection with hyper (over TLS if configured),
//! hold connections to their limits, drain on shutdown.
//!
//! # Limits
//! - **Open connections**: at most `--max-connections`. One more is answered at once with a
//!   `503 too_many_connections` JSON response (plain HTTP; over TLS it is just closed) and
//!   closed, without a task or a wait, so the accept loop never stalls or spins on a client it
//!   cannot serve. Peers' connections count too.
//! - **Headers**: `--header-read-timeout-ms` (hyper's timer, which also runs while a kept-alive
//!   connection waits for its next request); the TLS handshake gets the same time.
//! - **Body**: `--body-read-timeout-ms` for the whole body once the headers are in (answered
//!   408), size limits per endpoint (answered 413); see [`api`].
//! - **Idle**: a kept-alive connection with no request in flight for `--idle-timeout-ms` is
//!   closed.
//! - **Lingering close**: when a connection ends, the server says so (FIN) and then reads and
//!   discards whatever the client still sends, for at most [`LINGER_TIME`] in all,
//!   [`LINGER_IDLE`] between reads and [`LINGER_MAX_BYTES`], before closing. A client that
//!   writes a whole oversized body before reading (Python's urllib and requests do) thus reads
//!   the 413 instead of a reset: closing a socket with unread data makes the kernel reset the
//!   connection, which destroys the answer in flight (nginx's lingering close).

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::api::{self, HttpResponse};
use crate::node::Node;
use crate::tls::{self, PeerCertificate};

/// Longest a lingering close reads what a client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// A lingering close ends once the client has sent nothing for this long.
pub const LINGER_IDLE: Duration = Duration::from_secs(2);
/// Most bytes a lingering close reads and discards.
pub const LINGER_MAX_BYTES: usize = 64 << 20;

/// The answer to a connection over `--max-connections`.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\ncontent-length: 93\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"the node has too many open connections\"}}\n";

/// What every connection task needs, shared.
struct Shared {
    node: Arc<Node>,
    builder: http1::Builder,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    draining: CancellationToken,
}

/// Serves `node`'s HTTP API on `listener` until `shutdown` completes, lets requests in flight
/// finish (up to the configured shutdown grace), then stops the node. Returns once every task of
/// the node has ended. If the node is stopped meanwhile (a crash, in tests), it returns at once.
///
/// With `--tls-cert` (and its key and CA) in the node's configuration, the listener serves
/// HTTPS only; if those files cannot be read the node is stopped and `run` returns (the binary
/// reads them first, to refuse to start with a clear message).
///
/// Tests call this with a listener bound to port 0.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let config = node.config().clone();
    let tls = match tls::server_config(&config) {
        Ok(tls) => tls.map(TlsAcceptor::from),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve TLS; stopping the node");
            node.stop().await;
            return;
        }
    };
    let mut builder = http1::Builder::new();
    // Without a timer hyper silently disables its header read timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .keep_alive(true);
    let shared = Arc::new(Shared {
        node: node.clone(),
        builder,
        tls,
        handshake_timeout: config.header_read_timeout(),
        idle_timeout: config.idle_timeout(),
        draining: CancellationToken::new(),
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff = Duration::from_millis(5);
                    conn
                }
                Err(e) => {
                    // Usually out of file descriptors: wait for connections to close rather than
                    // exit, backing off so the loop does not spin.
                    tracing::warn!(error = %e, "accept failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
            () = node.lifecycle().stopping() => {
                // Crashed: nothing is drained.
                node.stop().await;
                return;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: --max-connections reached");
            if shared.tls.is_none() {
                // Best effort and never waits: a fresh socket's buffer takes this whole.
                let _ = stream.try_write(OVER_CAPACITY);
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Connections are tasks of the node, so a crash ends them too.
        node.lifecycle()
            .spawn(connection(shared.clone(), stream, peer, permit));
    }
    drop(listener);
    shared.draining.cancel();
    let grace = config.shutdown_grace();
    // Every connection holds a slot until it ends, so all slots free means all drained.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let drained = node
        .lifecycle()
        .unless_stopped(tokio::time::timeout(grace, slots.acquire_many(all)))
        .await;
    if matches!(drained, Some(Err(_))) {
        tracing::warn!("shutdown grace period of {grace:?} passed with requests still in flight");
    }
    node.stop().await;
}

/// One client connection, from the TLS handshake (if any) to the lingering close.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    _slot: OwnedSemaphorePermit,
) {
    let _open = shared.node.telemetry().connection();
    let Some(acceptor) = shared.tls.clone() else {
        return serve(&shared, stream, peer, false).await;
    };
    let handshake = tokio::select! {
        done = tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream)) => done,
        () = shared.draining.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => {
            // The verifier checked any client certificate against the CA; showing one at all
            // is what marks a peer.
            let verified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty());
            serve(&shared, stream, peer, verified).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP/1.1 on one connection, closes it when idle or draining, then lingers.
async fn serve<I>(shared: &Shared, io: I, peer: std::net::SocketAddr, peer_certificate: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let node = shared.node.clone();
        let activity = activity.clone();
        service_fn(move |mut req: Request<Incoming>| {
            let node = node.clone();
            let busy = activity.begin();
            if peer_certificate {
                req.extensions_mut().insert(PeerCertificate);
            }
            // Boxed: hyper hands the connection back (for the lingering close) only when the
            // service's future is Unpin.
            Box::pin(async move {
                let response = api::handle(&node, req).await;
                drop(busy);
                Ok::<HttpResponse, Infallible>(response)
            })
        })
    };
    let mut conn = shared.builder.serve_connection(TokioIo::new(io), service);
    let idle_timeout = shared.idle_timeout;
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            ended = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break ended,
            () = shared.draining.cancelled(), if !closing => {
                // Closes the connection now if idle, else after the request in flight.
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing => match activity.idle_since() {
                Some(since) if since.elapsed() >= idle_timeout => {
                    std::pin::Pin::new(&mut conn).graceful_shutdown();
                    closing = true;
                }
                Some(since) => idle.as_mut().reset(since + idle_timeout),
                None => idle.as_mut().reset(Instant::now() + idle_timeout),
            },
        }
    };
    match ended {
        Ok(()) => {
            let io = conn.into_parts().io.into_inner();
            linger(io, &shared.draining).await;
        }
        // A header timeout, a malformed request, a reset: nothing to answer, close at once.
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
    }
}

/// Ends a connection whose answers are all written: FIN first, then read and discard what the
/// client still sends (bounded), so the kernel does not reset the connection under an answer
/// the client has not read yet.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, draining: &CancellationToken) {
    if tokio::time::timeout(LINGER_IDLE, io.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 << 10];
    let mut discarded = 0usize;
    while discarded < LINGER_MAX_BYTES {
        let until = deadline.min(Instant::now() + LINGER_IDLE);
        let read = tokio::select! {
            read = tokio::time::timeout_at(until, io.read(&mut buf)) => read,
            () = draining.cancelled() => return,
        };
        match read {
            Ok(Ok(n)) if n > 0 => discarded += n,
            // End of stream, an error, or too long: done.
            _ => return,
        }
    }
}

/// Whether a connection has a request in flight, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the last request finished, or `None` while one is in flight.
    fn idle_since(&self) -> Option<Instant> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        (self.in_flight.load(Ordering::SeqCst) == 0).then_some(last)
    }
}

/// A request in flight on a connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: the signal `kvserver` stops on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_well_formed_json() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
        assert_eq!(
            crate::error::status(kvcore::ErrorCode::TooManyConnections).as_u16(),
            503
        );
    }
}
