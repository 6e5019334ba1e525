//! Connection outcomes: follows each TCP connection attempt seen by the TC programs from its
//! SYN to its answer, in the pending-SYN maps of this file (see `network-probe-common`'s
//! `outcomes` module for the states and what user space does with them).
//!
//! - A SYN without ACK opens an entry under its own flow key (interface and direction
//!   included), or, repeating the sequence number of the entry there, counts as a SYN
//!   retransmit. A SYN with another sequence number is a new attempt and replaces the entry.
//! - A SYN-ACK or a RST+ACK acknowledging `seq + 1`, seen in the opposite direction on the same
//!   interface, answers it (`answered`, `reset`); so does an ICMP / ICMPv6 destination
//!   unreachable quoting the SYN's addresses, ports and sequence number (`unreachable`; the
//!   message and its quote read by `icmp_quote`, shared with `pmtu`). Only a
//!   pending entry is answered, and only within the connect timeout of its first SYN: a later
//!   answer leaves it to user space, which counts it as a timeout.
//! - The maps have a fixed capacity ([`PENDING_SYNS_MAX_ENTRIES`]); a new attempt that finds
//!   its map full is not followed and counts as untracked.
//!
//! Cost: the TCP hook runs only for segments with SYN or RST (one test of flags already in a
//! register on every other segment), the ICMP hook only for IP packets that are not TCP; an
//! established flow's ACK pays nothing more.

use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, macros::map, maps::HashMap};
use network_probe_common::{
    ATTEMPT_ANSWERED, ATTEMPT_PENDING, ATTEMPT_RESET, ATTEMPT_UNREACHABLE,
    CONNECT_STATS_MAX_ENTRIES, CONNECT_TIMEOUT_DEFAULT_NS, ConnectStats, Direction, FlowKey4,
    FlowKey6, PENDING_SYNS_MAX_ENTRIES, PendingSyn,
};

use crate::{
    icmp_quote::{self, IcmpHeader},
    maps::IFINDEX_SLOTS,
    packet::Packet,
    parse::{TCP_ACK, TCP_RST, TCP_SYN, Tcp},
};

/// The flags for which [`segment`] has anything to do; the caller tests them first.
pub(crate) const TCP_FLAGS: u32 = (TCP_SYN | TCP_RST) as u32;

/// `BPF_ANY`: create or replace.
const BPF_ANY: u64 = 0;

/// IPv4 connection attempts by the SYN's flow key.
#[map(name = "PENDING_SYNS4")]
static PENDING_SYNS4: HashMap<FlowKey4, PendingSyn> =
    HashMap::with_max_entries(PENDING_SYNS_MAX_ENTRIES, 0);

/// IPv6 connection attempts by the SYN's flow key.
#[map(name = "PENDING_SYNS6")]
static PENDING_SYNS6: HashMap<FlowKey6, PendingSyn> =
    HashMap::with_max_entries(PENDING_SYNS_MAX_ENTRIES, 0);

/// SYN retransmits and untracked attempts per interface slot and direction (of the SYN), one
/// copy per CPU; indexed like `DEVICE_STATS`.
#[map(name = "CONNECT_STATS")]
static CONNECT_STATS: aya_ebpf::maps::PerCpuArray<ConnectStats> =
    aya_ebpf::maps::PerCpuArray::with_max_entries(CONNECT_STATS_MAX_ENTRIES, 0);

/// `--flows.connect-timeout` in nanoseconds, set by user space before loading.
#[unsafe(no_mangle)]
static CONNECT_TIMEOUT_NS: u64 = CONNECT_TIMEOUT_DEFAULT_NS;

#[inline(always)]
fn connect_timeout_ns() -> u64 {
    // SAFETY: a read of an initialised static; volatile so the placeholder is not folded in.
    unsafe { core::ptr::read_volatile(&CONNECT_TIMEOUT_NS) }
}

/// A flow key the pending-SYN maps are keyed by.
pub(crate) trait AttemptKey: Copy + 'static {
    fn pending() -> &'static HashMap<Self, PendingSyn>;
    /// The key of the opposite direction of the same connection on the same interface.
    fn opposite(&self) -> Self;
    /// See `network_probe_common::ifindex_direction`.
    fn ifindex_direction(&self) -> u32;
}

impl AttemptKey for FlowKey4 {
    #[inline(always)]
    fn pending() -> &'static HashMap<Self, PendingSyn> {
        &PENDING_SYNS4
    }
    #[inline(always)]
    fn opposite(&self) -> Self {
        self.reversed()
    }
    #[inline(always)]
    fn ifindex_direction(&self) -> u32 {
        self.ifindex_direction
    }
}

impl AttemptKey for FlowKey6 {
    #[inline(always)]
    fn pending() -> &'static HashMap<Self, PendingSyn> {
        &PENDING_SYNS6
    }
    #[inline(always)]
    fn opposite(&self) -> Self {
        self.reversed()
    }
    #[inline(always)]
    fn ifindex_direction(&self) -> u32 {
        self.ifindex_direction
    }
}

/// A TCP segment with SYN or RST (the caller checked [`TCP_FLAGS`]) under flow key `key`.
#[inline(always)]
pub(crate) fn segment<K: AttemptKey>(key: &K, tcp: &Tcp) {
    let flags = tcp.flags();
    if flags & TCP_ACK == 0 {
        if flags & (TCP_SYN | TCP_RST) == TCP_SYN {
            syn(key, tcp.seq());
        }
        return;
    }
    let outcome = if flags & TCP_RST != 0 {
        ATTEMPT_RESET
    } else {
        ATTEMPT_ANSWERED
    };
    answer(&key.opposite(), tcp.ack(), outcome);
}

/// A SYN without ACK: a new attempt, or a retransmit of the one under `key`.
#[inline(always)]
fn syn<K: AttemptKey>(key: &K, seq: u32) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(pending) = K::pending().get_ptr_mut(key) {
        // SAFETY: a pointer into the map value, valid for this program run.
        let pending = unsafe { &mut *pending };
        if pending.seq == seq {
            pending.last_sent_ns = now;
            count(key.ifindex_direction(), |stats| stats.syn_retransmits += 1);
            return;
        }
    }
    let attempt = PendingSyn {
        first_sent_ns: now,
        last_sent_ns: now,
        seq,
        state: ATTEMPT_PENDING,
    };
    if K::pending().insert(key, attempt, BPF_ANY).is_err() {
        count(key.ifindex_direction(), |stats| stats.untracked += 1);
        crate::events::report(
            network_probe_common::KernelEvent::PendingSynUntracked,
            key.ifindex_direction() >> 1,
        );
    }
}

/// An answer acknowledging `ack` to the attempt under `key` (the SYN's key).
#[inline(always)]
fn answer<K: AttemptKey>(key: &K, ack: u32, outcome: u32) {
    let Some(pending) = K::pending().get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let pending = unsafe { &mut *pending };
    if pending.state != ATTEMPT_PENDING || pending.seq.wrapping_add(1) != ack {
        return;
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(pending.first_sent_ns) > connect_timeout_ns() {
        return;
    }
    pending.state = outcome;
}

/// Adds to the [`ConnectStats`] of the interface and direction in `ifindex_direction`.
#[inline(always)]
fn count(ifindex_direction: u32, add: impl FnOnce(&mut ConnectStats)) {
    let slot = match IFINDEX_SLOTS.get(ifindex_direction >> 1) {
        Some(&slot) if slot != 0 => slot - 1,
        _ => return,
    };
    if let Some(stats) = CONNECT_STATS.get_ptr_mut(slot * 2 + (ifindex_direction & 1)) {
        // SAFETY: this CPU's copy; the program is not re-entered on this CPU while it runs.
        add(unsafe { &mut *stats });
    }
}

const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP "fragmentation needed": a path MTU signal, not a refusal (a SYN is never that large).
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACH: u8 = 1;

/// An ICMP / ICMPv6 message (its header read by `icmp_quote`, from where the parser found the
/// transport) seen on `ifindex` in `direction`: if it is a destination unreachable quoting a
/// TCP segment, the attempt that segment belongs to (sent in the opposite direction) is
/// unreachable.
#[inline(always)]
pub(crate) fn icmp<P: Packet>(packet: &P, icmp: &IcmpHeader, ifindex: u32, direction: Direction) {
    let unreachable = if icmp.v6 {
        icmp.kind == ICMPV6_DEST_UNREACH
    } else {
        icmp.kind == ICMP_DEST_UNREACH && icmp.code != ICMP_FRAG_NEEDED
    };
    if !unreachable {
        return;
    }
    let ifindex_direction = icmp_quote::quoted_ifindex_direction(ifindex, direction);
    icmp_quote::quoted_tcp(
        packet,
        icmp,
        ifindex_direction,
        |key, tcp_at| quoted_syn(packet, key, tcp_at),
        |key, tcp_at| quoted_syn(packet, key, tcp_at),
    );
}

/// The quoted segment under `key` answers its attempt if its sequence number (at `tcp_at + 4`)
/// is the attempt's.
#[inline(always)]
fn quoted_syn<P: Packet, K: AttemptKey>(packet: &P, key: &K, tcp_at: usize) {
    let Some(seq) = packet.load::<u32>(tcp_at + 4) else {
        return;
    };
    answer(key, u32::from_be(seq).wrapping_add(1), ATTEMPT_UNREACHABLE);
}
