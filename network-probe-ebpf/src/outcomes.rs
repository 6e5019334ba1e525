//! Connection outcomes: follows each TCP connection attempt seen by the TC programs from its
//! SYN to its answer, in the pending-SYN maps of this file (see `network-probe-common`'s
//! `outcomes` module for the states and what user space does with them).
//!
//! - A SYN without ACK opens an entry under its own flow key (interface and direction
//!   included), or, repeating the sequence number of the entry there, counts as a SYN
//!   retransmit. A SYN with another sequence number is a new attempt and replaces the entry.
//! - A SYN-ACK or a RST+ACK acknowledging `seq + 1`, seen in the opposite direction on the same
//!   interface, answers it (`answered`, `reset`); so does an ICMP / ICMPv6 destination
//!   unreachable quoting the SYN's addresses, ports and sequence number (`unreachable`). Only a
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
    FlowKey6, PENDING_SYNS_MAX_ENTRIES, PendingSyn, ifindex_direction,
};

use crate::{
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

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP "fragmentation needed": a path MTU signal, not a refusal (a SYN is never that large).
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_DEST_UNREACH: u8 = 1;

/// An IP packet that is not TCP, seen on `ifindex` in `direction`: if it is an ICMP / ICMPv6
/// destination unreachable quoting a TCP segment, the attempt that segment belongs to (sent in
/// the opposite direction) is unreachable. No extension headers are walked: the kernel's own
/// ICMPv6 errors carry none.
#[inline(always)]
pub(crate) fn icmp<P: Packet>(packet: &P, ifindex: u32, direction: Direction) {
    let Some(mut ethertype) = packet.load::<u16>(12).map(u16::from_be) else {
        return;
    };
    let mut offset = ETH_HLEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = packet.load::<u16>(offset + 2) else {
            return;
        };
        ethertype = u16::from_be(inner);
        offset += 4;
    }
    let sent = match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    let ifindex_direction = ifindex_direction(ifindex, sent);
    match ethertype {
        ETH_P_IP => icmp4(packet, offset, ifindex_direction),
        ETH_P_IPV6 => icmp6(packet, offset, ifindex_direction),
        _ => {}
    }
}

#[inline(always)]
fn icmp4<P: Packet>(packet: &P, offset: usize, ifindex_direction: u32) {
    // Version/IHL, ..., protocol at 9.
    let Some(header) = packet.load::<[u8; 12]>(offset) else {
        return;
    };
    if header[0] >> 4 != 4 || header[9] != IPPROTO_ICMP {
        return;
    }
    let icmp_at = offset + ((header[0] & 0x0f) as usize) * 4;
    let Some(icmp) = packet.load::<[u8; 2]>(icmp_at) else {
        return;
    };
    if icmp[0] != ICMP_DEST_UNREACH || icmp[1] == ICMP_FRAG_NEEDED {
        return;
    }
    // The quoted IP header, then at least 8 bytes of its TCP header (ports, sequence).
    let quoted = icmp_at + 8;
    let Some(inner) = packet.load::<[u8; 20]>(quoted) else {
        return;
    };
    if inner[0] >> 4 != 4 || inner[9] != IPPROTO_TCP {
        return;
    }
    let tcp_at = quoted + ((inner[0] & 0x0f) as usize) * 4;
    let Some([ports, seq]) = packet.load::<[u32; 2]>(tcp_at) else {
        return;
    };
    let key = FlowKey4 {
        src: [inner[12], inner[13], inner[14], inner[15]],
        dst: [inner[16], inner[17], inner[18], inner[19]],
        src_port: u16::from_be(ports as u16),
        dst_port: u16::from_be((ports >> 16) as u16),
        ifindex_direction,
    };
    answer(&key, u32::from_be(seq).wrapping_add(1), ATTEMPT_UNREACHABLE);
}

#[inline(always)]
fn icmp6<P: Packet>(packet: &P, offset: usize, ifindex_direction: u32) {
    let Some(first) = packet.load::<[u8; 8]>(offset) else {
        return;
    };
    if first[0] >> 4 != 6 || first[6] != IPPROTO_ICMPV6 {
        return;
    }
    let icmp_at = offset + 40;
    let Some(icmp) = packet.load::<u8>(icmp_at) else {
        return;
    };
    if icmp != ICMPV6_DEST_UNREACH {
        return;
    }
    let quoted = icmp_at + 8;
    let Some(inner) = packet.load::<[u8; 8]>(quoted) else {
        return;
    };
    if inner[0] >> 4 != 6 || inner[6] != IPPROTO_TCP {
        return;
    }
    let Some(addresses) = packet.load::<[[u8; 16]; 2]>(quoted + 8) else {
        return;
    };
    let Some([ports, seq]) = packet.load::<[u32; 2]>(quoted + 40) else {
        return;
    };
    let key = FlowKey6 {
        src: addresses[0],
        dst: addresses[1],
        src_port: u16::from_be(ports as u16),
        dst_port: u16::from_be((ports >> 16) as u16),
        ifindex_direction,
    };
    answer(&key, u32::from_be(seq).wrapping_add(1), ATTEMPT_UNREACHABLE);
}
