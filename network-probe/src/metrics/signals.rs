//! The families of the passive signals (issue 26): ECN codepoints per interface and direction,
//! path-MTU messages and the MTUs they announce per interface and direction; CE marks, ECE and
//! CWR segments and path-MTU messages per flow series (README.md documents each one).

use std::collections::BTreeMap;

use network_probe_common::{ECN_CODEPOINTS, FlowSignals, PMTU_BOUNDS, PMTU_BUCKETS};
use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{DatapathCollector, counter_family, histogram};
use crate::{
    flows::{
        exposition::{interface_name, series_labels},
        signals::FlowSignalTotals,
        table::FlowLabels,
    },
    kernel::signals::SignalSample,
};

impl DatapathCollector {
    /// The passive signals' families: per interface, then per flow series (the per-flow totals
    /// brought up to date with this read of the kernel maps).
    pub(super) fn encode_signals(
        &self,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let datapath = self.flows.datapath();
        encode_interfaces(encoder, &datapath.signal_samples())?;
        let read = datapath.flow_signals();
        let names = datapath.interface_names();
        let (labels, cap) = {
            let table = self.flows.table();
            let options = table.options();
            (options.labels, options.max_series)
        };
        let mut totals = crate::support::sync::lock(&self.flow_signals);
        totals.update(read, &labels, cap);
        encode_flows(encoder, &totals, &labels, &names)
    }
}

/// The per-interface families.
fn encode_interfaces(
    encoder: &mut DescriptorEncoder,
    samples: &[SignalSample],
) -> Result<(), std::fmt::Error> {
    counter_family(
        encoder,
        "network_probe_interface_ecn_packets",
        "IP packets seen on an interface, per direction, by the ECN codepoint of their IP header \
         (RFC 3168: not_ect, ect0, ect1, ce); GSO segments counted.",
        samples.iter().flat_map(|sample| {
            ECN_CODEPOINTS
                .iter()
                .zip(sample.stats.ecn)
                .map(move |(codepoint, packets)| {
                    (
                        [
                            ("interface", sample.interface.as_str()),
                            ("direction", sample.direction.as_str()),
                            ("codepoint", *codepoint),
                        ],
                        packets,
                    )
                })
        }),
    )?;
    counter_family(
        encoder,
        "network_probe_interface_pmtu_messages",
        "Path-MTU messages crossing an interface, per direction: ICMPv4 fragmentation needed \
         (type 3 code 4) and ICMPv6 packet too big (type 2).",
        samples.iter().map(|sample| {
            (
                [
                    ("interface", sample.interface.as_str()),
                    ("direction", sample.direction.as_str()),
                ],
                sample.stats.pmtu_messages,
            )
        }),
    )?;
    let mut announced = encoder.encode_descriptor(
        "network_probe_interface_pmtu_announced_bytes",
        "The MTU path-MTU messages announce (ICMPv4 next-hop MTU, ICMPv6 MTU), per interface \
         and direction.",
        None,
        MetricType::Histogram,
    )?;
    debug_assert_eq!(PMTU_BUCKETS, PMTU_BOUNDS.len() + 1);
    for sample in samples {
        histogram(
            &mut announced,
            &[
                ("interface", sample.interface.as_str()),
                ("direction", sample.direction.as_str()),
            ],
            &sample.stats.pmtu_announced,
            |i| f64::from(PMTU_BOUNDS[i]),
            sample.stats.pmtu_announced_sum as f64,
        )?;
    }
    Ok(())
}

/// The per-flow-series families, with the flow series' labels.
fn encode_flows(
    encoder: &mut DescriptorEncoder,
    totals: &FlowSignalTotals,
    labels: &FlowLabels,
    names: &BTreeMap<u32, String>,
) -> Result<(), std::fmt::Error> {
    let rows: Vec<(Vec<(&'static str, String)>, FlowSignals)> = totals
        .totals()
        .map(|(series, signals)| {
            let mut set = Vec::with_capacity(6);
            if let Some(index) = series.ifindex {
                set.push(("interface", interface_name(index, names)));
            }
            set.extend(series_labels(series, labels));
            (set, *signals)
        })
        .collect();
    type Field = fn(&FlowSignals) -> u64;
    let families: [(&str, &str, Field); 4] = [
        (
            "network_probe_flow_ce_packets",
            "IP packets of the TCP flows with these labels marked CE (ECN congestion experienced) \
             on arrival at the interface (GSO segments counted).",
            |s| s.ce,
        ),
        (
            "network_probe_flow_tcp_ece_segments",
            "TCP segments of the flows with these labels with ECE (ECN-Echo) set, SYNs included \
             (GSO segments counted).",
            |s| s.ece,
        ),
        (
            "network_probe_flow_tcp_cwr_segments",
            "TCP segments of the flows with these labels with CWR (congestion window reduced) \
             set, SYNs included (a GSO super-packet counts once: segmentation keeps CWR on its \
             first segment only).",
            |s| s.cwr,
        ),
        (
            "network_probe_flow_pmtu_messages",
            "Path-MTU messages (ICMPv4 fragmentation needed, ICMPv6 packet too big) seen on the \
             interface that quote a TCP packet of the flows with these labels, as that packet \
             crossed the interface (the direction opposite to the message's).",
            |s| s.pmtu_messages,
        ),
    ];
    for (name, help, field) in families {
        counter_family(
            encoder,
            name,
            help,
            rows.iter()
                .map(|(set, signals)| (set.clone(), field(signals))),
        )?;
    }
    Ok(())
}
