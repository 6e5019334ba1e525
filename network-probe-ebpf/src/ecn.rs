//! ECN (RFC 3168): every IP packet counted by its codepoint on its interface and direction,
//! and per TCP flow direction the CE-marked packets and the segments with ECE or CWR.
//!
//! The codepoint comes from the IP header the parser already read ([`crate::parse::Ip::ecn`]),
//! so the cost per packet is one counter in the interface's per-CPU [`SignalStats`]. The flow
//! entry ([`crate::signals`]) is touched only by a segment that is CE-marked or carries ECE or
//! CWR, which a flow without congestion (or without ECN) never sends.
//!
//! GSO: a super-packet counts its segments for the codepoint, CE and ECE (the kernel copies the
//! IP ECN field and ECE to every segment) but once for CWR (segmentation keeps CWR on the
//! first segment only).

use network_probe_common::{ECN_CE, FlowSignals, SignalStats};

use crate::signals::{self, SignalKey};

const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// Counts an IP packet (`segments` on the wire) under its codepoint.
#[inline(always)]
pub(crate) fn count_codepoint(stats: &mut SignalStats, ecn: u8, segments: u64) {
    if let Some(counter) = stats.ecn.get_mut((ecn & 3) as usize) {
        *counter += segments;
    }
}

/// A TCP segment's flow signals: nothing to do unless it is CE-marked or has ECE or CWR.
#[inline(always)]
pub(crate) fn observe_segment<K: SignalKey>(key: &K, ecn: u8, flags: u8, segments: u64) {
    let ce = ecn & 3 == ECN_CE;
    if !ce && flags & (TCP_ECE | TCP_CWR) == 0 {
        return;
    }
    let delta = FlowSignals {
        ce: if ce { segments } else { 0 },
        ece: if flags & TCP_ECE != 0 { segments } else { 0 },
        cwr: (flags & TCP_CWR != 0) as u64,
        pmtu_messages: 0,
    };
    signals::add_to_flow(key, &delta);
}
