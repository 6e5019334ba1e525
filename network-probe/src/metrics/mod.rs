//! The Prometheus registry: collectors that read live state (the datapath's maps, the flow
//! table's own counters) at scrape time, plus build information; the per-flow-series families
//! are written next to it by [`crate::flows::exposition`]. Names follow Prometheus conventions:
//! base units, `_total` on counters; README.md documents each one.

mod kernel_events;
mod rtt;
mod signals;

use std::sync::Arc;

use network_probe_common::{
    DEVICE_STATS_MAP, DEVICE_STATS_MAX_ENTRIES, FLOW_SLOTS_MAP, FLOWS4_MAP, FLOWS6_MAP,
    IFINDEX_LIMIT, IFINDEX_SLOTS_MAP, RTT_BUCKETS, SIZE_BUCKETS, Unclassified,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{flows::tracker::FlowTracker, kernel::datapath::DeviceSample};

/// Builds the registry served on the telemetry path.
pub fn registry(
    flows: Arc<FlowTracker>,
    jool: &crate::jool::Flags,
    probers: &crate::probe::Probers,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BuildInfo));
    registry.register_collector(Box::new(DatapathCollector { flows }));
    registry.register_collector(Box::new(crate::jool::JoolCollector::new(jool)));
    registry.register_collector(Box::new(crate::probe::target::LookupCollector));
    for collector in probers.meta_collectors() {
        registry.register_collector(collector);
    }
    registry
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

/// Rewrites the OpenMetrics text of [`render`] into the Prometheus text format 0.0.4, for
/// clients that do not ask for OpenMetrics (promtool, curl, other scrapers); prometheus-client
/// has no encoder for it. Samples are the same in both formats; the family headers differ:
/// - a counter family `x` has samples `x_total`; format 0.0.4 names the family `x_total`;
/// - an info family `x` has samples `x_info`; format 0.0.4 has no info type: gauge `x_info`;
/// - `unknown` is `untyped`, and a stateset is a gauge;
/// - `# UNIT` and `# EOF` do not exist in format 0.0.4.
///
/// The input is our own encoder's output (HELP, then TYPE, then UNIT, then the samples).
pub fn openmetrics_to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = lines
                .peek()
                .and_then(|next| next.strip_prefix("# TYPE "))
                .and_then(|declared| declared.split_once(' '))
                .filter(|(declared, _)| *declared == name)
                .map(|(_, kind)| kind);
            let (family, _) = text_004_family(name, kind.unwrap_or("unknown"));
            out.push_str(&format!("# HELP {family} {help}\n"));
        } else if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|declared| declared.split_once(' '))
        {
            let (family, kind) = text_004_family(name, kind);
            out.push_str(&format!("# TYPE {family} {kind}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The format 0.0.4 family name and type of the OpenMetrics family `name` of type `kind`.
fn text_004_family<'a>(name: &'a str, kind: &'a str) -> (std::borrow::Cow<'a, str>, &'a str) {
    match kind {
        "counter" => (format!("{name}_total").into(), "counter"),
        "info" => (format!("{name}_info").into(), "gauge"),
        "unknown" => (name.into(), "untyped"),
        "stateset" => (name.into(), "gauge"),
        _ => (name.into(), kind),
    }
}

/// `network_probe_build_info`: constant 1 with the version and git revision as labels.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "network_probe_build_info",
            "A metric with a constant value of 1, labelled with the version and git revision of \
             this network-probe binary.",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("NETWORK_PROBE_GIT_REVISION")),
        ];
        ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)
    }
}

/// Everything the eBPF datapath counts, read from the kernel maps on each scrape.
#[derive(Debug)]
struct DatapathCollector {
    flows: Arc<FlowTracker>,
}

/// Writes one counter family: `values` yields (labels, value).
fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a counter without labels.
fn single_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(metric)
}

/// Writes a gauge without labels.
fn single_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Writes one gauge family.
fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One histogram from per-bucket counts and the upper bound of each bucket (the last bucket
/// is exported as +Inf).
fn histogram<L: EncodeLabelSet>(
    family: &mut prometheus_client::encoding::MetricEncoder<'_>,
    labels: &L,
    counts: &[u64],
    upper_bound: impl Fn(usize) -> f64,
    sum: f64,
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let bound = if i + 1 == counts.len() {
                f64::INFINITY
            } else {
                upper_bound(i)
            };
            (bound, count)
        })
        .collect();
    let count = counts.iter().sum();
    family
        .encode_family(labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

type DeviceLabels<'a> = [(&'static str, &'a str); 2];

fn device_labels(sample: &DeviceSample) -> DeviceLabels<'_> {
    [
        ("interface", sample.interface.as_str()),
        ("direction", sample.direction.as_str()),
    ]
}

impl DatapathCollector {
    fn encode_devices(
        &self,
        encoder: &mut DescriptorEncoder,
        devices: &[DeviceSample],
    ) -> Result<(), std::fmt::Error> {
        type Field = fn(&network_probe_common::DeviceStats) -> u64;
        let counters: [(&str, &str, Field); 10] = [
            (
                "network_probe_interface_packets",
                "Packets seen on an interface, per direction. A GSO/GRO super-packet counts as \
                 the number of wire segments it carries.",
                |s| s.packets,
            ),
            (
                "network_probe_interface_bytes",
                "Bytes seen on an interface, per direction: each packet's length including its \
                 link-layer header (a GSO super-packet counts its length once).",
                |s| s.bytes,
            ),
            (
                "network_probe_interface_tcp_packets",
                "TCP segments on the wire seen on an interface (GSO segments counted).",
                |s| s.tcp_packets,
            ),
            (
                "network_probe_interface_tcp_retransmits",
                "TCP segments whose sequence range starts before the highest sequence number \
                 already sent in their flow direction (GSO segments counted).",
                |s| s.tcp_retransmits,
            ),
            (
                "network_probe_interface_tcp_rst",
                "TCP segments with the RST flag.",
                |s| s.tcp_rst,
            ),
            (
                "network_probe_interface_tcp_syn",
                "TCP segments with the SYN flag (SYN and SYN-ACK).",
                |s| s.tcp_syn,
            ),
            (
                "network_probe_interface_tcp_fin",
                "TCP segments with the FIN flag.",
                |s| s.tcp_fin,
            ),
            (
                "network_probe_interface_tcp_zero_window",
                "TCP segments, other than RSTs, advertising a zero receive window.",
                |s| s.tcp_zero_window,
            ),
            (
                "network_probe_interface_ipv4_df_packets",
                "IPv4 packets of any protocol with the Don't Fragment bit set, whatever other \
                 flags are set.",
                |s| s.ipv4_df,
            ),
            (
                "network_probe_interface_flows_created",
                "Flow entries (one per TCP connection direction) created in the kernel flow maps.",
                |s| s.flows_created,
            ),
        ];
        for (name, help, field) in counters {
            counter_family(
                encoder,
                name,
                help,
                devices.iter().map(|d| (device_labels(d), field(&d.stats))),
            )?;
        }
        counter_family(
            encoder,
            "network_probe_interface_flow_create_failures",
            "Flow entries the datapath failed to create (another CPU created the same flow at \
             the same moment, or the map could not grow).",
            devices
                .iter()
                .map(|d| (device_labels(d), d.stats.flow_create_failures)),
        )?;

        let mut unclassified = encoder.encode_descriptor(
            "network_probe_interface_unclassified_packets",
            "Packets the parser did not classify as TCP over IPv4/IPv6, by reason. They pass \
             untouched like every other packet.",
            None,
            MetricType::Counter,
        )?;
        for device in devices {
            for reason in Unclassified::ALL {
                let labels = [
                    ("interface", device.interface.as_str()),
                    ("direction", device.direction.as_str()),
                    ("reason", reason.as_str()),
                ];
                let value = device.stats.unclassified[reason as usize];
                ConstCounter::new(value).encode(unclassified.encode_family(&labels)?)?;
            }
        }

        let size_bound = |i: usize| ((1u64 << i) - 1) as f64;
        let mut ip_size = encoder.encode_descriptor(
            "network_probe_interface_ip_packet_size_bytes",
            "Sizes of IP packets (IP header included) seen on an interface, log2 buckets \
             computed in the kernel; a GSO super-packet is one observation of its full size.",
            None,
            MetricType::Histogram,
        )?;
        for device in devices {
            histogram(
                &mut ip_size,
                &device_labels(device),
                &device.stats.ip_size,
                size_bound,
                device.stats.ip_size_sum as f64,
            )?;
        }
        debug_assert_eq!(SIZE_BUCKETS, network_probe_common::SIZE_BUCKETS);
        let mut payload_size = encoder.encode_descriptor(
            "network_probe_interface_tcp_payload_size_bytes",
            "TCP payload sizes seen on an interface, log2 buckets computed in the kernel; a GSO \
             super-packet is one observation of its full payload.",
            None,
            MetricType::Histogram,
        )?;
        for device in devices {
            histogram(
                &mut payload_size,
                &device_labels(device),
                &device.stats.tcp_payload_size,
                size_bound,
                device.stats.tcp_payload_sum as f64,
            )?;
        }

        let mut rtt = encoder.encode_descriptor(
            "network_probe_tcp_handshake_rtt_seconds",
            "Passive TCP handshake round-trip times on an interface: SYN to SYN-ACK for \
             connections this side opened (egress SYN), SYN-ACK to ACK for connections the \
             peer opened (ingress SYN). Retransmitted handshakes give no sample.",
            None,
            MetricType::Histogram,
        )?;
        let mut by_interface: Vec<(&str, [u64; RTT_BUCKETS], u64)> = Vec::new();
        for device in devices {
            let entry = match by_interface.iter_mut().find(|e| e.0 == device.interface) {
                Some(entry) => entry,
                None => {
                    by_interface.push((&device.interface, [0; RTT_BUCKETS], 0));
                    by_interface.last_mut().expect("just pushed")
                }
            };
            for (total, count) in entry.1.iter_mut().zip(device.stats.handshake_rtt) {
                *total += count;
            }
            entry.2 += device.stats.handshake_rtt_sum_ns;
        }
        for (interface, counts, sum_ns) in by_interface {
            histogram(
                &mut rtt,
                &[("interface", interface)],
                &counts,
                |i| (1u64 << i) as f64 * 1e-6,
                sum_ns as f64 * 1e-9,
            )?;
        }
        Ok(())
    }

    /// TCP connection attempts per watched interface and direction (the SYN's): outcomes as
    /// the last flow refresh counted them (see [`crate::flows::outcomes`]), SYN retransmits
    /// and untracked attempts from the kernel. Interfaces forgotten since start keep their
    /// outcome totals; their kernel counters leave with their slot.
    fn encode_attempts(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::flows::outcomes::Outcome;
        use network_probe_common::{ConnectStats, Direction};
        let datapath = self.flows.datapath();
        let names = datapath.interface_names();
        let mut rows: std::collections::BTreeMap<(u32, u8), ([u64; 4], Option<ConnectStats>)> =
            std::collections::BTreeMap::new();
        for (ifindex, direction, stats) in datapath.connect_samples() {
            rows.entry((ifindex, direction as u8)).or_default().1 = Some(stats);
        }
        for (key, counts) in self.flows.attempt_totals() {
            rows.entry(key).or_default().0 = counts;
        }
        let labels = |&(ifindex, direction): &(u32, u8)| {
            let interface = names
                .get(&ifindex)
                .cloned()
                .unwrap_or_else(|| format!("ifindex{ifindex}"));
            let direction =
                Direction::from_raw(u32::from(direction)).map_or("unknown", |d| d.as_str());
            (interface, direction)
        };
        counter_family(
            encoder,
            "network_probe_tcp_connection_attempts",
            "TCP connection attempts (SYNs without ACK) seen on an interface, by the direction \
             of the SYN and outcome: answered (SYN-ACK), reset (RST answering the SYN), \
             unreachable (ICMP/ICMPv6 destination unreachable quoting it) or timeout (none of \
             these within --flows.connect-timeout). Counted at the flow refresh after the \
             outcome.",
            rows.iter().flat_map(|(key, (counts, _))| {
                let (interface, direction) = labels(key);
                Outcome::ALL.map(|outcome| {
                    (
                        [
                            ("interface", interface.clone()),
                            ("direction", direction.to_string()),
                            ("outcome", outcome.as_str().to_string()),
                        ],
                        counts[outcome as usize],
                    )
                })
            }),
        )?;
        let kernel = |field: fn(&ConnectStats) -> u64| {
            rows.iter().filter_map(move |(key, (_, stats))| {
                let (interface, direction) = labels(key);
                stats.as_ref().map(|stats| {
                    (
                        [
                            ("interface", interface),
                            ("direction", direction.to_string()),
                        ],
                        field(stats),
                    )
                })
            })
        };
        counter_family(
            encoder,
            "network_probe_tcp_syn_retransmits",
            "SYNs repeating the sequence number of the connection attempt in progress on their \
             4-tuple, by interface and direction.",
            kernel(|stats| stats.syn_retransmits),
        )?;
        counter_family(
            encoder,
            "network_probe_tcp_connection_attempts_untracked",
            "TCP connection attempts not followed because the kernel's pending-SYN map was full \
             (counted in no outcome).",
            kernel(|stats| stats.untracked),
        )
    }

    /// The flow table's own metrics. The per-series families are written by
    /// [`crate::flows::exposition`], from the snapshot the same scrape took just before.
    fn encode_flows(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.flows.table();
        let stats = table.stats();
        single_counter(
            encoder,
            "network_probe_flows_evicted",
            "Flows the kernel evicted from the full flow map before they went idle; their \
             counts up to the last read are kept, later packets of theirs are lost.",
            stats.evicted,
        )?;
        single_counter(
            encoder,
            "network_probe_flows_idle_removed",
            "Flows removed from the kernel map after the idle timeout, their counts kept.",
            stats.idle_removed,
        )?;
        single_counter(
            encoder,
            "network_probe_flow_series_expired",
            "Flow series that went idle and were folded into their interface's other row.",
            stats.series_expired,
        )?;
        single_gauge(
            encoder,
            "network_probe_flow_series",
            "Flow series currently exported (the other rows included).",
            table.series_count() as f64,
        )?;
        single_gauge(
            encoder,
            "network_probe_flow_series_budget",
            "Flow label sets that may have a series of their own (--flows.max-series).",
            table.options().max_series as f64,
        )?;
        single_gauge(
            encoder,
            "network_probe_flow_series_admitted",
            "Flow label sets with a series of their own now, against the budget.",
            table.admitted() as f64,
        )?;
        single_gauge(
            encoder,
            "network_probe_flow_label_sets_in_other",
            "Flow label sets with live flows beyond the budget, counted in their interface's \
             other row.",
            table.in_other() as f64,
        )?;
        single_counter(
            encoder,
            "network_probe_flow_series_ranked_out",
            "Flow series folded into their interface's other row after leaving the top \
             --flows.max-series by --flows.rank-by.",
            stats.series_ranked_out,
        )?;
        let datapath = self.flows.datapath();
        let capacity = datapath.flow_map_capacity();
        let slots = datapath.flow_slots();
        let entries = datapath.flow_map_entries();
        gauge_family(
            encoder,
            "network_probe_datapath_map_entries",
            "Entries currently in an eBPF map of the datapath (FLOW_SLOTS: slots holding a flow).",
            [
                ([("map", FLOWS4_MAP)], entries.flows4 as f64),
                ([("map", FLOWS6_MAP)], entries.flows6 as f64),
                ([("map", FLOW_SLOTS_MAP)], entries.slots as f64),
            ],
        )?;
        gauge_family(
            encoder,
            "network_probe_datapath_map_capacity",
            "Maximum number of entries an eBPF map of the datapath can hold.",
            [
                ([("map", FLOWS4_MAP)], f64::from(capacity)),
                ([("map", FLOWS6_MAP)], f64::from(capacity)),
                ([("map", FLOW_SLOTS_MAP)], f64::from(slots)),
                (
                    [("map", DEVICE_STATS_MAP)],
                    f64::from(DEVICE_STATS_MAX_ENTRIES),
                ),
                ([("map", IFINDEX_SLOTS_MAP)], f64::from(IFINDEX_LIMIT)),
            ],
        )?;
        Ok(())
    }
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let datapath = self.flows.datapath();
        let devices = datapath.device_samples();
        self.encode_devices(&mut encoder, &devices)?;
        self.encode_signals(&mut encoder)?;
        self.encode_rtt(&mut encoder)?;
        gauge_family(
            &mut encoder,
            "network_probe_datapath_programs_attached",
            "1 for each eBPF program attached to an interface, labelled with the program.",
            datapath.attached().iter().map(|(interface, hook)| {
                (
                    [
                        ("interface", interface.clone()),
                        ("program", hook.as_str().to_string()),
                    ],
                    1.0,
                )
            }),
        )?;
        self.encode_attempts(&mut encoder)?;
        kernel_events::encode(&mut encoder, &datapath.kernel_events())?;
        let (drops, lost) = datapath.drop_samples();
        counter_family(
            &mut encoder,
            "network_probe_drops",
            "Packets the kernel dropped (kfree_skb), host-wide, by the kernel's drop reason \
             (names from its BTF enum skb_drop_reason), protocol class and interface (a watched \
             one, else other). Only reasons that occurred; absent without drop reasons (see \
             `check`).",
            drops.into_iter().map(|sample| {
                (
                    [
                        ("interface", sample.interface),
                        ("reason", sample.reason),
                        ("protocol", sample.protocol.to_string()),
                    ],
                    sample.drops,
                )
            }),
        )?;
        single_counter(
            &mut encoder,
            "network_probe_drops_lost",
            "Kernel drops not counted in network_probe_drops_total: its map was full.",
            lost,
        )?;
        let tc_attach = datapath.tc_attach().as_str();
        gauge_family(
            &mut encoder,
            "network_probe_datapath_tc_attach_mode",
            "1 for the way TC programs are attached in this run: tcx (BPF links, Linux 6.6+) or \
             netlink (cls_bpf filters on a clsact qdisc).",
            [([("mode", tc_attach.to_string())], 1.0)],
        )?;
        gauge_family(
            &mut encoder,
            "network_probe_datapath_map_origin",
            "1 for where each eBPF map's contents came from at start: reused (pinned by an \
             earlier run, counters continue), created (nothing pinned), recreated (a pinned map \
             of another layout or size was discarded: counters restarted), unpinned \
             (--datapath.pin-path=\"\").",
            datapath
                .map_origins()
                .into_iter()
                .flat_map(|(map, origin)| {
                    crate::kernel::pinning::MapOrigin::ALL.map(|candidate| {
                        (
                            [
                                ("map", map.to_string()),
                                ("origin", candidate.as_str().to_string()),
                            ],
                            if candidate == origin { 1.0 } else { 0.0 },
                        )
                    })
                }),
        )?;
        let restored = self.flows.restored();
        single_gauge(
            &mut encoder,
            "network_probe_datapath_state_restored",
            "1 when the totals user space keeps (flows and interfaces that left the maps) were \
             all restored from --datapath.state-file at start, 0 when any part started from \
             zero (see network_probe_datapath_state_part_restored).",
            if restored.all() { 1.0 } else { 0.0 },
        )?;
        gauge_family(
            &mut encoder,
            "network_probe_datapath_state_part_restored",
            "1 for each part of --datapath.state-file restored at start: interfaces (totals of \
             deleted interfaces, names of the indexes seen), flows (the flow series' totals).",
            restored
                .parts()
                .map(|(part, done)| ([("part", part.to_string())], if done { 1.0 } else { 0.0 })),
        )?;
        single_counter(
            &mut encoder,
            "network_probe_datapath_state_file_corrupt",
            "State files that did not decode at start, kept aside as <file>.corrupt-<unix \
             seconds> (see the log).",
            self.flows.corrupt_files(),
        )?;
        single_counter(
            &mut encoder,
            "network_probe_datapath_state_save_errors",
            "Writes of --datapath.state-file that failed (see the log).",
            self.flows.save_errors(),
        )?;
        self.encode_flows(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_families_become_text_004_families() {
        let openmetrics = "\
# HELP requests Requests served.
# TYPE requests counter
requests_total{code=\"200\"} 3
# HELP temperature_celsius Temperature.
# TYPE temperature_celsius gauge
# UNIT temperature_celsius celsius
temperature_celsius 21.5
# HELP sum_seconds_total A sum kept as unknown.
# TYPE sum_seconds_total unknown
sum_seconds_total 0.25
# HELP build Build.
# TYPE build info
build_info{version=\"1\"} 1
# HELP size_bytes Sizes.
# TYPE size_bytes histogram
size_bytes_bucket{le=\"+Inf\"} 2
size_bytes_sum 10.0
size_bytes_count 2
# EOF
";
        let expected = "\
# HELP requests_total Requests served.
# TYPE requests_total counter
requests_total{code=\"200\"} 3
# HELP temperature_celsius Temperature.
# TYPE temperature_celsius gauge
temperature_celsius 21.5
# HELP sum_seconds_total A sum kept as unknown.
# TYPE sum_seconds_total untyped
sum_seconds_total 0.25
# HELP build_info Build.
# TYPE build_info gauge
build_info{version=\"1\"} 1
# HELP size_bytes Sizes.
# TYPE size_bytes histogram
size_bytes_bucket{le=\"+Inf\"} 2
size_bytes_sum 10.0
size_bytes_count 2
";
        assert_eq!(openmetrics_to_text_004(openmetrics), expected);
    }

    #[test]
    fn a_type_without_help_is_converted_too() {
        assert_eq!(
            openmetrics_to_text_004("# TYPE hits counter\nhits_total 1\n# EOF\n"),
            "# TYPE hits_total counter\nhits_total 1\n"
        );
        assert_eq!(openmetrics_to_text_004("# EOF\n"), "");
    }
}
