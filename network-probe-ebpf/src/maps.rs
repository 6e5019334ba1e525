//! Every map of the eBPF object. Sizes are defaults: user space resizes the flow maps at load
//! time.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
};
use network_probe_common::{
    DEVICE_STATS_MAX_ENTRIES, DeviceStats, FLOWS_DEFAULT_MAX_ENTRIES, FlowKey4, FlowKey6,
    FlowStats, IFINDEX_LIMIT,
};

/// Interface index -> slot in [`DEVICE_STATS`] plus one (0: not watched). Written by user space
/// before it attaches to an interface; the programs only read it.
#[map(name = "IFINDEX_SLOTS")]
pub static IFINDEX_SLOTS: Array<u32> = Array::with_max_entries(IFINDEX_LIMIT, 0);

/// Per-interface, per-direction statistics at `2 * slot + direction`, one copy per CPU.
#[map(name = "DEVICE_STATS")]
pub static DEVICE_STATS: PerCpuArray<DeviceStats> =
    PerCpuArray::with_max_entries(DEVICE_STATS_MAX_ENTRIES, 0);

/// Per-flow, per-direction TCP statistics of IPv4 flows; least recently used entries are
/// evicted when full.
#[map(name = "FLOWS4")]
pub static FLOWS4: LruHashMap<FlowKey4, FlowStats> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_MAX_ENTRIES, 0);

/// The same for IPv6 flows.
#[map(name = "FLOWS6")]
pub static FLOWS6: LruHashMap<FlowKey6, FlowStats> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_MAX_ENTRIES, 0);
