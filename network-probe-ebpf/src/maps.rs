//! Every map of the eBPF object, and the constants user space sets at load time. Sizes are
//! defaults: user space resizes the flow maps and the slot table at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use network_probe_common::{
    DEVICE_STATS_MAX_ENTRIES, DROPS_MAX_ENTRIES, DeviceStats, DropKey, FLOW_SLOTS_DEFAULT,
    FLOWS_DEFAULT_MAX_ENTRIES, FlowCounts, FlowKey4, FlowKey6, FlowSlot, FlowStats, IFINDEX_LIMIT,
};

/// `BPF_F_NO_PREALLOC` from linux/bpf.h.
const BPF_F_NO_PREALLOC: u32 = 1;

/// `BPF_F_MMAPABLE` from linux/bpf.h.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Interface index -> slot in [`DEVICE_STATS`] plus one (0: not watched). Written by user space
/// before it attaches to an interface; the programs only read it.
#[map(name = "IFINDEX_SLOTS")]
pub(crate) static IFINDEX_SLOTS: Array<u32> = Array::with_max_entries(IFINDEX_LIMIT, 0);

/// Per-interface, per-direction statistics at `2 * slot + direction`, one copy per CPU.
#[map(name = "DEVICE_STATS")]
pub(crate) static DEVICE_STATS: PerCpuArray<DeviceStats> =
    PerCpuArray::with_max_entries(DEVICE_STATS_MAX_ENTRIES, 0);

/// The flow slot table's keys and shared per-flow state (see `FLOW_SLOTS_MAP` in
/// network-probe-common). User space maps it into its memory (`BPF_F_MMAPABLE`) to retire
/// slots with atomic stores of the owner word.
#[map(name = "FLOW_SLOTS")]
pub(crate) static FLOW_SLOTS: Array<FlowSlot> =
    Array::with_max_entries(FLOW_SLOTS_DEFAULT, BPF_F_MMAPABLE);

/// The counters of the flow in the slot of the same index, one copy per CPU.
#[map(name = "FLOW_SLOT_COUNTERS")]
pub(crate) static FLOW_SLOT_COUNTERS: PerCpuArray<FlowCounts> =
    PerCpuArray::with_max_entries(FLOW_SLOTS_DEFAULT, 0);

/// Per-flow, per-direction TCP statistics of IPv4 flows whose slot was taken; least recently
/// used entries are evicted when full.
#[map(name = "FLOWS4")]
pub(crate) static FLOWS4: LruHashMap<FlowKey4, FlowStats> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_MAX_ENTRIES, 0);

/// The same for IPv6 flows.
#[map(name = "FLOWS6")]
pub(crate) static FLOWS6: LruHashMap<FlowKey6, FlowStats> =
    LruHashMap::with_max_entries(FLOWS_DEFAULT_MAX_ENTRIES, 0);

/// Packet drops by reason, watched interface and protocol class, one copy per CPU (see
/// `crate::drops`). Entries are allocated as drops first occur (`BPF_F_NO_PREALLOC`): a
/// preallocated per-CPU hash would take its full size on every CPU up front, even with drops
/// off.
#[map(name = "DROPS")]
pub(crate) static DROPS: PerCpuHashMap<DropKey, u64> =
    PerCpuHashMap::with_max_entries(DROPS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Drops that found [`DROPS`] full, one copy per CPU.
#[map(name = "DROPS_LOST")]
pub(crate) static DROPS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// What the coarse clock read at the last jiffy (see `account::coarse_now`).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct ClockCache {
    pub jiffies: u64,
    pub coarse_ns: u64,
}

/// The one [`ClockCache`], shared by every CPU: global data, which a program reaches without a
/// map lookup (a per-CPU map cost one per packet). Written about once per jiffy, by the first
/// CPU to see the jiffy change; not pinned, it only saves work.
#[unsafe(no_mangle)]
pub(crate) static mut CLOCK_CACHE: ClockCache = ClockCache {
    jiffies: 0,
    coarse_ns: 0,
};

/// Slots in [`FLOW_SLOTS`] (a power of two), or 0 when the daemon runs without the slot table
/// (every flow in the LRU maps). Read-only data that user space sets before loading, so the
/// verifier knows the value and drops the paths it rules out.
#[unsafe(no_mangle)]
static FLOW_SLOT_COUNT: u32 = 0;

/// See [`FLOW_SLOT_COUNT`].
#[inline(always)]
pub(crate) fn flow_slot_count() -> u32 {
    // SAFETY: a read of an initialised static; volatile so the compiler does not fold the
    // placeholder value in.
    unsafe { core::ptr::read_volatile(&FLOW_SLOT_COUNT) }
}

/// `network_probe_common::flow_slot_shift` of [`FLOW_SLOT_COUNT`], set with it.
#[unsafe(no_mangle)]
static FLOW_SLOT_SHIFT: u32 = 63;

/// See [`FLOW_SLOT_SHIFT`].
#[inline(always)]
pub(crate) fn flow_slot_shift() -> u32 {
    // SAFETY: as for `flow_slot_count`.
    unsafe { core::ptr::read_volatile(&FLOW_SLOT_SHIFT) }
}
