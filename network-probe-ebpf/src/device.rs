//! Per-interface, per-direction packet and byte counters (`DEVICE_COUNTERS`).

use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use network_probe_common::{DeviceCounters, DeviceKey, DEVICE_COUNTERS_MAX_ENTRIES};

#[map(name = "DEVICE_COUNTERS")]
static DEVICE_COUNTERS: PerCpuHashMap<DeviceKey, DeviceCounters> =
    PerCpuHashMap::with_max_entries(DEVICE_COUNTERS_MAX_ENTRIES, 0);

/// Adds one skb (`segments` wire packets, `bytes` long) to the counters of `key`.
#[inline(always)]
pub fn account(key: &DeviceKey, segments: u64, bytes: u64) {
    if let Some(counters) = DEVICE_COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value: no other CPU writes this copy, and the program is not
        // re-entered on this CPU while it runs.
        let counters = unsafe { &mut *counters };
        counters.packets += segments;
        counters.bytes += bytes;
        return;
    }
    let first = DeviceCounters {
        packets: segments,
        bytes,
    };
    // BPF_NOEXIST: if another CPU created the entry in between, this CPU's copy in it is still
    // zero, so retry the in-place add once.
    if DEVICE_COUNTERS.insert(key, first, 1).is_err() {
        if let Some(counters) = DEVICE_COUNTERS.get_ptr_mut(key) {
            // SAFETY: as above.
            let counters = unsafe { &mut *counters };
            counters.packets += segments;
            counters.bytes += bytes;
        }
    }
    // A full map (more interfaces than DEVICE_COUNTERS_MAX_ENTRIES) drops the sample; user space
    // exports the map's fill level so that cannot go unnoticed.
}
