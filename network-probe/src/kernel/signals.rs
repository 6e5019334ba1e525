//! The passive signals of issue 26 seen from user space: the per-interface [`SignalStats`]
//! (ECN codepoints, path-MTU messages and the MTUs they announce) and the per-flow
//! [`FlowSignals`] (CE marks, ECE, CWR, path-MTU messages quoting the flow) that the TC
//! programs count in maps of their own (see `network-probe-ebpf/src/signals.rs`).
//!
//! The interface counters live in the same slots as the interface statistics and follow them:
//! zeroed when a slot is assigned, folded into a total kept under the interface's name when
//! the interface is forgotten, so they never go backwards while the daemon runs. The maps are
//! not pinned: a restart of the daemon restarts them.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use log::warn;
use network_probe_common::{
    Direction, FLOW_SIGNALS4_MAP, FLOW_SIGNALS6_MAP, FlowKey, FlowKey4, FlowKey6, FlowSignals,
    SIGNAL_STATS_MAP, SignalStats,
};

use crate::error::{Error, Result};
use crate::kernel::{map_batch, object::take_map};

/// The signal maps of the loaded object, and the totals of forgotten interfaces.
pub(crate) struct Signals {
    stats: PerCpuArray<MapData, SignalStats>,
    flows4: HashMap<MapData, FlowKey4, FlowSignals>,
    flows6: HashMap<MapData, FlowKey6, FlowSignals>,
    /// Signal counters of interfaces forgotten since start, by name and direction.
    retired: BTreeMap<(String, Direction), SignalStats>,
}

/// The signal counters of one interface and direction, summed over CPUs (and over the
/// interface's forgotten devices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalSample {
    pub interface: String,
    pub direction: Direction,
    pub stats: SignalStats,
}

impl Signals {
    /// Takes the signal maps out of the loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Signals> {
        Ok(Signals {
            stats: take_map(ebpf, SIGNAL_STATS_MAP, PerCpuArray::try_from)?,
            flows4: take_map(ebpf, FLOW_SIGNALS4_MAP, HashMap::try_from)?,
            flows6: take_map(ebpf, FLOW_SIGNALS6_MAP, HashMap::try_from)?,
            retired: BTreeMap::new(),
        })
    }

    /// Zeroes `slot`'s counters for an interface about to use it.
    pub(crate) fn zero(&mut self, slot: u32) -> Result<()> {
        let cpus =
            nr_cpus().map_err(|(path, err)| Error::Other(format!("reading {path}: {err}")))?;
        for direction in [Direction::Ingress, Direction::Egress] {
            let zero = PerCpuValues::try_from(vec![SignalStats::ZERO; cpus])
                .map_err(|err| Error::Other(format!("per-CPU values: {err}")))?;
            self.stats
                .set(index(slot, direction), zero, 0)
                .map_err(|err| {
                    Error::datapath(format!("zeroing {SIGNAL_STATS_MAP} slot {slot}"), &err)
                })?;
        }
        Ok(())
    }

    /// Folds `slot`'s counters into the total kept under `name` (the interface is forgotten).
    pub(crate) fn retire(&mut self, name: &str, slot: u32) {
        for direction in [Direction::Ingress, Direction::Egress] {
            if let Some(stats) = self.read(slot, direction) {
                self.retired
                    .entry((name.to_string(), direction))
                    .or_insert(SignalStats::ZERO)
                    .accumulate(&stats);
            }
        }
    }

    /// `slot`'s counters for `direction`, summed over CPUs.
    fn read(&self, slot: u32, direction: Direction) -> Option<SignalStats> {
        match self.stats.get(&index(slot, direction), 0) {
            Ok(per_cpu) => {
                let mut total = SignalStats::ZERO;
                for cpu in per_cpu.iter() {
                    total.accumulate(cpu);
                }
                Some(total)
            }
            Err(err) => {
                warn!("reading {SIGNAL_STATS_MAP} slot {slot}: {err}");
                None
            }
        }
    }

    /// Every interface's counters: the retired totals plus what the slots hold now, given the
    /// slot and name of each interface attached now.
    pub(crate) fn samples<'a>(
        &self,
        attached: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> Vec<SignalSample> {
        let mut totals = self.retired.clone();
        for (slot, interface) in attached {
            for direction in [Direction::Ingress, Direction::Egress] {
                if let Some(stats) = self.read(slot, direction) {
                    totals
                        .entry((interface.to_string(), direction))
                        .or_insert(SignalStats::ZERO)
                        .accumulate(&stats);
                }
            }
        }
        totals
            .into_iter()
            .map(|((interface, direction), stats)| SignalSample {
                interface,
                direction,
                stats,
            })
            .collect()
    }

    /// Every entry of the per-flow signal maps.
    pub(crate) fn flows(&self) -> Vec<(FlowKey, FlowSignals)> {
        let mut flows: Vec<(FlowKey, FlowSignals)> =
            map_batch::read_hash_map(&self.flows4, FLOW_SIGNALS4_MAP)
                .into_iter()
                .map(|(key, signals)| (FlowKey::from(key), signals))
                .collect();
        flows.extend(
            map_batch::read_hash_map(&self.flows6, FLOW_SIGNALS6_MAP)
                .into_iter()
                .map(|(key, signals)| (FlowKey::from(key), signals)),
        );
        flows
    }
}

/// Index of a slot's counters for `direction` (as in `DEVICE_STATS`).
fn index(slot: u32, direction: Direction) -> u32 {
    slot * 2 + direction as u32
}
