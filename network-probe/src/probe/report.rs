//! Building a probe's metrics, one way for every prober: float gauges, labelled gauge families,
//! and the one-hot failure-reason family (`tftp_probe_failure`, `iperf3_failure`: 1 for the
//! reason that applies, 0 for every other, all 0 on success) over a prober's [`Reason`] enum.
//! The metric names and label values stay the probers' own (those of the exporters they replace).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    collector::Collector,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::ProbeReport;

/// A gauge holding an `f64`.
pub(crate) type FloatGauge = Gauge<f64, AtomicU64>;

/// A prober's failure reasons, as the `reason` label of its failure family.
pub(crate) trait Reason: Copy + PartialEq + 'static {
    /// Every reason, in the order the family lists them.
    const ALL: &'static [Self];
    /// The label value.
    fn label(self) -> &'static str;
}

/// A probe's metrics under construction.
#[derive(Debug, Default)]
pub(crate) struct Report {
    registry: Registry,
}

impl Report {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A gauge `name` set to `value`.
    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        let gauge = FloatGauge::default();
        gauge.set(value);
        self.registry.register(name, help, gauge);
        self
    }

    /// A gauge family `name` with one `label=value` row per item (possibly none).
    pub(crate) fn family<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        rows: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> &mut Self {
        let family = Family::<Vec<(String, String)>, FloatGauge>::default();
        for (value, number) in rows {
            family
                .get_or_create(&vec![(label.to_string(), value.to_string())])
                .set(number);
        }
        self.registry.register(name, help, family);
        self
    }

    /// The one-hot failure family `name`: a `reason` row for each of `R::ALL`, 1 for `failed`.
    pub(crate) fn failure<R: Reason>(
        &mut self,
        name: &str,
        help: &str,
        failed: Option<R>,
    ) -> &mut Self {
        self.family(
            name,
            help,
            "reason",
            R::ALL.iter().map(|&reason| {
                (
                    reason.label(),
                    if failed == Some(reason) { 1.0 } else { 0.0 },
                )
            }),
        )
    }

    /// A collector whose metrics the prober writes itself (ping's per-target rows).
    pub(crate) fn collector(&mut self, collector: Box<dyn Collector>) -> &mut Self {
        self.registry.register_collector(collector);
        self
    }

    /// The finished report.
    pub(crate) fn finish(self, success: bool) -> ProbeReport {
        ProbeReport {
            success,
            registry: self.registry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Why {
        Slow,
        Gone,
    }

    impl Reason for Why {
        const ALL: &'static [Why] = &[Why::Slow, Why::Gone];
        fn label(self) -> &'static str {
            match self {
                Why::Slow => "slow",
                Why::Gone => "gone",
            }
        }
    }

    #[test]
    fn failures_are_one_hot() {
        let mut report = Report::new();
        report
            .gauge("x_success", "h", 0.0)
            .failure("x_failure", "h", Some(Why::Gone));
        let report = report.finish(false);
        let text = crate::metrics::render(&report.registry).unwrap();
        assert!(text.contains("x_success 0.0"), "{text}");
        assert!(text.contains("x_failure{reason=\"slow\"} 0.0"), "{text}");
        assert!(text.contains("x_failure{reason=\"gone\"} 1.0"), "{text}");
        let mut report = Report::new();
        report.failure::<Why>("x_failure", "h", None);
        let text = crate::metrics::render(&report.finish(true).registry).unwrap();
        assert!(!text.contains("} 1.0"), "{text}");
    }
}
