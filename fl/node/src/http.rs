//! The HTTP/1.1 server loop, plain or TLS: hyper's connection builder driven directly (not
//! `axum::serve`) so each connection's read buffer is capped and Nagle is off.
//!
//! - `max_buf_size` caps what one connection buffers while reading (hyper's default is about
//!   400 KiB): with 50 workers uploading at once the default alone would be ~20 MB, five times
//!   a 1M-parameter model. Body frames are then at most this size, which is also how much of an
//!   upload is in memory per connection (the upload handler writes each frame to its file).
//! - A read timeout (`--read-timeout-ms`): a client that opens a connection and then sends
//!   nothing (no TLS handshake, no complete request head) is disconnected after it, instead of
//!   holding a task and a socket for ever (hyper has no head timeout unless given a timer).
//!   Stalls inside a body are the handlers' (`next_chunk`), to answer them with a 408.
//! - `TCP_NODELAY`: a small JSON answer (an upload's ack) goes out at once instead of waiting
//!   for the client's delayed ACK.
//!
//! On SIGTERM/ctrl-c the listener stops accepting, each open connection finishes its request in
//! flight (hyper's graceful shutdown), and the server returns once they are all closed.

use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use rustls::ServerConfig;
use tokio::task::JoinSet;

/// The most an HTTP/1 connection buffers while reading a request (and the largest body frame).
pub const MAX_CONN_BUF_BYTES: usize = 64 << 10;

/// Serves `router` on `listener` until a shutdown signal; over TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    read_timeout: std::time::Duration,
) -> Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // Plain HTTP has no client certificate: a client-sent peer-names header is dropped. The
    // layer is applied once here (layering a router rebuilds every route: per connection it
    // cost allocations and CPU on every request of the bench's one-request connections);
    // over TLS each connection has its own names.
    let plain = with_names(router.clone(), None);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = JoinSet::new();
    let shutdown = crate::coordinator::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!("accept: {e}"); continue; }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, "TCP_NODELAY: {e}");
                }
                let acceptor = acceptor.clone();
                let (router, plain) = (router.clone(), plain.clone());
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    match acceptor {
                        None => serve_conn(tcp, plain, stop, peer, read_timeout).await,
                        Some(a) => match tokio::time::timeout(read_timeout, a.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let names = crate::tls::peer_names(tls.get_ref().1.peer_certificates());
                                serve_conn(tls, with_names(router, names), stop, peer, read_timeout).await
                            }
                            Ok(Err(e)) => tracing::info!(%peer, "tls handshake refused: {e}"),
                            Err(_) => tracing::info!(%peer, "tls handshake not done within {} ms: closed", read_timeout.as_millis()),
                        },
                    }
                });
            }
            // Reap finished connections (a JoinSet keeps them until joined).
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

fn with_names(router: Router, names: Option<axum::http::HeaderValue>) -> Router {
    router.layer(axum::middleware::map_request(move |req| {
        let names = names.clone();
        async move { crate::tls::with_peer_names(req, names) }
    }))
}

async fn serve_conn<I>(
    io: I,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    peer: std::net::SocketAddr,
    read_timeout: std::time::Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_CONN_BUF_BYTES)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(read_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(%peer, "connection: {e}");
    }
}
