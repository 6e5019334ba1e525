//! The maps of the passive signals (issue 26: ECN codepoints, path-MTU messages) and the
//! updates shared by [`crate::ecn`] and [`crate::pmtu`]: the interface's per-CPU
//! [`SignalStats`] (indexed like `DEVICE_STATS`) and the per-flow [`FlowSignals`] entry, made
//! only when a flow has something to count here.
//!
//! They are maps of their own, not fields of the interface and flow statistics, so that those
//! layouts (pinned across restarts) stay as they are; the price is one inlined per-CPU array
//! lookup per packet (see BENCHMARKS.md for the step table).

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use network_probe_common::{
    DEVICE_STATS_MAX_ENTRIES, Direction, FLOW_SIGNALS_MAX_ENTRIES, FlowKey4, FlowKey6, FlowSignals,
    SignalStats,
};

use crate::atomic::atomic_add;

/// `BPF_NOEXIST`: create only if absent.
const BPF_NOEXIST: u64 = 1;

/// Per-interface, per-direction signal counters at `2 * slot + direction`, one copy per CPU.
#[map(name = "SIGNAL_STATS")]
pub(crate) static SIGNAL_STATS: PerCpuArray<SignalStats> =
    PerCpuArray::with_max_entries(DEVICE_STATS_MAX_ENTRIES, 0);

/// Per-flow signals of IPv4 flows (see `FLOW_SIGNALS4_MAP` in network-probe-common).
#[map(name = "FLOW_SIGNALS4")]
pub(crate) static FLOW_SIGNALS4: LruHashMap<FlowKey4, FlowSignals> =
    LruHashMap::with_max_entries(FLOW_SIGNALS_MAX_ENTRIES, 0);

/// The same for IPv6 flows.
#[map(name = "FLOW_SIGNALS6")]
pub(crate) static FLOW_SIGNALS6: LruHashMap<FlowKey6, FlowSignals> =
    LruHashMap::with_max_entries(FLOW_SIGNALS_MAX_ENTRIES, 0);

/// A flow key that has a per-flow signal map.
pub(crate) trait SignalKey: Copy + 'static {
    fn signal_map() -> &'static LruHashMap<Self, FlowSignals>;
}

impl SignalKey for FlowKey4 {
    #[inline(always)]
    fn signal_map() -> &'static LruHashMap<Self, FlowSignals> {
        &FLOW_SIGNALS4
    }
}

impl SignalKey for FlowKey6 {
    #[inline(always)]
    fn signal_map() -> &'static LruHashMap<Self, FlowSignals> {
        &FLOW_SIGNALS6
    }
}

/// This CPU's signal counters of the interface in `slot`, `direction`.
#[inline(always)]
pub(crate) fn interface(slot: u32, direction: Direction) -> Option<&'static mut SignalStats> {
    let stats = SIGNAL_STATS.get_ptr_mut(slot * 2 + direction as u32)?;
    // SAFETY: a per-CPU value: only this CPU writes this copy, and the program is not
    // re-entered on this CPU while it runs.
    Some(unsafe { &mut *stats })
}

/// Adds `delta` to the flow's entry, creating it if absent.
#[inline(always)]
pub(crate) fn add_to_flow<K: SignalKey>(key: &K, delta: &FlowSignals) {
    let map = K::signal_map();
    if let Some(entry) = map.get_ptr_mut(key) {
        // SAFETY: a pointer into the map value, valid for this program run; shared between
        // CPUs, hence the atomic adds.
        let entry = unsafe { &mut *entry };
        add_all(entry, delta);
        return;
    }
    if map.insert(key, delta, BPF_NOEXIST).is_ok() {
        return;
    }
    // Created meanwhile on another CPU: add to it.
    if let Some(entry) = map.get_ptr_mut(key) {
        // SAFETY: as above.
        add_all(unsafe { &mut *entry }, delta);
    } else {
        crate::events::report(
            network_probe_common::KernelEvent::FlowSignalsInsertFailed,
            0,
        );
    }
}

#[inline(always)]
fn add_all(entry: &mut FlowSignals, delta: &FlowSignals) {
    if delta.ce != 0 {
        atomic_add(&mut entry.ce, delta.ce);
    }
    if delta.ece != 0 {
        atomic_add(&mut entry.ece, delta.ece);
    }
    if delta.cwr != 0 {
        atomic_add(&mut entry.cwr, delta.cwr);
    }
    if delta.pmtu_messages != 0 {
        atomic_add(&mut entry.pmtu_messages, delta.pmtu_messages);
    }
}
