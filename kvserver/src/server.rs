//! The HTTP server loop: accept, serve each connection with hyper, drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::api;
use crate::node::Node;

/// Serves `node`'s HTTP API on `listener` until `shutdown` completes, lets requests in flight
/// finish (up to the configured shutdown grace), then stops the node. Returns once every task of
/// the node has ended. If the node is stopped meanwhile (a crash, in tests), it returns at once.
///
/// Tests call this with a listener bound to port 0.
pub async fn run(listener: TcpListener, node: Arc<Node>, shutdown: impl Future<Output = ()>) {
    let config = node.config().clone();
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    // Without a timer hyper silently disables its header read timeout.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout())
        .keep_alive(true);
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
        let _ = stream.set_nodelay(true);
        let handler = node.clone();
        let service = service_fn(move |req| {
            let node = handler.clone();
            async move { Ok::<_, Infallible>(api::handle(&node, req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        // Connections are tasks of the node, so a crash ends them too.
        node.lifecycle().spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = config.shutdown_grace();
    let drained = node
        .lifecycle()
        .unless_stopped(tokio::time::timeout(grace, graceful.shutdown()))
        .await;
    if matches!(drained, Some(Err(_))) {
        tracing::warn!("shutdown grace period of {grace:?} passed with requests still in flight");
    }
    node.stop().await;
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
