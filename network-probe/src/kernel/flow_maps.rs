//! The kernel's flow maps, read and pruned as one table: the flow slot table (`FLOW_SLOTS`,
//! mapped into this process, and the per-CPU `FLOW_SLOT_COUNTERS`), where new flows go first,
//! and the LRU maps `FLOWS4` / `FLOWS6` for flows whose slot was taken (see `FLOW_SLOTS_MAP` in
//! network-probe-common for why there are two kinds).
//!
//! - [`FlowMaps::read`] returns every flow once: a flow found in both kinds (created by two
//!   CPUs at once, or left in a slot by an earlier run) has its counts added up.
//! - [`FlowMaps::remove`] deletes flows. A slot is retired in steps, so that nothing a program
//!   counts is lost or lands in the next flow's slot: its owner word becomes
//!   [`SLOT_DRAINING`] (programs stop counting there), then [`ProgramBarrier::wait`] returns
//!   once every program that might still have been counting has finished, then the per-CPU
//!   counters are zeroed and the owner word set to [`SLOT_FREE`] last.

use std::{
    collections::HashMap as StdHashMap,
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray, PerCpuValues};
use log::warn;
use network_probe_common::{
    FAMILY_IPV4, FAMILY_IPV6, FLOW_SLOT_COUNTERS_MAP, FLOW_SLOTS_MAP, FLOWS4_MAP, FLOWS6_MAP,
    FlowCounts, FlowKey, FlowKey4, FlowKey6, FlowSlot, FlowStats, KernelFlowKey, SLOT_DRAINING,
    SLOT_FREE,
};

use crate::{kernel::map_batch, kernel::program_barrier::ProgramBarrier};

type FastMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// Bytes of per-CPU slot counters read per system call (a few hundred slots on a large machine,
/// the whole default table on a small one).
const PER_CPU_BATCH_BYTES: usize = 4 << 20;

/// Entries found by the last [`FlowMaps::read`], per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMapEntries {
    pub flows4: usize,
    pub flows6: usize,
    /// Slots holding a flow.
    pub slots: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FlowMaps {
    flows4: HashMap<MapData, FlowKey4, FlowStats>,
    flows6: HashMap<MapData, FlowKey6, FlowStats>,
    /// `None` when the daemon runs without a slot table (`--flows.slots 0`).
    slots: Option<SlotTable>,
    entries: FlowMapEntries,
}

impl FlowMaps {
    /// The flow maps of a loaded object; `slot_table` with its slot maps (their `max_entries`
    /// slots), else the programs were loaded without one.
    pub fn new(
        flows4: HashMap<MapData, FlowKey4, FlowStats>,
        flows6: HashMap<MapData, FlowKey6, FlowStats>,
        slot_table: Option<(Array<MapData, FlowSlot>, PerCpuArray<MapData, FlowCounts>)>,
    ) -> io::Result<Self> {
        let slots = slot_table
            .map(|(slots, counters)| SlotTable::new(slots, counters))
            .transpose()?;
        Ok(FlowMaps {
            flows4,
            flows6,
            slots,
            entries: FlowMapEntries::default(),
        })
    }

    /// Every flow, once (see the module documentation).
    pub fn read(&mut self) -> Vec<(FlowKey, FlowStats)> {
        // Room for what the last read found and then some: the vector grows at most once.
        let last = self.entries.flows4 + self.entries.flows6 + self.entries.slots;
        let mut flows = Vec::with_capacity(last + last / 8);
        self.read_into(&mut |key, stats| flows.push((key, stats)));
        flows
    }

    /// Every flow, once, handed to `sink` as the maps are read: the LRU maps' flows batch by
    /// batch, then the slots' (their counts completed by any LRU entry of the same flow), so
    /// that no more than a batch and the slots' flows are held here. A refresh of 100k flows
    /// held them all in a vector first (140 bytes each: 15.7 MB allocated and freed at every
    /// read, more than the table's own map of them). Returns whether the read is complete:
    /// `false` when a batch read failed after some of a map's entries were handed over (they
    /// cannot be taken back, and reading the map again entry by entry would hand them over
    /// twice), so the entries not handed over must not be taken for gone.
    pub fn read_into(&mut self, sink: &mut dyn FnMut(FlowKey, FlowStats)) -> bool {
        let empty = FastMap::default();
        let mut located = &empty;
        let mut slot_flows = Vec::new();
        if let Some(table) = &mut self.slots {
            table.located.clear();
            for (position, (key, stats, index)) in table.read().into_iter().enumerate() {
                table.located.insert(key, (position, index));
                slot_flows.push((key, stats));
            }
            located = &table.located;
        }
        let slots = slot_flows.len();
        let (flows4, complete4) =
            read_lru_map(&self.flows4, FLOWS4_MAP, located, &mut slot_flows, sink);
        let (flows6, complete6) =
            read_lru_map(&self.flows6, FLOWS6_MAP, located, &mut slot_flows, sink);
        for (key, stats) in slot_flows {
            sink(key, stats);
        }
        self.entries = FlowMapEntries {
            flows4,
            flows6,
            slots,
        };
        complete4 && complete6
    }

    /// Deletes flows (idle ones, already folded into totals by the caller) wherever they are.
    pub fn remove(&mut self, keys: &[FlowKey]) {
        for key in keys {
            // Already gone (evicted meanwhile) is fine.
            let _ = match key.kernel() {
                Some(KernelFlowKey::V4(key)) => self.flows4.remove(&key),
                Some(KernelFlowKey::V6(key)) => self.flows6.remove(&key),
                None => continue,
            };
        }
        if let Some(table) = &mut self.slots {
            table.retire(keys);
        }
    }

    /// What the last [`FlowMaps::read`] found, per map.
    pub fn entries(&self) -> FlowMapEntries {
        self.entries
    }

    /// The slot the last [`FlowMaps::read`] found `key` in, if it was in one.
    pub fn slot_of(&self, key: &FlowKey) -> Option<u32> {
        let (_, index) = self.slots.as_ref()?.located.get(key)?;
        Some(*index)
    }
}

/// Adds what a second place counted for the same flow to `total`; the tracking state is that of
/// the place that saw the flow last.
fn add_flow(total: &mut FlowStats, other: &FlowStats) {
    if other.counts.last_seen_ns > total.counts.last_seen_ns {
        total.tracking = other.tracking;
    }
    total.counts.accumulate(&other.counts);
}

/// Hands every entry of one LRU flow map to `sink`, read in batches, with the keys in their
/// family-neutral form; a flow that is also in a slot (`located`: its position in
/// `slot_flows`) has the entry's counts added to the slot's instead. Returns the number of
/// entries read and whether the read is complete (see [`FlowMaps::read_into`]).
fn read_lru_map<K: aya::Pod + Into<FlowKey>>(
    map: &HashMap<MapData, K, FlowStats>,
    name: &str,
    located: &FastMap<FlowKey, (usize, u32)>,
    slot_flows: &mut [(FlowKey, FlowStats)],
    sink: &mut dyn FnMut(FlowKey, FlowStats),
) -> (usize, bool) {
    // Entries of flows also in a slot, added once the whole map is read (a failed batch read
    // is then read again entry by entry without them counted twice).
    let mut in_slots: Vec<(usize, FlowStats)> = Vec::new();
    let mut handed = 0;
    let fd = map.map().fd().as_fd().as_raw_fd();
    let batched = map_batch::visit_all(fd, |keys: &[K], values: &[FlowStats]| {
        for (key, stats) in keys.iter().zip(values) {
            let key: FlowKey = (*key).into();
            match located.get(&key) {
                Some(&(position, _)) => in_slots.push((position, *stats)),
                None => {
                    handed += 1;
                    sink(key, *stats);
                }
            }
        }
    });
    let mut complete = true;
    if let Err(err) = batched {
        in_slots.clear();
        if handed > 0 {
            warn!(
                "reading {name} in batches: {err} after {handed} entries; the others are read \
                 at the next refresh"
            );
            complete = false;
        } else {
            warn!("reading {name} in batches: {err}; reading it entry by entry");
            for item in map.iter() {
                match item {
                    Ok((key, stats)) => {
                        let key: FlowKey = key.into();
                        match located.get(&key) {
                            Some(&(position, _)) => in_slots.push((position, stats)),
                            None => {
                                handed += 1;
                                sink(key, stats);
                            }
                        }
                    }
                    Err(err) => warn!("reading {name}: {err}"),
                }
            }
        }
    }
    let read = handed + in_slots.len();
    for (position, stats) in in_slots {
        add_flow(&mut slot_flows[position].1, &stats);
    }
    (read, complete)
}

/// `FLOW_SLOTS` mapped into this process (`BPF_F_MMAPABLE`): the owner words are read and
/// written with atomic instructions, as the programs do.
struct SlotTable {
    /// Kept open for the counters' descriptor and so the mapping's map outlives it.
    _slots_map: Array<MapData, FlowSlot>,
    counters: PerCpuArray<MapData, FlowCounts>,
    mapping: NonNull<FlowSlot>,
    mapping_len: usize,
    slot_count: usize,
    cpus: usize,
    barrier: ProgramBarrier,
    /// Each flow the last read found in a slot: its position in what the read returned, and
    /// its slot.
    located: FastMap<FlowKey, (usize, u32)>,
    /// Slots set draining whose barrier failed: retried on the next removal.
    draining: Vec<u32>,
}

// SAFETY: the mapping is shared memory owned by this value; every access goes through &self or
// &mut self (the owner words atomically), as for any other buffer.
unsafe impl Send for SlotTable {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for SlotTable {}

impl SlotTable {
    fn new(
        slots_map: Array<MapData, FlowSlot>,
        counters: PerCpuArray<MapData, FlowCounts>,
    ) -> io::Result<Self> {
        let slot_count = slots_map.len() as usize;
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
        let page = 4096;
        let mapping_len = (slot_count * size_of::<FlowSlot>()).div_ceil(page) * page;
        // SAFETY: maps the array's values (BPF_F_MMAPABLE) shared, at offset 0 and no longer
        // than the array; the descriptor is valid for the call, and the mapping keeps the map
        // alive until munmap.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                slots_map.map().fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("mapping {FLOW_SLOTS_MAP} into memory: {err}"),
            ));
        }
        let mut table = SlotTable {
            _slots_map: slots_map,
            counters,
            mapping: NonNull::new(address as *mut FlowSlot).expect("mmap returned a mapping"),
            mapping_len,
            slot_count,
            cpus,
            barrier: ProgramBarrier::new()?,
            located: FastMap::default(),
            draining: Vec::new(),
        };
        // A previous run that died while retiring slots (pinned maps) left them draining: their
        // counts were folded into its saved totals before, so they are freed now.
        table.draining = (0..table.slot_count as u32)
            .filter(|&index| table.owner(index as usize).load(Ordering::Acquire) == SLOT_DRAINING)
            .collect();
        table.retire(&[]);
        Ok(table)
    }

    fn slot(&self, index: usize) -> *mut FlowSlot {
        assert!(index < self.slot_count);
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.mapping.as_ptr().add(index) }
    }

    fn owner(&self, index: usize) -> &AtomicU64 {
        // SAFETY: the owner word of a slot in the mapping: 8-byte aligned (a 64-byte value at a
        // page-aligned start), valid for the mapping's life; programs update it atomically too.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slot(index)).owner) }
    }

    /// Every flow in a slot, with its slot.
    fn read(&mut self) -> Vec<(FlowKey, FlowStats, u32)> {
        let mut held = Vec::new();
        for index in 0..self.slot_count {
            let family = self.owner(index).load(Ordering::Acquire);
            if family == u64::from(FAMILY_IPV4) || family == u64::from(FAMILY_IPV6) {
                // SAFETY: a slot of the mapping; its key and tracking do not change while it
                // is owned (tracking may, racing like any map read).
                let slot = unsafe { std::ptr::read_volatile(self.slot(index)) };
                held.push((index as u32, family, slot));
            }
        }
        if held.is_empty() {
            return Vec::new();
        }
        // Every slot's copies added up, a bounded batch of slots at a time: the per-CPU values
        // are 80 bytes per slot and possible CPU, which on a large machine is tens of MB.
        let mut totals = vec![FlowCounts::default(); self.slot_count];
        let mut seen = 0;
        let cpus = self.cpus;
        let read = map_batch::lookup_batches::<u32, FlowCounts>(
            self.counters.map().fd().as_fd().as_raw_fd(),
            cpus,
            (PER_CPU_BATCH_BYTES / (cpus * size_of::<FlowCounts>())).max(1),
            |indexes, values| {
                for (index, copies) in indexes.iter().zip(values.chunks_exact(cpus)) {
                    if let Some(total) = totals.get_mut(*index as usize) {
                        for copy in copies {
                            total.accumulate(copy);
                        }
                        seen += 1;
                    }
                }
            },
        );
        match read {
            Ok(()) if seen == self.slot_count => {}
            Ok(()) => {
                warn!(
                    "reading {FLOW_SLOT_COUNTERS_MAP}: {seen} of {} slots returned",
                    self.slot_count
                );
                return Vec::new();
            }
            Err(err) => {
                warn!("reading {FLOW_SLOT_COUNTERS_MAP}: {err}");
                return Vec::new();
            }
        }
        held.into_iter()
            .map(|(index, family, slot)| {
                let stats = FlowStats {
                    counts: totals[index as usize],
                    tracking: slot.tracking,
                };
                (slot_key(family, &slot.key), stats, index)
            })
            .collect()
    }

    /// Retires the slots of `keys` that the last read found (see the module documentation).
    fn retire(&mut self, keys: &[FlowKey]) {
        for key in keys {
            let Some((_, index)) = self.located.remove(key) else {
                continue;
            };
            let family = u64::from(key.family);
            // Only the flow that was read there: the owner word says it still is.
            if self
                .owner(index as usize)
                .compare_exchange(family, SLOT_DRAINING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.draining.push(index);
            }
        }
        if self.draining.is_empty() {
            return;
        }
        if let Err(err) = self.barrier.wait() {
            warn!(
                "waiting for the programs before freeing {} flow slots: {err}; retried later",
                self.draining.len()
            );
            return;
        }
        for index in std::mem::take(&mut self.draining) {
            let zeros = PerCpuValues::try_from(vec![FlowCounts::default(); self.cpus])
                .expect("one value per possible CPU");
            if let Err(err) = self.counters.set(index, zeros, 0) {
                // Left draining: never counted into again, never reused.
                warn!("zeroing {FLOW_SLOT_COUNTERS_MAP}[{index}]: {err}; the slot stays unused");
                continue;
            }
            let slot = self.slot(index as usize);
            // SAFETY: a draining slot: no program writes its key or tracking (they write only
            // slots they own or claimed from free).
            unsafe {
                (&raw mut (*slot).key).write_volatile([0; 5]);
                (&raw mut (*slot).tracking).write_volatile(Default::default());
            }
            self.owner(index as usize)
                .store(SLOT_FREE, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("slot_count", &self.slot_count)
            .field("cpus", &self.cpus)
            .finish_non_exhaustive()
    }
}

impl Drop for SlotTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.mapping.as_ptr() as *mut libc::c_void, self.mapping_len);
        }
    }
}

/// The flow key a slot of `family` holds.
fn slot_key(family: u64, words: &[u64; 5]) -> FlowKey {
    if family == u64::from(FAMILY_IPV4) {
        FlowKey4::from_words([words[0], words[1]]).into()
    } else {
        FlowKey6::from_words(*words).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_round_trip_through_words() {
        let v4 = FlowKey4 {
            src: [192, 0, 2, 1],
            dst: [198, 51, 100, 2],
            src_port: 40000,
            dst_port: 443,
            ifindex_direction: 9,
        };
        let mut words = [0; 5];
        words[..2].copy_from_slice(v4.words());
        assert_eq!(slot_key(FAMILY_IPV4.into(), &words), FlowKey::from(v4));
        let v6 = FlowKey6 {
            src: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            src_port: 1,
            dst_port: 65535,
            ifindex_direction: 70_001,
        };
        assert_eq!(slot_key(FAMILY_IPV6.into(), v6.words()), FlowKey::from(v6));
    }

    #[test]
    fn a_flow_in_two_places_adds_up() {
        let mut slot = FlowStats::default();
        slot.counts.packets = 10;
        slot.counts.first_seen_ns = 5;
        slot.counts.last_seen_ns = 50;
        slot.tracking.next_seq = 1;
        let mut lru = FlowStats::default();
        lru.counts.packets = 3;
        lru.counts.retransmits = 1;
        lru.counts.first_seen_ns = 2;
        lru.counts.last_seen_ns = 60;
        lru.tracking.next_seq = 2;
        add_flow(&mut slot, &lru);
        assert_eq!(slot.counts.packets, 13);
        assert_eq!(slot.counts.retransmits, 1);
        assert_eq!(
            (slot.counts.first_seen_ns, slot.counts.last_seen_ns),
            (2, 60)
        );
        // The tracking of the place seen last.
        assert_eq!(slot.tracking.next_seq, 2);
    }
}
