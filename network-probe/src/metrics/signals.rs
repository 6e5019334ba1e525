//! The families of the passive signals (issue 26) per interface: ECN codepoints per interface
//! and direction, path-MTU messages and the MTUs they announce per interface and direction
//! (README.md documents each one). The per-flow ones (CE marks, ECE and CWR segments, path-MTU
//! messages per flow series) are flow families, written by [`crate::flows::exposition`].

use network_probe_common::{ECN_CODEPOINTS, PMTU_BOUNDS, PMTU_BUCKETS};
use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{DatapathCollector, counter_family, histogram};
use crate::kernel::signals::SignalSample;

impl DatapathCollector {
    /// The passive signals' families per interface.
    pub(super) fn encode_signals(
        &self,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        encode_interfaces(encoder, &self.flows.datapath().signal_samples())
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
