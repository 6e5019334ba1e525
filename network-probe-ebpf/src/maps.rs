//! Every map of the eBPF object. Sizes are defaults: user space resizes FLOWS at load time.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuHashMap},
};
use network_probe_common::{
    DEVICE_STATS_MAX_ENTRIES, DeviceKey, DeviceStats, FLOWS_DEFAULT_MAX_ENTRIES, FlowKey, FlowStats,
};

/// Per-interface, per-direction statistics. Entries are created by user space before it
/// attaches to an interface, so the programs never insert here.
#[map(name = "DEVICE_STATS")]
pub static DEVICE_STATS: PerCpuHashMap<DeviceKey, DeviceStats> =
    PerCpuHashMap::with_max_entries(DEVICE_STATS_MAX_ENTRIES, 0);

/// Per-flow, per-direction TCP statistics; least recently used entries are evicted when full.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowStats> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_MAX_ENTRIES, 0);
