//! Connection outcomes: the maps in which the TC programs follow TCP connection attempts from
//! the SYN to their answer (SYN-ACK, RST, ICMP unreachable) and the per-interface counters of
//! what user space cannot see in them (SYN retransmits, attempts the map had no room for).
//!
//! A SYN (without ACK) seen on a watched interface in one direction opens a [`PendingSyn`]
//! under its own flow key ([`crate::FlowKey4`] / [`crate::FlowKey6`]: addresses, ports,
//! interface and direction of the SYN). The answer, seen in the opposite direction on the same
//! interface, finds it under its reversed key and sets its [`PendingSyn::state`]; user space
//! reads the maps at every flow refresh, counts the finished attempts and the ones still
//! unanswered after the connect timeout, and deletes what it counted.

use crate::DEVICE_STATS_MAX_ENTRIES;

/// Hash map of IPv4 connection attempts: [`crate::FlowKey4`] of the SYN -> [`PendingSyn`].
pub const PENDING_SYNS4_MAP: &str = "PENDING_SYNS4";
/// The same for IPv6: [`crate::FlowKey6`] -> [`PendingSyn`].
pub const PENDING_SYNS6_MAP: &str = "PENDING_SYNS6";
/// Capacity of each pending-SYN map (fixed, preallocated). A SYN that finds its map full is
/// not followed: it counts in [`ConnectStats::untracked`] and in no outcome.
pub const PENDING_SYNS_MAX_ENTRIES: u32 = 16_384;
/// Per-CPU array of [`ConnectStats`] at `2 * slot + direction`, like `DEVICE_STATS`.
pub const CONNECT_STATS_MAP: &str = "CONNECT_STATS";
/// Entries of [`CONNECT_STATS_MAP`].
pub const CONNECT_STATS_MAX_ENTRIES: u32 = DEVICE_STATS_MAX_ENTRIES;
/// Read-only global: the connect timeout in nanoseconds (`--flows.connect-timeout`). An answer
/// later than this after the first SYN is not counted by the program: the attempt is a timeout,
/// which user space counts.
pub const CONNECT_TIMEOUT_GLOBAL: &str = "CONNECT_TIMEOUT_NS";
/// Default of [`CONNECT_TIMEOUT_GLOBAL`] (3 s).
pub const CONNECT_TIMEOUT_DEFAULT_NS: u64 = 3_000_000_000;

/// [`PendingSyn::state`]: no answer yet.
pub const ATTEMPT_PENDING: u32 = 0;
/// A SYN-ACK acknowledging the SYN.
pub const ATTEMPT_ANSWERED: u32 = 1;
/// A RST acknowledging the SYN.
pub const ATTEMPT_RESET: u32 = 2;
/// An ICMP / ICMPv6 destination unreachable quoting the SYN.
pub const ATTEMPT_UNREACHABLE: u32 = 3;

/// One connection attempt: its SYN's sequence number, when its first and latest SYN were seen
/// (CLOCK_MONOTONIC ns) and how it ended so far ([`ATTEMPT_PENDING`] ...).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSyn {
    pub first_sent_ns: u64,
    pub last_sent_ns: u64,
    pub seq: u32,
    pub state: u32,
}

/// Per-interface, per-direction (the SYN's) counters of the connection-attempt tracking.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectStats {
    /// SYNs repeating the sequence number of the attempt followed under their key.
    pub syn_retransmits: u64,
    /// SYNs of new attempts that found the pending-SYN map full: not followed.
    pub untracked: u64,
}

impl ConnectStats {
    pub fn accumulate(&mut self, other: &ConnectStats) {
        self.syn_retransmits += other.syn_retransmits;
        self.untracked += other.untracked;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], 8 + 8 + 4 + 4 bytes, no padding.
    unsafe impl aya::Pod for super::PendingSyn {}
    // SAFETY: #[repr(C)], u64 fields only.
    unsafe impl aya::Pod for super::ConnectStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<PendingSyn>(), 8 + 8 + 4 + 4);
        assert_eq!(core::mem::size_of::<ConnectStats>(), 2 * 8);
    }
}
