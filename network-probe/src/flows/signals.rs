//! Per-flow passive signals (issue 26): the CE marks, ECE and CWR segments and path-MTU
//! messages the datapath counts per flow direction in maps of their own (see
//! [`crate::kernel::signals`]), turned into what each entry gained since the previous read.
//!
//! The kernel entries come and go (an LRU map: least recently used entries are evicted when
//! full), so each read is compared with the last one per entry: an entry seen before gives what
//! it counted since, one that is new or was created anew gives all of it, and one that left
//! keeps in its series what earlier reads found. The gains are counted in the flow table
//! ([`crate::flows::table::FlowTable::count_signals`]), in the series of their flow, so the
//! signal families follow the budget, the ranking and the `other` rows of the flow series
//! (they are flow families, `--flows.families`). Only read when one of them is carried.

use std::collections::HashMap;

use network_probe_common::{FlowKey, FlowSignals};

/// What the last read found per kernel entry.
#[derive(Debug, Default)]
pub(crate) struct SignalReads {
    last: HashMap<FlowKey, FlowSignals, foldhash::fast::RandomState>,
}

impl SignalReads {
    /// What each entry of `read` counted since the last read (entries that gained nothing left
    /// out).
    pub(crate) fn gains(
        &mut self,
        read: Vec<(FlowKey, FlowSignals)>,
    ) -> Vec<(FlowKey, FlowSignals)> {
        let mut last = HashMap::with_capacity_and_hasher(read.len(), Default::default());
        let mut gains = Vec::new();
        for (key, signals) in read {
            let gained = match self.last.get(&key) {
                Some(earlier) => signals.since(earlier),
                None => signals,
            };
            last.insert(key, signals);
            if gained != FlowSignals::default() {
                gains.push((key, gained));
            }
        }
        self.last = last;
        gains
    }
}

#[cfg(test)]
mod tests {
    use network_probe_common::FlowKey4;

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

    fn total(gains: &[(FlowKey, FlowSignals)]) -> u64 {
        gains.iter().map(|(_, signals)| signals.ce).sum()
    }

    #[test]
    fn gains_never_go_backwards_and_count_departed_entries_once() {
        let mut reads = SignalReads::default();
        assert_eq!(
            total(&reads.gains(vec![(key(1, 1000), ce(3)), (key(1, 1001), ce(2))])),
            5
        );
        // One entry counts on, the other left the map: nothing more of it.
        assert_eq!(total(&reads.gains(vec![(key(1, 1000), ce(4))])), 1);
        // Created anew with a smaller count: all of it is new.
        assert_eq!(total(&reads.gains(vec![(key(1, 1000), ce(1))])), 1);
        // Nothing new: no gain listed.
        assert!(reads.gains(vec![(key(1, 1000), ce(1))]).is_empty());
    }
}
