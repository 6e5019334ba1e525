//! Active probes driven by scrapes of `/probe`, blackbox_exporter style: one module per prober,
//! all with the same shape ([`Prober`], described by its [`Spec`] in the one table [`SPECS`]:
//! name, parameters, longest run, validation, construction). A prober gets the request's query
//! parameters, its targets already parsed and resolved ([`Target`]) and a [`ProbeContext`]
//! (deadline, probe log), and returns a [`ProbeReport`]: its own metrics (built with
//! [`report`]) and whether the probe succeeded. Invalid parameters are a [`BadRequest`] naming
//! the parameter and value (HTTP 400), never a panic or a 500; a prober at a capacity limit
//! refuses new work with [`Overloaded`] naming the limit (HTTP 503).
//!
//! This module owns what all probers share: query parsing, the deadline computed from
//! Prometheus' scrape-timeout header, the probe log, dispatch by prober name, and the request
//! path in [`handler`] (common parameters, the module's [`policy`], deadline, resolving each
//! target once, the allowlist) that `/probe` and `network-probe probe` both use.

pub mod allowlist;
pub(crate) mod handler;
pub mod iperf3;
pub mod ping;
pub(crate) mod policy;
pub(crate) mod query;
pub(crate) mod report;
pub(crate) mod target;
pub mod tftp;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;

pub use self::{
    query::{BadRequest, Query},
    target::{BoxFuture, ResolveError, Resolver, SystemResolver, Target},
};

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
    /// What the module's configuration loaded (key files).
    loaded: Loaded,
}

impl ProbeContext {
    pub fn new(deadline: Instant) -> Self {
        ProbeContext {
            deadline,
            log: Mutex::new(Vec::new()),
            loaded: Loaded::default(),
        }
    }

    /// This context with what the module's configuration loaded.
    pub fn with_loaded(self, loaded: Loaded) -> Self {
        ProbeContext { loaded, ..self }
    }

    /// What the module's configuration loaded.
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
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

/// A request a prober refuses because it is at a capacity limit (HTTP 503; the ping prober's
/// `--ping.max-active-targets`); the message names the limit and the numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overloaded(pub String);

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a prober did not run a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// Invalid parameters (HTTP 400).
    BadRequest(BadRequest),
    /// A capacity limit (HTTP 503).
    Overloaded(Overloaded),
}

impl From<BadRequest> for ProbeError {
    fn from(err: BadRequest) -> ProbeError {
        ProbeError::BadRequest(err)
    }
}

impl From<Overloaded> for ProbeError {
    fn from(err: Overloaded) -> ProbeError {
        ProbeError::Overloaded(err)
    }
}

/// What a prober returns.
#[derive(Debug)]
pub struct ProbeReport {
    pub success: bool,
    /// The probe's metrics, rendered as the response body.
    pub registry: Registry,
}

/// Query parameters the framework reads itself, for every prober.
pub const COMMON_PARAMETERS: &[&str] = &["module", "target", "debug"];

/// What the framework knows of one prober: the one table of probers is [`SPECS`].
#[derive(Debug)]
pub struct Spec {
    /// Name in `module=` and a module's `prober:`.
    pub name: &'static str,
    /// The prober's own query parameters (besides [`COMMON_PARAMETERS`]).
    pub parameters: &'static [&'static str],
    /// The parameters a request may set unless the module's policy says otherwise (the seed
    /// exporter's, and for tftp its transfer options): see [`policy`].
    pub request_parameters: &'static [&'static str],
    /// The ports a probe of a target (with the port it names, if any) would use, for the
    /// allowlist: empty for a probe without a port (ICMP). Values that do not parse are left
    /// out (the prober's own check refuses them afterwards).
    pub ports: fn(&Query, Option<u16>) -> Vec<u16>,
    /// The longest a probe may run, whatever the scrape timeout or the module's timeout.
    pub max_time: Duration,
    /// Checks a query (with `target=`) the way a probe would, without probing or resolving
    /// anything: for each request and for the options of configured modules (with what the
    /// module loaded; without it, files the query names are read).
    pub validate: fn(&Query, &Loaded) -> Result<(), BadRequest>,
    /// Builds the prober, with the state it keeps between probes.
    pub build: fn(&Settings) -> Box<dyn Prober>,
}

/// The probers' settings from the command line (only ping has any).
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    pub ping: &'a ping::Flags,
}

/// One prober: runs a probe of targets the framework has already parsed and resolved (it
/// never resolves them again), with the query's other parameters.
pub trait Prober: Send + Sync + std::fmt::Debug {
    /// Runs one probe. `targets` are the request's `target=` values in order, each resolved
    /// once; a [`BadRequest`] is answered with 400, [`Overloaded`] with 503.
    fn run<'a>(
        &'a self,
        ctx: &'a ProbeContext,
        query: &'a Query,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeError>>;

    /// A collector of the prober's meta metrics for the daemon's `/metrics`, if it has any.
    fn meta_collector(&self) -> Option<Box<dyn prometheus_client::collector::Collector>> {
        None
    }

    /// Puts back what the prober changed outside the daemon (the ping prober: the NICs'
    /// hardware timestamping configuration), at shutdown; returns lines for the log
    /// (`Err`: what could not be put back).
    fn shutdown(&self) -> Vec<Result<String, String>> {
        Vec::new()
    }
}

/// Every prober, in the order `unknown module` messages list them.
pub static SPECS: &[Spec] = &[tftp::SPEC, iperf3::SPEC, ping::SPEC];

/// The spec of the prober `name`.
pub fn spec(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|spec| spec.name == name)
}

/// Names accepted as a prober.
pub fn names() -> Vec<&'static str> {
    SPECS.iter().map(|spec| spec.name).collect()
}

/// What a module's configuration read once, when it was loaded, for its probes: no request
/// names a file the daemon reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    /// iperf3's RSA public key (`public_key_file`), parsed at load time.
    pub public_key: Option<Arc<rsa::RsaPublicKey>>,
}

/// A probe module as the framework needs it (the configuration builds it from its own,
/// richer module): its name, prober, default parameters, policy, own timeout and what it
/// loaded.
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    /// The name in `module=` (for messages).
    pub name: &'a str,
    pub prober: &'a str,
    /// Query parameters the module sets; a request's own override them where the policy lets
    /// it.
    pub options: &'a [(String, String)],
    /// Longest a probe of this module runs (the prober's own limit still applies); without
    /// it, [`policy::DEFAULT_MAX_PROBE_TIME`].
    pub timeout: Option<Duration>,
    /// What a request may set; `None`: the prober's default policy.
    pub policy: Option<&'a policy::Policy>,
    /// What the module's configuration loaded; `None`: nothing.
    pub loaded: Option<&'a Loaded>,
}

impl<'a> Module<'a> {
    /// The built-in module of `prober`: no options, the default policy.
    pub fn builtin(prober: &'a str) -> Module<'a> {
        Module {
            name: prober,
            prober,
            options: &[],
            timeout: None,
            policy: None,
            loaded: None,
        }
    }
}

/// The probers this daemon runs, with the state they keep between probes.
#[derive(Debug)]
pub struct Probers {
    probers: Vec<(&'static Spec, Box<dyn Prober>)>,
}

impl Probers {
    /// Builds every prober of [`SPECS`] from its settings.
    pub fn new(ping: &ping::Flags) -> Self {
        let settings = Settings { ping };
        Probers {
            probers: SPECS
                .iter()
                .map(|spec| (spec, (spec.build)(&settings)))
                .collect(),
        }
    }

    /// Collectors of the probers' own meta metrics (active probes, packets per protocol) for
    /// the daemon's `/metrics`.
    pub fn meta_collectors(&self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        self.probers
            .iter()
            .filter_map(|(_, prober)| prober.meta_collector())
            .collect()
    }

    /// [`Prober::shutdown`] of every prober, their log lines in order.
    pub fn shutdown(&self) -> Vec<Result<String, String>> {
        self.probers
            .iter()
            .flat_map(|(_, prober)| prober.shutdown())
            .collect()
    }

    /// The prober `name` and its spec; the error names the known ones.
    pub fn get(&self, name: &str) -> Result<(&'static Spec, &dyn Prober), BadRequest> {
        self.probers
            .iter()
            .find(|(spec, _)| spec.name == name)
            .map(|(spec, prober)| (*spec, prober.as_ref()))
            .ok_or_else(|| {
                BadRequest(format!(
                    "unknown module {name:?} (known: {})",
                    names().join(", ")
                ))
            })
    }

    /// Checks a query for `prober` the way a probe would, without probing or resolving
    /// anything (for the options of configured modules).
    pub fn validate(prober: &str, query: &Query) -> Result<(), BadRequest> {
        match spec(prober) {
            Some(spec) => (spec.validate)(query, &Loaded::default()),
            None => Err(BadRequest(format!(
                "unknown prober {prober:?} (known: {})",
                names().join(", ")
            ))),
        }
    }
}

/// Names in `query` that are neither common parameters nor in `own` (to reject typos instead of
/// ignoring them).
pub fn unknown_parameters<'q>(query: &'q Query, own: &[&str]) -> Vec<&'q str> {
    query
        .unknown(own)
        .into_iter()
        .filter(|name| !COMMON_PARAMETERS.contains(name))
        .collect()
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
