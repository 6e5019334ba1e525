//! The `iperf3` prober: a native iperf3 client (no external program) that runs one test per
//! probe against an iperf3 server (3.12 or newer) and exports throughput, retransmits and, for
//! UDP, loss and jitter under the metric names of edgard/iperf3_exporter.
//!
//! This file owns the probe: query parameters, the per-server queue (one test at a time per
//! server, bounded waiters, retries while another client holds the server), the async control
//! connection, and turning both sides' results into metrics. The data streams run on one
//! blocking thread each in [`streams`] (the daemon's runtime has a single thread). Every byte
//! the server sends is interpreted by the pure functions of [`protocol`].

pub mod protocol;
mod streams;

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
};

use self::{
    protocol::{
        COOKIE_LEN, ProtocolError, Results, ServerError, State, StreamResult, TestParameters,
        Transport,
    },
    streams::{DataSocket, RUN, STOP, StopOnDrop, StreamJob, StreamTally, collect},
};
use super::{BadRequest, ProbeContext, ProbeReport, Query};

/// Name in `module=`.
pub const MODULE: &str = "iperf3";
/// Longest probe, whatever the scrape timeout (the seed's configs use 5 minutes).
pub const MAX_PROBE_TIME: Duration = Duration::from_secs(600);
/// Parameters this prober accepts (besides `module` and `debug`, which the framework reads).
pub const PARAMETERS: &[&str] = &[
    "target",
    "port",
    "period",
    "reverse_mode",
    "udp_mode",
    "bitrate",
    "bind",
    "parallel",
    "username",
    "password",
    "public_key_file",
    "padding",
];
/// iperf3's default server port.
pub const DEFAULT_PORT: u16 = 5201;
/// Test length when `period` is not given (the seed's default).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
/// Most parallel streams accepted.
pub const MAX_PARALLEL: u32 = 128;
/// Probes that may wait for one server while a test runs; more fail with reason `busy`.
pub const MAX_WAITERS: usize = 8;
/// Time reserved around the test for connecting, the exchanges and draining.
pub const EXCHANGE_MARGIN: Duration = Duration::from_millis(1500);
/// Shortest test worth running.
pub const MIN_PERIOD: Duration = Duration::from_millis(200);
/// UDP bitrate when none is given (iperf3's default).
pub const DEFAULT_UDP_BITRATE: u64 = 1_000_000;
/// Datagram size: fits a 1500-byte MTU over IPv6 (1448 + 8 + 40).
pub const UDP_BLOCK_LEN: u32 = 1448;
/// Write size for TCP (iperf3's default).
pub const TCP_BLOCK_LEN: u32 = 128 * 1024;
/// First wait before retrying a server busy with another client; doubles each time.
const BUSY_BACKOFF: Duration = Duration::from_millis(250);
/// Attempts at a refused control connection (the server may be reopening its listener).
const CONNECT_ATTEMPTS: u32 = 3;
/// Wait between them.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Why a probe failed, as the `reason` label of `iperf3_failure`.
pub const FAILURE_REASONS: &[&str] = &[
    "resolve_failed",
    "connect_failed",
    "busy",
    "auth_failed",
    "server_error",
    "protocol_error",
    "timeout",
];

/// A failed probe: the reason label and a message for the probe log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
    /// Worth another attempt within the deadline (busy server, listener restarting).
    retry: bool,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Failure {
        debug_assert!(FAILURE_REASONS.contains(&reason));
        Failure {
            reason,
            message: message.into(),
            retry: false,
        }
    }

    fn retryable(self) -> Failure {
        Failure {
            retry: true,
            ..self
        }
    }
}

impl From<ProtocolError> for Failure {
    fn from(err: ProtocolError) -> Failure {
        Failure::new("protocol_error", err.0)
    }
}

/// RSA padding for the auth token: 3.12-3.16 servers use PKCS#1 v1.5; 3.17+ default to OAEP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Pkcs1,
    Oaep,
}

/// Credentials for servers started with `--rsa-private-key-path` and `--authorized-users-path`.
#[derive(Clone, Debug)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub public_key: rsa::RsaPublicKey,
    pub padding: Padding,
}

/// One probe's settings, from the query string.
#[derive(Clone, Debug)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub period: Duration,
    pub reverse: bool,
    pub transport: Transport,
    /// Bits per second per stream; 0 is unlimited (TCP).
    pub bitrate: u64,
    pub bind: Option<IpAddr>,
    pub parallel: u32,
    pub auth: Option<Auth>,
}

impl Config {
    /// Reads and checks the query; errors name the parameter and the value.
    pub fn from_query(query: &Query) -> Result<Config, BadRequest> {
        let unknown: Vec<&str> = query
            .unknown(PARAMETERS)
            .into_iter()
            .filter(|name| !["module", "debug"].contains(name))
            .collect();
        if !unknown.is_empty() {
            return Err(BadRequest(format!(
                "unknown parameter(s) {} for module iperf3 (known: {})",
                unknown
                    .iter()
                    .map(|name| format!("{name:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                PARAMETERS.join(", ")
            )));
        }
        let target = query.required("target")?;
        let (host, target_port) = split_target(target)?;
        let port = match query.get("port")? {
            None | Some("") => target_port.unwrap_or(DEFAULT_PORT),
            Some(_) => query.parse_or("port", DEFAULT_PORT, "a port number (1-65535)")?,
        };
        if port == 0 {
            return Err(BadRequest(
                "parameter \"port\": \"0\" is not a port number (1-65535)".into(),
            ));
        }
        let period = match query.get("period")? {
            None | Some("") => DEFAULT_PERIOD,
            Some(text) => parse_period(text)?,
        };
        let transport = if query.flag("udp_mode", false)? {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let bitrate = match query.get("bitrate")? {
            None | Some("") if transport == Transport::Udp => DEFAULT_UDP_BITRATE,
            None | Some("") => 0,
            Some(text) => protocol::parse_bitrate(text).ok_or_else(|| {
                BadRequest(format!(
                    "parameter \"bitrate\": {text:?} is not a bitrate in bits per second (e.g. 10M, 500k)"
                ))
            })?,
        };
        let bind = match query.get("bind")? {
            None | Some("") => None,
            Some(text) => Some(text.parse().map_err(|_| {
                BadRequest(format!("parameter \"bind\": {text:?} is not an IP address"))
            })?),
        };
        let parallel = query.parse_or("parallel", 1u32, "a number of streams")?;
        if !(1..=MAX_PARALLEL).contains(&parallel) {
            return Err(BadRequest(format!(
                "parameter \"parallel\": {parallel} is not from 1 to {MAX_PARALLEL}"
            )));
        }
        Ok(Config {
            host,
            port,
            period,
            reverse: query.flag("reverse_mode", false)?,
            transport,
            bitrate,
            bind,
            parallel,
            auth: auth_from_query(query)?,
        })
    }

    /// The key of the per-server queue.
    fn server_key(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address.
fn split_target(target: &str) -> Result<(String, Option<u16>), BadRequest> {
    let bad_port = |port: &str| {
        BadRequest(format!(
            "parameter \"target\": port {port:?} in {target:?} is not a port number"
        ))
    };
    if target.parse::<IpAddr>().is_ok() {
        return Ok((target.to_string(), None));
    }
    if let Some(rest) = target.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| {
            BadRequest(format!(
                "parameter \"target\": {target:?} lacks the closing ']'"
            ))
        })?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().map_err(|_| bad_port(port))?),
            None if after.is_empty() => None,
            None => return Err(bad_port(after)),
        };
        return Ok((host.to_string(), port));
    }
    match target.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && !host.is_empty() => Ok((
            host.to_string(),
            Some(port.parse().map_err(|_| bad_port(port))?),
        )),
        Some(_) => Err(BadRequest(format!(
            "parameter \"target\": {target:?} is not host, host:port or [ipv6]:port"
        ))),
        None => Ok((target.to_string(), None)),
    }
}

/// Seconds (`5`, `2.5`) or a duration with unit (`5s`, `1500ms`, `1m`).
fn parse_period(text: &str) -> Result<Duration, BadRequest> {
    let bad = || {
        BadRequest(format!(
            "parameter \"period\": {text:?} is not a positive duration (e.g. 5, 2.5 or 5s)"
        ))
    };
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = text.strip_suffix('m') {
        (m, 60.0)
    } else {
        (text, 1.0)
    };
    let seconds = number.parse::<f64>().map_err(|_| bad())? * scale;
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn auth_from_query(query: &Query) -> Result<Option<Auth>, BadRequest> {
    let username = query.get("username")?.filter(|v| !v.is_empty());
    let password = query.get("password")?;
    let key_file = query.get("public_key_file")?.filter(|v| !v.is_empty());
    let padding = match query.get("padding")? {
        None | Some("") | Some("pkcs1") => Padding::Pkcs1,
        Some("oaep") => Padding::Oaep,
        Some(other) => {
            return Err(BadRequest(format!(
                "parameter \"padding\": {other:?} is not pkcs1 or oaep"
            )));
        }
    };
    let (username, key_file) = match (username, key_file) {
        (None, None) if password.is_none() => return Ok(None),
        (Some(username), Some(key_file)) => (username, key_file),
        _ => {
            return Err(BadRequest(
                "authentication needs \"username\", \"password\" and \"public_key_file\" together"
                    .into(),
            ));
        }
    };
    let pem = read_key_file(key_file)?;
    Ok(Some(Auth {
        username: username.to_string(),
        password: password.unwrap_or("").to_string(),
        public_key: parse_public_key(&pem).map_err(|err| {
            BadRequest(format!(
                "parameter \"public_key_file\": {key_file:?} holds no RSA public key in PEM: {err}"
            ))
        })?,
        padding,
    }))
}

/// Largest `public_key_file` read; a PEM RSA public key of 16384 bits is about 3 KiB.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Reads the key file a query names: a regular file, at most [`MAX_KEY_FILE_BYTES`]. The name
/// comes from the request: `/dev/zero` must not grow the daemon's memory without end, nor a
/// FIFO block its runtime thread in `open`.
fn read_key_file(path: &str) -> Result<String, BadRequest> {
    use std::io::Read as _;
    let cannot = |err: std::io::Error| {
        BadRequest(format!(
            "parameter \"public_key_file\": cannot read {path:?}: {err}"
        ))
    };
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(BadRequest(format!(
            "parameter \"public_key_file\": {path:?} is not a regular file"
        )));
    }
    let mut pem = String::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut pem)
        .map_err(cannot)?;
    if pem.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(BadRequest(format!(
            "parameter \"public_key_file\": {path:?} is larger than {MAX_KEY_FILE_BYTES} bytes, \
             too large for a public key"
        )));
    }
    Ok(pem)
}

/// A PEM RSA public key: SubjectPublicKeyInfo ("PUBLIC KEY", what iperf3 reads) or PKCS#1.
pub fn parse_public_key(pem: &str) -> Result<rsa::RsaPublicKey, String> {
    use rsa::{pkcs1::DecodeRsaPublicKey as _, pkcs8::DecodePublicKey as _};
    rsa::RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|err| err.to_string())
}

/// The base64 auth token for `auth`, stamped with the current time.
pub fn auth_token(auth: &Auth) -> Result<String, String> {
    use base64::Engine as _;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64);
    let text = protocol::auth_plaintext(&auth.username, &auth.password, now);
    let encrypted = match auth.padding {
        Padding::Pkcs1 => auth.public_key.encrypt(
            &mut crate::support::random::OsRng,
            rsa::Pkcs1v15Encrypt,
            text.as_bytes(),
        ),
        Padding::Oaep => auth.public_key.encrypt(
            &mut crate::support::random::OsRng,
            rsa::Oaep::new::<sha1::Sha1>(),
            text.as_bytes(),
        ),
    }
    .map_err(|err| format!("encrypting the auth token: {err}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(encrypted))
}

/// What one completed test measured, in the seed's terms: "sent" is the sending side's count
/// (ours in forward mode, the server's in reverse mode), "received" the receiving side's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measurement {
    pub sent_bytes: u64,
    pub sent_seconds: f64,
    pub received_bytes: u64,
    pub received_seconds: f64,
    /// TCP retransmissions of the sender, when known.
    pub retransmits: Option<u64>,
    pub udp: Option<UdpMeasurement>,
}

/// UDP loss and jitter, as the receiving side counted them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UdpMeasurement {
    pub sent_packets: u64,
    pub lost_packets: u64,
    pub lost_ratio: f64,
    pub jitter_seconds: f64,
}

/// The prober and its state: one queue per server.
#[derive(Debug, Default)]
pub struct Iperf3Prober {
    servers: Mutex<HashMap<String, Arc<ServerSlot>>>,
}

/// One server's queue: a single permit, and how many probes wait for it.
#[derive(Debug)]
struct ServerSlot {
    permit: Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Iperf3Prober {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one probe: parameters, queue, test, metrics.
    pub async fn probe(
        &self,
        ctx: &ProbeContext,
        query: &Query,
    ) -> Result<ProbeReport, BadRequest> {
        let config = Config::from_query(query)?;
        let outcome = self.measure(ctx, &config).await;
        match &outcome {
            Ok(m) => ctx.log(format!(
                "sent {} B in {:.3} s, received {} B in {:.3} s",
                m.sent_bytes, m.sent_seconds, m.received_bytes, m.received_seconds
            )),
            Err(failure) => ctx.log(format!("failed ({}): {}", failure.reason, failure.message)),
        }
        Ok(ProbeReport {
            success: outcome.is_ok(),
            registry: registry(&outcome, config.transport),
        })
    }

    /// Waits for the server's turn, then runs the test, retrying while the server is busy.
    pub async fn measure(
        &self,
        ctx: &ProbeContext,
        config: &Config,
    ) -> Result<Measurement, Failure> {
        let address = resolve(config, ctx).await?;
        // Keyed by address, so `localhost` and `127.0.0.1` share one queue.
        let key = address.to_string();
        let slot = self.slot(&key);
        let result = take_turn(&slot, ctx, config, address).await;
        drop(slot);
        self.release(&key);
        result
    }

    fn slot(&self, key: &str) -> Arc<ServerSlot> {
        let mut servers = crate::support::sync::lock(&self.servers);
        Arc::clone(servers.entry(key.to_string()).or_insert_with(|| {
            Arc::new(ServerSlot {
                permit: Semaphore::new(1),
                waiting: Default::default(),
            })
        }))
    }

    /// Forgets a server's queue once nobody uses it.
    fn release(&self, key: &str) {
        let mut servers = crate::support::sync::lock(&self.servers);
        if servers
            .get(key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            servers.remove(key);
        }
    }

    /// Servers with a queue right now (tests).
    pub fn queued_servers(&self) -> usize {
        crate::support::sync::lock(&self.servers).len()
    }
}

/// Waits in `slot`'s queue (bounded), then runs the test while holding the server's permit.
async fn take_turn(
    slot: &ServerSlot,
    ctx: &ProbeContext,
    config: &Config,
    address: SocketAddr,
) -> Result<Measurement, Failure> {
    if slot.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITERS {
        slot.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(Failure::new(
            "busy",
            format!("{MAX_WAITERS} probes already wait for this server"),
        ));
    }
    let deadline = tokio::time::Instant::from_std(ctx.deadline);
    let acquired = tokio::time::timeout_at(deadline, slot.permit.acquire()).await;
    slot.waiting.fetch_sub(1, Ordering::SeqCst);
    let Ok(Ok(_permit)) = acquired else {
        return Err(Failure::new(
            "busy",
            "the deadline passed while other probes of this server ran",
        ));
    };
    ctx.log(format!("server {address} is ours"));
    run_with_retries(ctx, config, address).await
}

async fn resolve(config: &Config, ctx: &ProbeContext) -> Result<SocketAddr, Failure> {
    let lookup = tokio::net::lookup_host((config.host.as_str(), config.port));
    let addresses: Vec<SocketAddr> = tokio::time::timeout(ctx.remaining(), lookup)
        .await
        .map_err(|_| Failure::new("timeout", format!("resolving {:?} timed out", config.host)))?
        .map_err(|err| {
            Failure::new(
                "resolve_failed",
                format!("resolving {:?}: {err}", config.host),
            )
        })?
        .collect();
    let chosen = match config.bind {
        Some(bind) => addresses
            .iter()
            .find(|address| address.is_ipv4() == bind.is_ipv4()),
        None => addresses.first(),
    };
    let address = *chosen.ok_or_else(|| {
        Failure::new(
            "resolve_failed",
            format!(
                "{:?} has no address of the bind address' family",
                config.host
            ),
        )
    })?;
    ctx.log(format!("resolved {:?} to {address}", config.host));
    Ok(address)
}

/// Runs the test; a busy server is retried with backoff while a useful test still fits.
async fn run_with_retries(
    ctx: &ProbeContext,
    config: &Config,
    address: SocketAddr,
) -> Result<Measurement, Failure> {
    let deadline = tokio::time::Instant::from_std(ctx.deadline);
    let mut backoff = BUSY_BACKOFF;
    let mut attempts = 0;
    let mut last_failure: Option<Failure> = None;
    loop {
        let Some(period) = fit_period(config.period, ctx.remaining()) else {
            return Err(if let Some(last) = last_failure {
                Failure::new(
                    last.reason,
                    format!("{} (gave up after {attempts} attempts)", last.message),
                )
            } else {
                Failure::new(
                    "timeout",
                    format!(
                        "{:.1} s left: not enough for a test and the exchanges",
                        ctx.remaining().as_secs_f64()
                    ),
                )
            });
        };
        if period < config.period {
            let line = format!(
                "period {:.3} s does not fit before the deadline; running {:.3} s",
                config.period.as_secs_f64(),
                period.as_secs_f64()
            );
            log::info!("iperf3 {}: {line}", config.server_key());
            ctx.log(line);
        }
        attempts += 1;
        let test = run_test(ctx, config, address, period);
        match tokio::time::timeout_at(deadline, test).await {
            Ok(Err(failure))
                if failure.retry
                    && (failure.reason != "connect_failed" || attempts < CONNECT_ATTEMPTS) =>
            {
                let wait = if failure.reason == "connect_failed" {
                    CONNECT_RETRY_DELAY
                } else {
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                    wait
                };
                ctx.log(format!(
                    "{} ({}); retrying in {} ms",
                    failure.reason,
                    failure.message,
                    wait.as_millis()
                ));
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + wait)).await;
                last_failure = Some(failure);
            }
            Ok(result) => return result,
            Err(_) => {
                return Err(Failure::new(
                    "timeout",
                    "the test did not finish before the deadline",
                ));
            }
        }
    }
}

/// The test length that fits in `remaining` with [`EXCHANGE_MARGIN`] to spare, or `None`.
pub fn fit_period(wanted: Duration, remaining: Duration) -> Option<Duration> {
    let available = remaining.checked_sub(EXCHANGE_MARGIN)?;
    (available >= MIN_PERIOD).then(|| wanted.min(available))
}

/// The control connection and the framing helpers around it.
struct Control {
    stream: TcpStream,
}

impl Control {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|err| Failure::new("server_error", format!("writing to the server: {err}")))
    }

    async fn read_exact(&mut self, buffer: &mut [u8], what: &str) -> Result<(), Failure> {
        match self.stream.read_exact(buffer).await {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == ErrorKind::UnexpectedEof => Err(Failure::new(
                "server_error",
                format!("the server closed the control connection while we waited for {what}"),
            )),
            Err(err) => Err(Failure::new(
                "server_error",
                format!("reading {what} from the server: {err}"),
            )),
        }
    }

    /// Reads the next state byte; ACCESS_DENIED and SERVER_ERROR become failures.
    async fn read_state(&mut self, what: &str) -> Result<State, Failure> {
        let mut byte = [0u8; 1];
        self.read_exact(&mut byte, what).await?;
        match State::from_byte(byte[0]) {
            Some(State::AccessDenied) => Err(Failure::new(
                "busy",
                "the server is running another client's test (ACCESS_DENIED)",
            )
            .retryable()),
            Some(State::ServerError) => Err(self.server_error().await),
            Some(state) => Ok(state),
            None => Err(Failure::new(
                "protocol_error",
                format!(
                    "byte 0x{:02x} is not an iperf3 state (waiting for {what})",
                    byte[0]
                ),
            )),
        }
    }

    /// Reads the error numbers after SERVER_ERROR (3.12 may close after the first).
    async fn server_error(&mut self) -> Failure {
        let mut bytes = Vec::with_capacity(8);
        let mut limited = (&mut self.stream).take(8);
        let _ = tokio::time::timeout(Duration::from_secs(1), limited.read_to_end(&mut bytes)).await;
        match ServerError::parse(&bytes) {
            Ok(error) if error.is_auth_failure() => Failure::new(
                "auth_failed",
                format!("the server refused our credentials: {}", error.describe()),
            ),
            Ok(error) => Failure::new("server_error", error.describe()),
            Err(err) => Failure::new("server_error", err.0),
        }
    }

    async fn expect(&mut self, wanted: State) -> Result<(), Failure> {
        let what = format!("{wanted:?}");
        match self.read_state(&what).await? {
            state if state == wanted => Ok(()),
            State::ServerTerminate => Err(Failure::new(
                "server_error",
                format!("the server terminated the test while we waited for {what}"),
            )),
            state => Err(Failure::new(
                "protocol_error",
                format!("expected {what}, the server sent {state:?}"),
            )),
        }
    }

    /// Sleeps through the test; the server must stay quiet meanwhile (a byte now is an error
    /// or a termination, EOF means it went away).
    async fn wait_out(&mut self, period: Duration) -> Result<(), Failure> {
        let mut byte = [0u8; 1];
        tokio::select! {
            () = tokio::time::sleep(period) => Ok(()),
            read = self.stream.read(&mut byte) => Err(match read {
                Ok(0) => Failure::new(
                    "server_error",
                    "the server closed the control connection during the test",
                ),
                Ok(_) if byte[0] == State::ServerError.to_byte() => self.server_error().await,
                Ok(_) => Failure::new(
                    "server_error",
                    format!("the server interrupted the test with state byte 0x{:02x}", byte[0]),
                ),
                Err(err) => Failure::new(
                    "server_error",
                    format!("control connection during the test: {err}"),
                ),
            }),
        }
    }

    async fn read_json(&mut self) -> Result<Vec<u8>, Failure> {
        let mut header = [0u8; 4];
        self.read_exact(&mut header, "the results length").await?;
        let len = protocol::json_len(header)?;
        let mut json = vec![0u8; len];
        self.read_exact(&mut json, "the results").await?;
        Ok(json)
    }
}

/// Connects a TCP socket to `address`, from `bind` if given. Only the control connection sets
/// TCP_NODELAY (as iperf3 does without `-N`): data streams write large blocks.
async fn connect_tcp(
    address: SocketAddr,
    bind: Option<IpAddr>,
    nodelay: bool,
) -> std::io::Result<TcpStream> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(bind) = bind {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(nodelay)?;
    Ok(stream)
}

/// One complete test: control exchange, streams, timer, results.
async fn run_test(
    ctx: &ProbeContext,
    config: &Config,
    address: SocketAddr,
    period: Duration,
) -> Result<Measurement, Failure> {
    // iperf3 closes its listening socket after every test and opens it again for the next, so
    // a refusal right after another client's test is worth a quick retry.
    let stream = connect_tcp(address, config.bind, true)
        .await
        .map_err(|err| {
            let refused = err.kind() == ErrorKind::ConnectionRefused;
            let failure = Failure::new("connect_failed", format!("connecting to {address}: {err}"));
            if refused {
                failure.retryable()
            } else {
                failure
            }
        })?;
    let mut control = Control { stream };
    let mut random = [0u8; COOKIE_LEN - 1];
    crate::support::random::fill(&mut random);
    let cookie = protocol::make_cookie(&random);
    control.write(&cookie).await?;
    // A server that just failed a test re-creates its listener; a connection caught in between
    // is reset before PARAM_EXCHANGE. Worth another try.
    control
        .expect(State::ParamExchange)
        .await
        .map_err(|failure| match failure.reason {
            "server_error" => failure.retryable(),
            _ => failure,
        })?;

    let authtoken = match &config.auth {
        Some(auth) => Some(auth_token(auth).map_err(|err| Failure::new("auth_failed", err))?),
        None => None,
    };
    let parameters = TestParameters {
        transport: config.transport,
        time_seconds: period.as_secs_f64().ceil() as u32,
        parallel: config.parallel,
        reverse: config.reverse,
        block_len: match config.transport {
            Transport::Tcp => TCP_BLOCK_LEN,
            Transport::Udp => UDP_BLOCK_LEN,
        },
        bitrate: config.bitrate,
        authtoken,
    };
    control
        .write(&protocol::frame_json(&parameters.to_json()))
        .await?;
    control.expect(State::CreateStreams).await?;

    let ids = protocol::stream_ids(config.parallel as usize);
    let mut sockets = Vec::with_capacity(ids.len());
    for _ in &ids {
        sockets.push(open_stream(config, address, &cookie).await?);
    }
    ctx.log(format!(
        "{} {:?} stream(s) open",
        sockets.len(),
        config.transport
    ));
    control.expect(State::TestStart).await?;
    control.expect(State::TestRunning).await?;

    let stop = Arc::new(AtomicU8::new(RUN));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let started = Instant::now();
    let sending = !config.reverse;
    let job = |socket| StreamJob {
        socket,
        sending,
        bitrate: config.bitrate,
        block_len: parameters.block_len as usize,
        deadline: ctx.deadline,
    };
    let mut tallies = sockets
        .into_iter()
        .map(|socket| job(socket).spawn(Arc::clone(&stop)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Failure::new("server_error", format!("starting a stream thread: {err}")))?;
    control.wait_out(period).await?;
    let local_seconds = started.elapsed().as_secs_f64();
    let mut local = Vec::new();
    if sending {
        // Stop writing; each stream waits until the server's kernel has acknowledged its bytes.
        stop.store(STOP, Ordering::SeqCst);
        local = collect(tallies.drain(..)).await;
    }
    control.write(&[State::TestEnd.to_byte()]).await?;
    control.expect(State::ExchangeResults).await?;
    if !sending {
        // The server has stopped sending: take what is still in flight, then count.
        stop.store(STOP, Ordering::SeqCst);
        local = collect(tallies.drain(..)).await;
    }

    let ours = local_results(&ids, &local, sending, config.transport, local_seconds);
    control
        .write(&protocol::frame_json(&ours.to_json()))
        .await?;
    let theirs = Results::parse(&control.read_json().await?)?;
    for stream in &theirs.streams {
        if !ids.contains(&stream.id) {
            return Err(Failure::new(
                "protocol_error",
                format!(
                    "the server's results name stream {} we never opened",
                    stream.id
                ),
            ));
        }
    }
    control.expect(State::DisplayResults).await?;
    control.write(&[State::IperfDone.to_byte()]).await?;
    let _ = control.stream.shutdown().await;
    Ok(combine(&ours, &theirs, sending, config.transport))
}

/// Opens one data stream: TCP with the cookie, UDP with the connect handshake.
async fn open_stream(
    config: &Config,
    address: SocketAddr,
    cookie: &[u8; COOKIE_LEN],
) -> Result<DataSocket, Failure> {
    let failed = |err: std::io::Error| {
        Failure::new(
            "connect_failed",
            format!("opening a data stream to {address}: {err}"),
        )
    };
    match config.transport {
        Transport::Tcp => {
            let mut stream = connect_tcp(address, config.bind, false)
                .await
                .map_err(failed)?;
            stream.write_all(cookie).await.map_err(failed)?;
            let stream = stream.into_std().map_err(failed)?;
            stream.set_nonblocking(false).map_err(failed)?;
            Ok(DataSocket::Tcp(stream))
        }
        Transport::Udp => {
            let local = SocketAddr::new(
                config.bind.unwrap_or(if address.is_ipv4() {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u16; 8])
                }),
                0,
            );
            let socket = tokio::net::UdpSocket::bind(local).await.map_err(failed)?;
            socket.connect(address).await.map_err(failed)?;
            socket
                .send(&protocol::UDP_CONNECT_MSG)
                .await
                .map_err(failed)?;
            let mut reply = vec![0u8; 64 * 1024];
            // A reverse-mode server may already send data; allow a few datagrams.
            for _ in 0..4 {
                let len = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut reply))
                    .await
                    .map_err(|_| {
                        Failure::new(
                            "server_error",
                            "the server did not answer the UDP stream handshake",
                        )
                    })?
                    .map_err(failed)?;
                if protocol::is_udp_connect_reply(&reply[..len]) {
                    let socket = socket.into_std().map_err(failed)?;
                    socket.set_nonblocking(false).map_err(failed)?;
                    return Ok(DataSocket::Udp(socket));
                }
            }
            Err(Failure::new(
                "protocol_error",
                "the server's answer to the UDP stream handshake is not 6789",
            ))
        }
    }
}

/// Our results document: what each of our streams sent or received.
fn local_results(
    ids: &[u32],
    tallies: &[StreamTally],
    sending: bool,
    transport: Transport,
    seconds: f64,
) -> Results {
    let tcp_sender = sending && transport == Transport::Tcp;
    Results {
        sender_has_retransmits: if tcp_sender { 1 } else { -1 },
        streams: ids
            .iter()
            .zip(tallies)
            .map(|(&id, tally)| {
                let receiver = tally.udp_receiver.clone().unwrap_or_default();
                StreamResult {
                    id,
                    bytes: tally.bytes,
                    retransmits: if tcp_sender {
                        Some(tally.retransmits.unwrap_or(0))
                    } else {
                        None
                    },
                    jitter: receiver.jitter,
                    errors: receiver.lost,
                    packets: tally.packets,
                    seconds,
                }
            })
            .collect(),
    }
}

/// The seed's view of one test from both sides' results.
fn combine(ours: &Results, theirs: &Results, sending: bool, transport: Transport) -> Measurement {
    let (sender, receiver) = if sending {
        (ours, theirs)
    } else {
        (theirs, ours)
    };
    let sum = |results: &Results| results.streams.iter().map(|s| s.bytes).sum::<u64>();
    let seconds = |results: &Results| {
        results
            .streams
            .iter()
            .map(|s| s.seconds)
            .fold(0.0, f64::max)
    };
    let retransmits = (transport == Transport::Tcp && sender.sender_has_retransmits == 1)
        .then(|| sender.streams.iter().filter_map(|s| s.retransmits).sum());
    let udp = (transport == Transport::Udp).then(|| {
        let sent_packets: u64 = sender.streams.iter().map(|s| s.packets).sum();
        let received_packets: u64 = receiver.streams.iter().map(|s| s.packets).sum();
        let lost_packets: u64 = receiver.streams.iter().map(|s| s.errors).sum();
        let streams = receiver.streams.len().max(1) as f64;
        UdpMeasurement {
            sent_packets,
            lost_packets,
            lost_ratio: if received_packets > 0 {
                lost_packets as f64 / received_packets as f64
            } else {
                0.0
            },
            jitter_seconds: receiver.streams.iter().map(|s| s.jitter).sum::<f64>() / streams,
        }
    });
    Measurement {
        sent_bytes: sum(sender),
        sent_seconds: seconds(sender),
        received_bytes: sum(receiver),
        received_seconds: seconds(receiver),
        retransmits,
        udp,
    }
}

/// The probe's metrics. Throughput metrics only exist after a completed test.
fn registry(outcome: &Result<Measurement, Failure>, transport: Transport) -> Registry {
    let mut registry = Registry::default();
    let gauge = |registry: &mut Registry, name: &str, help: &str, value: f64| {
        let metric = Gauge::<f64, AtomicU64>::default();
        metric.set(value);
        registry.register(name, help, metric);
    };
    gauge(
        &mut registry,
        "iperf3_up",
        "Whether the iperf3 test completed (1) or failed (0)",
        if outcome.is_ok() { 1.0 } else { 0.0 },
    );
    let failures = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
    for reason in FAILURE_REASONS {
        let failed = matches!(outcome, Err(failure) if failure.reason == *reason);
        failures
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .set(if failed { 1.0 } else { 0.0 });
    }
    registry.register(
        "iperf3_failure",
        "Why the test failed: 1 for the reason that applies, 0 for the others",
        failures,
    );
    let Ok(m) = outcome else {
        return registry;
    };
    let rate = |bytes: u64, seconds: f64| {
        if seconds > 0.0 {
            bytes as f64 / seconds
        } else {
            0.0
        }
    };
    for (name, help, value) in [
        (
            "iperf3_sent_bytes",
            "Bytes the sending side wrote during the test",
            m.sent_bytes as f64,
        ),
        (
            "iperf3_sent_seconds",
            "How long the sending side sent, in seconds",
            m.sent_seconds,
        ),
        (
            "iperf3_received_bytes",
            "Bytes the receiving side read during the test",
            m.received_bytes as f64,
        ),
        (
            "iperf3_received_seconds",
            "How long the receiving side received, in seconds",
            m.received_seconds,
        ),
        (
            "iperf3_sent_bytes_per_second",
            "Sent bytes over the sending time",
            rate(m.sent_bytes, m.sent_seconds),
        ),
        (
            "iperf3_received_bytes_per_second",
            "Received bytes over the receiving time",
            rate(m.received_bytes, m.received_seconds),
        ),
    ] {
        gauge(&mut registry, name, help, value);
    }
    if let (Transport::Tcp, Some(retransmits)) = (transport, m.retransmits) {
        gauge(
            &mut registry,
            "iperf3_retransmits",
            "TCP segments the sending side retransmitted during the test",
            retransmits as f64,
        );
    }
    if let Some(udp) = &m.udp {
        gauge(
            &mut registry,
            "iperf3_sent_packets",
            "UDP datagrams the sending side sent",
            udp.sent_packets as f64,
        );
        gauge(
            &mut registry,
            "iperf3_lost_packets",
            "UDP datagrams the receiving side found missing",
            udp.lost_packets as f64,
        );
        gauge(
            &mut registry,
            "iperf3_lost_percent",
            "Lost UDP datagrams in percent of those expected by the receiver",
            udp.lost_ratio * 100.0,
        );
        gauge(
            &mut registry,
            "iperf3_jitter_seconds",
            "UDP interarrival jitter seen by the receiver (RFC 3550), in seconds",
            udp.jitter_seconds,
        );
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, BadRequest> {
        Config::from_query(&Query::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn key_files_are_read_with_a_cap() {
        // The name comes from the request: endless devices and FIFOs are refused unread, and
        // a regular file is read up to the cap only.
        let with_key = |file: &str| {
            config(&[
                ("target", "server.example"),
                ("username", "alice"),
                ("password", "secret"),
                ("public_key_file", file),
            ])
            .unwrap_err()
            .to_string()
        };
        let err = with_key("/dev/zero");
        assert!(err.contains("\"/dev/zero\" is not a regular file"), "{err}");
        let large = std::env::temp_dir().join(format!("np-key-{}.pem", std::process::id()));
        std::fs::write(&large, vec![b'A'; 100_000]).unwrap();
        let err = with_key(large.to_str().unwrap());
        std::fs::remove_file(&large).unwrap();
        assert!(err.contains("is larger than 65536 bytes"), "{err}");
    }

    #[test]
    fn parameters_and_defaults() {
        let c = config(&[("module", "iperf3"), ("target", "server.example")]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("server.example", 5201));
        assert_eq!(c.period, DEFAULT_PERIOD);
        assert_eq!(
            (c.reverse, c.transport, c.bitrate, c.parallel),
            (false, Transport::Tcp, 0, 1)
        );
        let c = config(&[
            ("target", "10.0.0.1:5301"),
            ("period", "2.5"),
            ("reverse_mode", "true"),
            ("parallel", "2"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.reverse, c.parallel),
            ("10.0.0.1", 5301, true, 2)
        );
        assert_eq!(c.period, Duration::from_millis(2500));
        let c = config(&[
            ("target", "[::1]:7000"),
            ("port", "7001"),
            ("udp_mode", "1"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.transport),
            ("::1", 7001, Transport::Udp)
        );
        assert_eq!(c.bitrate, DEFAULT_UDP_BITRATE);
        let c = config(&[
            ("target", "::1"),
            ("bitrate", "10M"),
            ("period", "1500ms"),
            ("bind", "127.0.0.1"),
        ])
        .unwrap();
        assert_eq!(
            (c.host.as_str(), c.bitrate, c.period),
            ("::1", 10_000_000, Duration::from_millis(1500))
        );
        assert_eq!(c.bind, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_parameters_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("target", "a"), ("duration", "5")], "\"duration\""),
            (&[], "missing parameter \"target\""),
            (&[("target", "a:http")], "\"http\""),
            (&[("target", "a"), ("port", "99999")], "\"99999\""),
            (&[("target", "a"), ("period", "-1")], "\"-1\""),
            (&[("target", "a"), ("period", "soon")], "\"soon\""),
            (&[("target", "a"), ("bitrate", "fast")], "\"fast\""),
            (&[("target", "a"), ("bind", "eth0")], "\"eth0\""),
            (&[("target", "a"), ("parallel", "0")], "\"parallel\""),
            (&[("target", "a"), ("reverse_mode", "maybe")], "\"maybe\""),
            (&[("target", "a"), ("padding", "none")], "\"none\""),
            (&[("target", "a"), ("username", "u")], "together"),
            (
                &[
                    ("target", "a"),
                    ("username", "u"),
                    ("public_key_file", "/nonexistent/key.pem"),
                ],
                "/nonexistent/key.pem",
            ),
            (&[("target", "[::1")], "']'"),
        ];
        for (pairs, needle) in cases {
            let err = config(pairs).unwrap_err();
            assert!(err.0.contains(needle), "{pairs:?}: {}", err.0);
        }
    }

    #[test]
    fn period_is_shortened_to_fit_the_deadline() {
        let wanted = Duration::from_secs(10);
        assert_eq!(fit_period(wanted, Duration::from_secs(30)), Some(wanted));
        assert_eq!(
            fit_period(wanted, Duration::from_secs(4)),
            Some(Duration::from_secs(4) - EXCHANGE_MARGIN)
        );
        assert_eq!(fit_period(wanted, EXCHANGE_MARGIN + MIN_PERIOD / 2), None);
        assert_eq!(fit_period(wanted, Duration::ZERO), None);
    }

    #[test]
    fn combine_assigns_sides_like_iperf3() {
        let stream = |id, bytes, retransmits, seconds| StreamResult {
            id,
            bytes,
            retransmits,
            seconds,
            ..StreamResult::default()
        };
        let ours = Results {
            sender_has_retransmits: 1,
            streams: vec![stream(1, 100, Some(2), 2.0), stream(3, 50, Some(1), 2.0)],
        };
        let theirs = Results {
            sender_has_retransmits: -1,
            streams: vec![stream(1, 90, None, 2.1), stream(3, 50, None, 2.1)],
        };
        let forward = combine(&ours, &theirs, true, Transport::Tcp);
        assert_eq!(
            (
                forward.sent_bytes,
                forward.received_bytes,
                forward.retransmits
            ),
            (150, 140, Some(3))
        );
        assert_eq!((forward.sent_seconds, forward.received_seconds), (2.0, 2.1));
        // Reverse: the server sent; its results carry the retransmits.
        let reverse = combine(&theirs, &ours, false, Transport::Tcp);
        assert_eq!(
            (
                reverse.sent_bytes,
                reverse.received_bytes,
                reverse.retransmits
            ),
            (150, 140, Some(3))
        );
        let udp_sender = Results {
            sender_has_retransmits: -1,
            streams: vec![StreamResult {
                id: 1,
                bytes: 1448 * 100,
                packets: 100,
                ..StreamResult::default()
            }],
        };
        let udp_receiver = Results {
            sender_has_retransmits: -1,
            streams: vec![StreamResult {
                id: 1,
                bytes: 1448 * 98,
                packets: 100,
                errors: 2,
                jitter: 0.001,
                ..StreamResult::default()
            }],
        };
        let udp = combine(&udp_sender, &udp_receiver, true, Transport::Udp)
            .udp
            .unwrap();
        assert_eq!((udp.sent_packets, udp.lost_packets), (100, 2));
        assert!((udp.lost_ratio - 0.02).abs() < 1e-12);
        assert_eq!(udp.jitter_seconds, 0.001);
    }

    #[test]
    fn failure_registry_names_the_reason() {
        let outcome = Err(Failure::new("busy", "x"));
        let text = crate::metrics::render(&registry(&outcome, Transport::Tcp)).unwrap();
        assert!(text.contains("iperf3_up 0"), "{text}");
        assert!(text.contains("iperf3_failure{reason=\"busy\"} 1"), "{text}");
        assert!(
            text.contains("iperf3_failure{reason=\"timeout\"} 0"),
            "{text}"
        );
        assert!(!text.contains("iperf3_sent_bytes"), "{text}");
    }

    #[tokio::test]
    async fn queue_is_bounded_and_forgotten() {
        let prober = Iperf3Prober::new();
        let slot = prober.slot("a:1");
        let _held = slot.permit.acquire().await.unwrap();
        slot.waiting.store(MAX_WAITERS, Ordering::SeqCst);
        let ctx = ProbeContext::new(Instant::now() + Duration::from_secs(5));
        let c = config(&[("target", "127.0.0.1:1")]).unwrap();
        let key = "127.0.0.1:1";
        let other = prober.slot(key);
        other.waiting.store(MAX_WAITERS, Ordering::SeqCst);
        let failure = prober.measure(&ctx, &c).await.unwrap_err();
        assert_eq!(failure.reason, "busy");
        other.waiting.store(0, Ordering::SeqCst);
        drop(other);
        prober.release(key);
        assert_eq!(prober.queued_servers(), 1);
    }
}
