//! The listeners: binding `--web.listen-address` (and each `--web.probe-listen` address),
//! accepting connections, the TLS handshake, and hyper's HTTP/1.1 on each connection with the
//! limits set at that level: 10 s to send the request headers (or finish a TLS handshake), a
//! request head of at most 32 KiB and 100 fields, and the URI limit (8 KiB) that
//! [`super::routes`] enforces.

use std::{
    convert::Infallible,
    future::Future,
    net::{SocketAddr, TcpListener as StdTcpListener},
    sync::Arc,
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, error, info};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{AppState, routes::handle};
use crate::error::{Error, Result};

/// How long a client may take to send its request headers (and to finish a TLS handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request URI (path and query) answered; longer ones get 414.
pub(super) const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest request head (request line and headers); hyper answers 431 beyond it, and also
/// beyond 100 header fields.
pub(super) const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Binds the first usable address of `--web.listen-address`. For `:PORT` the IPv6 wildcard
/// (dual-stack) is tried first and the IPv4 wildcard only if the host has no IPv6.
pub fn bind(address: &str) -> Result<StdTcpListener> {
    let candidates = crate::support::listen_address::resolve(address)?;
    let mut last_error = None;
    for candidate in &candidates {
        match StdTcpListener::bind(candidate) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|err| Error::listen(address, err))?;
                return Ok(listener);
            }
            // Only a missing address family moves on to the next candidate; anything else
            // (in use, permission) is the operator's to fix.
            Err(err) if err.raw_os_error() == Some(libc::EAFNOSUPPORT) => last_error = Some(err),
            Err(err) => return Err(Error::listen(address, err)),
        }
    }
    Err(Error::listen(
        address,
        last_error.unwrap_or_else(|| std::io::Error::other("no address to bind")),
    ))
}

/// Serves HTTP (HTTPS with `tls`) on `listener` until `shutdown` completes. `default_module`
/// (from `--web.probe-listen`) is the module of a `/probe` request that names none; without it
/// `module=` is required.
pub async fn serve(
    listener: StdTcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    default_module: Option<&'static str>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let local = listener.local_addr().ok();
    let listener = TcpListener::from_std(listener)
        .map_err(|err| Error::Other(format!("registering the listener: {err}")))?;
    if let Some(local) = local {
        let scheme = if tls.is_some() { "https" } else { "http" };
        match default_module {
            None => info!("listening on {scheme}://{local}{}", state.telemetry_path),
            Some(module) => {
                info!("listening on {scheme}://{local}/probe (default module {module})")
            }
        }
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // EMFILE and friends: back off instead of spinning.
                        error!("accepting a connection: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = Arc::clone(&state);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let Some(acceptor) = tls else {
                        let io = TokioIo::new(stream);
                        return serve_connection(io, state, default_module, peer).await;
                    };
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let io = TokioIo::new(stream);
                            serve_connection(io, state, default_module, peer).await
                        }
                        Ok(Err(err)) => debug!("TLS handshake with {peer}: {err}"),
                        Err(_) => debug!("TLS handshake with {peer}: timed out"),
                    }
                });
            }
        }
    }
}

/// Answers the requests of one connection (plain TCP or TLS) with hyper's HTTP/1.1.
async fn serve_connection<I>(
    io: I,
    state: Arc<AppState>,
    default_module: Option<&'static str>,
    peer: SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(handle(&state, default_module, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        // Body chunks go to the socket as they are (vectored writes), not copied into one
        // buffer first: a 100k-series scrape is 100 MB of chunks.
        .writev(true)
        .serve_connection(io, service);
    if let Err(err) = connection.await {
        debug!("connection from {peer}: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_in_use_is_explained() {
        let first = bind("127.0.0.1:0").unwrap();
        let taken = first.local_addr().unwrap().to_string();
        let err = bind(&taken).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit_code::LISTEN);
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot listen on {taken}: ")),
            "{text}"
        );
        assert!(text.contains("another process holds this port"), "{text}");
    }
}
