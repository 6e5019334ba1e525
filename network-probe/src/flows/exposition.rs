//! The per-flow-series metric families of a scrape (`network_probe_flow_*`), written outside
//! the prometheus-client registry because of their size: with 100k series they are most of a
//! 100 MB body. A scrape takes a compact snapshot of the series ([`FlowSeries::read`]: each
//! series' label set, formatted once per scrape from its key as its sample lines write it, then
//! numbers), and the response writes it out in chunks of
//! about [`CHUNK_BYTES`] as it is sent ([`FlowSeries::write`]), in OpenMetrics or in the
//! Prometheus text format 0.0.4. The whole text never exists in memory at once, and one
//! snapshot serves every concurrent scrape that shares the render.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::IpAddr,
};

use crate::{
    flows::families::FlowFamilies,
    flows::outcomes::Outcome,
    flows::table::{FlowCounters, FlowLabels, FlowTable, Series, SeriesKey},
    flows::tracker::{FlowTracker, monotonic_ns, realtime_ns},
};

/// Size a chunk of flow series text grows to before it is sent.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// One flow series as a scrape writes it: 96 bytes (136 with a whole [`FlowCounters`] and a
/// range of `usize`; 100k rows are 13.6 MB of a scrape's peak). What few rows have (connection
/// attempts) is in [`FlowSeries::extras`].
#[derive(Debug)]
struct FlowRow {
    /// Where the row's label set, as every sample line writes it (`{interface="eth0",
    /// src="10.0.0.1",dst="10.0.0.2"} `), lies in [`FlowSeries::label_sets`]: start and end.
    label_set: (u32, u32),
    /// The counter families' values, in their order.
    counters: [u64; COUNTERS],
    window_scale: Option<u8>,
    first_seen_ns: u64,
    last_seen_ns: u64,
}

/// A row's connection attempts and passive signals.
#[derive(Debug)]
struct RowExtra {
    row: u32,
    attempts: [u64; 4],
    signals: [u64; 4],
    /// Passive RTT: samples, smallest and smoothed (nanoseconds), see [`Value::Rtt`].
    rtt: [u64; 3],
}

/// The families that are plain counters of the flow maps, first in [`FAMILIES`].
const COUNTERS: usize = 8;

/// What a row's samples say (a series' values as [`FlowSeries::push_row`] takes them).
#[derive(Debug, Default)]
struct RowValues {
    counters: FlowCounters,
    window_scale: Option<u8>,
    first_seen_ns: u64,
    last_seen_ns: u64,
    /// Passive RTT: the series' smallest sample and the mean of the last refresh's samples,
    /// nanoseconds (0: none).
    rtt_min_ns: u64,
    rtt_mean_ns: u64,
}

impl RowValues {
    fn of(series: &Series) -> RowValues {
        RowValues {
            counters: series.total(),
            window_scale: series.window_scale,
            first_seen_ns: series.first_seen_ns,
            last_seen_ns: series.last_seen_ns,
            rtt_min_ns: series.rtt_min_ns(),
            rtt_mean_ns: series.rtt_mean_ns(),
        }
    }
}

/// How a family's value is taken from a row.
enum Value {
    /// A counter (`_total` samples): the row's counter at this index.
    Counter(usize),
    /// A gauge with a whole value, absent from the rows for which it is `None`.
    Whole(fn(&FlowRow) -> Option<u8>),
    /// A timestamp gauge: CLOCK_MONOTONIC nanoseconds (0: never, no sample), written as Unix
    /// seconds.
    Timestamp(fn(&FlowRow) -> u64),
    /// Passive RTT, only for rows with a sample: the samples counter (0), the smallest sample
    /// (1) and the mean of the last read that gained any (2), the gauges written as seconds.
    Rtt(usize),
    /// The connection-attempt counters, one sample per outcome (an `outcome` label after the
    /// row's labels); only for rows with an attempt.
    Attempts,
    /// A passive signal's counter (`_total` samples), at this index of
    /// [`FlowCounters::signals`]; only for rows with a signal.
    Signal(usize),
}

/// A metric family of the flow series: name (without `_total`), help, value.
struct Family {
    name: &'static str,
    help: &'static str,
    value: Value,
}

/// Writes CLOCK_MONOTONIC nanoseconds `monotonic` as Unix seconds with up to nine decimals
/// (exact, trailing zeros dropped), given CLOCK_REALTIME minus CLOCK_MONOTONIC.
fn push_unix_seconds(out: &mut String, monotonic: u64, offset_ns: i128) {
    let unix_ns = (i128::from(monotonic) + offset_ns).max(0) as u128;
    let (seconds, nanos) = (unix_ns / 1_000_000_000, (unix_ns % 1_000_000_000) as u32);
    out.push_str(itoa::Buffer::new().format(seconds));
    if nanos != 0 {
        let mut digits = [b'0'; 9];
        let mut rest = nanos;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let significant = 9 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[..significant]).expect("ASCII digits"));
    }
}

/// Every family, in the order they are written.
const FAMILIES: [Family; 19] = [
    Family {
        name: "network_probe_flow_packets",
        help: "Packets of the TCP flows with these labels (GSO segments counted).",
        value: Value::Counter(0),
    },
    Family {
        name: "network_probe_flow_bytes",
        help: "Bytes of the TCP flows with these labels, link-layer headers included.",
        value: Value::Counter(1),
    },
    Family {
        name: "network_probe_flow_retransmits",
        help: "Retransmitted TCP segments, judged from sequence numbers per flow direction.",
        value: Value::Counter(2),
    },
    Family {
        name: "network_probe_flow_rst",
        help: "TCP segments with RST.",
        value: Value::Counter(3),
    },
    Family {
        name: "network_probe_flow_syn",
        help: "TCP segments with SYN.",
        value: Value::Counter(4),
    },
    Family {
        name: "network_probe_flow_fin",
        help: "TCP segments with FIN.",
        value: Value::Counter(5),
    },
    Family {
        name: "network_probe_flow_zero_window",
        help: "TCP segments, other than RSTs, advertising a zero receive window.",
        value: Value::Counter(6),
    },
    Family {
        name: "network_probe_flow_df_packets",
        help: "IPv4 packets with the Don't Fragment bit set, whatever other flags are set (IPv6 \
               has no DF bit).",
        value: Value::Counter(7),
    },
    Family {
        name: "network_probe_flow_window_scale",
        help: "Window scale shift (RFC 7323) offered in the SYN or SYN-ACK of the most recently \
               active flow with these labels; absent when no SYN with the option was seen.",
        value: Value::Whole(|row| row.window_scale),
    },
    Family {
        name: "network_probe_flow_first_seen_timestamp_seconds",
        help: "Unix time of the first packet of the flows with these labels.",
        value: Value::Timestamp(|row| row.first_seen_ns),
    },
    Family {
        name: "network_probe_flow_last_seen_timestamp_seconds",
        help: "Unix time of the last packet of the flows with these labels.",
        value: Value::Timestamp(|row| row.last_seen_ns),
    },
    Family {
        name: "network_probe_flow_connection_attempts",
        help: "TCP connection attempts (SYNs) of the flows with these labels by outcome: \
               answered (SYN-ACK), reset (RST), unreachable (ICMP destination unreachable) or \
               timeout (none of these within --flows.connect-timeout). Only rows with an \
               attempt.",
        value: Value::Attempts,
    },
    Family {
        name: "network_probe_flow_ce_packets",
        help: "IP packets of the TCP flows with these labels marked CE (ECN congestion \
               experienced) on arrival at the interface (GSO segments counted). Only rows with \
               a signal.",
        value: Value::Signal(0),
    },
    Family {
        name: "network_probe_flow_tcp_ece_segments",
        help: "TCP segments of the flows with these labels with ECE (ECN-Echo) set, SYNs \
               included (GSO segments counted). Only rows with a signal.",
        value: Value::Signal(1),
    },
    Family {
        name: "network_probe_flow_tcp_cwr_segments",
        help: "TCP segments of the flows with these labels with CWR (congestion window \
               reduced) set, SYNs included (a GSO super-packet counts once: segmentation keeps \
               CWR on its first segment only). Only rows with a signal.",
        value: Value::Signal(2),
    },
    Family {
        name: "network_probe_flow_pmtu_messages",
        help: "Path-MTU messages (ICMPv4 fragmentation needed, ICMPv6 packet too big) seen on \
               the interface that quote a TCP packet of the flows with these labels, as that \
               packet crossed the interface (the direction opposite to the message's). Only \
               rows with a signal.",
        value: Value::Signal(3),
    },
    Family {
        name: "network_probe_flow_rtt_samples",
        help: "Passive RTT samples of the TCP flows with these labels: a TSval that left the \
               interface echoed (TSecr) by the first segment of the reverse direction to arrive \
               (one outstanding value per flow direction; see docs/signals.md). The flow series \
               is the echoing (ingress) direction's.",
        value: Value::Rtt(0),
    },
    Family {
        name: "network_probe_flow_rtt_min_seconds",
        help: "The smallest passive RTT sample of the TCP flows with these labels since the \
               series started: the time from the interface to the far end and back. Absent \
               before the first sample.",
        value: Value::Rtt(1),
    },
    Family {
        name: "network_probe_flow_rtt_seconds",
        help: "The mean of the passive RTT samples the flows with these labels gained since the \
               previous read of the kernel maps (a scrape), as of the last read that gained any. \
               Absent before the first sample.",
        value: Value::Rtt(2),
    },
];

/// The flow series of one scrape.
#[derive(Debug, Default)]
pub(crate) struct FlowSeries {
    /// The families written (`--flows.families`); `None`: every one.
    families: Option<FlowFamilies>,
    /// Every row's label set, one after the other: written once per scrape, then copied into
    /// each of the row's sample lines.
    label_sets: String,
    /// In no particular order (sorting 100k series cost a tenth of a scrape).
    rows: Vec<FlowRow>,
    /// What the rows that count connection attempts or passive signals counted of them, in
    /// row order (few rows have any).
    extras: Vec<RowExtra>,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC at the snapshot, nanoseconds.
    unix_offset_ns: i128,
}

/// Where writing stands: the family, and the next row of it (`None`: its header is next).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FlowCursor {
    family: usize,
    row: Option<usize>,
}

impl FlowSeries {
    /// Reads the flow maps into the table (see [`FlowTracker::refresh`]) and snapshots its
    /// series.
    pub(crate) fn read(flows: &FlowTracker) -> FlowSeries {
        let names = flows.datapath().interface_names();
        let table = flows.refresh();
        FlowSeries::of_table(&table, &names)
    }

    /// Snapshots the series of `table` (interface names from `names`).
    fn of_table(table: &FlowTable, names: &BTreeMap<u32, String>) -> FlowSeries {
        let enabled = table.options().labels;
        let mut interfaces: HashMap<u32, String> = HashMap::new();
        let mut snapshot = FlowSeries {
            families: Some(table.options().families),
            label_sets: String::new(),
            rows: Vec::with_capacity(table.series_count()),
            extras: Vec::new(),
            unix_offset_ns: i128::from(realtime_ns()) - i128::from(monotonic_ns()),
        };
        for (key, series) in table.series_iter() {
            let values = RowValues::of(series);
            let interface = key.ifindex.map(|index| {
                interfaces
                    .entry(index)
                    .or_insert_with(|| label_text(&[("interface", interface_name(index, names))]))
                    .as_str()
            });
            // The label pairs are formatted here, straight into the snapshot, at every scrape:
            // keeping each series' text between scrapes cost 6.4 MB at 100k series (a boxed
            // string each, and its pointer in every place), and formatting two addresses
            // costs about as much as copying their text did.
            snapshot.push_row_with(
                interface,
                |out| push_series_labels(out, key, &enabled),
                values,
            );
        }
        snapshot
    }

    /// Adds a row: its label set (the `interface="…"` pair, if any, and the other pairs) and
    /// the series' values.
    #[cfg(test)]
    fn push_row(&mut self, interface: Option<&str>, labels: &str, values: RowValues) {
        self.push_row_with(interface, |out| out.push_str(labels), values);
    }

    /// Adds a row: its label set (the `interface="…"` pair, if any, then the pairs
    /// `write_labels` appends, comma-separated) and the series' values.
    fn push_row_with(
        &mut self,
        interface: Option<&str>,
        write_labels: impl FnOnce(&mut String),
        values: RowValues,
    ) {
        if self.label_sets.is_empty() {
            // About what the rows will take: one reservation instead of a dozen regrowths
            // (the first row's pairs estimated at 48 bytes, two IPv4 addresses).
            let per_row = interface.map_or(0, str::len) + 48 + 4;
            self.label_sets
                .reserve(per_row * self.rows.capacity().max(1));
        }
        let start = self.label_sets.len() as u32;
        self.label_sets.push('{');
        if let Some(interface) = interface {
            self.label_sets.push_str(interface);
            self.label_sets.push(',');
        }
        let before = self.label_sets.len();
        write_labels(&mut self.label_sets);
        if interface.is_some() && self.label_sets.len() == before {
            // No other pair: no comma after the interface.
            self.label_sets.pop();
        }
        self.label_sets.push_str("} ");
        let c = &values.counters;
        if c.attempts != [0; 4] || c.signals != [0; 4] || c.rtt_samples != 0 {
            self.extras.push(RowExtra {
                row: self.rows.len() as u32,
                attempts: c.attempts,
                signals: c.signals,
                rtt: [c.rtt_samples, values.rtt_min_ns, values.rtt_mean_ns],
            });
        }
        self.rows.push(FlowRow {
            label_set: (start, self.label_sets.len() as u32),
            counters: [
                c.packets,
                c.bytes,
                c.retransmits,
                c.rst,
                c.syn,
                c.fin,
                c.zero_window,
                c.df,
            ],
            window_scale: values.window_scale,
            first_seen_ns: values.first_seen_ns,
            last_seen_ns: values.last_seen_ns,
        });
    }

    /// The label set of `row`, as its sample lines write it.
    fn labels(&self, row: &FlowRow) -> &str {
        &self.label_sets[row.label_set.0 as usize..row.label_set.1 as usize]
    }

    /// Appends text from `cursor` on to `out` until `out` holds at least `budget` bytes or
    /// everything is written; returns whether everything is. OpenMetrics names a counter family
    /// without `_total`, format 0.0.4 with it; the samples are the same.
    pub(crate) fn write(
        &self,
        cursor: &mut FlowCursor,
        openmetrics: bool,
        out: &mut String,
        budget: usize,
    ) -> bool {
        let mut number = itoa::Buffer::new();
        while let Some(family) = FAMILIES.get(cursor.family) {
            if self
                .families
                .is_some_and(|families| !families.has(cursor.family))
            {
                cursor.family += 1;
                cursor.row = None;
                continue;
            }
            let counter = matches!(
                family.value,
                Value::Counter(_) | Value::Attempts | Value::Signal(_) | Value::Rtt(0)
            );
            let Some(start) = cursor.row else {
                let (name, kind) = match (counter, openmetrics) {
                    (true, true) => (family.name.to_string(), "counter"),
                    (true, false) => (format!("{}_total", family.name), "counter"),
                    (false, _) => (family.name.to_string(), "gauge"),
                };
                let _ = writeln!(out, "# HELP {name} {}", family.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
                cursor.row = Some(0);
                continue;
            };
            // Samples of counters are named `_total` in both formats.
            let sample_name = if counter {
                format!("{}_total", family.name)
            } else {
                family.name.to_string()
            };
            if matches!(
                family.value,
                Value::Attempts | Value::Signal(_) | Value::Rtt(_)
            ) {
                // Only the rows with attempts or signals, from their own list.
                for (index, extra) in self.extras.iter().enumerate().skip(start) {
                    if out.len() >= budget {
                        cursor.row = Some(index);
                        return false;
                    }
                    let row = &self.rows[extra.row as usize];
                    match family.value {
                        Value::Signal(signal) => {
                            if extra.signals == [0; 4] {
                                continue;
                            }
                            out.push_str(&sample_name);
                            out.push_str(self.labels(row));
                            out.push_str(number.format(extra.signals[signal]));
                            out.push('\n');
                        }
                        Value::Rtt(index) => {
                            if extra.rtt[0] == 0 {
                                continue;
                            }
                            out.push_str(&sample_name);
                            out.push_str(self.labels(row));
                            if index == 0 {
                                out.push_str(number.format(extra.rtt[0]));
                            } else {
                                // Nanoseconds as exact decimal seconds.
                                push_unix_seconds(out, extra.rtt[index], 0);
                            }
                            out.push('\n');
                        }
                        _ => self.write_attempts(&sample_name, row, &extra.attempts, out),
                    }
                }
                cursor.family += 1;
                cursor.row = None;
                continue;
            }
            for (index, row) in self.rows.iter().enumerate().skip(start) {
                if out.len() >= budget {
                    cursor.row = Some(index);
                    return false;
                }
                let value = match family.value {
                    Value::Attempts | Value::Signal(_) | Value::Rtt(_) => None,
                    Value::Counter(field) => Some(row.counters[field]),
                    Value::Whole(value) => value(row).map(u64::from),
                    Value::Timestamp(value) => Some(value(row)).filter(|&ns| ns != 0),
                };
                let Some(value) = value else {
                    continue;
                };
                out.push_str(&sample_name);
                out.push_str(self.labels(row));
                if matches!(family.value, Value::Timestamp(_)) {
                    push_unix_seconds(out, value, self.unix_offset_ns);
                } else {
                    out.push_str(number.format(value));
                }
                out.push('\n');
            }
            cursor.family += 1;
            cursor.row = None;
        }
        true
    }

    /// A row's connection-attempt samples (none for a row without attempts).
    fn write_attempts(
        &self,
        sample_name: &str,
        row: &FlowRow,
        attempts: &[u64; 4],
        out: &mut String,
    ) {
        if attempts.iter().all(|&count| count == 0) {
            return;
        }
        // The row's label set is `{labels} `: the outcome goes before the closing brace.
        let labels = self.labels(row);
        let inner = &labels[1..labels.len() - 2];
        let mut number = itoa::Buffer::new();
        for outcome in Outcome::ALL {
            out.push_str(sample_name);
            out.push('{');
            out.push_str(inner);
            if !inner.is_empty() {
                out.push(',');
            }
            out.push_str("outcome=\"");
            out.push_str(outcome.as_str());
            out.push_str("\"} ");
            out.push_str(number.format(attempts[outcome as usize]));
            out.push('\n');
        }
    }

    /// Number of series.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }
}

/// `name="value"` pairs joined by commas, values escaped as the text formats require.
fn label_text(labels: &[(&'static str, String)]) -> String {
    let mut text = String::with_capacity(labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum());
    for (index, (name, value)) in labels.iter().enumerate() {
        if index > 0 {
            text.push(',');
        }
        text.push_str(name);
        text.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '"' => text.push_str("\\\""),
                '\n' => text.push_str("\\n"),
                c => text.push(c),
            }
        }
        text.push('"');
    }
    text
}

/// The name of interface `index` as a label value (`ifindexN` if it has none).
pub(crate) fn interface_name(index: u32, names: &BTreeMap<u32, String>) -> String {
    names
        .get(&index)
        .cloned()
        .unwrap_or_else(|| format!("ifindex{index}"))
}

/// Appends the label pairs of a flow series but the interface, comma-separated, in a fixed
/// order: the configured labels, where `other` rows say "other" in each. The values (addresses,
/// ports, direction names, "other") need no escaping.
pub(crate) fn push_series_labels(out: &mut String, key: &SeriesKey, enabled: &FlowLabels) {
    let mut first = true;
    let mut pair = |out: &mut String, name: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
    };
    let mut number = itoa::Buffer::new();
    if enabled.direction {
        pair(out, "direction");
        if key.other {
            out.push_str("other");
        } else if let Some(direction) = key.direction {
            out.push_str(
                network_probe_common::Direction::from_raw(u32::from(direction))
                    .map_or("unknown", |d| d.as_str()),
            );
        }
        out.push('"');
    }
    for (on, name, address) in [(enabled.src, "src", key.src), (enabled.dst, "dst", key.dst)] {
        if !on {
            continue;
        }
        pair(out, name);
        if key.other {
            out.push_str("other");
        } else {
            match address {
                Some(IpAddr::V4(address)) => {
                    for (index, octet) in address.octets().into_iter().enumerate() {
                        if index > 0 {
                            out.push('.');
                        }
                        out.push_str(number.format(octet));
                    }
                }
                Some(address) => {
                    let _ = write!(out, "{address}");
                }
                None => {}
            }
        }
        out.push('"');
    }
    for (on, name, port) in [
        (enabled.src_port, "src_port", key.src_port),
        (enabled.dst_port, "dst_port", key.dst_port),
    ] {
        if !on {
            continue;
        }
        pair(out, name);
        if key.other {
            out.push_str("other");
        } else if let Some(port) = port {
            out.push_str(number.format(port));
        }
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_families_module_names_every_family_in_order() {
        let names: Vec<&str> = FAMILIES
            .iter()
            .map(|family| family.name.strip_prefix("network_probe_flow_").unwrap())
            .collect();
        assert_eq!(names, crate::flows::families::NAMES);
    }

    fn series() -> FlowSeries {
        let mut snapshot = FlowSeries {
            unix_offset_ns: 1_000_000_000_000_000_000,
            ..FlowSeries::default()
        };
        let series = |packets: u64, window_scale: Option<u8>| RowValues {
            counters: FlowCounters {
                packets,
                ..FlowCounters::default()
            },
            window_scale,
            first_seen_ns: 0,
            last_seen_ns: 2_000_000_000,
            ..RowValues::default()
        };
        snapshot.push_row(None, "a=\"1\"", series(5, Some(7)));
        snapshot.push_row(Some("interface=\"eth0\""), "a=\"2\"", series(6, None));
        snapshot.push_row(Some("interface=\"eth0\""), "", series(8, None));
        snapshot
    }

    fn write_all(series: &FlowSeries, openmetrics: bool, budget: usize) -> (String, usize) {
        let mut cursor = FlowCursor::default();
        let mut text = String::new();
        let mut chunks = 0;
        loop {
            let mut chunk = String::new();
            let done = series.write(&mut cursor, openmetrics, &mut chunk, budget);
            text.push_str(&chunk);
            chunks += 1;
            if done {
                return (text, chunks);
            }
        }
    }

    #[test]
    fn families_in_both_formats() {
        let (openmetrics, _) = write_all(&series(), true, usize::MAX);
        assert!(openmetrics.starts_with(
            "# HELP network_probe_flow_packets Packets of the TCP flows with these labels (GSO \
             segments counted).\n# TYPE network_probe_flow_packets counter\n\
             network_probe_flow_packets_total{a=\"1\"} 5\n\
             network_probe_flow_packets_total{interface=\"eth0\",a=\"2\"} 6\n\
             network_probe_flow_packets_total{interface=\"eth0\"} 8\n"
        ));
        assert!(openmetrics.contains(
            "# TYPE network_probe_flow_window_scale gauge\nnetwork_probe_flow_window_scale{a=\"1\"} \
             7\n# HELP network_probe_flow_first_seen_timestamp_seconds"
        ));
        // first_seen 0 means never: no sample; last_seen 2 s after the monotonic epoch.
        assert!(!openmetrics.contains("network_probe_flow_first_seen_timestamp_seconds{"));
        assert!(
            openmetrics
                .contains("network_probe_flow_last_seen_timestamp_seconds{a=\"1\"} 1000000002\n")
        );
        let (text_004, _) = write_all(&series(), false, usize::MAX);
        assert!(text_004.contains("# HELP network_probe_flow_packets_total Packets "));
        assert!(text_004.contains("# TYPE network_probe_flow_packets_total counter\n"));
        assert!(text_004.contains("# TYPE network_probe_flow_window_scale gauge\n"));
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&text_004), samples(&openmetrics));
    }

    #[test]
    fn chunks_join_to_the_whole_text() {
        let (whole, one) = write_all(&series(), true, usize::MAX);
        assert_eq!(one, 1);
        let (chunked, many) = write_all(&series(), true, 1);
        assert_eq!(chunked, whole);
        assert!(many > 11, "{many} chunks");
        let (empty, _) = write_all(&FlowSeries::default(), true, 1);
        assert_eq!(empty.matches("# TYPE").count(), FAMILIES.len());
    }

    #[test]
    fn connection_attempts_carry_an_outcome_label() {
        let mut snapshot = FlowSeries::default();
        let values = |attempts| RowValues {
            counters: FlowCounters {
                attempts,
                ..FlowCounters::default()
            },
            ..RowValues::default()
        };
        snapshot.push_row(
            Some("interface=\"eth0\""),
            "dst=\"10.0.0.2\"",
            values([3, 1, 0, 2]),
        );
        snapshot.push_row(Some("interface=\"eth0\""), "", values([0; 4]));
        snapshot.push_row(None, "", values([1, 0, 0, 0]));
        let (text, _) = write_all(&snapshot, true, usize::MAX);
        let samples: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("network_probe_flow_connection_attempts_total"))
            .collect();
        let name = "network_probe_flow_connection_attempts_total";
        let row = "interface=\"eth0\",dst=\"10.0.0.2\"";
        assert_eq!(
            samples,
            [
                format!("{name}{{{row},outcome=\"answered\"}} 3"),
                format!("{name}{{{row},outcome=\"reset\"}} 1"),
                format!("{name}{{{row},outcome=\"unreachable\"}} 0"),
                format!("{name}{{{row},outcome=\"timeout\"}} 2"),
                format!("{name}{{outcome=\"answered\"}} 1"),
                format!("{name}{{outcome=\"reset\"}} 0"),
                format!("{name}{{outcome=\"unreachable\"}} 0"),
                format!("{name}{{outcome=\"timeout\"}} 0"),
            ]
        );
        assert!(text.contains("# TYPE network_probe_flow_connection_attempts counter\n"));
    }

    #[test]
    fn signals_are_written_for_the_rows_that_have_any() {
        let mut snapshot = FlowSeries::default();
        let values = |signals| RowValues {
            counters: FlowCounters {
                signals,
                ..FlowCounters::default()
            },
            ..RowValues::default()
        };
        snapshot.push_row(
            Some("interface=\"eth0\""),
            "src=\"10.0.0.1\"",
            values([3, 0, 1, 0]),
        );
        snapshot.push_row(
            Some("interface=\"eth0\""),
            "src=\"10.0.0.2\"",
            values([0; 4]),
        );
        snapshot.push_row(
            Some("interface=\"eth0\""),
            "src=\"other\"",
            values([9, 2, 0, 4]),
        );
        let (text, _) = write_all(&snapshot, true, 1);
        let samples = |name: &str| -> Vec<&str> {
            text.lines()
                .filter(|line| line.starts_with(name) && !line.starts_with('#'))
                .collect()
        };
        assert_eq!(
            samples("network_probe_flow_ce_packets_total"),
            [
                "network_probe_flow_ce_packets_total{interface=\"eth0\",src=\"10.0.0.1\"} 3",
                "network_probe_flow_ce_packets_total{interface=\"eth0\",src=\"other\"} 9",
            ]
        );
        assert_eq!(
            samples("network_probe_flow_pmtu_messages_total"),
            [
                "network_probe_flow_pmtu_messages_total{interface=\"eth0\",src=\"10.0.0.1\"} 0",
                "network_probe_flow_pmtu_messages_total{interface=\"eth0\",src=\"other\"} 4",
            ]
        );
        assert_eq!(
            samples("network_probe_flow_tcp_ece_segments_total").len(),
            2
        );
        assert_eq!(
            samples("network_probe_flow_tcp_cwr_segments_total").len(),
            2
        );
        assert!(text.contains("# TYPE network_probe_flow_ce_packets counter\n"));
        // Not chosen: not written.
        snapshot.families = Some("packets".parse().unwrap());
        let (text, _) = write_all(&snapshot, false, usize::MAX);
        assert!(!text.contains("ce_packets"), "{text}");
    }

    #[test]
    fn only_the_chosen_families_are_written() {
        let mut chosen = series();
        chosen.families = Some("bytes,window_scale".parse().unwrap());
        let (text, _) = write_all(&chosen, true, 1);
        let types: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("# TYPE"))
            .collect();
        assert_eq!(
            types,
            [
                "# TYPE network_probe_flow_bytes counter",
                "# TYPE network_probe_flow_window_scale gauge"
            ]
        );
        assert!(text.contains("network_probe_flow_bytes_total{a=\"1\"} 0\n"));
        assert!(!text.contains("network_probe_flow_packets"));
    }

    /// Heap in use (glibc's arena plus its mmapped blocks), bytes.
    fn heap_in_use() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        info.uordblks + info.hblkhd
    }

    /// What the flow table and one scrape's snapshot hold at 100k series (the overhead
    /// benchmark's worst case: one label set per flow, every family), by stage. A measurement,
    /// not a check: `cargo test -p network-probe --lib heap_at_100k -- --ignored --nocapture`
    /// (alone: other tests' allocations would count).
    #[test]
    #[ignore = "a measurement, run alone"]
    fn heap_at_100k_series() {
        use crate::flows::{admission::RankBy, outcomes::Outcome, table::FlowOptions};
        use network_probe_common::{FAMILY_IPV4, FlowCounts, FlowKey, FlowStats};
        const FLOWS: u32 = 100_000;
        let mb = |bytes: usize| bytes as f64 / 1e6;
        let start = heap_in_use();
        let mut table = FlowTable::new(FlowOptions {
            labels: FlowLabels::DEFAULT.parse().unwrap(),
            max_series: 200_000,
            idle_timeout: std::time::Duration::from_secs(600),
            families: FlowFamilies::all(),
            rank_by: RankBy::Bytes,
            rank_window: std::time::Duration::from_secs(60),
        });
        let key = |i: u32| {
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&(u32::from_be_bytes([10, 232, 0, 0]) + i).to_be_bytes());
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&[10, 0, 0, 1]);
            FlowKey {
                src,
                dst,
                src_port: 40_000,
                dst_port: 80,
                ifindex: 2,
                family: FAMILY_IPV4,
                direction: 0,
                _pad: [0; 2],
            }
        };
        let second = 1_000_000_000u64;
        let read = || -> Vec<(FlowKey, FlowStats)> {
            (0..FLOWS)
                .map(|i| {
                    let stats = FlowStats {
                        counts: FlowCounts {
                            packets: 1,
                            bytes: 54,
                            syn: 1,
                            df: 1,
                            first_seen_ns: second,
                            last_seen_ns: second,
                            ..FlowCounts::default()
                        },
                        ..FlowStats::default()
                    };
                    (key(i), stats)
                })
                .collect()
        };
        let flows = read();
        let read_bytes = heap_in_use() - start;
        table.refresh(2 * second, flows);
        let after_first = heap_in_use() - start;
        // The pending-SYN maps hold 16384 of the SYNs; each times out once.
        let attempts: Vec<_> = (0..16_384)
            .map(|i| (key(i), Outcome::Timeout, second))
            .collect();
        table.count_attempts(&attempts);
        drop(attempts);
        table.refresh(3 * second, read());
        let table_bytes = heap_in_use() - start;
        let names = BTreeMap::from([(2, "veth-a".to_string())]);
        let snapshot = FlowSeries::of_table(&table, &names);
        drop(snapshot);
        let with_labels = heap_in_use() - start;
        let snapshot = FlowSeries::of_table(&table, &names);
        let with_snapshot = heap_in_use() - start;
        let mut cursor = FlowCursor::default();
        let mut chunk = String::with_capacity(CHUNK_BYTES + 512);
        let mut body = 0;
        loop {
            chunk.clear();
            let done = snapshot.write(&mut cursor, true, &mut chunk, CHUNK_BYTES);
            body += chunk.len();
            if done {
                break;
            }
        }
        println!(
            "heap at {FLOWS} series: one map read {:.1} MB; table after the first refresh {:.1} MB, \
             after the second with attempts {:.1} MB, with label text {:.1} MB; snapshot {:.1} MB \
             (rows {} x {} B, label sets {:.1} MB); body {:.1} MB",
            mb(read_bytes),
            mb(after_first),
            mb(table_bytes),
            mb(with_labels),
            mb(with_snapshot - with_labels),
            snapshot.rows.capacity(),
            std::mem::size_of::<FlowRow>(),
            mb(snapshot.label_sets.capacity()),
            mb(body),
        );
        println!(
            "sizes: FlowRow {} RowValues {} FlowCounters {} Series {} SeriesKey {} FlowKey {} \
             FlowStats {}",
            std::mem::size_of::<FlowRow>(),
            std::mem::size_of::<RowValues>(),
            std::mem::size_of::<FlowCounters>(),
            std::mem::size_of::<Series>(),
            std::mem::size_of::<SeriesKey>(),
            std::mem::size_of::<FlowKey>(),
            std::mem::size_of::<FlowStats>(),
        );
        println!("{}", table.memory_report());
    }

    #[test]
    fn timestamps_are_exact_decimal_seconds() {
        let unix = |monotonic: u64, offset_ns: i128| {
            let mut text = String::new();
            push_unix_seconds(&mut text, monotonic, offset_ns);
            text
        };
        assert_eq!(unix(2_000_000_000, 1_764_000_000_000_000_000), "1764000002");
        assert_eq!(
            unix(1_500_000_000, 1_764_000_000_000_000_000),
            "1764000001.5"
        );
        assert_eq!(unix(1, 1_764_000_000_000_000_000), "1764000000.000000001");
        assert_eq!(unix(123_456_789, 0), "0.123456789");
        // A clock offset that would put the time before 1970 (a broken clock) gives 0.
        assert_eq!(unix(5, -10), "0");
    }

    /// The label pairs as the exposition wrote them before they were formatted at each scrape:
    /// each value a `String`, joined by [`label_text`].
    fn reference_labels(key: &SeriesKey, enabled: &FlowLabels) -> String {
        let value = |v: Option<String>| {
            if key.other {
                "other".to_string()
            } else {
                v.unwrap_or_default()
            }
        };
        let mut labels = Vec::new();
        if enabled.direction {
            let direction = key.direction.map(|d| {
                network_probe_common::Direction::from_raw(u32::from(d))
                    .map_or("unknown", |d| d.as_str())
                    .to_string()
            });
            labels.push(("direction", value(direction)));
        }
        if enabled.src {
            labels.push(("src", value(key.src.map(|a| a.to_string()))));
        }
        if enabled.dst {
            labels.push(("dst", value(key.dst.map(|a| a.to_string()))));
        }
        if enabled.src_port {
            labels.push(("src_port", value(key.src_port.map(|p| p.to_string()))));
        }
        if enabled.dst_port {
            labels.push(("dst_port", value(key.dst_port.map(|p| p.to_string()))));
        }
        label_text(&labels)
    }

    #[test]
    fn series_labels_are_written_as_before() {
        let v4 = |a, b, c, d| Some(IpAddr::from([a, b, c, d]));
        let v6: Option<IpAddr> = Some("2001:db8::1:0:0:7".parse().unwrap());
        let keys = [
            SeriesKey {
                other: false,
                ifindex: Some(2),
                direction: Some(0),
                src: v4(10, 0, 0, 1),
                dst: v4(255, 255, 0, 100),
                src_port: Some(0),
                dst_port: Some(65_535),
            },
            SeriesKey {
                other: false,
                ifindex: None,
                direction: Some(1),
                src: v6,
                dst: Some("::ffff:10.0.0.1".parse().unwrap()),
                src_port: Some(443),
                dst_port: Some(40_000),
            },
            SeriesKey {
                other: false,
                ifindex: None,
                direction: Some(7),
                src: v4(0, 0, 0, 0),
                dst: v6,
                src_port: None,
                dst_port: None,
            },
            SeriesKey {
                other: true,
                ifindex: Some(3),
                direction: None,
                src: None,
                dst: None,
                src_port: None,
                dst_port: None,
            },
        ];
        let mut compared = 0;
        for labels in [
            "interface",
            "interface,src,dst",
            "direction,src,dst,src_port,dst_port",
            "dst_port",
            "src,direction",
        ] {
            let enabled: FlowLabels = labels.parse().unwrap();
            for key in &keys {
                let mut written = String::from("x");
                push_series_labels(&mut written, key, &enabled);
                assert_eq!(
                    written[1..],
                    reference_labels(key, &enabled),
                    "{labels} {key:?}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 20);
        // And in a row, with and without the interface.
        let mut snapshot = FlowSeries::default();
        let enabled: FlowLabels = "interface,src,dst".parse().unwrap();
        snapshot.push_row_with(
            Some("interface=\"eth0\""),
            |out| push_series_labels(out, &keys[0], &enabled),
            RowValues::default(),
        );
        let only: FlowLabels = "interface".parse().unwrap();
        snapshot.push_row_with(
            Some("interface=\"eth0\""),
            |out| push_series_labels(out, &keys[0], &only),
            RowValues::default(),
        );
        snapshot.push_row_with(
            None,
            |out| push_series_labels(out, &keys[1], &"src".parse().unwrap()),
            RowValues::default(),
        );
        let sets: Vec<&str> = snapshot
            .rows
            .iter()
            .map(|row| snapshot.labels(row))
            .collect();
        assert_eq!(
            sets,
            [
                "{interface=\"eth0\",src=\"10.0.0.1\",dst=\"255.255.0.100\"} ",
                "{interface=\"eth0\"} ",
                "{src=\"2001:db8::1:0:0:7\"} ",
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(
            label_text(&[
                ("interface", "a\"b\\c\nd".into()),
                ("src", "10.0.0.1".into())
            ]),
            "interface=\"a\\\"b\\\\c\\nd\",src=\"10.0.0.1\""
        );
    }
}
