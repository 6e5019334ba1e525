//! The `iperf3` prober: a native iperf3 client (no external program) that runs one test per
//! probe against an iperf3 server (3.12 or newer) and exports throughput, retransmits and, for
//! UDP, loss and jitter under the metric names of edgard/iperf3_exporter.
//!
//! This file owns the prober's entry in the framework ([`SPEC`], [`Prober`]) and the failure
//! vocabulary ([`FailureReason`], [`Failure`]). The concerns are split: [`params`] (query
//! parameters), [`auth`] (RSA login), [`queue`] (one test at a time per server, bounded
//! waiters, retries while another client holds the server), [`control`] (the async control
//! connection and one test over it), [`report`] (merging both sides' results, the metrics). The
//! data streams run on one blocking thread each in [`streams`] (the daemon's runtime has a
//! single thread). Every byte the server sends is interpreted by the pure functions of
//! [`protocol`].

pub(crate) mod auth;
pub(crate) mod control;
pub(crate) mod params;
pub mod protocol;
pub(crate) mod queue;
pub(crate) mod report;
mod streams;

use std::time::Duration;

use self::protocol::ProtocolError;
pub use self::{
    auth::{Auth, Padding, auth_token, load_public_key, parse_public_key},
    control::{TCP_BLOCK_LEN, UDP_BLOCK_LEN},
    params::{
        Config, DEFAULT_PERIOD, DEFAULT_PORT, DEFAULT_UDP_BITRATE, MAX_PARALLEL, PARAMETERS,
        REQUEST_PARAMETERS,
    },
    queue::{EXCHANGE_MARGIN, Iperf3Prober, MAX_WAITERS, MIN_PERIOD, fit_period},
    report::{Measurement, UdpMeasurement},
};
use super::{
    BadRequest, BoxFuture, ProbeContext, ProbeError, ProbeReport, Prober, Query, Spec, Target,
    target::{ResolveError, SystemResolver},
};

/// Name in `module=`.
pub const MODULE: &str = "iperf3";
/// Longest probe, whatever the scrape timeout (the seed's configs use 5 minutes).
pub const MAX_PROBE_TIME: Duration = Duration::from_secs(600);

/// The prober's entry in [`super::SPECS`].
pub const SPEC: Spec = Spec {
    name: MODULE,
    parameters: PARAMETERS,
    request_parameters: REQUEST_PARAMETERS,
    // The control connection and every data stream go to this port.
    ports: |query, target_port| match query.get("port") {
        Ok(Some(text)) if !text.is_empty() => text.parse().ok().into_iter().collect(),
        _ => vec![target_port.unwrap_or(DEFAULT_PORT)],
    },
    max_time: MAX_PROBE_TIME,
    validate: |query, loaded| Config::from_query_loaded(query, loaded).map(drop),
    build: |_| Box::new(Iperf3Prober::new()),
};

/// Why a probe failed, as the `reason` label of `iperf3_failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The target did not resolve ([`ResolveError`], whatever the cause, a timeout included).
    ResolveFailed,
    ConnectFailed,
    /// Another client's test holds the server, or too many probes wait for it.
    Busy,
    AuthFailed,
    ServerError,
    ProtocolError,
    /// The test did not finish (or could not start) before the deadline.
    Timeout,
}

impl super::report::Reason for FailureReason {
    const ALL: &'static [FailureReason] = &[
        FailureReason::ResolveFailed,
        FailureReason::ConnectFailed,
        FailureReason::Busy,
        FailureReason::AuthFailed,
        FailureReason::ServerError,
        FailureReason::ProtocolError,
        FailureReason::Timeout,
    ];

    fn label(self) -> &'static str {
        match self {
            FailureReason::ResolveFailed => ResolveError::LABEL,
            FailureReason::ConnectFailed => "connect_failed",
            FailureReason::Busy => "busy",
            FailureReason::AuthFailed => "auth_failed",
            FailureReason::ServerError => "server_error",
            FailureReason::ProtocolError => "protocol_error",
            FailureReason::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(super::report::Reason::label(*self))
    }
}

/// A failed probe: the reason and a message for the probe log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    /// Worth another attempt within the deadline (busy server, listener restarting).
    retry: bool,
}

impl Failure {
    fn new(reason: FailureReason, message: impl Into<String>) -> Failure {
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
        Failure::new(FailureReason::ProtocolError, err.0)
    }
}

impl Prober for Iperf3Prober {
    fn run<'a>(
        &'a self,
        ctx: &'a ProbeContext,
        query: &'a Query,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeError>> {
        Box::pin(async move {
            let config = Config::from_query_loaded(query, ctx.loaded())?;
            let target = targets
                .first()
                .ok_or_else(|| BadRequest("missing parameter \"target\"".into()))?;
            Ok(self.probe_addresses(ctx, &config, &target.addresses).await)
        })
    }
}

impl Iperf3Prober {
    /// Runs one probe of the query's target, resolving it here (for callers outside `/probe`,
    /// such as the integration tests; `/probe` resolves once in [`super::handler`]).
    pub async fn probe(
        &self,
        ctx: &ProbeContext,
        query: &Query,
    ) -> Result<ProbeReport, BadRequest> {
        let config = Config::from_query(query)?;
        let target =
            Target::resolve(query.required("target")?, &SystemResolver, ctx.deadline).await?;
        Ok(self.probe_addresses(ctx, &config, &target.addresses).await)
    }

    /// Queue, test, metrics, for a target resolved to `addresses`.
    async fn probe_addresses(
        &self,
        ctx: &ProbeContext,
        config: &Config,
        addresses: &Result<Vec<std::net::IpAddr>, ResolveError>,
    ) -> ProbeReport {
        let outcome = self.measure_at(ctx, config, addresses).await;
        match &outcome {
            Ok(m) => ctx.log(format!(
                "sent {} B in {:.3} s, received {} B in {:.3} s",
                m.sent_bytes, m.sent_seconds, m.received_bytes, m.received_seconds
            )),
            Err(failure) => ctx.log(format!("failed ({}): {}", failure.reason, failure.message)),
        }
        report::registry(&outcome, config.transport)
    }
}
