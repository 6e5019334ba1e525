//! The HTTP side: binding `--web.listen-address` and one hyper service with the landing page,
//! the telemetry path, `/-/healthy` and `/-/ready`.

use std::{
    convert::Infallible,
    future::Future,
    net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, error, info};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    error::{Error, Result},
    metrics,
    probe::{self, ProbeContext, Probers, Query},
};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the service needs to answer requests.
#[derive(Debug)]
pub struct AppState {
    pub registry: Registry,
    pub telemetry_path: String,
    /// Set once the datapath is attached; `/-/ready` answers 503 before that.
    pub ready: AtomicBool,
    pub probers: Probers,
}

/// Resolves a `--web.listen-address` value (`HOST:PORT`, `[V6]:PORT` or `:PORT`) to socket
/// addresses. `:PORT` means every local address, IPv6 and IPv4.
pub fn resolve_listen_address(address: &str) -> Result<Vec<SocketAddr>> {
    let invalid = |reason: String| Error::ListenAddress {
        address: address.to_string(),
        reason,
    };
    if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("port {port:?} is not a number from 0 to 65535")))?;
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    let Some((_, port)) = address.rsplit_once(':') else {
        return Err(invalid("expected HOST:PORT or :PORT".into()));
    };
    if port.parse::<u16>().is_err() {
        return Err(invalid(format!(
            "port {port:?} is not a number from 0 to 65535"
        )));
    }
    let addresses: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|err| invalid(err.to_string()))?
        .collect();
    if addresses.is_empty() {
        return Err(invalid("the host name resolves to no address".into()));
    }
    Ok(addresses)
}

/// Binds the first usable address of `--web.listen-address`. For `:PORT` the IPv6 wildcard
/// (dual-stack) is tried first and the IPv4 wildcard only if the host has no IPv6.
pub fn bind(address: &str) -> Result<StdTcpListener> {
    let candidates = resolve_listen_address(address)?;
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

/// Serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    listener: StdTcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let local = listener.local_addr().ok();
    let listener = TcpListener::from_std(listener)
        .map_err(|err| Error::Other(format!("registering the listener: {err}")))?;
    if let Some(local) = local {
        info!("listening on http://{local}{}", state.telemetry_path);
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
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(err) = connection.await {
                        debug!("connection from {peer}: {err}");
                    }
                });
            }
        }
    }
}

/// Routes one request. Never fails: every outcome is a response.
pub async fn handle(state: &AppState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    if path == state.telemetry_path {
        return match metrics::render(&state.registry) {
            Ok(body) => exposition(&request, body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            ),
        };
    }
    if path == "/probe" {
        return handle_probe(state, &request).await;
    }
    match path {
        "/" => with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing_page(&state.telemetry_path),
        ),
        "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
        "/-/ready" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "Ready\n"),
        "/-/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

/// `/probe?module=NAME&target=...`: runs one probe and answers with its metrics, or with the
/// probe log and the metrics when `debug=true`. Bad parameters get a 400 naming them.
async fn handle_probe(state: &AppState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let bad = |err: probe::BadRequest| {
        with_type(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            format!("{err}\n"),
        )
    };
    let query = match Query::parse(request.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(err) => return bad(err),
    };
    let (module, debug) = match (query.required("module"), query.flag("debug", false)) {
        (Ok(module), Ok(debug)) => (module.to_string(), debug),
        (Err(err), _) | (_, Err(err)) => return bad(err),
    };
    let header = request
        .headers()
        .get(probe::SCRAPE_TIMEOUT_HEADER)
        .map(|value| value.to_str().unwrap_or("<not text>"));
    let deadline = match probe::deadline(
        std::time::Instant::now(),
        header,
        state.probers.timeout(&module),
    ) {
        Ok(deadline) => deadline,
        Err(err) => return bad(err),
    };
    let ctx = ProbeContext::new(deadline);
    let report = match state.probers.run(&module, &ctx, &query).await {
        Ok(report) => report,
        Err(err) => return bad(err),
    };
    let body = match metrics::render(&report.registry) {
        Ok(body) => body,
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            );
        }
    };
    if debug {
        let mut text = String::from("Logs for the probe:\n");
        for line in ctx.log_lines() {
            text.push_str(&line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\nProbe succeeded: {}\n\nMetrics that would have been returned:\n{body}",
            report.success
        ));
        return with_type(StatusCode::OK, "text/plain; charset=utf-8", text);
    }
    exposition(request, body)
}

/// A 200 with `openmetrics` as OpenMetrics when the client's Accept header asks for it at
/// least as much as for plain text (Prometheus does), else in the Prometheus text format 0.0.4
/// (curl, promtool and other clients that do not know OpenMetrics).
fn exposition(request: &Request<Incoming>, openmetrics: String) -> Response<Full<Bytes>> {
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|value| value.to_str().ok());
    if wants_openmetrics(accept) {
        with_type(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, openmetrics)
    } else {
        let body = metrics::openmetrics_to_text_004(&openmetrics);
        with_type(StatusCode::OK, TEXT_004_CONTENT_TYPE, body)
    }
}

/// Whether an Accept header gives `application/openmetrics-text` a quality above 0 and at
/// least that of plain text (`text/plain`, `text/*`, `*/*`).
fn wants_openmetrics(accept: Option<&str>) -> bool {
    let (mut openmetrics, mut plain) = (0.0f32, 0.0f32);
    for range in accept.unwrap_or("").split(',') {
        let range = range.to_ascii_lowercase();
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let quality = parts
            .find_map(|parameter| parameter.strip_prefix("q="))
            .map_or(Some(1.0), |q| q.parse::<f32>().ok())
            .unwrap_or(0.0);
        match media {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => plain = plain.max(quality),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= plain
}

fn landing_page(telemetry_path: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><title>network-probe</title></head><body>\n\
         <h1>network-probe</h1>\n<p>eBPF network telemetry for Prometheus, version {}.</p>\n<ul>\n\
         <li><a href=\"{telemetry_path}\">Metrics</a></li>\n\
         <li><a href=\"/-/healthy\">Health</a></li>\n\
         <li><a href=\"/-/ready\">Readiness</a></li>\n\
         </ul>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        // What Prometheus 2.42 sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,\
            application/openmetrics-text;version=0.0.1;q=0.75,\
            text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        for other in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
            Some("application/openmetrics-text;q=bad"),
        ] {
            assert!(!wants_openmetrics(other), "{other:?}");
        }
    }

    #[test]
    fn listen_addresses() {
        let all = resolve_listen_address(":9435").unwrap();
        assert_eq!(all[0].to_string(), "[::]:9435");
        assert_eq!(all[1].to_string(), "0.0.0.0:9435");
        assert_eq!(
            resolve_listen_address("127.0.0.1:1234").unwrap()[0].to_string(),
            "127.0.0.1:1234"
        );
        assert_eq!(
            resolve_listen_address("[::1]:80").unwrap()[0].to_string(),
            "[::1]:80"
        );
        for bad in ["9435", ":http", ":70000", "127.0.0.1:", "host:port"] {
            let err = resolve_listen_address(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

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
