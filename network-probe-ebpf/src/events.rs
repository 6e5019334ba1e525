//! Rare kernel-side events (see `network-probe-common`'s `events` module): [`report`] counts
//! one in this CPU's copy of [`KERNEL_EVENTS`] and, when that copy reaches a power of two (1,
//! 2, 4, ...), logs it through aya-log, whose records go to a ring buffer the daemon reads and
//! prints with its own logger. A flood of one event thus writes about 64 log records in all,
//! while the counter stays exact (also when the ring is full and a record is dropped).
//!
//! Only error branches call [`report`]: an ordinary packet never reaches it, so the per-packet
//! path gains no map lookup and no log call (the branches it is on were there already).
//! The daemon sets aya-log's level to its own before loading: a debug event below the
//! daemon's level is counted, not written to the ring.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::{debug, warn};
use network_probe_common::{KERNEL_EVENT_KINDS, KernelEvent};

use crate::atomic::atomic_add;

/// How often each [`KernelEvent`] happened, at its index, one copy per CPU.
#[map(name = "KERNEL_EVENTS")]
static KERNEL_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_EVENT_KINDS, 0);

/// Counts `event` (seen on `ifindex`, 0 when the caller does not know it) and logs it when
/// this CPU's count reaches a power of two.
#[inline(always)]
pub(crate) fn report(event: KernelEvent, ifindex: u32) {
    let Some(count) = KERNEL_EVENTS.get_ptr_mut(event as u32) else {
        return;
    };
    // SAFETY: a valid u64 in this CPU's copy of the map value. Atomic all the same: the drop
    // tracepoint can nest in a TC program on the same CPU.
    let count = unsafe { &mut *count };
    atomic_add(count, 1);
    // SAFETY: as above.
    let seen = unsafe { core::ptr::read_volatile(count) };
    if seen == 0 || seen & (seen - 1) != 0 {
        return;
    }
    // The context argument of the macros is unused by aya-log-ebpf 0.2; `()` stands for it.
    let ctx = &();
    match event {
        KernelEvent::IfindexBeyondSlotTable => warn!(
            ctx,
            "kernel event ifindex_beyond_slot_table: a packet on ifindex {}, beyond the interface \
             slot table, was not counted ({} such events on this CPU)",
            ifindex,
            seen
        ),
        KernelEvent::InterfaceWithoutSlot => warn!(
            ctx,
            "kernel event interface_without_slot: a packet on ifindex {}, which has no interface \
             slot, was not counted ({} such events on this CPU)",
            ifindex,
            seen
        ),
        KernelEvent::FlowInsertFailed => warn!(
            ctx,
            "kernel event flow_insert_failed: a new flow could not be added to its LRU flow map \
             ({} such events on this CPU)",
            seen
        ),
        KernelEvent::FlowSlotClaimLost => debug!(
            ctx,
            "kernel event flow_slot_claim_lost: another CPU claimed the same free flow slot \
             first; the flow went to the LRU map ({} such events on this CPU)",
            seen
        ),
        KernelEvent::PendingSynUntracked => warn!(
            ctx,
            "kernel event pending_syn_untracked: the pending-SYN map is full; a TCP connection \
             attempt on ifindex {} is not followed ({} such events on this CPU)",
            ifindex,
            seen
        ),
        KernelEvent::DropsMapFull => warn!(
            ctx,
            "kernel event drops_map_full: the drop map is full; a drop was counted only as lost \
             ({} such events on this CPU)",
            seen
        ),
        KernelEvent::FlowSignalsInsertFailed => warn!(
            ctx,
            "kernel event flow_signals_insert_failed: a flow's ECN/path-MTU entry could not be \
             created; its counts were lost ({} such events on this CPU)",
            seen
        ),
    }
}
