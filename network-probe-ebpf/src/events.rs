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
/// this CPU's count reaches a power of two: a call of [`network_probe_kernel_event`].
#[inline(always)]
pub(crate) fn report(event: KernelEvent, ifindex: u32) {
    network_probe_kernel_event(event as u32, ifindex);
}

/// What [`report`] does, as a BPF global function: exported by bpf-linker (build.rs passes
/// `--export`) and described as global in the object's BTF, so the verifier checks its body
/// once, on its own, for any event and interface index, and checks each call only for its
/// two scalar arguments. Inlined instead, the log records' code was verified again in every
/// state of every program reaching one of its callers: `tc_ingress` with every level
/// enabled went past the verifier's limit of a million instructions. Returns 0 (a global
/// function must return a scalar).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn network_probe_kernel_event(event: u32, ifindex: u32) -> u32 {
    let Some(count) = KERNEL_EVENTS.get_ptr_mut(event) else {
        return 0;
    };
    // SAFETY: a valid u64 in this CPU's copy of the map value. Atomic all the same: the drop
    // tracepoint can nest in a TC program on the same CPU.
    let count = unsafe { &mut *count };
    atomic_add(count, 1);
    // SAFETY: as above.
    let seen = unsafe { core::ptr::read_volatile(count) };
    if seen == 0 || seen & (seen - 1) != 0 {
        return 0;
    }
    log(event, ifindex, seen);
    0
}

/// The log record of `event`.
#[inline(always)]
fn log(event: u32, ifindex: u32, seen: u64) {
    // The context argument of the macros is unused by aya-log-ebpf 0.2; `()` stands for it.
    let ctx = &();
    match event {
        e if e == KernelEvent::IfindexBeyondSlotTable as u32 => warn!(
            ctx,
            "kernel event ifindex_beyond_slot_table: a packet on ifindex {}, beyond the interface \
             slot table, was not counted ({} such events on this CPU)",
            ifindex,
            seen
        ),
        e if e == KernelEvent::InterfaceWithoutSlot as u32 => warn!(
            ctx,
            "kernel event interface_without_slot: a packet on ifindex {}, which has no interface \
             slot, was not counted ({} such events on this CPU)",
            ifindex,
            seen
        ),
        e if e == KernelEvent::FlowInsertFailed as u32 => warn!(
            ctx,
            "kernel event flow_insert_failed: a new flow could not be added to its LRU flow map \
             ({} such events on this CPU)",
            seen
        ),
        e if e == KernelEvent::FlowSlotClaimLost as u32 => debug!(
            ctx,
            "kernel event flow_slot_claim_lost: another CPU claimed the same free flow slot \
             first; the flow went to the LRU map ({} such events on this CPU)",
            seen
        ),
        e if e == KernelEvent::PendingSynUntracked as u32 => warn!(
            ctx,
            "kernel event pending_syn_untracked: the pending-SYN map is full; a TCP connection \
             attempt on ifindex {} is not followed ({} such events on this CPU)",
            ifindex,
            seen
        ),
        e if e == KernelEvent::DropsMapFull as u32 => warn!(
            ctx,
            "kernel event drops_map_full: the drop map is full; a drop was counted only as lost \
             ({} such events on this CPU)",
            seen
        ),
        e if e == KernelEvent::FlowSignalsInsertFailed as u32 => warn!(
            ctx,
            "kernel event flow_signals_insert_failed: a flow's ECN/path-MTU entry could not be \
             created; its counts were lost ({} such events on this CPU)",
            seen
        ),
        _ => {}
    }
}
