//! Passive RTT (issue 26) seen from user space: the per-interface [`RttStats`] histograms and
//! the per-flow [`FlowRtt`] entries the TC programs fill from TCP timestamps (see
//! `network-probe-ebpf/src/rtt.rs`).
//!
//! Like the passive signals' counters ([`crate::kernel::signals`]), the histograms follow the
//! interface slots: zeroed when a slot is assigned, folded into a total kept under the
//! interface's name when the interface is forgotten. The maps are not pinned: a restart of the
//! daemon restarts them.
//!
//! The RTT work itself runs in programs of its own (`tc_rtt_store`, `tc_rtt_echo`,
//! `xdp_rtt_echo`), which the accounting programs tail-call through the program arrays
//! `RTT_TC_PROGRAMS` and `RTT_XDP_PROGRAMS`: [`RttMaps::take`] loads them and fills the arrays,
//! whose descriptors it keeps (the kernel empties a program array when user space closes its
//! last one; a tail call into an empty entry fails and the packet is accounted without RTT).

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{SchedClassifier, Xdp},
    util::nr_cpus,
};
use log::warn;
use network_probe_common::{
    Direction, FLOW_RTT4_MAP, FLOW_RTT6_MAP, FlowKey, FlowKey4, FlowKey6, FlowRtt, RTT_STATS_MAP,
    RttStats,
};

use crate::error::{Error, Result};
use crate::kernel::object::take_map;

/// The RTT maps of the loaded object, and the totals of forgotten interfaces.
pub(crate) struct RttMaps {
    stats: PerCpuArray<MapData, RttStats>,
    flows4: HashMap<MapData, FlowKey4, FlowRtt>,
    flows6: HashMap<MapData, FlowKey6, FlowRtt>,
    /// Histograms of interfaces forgotten since start, by name.
    retired: BTreeMap<String, RttStats>,
    /// The program arrays the accounting programs tail-call the RTT programs through, kept
    /// open for as long as the datapath runs.
    _programs: [ProgramArray<MapData>; 2],
}

/// The RTT programs' names, as in the object, and their indexes in their program arrays
/// (network-probe-ebpf/src/rtt.rs).
const TC_PROGRAMS_MAP: &str = "RTT_TC_PROGRAMS";
const XDP_PROGRAMS_MAP: &str = "RTT_XDP_PROGRAMS";
const TC_PROGRAMS: [(&str, u32); 2] = [("tc_rtt_store", 0), ("tc_rtt_echo", 1)];
const XDP_ECHO_PROGRAM: (&str, u32) = ("xdp_rtt_echo", 0);

impl RttMaps {
    /// Takes the RTT maps out of the loaded object, and loads the RTT programs into their
    /// program arrays: the TC ones, and the XDP one when ingress is XDP (`xdp`).
    pub(crate) fn take(ebpf: &mut Ebpf, xdp: bool) -> Result<RttMaps> {
        let mut tc_programs = take_map(ebpf, TC_PROGRAMS_MAP, ProgramArray::try_from)?;
        let mut xdp_programs = take_map(ebpf, XDP_PROGRAMS_MAP, ProgramArray::try_from)?;
        for (name, index) in TC_PROGRAMS {
            let program: &mut SchedClassifier = program_mut(ebpf, name)?;
            program
                .load()
                .map_err(|err| Error::datapath(format!("verifying program {name}"), &err))?;
            let (info, fd) = (program.info(), program.fd());
            register(name, info, fd, &mut tc_programs, TC_PROGRAMS_MAP, index)?;
        }
        if xdp {
            let (name, index) = XDP_ECHO_PROGRAM;
            let program: &mut Xdp = program_mut(ebpf, name)?;
            program
                .load()
                .map_err(|err| Error::datapath(format!("verifying program {name}"), &err))?;
            let (info, fd) = (program.info(), program.fd());
            register(name, info, fd, &mut xdp_programs, XDP_PROGRAMS_MAP, index)?;
        }
        Ok(RttMaps {
            stats: take_map(ebpf, RTT_STATS_MAP, PerCpuArray::try_from)?,
            flows4: take_map(ebpf, FLOW_RTT4_MAP, HashMap::try_from)?,
            flows6: take_map(ebpf, FLOW_RTT6_MAP, HashMap::try_from)?,
            retired: BTreeMap::new(),
            _programs: [tc_programs, xdp_programs],
        })
    }

    /// Zeroes `slot`'s histograms for an interface about to use it.
    pub(crate) fn zero(&mut self, slot: u32) -> Result<()> {
        let cpus =
            nr_cpus().map_err(|(path, err)| Error::Other(format!("reading {path}: {err}")))?;
        for direction in [Direction::Ingress, Direction::Egress] {
            let zero = PerCpuValues::try_from(vec![RttStats::ZERO; cpus])
                .map_err(|err| Error::Other(format!("per-CPU values: {err}")))?;
            self.stats
                .set(index(slot, direction), zero, 0)
                .map_err(|err| {
                    Error::datapath(format!("zeroing {RTT_STATS_MAP} slot {slot}"), &err)
                })?;
        }
        Ok(())
    }

    /// Folds `slot`'s histograms into the total kept under `name` (the interface is forgotten).
    pub(crate) fn retire(&mut self, name: &str, slot: u32) {
        if let Some(stats) = self.read(slot) {
            self.retired
                .entry(name.to_string())
                .or_insert(RttStats::ZERO)
                .accumulate(&stats);
        }
    }

    /// `slot`'s histograms, both directions and every CPU summed (samples are taken on
    /// ingress).
    fn read(&self, slot: u32) -> Option<RttStats> {
        let mut total = RttStats::ZERO;
        for direction in [Direction::Ingress, Direction::Egress] {
            match self.stats.get(&index(slot, direction), 0) {
                Ok(per_cpu) => {
                    for cpu in per_cpu.iter() {
                        total.accumulate(cpu);
                    }
                }
                Err(err) => {
                    warn!("reading {RTT_STATS_MAP} slot {slot}: {err}");
                    return None;
                }
            }
        }
        Some(total)
    }

    /// Every interface's histogram: the retired totals plus what the slots hold now, given the
    /// slot and name of each interface attached now.
    pub(crate) fn samples<'a>(
        &self,
        attached: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> Vec<(String, RttStats)> {
        let mut totals = self.retired.clone();
        for (slot, interface) in attached {
            if let Some(stats) = self.read(slot) {
                totals
                    .entry(interface.to_string())
                    .or_insert(RttStats::ZERO)
                    .accumulate(&stats);
            }
        }
        totals.into_iter().collect()
    }

    /// Every entry of the per-flow RTT maps.
    pub(crate) fn flows(&self) -> Vec<(FlowKey, FlowRtt)> {
        let mut flows = Vec::new();
        for entry in self.flows4.iter() {
            match entry {
                Ok((key, rtt)) => flows.push((FlowKey::from(key), rtt)),
                // An entry deleted (evicted) under the iteration: the rest is still read.
                Err(err) => warn!("reading {FLOW_RTT4_MAP}: {err}"),
            }
        }
        for entry in self.flows6.iter() {
            match entry {
                Ok((key, rtt)) => flows.push((FlowKey::from(key), rtt)),
                Err(err) => warn!("reading {FLOW_RTT6_MAP}: {err}"),
            }
        }
        flows
    }
}

/// Index of a slot's histogram for `direction` (as in `DEVICE_STATS`).
fn index(slot: u32, direction: Direction) -> u32 {
    slot * 2 + direction as u32
}

/// Logs the verifier's work on the loaded program `name` (at debug) and puts it at `index` of
/// the program array `array` (named `array_name`).
fn register(
    name: &str,
    info: std::result::Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
    fd: std::result::Result<&aya::programs::ProgramFd, aya::programs::ProgramError>,
    array: &mut ProgramArray<MapData>,
    array_name: &str,
    index: u32,
) -> Result<()> {
    if let Some(count) = info.ok().and_then(|info| info.verified_instruction_count()) {
        log::debug!("verified program {name}: {count} instructions processed");
    }
    let fd = fd.map_err(|err| Error::datapath(format!("program {name}"), &err))?;
    array
        .set(index, fd, 0)
        .map_err(|err| Error::datapath(format!("filling {array_name}"), &err))
}

/// The program `name` of the object, as the program type `T`.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Other(format!("eBPF object has no program {name}")))?
        .try_into()
        .map_err(|err| Error::datapath(format!("program {name}"), &err))
}
