//! The family of the rare kernel-side events (see [`crate::kernel::events`]): every event,
//! 0 included, so a rise is visible from the first scrape (README.md documents it).

use network_probe_common::KernelEvent;
use prometheus_client::encoding::DescriptorEncoder;

use super::counter_family;

/// `network_probe_datapath_kernel_events_total{event}` from `counts`.
pub(super) fn encode(
    encoder: &mut DescriptorEncoder,
    counts: &[(KernelEvent, u64)],
) -> Result<(), std::fmt::Error> {
    counter_family(
        encoder,
        "network_probe_datapath_kernel_events",
        "Rare error branches the eBPF programs took since they were loaded, by event: \
         ifindex_beyond_slot_table and interface_without_slot (a packet not counted), \
         flow_insert_failed, flow_slot_claim_lost (harmless race), pending_syn_untracked, \
         drops_map_full, flow_signals_insert_failed. Each is also logged (aya-log) when a CPU's \
         count of it reaches a power of two.",
        counts
            .iter()
            .map(|(event, count)| ([("event", event.as_str())], *count)),
    )
}
