//! Rare kernel-side events: error branches of the programs that lose or misplace a count (a
//! map with no room, a packet on an interface missing from the slot table, ...). Each one is
//! counted in the per-CPU array [`KERNEL_EVENTS_MAP`] at its [`KernelEvent`] index, and logged
//! through aya-log (a ring buffer the daemon reads, see the daemon's `kernel::events`). The
//! count is exact even when the log ring is full and drops the record; the programs log only
//! when their CPU's count reaches a power of two, so a flood of one event costs a handful of
//! log records, not one per packet.

/// Per-CPU array of `u64`: the number of times each [`KernelEvent`] happened, at its index.
pub const KERNEL_EVENTS_MAP: &str = "KERNEL_EVENTS";

/// The rare events the programs report, by their index in [`KERNEL_EVENTS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// A packet on an interface whose index is beyond the interface-index -> slot array
    /// (`IFINDEX_SLOTS`): a program runs where the daemon never attached it. Not counted.
    IfindexBeyondSlotTable = 0,
    /// A packet on an interface that has no slot in the array (its entry is 0) while a program
    /// runs there. Not counted.
    InterfaceWithoutSlot = 1,
    /// A new flow's entry could not be inserted in its family's LRU flow map (its packet is
    /// counted on the interface, not in a flow).
    FlowInsertFailed = 2,
    /// Another CPU claimed the free flow slot between this CPU's check and its claim: the
    /// flow goes to the LRU map instead (a race, harmless).
    FlowSlotClaimLost = 3,
    /// A new TCP connection attempt found its pending-SYN map full: it is not followed (and
    /// counts as untracked).
    PendingSynUntracked = 4,
    /// A drop found the drop map full: it is counted only in the lost-drops total.
    DropsMapFull = 5,
    /// A flow's passive-signal entry (ECN, path MTU) could not be created: that delta is lost.
    FlowSignalsInsertFailed = 6,
}

/// Number of [`KernelEvent`]s (entries of [`KERNEL_EVENTS_MAP`]).
pub const KERNEL_EVENT_KINDS: u32 = 7;

impl KernelEvent {
    /// Every event, in index order.
    pub const ALL: [KernelEvent; KERNEL_EVENT_KINDS as usize] = [
        KernelEvent::IfindexBeyondSlotTable,
        KernelEvent::InterfaceWithoutSlot,
        KernelEvent::FlowInsertFailed,
        KernelEvent::FlowSlotClaimLost,
        KernelEvent::PendingSynUntracked,
        KernelEvent::DropsMapFull,
        KernelEvent::FlowSignalsInsertFailed,
    ];

    /// The `event` label value in metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            KernelEvent::IfindexBeyondSlotTable => "ifindex_beyond_slot_table",
            KernelEvent::InterfaceWithoutSlot => "interface_without_slot",
            KernelEvent::FlowInsertFailed => "flow_insert_failed",
            KernelEvent::FlowSlotClaimLost => "flow_slot_claim_lost",
            KernelEvent::PendingSynUntracked => "pending_syn_untracked",
            KernelEvent::DropsMapFull => "drops_map_full",
            KernelEvent::FlowSignalsInsertFailed => "flow_signals_insert_failed",
        }
    }

    /// Whether the event is logged at warn level (else debug): everything that loses a count;
    /// a lost slot claim loses nothing.
    pub const fn warns(self) -> bool {
        !matches!(self, KernelEvent::FlowSlotClaimLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_event_at_its_index() {
        for (index, event) in KernelEvent::ALL.iter().enumerate() {
            assert_eq!(*event as usize, index);
        }
        for (index, event) in KernelEvent::ALL.iter().enumerate() {
            for other in &KernelEvent::ALL[index + 1..] {
                assert_ne!(event.as_str(), other.as_str());
            }
        }
    }
}
