//! Connection outcomes seen from user space: the pending-SYN maps and per-interface counters
//! the TC programs keep for TCP connection attempts (see `network-probe-ebpf/src/outcomes.rs`
//! and `network-probe-common`'s `outcomes` module). This module takes the maps out of the
//! loaded object, hands the connect timeout to it before loading, reads the attempts, deletes
//! the ones counted, and zeroes a slot's counters when an interface gets it.
//!
//! The maps are not pinned: a restart starts them empty (attempts in flight at the restart are
//! not counted; a counter reset to Prometheus).

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuValues},
};
use log::warn;
use network_probe_common::{
    CONNECT_STATS_MAP, CONNECT_TIMEOUT_GLOBAL, ConnectStats, Direction, FlowKey, FlowKey4,
    FlowKey6, KernelFlowKey, PENDING_SYNS_MAX_ENTRIES, PENDING_SYNS4_MAP, PENDING_SYNS6_MAP,
    PendingSyn,
};

use crate::error::{Error, Result};
use crate::kernel::{map_batch, object::take_map};

/// The connect timeout in the form the object takes it; kept alive while the loader borrows it.
pub struct ConnectTimeout(u64);

impl ConnectTimeout {
    pub fn new(timeout: Duration) -> Self {
        ConnectTimeout(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader.override_global(CONNECT_TIMEOUT_GLOBAL, &self.0, true);
    }
}

/// The maps of the connection-attempt tracking.
pub struct AttemptMaps {
    pending4: HashMap<MapData, FlowKey4, PendingSyn>,
    pending6: HashMap<MapData, FlowKey6, PendingSyn>,
    stats: PerCpuArray<MapData, ConnectStats>,
}

impl std::fmt::Debug for AttemptMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptMaps").finish_non_exhaustive()
    }
}

/// Capacity of each pending-SYN map.
pub const PENDING_CAPACITY: u32 = PENDING_SYNS_MAX_ENTRIES;

impl AttemptMaps {
    /// Takes the maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(AttemptMaps {
            pending4: take_map(ebpf, PENDING_SYNS4_MAP, TryFrom::try_from)?,
            pending6: take_map(ebpf, PENDING_SYNS6_MAP, TryFrom::try_from)?,
            stats: take_map(ebpf, CONNECT_STATS_MAP, TryFrom::try_from)?,
        })
    }

    /// Every attempt in the maps, keyed by its SYN's flow key.
    pub fn pending(&self) -> Vec<(FlowKey, PendingSyn)> {
        let mut attempts: Vec<(FlowKey, PendingSyn)> =
            map_batch::read_hash_map(&self.pending4, PENDING_SYNS4_MAP)
                .into_iter()
                .map(|(key, attempt)| (FlowKey::from(key), attempt))
                .collect();
        attempts.extend(
            map_batch::read_hash_map(&self.pending6, PENDING_SYNS6_MAP)
                .into_iter()
                .map(|(key, attempt)| (FlowKey::from(key), attempt)),
        );
        attempts
    }

    /// Deletes counted attempts (a key already gone is no error: a new SYN may have replaced
    /// it, or nothing).
    pub fn remove(&mut self, keys: &[FlowKey]) {
        for key in keys {
            let result = match key.kernel() {
                Some(KernelFlowKey::V4(key)) => self.pending4.remove(&key),
                Some(KernelFlowKey::V6(key)) => self.pending6.remove(&key),
                None => continue,
            };
            if let Err(err) = result
                && !matches!(&err, aya::maps::MapError::KeyNotFound)
            {
                warn!("deleting a counted connection attempt: {err}");
            }
        }
    }

    /// The counters of `slot` in `direction`, summed over CPUs.
    pub fn stats(&self, slot: u32, direction: Direction) -> ConnectStats {
        let mut total = ConnectStats::default();
        match self.stats.get(&(slot * 2 + direction as u32), 0) {
            Ok(per_cpu) => per_cpu.iter().for_each(|cpu| total.accumulate(cpu)),
            Err(err) => warn!("reading {CONNECT_STATS_MAP} slot {slot}: {err}"),
        }
        total
    }

    /// Zeroes `slot`'s counters (an interface is about to get it).
    pub fn zero(&mut self, slot: u32, cpus: usize) -> Result<()> {
        for direction in [Direction::Ingress, Direction::Egress] {
            let zero = PerCpuValues::try_from(vec![ConnectStats::default(); cpus])
                .map_err(|err| Error::Other(format!("per-CPU values: {err}")))?;
            self.stats
                .set(slot * 2 + direction as u32, zero, 0)
                .map_err(|err| {
                    Error::datapath(format!("zeroing {CONNECT_STATS_MAP} slot {slot}"), &err)
                })?;
        }
        Ok(())
    }
}
