//! TCP connection outcomes in user space: what each refresh makes of the kernel's pending-SYN
//! maps (see [`crate::kernel::outcomes`]). Pure: the caller reads the maps, hands the attempts
//! to [`Attempts::harvest`], counts what it returns in the flow table and deletes the keys it
//! returns.
//!
//! - An attempt the program answered (`answered`, `reset`, `unreachable`) is counted once and
//!   deleted.
//! - An attempt still pending longer than the connect timeout after its first SYN is counted
//!   once as `timeout` (the program never answers an attempt past that age, so the two cannot
//!   both count it). It stays in the map, remembered here as counted, for [`LINGER`] after its
//!   latest SYN: the client's later SYN retransmits (Linux retries for about two minutes) then
//!   count as retransmits, not as new attempts. A new SYN under the same key replaces it (a
//!   new first-SYN time): a new attempt.
//! - Per interface and direction (the SYN's), every outcome is counted here too, so the
//!   interface totals and the flow series count the same attempts. Attempts the program
//!   replaced before a refresh saw their answer (a new SYN with another sequence number on the
//!   same 4-tuple within one refresh interval) are counted nowhere.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use network_probe_common::{
    ATTEMPT_ANSWERED, ATTEMPT_PENDING, ATTEMPT_RESET, ATTEMPT_UNREACHABLE, FlowKey, PendingSyn,
};

/// How long a timed-out attempt stays after its latest SYN.
pub(crate) const LINGER: Duration = Duration::from_secs(130);

/// How a connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Answered = 0,
    Reset = 1,
    Unreachable = 2,
    Timeout = 3,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Answered,
        Outcome::Reset,
        Outcome::Unreachable,
        Outcome::Timeout,
    ];

    /// The `outcome` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Reset => "reset",
            Outcome::Unreachable => "unreachable",
            Outcome::Timeout => "timeout",
        }
    }

    fn of_state(state: u32) -> Option<Outcome> {
        match state {
            ATTEMPT_ANSWERED => Some(Outcome::Answered),
            ATTEMPT_RESET => Some(Outcome::Reset),
            ATTEMPT_UNREACHABLE => Some(Outcome::Unreachable),
            _ => None,
        }
    }
}

/// What one harvest found: the attempts to count (SYN flow key, outcome, latest SYN time) and
/// the keys to delete from the maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Harvest {
    pub(crate) counted: Vec<(FlowKey, Outcome, u64)>,
    pub(crate) delete: Vec<FlowKey>,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Attempts {
    timeout_ns: u64,
    linger_ns: u64,
    /// Attempts counted as timeouts and still in the maps: key -> their first SYN's time.
    timed_out: HashMap<FlowKey, u64>,
    /// Attempts counted, by (interface index, direction of the SYN) and outcome.
    totals: BTreeMap<(u32, u8), [u64; 4]>,
}

impl Attempts {
    pub(crate) fn new(timeout: Duration) -> Self {
        Attempts {
            timeout_ns: timeout.as_nanos() as u64,
            linger_ns: LINGER.as_nanos() as u64,
            timed_out: HashMap::new(),
            totals: BTreeMap::new(),
        }
    }

    /// Takes a read of the pending-SYN maps at `now_ns` (CLOCK_MONOTONIC).
    pub(crate) fn harvest(&mut self, now_ns: u64, pending: Vec<(FlowKey, PendingSyn)>) -> Harvest {
        let mut harvest = Harvest::default();
        let mut still_timed_out = HashMap::new();
        for (key, attempt) in pending {
            if let Some(outcome) = Outcome::of_state(attempt.state) {
                harvest.counted.push((key, outcome, attempt.last_sent_ns));
                harvest.delete.push(key);
                continue;
            }
            if attempt.state != ATTEMPT_PENDING
                || now_ns.saturating_sub(attempt.first_sent_ns) <= self.timeout_ns
            {
                continue;
            }
            if self.timed_out.get(&key) != Some(&attempt.first_sent_ns) {
                harvest
                    .counted
                    .push((key, Outcome::Timeout, attempt.last_sent_ns));
            }
            if now_ns.saturating_sub(attempt.last_sent_ns) > self.linger_ns {
                harvest.delete.push(key);
            } else {
                still_timed_out.insert(key, attempt.first_sent_ns);
            }
        }
        self.timed_out = still_timed_out;
        for (key, outcome, _) in &harvest.counted {
            self.totals.entry((key.ifindex, key.direction)).or_default()[*outcome as usize] += 1;
        }
        harvest
    }

    /// Attempts counted so far by (interface index, direction of the SYN), by outcome.
    pub(crate) fn totals(&self) -> &BTreeMap<(u32, u8), [u64; 4]> {
        &self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use network_probe_common::{Direction, FlowKey4};

    const SECOND: u64 = 1_000_000_000;

    fn key(port: u16) -> FlowKey {
        FlowKey::from(FlowKey4 {
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            src_port: port,
            dst_port: 80,
            ifindex_direction: network_probe_common::ifindex_direction(7, Direction::Egress),
        })
    }

    fn attempt(first: u64, last: u64, state: u32) -> PendingSyn {
        PendingSyn {
            first_sent_ns: first,
            last_sent_ns: last,
            seq: 1,
            state,
        }
    }

    #[test]
    fn answers_are_counted_once_and_deleted() {
        let mut attempts = Attempts::new(Duration::from_secs(3));
        let harvest = attempts.harvest(
            2 * SECOND,
            vec![
                (key(1), attempt(SECOND, SECOND, ATTEMPT_ANSWERED)),
                (key(2), attempt(SECOND, SECOND, ATTEMPT_RESET)),
                (key(3), attempt(SECOND, SECOND, ATTEMPT_UNREACHABLE)),
                (key(4), attempt(SECOND, SECOND, ATTEMPT_PENDING)),
            ],
        );
        assert_eq!(
            harvest.counted,
            vec![
                (key(1), Outcome::Answered, SECOND),
                (key(2), Outcome::Reset, SECOND),
                (key(3), Outcome::Unreachable, SECOND),
            ]
        );
        assert_eq!(harvest.delete, vec![key(1), key(2), key(3)]);
        let egress = (7, Direction::Egress as u8);
        assert_eq!(attempts.totals()[&egress], [1, 1, 1, 0]);
    }

    #[test]
    fn a_timeout_is_counted_once_and_lingers_for_retransmits() {
        let mut attempts = Attempts::new(Duration::from_secs(3));
        let pending = |last| vec![(key(1), attempt(SECOND, last, ATTEMPT_PENDING))];
        // Not yet past the timeout (3 s after the first SYN at 1 s).
        assert_eq!(
            attempts.harvest(4 * SECOND, pending(SECOND)),
            Harvest::default()
        );
        let harvest = attempts.harvest(4 * SECOND + 1, pending(2 * SECOND));
        assert_eq!(
            harvest.counted,
            vec![(key(1), Outcome::Timeout, 2 * SECOND)]
        );
        assert!(harvest.delete.is_empty());
        // Seen again, retransmitted meanwhile: not counted again, kept.
        assert_eq!(
            attempts.harvest(10 * SECOND, pending(8 * SECOND)),
            Harvest::default()
        );
        // A new attempt under the same key (another first SYN): counted.
        let renewed = vec![(key(1), attempt(20 * SECOND, 20 * SECOND, ATTEMPT_PENDING))];
        assert_eq!(attempts.harvest(24 * SECOND, renewed).counted.len(), 1);
        // Silent for the linger after its latest SYN: deleted, not counted again.
        let old = vec![(key(1), attempt(20 * SECOND, 20 * SECOND, ATTEMPT_PENDING))];
        let harvest = attempts.harvest(20 * SECOND + LINGER.as_nanos() as u64 + 1, old);
        assert!(harvest.counted.is_empty());
        assert_eq!(harvest.delete, vec![key(1)]);
        assert_eq!(
            attempts.totals()[&(7, Direction::Egress as u8)],
            [0, 0, 0, 2]
        );
    }
}
