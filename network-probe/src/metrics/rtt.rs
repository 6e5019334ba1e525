//! The passive RTT histogram per interface (`network_probe_tcp_rtt_seconds`, issue 26): the
//! samples the TC programs took from TCP timestamps (see [`crate::kernel::rtt`]), in the
//! handshake histogram's log2 buckets. The per-flow RTT families are flow families
//! ([`crate::flows::exposition`]).

use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{DatapathCollector, histogram};

impl DatapathCollector {
    /// `network_probe_tcp_rtt_seconds`, one histogram per interface attached now or since start.
    pub(super) fn encode_rtt(
        &self,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let samples = self.flows.datapath().rtt_samples();
        let mut family = encoder.encode_descriptor(
            "network_probe_tcp_rtt_seconds",
            "Passive TCP round-trip times on an interface from TCP timestamps: a TSval leaving \
             the interface to the first segment of the reverse direction arriving there that \
             echoes it (one outstanding value per flow direction). Only flows whose two \
             directions cross the interface give samples.",
            None,
            MetricType::Histogram,
        )?;
        for (interface, stats) in &samples {
            histogram(
                &mut family,
                &[("interface", interface.as_str())],
                &stats.buckets,
                |i| (1u64 << i) as f64 * 1e-6,
                stats.sum_ns as f64 * 1e-9,
            )?;
        }
        Ok(())
    }
}
