//! Jool NAT64/SIIT statistics on `/metrics`, read from the kernel module over generic netlink
//! at scrape time (one round trip per instance, no process spawned).
//!
//! - [`Flags`]: which instances to read (`--jool.instance`, `--jool.all-instances`).
//! - [`JoolCollector`]: the prometheus-client collector; one `jool_*` family per statistic,
//!   labelled `instance` and `type`, plus `jool_up` and `jool_failure` per instance.
//! - [`codec`]: the sans-IO wire format.
//! - `stat_names`: the stat-id tables (names, kinds, help per Jool release), re-exported by
//!   [`codec`].
//! - [`client`]: the netlink socket, family resolution, paging and error classification.
//!
//! docs/jool.md documents every metric and the mapping from jool-exporter's names.

pub(crate) mod client;
pub mod codec;
mod stat_names;

use std::{collections::BTreeMap, fmt, str::FromStr, sync::Mutex, time::Duration};

use log::debug;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use self::{
    client::{JoolClient, ReadError, Stats},
    codec::{InstanceName, StatKind, Xlator},
};

/// How long one netlink receive may wait for the module.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(1);

/// One instance to read: `nat64:NAME`, `siit:NAME`, or a bare `NAME` (NAT64).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceSpec {
    pub xlator: Xlator,
    pub name: InstanceName,
}

impl FromStr for InstanceSpec {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (xlator, name) = match value.split_once(':') {
            Some(("nat64", name)) => (Xlator::Nat64, name),
            Some(("siit", name)) => (Xlator::Siit, name),
            Some((kind, _)) => {
                return Err(format!(
                    "{value:?} has unknown instance type {kind:?} (use nat64:NAME or siit:NAME)"
                ));
            }
            None => (Xlator::Nat64, value),
        };
        Ok(InstanceSpec {
            xlator,
            name: InstanceName::new(name)?,
        })
    }
}

impl fmt::Display for InstanceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.xlator, self.name)
    }
}

/// Command-line flags of the Jool collector.
#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
    /// Jool instance whose statistics are exported, as nat64:NAME or siit:NAME (repeatable).
    /// Default: the NAT64 instance "default", unless --jool.all-instances is given.
    #[arg(long = "jool.instance", value_name = "TYPE:NAME")]
    pub instances: Vec<InstanceSpec>,

    /// Also export every instance the Jool module lists at scrape time (both types). Listing
    /// needs CAP_NET_ADMIN; instances of other network namespaces are skipped.
    #[arg(long = "jool.all-instances")]
    pub all_instances: bool,

    /// Do not read Jool statistics at all.
    #[arg(long = "jool.disable")]
    pub disable: bool,
}

impl Flags {
    /// The instances named on the command line, or the default NAT64 instance.
    pub fn configured(&self) -> Vec<InstanceSpec> {
        if self.instances.is_empty() && !self.all_instances {
            return vec![InstanceSpec {
                xlator: Xlator::Nat64,
                name: InstanceName::new("default").expect("a valid name"),
            }];
        }
        let mut instances = self.instances.clone();
        instances.sort();
        instances.dedup();
        instances
    }
}

/// The outcome of reading one instance.
pub type Reading = Result<Stats, ReadError>;

/// Reads the configured instances at scrape time and renders them.
#[derive(Debug)]
pub struct JoolCollector {
    configured: Vec<InstanceSpec>,
    all_instances: bool,
    disabled: bool,
    /// The socket, kept between scrapes (and its cached family id).
    client: Mutex<Option<JoolClientCell>>,
}

/// Wraps the client so the collector can derive Debug.
struct JoolClientCell(JoolClient);

impl fmt::Debug for JoolClientCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoolClient")
    }
}

/// Pseudo-instance name carrying listing failures of `--jool.all-instances`.
pub const LISTING_INSTANCE: &str = "";

impl JoolCollector {
    pub fn new(flags: &Flags) -> JoolCollector {
        JoolCollector {
            configured: flags.configured(),
            all_instances: flags.all_instances,
            disabled: flags.disable,
            client: Mutex::new(None),
        }
    }

    /// Reads every instance now: (type, instance name) -> outcome. Listing failures appear
    /// under the instance name [`LISTING_INSTANCE`].
    pub fn read_all(&self) -> BTreeMap<(Xlator, String), Reading> {
        let mut readings = BTreeMap::new();
        if self.disabled {
            return readings;
        }
        let mut guard = crate::support::sync::lock(&self.client);
        if guard.is_none() {
            match JoolClient::connect(RECEIVE_TIMEOUT) {
                Ok(client) => *guard = Some(JoolClientCell(client)),
                Err(err) => {
                    for spec in &self.configured {
                        readings.insert((spec.xlator, spec.name.to_string()), Err(err.clone()));
                    }
                    if self.all_instances {
                        for xlator in Xlator::ALL {
                            readings
                                .insert((xlator, LISTING_INSTANCE.to_string()), Err(err.clone()));
                        }
                    }
                    return readings;
                }
            }
        }
        let Some(JoolClientCell(client)) = guard.as_mut() else {
            return readings;
        };
        let mut targets: Vec<(Xlator, InstanceName, bool)> = self
            .configured
            .iter()
            .map(|spec| (spec.xlator, spec.name.clone(), false))
            .collect();
        if self.all_instances {
            for xlator in Xlator::ALL {
                match client.list_instances(xlator) {
                    Ok(listed) => {
                        for entry in listed {
                            let Ok(name) = InstanceName::new(&entry.name) else {
                                continue;
                            };
                            if !targets.iter().any(|(x, n, _)| *x == xlator && *n == name) {
                                targets.push((xlator, name, true));
                            }
                        }
                    }
                    Err(err) => {
                        let err = match err {
                            ReadError::PermissionDenied(message) => {
                                ReadError::PermissionDenied(format!(
                                    "--jool.all-instances needs CAP_NET_ADMIN to list instances: \
                                     {message}"
                                ))
                            }
                            other => other,
                        };
                        debug!("listing {xlator} Jool instances: {err}");
                        readings.insert((xlator, LISTING_INSTANCE.to_string()), Err(err));
                    }
                }
            }
        }
        for (xlator, name, listed) in targets {
            let reading = client.read_stats(&name, xlator);
            if let Err(err) = &reading {
                // A listed instance that our namespace cannot see lives in another one.
                if listed && matches!(err, ReadError::InstanceMissing(_)) {
                    continue;
                }
                debug!("reading Jool {xlator} instance {name:?}: {err}");
            }
            readings.insert((xlator, name.to_string()), reading);
        }
        readings
    }
}

type InstanceLabels<'a> = [(&'static str, &'a str); 2];

fn labels(xlator: Xlator, name: &str) -> InstanceLabels<'_> {
    [("instance", name), ("type", xlator.as_str())]
}

impl Collector for JoolCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_readings(&self.read_all(), encoder)
    }
}

/// Renders readings: `jool_up`, `jool_failure`, one family per statistic, raw ids.
pub fn encode_readings(
    readings: &BTreeMap<(Xlator, String), Reading>,
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if readings.is_empty() {
        return Ok(());
    }
    {
        let mut family = encoder.encode_descriptor(
            "jool_up",
            "1 if the statistics of this Jool instance were read on this scrape, 0 if not \
             (jool_failure says why). An empty instance label stands for the instance listing.",
            None,
            MetricType::Gauge,
        )?;
        for ((xlator, name), reading) in readings {
            ConstGauge::new(i64::from(reading.is_ok()))
                .encode(family.encode_family(&labels(*xlator, name))?)?;
        }
    }
    {
        let mut family = encoder.encode_descriptor(
            "jool_failure",
            "1 for the reason this Jool instance could not be read on this scrape, 0 for the \
             other reasons: module_missing, instance_missing, version_refused, \
             permission_denied, netlink_error.",
            None,
            MetricType::Gauge,
        )?;
        for ((xlator, name), reading) in readings {
            let failed = reading.as_ref().err().map(ReadError::reason);
            for reason in ReadError::REASONS {
                let [instance, kind] = labels(*xlator, name);
                let set = [instance, kind, ("reason", reason)];
                ConstGauge::new(i64::from(failed == Some(reason)))
                    .encode(family.encode_family(&set)?)?;
            }
        }
    }

    // Group the values by metric so each family is written once.
    struct Family<'a> {
        help: &'static str,
        kind: StatKind,
        rows: Vec<(InstanceLabels<'a>, u64)>,
    }
    let mut families: BTreeMap<String, Family<'_>> = BTreeMap::new();
    let mut raw: Vec<(InstanceLabels<'_>, String, u64)> = Vec::new();
    for ((xlator, name), reading) in readings {
        let Ok(stats) = reading else { continue };
        for &(id, value) in &stats.values {
            match stats.layout.and_then(|layout| layout.stat(id)) {
                Some(def) => families
                    .entry(def.metric_name())
                    .or_insert_with(|| Family {
                        help: def.help,
                        kind: def.kind,
                        rows: Vec::new(),
                    })
                    .rows
                    .push((labels(*xlator, name), value)),
                None => raw.push((labels(*xlator, name), id.to_string(), value)),
            }
        }
    }
    for (metric, family) in &families {
        let kind = match family.kind {
            StatKind::Counter => MetricType::Counter,
            StatKind::Gauge => MetricType::Gauge,
        };
        // The encoder appends `_total` to counters itself.
        let name = metric.strip_suffix("_total").unwrap_or(metric);
        let mut encoded = encoder.encode_descriptor(name, family.help, None, kind)?;
        for (set, value) in &family.rows {
            match family.kind {
                StatKind::Counter => {
                    ConstCounter::new(*value).encode(encoded.encode_family(set)?)?
                }
                StatKind::Gauge => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX))
                    .encode(encoded.encode_family(set)?)?,
            }
        }
    }
    if !raw.is_empty() {
        let mut encoded = encoder.encode_descriptor(
            "jool_stat",
            "A Jool statistic whose id this daemon cannot name for the module's version, by \
             its numeric id (see the module's stats.h for its meaning).",
            None,
            MetricType::Unknown,
        )?;
        for ([instance, kind], id, value) in &raw {
            let set = [*instance, *kind, ("id", id.as_str())];
            ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX))
                .encode(encoded.encode_family(&set)?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::jool::codec::Layout;

    #[test]
    fn instance_specs() {
        let spec: InstanceSpec = "siit:siit1".parse().unwrap();
        assert_eq!(spec.xlator, Xlator::Siit);
        assert_eq!(spec.name.as_str(), "siit1");
        let bare: InstanceSpec = "edge".parse().unwrap();
        assert_eq!(bare.xlator, Xlator::Nat64);
        let err = "nat46:x".parse::<InstanceSpec>().unwrap_err();
        assert!(err.contains("unknown instance type \"nat46\""), "{err}");
        let err = "nat64:".parse::<InstanceSpec>().unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        jool: Flags,
    }

    #[test]
    fn default_is_the_nat64_default_instance() {
        use clap::Parser;
        let cli = TestCli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.jool.configured(), ["nat64:default".parse().unwrap()]);
        let cli = TestCli::try_parse_from(["x", "--jool.all-instances"]).unwrap();
        assert!(cli.jool.configured().is_empty());
        let cli =
            TestCli::try_parse_from(["x", "--jool.instance", "siit:b", "--jool.instance", "a"])
                .unwrap();
        assert_eq!(cli.jool.configured().len(), 2);
        let err = TestCli::try_parse_from(["x", "--jool.instance", "siit:0123456789abcdef"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is 16 bytes long"), "{err}");
    }

    fn render(readings: &BTreeMap<(Xlator, String), Reading>) -> String {
        #[derive(Debug)]
        struct Fixed(BTreeMap<(Xlator, String), Reading>);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                encode_readings(&self.0, encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(readings.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn readings_render_typed_families_and_failures() {
        let mut readings = BTreeMap::new();
        readings.insert(
            (Xlator::Nat64, "default".to_string()),
            Ok(Stats {
                values: vec![(1, 8), (4, 2), (69, 0)],
                layout: Layout::from_last_id(69),
            }),
        );
        readings.insert(
            (Xlator::Siit, "s1".to_string()),
            Err(ReadError::InstanceMissing("gone".into())),
        );
        readings.insert(
            (Xlator::Siit, "odd".to_string()),
            Ok(Stats {
                values: vec![(1, 3), (68, 9)],
                layout: None,
            }),
        );
        let text = render(&readings);
        for line in [
            "# TYPE jool_received6 counter",
            "jool_received6_total{instance=\"default\",type=\"nat64\"} 8",
            "# TYPE jool_bib_entries gauge",
            "jool_bib_entries{instance=\"default\",type=\"nat64\"} 2",
            "jool_unknown_total{instance=\"default\",type=\"nat64\"} 0",
            "jool_up{instance=\"default\",type=\"nat64\"} 1",
            "jool_up{instance=\"s1\",type=\"siit\"} 0",
            "jool_failure{instance=\"s1\",type=\"siit\",reason=\"instance_missing\"} 1",
            "jool_failure{instance=\"s1\",type=\"siit\",reason=\"netlink_error\"} 0",
            "jool_stat{instance=\"odd\",type=\"siit\",id=\"68\"} 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
