//! Passive RTT per flow series (issue 26): what each refresh makes of the kernel's per-flow
//! RTT entries (see [`crate::kernel::rtt`]). The entries come and go (LRU maps), so each read
//! is turned into what every entry gained since the previous read (all of it for an entry that
//! is new or was created anew), which the flow table counts in the entry's series
//! ([`crate::flows::table::FlowTable::count_rtt`]) like the flow counters: under the series
//! budget, ranked out into the interface's `other` row, saved in the state file.

use std::collections::HashMap;

use network_probe_common::{FlowKey, FlowRtt};

/// What one kernel entry gained since the previous read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttGain {
    pub samples: u64,
    pub sum_ns: u64,
    /// The entry's smallest sample so far, nanoseconds (0: none).
    pub min_ns: u64,
}

/// What the last read found per kernel entry.
#[derive(Debug, Default)]
pub(crate) struct RttReads {
    last: HashMap<FlowKey, FlowRtt>,
}

impl RttReads {
    /// What the entries `read` gained since the last read (entries that gained nothing left
    /// out).
    pub(crate) fn update(&mut self, read: Vec<(FlowKey, FlowRtt)>) -> Vec<(FlowKey, RttGain)> {
        let mut last = HashMap::with_capacity(read.len());
        let mut gains = Vec::new();
        for (key, rtt) in read {
            let earlier = self.last.get(&key).copied().unwrap_or_default();
            let gain = if rtt.samples < earlier.samples || rtt.sum_ns < earlier.sum_ns {
                // Evicted and created anew: all of it is new.
                RttGain {
                    samples: rtt.samples,
                    sum_ns: rtt.sum_ns,
                    min_ns: rtt.min_ns,
                }
            } else {
                RttGain {
                    samples: rtt.samples - earlier.samples,
                    sum_ns: rtt.sum_ns - earlier.sum_ns,
                    min_ns: rtt.min_ns,
                }
            };
            last.insert(key, rtt);
            if gain.samples != 0 {
                gains.push((key, gain));
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

    fn key(port: u16) -> FlowKey {
        FlowKey::from(FlowKey4 {
            src: [10, 0, 0, 2],
            dst: [10, 0, 0, 1],
            src_port: 80,
            dst_port: port,
            ifindex_direction: 2 << 1,
        })
    }

    fn rtt(samples: u64, sum_ns: u64, min_ns: u64) -> FlowRtt {
        FlowRtt {
            samples,
            sum_ns,
            min_ns,
        }
    }

    #[test]
    fn gains_since_the_last_read_and_anew_after_eviction() {
        let mut reads = RttReads::default();
        let first = reads.update(vec![(key(1), rtt(2, 300, 100)), (key(2), rtt(0, 0, 0))]);
        assert_eq!(
            first,
            vec![(
                key(1),
                RttGain {
                    samples: 2,
                    sum_ns: 300,
                    min_ns: 100
                }
            )]
        );
        // Nothing new: no gain.
        assert!(reads.update(vec![(key(1), rtt(2, 300, 100))]).is_empty());
        let more = reads.update(vec![(key(1), rtt(5, 1_000, 90))]);
        assert_eq!(more[0].1.samples, 3);
        assert_eq!(more[0].1.sum_ns, 700);
        assert_eq!(more[0].1.min_ns, 90);
        // Created anew with fewer samples: all of it.
        let anew = reads.update(vec![(key(1), rtt(1, 50, 50))]);
        assert_eq!(anew[0].1.samples, 1);
        assert_eq!(anew[0].1.sum_ns, 50);
    }
}
