//! Active probes driven by scrapes of `/probe`, blackbox_exporter style: one module per prober,
//! all with the same shape. A prober gets the request's query parameters and a
//! [`ProbeContext`] (deadline, probe log) and returns a [`ProbeReport`]: its own metrics and
//! whether the probe succeeded. Invalid parameters are a [`BadRequest`] naming the parameter and
//! value (HTTP 400), never a panic or a 500.
//!
//! This module owns what all probers share: query parsing, the deadline computed from
//! Prometheus' scrape-timeout header, the probe log, and dispatch by prober name.

pub mod allowlist;
pub mod iperf3;
pub mod ping;
pub mod query;
pub mod tftp;

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;

pub use self::query::{BadRequest, Query};

/// Header in which Prometheus sends the scrape timeout.
pub const SCRAPE_TIMEOUT_HEADER: &str = "x-prometheus-scrape-timeout-seconds";
/// Subtracted from the scrape timeout so the answer arrives before Prometheus gives up.
pub const TIMEOUT_OFFSET: Duration = Duration::from_millis(500);
/// Used when the request carries no scrape-timeout header.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a prober gets besides its parameters.
#[derive(Debug)]
pub struct ProbeContext {
    /// When the answer must be ready.
    pub deadline: Instant,
    /// Lines describing what the probe did, for `?debug=true` and debug logging.
    log: Mutex<Vec<String>>,
}

impl ProbeContext {
    pub fn new(deadline: Instant) -> Self {
        ProbeContext {
            deadline,
            log: Mutex::new(Vec::new()),
        }
    }

    /// Time left until the deadline (zero when past it).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Records one line of the probe log (also logged at debug level).
    pub fn log(&self, line: impl Into<String>) {
        let line = line.into();
        log::debug!("probe: {line}");
        crate::support::sync::lock(&self.log).push(line);
    }

    /// The probe log so far.
    pub fn log_lines(&self) -> Vec<String> {
        crate::support::sync::lock(&self.log).clone()
    }
}

/// What a prober returns.
#[derive(Debug)]
pub struct ProbeReport {
    pub success: bool,
    /// The probe's metrics, rendered as the response body.
    pub registry: Registry,
}

/// The probers this daemon runs, with the state they keep between probes.
#[derive(Debug)]
pub struct Probers {
    iperf3: iperf3::Iperf3Prober,
    ping: ping::Ping,
}

impl Probers {
    /// Builds every prober from its settings (the ping flags; the others keep none).
    pub fn new(ping: &ping::Flags) -> Self {
        Probers {
            iperf3: iperf3::Iperf3Prober::new(),
            ping: ping::Ping::new(ping),
        }
    }

    /// Collectors of the probers' own meta metrics (active probes, packets per protocol) for
    /// the daemon's `/metrics`.
    pub fn meta_collectors(&self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        vec![self.ping.meta_collector()]
    }

    /// Names accepted in `module=`.
    pub const NAMES: &'static [&'static str] = &[tftp::MODULE, iperf3::MODULE, ping::MODULE];

    /// The longest a probe of `module` may run, whatever the scrape timeout.
    pub fn timeout(&self, module: &str) -> Duration {
        match module {
            iperf3::MODULE => iperf3::MAX_PROBE_TIME,
            ping::MODULE => ping::Ping::TIMEOUT,
            _ => Duration::from_secs(120),
        }
    }

    /// Checks a query for `prober` the way a probe would, without probing or resolving
    /// anything (for the options of configured modules).
    pub fn validate(prober: &str, query: &Query) -> Result<(), BadRequest> {
        match prober {
            tftp::MODULE => tftp::Params::from_query(query).map(drop),
            iperf3::MODULE => iperf3::Config::from_query(query).map(drop),
            ping::MODULE => ping::Params::from_query(query).map(drop),
            _ => Err(BadRequest(format!(
                "unknown prober {prober:?} (known: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }

    /// Runs one probe of `module`.
    pub async fn run(
        &self,
        module: &str,
        ctx: &ProbeContext,
        query: &Query,
    ) -> Result<ProbeReport, BadRequest> {
        match module {
            tftp::MODULE => tftp::probe(ctx, query).await,
            iperf3::MODULE => self.iperf3.probe(ctx, query).await,
            ping::MODULE => self.ping.probe(ctx, query).await,
            _ => Err(BadRequest(format!(
                "unknown module {module:?} (known: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// The probe deadline: the scrape timeout from `header` minus [`TIMEOUT_OFFSET`], capped by
/// `module_timeout`, counted from `now`. A malformed header is a [`BadRequest`].
pub fn deadline(
    now: Instant,
    header: Option<&str>,
    module_timeout: Duration,
) -> Result<Instant, BadRequest> {
    let scrape_timeout = match header {
        None => DEFAULT_TIMEOUT,
        Some(value) => {
            let seconds: f64 = value.trim().parse().map_err(|_| {
                BadRequest(format!(
                    "header {SCRAPE_TIMEOUT_HEADER} {value:?} is not a number of seconds"
                ))
            })?;
            if !seconds.is_finite() || seconds <= 0.0 {
                return Err(BadRequest(format!(
                    "header {SCRAPE_TIMEOUT_HEADER} {value:?} must be a positive number of seconds"
                )));
            }
            Duration::from_secs_f64(seconds.min(86_400.0))
        }
    };
    let budget = scrape_timeout
        .saturating_sub(TIMEOUT_OFFSET)
        .max(Duration::from_millis(100))
        .min(module_timeout);
    Ok(now + budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_honours_the_scrape_timeout_header() {
        let now = Instant::now();
        let long = Duration::from_secs(60);
        assert_eq!(
            deadline(now, Some("5"), long).unwrap() - now,
            Duration::from_millis(4500)
        );
        assert_eq!(
            deadline(now, Some("2.5"), long).unwrap() - now,
            Duration::from_secs(2)
        );
        assert_eq!(
            deadline(now, None, long).unwrap() - now,
            Duration::from_millis(9500)
        );
        // The module's own timeout caps it.
        assert_eq!(
            deadline(now, Some("30"), Duration::from_secs(3)).unwrap() - now,
            Duration::from_secs(3)
        );
        let err = deadline(now, Some("soon"), long).unwrap_err();
        assert!(err.0.contains("\"soon\""), "{}", err.0);
        assert!(deadline(now, Some("-1"), long).is_err());
        assert!(deadline(now, Some("NaN"), long).is_err());
    }

    #[test]
    fn context_keeps_the_log() {
        let ctx = ProbeContext::new(Instant::now() + Duration::from_secs(1));
        ctx.log("resolving target");
        ctx.log("done");
        assert_eq!(ctx.log_lines(), ["resolving target", "done"]);
        assert!(ctx.remaining() <= Duration::from_secs(1));
    }
}
