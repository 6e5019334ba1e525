//! The `ping` prober: continuous ICMP echo and TCP SYN ping with kernel timestamps, replacing
//! icmp-exporter. A request to `/probe?module=ping&target=...` starts background probing of
//! every address the targets resolve to (one packet per interval, see [`scheduler`]) and
//! answers with the current figures of those addresses; probing stops when a target has not
//! been requested for the expiry period.
//!
//! This file owns the parameters, choosing among the addresses the framework resolved the
//! targets to ([`super::handler`]: once per request), the sockets' lifecycle and the metrics.
//! Submodules: [`packet`] (sans-IO packets), [`timestamps`] (control messages, hardware
//! stamping), [`hardware`] (hardware stamps missing after setup: counted, re-applied), [`stats`] (per-target figures), [`scheduler`] (background loop, rate limit, cap on
//! active probes, in-flight table), [`wheel`] (the scheduler's timer wheel), [`socket`]
//! (raw-socket IO), [`mmsg`] (batched `sendmmsg`/`recvmmsg`), [`filter`] (the raw TCP
//! socket's BPF filter), [`icmp`] and [`tcp_syn`] (the drivers).

pub mod filter;
pub(crate) mod hardware;
pub(crate) mod icmp;
pub(crate) mod mmsg;
pub mod packet;
pub(crate) mod rebind;
pub(crate) mod receiver;
pub(crate) mod scheduler;
pub mod socket;
pub(crate) mod stats;
pub(crate) mod tcp_syn;
pub mod timestamps;
pub(crate) mod wheel;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use self::{
    icmp::{IcmpConfig, IcmpDriver, SocketMode},
    scheduler::{OverCapacity, ProbeKey, ProtocolCounters, Schedule, Scheduler, Sender, lock},
    stats::{Outcome, TargetStats},
    tcp_syn::{TcpConfig, TcpDriver},
};
use super::{
    BadRequest, BoxFuture, Overloaded, ProbeContext, ProbeError, ProbeReport, Prober, Query, Spec,
    Target, report::Report, target::split_host_port,
};
use crate::support::units::parse_duration;

/// The name in `module=`.
pub const MODULE: &str = "ping";

/// Query parameters this prober accepts besides `module`, `target` and `debug`.
const PARAMETERS: &[&str] = &["ip_version", "tcp_port"];

/// The prober's entry in [`super::SPECS`].
pub const SPEC: Spec = Spec {
    name: MODULE,
    parameters: PARAMETERS,
    // The seed's: all of them.
    request_parameters: PARAMETERS,
    // TCP SYN pings go to every tcp_port; without one the probe is ICMP (no port).
    ports: |query, _| {
        let mut ports: Vec<u16> = query
            .all("tcp_port")
            .filter_map(|port| port.parse().ok())
            .filter(|&port| port != 0)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    },
    max_time: Ping::TIMEOUT,
    validate: |query, _| Params::from_query(query).map(drop),
    build: |settings| Box::new(Ping::new(settings.ping)),
};

impl Prober for Ping {
    fn run<'a>(
        &'a self,
        ctx: &'a ProbeContext,
        query: &'a Query,
        targets: &'a [Target],
    ) -> BoxFuture<'a, Result<ProbeReport, ProbeError>> {
        Box::pin(self.probe(ctx, query, targets))
    }

    fn meta_collector(&self) -> Option<Box<dyn Collector>> {
        Some(Ping::meta_collector(self))
    }

    fn shutdown(&self) -> Vec<Result<String, String>> {
        self.hardware_configs.restore()
    }
}
/// Default of `--ping.max-active-targets`. The scheduler's costs per active probe: a place
/// in the timer wheel, one packet per `--ping.interval` through the shared `--ping.max-pps` bucket, and
/// its figures (a window of `--ping.samples` outcomes, 20 histogram buckets: about 2 KB at the
/// default 60 samples). At the default 2 s interval, 10,000 probes send 5,000 packets/s, half
/// the default `--ping.max-pps` 10,000: the bucket never makes a probe wait (past max-pps x
/// interval = 20,000 probes, the bucket would hold probes back to later ticks and they would go
/// out less often than every interval), the CPU is about 5.5 % of a core (11 µs per echo, docs/ping.md's benchmark)
/// and the memory about 20 MB.
pub const DEFAULT_MAX_ACTIVE_TARGETS: u32 = 10_000;

/// Shortest interval and timeout (as in icmp-exporter).
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// How the ICMP identifier is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Identifier {
    /// The low 16 bits of the process id.
    Pid,
    /// Random at start.
    Random,
}

/// Flags of the ping prober.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "ping_flags")]
pub struct Flags {
    /// Time between two probes of one target (at least 10ms).
    #[arg(long = "ping.interval", value_name = "DURATION", default_value = "2s", value_parser = parse_interval)]
    pub interval: Duration,

    /// A probe without reply after this long counts as lost.
    #[arg(long = "ping.timeout", value_name = "DURATION", default_value = "3s", value_parser = parse_interval)]
    pub timeout: Duration,

    /// A target not requested for this long stops being probed.
    #[arg(long = "ping.expiry", value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub expiry: Duration,

    /// Most probe packets per second, all targets together.
    #[arg(long = "ping.max-pps", value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pps: u32,

    /// Samples in the window behind the loss ratio, latency and standard deviation gauges.
    #[arg(long = "ping.samples", value_name = "N", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub samples: u32,

    /// Most probes (addresses times ports) one request may ask for.
    #[arg(long = "ping.max-targets", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_targets: u32,

    /// Most probes (addresses times ports) active at once, all requests together; a request
    /// that would start probes past it starts none and is answered 503.
    #[arg(long = "ping.max-active-targets", value_name = "N", default_value_t = DEFAULT_MAX_ACTIVE_TARGETS,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_active_targets: u32,

    /// Interface IPv4 probes leave by: a name, `auto` (for each target, the interface the
    /// kernel routes it out of) or `any` (no binding).
    #[arg(long = "ping.interface4", value_name = "NAME", default_value = "auto")]
    pub interface4: String,

    /// Interface IPv6 probes leave by: a name, `auto` or `any`.
    #[arg(long = "ping.interface6", value_name = "NAME", default_value = "auto")]
    pub interface6: String,

    /// Use hardware timestamps where the bound interface supports them (else software, with a
    /// warning).
    #[arg(long = "ping.hard")]
    pub hard: bool,

    /// ICMP identifier: the process id or random.
    #[arg(long = "ping.identifier", value_name = "SOURCE", value_enum, default_value_t = Identifier::Pid)]
    pub identifier: Identifier,

    /// ICMP socket kind: `auto` uses a datagram ("ping") socket where
    /// net.ipv4.ping_group_range admits the daemon's group, else a raw one.
    #[arg(long = "ping.icmp-socket", value_name = "KIND", value_enum, default_value_t = SocketMode::Auto)]
    pub icmp_socket: SocketMode,
}

fn parse_interval(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value)?;
    if duration < MIN_INTERVAL {
        return Err(format!("{value:?} is below the minimum of 10ms"));
    }
    Ok(duration)
}

/// A small random generator (SplitMix64) seeded from the kernel, for identifiers, cookies and
/// initial sequence numbers (unpredictable enough that strangers cannot fake replies blindly).
#[derive(Debug)]
pub struct Random(u64);

impl Random {
    pub fn new() -> Self {
        Random(crate::support::random::u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

/// The sockets of the probes, opened on first use.
#[derive(Debug, Default)]
struct Drivers {
    /// One socket per protocol, family and interface bound to (none: unbound), opened on
    /// first use: with `auto`, targets reached through different interfaces get their own.
    /// Each in a slot that opens it again when its interface is re-created ([`rebind`]).
    open: BTreeMap<DriverKey, Arc<rebind::Rebinding>>,
}

/// Which socket serves a probe: TCP SYN or ICMP, IPv6 or IPv4, and the interface it is bound to.
type DriverKey = (bool, bool, Option<String>);

/// The prober's state between requests.
#[derive(Debug)]
pub struct Ping {
    flags: Flags,
    identifier: u16,
    scheduler: Arc<Scheduler>,
    drivers: Mutex<Drivers>,
    meta: Arc<Meta>,
    hardware_warned: AtomicBool,
    /// The NICs' hardware stamping configurations `--ping.hard` replaced, put back at shutdown.
    hardware_configs: timestamps::SavedConfigs,
}

/// Protocol-level counters and the scheduler, for the meta metrics.
#[derive(Debug)]
pub struct Meta {
    icmp: Arc<ProtocolCounters>,
    tcp: Arc<ProtocolCounters>,
    scheduler: Arc<Scheduler>,
    /// `--ping.hard` is set (the fallback counter is exported only then).
    hard: bool,
    /// Sockets opened with software stamps although `--ping.hard` asked for hardware ones.
    hardware_fallbacks: AtomicU64,
    /// Replies measured without hardware stamps on sockets set up for them.
    hardware_missing: Arc<hardware::MissingStamps>,
}

impl Ping {
    pub fn new(flags: &Flags) -> Self {
        let identifier = match flags.identifier {
            Identifier::Pid => std::process::id() as u16,
            Identifier::Random => crate::support::random::u64() as u16,
        };
        let scheduler = Scheduler::new(Schedule {
            interval: flags.interval,
            expiry: flags.expiry,
            window: flags.samples as usize,
            max_packets_per_second: flags.max_pps,
            max_active: flags.max_active_targets as usize,
        });
        let sustainable = f64::from(flags.max_pps) * flags.interval.as_secs_f64();
        if f64::from(flags.max_active_targets) > sustainable {
            log::warn!(
                "ping: --ping.max-active-targets {} is above --ping.max-pps x --ping.interval \
                 ({sustainable:.0}): with that many targets, probes wait for the rate limit and \
                 go out less often than every interval",
                flags.max_active_targets
            );
        }
        Ping {
            flags: flags.clone(),
            identifier,
            meta: Arc::new(Meta {
                icmp: Arc::default(),
                tcp: Arc::default(),
                scheduler: Arc::clone(&scheduler),
                hard: flags.hard,
                hardware_fallbacks: AtomicU64::new(0),
                hardware_missing: Arc::default(),
            }),
            scheduler,
            drivers: Mutex::default(),
            hardware_warned: AtomicBool::new(false),
            hardware_configs: timestamps::SavedConfigs::default(),
        }
    }

    /// The longest a ping request may take (name resolution only; probing is in the background).
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    /// A collector of the meta metrics (active probes, packets and errors per protocol), for
    /// the daemon's telemetry registry; the probe responses carry them too.
    pub fn meta_collector(&self) -> Box<dyn Collector> {
        Box::new(MetaCollector(Arc::clone(&self.meta)))
    }

    /// Handles one `/probe?module=ping` request for `targets`, resolved by the framework.
    pub async fn probe(
        &self,
        ctx: &ProbeContext,
        query: &Query,
        targets: &[Target],
    ) -> Result<ProbeReport, ProbeError> {
        let Params { family, ports, .. } = Params::from_query(query)?;
        let mut addresses = BTreeSet::new();
        for target in targets {
            for address in choose(ctx, target, family)? {
                addresses.insert(address);
            }
        }
        let probes = addresses.len() * ports.len().max(1);
        if probes > self.flags.max_targets as usize {
            return Err(BadRequest(format!(
                "{probes} probes requested ({} addresses x {} ports), more than --ping.max-targets {}",
                addresses.len(),
                ports.len().max(1),
                self.flags.max_targets
            ))
            .into());
        }
        let mut success = true;
        let mut wanted = Vec::with_capacity(probes);
        for address in addresses {
            let port_list: Vec<Option<u16>> = if ports.is_empty() {
                vec![None]
            } else {
                ports.iter().copied().map(Some).collect()
            };
            for tcp_port in port_list {
                let key = ProbeKey { address, tcp_port };
                match self.driver(key) {
                    Ok(sender) => wanted.push((key, sender)),
                    Err(reason) => {
                        ctx.log(reason);
                        success = false;
                    }
                }
            }
        }
        let requested = self
            .scheduler
            .request(wanted)
            .map_err(|over| Overloaded(self.over_capacity(over)))?;
        let mut snapshots = Vec::with_capacity(requested.len());
        for probe in requested {
            let stats = lock(&probe.stats).clone();
            ctx.log(describe(&probe.key, &stats));
            snapshots.push((probe.key, stats));
        }
        let mut report = Report::new();
        report
            .collector(Box::new(ProbeCollector { success, snapshots }))
            .collector(self.meta_collector());
        Ok(report.finish(success))
    }

    /// The 503 message of a request refused by `--ping.max-active-targets`.
    fn over_capacity(&self, over: OverCapacity) -> String {
        format!(
            "ping: {} new targets refused: {} of --ping.max-active-targets {} already active \
             (a target stops being probed --ping.expiry {:?} after its last request)",
            over.new, over.active, over.limit, self.flags.expiry
        )
    }

    /// The driver for `key`, opening its socket on first use; the error is for the operator.
    fn driver(&self, key: ProbeKey) -> Result<Arc<dyn Sender>, String> {
        let v6 = key.address.is_ipv6();
        let interface = self.interface(key.address)?;
        let tcp = key.tcp_port.is_some();
        let mut drivers = lock(&self.drivers);
        if let Some(slot) = drivers.open.get(&(tcp, v6, interface.clone())) {
            let slot = Arc::clone(slot);
            if slot.check() == rebind::Decision::Reopen {
                let name = interface.as_deref().unwrap_or_default();
                let index = interface.as_deref().and_then(rebind::interface_index);
                match self.open_driver(tcp, v6, interface.clone()) {
                    Ok(driver) => {
                        log::warn!(
                            "ping: interface {name} was re-created (index {} -> {}): its \
                             {} IPv{} socket is opened and bound again{}",
                            slot.index(),
                            index.unwrap_or(0),
                            if tcp { "TCP" } else { "ICMP" },
                            if v6 { 6 } else { 4 },
                            if self.flags.hard {
                                ", hardware timestamping applied again"
                            } else {
                                ""
                            }
                        );
                        slot.replace(index, driver, 2 * self.flags.timeout);
                    }
                    Err(reason) => log::debug!("ping: {name} is back, re-opening: {reason}"),
                }
            }
            return Ok(slot);
        }
        let index = interface.as_deref().and_then(rebind::interface_index);
        let driver = self.open_driver(tcp, v6, interface.clone())?;
        let slot = Arc::new(rebind::Rebinding::new(interface.clone(), index, driver));
        drivers.open.insert((tcp, v6, interface), Arc::clone(&slot));
        Ok(slot)
    }

    /// Opens the socket (driver) of one protocol and family on `interface`; the error is for
    /// the operator.
    fn open_driver(
        &self,
        tcp: bool,
        v6: bool,
        interface: Option<String>,
    ) -> Result<Arc<dyn Sender>, String> {
        let stamp_flags = self.stamp_flags(interface.as_deref());
        let hardware = interface
            .as_deref()
            .filter(|_| stamp_flags == timestamps::HARDWARE_FLAGS)
            .map(|interface| {
                Arc::new(hardware::HardwareWatch::new(
                    interface,
                    Arc::clone(&self.meta.hardware_missing),
                ))
            });
        let family = if v6 { 6 } else { 4 };
        let timeout = self.flags.timeout;
        let driver: Arc<dyn Sender> = if tcp {
            let config = TcpConfig {
                v6,
                interface: interface.clone(),
                stamp_flags,
                timeout: timeout.min(tcp_syn::MAX_TIMEOUT),
                hardware: hardware.clone(),
            };
            TcpDriver::start(&config, Arc::clone(&self.meta.tcp)).map_err(|err| {
                format!("opening the raw TCP socket for IPv{family}: {err} (needs CAP_NET_RAW)")
            })?
        } else {
            let config = IcmpConfig {
                v6,
                mode: self.flags.icmp_socket,
                identifier: self.identifier,
                interface: interface.clone(),
                stamp_flags,
                timeout,
                hardware: hardware.clone(),
            };
            IcmpDriver::start(&config, Arc::clone(&self.meta.icmp)).map_err(|err| {
                format!("opening the ICMPv{family} socket: {err} (raw sockets need CAP_NET_RAW; datagram ones net.ipv4.ping_group_range)")
            })?
        };
        Ok(driver)
    }

    /// The interface to bind the socket probing `address` to: the flag's interface, none for
    /// `any`, and for `auto` the interface the kernel routes `address` out of (one
    /// `RTM_GETROUTE`, as `ip route get`), so loopback, a second NIC or a VPN work as well as
    /// the default route. The error names the address and what the kernel said.
    fn interface(&self, address: IpAddr) -> Result<Option<String>, String> {
        let flag = if address.is_ipv6() {
            &self.flags.interface6
        } else {
            &self.flags.interface4
        };
        match flag.as_str() {
            "any" | "" => Ok(None),
            "auto" => match crate::kernel::rtnetlink::route_interface(address) {
                Ok(Some(index)) => crate::kernel::rtnetlink::interface_name(index)
                    .map(Some)
                    .ok_or_else(|| format!("route to {address}: interface {index} has no name")),
                Ok(None) => Ok(None),
                Err(err) => Err(format!("no route to {address}: {err}")),
            },
            name => Ok(Some(name.to_string())),
        }
    }

    /// Socket timestamping flags: hardware when asked for and possible, else software (with
    /// one warning).
    fn stamp_flags(&self, interface: Option<&str>) -> u32 {
        if !self.flags.hard {
            return timestamps::SOFTWARE_FLAGS;
        }
        let result = match interface {
            Some(interface) => timestamps::enable_hardware(interface, &self.hardware_configs),
            None => Err("no interface to enable it on (set --ping.interface4/6)".into()),
        };
        match result {
            Ok(()) => timestamps::HARDWARE_FLAGS,
            Err(reason) => {
                self.meta.hardware_fallbacks.fetch_add(1, Ordering::Relaxed);
                if !self.hardware_warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "ping: hardware timestamps unavailable ({reason}); using software timestamps"
                    );
                }
                timestamps::SOFTWARE_FLAGS
            }
        }
    }
}

/// One request's parameters, checked (the targets are resolved later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params<'q> {
    pub targets: Vec<&'q str>,
    /// `ip_version`: Some(true) IPv6 only, Some(false) IPv4 only, None both.
    pub family: Option<bool>,
    /// `tcp_port`s; empty: ICMP.
    pub ports: Vec<u16>,
}

impl<'q> Params<'q> {
    /// Reads and checks the query; errors name the parameter and the value.
    pub fn from_query(query: &'q Query) -> Result<Params<'q>, BadRequest> {
        let unknown = super::unknown_parameters(query, PARAMETERS);
        if !unknown.is_empty() {
            return Err(BadRequest(format!(
                "unknown parameter {:?} (ping takes target, ip_version, tcp_port)",
                unknown[0]
            )));
        }
        let targets: Vec<&str> = query.all("target").collect();
        if targets.is_empty() || targets.iter().any(|target| target.is_empty()) {
            return Err(BadRequest("missing parameter \"target\"".into()));
        }
        for target in &targets {
            if split_host_port(target)?.1.is_some() {
                return Err(BadRequest(format!(
                    "parameter \"target\": {target:?} is not a host name or address (ping \
                     takes no port; see tcp_port)"
                )));
            }
        }
        let family = match query.get("ip_version")?.unwrap_or("all") {
            "4" => Some(false),
            "6" => Some(true),
            "all" | "" => None,
            other => {
                return Err(BadRequest(format!(
                    "parameter \"ip_version\": {other:?} is not 4, 6 or all"
                )));
            }
        };
        Ok(Params {
            targets,
            family,
            ports: parse_ports(query)?,
        })
    }
}

/// The `tcp_port` values: each 1 to 65535, duplicates removed.
fn parse_ports(query: &Query) -> Result<Vec<u16>, BadRequest> {
    let mut ports = BTreeSet::new();
    for value in query.all("tcp_port") {
        match value.parse::<u16>() {
            Ok(port) if port > 0 => {
                ports.insert(port);
            }
            _ => {
                return Err(BadRequest(format!(
                    "parameter \"tcp_port\": {value:?} is not a port from 1 to 65535"
                )));
            }
        }
    }
    Ok(ports.into_iter().collect())
}

/// The addresses of `target` (resolved by the framework) of `family` (None: both); a target
/// that did not resolve is a [`BadRequest`] (ping has no failure metric to report it with).
fn choose(
    ctx: &ProbeContext,
    target: &Target,
    family: Option<bool>,
) -> Result<Vec<IpAddr>, BadRequest> {
    let wanted = |address: &IpAddr| family.is_none_or(|v6| address.is_ipv6() == v6);
    let target_name = target.raw.as_str();
    let addresses = target
        .addresses
        .as_ref()
        .map_err(|err| BadRequest(format!("parameter \"target\": {err}")))?;
    let kept: Vec<IpAddr> = addresses.iter().copied().filter(wanted).collect();
    if kept.is_empty() {
        let which = match family {
            Some(true) => "IPv6 ",
            Some(false) => "IPv4 ",
            None => "",
        };
        return Err(BadRequest(format!(
            "parameter \"target\": {target_name:?} has no {which}address"
        )));
    }
    for address in &kept {
        if address.is_unspecified() || address.is_multicast() {
            return Err(BadRequest(format!(
                "parameter \"target\": {target_name:?} resolves to {address}, which cannot be pinged"
            )));
        }
    }
    ctx.log(format!("{target_name} resolved to {kept:?}"));
    Ok(kept)
}

/// One probe-log line: counters and the window's RTTs in microseconds (kernel and user clock).
fn describe(key: &ProbeKey, stats: &TargetStats) -> String {
    let mut kernel = String::new();
    let mut user = String::new();
    for outcome in &stats.window {
        match outcome {
            Outcome::Reply {
                rtt,
                user_rtt,
                user_clock,
                ..
            } => {
                kernel.push_str(&format!(
                    " {:.1}{}",
                    rtt * 1e6,
                    if *user_clock { "u" } else { "" }
                ));
                user.push_str(&format!(" {:.1}", user_rtt * 1e6));
            }
            Outcome::Lost => {
                kernel.push_str(" lost");
                user.push_str(" lost");
            }
        }
    }
    let port = key
        .tcp_port
        .map(|port| format!(" port {port}"))
        .unwrap_or_default();
    format!(
        "{}{port}: sent {} received {} | rtt_us:{kernel} | user_rtt_us:{user}",
        key.address, stats.sent, stats.received
    )
}

/// The per-target metrics of one response.
#[derive(Debug)]
struct ProbeCollector {
    /// Every requested probe is running (its socket could be opened).
    success: bool,
    snapshots: Vec<(ProbeKey, TargetStats)>,
}

/// Labels of one target: `ip`, plus `port` for TCP.
fn labels(key: &ProbeKey) -> Vec<(&'static str, String)> {
    let mut labels = vec![("ip", key.address.to_string())];
    if let Some(port) = key.tcp_port {
        labels.push(("port", port.to_string()));
    }
    labels
}

impl Collector for ProbeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let success = encoder.encode_descriptor(
            "ping_probe_success",
            "1 if every requested target is being probed, 0 if a socket could not be opened (the \
             reason is in the probe log, ?debug=true).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(self.success)).encode(success)?;
        for (prefix, tcp) in [("icmp", false), ("tcp", true)] {
            let rows: Vec<(Vec<(&str, String)>, &TargetStats)> = self
                .snapshots
                .iter()
                .filter(|(key, _)| key.tcp_port.is_some() == tcp)
                .map(|(key, stats)| (labels(key), stats))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let what = if tcp { "SYNs" } else { "echo requests" };
            let counter = |encoder: &mut DescriptorEncoder,
                           name: &str,
                           help: &str,
                           value: &dyn Fn(&TargetStats) -> f64| {
                let name = format!("{prefix}_{name}");

                let mut family =
                    encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
                for (labels, stats) in &rows {
                    ConstCounter::new(value(stats)).encode(family.encode_family(labels)?)?;
                }
                Ok::<_, std::fmt::Error>(())
            };
            counter(
                &mut encoder,
                "probe_packets_sent",
                &format!("Probe {what} sent to this target."),
                &|s| s.sent as f64,
            )?;
            counter(
                &mut encoder,
                "probe_packets_recv",
                "Replies received in time (a late reply is not counted).",
                &|s| s.received as f64,
            )?;
            counter(
                &mut encoder,
                "probe_latency_squared_seconds",
                "Sum of the squared round-trip times of the replies, for the standard deviation over any range.",
                &|s| s.latency_squared_sum,
            )?;
            counter(
                &mut encoder,
                "probe_user_clock_samples",
                "Replies whose round-trip time was measured with the user-space clock because a kernel timestamp was missing.",
                &|s| s.user_clock as f64,
            )?;
            counter(
                &mut encoder,
                "probe_user_clock_latency_seconds",
                "Sum of the round-trip times of the replies as the user-space clock saw them (send call to receive call), for comparison with the kernel-stamped sum.",
                &|s| s.user_latency_sum,
            )?;
            if tcp {
                counter(
                    &mut encoder,
                    "probe_rst",
                    "Replies that were RST (the host answered, no listener on the port); included in the received count.",
                    &|s| s.rst as f64,
                )?;
            }
            // The seed's sum of latencies is named like the window gauge plus `_total`; as an
            // OpenMetrics counter it would share the gauge's family name, so it is written as
            // an untyped sample with the seed's exact name.
            let name = format!("{prefix}_probe_latency_seconds_total");
            let mut family = encoder.encode_descriptor(
                &name,
                "Sum of the round-trip times of the replies (a counter), for the mean over any range.",
                None,
                MetricType::Unknown,
            )?;
            for (labels, stats) in &rows {
                ConstGauge::new(stats.latency_sum).encode(family.encode_family(labels)?)?;
            }
            let summaries: Vec<_> = rows
                .iter()
                .map(|(labels, stats)| (labels, stats.summary()))
                .collect();
            let name = format!("{prefix}_probe_latency_seconds");

            let mut family = encoder.encode_descriptor(&name, "Mean round-trip time of the replies in the window of the last samples; absent when none arrived.", None, MetricType::Gauge)?;
            for (labels, summary) in &summaries {
                if let Some(mean) = summary.mean {
                    ConstGauge::new(mean).encode(family.encode_family(*labels)?)?;
                }
            }
            let name = format!("{prefix}_probe_standard_deviation_seconds");

            let mut family = encoder.encode_descriptor(&name, "Standard deviation of the round-trip times in the window; absent when no reply arrived.", None, MetricType::Gauge)?;
            for (labels, summary) in &summaries {
                if let Some(deviation) = summary.deviation {
                    ConstGauge::new(deviation).encode(family.encode_family(*labels)?)?;
                }
            }
            let name = format!("{prefix}_probe_loss_ratio");

            let mut family = encoder.encode_descriptor(
                &name,
                "Fraction of the samples in the window without a reply within the timeout.",
                None,
                MetricType::Gauge,
            )?;
            for (labels, summary) in &summaries {
                ConstGauge::new(summary.loss_ratio).encode(family.encode_family(*labels)?)?;
            }
            let name = format!("{prefix}_probe_samples_count");

            let mut family = encoder.encode_descriptor(
                &name,
                "Samples in the window (replies and losses).",
                None,
                MetricType::Gauge,
            )?;
            for (labels, summary) in &summaries {
                ConstGauge::new(summary.samples as i64).encode(family.encode_family(*labels)?)?;
            }
            let name = format!("{prefix}_probe_rtt_seconds");

            let mut family = encoder.encode_descriptor(
                &name,
                "Round-trip times of the replies (exponential buckets from 50 microseconds).",
                None,
                MetricType::Histogram,
            )?;
            for (labels, stats) in &rows {
                family
                    .encode_family(labels)?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        stats.latency_sum,
                        stats.received,
                        &stats.histogram_buckets(),
                        None,
                    )?;
            }
        }
        Ok(())
    }
}

/// The meta metrics.
#[derive(Debug)]
struct MetaCollector(Arc<Meta>);

impl Collector for MetaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (icmp_active, tcp_active) = self.0.scheduler.active();
        for (prefix, active, counters, what) in [
            ("icmp", icmp_active, &self.0.icmp, "ICMP echo"),
            ("tcp", tcp_active, &self.0.tcp, "TCP SYN"),
        ] {
            let name = format!("{prefix}_active_probes");

            let help = format!("Targets being probed with {what} in the background.");
            let gauge = encoder.encode_descriptor(&name, &help, None, MetricType::Gauge)?;
            ConstGauge::new(active as i64).encode(gauge)?;
            for (name, help, value) in [
                (
                    "packets_sent",
                    format!("{what} probe packets sent."),
                    &counters.sent,
                ),
                (
                    "packets_recv",
                    format!("{what} replies matched to a probe in flight."),
                    &counters.received,
                ),
                (
                    "packets_error",
                    format!("{what} socket errors (failed sends and receives)."),
                    &counters.errors,
                ),
            ] {
                let name = format!("{prefix}_{name}");

                let metric = encoder.encode_descriptor(&name, &help, None, MetricType::Counter)?;
                ConstCounter::new(value.load(Ordering::Relaxed)).encode(metric)?;
            }
        }
        let refused = encoder.encode_descriptor(
            "network_probe_ping_targets_refused",
            "Targets (addresses times ports) refused because starting them would take the active \
             ones (icmp_active_probes + tcp_active_probes) past --ping.max-active-targets.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.scheduler.refused()).encode(refused)?;
        let missed = encoder.encode_descriptor(
            "network_probe_ping_sends_missed",
            "Probe packets not sent in time: a probe sent a whole interval or more after it was \
             due counts each interval it missed (held back by --ping.max-pps, by the pacing that \
             keeps every reply readable, or a daemon short of CPU).",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.scheduler.missed()).encode(missed)?;
        if self.0.hard {
            let metric = encoder.encode_descriptor(
                "network_probe_ping_hardware_timestamp_fallbacks",
                "Probe sockets opened with software timestamps although --ping.hard asked for \
                 hardware ones (the interface cannot stamp, or refused; the reason is in the \
                 daemon's one warning).",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(self.0.hardware_fallbacks.load(Ordering::Relaxed)).encode(metric)?;
            let metric = encoder.encode_descriptor(
                "network_probe_ping_hardware_timestamp_missing",
                "Replies measured with software timestamps (or the user clock) on sockets set up \
                 for hardware ones: the NIC did not stamp the request or the reply (the daemon \
                 warns once and applies SIOCSHWTSTAMP again, at most once a second per socket).",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(self.0.hardware_missing.count()).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn flags(args: &[&str]) -> Result<Flags, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            flags: Flags,
        }
        Wrapper::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|w| w.flags)
    }

    #[test]
    fn flag_defaults_and_minimums() {
        let defaults = flags(&[]).unwrap();
        assert_eq!(defaults.interval, Duration::from_secs(2));
        assert_eq!(defaults.timeout, Duration::from_secs(3));
        assert_eq!(defaults.expiry, Duration::from_secs(600));
        assert_eq!(defaults.max_pps, 10_000);
        assert_eq!(defaults.max_active_targets, 10_000);
        assert!(flags(&["--ping.max-active-targets", "0"]).is_err());
        assert_eq!(
            flags(&["--ping.max-active-targets", "500"])
                .unwrap()
                .max_active_targets,
            500
        );
        assert_eq!(defaults.interface4, "auto");
        let err = flags(&["--ping.interval", "5ms"]).unwrap_err().to_string();
        assert!(err.contains("below the minimum of 10ms"), "{err}");
        assert!(flags(&["--ping.max-pps", "0"]).is_err());
    }

    #[tokio::test]
    async fn bad_requests_name_the_value() {
        use crate::probe::{
            Module, Probers, SystemResolver,
            allowlist::Allowlist,
            handler::{Budget, Outcome, handle},
        };
        let probers = Probers::new(&flags(&["--ping.max-targets", "2"]).unwrap());
        let run = |pairs: Vec<(&str, &str)>| {
            let query = Query::from_pairs(pairs);
            let probers = &probers;
            async move {
                let module = Module::builtin(MODULE);
                let budget = Budget::Limit(Duration::from_secs(5));
                let allowlist = Allowlist::default();
                match handle(probers, module, &query, budget, &allowlist, &SystemResolver).await {
                    Outcome::BadRequest(err) => err.0,
                    other => panic!("{query:?}: expected a bad request, got {other:?}"),
                }
            }
        };
        assert!(run(vec![]).await.contains("missing parameter \"target\""));
        let err = run(vec![("target", "10.0.0.1"), ("ip_version", "5")]).await;
        assert!(err.contains("\"5\" is not 4, 6 or all"), "{err}");
        let err = run(vec![("target", "10.0.0.1"), ("tcp_port", "0")]).await;
        assert!(err.contains("\"0\" is not a port"), "{err}");
        let err = run(vec![("target", "10.0.0.1"), ("tcp_port", "http")]).await;
        assert!(err.contains("\"http\""), "{err}");
        let err = run(vec![("target", "10.0.0.1"), ("ip_version", "6")]).await;
        assert!(err.contains("has no IPv6 address"), "{err}");
        let err = run(vec![("target", "no-such-host.invalid")]).await;
        assert!(
            err.contains("cannot resolve \"no-such-host.invalid\""),
            "{err}"
        );
        let err = run(vec![
            ("target", "10.0.0.1"),
            ("target", "10.0.0.2"),
            ("target", "10.0.0.3"),
        ])
        .await;
        assert!(
            err.contains("3 probes requested") && err.contains("--ping.max-targets 2"),
            "{err}"
        );
        let err = run(vec![
            ("target", "10.0.0.1"),
            ("tcp_port", "1"),
            ("tcp_port", "2"),
            ("tcp_port", "3"),
        ])
        .await;
        assert!(err.contains("3 probes requested"), "{err}");
        let err = run(vec![("target", "10.0.0.1"), ("count", "3")]).await;
        assert!(err.contains("unknown parameter \"count\""), "{err}");
        let err = run(vec![("target", "224.0.0.1")]).await;
        assert!(err.contains("cannot be pinged"), "{err}");
    }

    #[test]
    fn random_values_differ() {
        let mut random = Random::new();
        assert_ne!(random.next_u64(), random.next_u64());
    }
}
