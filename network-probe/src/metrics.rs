//! The Prometheus registry: collectors that read live state (the datapath's maps) at scrape
//! time, plus build information. Names follow Prometheus conventions: base units, `_total` on
//! counters; README.md documents each one.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::datapath::Datapath;

/// Builds the registry served on the telemetry path.
pub fn registry(datapath: Arc<Datapath>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BuildInfo));
    registry.register_collector(Box::new(DatapathCollector { datapath }));
    registry
}

/// Renders the registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::with_capacity(4096);
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok(body)
}

/// `network_probe_build_info`: constant 1 with the version and git revision as labels.
#[derive(Debug)]
struct BuildInfo;

impl Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(1i64);
        let mut metric = encoder.encode_descriptor(
            "network_probe_build_info",
            "A metric with a constant value of 1, labelled with the version and git revision of \
             this network-probe binary.",
            None,
            gauge.metric_type(),
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("revision", env!("NETWORK_PROBE_GIT_REVISION")),
        ];
        gauge.encode(metric.encode_family(&labels)?)
    }
}

/// Per-interface counters and meta metrics about the datapath, read from the kernel maps on
/// each scrape.
#[derive(Debug)]
struct DatapathCollector {
    datapath: Arc<Datapath>,
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.datapath.snapshot();

        let mut packets = encoder.encode_descriptor(
            "network_probe_interface_packets",
            "Packets seen by the TC programs on an interface, per direction. A GSO/GRO \
             super-packet counts as the number of wire segments it carries.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for sample in &snapshot.devices {
            let labels = [
                ("interface", sample.interface.as_str()),
                ("direction", sample.direction.as_str()),
            ];
            ConstCounter::new(sample.counters.packets).encode(packets.encode_family(&labels)?)?;
        }

        let mut bytes = encoder.encode_descriptor(
            "network_probe_interface_bytes",
            "Bytes seen by the TC programs on an interface, per direction: the length of each \
             packet including its link-layer header (a GSO super-packet counts its length once).",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for sample in &snapshot.devices {
            let labels = [
                ("interface", sample.interface.as_str()),
                ("direction", sample.direction.as_str()),
            ];
            ConstCounter::new(sample.counters.bytes).encode(bytes.encode_family(&labels)?)?;
        }

        let mut attached = encoder.encode_descriptor(
            "network_probe_datapath_programs_attached",
            "1 for each eBPF program attached to an interface, labelled with the program.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (interface, hook) in &snapshot.attached {
            let labels = [
                ("interface", interface.as_str()),
                ("program", hook.as_str()),
            ];
            ConstGauge::new(1i64).encode(attached.encode_family(&labels)?)?;
        }

        let labels = [("map", network_probe_common::DEVICE_COUNTERS_MAP)];
        let mut entries = encoder.encode_descriptor(
            "network_probe_datapath_map_entries",
            "Entries currently in an eBPF map of the datapath.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(snapshot.device_map_entries as i64)
            .encode(entries.encode_family(&labels)?)?;
        let mut capacity = encoder.encode_descriptor(
            "network_probe_datapath_map_capacity",
            "Maximum number of entries an eBPF map of the datapath can hold.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(snapshot.device_map_capacity))
            .encode(capacity.encode_family(&labels)?)?;
        Ok(())
    }
}
