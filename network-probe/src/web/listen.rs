//! The listeners: binding `--web.listen-address` (and each `--web.probe-listen` address),
//! accepting connections within `--web.max-connections` ([`super::connections`]), the TLS
//! handshake, and hyper's HTTP/1.1 on each connection with the limits set at that level: 10 s
//! to send the request headers (or finish a TLS handshake; on a kept-alive connection, to start
//! the next request), 10 s at most without write progress, a request head of at most 32 KiB
//! and 100 fields, and the URI limit (8 KiB) that [`super::routes`] enforces.

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
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{
    AppState,
    connections::{ADMISSION_WAIT, Activity, Reason, Tracked, WRITE_TIMEOUT, Watched},
    routes::handle,
};
use crate::error::{Error, Result};

/// How often an accepted connection that waits for a slot looks again (besides when a slot is
/// given back).
const ADMISSION_POLL: Duration = Duration::from_millis(100);

/// How long a client may take to send its request headers (and to finish a TLS handshake); on
/// a kept-alive connection, counted from the end of the previous response, so it is also the
/// idle timeout.
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (request line and headers); hyper answers 431 beyond it, and also
/// beyond 100 header fields.
pub(super) const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Connections the kernel completes and queues for `accept` (std listens with 128; the
/// kernel caps it at `net.core.somaxconn`, 4096 by default). A flood of connections queues
/// here while the accept loop takes over stalled slots or waits for one; with 128 the queue
/// overflowed every ~150 connections in the hostile-web test, and each client then waited a
/// 1 s SYN retransmission, scrapers included.
const LISTEN_BACKLOG: libc::c_int = 1024;

/// Raises the listen backlog of a bound, listening socket to [`LISTEN_BACKLOG`] (calling
/// listen again only changes the backlog); on failure the socket keeps std's.
fn deepen_backlog(listener: &StdTcpListener) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: listen on a socket we own, already listening.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        debug!(
            "raising the listen backlog to {LISTEN_BACKLOG}: {}",
            std::io::Error::last_os_error()
        );
    }
}

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
                deepen_backlog(&listener);
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
/// `module=` is required. Each connection holds a slot of `--web.max-connections` (see
/// [`super::connections`]); while none can be had, accepting pauses.
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
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    error!("accepting a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // A slot: free, or taken over from a stalled connection; else wait (not accepting).
        let connections = &state.connections;
        let waiting_since = tokio::time::Instant::now();
        let admitted = loop {
            if let Some(admitted) = connections.try_admit() {
                break Some(admitted);
            }
            if waiting_since.elapsed() >= ADMISSION_WAIT {
                break None;
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = connections.released(ADMISSION_POLL) => {}
            }
        };
        let Some((slot, evicted)) = admitted else {
            debug!(
                "closing the connection from {peer}: all {} connection slots are busy",
                connections.max()
            );
            connections.count(Reason::MaxConnections);
            drop(stream);
            continue;
        };
        let state = Arc::clone(&state);
        let tls = tls.clone();
        tokio::spawn(async move {
            let activity = Arc::clone(&slot.activity);
            // In this order, so a connection ends for one reason, counted once: an eviction
            // (counted when it was decided) wins over a timeout seen in the same poll.
            tokio::select! {
                biased;
                () = activity.evicted() => {
                    debug!("closing the stalled connection from {peer} for a new one");
                }
                () = activity.write_stalled(WRITE_TIMEOUT) => {
                    debug!("connection from {peer}: no write progress for {WRITE_TIMEOUT:?}");
                    state.connections.count(Reason::WriteTimeout);
                }
                () = serve_stream(stream, &state, tls, default_module, peer, &activity) => {}
            }
            drop(slot);
        });
        if evicted {
            // Let the evicted connection close its socket before the next accept, so open
            // descriptors stay within the limit.
            tokio::task::yield_now().await;
        }
    }
}

/// One accepted connection: the TLS handshake (bounded by [`HEADER_READ_TIMEOUT`]) if any,
/// then HTTP.
async fn serve_stream(
    stream: TcpStream,
    state: &Arc<AppState>,
    tls: Option<TlsAcceptor>,
    default_module: Option<&'static str>,
    peer: SocketAddr,
    activity: &Arc<Activity>,
) {
    let stream = Watched::new(stream, Arc::clone(activity));
    let Some(acceptor) = tls else {
        let io = TokioIo::new(stream);
        return serve_connection(io, state, default_module, peer, activity).await;
    };
    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let io = TokioIo::new(stream);
            serve_connection(io, state, default_module, peer, activity).await
        }
        Ok(Err(err)) => debug!("TLS handshake with {peer}: {err}"),
        Err(_) => {
            debug!("TLS handshake with {peer}: timed out");
            state.connections.count(Reason::TlsHandshakeTimeout);
        }
    }
}

/// Answers the requests of one connection (plain TCP or TLS) with hyper's HTTP/1.1.
async fn serve_connection<I>(
    io: I,
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    peer: SocketAddr,
    activity: &Arc<Activity>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = {
        let state = Arc::clone(state);
        let activity = Arc::clone(activity);
        service_fn(move |request| {
            let state = Arc::clone(&state);
            // In flight from the request head until hyper has taken the whole response.
            let in_flight = activity.begin_request();
            async move {
                let response = handle(&state, default_module, request).await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
            }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES)
        // Body chunks go to the socket as they are (vectored writes), not copied into one
        // buffer first: a 100k-series scrape is 100 MB of chunks.
        .writev(true)
        .serve_connection(io, service);
    match connection.await {
        Ok(()) => {}
        Err(err) if err.is_timeout() => {
            let reason = if activity.had_requests() {
                Reason::IdleTimeout
            } else {
                Reason::HeaderTimeout
            };
            debug!("connection from {peer}: {err}");
            state.connections.count(reason);
        }
        Err(err) => debug!("connection from {peer}: {err}"),
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
