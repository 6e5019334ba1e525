//! Per-flow passive signals (issue 26): the CE marks, ECE and CWR segments and path-MTU
//! messages the datapath counts per flow direction in maps of their own (see
//! [`crate::kernel::signals`]), summed per flow series with the flow table's label set.
//!
//! The kernel entries come and go (an LRU map: least recently used entries are evicted when
//! full), so the counters are kept here as totals per series: each read adds what every entry
//! counted since the previous read (all of it for an entry that is new or was created anew),
//! and an entry that left keeps what it had counted in its series' total. Series beyond the
//! flow table's cap count in their interface's `other` row, like the flow series.

use std::collections::HashMap;

use network_probe_common::{FlowKey, FlowSignals};

use crate::flows::table::{FlowLabels, SeriesKey, address};

/// Totals per flow series, and what the last read found per kernel entry.
#[derive(Debug, Default)]
pub(crate) struct FlowSignalTotals {
    last: HashMap<FlowKey, FlowSignals>,
    totals: HashMap<SeriesKey, FlowSignals>,
}

impl FlowSignalTotals {
    /// Adds what the entries `read` counted since the last read to their series' totals.
    pub(crate) fn update(
        &mut self,
        read: Vec<(FlowKey, FlowSignals)>,
        labels: &FlowLabels,
        cap: usize,
    ) {
        let mut last = HashMap::with_capacity(read.len());
        for (key, signals) in read {
            let delta = match self.last.get(&key) {
                Some(earlier) => signals.since(earlier),
                None => signals,
            };
            last.insert(key, signals);
            if delta == FlowSignals::default() {
                continue;
            }
            let mut series = series_key(labels, &key);
            if !self.totals.contains_key(&series) && self.totals.len() >= cap {
                series = SeriesKey {
                    other: true,
                    ifindex: series.ifindex,
                    direction: None,
                    src: None,
                    dst: None,
                    src_port: None,
                    dst_port: None,
                };
            }
            self.totals.entry(series).or_default().add(&delta);
        }
        self.last = last;
    }

    /// Every series' totals.
    pub(crate) fn totals(&self) -> impl Iterator<Item = (&SeriesKey, &FlowSignals)> {
        self.totals.iter()
    }
}

/// The flow series flow `key` belongs to with the label set `labels` (as the flow table has it).
fn series_key(labels: &FlowLabels, key: &FlowKey) -> SeriesKey {
    SeriesKey {
        other: false,
        ifindex: labels.interface.then_some(key.ifindex),
        direction: labels.direction.then_some(key.direction),
        src: labels.src.then(|| address(key.family, &key.src)),
        dst: labels.dst.then(|| address(key.family, &key.dst)),
        src_port: labels.src_port.then_some(key.src_port),
        dst_port: labels.dst_port.then_some(key.dst_port),
    }
}

#[cfg(test)]
mod tests {
    use network_probe_common::{FAMILY_IPV4, FlowKey4};

    use super::*;

    fn key(src: u8, src_port: u16) -> FlowKey {
        FlowKey::from(FlowKey4 {
            src: [10, 0, 0, src],
            dst: [10, 0, 0, 9],
            src_port,
            dst_port: 80,
            ifindex_direction: 2 << 1,
        })
    }

    fn ce(count: u64) -> FlowSignals {
        FlowSignals {
            ce: count,
            ..FlowSignals::default()
        }
    }

    fn total(totals: &FlowSignalTotals, other: bool) -> u64 {
        totals
            .totals()
            .filter(|(series, _)| series.other == other)
            .map(|(_, signals)| signals.ce)
            .sum()
    }

    #[test]
    fn totals_never_go_backwards_and_flows_share_their_series() {
        let labels: FlowLabels = FlowLabels::DEFAULT.parse().unwrap();
        let mut totals = FlowSignalTotals::default();
        // Two connections of the same hosts: one series with the default labels.
        totals.update(
            vec![(key(1, 1000), ce(3)), (key(1, 1001), ce(2))],
            &labels,
            10,
        );
        assert_eq!(totals.totals().count(), 1);
        assert_eq!(total(&totals, false), 5);
        // One entry counts on, the other left the map: its count stays.
        totals.update(vec![(key(1, 1000), ce(4))], &labels, 10);
        assert_eq!(total(&totals, false), 6);
        // Created anew with a smaller count: all of it is new.
        totals.update(vec![(key(1, 1000), ce(1))], &labels, 10);
        assert_eq!(total(&totals, false), 7);
        assert_eq!(key(1, 1000).family, FAMILY_IPV4);
    }

    #[test]
    fn series_beyond_the_cap_count_in_other() {
        let labels: FlowLabels = FlowLabels::DEFAULT.parse().unwrap();
        let mut totals = FlowSignalTotals::default();
        totals.update(
            vec![(key(1, 1000), ce(1)), (key(2, 1000), ce(1))],
            &labels,
            1,
        );
        assert_eq!(total(&totals, false), 1);
        assert_eq!(total(&totals, true), 1);
    }
}
