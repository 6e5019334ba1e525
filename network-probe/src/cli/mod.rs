//! Command-line flags, named as Prometheus exporters name them (`--web.*`, `--log.*`).

use std::{collections::BTreeMap, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, ValueEnum, parser::ValueSource};

use crate::{
    flows::{admission::RankBy, families::FlowFamilies, table::FlowLabels},
    kernel::datapath::{IngressHook, TcAttach},
    kernel::drops::DropsMode,
    support::units::parse_duration,
};

pub mod man;

/// Default `--web.listen-address`: every address, port 9435.
pub const DEFAULT_LISTEN_ADDRESS: &str = ":9435";

/// Default `--web.max-connections`: with the probe sockets of 64 concurrent probes and the
/// daemon's own descriptors (maps, programs, links, netlink, listeners) about 700
/// descriptors, within the usual soft limit of 1024.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;

/// Default `--flows.max-series`, the series budget, sized for fleets: with the default three
/// families (`--flows.families`) a host exports at most 3 x (500 + one `other` row per
/// interface) flow series, 1,506 with two interfaces, plus the daemon's other 527 (measured,
/// two interfaces): about 2,000, the order of a node_exporter. A thousand hosts make 2
/// million series, what one large Prometheus holds, or fourteen remote-write tenants at Mimir's
/// default of 150,000 series per tenant (docs/fleet.md). The former default, 5,000 label sets
/// with the eleven families there were then, allowed 55,000 flow series per host.
pub const DEFAULT_MAX_SERIES: usize = 500;

/// Network telemetry daemon: eBPF traffic accounting for Prometheus.
#[derive(Debug, Clone, Parser)]
#[command(name = "network-probe", version, about, long_about = None)]
pub struct Cli {
    /// Address to listen on for the web interface and telemetry, as HOST:PORT, [V6]:PORT or :PORT
    /// (all addresses).
    #[arg(long = "web.listen-address", value_name = "ADDRESS", default_value = DEFAULT_LISTEN_ADDRESS, global = true)]
    pub listen_address: String,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics",
          value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// Configuration file (YAML): probe modules, interfaces, flows, Jool, probe allowlist; see
    /// docs/configuration.md. Flags given on the command line override it. Reloaded on SIGHUP
    /// and (with --web.enable-lifecycle) POST /-/reload.
    #[arg(long = "config.file", value_name = "PATH", global = true)]
    pub config_file: Option<std::path::PathBuf>,

    /// Web configuration file in the Prometheus exporter-toolkit format: TLS, client
    /// certificates, basic auth users (bcrypt hashes), response headers. Read once at start.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<std::path::PathBuf>,

    /// Most /probe requests answered at once; more get 503 with Retry-After.
    #[arg(long = "web.max-concurrent-probes", value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_probes: u32,

    /// Most HTTP connections open at once, over all listeners. When all are taken, a new
    /// connection takes the slot of the one stalled longest (waiting for a request, or not
    /// reading its response); while every one is busy answering, accepting pauses.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Serve POST /-/reload (as Prometheus's flag of the same name); without it /-/reload
    /// answers 403. SIGHUP reloads either way.
    #[arg(long = "web.enable-lifecycle")]
    pub enable_lifecycle: bool,

    /// Extra listener whose /probe uses MODULE when the request names no module= (repeatable),
    /// e.g. ping=:9116, so scrape configs of the single-purpose exporters keep working with
    /// only the port changed. Same routes, TLS and auth as --web.listen-address.
    #[arg(long = "web.probe-listen", value_name = "MODULE=ADDRESS", value_parser = parse_probe_listen)]
    pub probe_listen: Vec<ProbeListen>,

    /// Target /probe may reach (repeatable): a network (10.0.0.0/8, 2001:db8::/32, 192.0.2.7)
    /// or a host name pattern (tftp1.example.com, *.example.com). None: every target.
    #[arg(long = "probe.allow", value_name = "NETWORK|HOST", value_parser = crate::probe::allowlist::parse_entry)]
    pub probe_allow: Vec<crate::probe::allowlist::Entry>,

    /// Name lookups of probe targets running at once: threads of the daemon's own resolver
    /// (getaddrinfo), with 8 lookups per thread waiting in front. A lookup that finds no
    /// thread before its probe's deadline, or the queue full, fails as resolve_failed
    /// (counted in network_probe_probe_lookups_total); nothing else waits for these threads.
    #[arg(long = "probe.max-concurrent-lookups", value_name = "N",
          default_value_t = crate::probe::target::DEFAULT_MAX_CONCURRENT_LOOKUPS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrent_lookups: u32,

    /// Interface to attach the datapath to (repeatable). Default: the interfaces of the IPv4 and
    /// IPv6 default routes.
    #[arg(long = "interface", value_name = "NAME", global = true)]
    pub interfaces: Vec<String>,

    /// Program watching ingress: a TC classifier (TCX), or XDP in generic or native mode for
    /// hosts where TC ingress costs too much. Egress always uses TC.
    #[arg(long = "datapath.ingress", value_name = "HOOK", value_enum, default_value_t = IngressHook::Tc, global = true)]
    pub ingress: IngressHook,

    /// How TC programs are attached: TCX links where the kernel has them (6.6+), else cls_bpf
    /// filters on a clsact qdisc over netlink (`auto`); or force one.
    #[arg(long = "datapath.tc-attach", value_name = "MODE", value_enum, default_value_t = TcAttach::Auto, global = true)]
    pub tc_attach: TcAttach,

    /// Count the packets the kernel drops, by reason, interface and protocol
    /// (network_probe_drops_total; a BTF tracepoint on kfree_skb): `auto` where the kernel can
    /// (BTF, Linux 5.5+; reasons 5.17+), `on` to refuse to start without it, `off`.
    #[arg(long = "datapath.drops", value_name = "MODE", value_enum, default_value_t = DropsMode::Auto, global = true)]
    pub drops: DropsMode,

    /// bpffs directory the kernel maps are pinned in, so counters survive a restart or an
    /// upgrade of the daemon (even after a crash); "" to keep them only while the daemon runs.
    #[arg(long = "datapath.pin-path", value_name = "DIR", default_value = crate::kernel::pinning::DEFAULT_PIN_PATH, global = true)]
    pub pin_path: String,

    /// File keeping what user space adds to the pinned maps (totals of flows and interfaces
    /// that left them), so those counters survive restarts too; "" for none. Used only with
    /// --datapath.pin-path.
    #[arg(long = "datapath.state-file", value_name = "PATH", default_value = crate::flows::state::DEFAULT_STATE_FILE, global = true)]
    pub state_file: String,

    /// Capacity of each kernel flow map, IPv4 and IPv6 (one entry per TCP connection direction);
    /// least recently used flows are evicted when one is full (counted in
    /// network_probe_flows_evicted_total).
    #[arg(long = "flows.max-entries", value_name = "N", default_value_t = network_probe_common::FLOWS_DEFAULT_MAX_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub flow_map_entries: u32,

    /// Slots of the kernel flow slot table, where new TCP flow directions are counted first
    /// (cheaper per packet than the LRU maps; a flow whose slot is taken goes to them): a power
    /// of two up to 1048576, or 0 for none. Kernel memory: 64 bytes per slot plus 80 bytes per
    /// slot and CPU.
    #[arg(long = "flows.slots", value_name = "N", default_value_t = network_probe_common::FLOW_SLOTS_DEFAULT,
          value_parser = parse_flow_slots)]
    pub flow_slots: u32,

    /// Labels of the flow series, comma-separated, from: interface, direction, src, dst,
    /// src_port, dst_port.
    #[arg(long = "flows.labels", value_name = "LIST", default_value = FlowLabels::DEFAULT)]
    pub flow_labels: FlowLabels,

    /// The series budget: most flow label sets exported individually, the heaviest by
    /// --flows.rank-by over --flows.rank-window; the others are summed into one `other` row per
    /// interface. Prometheus series per host from flows: (N + interfaces) x families.
    #[arg(long = "flows.max-series", value_name = "N", default_value_t = DEFAULT_MAX_SERIES)]
    pub flow_max_series: usize,

    /// Families each flow series carries, comma-separated (the metric name without
    /// network_probe_flow_), or `all`: packets, bytes, retransmits, rst, syn, fin, zero_window,
    /// df_packets, window_scale, first_seen_timestamp_seconds, last_seen_timestamp_seconds,
    /// connection_attempts, ce_packets, tcp_ece_segments, tcp_cwr_segments, pmtu_messages,
    /// rtt_samples, rtt_min_seconds, rtt_seconds.
    #[arg(long = "flows.families", value_name = "LIST", default_value = FlowFamilies::DEFAULT)]
    pub flow_families: FlowFamilies,

    /// The measure label sets are ranked by for the series budget.
    #[arg(long = "flows.rank-by", value_name = "MEASURE", value_enum, default_value_t = RankBy::Bytes)]
    pub flow_rank_by: RankBy,

    /// The window of the ranking: a label set's weight is what it moved, decayed with this as
    /// time constant (e.g. 30s, 1m). An admitted series keeps its place unless a challenger
    /// weighs twice as much.
    #[arg(long = "flows.rank-window", value_name = "DURATION", default_value = crate::flows::admission::DEFAULT_WINDOW, value_parser = parse_duration)]
    pub flow_rank_window: Duration,

    /// A flow without packets for this long is folded into its series' total and removed from
    /// the kernel map (e.g. 90s, 5m).
    #[arg(long = "flows.idle-timeout", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub flow_idle_timeout: Duration,

    /// A TCP connection attempt (SYN) with no SYN-ACK, RST or ICMP unreachable within this long
    /// counts as a timeout (e.g. 3s, 500ms; at most 10m).
    #[arg(long = "flows.connect-timeout", value_name = "DURATION", default_value = "3s",
          value_parser = parse_connect_timeout)]
    pub flow_connect_timeout: Duration,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// `check` or `probe`; without one the daemon runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub jool: crate::jool::Flags,

    #[command(flatten)]
    pub ping: crate::probe::ping::Flags,

    /// The options given on the command line (clap id to the values as typed); they override
    /// `--config.file`. Filled by [`Cli::parse_args`] and [`Cli::try_parse_args_from`].
    #[arg(skip)]
    pub explicit: BTreeMap<String, Vec<String>>,
}

impl Cli {
    /// Parses the process's command line (exits on errors, as clap does), remembering which
    /// options it gave.
    pub fn parse_args() -> Cli {
        Self::try_parse_args_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Parses `args` (the first is the program name), remembering which options they gave.
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        for arg in Cli::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                let values = matches
                    .get_raw(id)
                    .map(|raw| {
                        raw.map(|v| v.to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                // A switch (--jool.disable) has no raw value.
                let values = if values.is_empty() && !arg.get_action().takes_values() {
                    vec!["true".to_string()]
                } else {
                    values
                };
                cli.explicit.insert(id.to_string(), values);
            }
        }
        Ok(cli)
    }
}

/// What to do instead of running the daemon. The daemon's flags go before the subcommand;
/// `--interface`, `--web.listen-address` and `--datapath.ingress` may also follow it.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Check whether this host can run the daemon (capabilities, kernel, interfaces, sockets,
    /// Jool, listen address): one OK/WARN/FAIL line per item; exit 1 if anything FAILs.
    Check,
    /// Run one probe as /probe would and print its metrics; exit 1 if it fails, 2 on bad
    /// parameters.
    Probe(ProbeArgs),
}

/// Arguments of `network-probe probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The module, as in `module=`: one of `--config.file`, or a prober (tftp, iperf3, ping).
    #[arg(value_name = "MODULE")]
    pub module: String,

    /// The target, as in `target=`.
    #[arg(value_name = "TARGET")]
    pub target: String,

    /// Further query parameters of the prober, e.g. `file=boot.img` or `tcp_port=22`.
    #[arg(value_name = "KEY=VALUE")]
    pub parameters: Vec<String>,

    /// How long the probe may take (its deadline, as a scrape timeout would set it).
    #[arg(long = "timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// One `--web.probe-listen MODULE=ADDRESS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeListen {
    /// The module `/probe` uses on this listener when the request names none.
    pub module: &'static str,
    /// As in `--web.listen-address`.
    pub address: String,
}

fn parse_probe_listen(value: &str) -> Result<ProbeListen, String> {
    let (module, address) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not MODULE=ADDRESS (e.g. ping=:9116)"))?;
    let module = crate::probe::spec(module)
        .map(|spec| spec.name)
        .ok_or_else(|| {
            format!(
                "{value:?}: unknown module {module:?} (known: {})",
                crate::probe::names().join(", ")
            )
        })?;
    match crate::support::listen_address::resolve(address) {
        Ok(_) => Ok(ProbeListen {
            module,
            address: address.to_string(),
        }),
        Err(crate::error::Error::ListenAddress { reason, .. }) => {
            Err(format!("{value:?}: address {address:?}: {reason}"))
        }
        Err(err) => Err(format!("{value:?}: {err}")),
    }
}

/// `--flows.slots`: 0 or a power of two up to [`network_probe_common::FLOW_SLOTS_LIMIT`].
pub fn parse_flow_slots(value: &str) -> Result<u32, String> {
    let limit = network_probe_common::FLOW_SLOTS_LIMIT;
    let slots: u32 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number of slots"))?;
    if slots == 0 || (slots.is_power_of_two() && slots <= limit) {
        Ok(slots)
    } else {
        Err(format!(
            "{value:?} slots: must be 0 (no slot table) or a power of two up to {limit}"
        ))
    }
}

/// Longest `--flows.connect-timeout`: an attempt waits in a kernel map that long, and SYN
/// retries end well before it.
const CONNECT_TIMEOUT_LIMIT: Duration = Duration::from_secs(600);

/// `--flows.connect-timeout`: a positive duration up to [`CONNECT_TIMEOUT_LIMIT`].
pub fn parse_connect_timeout(value: &str) -> Result<Duration, String> {
    let timeout = parse_duration(value)?;
    if timeout > CONNECT_TIMEOUT_LIMIT {
        return Err(format!(
            "{value:?} is longer than the longest connect timeout, {}s",
            CONNECT_TIMEOUT_LIMIT.as_secs()
        ));
    }
    Ok(timeout)
}

impl Cli {
    /// The datapath's load-time choices from the flags, for a kernel with or without TCX.
    pub fn datapath_config(&self, kernel_has_tcx: bool) -> crate::kernel::datapath::DatapathConfig {
        crate::kernel::datapath::DatapathConfig {
            ingress: self.ingress,
            tc_attach: self.tc_attach.resolve(kernel_has_tcx),
            flow_map_entries: self.flow_map_entries,
            flow_slots: self.flow_slots,
            pin_path: (!self.pin_path.is_empty()).then(|| self.pin_path.clone().into()),
            drops: self.drops,
            connect_timeout: self.flow_connect_timeout,
        }
    }

    /// The state file in use: none without pinning (its totals complete pinned maps only).
    pub fn state_file(&self) -> Option<std::path::PathBuf> {
        (!self.pin_path.is_empty() && !self.state_file.is_empty())
            .then(|| self.state_file.clone().into())
    }
}

/// Severity threshold for `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

fn parse_telemetry_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with '/'"));
    }
    if value.starts_with("/-/") || value == "/" {
        return Err(format!("{value:?} collides with a built-in endpoint"));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_exporter_conventions() {
        let cli = Cli::try_parse_from(["network-probe"]).unwrap();
        assert_eq!(cli.listen_address, ":9435");
        assert_eq!(cli.telemetry_path, "/metrics");
        assert!(cli.interfaces.is_empty());
        assert_eq!(cli.log_level, LogLevel::Info);
    }

    /// The help of `--flows.families` names every family the code knows, in its order.
    #[test]
    fn the_families_help_names_every_family() {
        let command = Cli::command();
        let help = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some("flows.families"))
            .and_then(|arg| arg.get_help())
            .expect("--flows.families has a help")
            .to_string();
        let names = FlowFamilies::all().to_string().replace(',', ", ");
        assert!(
            help.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .trim_end_matches('.')
                .ends_with(&format!("or `all`: {names}")),
            "{help}"
        );
    }

    #[test]
    fn flow_flags() {
        let cli = Cli::try_parse_from(["network-probe"]).unwrap();
        assert_eq!(cli.flow_idle_timeout, Duration::from_secs(300));
        assert_eq!(cli.flow_map_entries, 65_536);
        assert_eq!(cli.ingress, IngressHook::Tc);
        let err = Cli::try_parse_from(["network-probe", "--flows.labels", "src,port"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown flow label \"port\""), "{err}");
        let err = Cli::try_parse_from(["network-probe", "--flows.max-entries", "1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("'1'"), "{err}");
        assert_eq!(cli.flow_slots, network_probe_common::FLOW_SLOTS_DEFAULT);
        for (given, slots) in [("0", 0), ("16", 16), ("1048576", 1 << 20)] {
            let cli = Cli::try_parse_from(["network-probe", "--flows.slots", given]).unwrap();
            assert_eq!(cli.flow_slots, slots);
        }
        for bad in ["1000", "2097152", "lots"] {
            let err = Cli::try_parse_from(["network-probe", "--flows.slots", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(
            parse_flow_slots("1000").unwrap_err(),
            "\"1000\" slots: must be 0 (no slot table) or a power of two up to 1048576"
        );
    }

    #[test]
    fn connection_limit_and_lifecycle_flags() {
        let cli = Cli::try_parse_from(["network-probe"]).unwrap();
        assert_eq!(cli.max_connections, 512);
        assert!(!cli.enable_lifecycle);
        let cli = Cli::try_parse_from([
            "network-probe",
            "--web.max-connections",
            "64",
            "--web.enable-lifecycle",
        ])
        .unwrap();
        assert_eq!(cli.max_connections, 64);
        assert!(cli.enable_lifecycle);
        assert!(Cli::try_parse_from(["network-probe", "--web.max-connections", "0"]).is_err());
    }

    #[test]
    fn interface_is_repeatable() {
        let cli = Cli::try_parse_from(["network-probe", "--interface", "a0", "--interface", "b0"])
            .unwrap();
        assert_eq!(cli.interfaces, ["a0", "b0"]);
    }

    #[test]
    fn probe_listeners_name_module_and_address() {
        let cli = Cli::try_parse_from([
            "network-probe",
            "--web.probe-listen",
            "ping=:9116",
            "--web.probe-listen",
            "iperf3=127.0.0.1:9579",
        ])
        .unwrap();
        assert_eq!(
            cli.probe_listen,
            [
                ProbeListen {
                    module: "ping",
                    address: ":9116".into()
                },
                ProbeListen {
                    module: "iperf3",
                    address: "127.0.0.1:9579".into()
                }
            ]
        );
        for (bad, said) in [
            ("ping", "\"ping\" is not MODULE=ADDRESS"),
            ("icmp=:9116", "unknown module \"icmp\""),
            ("ping=9116", "address \"9116\""),
            ("tftp=:70000", "\"tftp=:70000\""),
        ] {
            let err =
                Cli::try_parse_from(["network-probe", "--web.probe-listen", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let err = err.to_string();
            assert!(err.contains(said), "{bad}: {err}");
        }
        let err = Cli::try_parse_from(["network-probe", "--probe.allow", "10.1.0.0/8"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean 10.0.0.0/8?"), "{err}");
    }

    #[test]
    fn bad_values_name_the_value() {
        let err = Cli::try_parse_from(["network-probe", "--web.telemetry-path", "metrics"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"metrics\" must start with '/'"), "{err}");
        let err = Cli::try_parse_from(["network-probe", "--log.level", "loud"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("loud"), "{err}");
    }
}
