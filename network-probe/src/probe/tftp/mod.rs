//! The `tftp` prober: downloads one file from a TFTP server per scrape with a native client
//! (RFC 1350 read, options RFC 2347/2348/2349/7440) and reports whether it worked, how long it
//! took and how fast it was.
//!
//! This module owns the I/O: parameter parsing, the UDP socket, the server's transfer ID (TID),
//! timers and the metrics. The target comes resolved by the framework ([`super::handler`]). Every received byte is interpreted by the pure
//! state machine in [`codec`]. The content is hashed (SHA-256) as it streams and never kept.
//! The exchange itself runs on a blocking thread ([`session`]: recvfrom + sendto per lock-step
//! block, no epoll_wait and no timer per block).

pub mod codec;
mod session;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use self::{
    codec::{
        BLKSIZE_RANGE, Failure, FailureReason, Negotiated, OptionRequest, TIMEOUT_RANGE, Transfer,
        WINDOWSIZE_RANGE,
    },
    session::{CancelOnDrop, Session},
};
use super::{
    BadRequest, BoxFuture, ProbeContext, ProbeError, ProbeReport, Prober, Query, Spec, Target,
    report::{Reason, Report},
    target::{SystemResolver, split_host_port},
};

/// Name in `module=`.
pub const MODULE: &str = "tftp";
/// File fetched when `tftp_filename` is absent (as the seed exporter).
pub const DEFAULT_FILENAME: &str = "pxelinux.0";
pub const DEFAULT_PORT: u16 = 69;
/// Default `max_bytes`: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// The longest a probe may run, whatever the scrape timeout.
pub const MAX_PROBE_TIME: Duration = Duration::from_secs(120);

/// The prober's entry in [`super::SPECS`].
pub const SPEC: Spec = Spec {
    name: MODULE,
    parameters: PARAMETERS,
    // The seed's (tftp_filename, tftp_port) and the transfer options, which choose neither
    // the server nor the port and are bounded by the prober (byte cap, deadline).
    request_parameters: PARAMETERS,
    ports: |query, target_port| {
        let parameter = query
            .all("tftp_port")
            .filter_map(|port| port.parse::<u16>().ok())
            .filter(|&port| port != 0);
        let mut ports: Vec<u16> = target_port.into_iter().chain(parameter).collect();
        ports.dedup();
        if ports.is_empty() {
            ports.push(DEFAULT_PORT);
        }
        ports
    },
    max_time: MAX_PROBE_TIME,
    validate: |query, _| Params::from_query(query).map(drop),
    build: |_| Box::new(Tftp),
};

/// The prober (it keeps no state between probes).
#[derive(Debug)]
pub struct Tftp;

impl Prober for Tftp {
    fn run<'a>(
        &'a self,
        ctx: &'a ProbeContext,
        query: &'a Query,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeError>> {
        Box::pin(async move {
            let params = Params::from_query(query)?;
            let target = targets
                .first()
                .ok_or_else(|| BadRequest("missing parameter \"target\"".into()))?;
            Ok(probe_target(ctx, &params, target).await)
        })
    }
}

impl Reason for FailureReason {
    const ALL: &'static [FailureReason] = &FailureReason::ALL;
    fn label(self) -> &'static str {
        FailureReason::label(self)
    }
}

/// Query parameters this prober accepts besides `module`, `target` and `debug`.
const PARAMETERS: &[&str] = &[
    "tftp_filename",
    "tftp_port",
    "blksize",
    "windowsize",
    "timeout",
    "tsize",
    "expected_size",
    "expected_sha256",
    "max_bytes",
];

/// One probe's parameters, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// Host name or address, without port.
    pub host: String,
    pub port: u16,
    pub filename: String,
    pub options: OptionRequest,
    pub expected_size: Option<u64>,
    pub expected_sha256: Option<[u8; 32]>,
    pub max_bytes: u64,
}

impl Params {
    /// Reads and checks the query; every error names the parameter and the value.
    pub fn from_query(query: &Query) -> Result<Params, BadRequest> {
        let unknown = super::unknown_parameters(query, PARAMETERS);
        if !unknown.is_empty() {
            return Err(BadRequest(format!(
                "unknown parameter(s) {unknown:?} for module tftp (known: target, {})",
                PARAMETERS.join(", ")
            )));
        }
        let target = query.required("target")?;
        let port_parameter: Option<u16> = match query.get("tftp_port")? {
            None | Some("") => None,
            Some(value) => Some(value.parse().ok().filter(|&p| p != 0).ok_or_else(|| {
                BadRequest(format!(
                    "parameter \"tftp_port\": {value:?} is not a port number from 1 to 65535"
                ))
            })?),
        };
        let (host, target_port) = split_host_port(target)?;
        let port = match (target_port, port_parameter) {
            (Some(a), Some(b)) if a != b => {
                return Err(BadRequest(format!(
                    "target {target:?} names port {a} but tftp_port is {b}"
                )));
            }
            (a, b) => a.or(b).unwrap_or(DEFAULT_PORT),
        };
        let filename = match query.get("tftp_filename")? {
            None | Some("") => DEFAULT_FILENAME.to_string(),
            Some(name) => name.to_string(),
        };
        let options = OptionRequest {
            blksize: ranged(query, "blksize", BLKSIZE_RANGE)?,
            timeout: ranged(query, "timeout", TIMEOUT_RANGE)?,
            windowsize: ranged(query, "windowsize", WINDOWSIZE_RANGE)?,
            tsize: query.flag("tsize", false)?,
        };
        // Builds the request once to reject names the wire format cannot carry.
        codec::encode_rrq(&filename, &options)
            .map_err(|err| BadRequest(format!("parameter \"tftp_filename\": {err}")))?;
        let expected_size = match query.get("expected_size")? {
            None | Some("") => None,
            Some(_) => Some(query.parse_or("expected_size", 0u64, "a number of bytes")?),
        };
        let expected_sha256 = match query.get("expected_sha256")? {
            None | Some("") => None,
            Some(text) => Some(codec::parse_sha256(text).ok_or_else(|| {
                BadRequest(format!(
                    "parameter \"expected_sha256\": {text:?} is not 64 hexadecimal digits"
                ))
            })?),
        };
        let max_bytes = query.parse_or("max_bytes", DEFAULT_MAX_BYTES, "a number of bytes")?;
        if max_bytes == 0 {
            return Err(BadRequest(
                "parameter \"max_bytes\": must be at least 1".into(),
            ));
        }
        Ok(Params {
            host,
            port,
            filename,
            options,
            expected_size,
            expected_sha256,
            max_bytes,
        })
    }
}

/// An optional number within `range`.
fn ranged<T>(
    query: &Query,
    name: &str,
    range: std::ops::RangeInclusive<T>,
) -> Result<Option<T>, BadRequest>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match query.get(name)? {
        None | Some("") => Ok(None),
        Some(value) => value
            .parse::<T>()
            .ok()
            .filter(|v| range.contains(v))
            .map(Some)
            .ok_or_else(|| {
                BadRequest(format!(
                    "parameter {name:?}: {value:?} is not a number from {} to {}",
                    range.start(),
                    range.end()
                ))
            }),
    }
}

/// What a completed download measured.
#[derive(Debug, Default)]
struct Measurement {
    bytes: u64,
    retransmissions: u64,
    duplicates: u64,
    /// From sending the RRQ to the final ACK.
    transfer_time: Option<Duration>,
    /// From sending the RRQ to the first DATA block.
    first_block: Option<Duration>,
    negotiated: Option<Negotiated>,
    /// SHA-256 of the content so far.
    content_hash: Sha256,
    /// When the RRQ was sent.
    request_sent: Option<Instant>,
}

/// Runs one probe of the query's target, resolving it here (for callers outside `/probe`, such
/// as the integration tests; `/probe` resolves once in [`super::handler`]).
pub async fn probe(ctx: &ProbeContext, query: &Query) -> Result<ProbeReport, BadRequest> {
    let params = Params::from_query(query)?;
    let target = Target::resolve(query.required("target")?, &SystemResolver, ctx.deadline).await?;
    Ok(probe_target(ctx, &params, &target).await)
}

/// Runs one probe of `target` (resolved by the framework): downloads the file, builds the
/// metrics.
pub async fn probe_target(ctx: &ProbeContext, params: &Params, target: &Target) -> ProbeReport {
    let started = Instant::now();
    let mut measurement = Measurement::default();
    let result = download(ctx, params, target, &mut measurement).await;
    let duration = started.elapsed();
    match &result {
        Ok(()) => ctx.log(format!(
            "downloaded {} bytes in {:.3} s",
            measurement.bytes,
            duration.as_secs_f64()
        )),
        Err(failure) => ctx.log(format!(
            "probe failed ({}): {}",
            failure.reason.label(),
            failure.detail
        )),
    }
    metrics(&result, duration, &measurement)
}

/// Downloads the file from the target's first address and verifies it; fills `measurement`
/// as it goes, so a failed probe still reports what it got.
async fn download(
    ctx: &ProbeContext,
    params: &Params,
    target: &Target,
    measurement: &mut Measurement,
) -> Result<(), Failure> {
    let server = match &target.addresses {
        Ok(addresses) => SocketAddr::new(addresses[0], params.port),
        Err(err) => {
            return Err(Failure::new(FailureReason::ResolveFailed, err.to_string()));
        }
    };
    ctx.log(format!("server {server}, file {:?}", params.filename));
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).map_err(|err| {
        Failure::new(
            FailureReason::ServerError,
            format!("binding a UDP socket: {err}"),
        )
    })?;
    let (transfer, rrq) = Transfer::new(&params.filename, params.options, params.max_bytes)
        .map_err(|err| Failure::new(FailureReason::ProtocolError, err))?;
    let mut session = Session::new(
        socket,
        server,
        transfer,
        rrq,
        std::mem::take(measurement),
        ctx.deadline,
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
    let joined = tokio::task::spawn_blocking(move || {
        let outcome = session.run(&cancel);
        (session, outcome)
    })
    .await;
    let (session, outcome) = joined.map_err(|err| {
        Failure::new(
            FailureReason::ServerError,
            format!("the transfer thread failed: {err}"),
        )
    })?;
    for line in session.log {
        ctx.log(line);
    }
    *measurement = session.measurement;
    let transfer = session.transfer;
    measurement.bytes = transfer.bytes();
    measurement.retransmissions = transfer.retransmissions();
    measurement.duplicates = transfer.duplicates();
    measurement.negotiated = Some(transfer.negotiated().clone());
    let negotiated = transfer.negotiated();
    if !negotiated.accepted.is_empty() || !negotiated.refused.is_empty() {
        ctx.log(format!(
            "options accepted {:?}, refused {:?}",
            negotiated.accepted, negotiated.refused
        ));
    }
    if transfer.duplicates() > 0 {
        ctx.log(format!(
            "{} duplicate DATA packets ignored",
            transfer.duplicates()
        ));
    }
    outcome?;
    let sha256: [u8; 32] = std::mem::take(&mut measurement.content_hash)
        .finalize()
        .into();
    ctx.log(format!("sha256 {}", codec::hex(&sha256)));
    codec::verify(
        transfer.bytes(),
        &sha256,
        negotiated.tsize,
        params.expected_size,
        params.expected_sha256.as_ref(),
    )
}

/// The probe's metrics (names of the seed exporter where it had them, in base units).
fn metrics(result: &Result<(), Failure>, duration: Duration, m: &Measurement) -> ProbeReport {
    let mut report = Report::new();
    report
        .gauge(
            "tftp_probe_success",
            "1 if the file was downloaded completely and matched every expectation, else 0",
            if result.is_ok() { 1.0 } else { 0.0 },
        )
        .gauge(
            "tftp_probe_duration_seconds",
            "Time the whole probe took, name resolution included",
            duration.as_secs_f64(),
        )
        .gauge(
            "tftp_probe_content_length_bytes",
            "File content bytes received (in order, each block once)",
            m.bytes as f64,
        );
    if let Some(time) = m.transfer_time.filter(|t| !t.is_zero()) {
        report.gauge(
            "tftp_probe_download_speed_bytes_per_second",
            "Content bytes received divided by the time from read request to final block",
            m.bytes as f64 / time.as_secs_f64(),
        );
    }
    if let Some(first) = m.first_block {
        report.gauge(
            "tftp_probe_time_to_first_block_seconds",
            "Time from sending the read request to receiving the first DATA block",
            first.as_secs_f64(),
        );
    }
    report
        .gauge(
            "tftp_probe_retransmissions",
            "Packets this probe sent again because the server did not answer in time",
            m.retransmissions as f64,
        )
        .gauge(
            "tftp_probe_duplicate_blocks",
            "DATA packets received for blocks already received (ignored, never ACKed twice)",
            m.duplicates as f64,
        )
        .family(
            "tftp_probe_negotiated_option",
            "Value the server accepted in its OACK for each option requested (absent if refused)",
            "option",
            m.negotiated
                .iter()
                .flat_map(|n| &n.accepted)
                .map(|(option, value)| (option.name(), *value as f64)),
        )
        .failure(
            "tftp_probe_failure",
            "1 for the reason the probe failed (all 0 on success)",
            result.as_ref().err().map(|f| f.reason),
        );
    report.finish(result.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(raw: &str) -> Result<Params, BadRequest> {
        Params::from_query(&Query::parse(raw).unwrap())
    }

    #[test]
    fn parameters_have_seed_defaults() {
        let p = params("module=tftp&target=tftp.example").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.filename.as_str(), p.max_bytes),
            ("tftp.example", 69, "pxelinux.0", 64 << 20)
        );
        assert_eq!(p.options, OptionRequest::default());
        let p = params(
            "target=10.0.0.1:6969&tftp_filename=boot/x.efi&blksize=1468&windowsize=16&timeout=2&tsize=true\
             &expected_size=10&max_bytes=100&expected_sha256=",
        )
        .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 6969));
        assert_eq!(
            p.options,
            OptionRequest {
                blksize: Some(1468),
                timeout: Some(2),
                windowsize: Some(16),
                tsize: true
            }
        );
        assert_eq!(
            (p.expected_size, p.expected_sha256, p.max_bytes),
            (Some(10), None, 100)
        );
        for (target, host, port) in [
            ("[::1]:70", "::1", 70),
            ("::1", "::1", 69),
            ("[fe80::1]", "fe80::1", 69),
            ("host:99", "host", 99),
        ] {
            let p = params(&format!("target={target}")).unwrap();
            assert_eq!((p.host.as_str(), p.port), (host, port), "{target}");
        }
        assert_eq!(params("target=h&tftp_port=6969").unwrap().port, 6969);
        assert_eq!(params("target=h:6969&tftp_port=6969").unwrap().port, 6969);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (raw, needle) in [
            ("target=h&blocksize=1", "blocksize"),
            ("tftp_port=69", "missing parameter \"target\""),
            ("target=h&tftp_port=0", "\"0\""),
            ("target=h&tftp_port=x", "\"x\""),
            ("target=h:1&tftp_port=2", "tftp_port is 2"),
            ("target=h:x", "\"h:x\""),
            ("target=a%20b", "\"a b\""),
            ("target=[zz]", "\"[zz]\""),
            ("target=h&blksize=7", "\"7\""),
            ("target=h&blksize=65465", "\"65465\""),
            ("target=h&windowsize=0", "\"0\""),
            ("target=h&timeout=256", "\"256\""),
            ("target=h&tsize=maybe", "\"maybe\""),
            ("target=h&expected_size=-1", "\"-1\""),
            ("target=h&expected_sha256=abc", "\"abc\""),
            ("target=h&max_bytes=0", "max_bytes"),
            ("target=h&tftp_filename=a%00b", "tftp_filename"),
        ] {
            let err = params(raw).unwrap_err().0;
            assert!(err.contains(needle), "{raw}: {err}");
        }
        let long = "x".repeat(600);
        assert!(params(&format!("target=h&tftp_filename={long}")).is_err());
    }

    #[tokio::test]
    async fn unresolvable_names_fail_with_resolve_failed() {
        let ctx = ProbeContext::new(Instant::now() + Duration::from_secs(5));
        let query = Query::parse("target=name.invalid").unwrap();
        let report = probe(&ctx, &query).await.unwrap();
        assert!(!report.success);
        let text = crate::metrics::render(&report.registry).unwrap();
        assert!(
            text.contains("tftp_probe_failure{reason=\"resolve_failed\"} 1"),
            "{text}"
        );
    }
}
