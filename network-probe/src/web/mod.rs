//! The HTTP side: binding `--web.listen-address` and one hyper service with the landing page,
//! the telemetry path, `/-/healthy`, `/-/ready`, `/probe`, `/config` and `/-/reload`; in front of it TLS and basic auth
//! from `--web.config.file` (parsed in [`crate::config::web`]) and the request limits (URI, header
//! section, body, concurrent probes).

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    future::Future,
    net::{SocketAddr, TcpListener as StdTcpListener},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{
        ACCEPT, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue,
        RETRY_AFTER, TRANSFER_ENCODING, WWW_AUTHENTICATE,
    },
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, error, info};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
};

use crate::{
    config::reload::{ConfigState, ReloadError},
    config::web::{self as web_config, ClientAuth, TlsSettings, TlsVersion, WebConfig},
    error::{Error, Result},
    flows::exposition::{self, FlowCursor, FlowSeries},
    metrics,
    probe::{
        self, ProbeContext, Probers, Query,
        allowlist::{Allowlist, Refusal, Screening},
    },
};

/// How long a client may take to send its request headers (and to finish a TLS handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request URI (path and query) answered; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest request head (request line and headers); hyper answers 431 beyond it, and also
/// beyond 100 header fields.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// bcrypt verifications running at once (each takes tens of milliseconds of CPU); further
/// requests with credentials wait for a turn.
const CONCURRENT_PASSWORD_CHECKS: usize = 2;

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the service needs to answer requests.
#[derive(Debug)]
pub struct AppState {
    pub registry: Registry,
    /// The flow table, whose series [`crate::flows::exposition`] writes next to the registry.
    pub flows: Arc<crate::flows::tracker::FlowTracker>,
    pub telemetry_path: String,
    /// Set once the datapath is attached; `/-/ready` answers 503 before that.
    pub ready: AtomicBool,
    pub probers: Probers,
    /// The configuration in force (probe modules, `--probe.allow`), reloadable.
    pub config: Arc<ConfigState>,
    /// Basic auth, response headers and the `/probe` concurrency limit.
    pub web: WebPolicy,
    /// Renders of the telemetry path, shared by concurrent scrapes.
    pub scrapes: ScrapeCoalescer,
}

/// Concurrent scrapes share renders. Rendering reads every kernel map (hundreds of milliseconds
/// with 100k flows) under the flow table's lock, so 16 scrapers each rendering queued up for
/// 10-30 s in the soak. Instead a scrape waits for the render in progress, then takes the
/// newest render that *started* after the scrape arrived, or starts one: every scrape still
/// sees the state as of its own request or later, and N waiting scrapes cost about two renders.
/// The newest render is kept alive while scrapes are queued behind the one that took it (a
/// response can be sent in full before the next scrape in line looks, and then nothing else
/// would hold it: in the soak every scrape rendered anew, 130 ms each, 2 s per scrape); once
/// nobody waits, only a weak reference is kept, so a render lives no longer than the responses
/// that use it.
#[derive(Debug)]
pub struct ScrapeCoalescer<T = Scrape> {
    last: tokio::sync::Mutex<Option<LastRender<T>>>,
    /// Scrapes waiting for `last`.
    waiting: AtomicUsize,
}

impl<T> Default for ScrapeCoalescer<T> {
    fn default() -> Self {
        ScrapeCoalescer {
            last: tokio::sync::Mutex::new(None),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// The newest render: when it started, and the render itself (held strongly only while scrapes
/// are waiting).
#[derive(Debug)]
struct LastRender<T> {
    started: std::time::Instant,
    weak: std::sync::Weak<T>,
    kept: Option<Arc<T>>,
}

/// One render of the telemetry path: the registry's OpenMetrics text and a snapshot of the flow
/// series, written out as the response is sent (see [`ScrapeBody`]).
#[derive(Debug)]
pub struct Scrape {
    registry: String,
    flows: FlowSeries,
}

/// Renders of at least this many flow series hand their memory back to the system when the
/// last response using them is done (glibc keeps freed memory mapped until asked).
const TRIM_AFTER_SERIES: usize = 10_000;

impl Drop for Scrape {
    fn drop(&mut self) {
        if self.flows.len() >= TRIM_AFTER_SERIES {
            // Free the snapshot first, then trim, off the runtime thread when there is one (a
            // trim walks the whole heap).
            drop(std::mem::take(&mut self.flows));
            let trim = crate::support::memory::trim_heap;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(trim)),
                Err(_) => trim(),
            }
        }
    }
}

/// The body of a telemetry response, produced chunk by chunk: the registry's families, then
/// the flow series (about [`exposition::CHUNK_BYTES`] at a time), then `# EOF` for
/// OpenMetrics. A 100k-series body (100 MB) thus never sits in memory whole.
#[derive(Debug)]
pub struct ScrapeBody {
    scrape: Arc<Scrape>,
    openmetrics: bool,
    cursor: FlowCursor,
    /// 0: registry part next, 1: flow series, 2: `# EOF`, 3: done.
    stage: u8,
}

impl hyper::body::Body for ScrapeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let body = self.get_mut();
        let chunk = loop {
            match body.stage {
                0 => {
                    body.stage = 1;
                    let registry = body.scrape.registry.as_str();
                    let registry = registry.strip_suffix("# EOF\n").unwrap_or(registry);
                    break if body.openmetrics {
                        registry.to_string()
                    } else {
                        metrics::openmetrics_to_text_004(registry)
                    };
                }
                1 => {
                    let mut chunk = String::with_capacity(exposition::CHUNK_BYTES + 512);
                    if body.scrape.flows.write(
                        &mut body.cursor,
                        body.openmetrics,
                        &mut chunk,
                        exposition::CHUNK_BYTES,
                    ) {
                        body.stage = 2;
                    }
                    if !chunk.is_empty() {
                        break chunk;
                    }
                }
                2 => {
                    body.stage = 3;
                    if body.openmetrics {
                        break "# EOF\n".to_string();
                    }
                }
                _ => return std::task::Poll::Ready(None),
            }
        };
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.stage >= 3
    }
}

/// A response's body: a whole text, or a telemetry body written as it is sent.
pub type Body = http_body_util::Either<Full<Bytes>, ScrapeBody>;

impl ScrapeCoalescer<Scrape> {
    /// The render for a scrape that arrived at `arrived`; `None` if encoding failed.
    async fn render(
        &self,
        state: &Arc<AppState>,
        arrived: std::time::Instant,
    ) -> Option<Arc<Scrape>> {
        self.share(arrived, || render_scrape(state)).await
    }
}

impl<T> ScrapeCoalescer<T> {
    /// A render for a request that arrived at `arrived`: the newest one if it started since,
    /// else a new one made by `render` (see [`ScrapeCoalescer`]).
    async fn share<F, R>(&self, arrived: std::time::Instant, render: F) -> Option<Arc<T>>
    where
        F: FnOnce() -> R,
        R: std::future::Future<Output = Option<Arc<T>>>,
    {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut last = self.last.lock().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let reusable = last
            .as_ref()
            .filter(|newest| newest.started >= arrived)
            .and_then(|newest| newest.weak.upgrade());
        let scrape = match reusable {
            Some(scrape) => scrape,
            None => {
                let started = std::time::Instant::now();
                let scrape = render().await?;
                *last = Some(LastRender {
                    started,
                    weak: Arc::downgrade(&scrape),
                    kept: None,
                });
                scrape
            }
        };
        if let Some(newest) = last.as_mut() {
            let queued = self.waiting.load(Ordering::SeqCst) > 0;
            newest.kept = queued.then(|| Arc::clone(&scrape));
        }
        Some(scrape)
    }
}

/// Reads the flow series and encodes the registry, off the runtime thread.
async fn render_scrape(state: &Arc<AppState>) -> Option<Arc<Scrape>> {
    // Off the runtime thread, so probes and other requests are not held up meanwhile.
    let reader = Arc::clone(state);
    let scrape = tokio::task::spawn_blocking(move || {
        // The series first: the registry's flow-table metrics describe the same refresh.
        let flows = FlowSeries::read(&reader.flows);
        metrics::render(&reader.registry).map(|registry| Scrape { registry, flows })
    })
    .await
    .ok()?
    .ok()?;
    Some(Arc::new(scrape))
}

/// What `--web.config.file` and `--web.max-concurrent-probes` ask of every request.
#[derive(Debug)]
pub struct WebPolicy {
    /// User name to bcrypt hash; empty: no authentication.
    users: BTreeMap<String, String>,
    /// SHA-256 of (user, password, hash) triples bcrypt has accepted, so that a scraper's
    /// repeated credentials cost one bcrypt run, not one per scrape.
    verified: Mutex<HashSet<[u8; 32]>>,
    password_checks: Semaphore,
    headers: Vec<(HeaderName, HeaderValue)>,
    probe_slots: Semaphore,
}

impl WebPolicy {
    /// The policy of `config`, allowing `max_concurrent_probes` probes at once.
    pub fn new(config: &WebConfig, max_concurrent_probes: usize) -> Self {
        let headers = config
            .headers
            .iter()
            .filter_map(|(name, value)| {
                // web_config admits only known names and values without control characters.
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        WebPolicy {
            users: config.basic_auth_users.clone(),
            verified: Mutex::default(),
            password_checks: Semaphore::new(CONCURRENT_PASSWORD_CHECKS),
            headers,
            probe_slots: Semaphore::new(max_concurrent_probes),
        }
    }

    /// Whether the request's `Authorization` header holds the credentials of a configured user
    /// (always true when no users are configured).
    async fn authorized(&self, request: &Request<Incoming>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, password)) = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| basic_credentials(value.as_bytes()))
        else {
            return false;
        };
        // An unknown user costs a bcrypt run too, so timing does not reveal user names.
        let (known, hash) = match self.users.get(&user) {
            Some(hash) => (true, hash.clone()),
            None => (false, UNKNOWN_USER_HASH.to_string()),
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        if known && self.verified.lock().is_ok_and(|set| set.contains(&key)) {
            return true;
        }
        let Ok(_turn) = self.password_checks.acquire().await else {
            return false;
        };
        let matches =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if known
            && matches
            && let Ok(mut set) = self.verified.lock()
        {
            // Bounded: only accepted credentials enter, but bcrypt reads 72 bytes at most.
            if set.len() >= 1024 {
                set.clear();
            }
            set.insert(key);
        }
        known && matches
    }
}

/// A bcrypt hash (cost 10) of no password anyone knows, checked for unknown user names.
const UNKNOWN_USER_HASH: &str = "$2y$10$vtGl0r3vt0JZdBB2pGmvF.VlOH54VfGZKgkPRP5Of7BCvtfhAte4K";

/// `Basic base64(user:password)` as (user, password).
pub fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    use base64::Engine as _;
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Reads `--web.config.file` (if given) and, when it configures TLS, builds the acceptor from
/// the certificate, key and client CA files it names. Every problem is one line naming the
/// field and value, with exit code 2.
pub fn load_web_config(path: Option<&Path>) -> Result<(WebConfig, Option<TlsAcceptor>)> {
    let Some(path) = path else {
        return Ok((WebConfig::default(), None));
    };
    let invalid = |reason: String| Error::WebConfig {
        path: path.display().to_string(),
        reason,
    };
    let config = web_config::load(path).map_err(|err| invalid(err.to_string()))?;
    let acceptor = config
        .tls
        .as_ref()
        .map(tls_acceptor)
        .transpose()
        .map_err(invalid)?;
    Ok((config, acceptor))
}

/// A rustls acceptor for `settings` (HTTP/1.1 over TLS 1.2/1.3, ring as crypto provider).
fn tls_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, String> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|err| {
            format!(
                "tls_server_config.{field}: cannot read {:?}: {err}",
                path.display()
            )
        })
    };
    let certificates = |field: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = read(field, path)?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("tls_server_config.{field}: {:?}: {err}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!(
                "tls_server_config.{field}: {:?} holds no PEM certificate",
                path.display()
            ));
        }
        Ok(certificates)
    };
    let chain = certificates("cert_file", &settings.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read("key_file", &settings.key_file)?).map_err(|err| {
            format!(
                "tls_server_config.key_file: {:?} holds no usable PEM private key: {err}",
                settings.key_file.display()
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (settings.min_version..=settings.max_version).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|err| format!("tls_server_config.min_version: {err}"))?;
    let builder = match (settings.client_auth, &settings.client_ca_file) {
        (ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify, Some(ca_file)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates("client_ca_file", ca_file)? {
                roots.add(certificate).map_err(|err| {
                    format!(
                        "tls_server_config.client_ca_file: {:?}: {err}",
                        ca_file.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|err| {
                format!(
                    "tls_server_config.client_ca_file: {:?}: {err}",
                    ca_file.display()
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| {
        format!(
            "tls_server_config.key_file: {:?} does not fit cert_file {:?}: {err}",
            settings.key_file.display(),
            settings.cert_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
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

/// Checks the limits and credentials, routes the request and adds the configured headers.
/// Never fails: every outcome is a response. `default_module` as in [`serve`].
pub async fn handle(
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    request: Request<Incoming>,
) -> Response<Body> {
    let mut response = match refusal(&request) {
        Some(refused) => refused.map(Body::Left),
        None if !state.web.authorized(&request).await => {
            let mut response = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"network-probe\", charset=\"UTF-8\""),
            );
            response.map(Body::Left)
        }
        None => route(state, default_module, request).await,
    };
    for (name, value) in &state.web.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The 4xx for a request beyond the limits: a URI over [`MAX_URI_BYTES`] (414), or any body
/// (413: no endpoint takes one). hyper itself answers a head over [`MAX_HEAD_BYTES`] or with
/// more than 100 fields (431) and a malformed head (400).
fn refusal(request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |path| path.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return Some(with_type(
            StatusCode::URI_TOO_LONG,
            "text/plain; charset=utf-8",
            format!("the URI has {uri_bytes} bytes; at most {MAX_URI_BYTES} are accepted\n"),
        ));
    }
    let headers = request.headers();
    let declared_body = headers
        .get(CONTENT_LENGTH)
        .is_some_and(|length| length.as_bytes() != b"0")
        || headers.contains_key(TRANSFER_ENCODING);
    if declared_body {
        return Some(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "no endpoint takes a request body\n",
        ));
    }
    None
}

/// Routes one request that passed the limits and authentication.
async fn route(
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    request: Request<Incoming>,
) -> Response<Body> {
    let readable = request.method() == Method::GET || request.method() == Method::HEAD;
    if readable && request.uri().path() == state.telemetry_path {
        return match state.scrapes.render(state, std::time::Instant::now()).await {
            Some(scrape) => telemetry(&request, scrape),
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
            .map(Body::Left),
        };
    }
    route_text(state, default_module, request)
        .await
        .map(Body::Left)
}

/// Routes a request for anything but the telemetry path.
async fn route_text(
    state: &Arc<AppState>,
    default_module: Option<&'static str>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() == "/-/reload" {
        return handle_reload(state, &request).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let path = request.uri().path();
    if path == "/probe" {
        return handle_probe(state, default_module, &request).await;
    }
    match path {
        "/" => with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing_page(&state.telemetry_path),
        ),
        "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
        "/config" => with_type(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            state.config.render(),
        ),
        "/-/ready" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "Ready\n"),
        "/-/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

/// `POST` (or `PUT`) `/-/reload`: reads `--config.file` again. 200 when the new file is in
/// force (listing what needs a restart), 409 with the error when it is not (the previous
/// configuration stays); other methods get 405.
async fn handle_reload(state: &AppState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::POST && request.method() != Method::PUT {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /-/reload to reload the configuration\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST, PUT"));
        return response;
    }
    // Reading and checking files: off the runtime thread.
    let config = Arc::clone(&state.config);
    let outcome = tokio::task::spawn_blocking(move || config.reload())
        .await
        .unwrap_or_else(|err| {
            Err(ReloadError::Invalid(crate::config::ConfigError {
                path: String::new(),
                reason: format!("the reload task failed: {err}"),
            }))
        });
    match outcome {
        Ok(reloaded) => {
            let mut body = String::from("configuration reloaded\n");
            for line in &reloaded.needs_restart {
                body.push_str(&format!("needs restart: {line}\n"));
            }
            with_type(StatusCode::OK, "text/plain; charset=utf-8", body)
        }
        Err(err) => with_type(
            StatusCode::CONFLICT,
            "text/plain; charset=utf-8",
            format!("{err}\n"),
        ),
    }
}

/// `/probe?module=NAME&target=...`: runs one probe and answers with its metrics, or with the
/// probe log, the metrics and the module when `debug=true`. `NAME` is a module of the
/// configuration (the built-in ones are named after their prober); its options are the
/// defaults of the query's parameters. Bad parameters and unknown modules get a 400 naming them, a target
/// outside `--probe.allow` a 403 naming it. `module=` may be left out on a listener with a
/// `default_module`.
async fn handle_probe(
    state: &AppState,
    default_module: Option<&'static str>,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Ok(_slot) = state.web.probe_slots.try_acquire() else {
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many probes running (--web.max-concurrent-probes); retry shortly\n",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
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
    let module = match (query.get("module"), default_module) {
        (Ok(Some(module)), _) if !module.is_empty() => Ok(module),
        (Ok(_), Some(default)) => Ok(default),
        (Ok(_), None) => query.required("module"),
        (Err(err), _) => Err(err),
    };
    let (module_name, debug) = match (module, query.flag("debug", false)) {
        (Ok(module), Ok(debug)) => (module.to_string(), debug),
        (Err(err), _) | (_, Err(err)) => return bad(err),
    };
    let live = state.config.current();
    let module = match live.config.module(&module_name) {
        Ok(module) => module,
        Err(err) => return bad(err),
    };
    let query = query.with_defaults(&module.options);
    let module_timeout = module
        .timeout
        .map_or(state.probers.timeout(module.prober), |timeout| {
            timeout.min(state.probers.timeout(module.prober))
        });
    let header = request
        .headers()
        .get(probe::SCRAPE_TIMEOUT_HEADER)
        .map(|value| value.to_str().unwrap_or("<not text>"));
    let deadline = match probe::deadline(std::time::Instant::now(), header, module_timeout) {
        Ok(deadline) => deadline,
        Err(err) => return bad(err),
    };
    if let Err(refusal) = check_targets(&live.allowlist, &query, deadline).await {
        debug!("/probe refused: {refusal}");
        return with_type(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            format!("{refusal}\n"),
        );
    }
    let ctx = ProbeContext::new(deadline);
    let report = match state.probers.run(module.prober, &ctx, &query).await {
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
            "\nProbe succeeded: {}\n\nMetrics that would have been returned:\n{body}\n\
             Module configuration ({module_name}):\n{}",
            report.success,
            module.to_yaml()
        ));
        return with_type(StatusCode::OK, "text/plain; charset=utf-8", text);
    }
    exposition(request, &body)
}

/// Checks every `target=` of `query` against `allowlist`, resolving (before `deadline`) the
/// names that matched no host pattern. Missing targets pass: the prober answers 400 for them.
async fn check_targets(
    allowlist: &Allowlist,
    query: &Query,
    deadline: std::time::Instant,
) -> Result<(), Refusal> {
    for target in query.all("target") {
        let host = match allowlist.screen(target) {
            Screening::Allowed => continue,
            Screening::Refused(refusal) => return Err(refusal),
            Screening::Resolve { host } => host,
        };
        let lookup = tokio::net::lookup_host((host.as_str(), 0));
        let addresses: Vec<std::net::IpAddr> =
            match tokio::time::timeout_at(deadline.into(), lookup).await {
                Ok(Ok(found)) => found.map(|address| address.ip()).collect(),
                Ok(Err(err)) => {
                    return Err(Refusal(format!(
                        "target {target:?} matches no --probe.allow host pattern and resolving \
                         it to check its addresses failed: {err}"
                    )));
                }
                Err(_) => {
                    return Err(Refusal(format!(
                        "target {target:?} matches no --probe.allow host pattern and resolving \
                         it to check its addresses did not finish before the deadline"
                    )));
                }
            };
        allowlist.check_addresses(target, &addresses)?;
    }
    Ok(())
}

/// The 200 of the telemetry path: `scrape` in the format the client asks for (see
/// [`exposition`]), written as it is sent.
fn telemetry(request: &Request<Incoming>, scrape: Arc<Scrape>) -> Response<Body> {
    let openmetrics = wants_openmetrics(
        request
            .headers()
            .get(ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    let content_type = if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        TEXT_004_CONTENT_TYPE
    };
    let mut response = Response::new(Body::Right(ScrapeBody {
        scrape,
        openmetrics,
        cursor: FlowCursor::default(),
        stage: 0,
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A 200 with `openmetrics` as OpenMetrics when the client's Accept header asks for it at
/// least as much as for plain text (Prometheus does), else in the Prometheus text format 0.0.4
/// (curl, promtool and other clients that do not know OpenMetrics).
fn exposition(request: &Request<Incoming>, openmetrics: &str) -> Response<Full<Bytes>> {
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|value| value.to_str().ok());
    if wants_openmetrics(accept) {
        with_type(
            StatusCode::OK,
            OPENMETRICS_CONTENT_TYPE,
            openmetrics.to_string(),
        )
    } else {
        let body = metrics::openmetrics_to_text_004(openmetrics);
        with_type(StatusCode::OK, TEXT_004_CONTENT_TYPE, body)
    }
}

/// Whether an Accept header gives `application/openmetrics-text` a quality above 0 and at
/// least that of plain text (`text/plain`, `text/*`, `*/*`).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
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
         <li><a href=\"/config\">Configuration</a></li>\n\
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

    /// 16 scrapes queued behind a render, each done with its render at once (as a response
    /// sent in full before the next scrape looks): the first render serves the first scrape,
    /// one more serves all the others, and a later scrape gets a fresh one.
    #[tokio::test]
    async fn queued_scrapes_share_one_render() {
        let coalescer = Arc::new(ScrapeCoalescer::<u32>::default());
        let renders = Arc::new(AtomicUsize::new(0));
        let scrape = |coalescer: Arc<ScrapeCoalescer<u32>>, renders: Arc<AtomicUsize>| async move {
            let arrived = std::time::Instant::now();
            let render = coalescer
                .share(arrived, || async {
                    let number = renders.fetch_add(1, Ordering::SeqCst) as u32 + 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some(Arc::new(number))
                })
                .await
                .expect("a render");
            *render
        };
        let tasks: Vec<_> = (0..16)
            .map(|_| tokio::spawn(scrape(Arc::clone(&coalescer), Arc::clone(&renders))))
            .collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        assert_eq!(
            renders.load(Ordering::SeqCst),
            2,
            "renders for 16 scrapes: {seen:?}"
        );
        assert_eq!(seen.iter().filter(|&&number| number == 2).count(), 15);
        // Nobody waits any more: the render is not kept, and a new scrape renders anew.
        assert!(coalescer.last.lock().await.as_ref().unwrap().kept.is_none());
        assert_eq!(
            scrape(Arc::clone(&coalescer), Arc::clone(&renders)).await,
            3
        );
    }

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
    fn basic_credentials_are_decoded() {
        // "alice:pa:ss" in base64: the password may contain ':'.
        assert_eq!(
            basic_credentials(b"Basic YWxpY2U6cGE6c3M="),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            basic_credentials(b"basic  YWxpY2U6cGE6c3M= "),
            Some(("alice".into(), "pa:ss".into()))
        );
        for bad in [
            &b""[..],
            b"Basic",
            b"Bearer YWxpY2U6cGE6c3M=",
            b"Basic !!!",
            b"Basic YWxpY2U=", // "alice": no ':'
            b"Basic /w==",     // not UTF-8
            b"\xff\xfe",
        ] {
            assert_eq!(basic_credentials(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn unknown_users_cost_a_real_bcrypt_run() {
        // A parse error would return at once and tell unknown users from known ones.
        assert_eq!(
            bcrypt::verify("anything", UNKNOWN_USER_HASH).ok(),
            Some(false)
        );
        assert!(crate::config::web::check_bcrypt_hash(UNKNOWN_USER_HASH).is_ok());
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
