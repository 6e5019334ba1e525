//! Accounting: one parsed packet updates its interface's per-CPU statistics and, for TCP, its
//! flow's entry in the LRU flow map of its address family; one dropped packet (the `kfree_skb`
//! hook, [`crate::drops`]) its (reason, interface, protocol) entry in the drop map.
//!
//! The cost per packet is mostly map lookups, so they are kept cheap: the interface's statistics
//! are found by two array lookups (interface index -> slot, slot -> per-CPU statistics), which
//! the kernel inlines, and the flow by hashing the smallest key its family allows (16 bytes for
//! IPv4, 40 for IPv6).
//!
//! Retransmissions are judged per flow direction from sequence numbers alone, so forwarded and
//! local traffic are treated alike: a segment that occupies sequence space (payload, SYN or FIN)
//! and starts before the highest sequence already sent in that direction is a retransmission.
//! A SYN that does not repeat the previous SYN's sequence number starts a new connection.

use crate::atomic::atomic_add;
use crate::events::report;
use aya_ebpf::helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use aya_ebpf::maps::LruHashMap;
use network_probe_common::{
    DeviceStats, Direction, DropKey, FAMILY_IPV4, FAMILY_IPV6, FlowCounts, FlowKey4, FlowKey6,
    FlowSlot, FlowStats, FlowTracking, KernelEvent, RTT_BUCKETS, SLOT_CLAIMING, SLOT_FREE,
    Unclassified, flow_slot_index, ifindex_direction, size_bucket,
};

use crate::{
    maps::{
        CLOCK_CACHE, DEVICE_STATS, DROPS, DROPS_LOST, FLOW_SLOT_COUNTERS, FLOW_SLOTS, FLOWS4,
        FLOWS6, IFINDEX_SLOTS, flow_slot_count, flow_slot_shift,
    },
    packet::Packet,
    parse::{Ip, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp, parse},
};

/// `BPF_NOEXIST`: create only if absent.
const BPF_NOEXIST: u64 = 1;

/// How far [`observe`] goes. The daemon's programs do [`upto::ALL`]; benchmark programs stop
/// earlier, so `cargo xtask bench` can show what each step of the per-packet path costs.
pub(crate) mod upto {
    /// The interface's slot and per-CPU statistics found, packets and bytes counted.
    pub(crate) const DEVICE: u8 = 0;
    /// Also the headers parsed and the interface's IP and TCP statistics updated.
    pub(crate) const PARSE: u8 = 1;
    /// Also the flow found: its slot (the key hashed, compared) or else its LRU map entry.
    pub(crate) const LOOKUP: u8 = 2;
    /// Everything: the flow entry updated (atomic counters, sequence tracking, clock).
    pub(crate) const ALL: u8 = 3;
}

/// Accounts one packet (`segments` wire packets) seen on `ifindex` in `direction`, as far as
/// `UPTO` (see [`upto`]). True when passive RTT has work for this segment (see `crate::rtt`):
/// the caller then tail-calls the RTT program, last.
#[inline(always)]
pub(crate) fn observe<P: Packet, const UPTO: u8>(
    packet: &P,
    ifindex: u32,
    direction: Direction,
    segments: u64,
) -> bool {
    // User space assigns the slot before attaching; without one this interface is not ours.
    let slot = match IFINDEX_SLOTS.get(ifindex) {
        Some(&slot) if slot != 0 => slot - 1,
        Some(_) => {
            report(KernelEvent::InterfaceWithoutSlot, ifindex);
            return false;
        }
        None => {
            report(KernelEvent::IfindexBeyondSlotTable, ifindex);
            return false;
        }
    };
    let Some(device) = DEVICE_STATS.get_ptr_mut(slot * 2 + direction as u32) else {
        return false;
    };
    // SAFETY: a per-CPU value: only this CPU writes this copy, and the program is not
    // re-entered on this CPU while it runs.
    let device = unsafe { &mut *device };
    let len = packet.len() as u64;
    device.packets += segments;
    device.bytes += len;
    if UPTO == upto::DEVICE {
        return false;
    }
    // The passive signals' counters of this interface (see `crate::signals`).
    let signals = crate::signals::interface(slot, direction);
    match parse(packet) {
        Parsed::NotIp(reason) => {
            add_at(&mut device.unclassified, reason as usize, segments);
            false
        }
        Parsed::OtherIp(ip, reason) => {
            let mut signals = signals;
            if let Some(signals) = signals.as_deref_mut() {
                crate::ecn::count_codepoint(signals, ip.ecn, segments);
            }
            // ICMP / ICMPv6: the header read once, for path MTU and connection outcomes.
            if reason == Unclassified::NotTcp
                && let Some(icmp) = crate::icmp_quote::header(packet, &ip)
            {
                crate::pmtu::observe(packet, &icmp, ifindex, direction, signals);
                if UPTO == upto::ALL {
                    crate::outcomes::icmp(packet, &icmp, ifindex, direction);
                }
            }
            observe_ip(device, &ip, segments);
            add_at(&mut device.unclassified, reason as usize, segments);
            false
        }
        Parsed::Tcp4(ip, tcp, addresses) => {
            if let Some(signals) = signals {
                crate::ecn::count_codepoint(signals, ip.ecn, segments);
            }
            let key = || FlowKey4::from_words([addresses, ports_word(&tcp, ifindex, direction)]);
            observe_tcp::<_, UPTO>(device, &ip, &tcp, direction, segments, len, key)
        }
        Parsed::Tcp6(ip, tcp, [src0, src1, dst0, dst1]) => {
            if let Some(signals) = signals {
                crate::ecn::count_codepoint(signals, ip.ecn, segments);
            }
            let key = || {
                let ports = ports_word(&tcp, ifindex, direction);
                FlowKey6::from_words([src0, src1, dst0, dst1, ports])
            };
            observe_tcp::<_, UPTO>(device, &ip, &tcp, direction, segments, len, key)
        }
    }
}

/// A TCP segment: its interface's IP and TCP statistics, then (past [`upto::PARSE`]) its flow,
/// whose key `key` builds only then. True when passive RTT has work (see [`observe`]).
#[inline(always)]
fn observe_tcp<K: FlowMapKey + crate::outcomes::AttemptKey, const UPTO: u8>(
    device: &mut DeviceStats,
    ip: &Ip,
    tcp: &Tcp,
    direction: Direction,
    segments: u64,
    len: u64,
    key: impl FnOnce() -> K,
) -> bool {
    let bits = Segment::bits_of(ip, tcp, direction);
    observe_ip(device, ip, segments);
    observe_tcp_device(device, tcp, bits, segments);
    if UPTO == upto::PARSE {
        return false;
    }
    let key = key();
    crate::ecn::observe_segment(&key, ip.ecn, tcp.flags(), segments);
    if UPTO == upto::ALL && bits & crate::outcomes::TCP_FLAGS != 0 {
        crate::outcomes::segment(&key, tcp);
    }
    // Passive RTT (see `crate::rtt`): only the daemon's programs.
    let timestamps = if UPTO == upto::ALL {
        tcp.timestamps
    } else {
        crate::tcp_timestamps::Timestamps::NONE
    };
    observe_flow::<_, UPTO>(device, key, bits, tcp, segments, len, timestamps)
}

/// The last word of a kernel flow key: ports (each in host byte order), then interface and
/// direction, in memory order. `u32::from_be` turns the header's two ports into
/// `src << 16 | dst`; rotated by 16 they sit as the key's little-endian memory holds them.
#[inline(always)]
pub(crate) fn ports_word(tcp: &Tcp, ifindex: u32, direction: Direction) -> u64 {
    let ports = u32::from_be(tcp.ports()).rotate_left(16);
    ports as u64 | (ifindex_direction(ifindex, direction) as u64) << 32
}
// `ports_word` and the key words are laid out for bpfel, the only target the build uses.
#[cfg(not(target_endian = "little"))]
compile_error!("the flow key words assume a little-endian BPF target (bpfel)");

#[inline(always)]
fn observe_ip(device: &mut DeviceStats, ip: &Ip, segments: u64) {
    if ip.df {
        device.ipv4_df += segments;
    }
    add_at(&mut device.ip_size, size_bucket(ip.len), 1);
    device.ip_size_sum += ip.len as u64;
}

/// The interface's TCP counters and histograms; `bits` as [`Segment::bits_of`] gives them.
#[inline(always)]
fn observe_tcp_device(device: &mut DeviceStats, tcp: &Tcp, bits: u32, segments: u64) {
    device.tcp_packets += segments;
    // Most segments carry none of these: one test skips four counter updates.
    if bits & Segment::RARE != 0 {
        device.tcp_rst += (bits & TCP_RST as u32 != 0) as u64;
        device.tcp_syn += (bits & TCP_SYN as u32 != 0) as u64;
        device.tcp_fin += (bits & TCP_FIN as u32 != 0) as u64;
        if bits & Segment::ZERO_WINDOW != 0 {
            device.tcp_zero_window += segments;
        }
    }
    // A pure ACK (no payload) is bucket 0 without computing it.
    if tcp.payload_len == 0 {
        device.tcp_payload_size[0] += 1;
    } else {
        add_at(
            &mut device.tcp_payload_size,
            size_bucket(tcp.payload_len),
            1,
        );
        device.tcp_payload_sum += tcp.payload_len as u64;
    }
}

/// A flow map key: what accounting needs from [`FlowKey4`] and [`FlowKey6`] alike.
pub(crate) trait FlowMapKey: Copy + 'static + crate::signals::SignalKey {
    /// The key's words, as the slot table stores and hashes them.
    type Words: AsRef<[u64]>;
    /// The family, as [`FlowSlot::owner`] holds it for flows of this kind.
    const FAMILY: u64;
    /// The map holding flows with this key whose slot was taken.
    fn map() -> &'static LruHashMap<Self, FlowStats>;
    /// The key of the opposite direction of the same connection on the same interface.
    fn reversed(&self) -> Self;
    fn words(&self) -> &Self::Words;
}

impl FlowMapKey for FlowKey4 {
    type Words = [u64; 2];
    const FAMILY: u64 = FAMILY_IPV4 as u64;
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, FlowStats> {
        &FLOWS4
    }
    #[inline(always)]
    fn reversed(&self) -> Self {
        FlowKey4::reversed(self)
    }
    #[inline(always)]
    fn words(&self) -> &[u64; 2] {
        FlowKey4::words(self)
    }
}

impl FlowMapKey for FlowKey6 {
    type Words = [u64; 5];
    const FAMILY: u64 = FAMILY_IPV6 as u64;
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, FlowStats> {
        &FLOWS6
    }
    #[inline(always)]
    fn reversed(&self) -> Self {
        FlowKey6::reversed(self)
    }
    #[inline(always)]
    fn words(&self) -> &[u64; 5] {
        FlowKey6::words(self)
    }
}

/// What one TCP segment contributes to its flow, decoded once. Its yes/no facts are bits of one
/// word (tested by the methods below): as separate booleans they were so many live values
/// that the compiler kept most of them on the stack.
struct Segment {
    /// The TCP flags (low byte), then [`Segment::DF`], [`Segment::ZERO_WINDOW`] and
    /// [`Segment::EGRESS`].
    bits: u32,
    seq: u32,
    /// Sequence space the segment occupies (payload, SYN and FIN count one each).
    sequence_len: u32,
    window_scale_plus_one: u8,
    segments: u64,
    len: u64,
}

impl Segment {
    /// The IPv4 Don't Fragment bit was set.
    const DF: u32 = 1 << 8;
    /// A zero receive window was advertised (not on a RST).
    const ZERO_WINDOW: u32 = 1 << 9;
    /// Seen on egress.
    const EGRESS: u32 = 1 << 10;
    /// The bits most segments have none of: SYN, FIN, RST, a zero window.
    const RARE: u32 = (TCP_SYN | TCP_FIN | TCP_RST) as u32 | Segment::ZERO_WINDOW;

    /// The [`Segment::bits`] of a segment.
    #[inline(always)]
    fn bits_of(ip: &Ip, tcp: &Tcp, direction: Direction) -> u32 {
        let flags = tcp.flags() as u32;
        let mut bits = flags;
        if ip.df {
            bits |= Segment::DF;
        }
        if tcp.window() == 0 && flags & TCP_RST as u32 == 0 {
            bits |= Segment::ZERO_WINDOW;
        }
        if direction == Direction::Egress {
            bits |= Segment::EGRESS;
        }
        bits
    }

    #[inline(always)]
    fn has(&self, bit: u32) -> bool {
        self.bits & bit != 0
    }
    #[inline(always)]
    fn syn(&self) -> bool {
        self.has(TCP_SYN as u32)
    }
    #[inline(always)]
    fn ack(&self) -> bool {
        self.has(TCP_ACK as u32)
    }
    #[inline(always)]
    fn rst(&self) -> bool {
        self.has(TCP_RST as u32)
    }
    #[inline(always)]
    fn fin(&self) -> bool {
        self.has(TCP_FIN as u32)
    }
    #[inline(always)]
    fn df(&self) -> bool {
        self.has(Segment::DF)
    }
    #[inline(always)]
    fn zero_window(&self) -> bool {
        self.has(Segment::ZERO_WINDOW)
    }
    #[inline(always)]
    fn egress(&self) -> bool {
        self.has(Segment::EGRESS)
    }
}

/// How a flow's counters are added to: atomically where CPUs share them (the LRU maps), plainly
/// in a CPU's own copy (the slot table).
trait Add {
    fn add(target: &mut u64, value: u64);
}

struct Atomic;
impl Add for Atomic {
    #[inline(always)]
    fn add(target: &mut u64, value: u64) {
        atomic_add(target, value);
    }
}

struct PerCpu;
impl Add for PerCpu {
    #[inline(always)]
    fn add(target: &mut u64, value: u64) {
        *target += value;
    }
}

/// The flow slot of `key`, if the daemon runs with a slot table.
#[inline(always)]
fn slot_of<K: FlowMapKey>(words: &K::Words) -> Option<(u32, *mut FlowSlot)> {
    let count = flow_slot_count();
    if count == 0 {
        return None;
    }
    let index = flow_slot_index(words.as_ref(), flow_slot_shift(), count - 1);
    Some((index, FLOW_SLOTS.get_ptr_mut(index)?))
}

/// Whether `slot` holds the flow whose key has `words`.
#[inline(always)]
fn slot_holds<K: FlowMapKey>(slot: &FlowSlot, words: &K::Words) -> bool {
    if slot.owner != K::FAMILY {
        return false;
    }
    let words = words.as_ref();
    let mut index = 0;
    while index < words.len() && index < slot.key.len() {
        if slot.key[index] != words[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// The flow's entry: found in its slot (the fast path) or its family's LRU map, else created
/// in its slot when free, else in the LRU map. Counters, sequence tracking, handshake RTT;
/// `bits` as [`Segment::bits_of`] gives them. True when passive RTT has work (see
/// [`rtt_due`]).
#[inline(always)]
fn observe_flow<K: FlowMapKey, const UPTO: u8>(
    device: &mut DeviceStats,
    key: K,
    bits: u32,
    tcp: &Tcp,
    segments: u64,
    len: u64,
    timestamps: crate::tcp_timestamps::Timestamps,
) -> bool {
    let flags = tcp.flags() as u32;
    let segment = Segment {
        bits,
        seq: tcp.seq(),
        // SYN and FIN occupy one sequence number each.
        sequence_len: tcp.payload_len
            + (flags & TCP_SYN as u32 != 0) as u32
            + (flags & TCP_FIN as u32 != 0) as u32,
        window_scale_plus_one: tcp.window_scale_plus_one,
        segments,
        len,
    };
    // First/last seen only need the coarse clock (one tick, a few ms behind), which is cheaper;
    // the handshake legs read the precise one.
    let now = coarse_now();

    let words = key.words();
    // SAFETY (every dereference of `slot` below): a pointer into the array's value, valid for
    // this program run. The key and owner change only while the slot is not owned by a flow
    // (claiming, draining), which readers check first.
    let slot = slot_of::<K>(words);
    // Whether this segment completes a handshake; checked once, at the end, whichever way the
    // flow was found (one copy of that code keeps the verifier's work down).
    let (completes_handshake, rtt) = if let Some((index, slot)) = slot
        && slot_holds::<K>(unsafe { &*slot }, words)
    {
        let slot = unsafe { &mut *slot };
        if UPTO == upto::LOOKUP {
            return false;
        }
        let Some(counts) = FLOW_SLOT_COUNTERS.get_ptr_mut(index) else {
            return false;
        };
        // SAFETY: this CPU's copy: only this CPU writes it, and the program is not re-entered
        // on this CPU while it runs.
        let counts = unsafe { &mut *counts };
        let completes = update::<PerCpu>(device, counts, &mut slot.tracking, &segment, now);
        (
            completes,
            rtt_due(&segment, slot.tracking.handshake_start_ns, timestamps),
        )
    } else if let Some(flow) = K::map().get_ptr_mut(key) {
        if UPTO == upto::LOOKUP {
            return false;
        }
        // SAFETY: a pointer into the map value, valid for this program run; counters are
        // updated with atomic adds, the rest is owned by the CPU processing this flow direction.
        let flow = unsafe { &mut *flow };
        let completes =
            update::<Atomic>(device, &mut flow.counts, &mut flow.tracking, &segment, now);
        (
            completes,
            rtt_due(&segment, flow.tracking.handshake_start_ns, timestamps),
        )
    } else {
        create(device, slot, key, &segment, now);
        // A new entry has no outstanding value to echo; an egress segment still stores.
        (
            !segment.egress() && segment.syn() && segment.ack(),
            segment.egress() && (timestamps.found() || segment.syn()),
        )
    };
    if completes_handshake {
        complete_handshake(device, &key);
    }
    rtt
}

/// Whether passive RTT (see `crate::rtt`) has work for this segment, whose flow entry's
/// outstanding-timestamp word is `word`: an egress segment with the option stores its TSval
/// in the reverse (ingress) entry; an ingress one whose TSecr echoes the outstanding value (or
/// a newer one) takes a sample or drops it. The work itself is the RTT program's, tail-called
/// last; the direction is a constant of each program, so each tests one condition.
#[inline(always)]
fn rtt_due(segment: &Segment, word: u64, timestamps: crate::tcp_timestamps::Timestamps) -> bool {
    // A SYN's option is read by the RTT program (the accounting parser reads only the aligned
    // place): any SYN that could store, or echo an outstanding value, is its work.
    if segment.egress() {
        timestamps.found() || segment.syn()
    } else if segment.syn() {
        word as u32 != 0
    } else {
        timestamps.echo_due(word)
    }
}

/// The tracking state of the flow `key` (in its slot or its LRU map entry), if it has one.
#[inline(always)]
pub(crate) fn tracking_of<K: FlowMapKey>(key: &K) -> Option<*mut FlowTracking> {
    let words = key.words();
    match slot_of::<K>(words) {
        // SAFETY: a pointer into the array's value, valid for this program run.
        Some((_, slot)) if slot_holds::<K>(unsafe { &*slot }, words) => unsafe {
            Some(&raw mut (*slot).tracking)
        },
        _ => {
            let flow = K::map().get_ptr_mut(*key)?;
            // SAFETY: a pointer into the map value, valid for this program run.
            Some(unsafe { &raw mut (*flow).tracking })
        }
    }
}

/// A new flow (or one first seen now): in its slot if free, else in the LRU map.
#[inline(always)]
fn create<K: FlowMapKey>(
    device: &mut DeviceStats,
    slot: Option<(u32, *mut FlowSlot)>,
    key: K,
    segment: &Segment,
    now: u64,
) {
    // The counters are found before the slot is claimed: a claimed slot must be published.
    if let Some((index, slot)) = slot
        && let Some(slot_counts) = FLOW_SLOT_COUNTERS.get_ptr_mut(index)
        // SAFETY: see `observe_flow`.
        && let slot = unsafe { &mut *slot }
        && slot.owner == SLOT_FREE
        && claim(&mut slot.owner)
    {
        let words = key.words().as_ref();
        let mut word = 0;
        while word < slot.key.len() {
            slot.key[word] = if word < words.len() { words[word] } else { 0 };
            word += 1;
        }
        slot.tracking = first_tracking(segment);
        // SAFETY: this CPU's copy (see `observe_flow`); the other CPUs' copies of a free slot
        // are zero.
        unsafe { *slot_counts = first_counts(segment, now) };
        publish(&mut slot.owner, K::FAMILY);
        device.flows_created += 1;
        return;
    }
    let flow = FlowStats {
        counts: first_counts(segment, now),
        tracking: first_tracking(segment),
    };
    if K::map().insert(key, flow, BPF_NOEXIST).is_ok() {
        device.flows_created += 1;
    } else {
        device.flow_create_failures += 1;
        report(KernelEvent::FlowInsertFailed, 0);
    }
}

/// The counters of a flow's first segment.
#[inline(always)]
fn first_counts(segment: &Segment, now: u64) -> FlowCounts {
    let segments = segment.segments;
    FlowCounts {
        packets: segments,
        bytes: segment.len,
        retransmits: 0,
        rst: segment.rst() as u64,
        syn: segment.syn() as u64,
        fin: segment.fin() as u64,
        zero_window: if segment.zero_window() { segments } else { 0 },
        df: if segment.df() { segments } else { 0 },
        first_seen_ns: now,
        last_seen_ns: now,
    }
}

/// The tracking state after a flow's first segment.
#[inline(always)]
fn first_tracking(segment: &Segment) -> FlowTracking {
    FlowTracking {
        handshake_start_ns: if segment.egress() && segment.syn() {
            precise_now()
        } else {
            0
        },
        next_seq: segment.seq.wrapping_add(segment.sequence_len),
        window_scale_plus_one: if segment.syn() {
            segment.window_scale_plus_one
        } else {
            0
        },
        seq_valid: (segment.sequence_len > 0 && !segment.rst()) as u8,
        awaiting_ack: (!segment.egress() && segment.syn() && !segment.ack()) as u8,
        _pad: 0,
    }
}

/// Updates an existing flow: sequence tracking, counters, handshake RTT. True when this
/// segment completes a handshake whose start the opposite direction recorded (the caller then
/// calls [`complete_handshake`], once for every path).
#[inline(always)]
fn update<A: Add>(
    device: &mut DeviceStats,
    counts: &mut FlowCounts,
    tracking: &mut FlowTracking,
    segment: &Segment,
    now: u64,
) -> bool {
    let segments = segment.segments;
    let mut retransmit = false;
    if segment.sequence_len > 0 && !segment.rst() {
        let end = segment.seq.wrapping_add(segment.sequence_len);
        if segment.syn() && (tracking.seq_valid == 0 || end != tracking.next_seq) {
            // A SYN with a new initial sequence number: a new connection on this 4-tuple.
            tracking.next_seq = end;
            tracking.seq_valid = 1;
        } else if tracking.seq_valid != 0 && before(segment.seq, tracking.next_seq) {
            retransmit = true;
            if after(end, tracking.next_seq) {
                tracking.next_seq = end;
            }
        } else {
            tracking.next_seq = end;
            tracking.seq_valid = 1;
        }
    }

    A::add(&mut counts.packets, segments);
    A::add(&mut counts.bytes, segment.len);
    if segment.df() {
        A::add(&mut counts.df, segments);
    }
    counts.last_seen_ns = now;
    if retransmit {
        A::add(&mut counts.retransmits, segments);
        device.tcp_retransmits += segments;
    }
    // Most segments carry none of these: one test skips four.
    if segment.has(Segment::RARE) {
        if segment.rst() {
            A::add(&mut counts.rst, 1);
        }
        if segment.syn() {
            A::add(&mut counts.syn, 1);
            if segment.window_scale_plus_one != 0 {
                tracking.window_scale_plus_one = segment.window_scale_plus_one;
            }
        }
        if segment.fin() {
            A::add(&mut counts.fin, 1);
        }
        if segment.zero_window() {
            A::add(&mut counts.zero_window, segments);
        }
    }

    // Handshake RTT. Karn's rule: a retransmitted SYN or SYN-ACK makes the sample ambiguous.
    if segment.syn() {
        if segment.egress() {
            tracking.handshake_start_ns = if retransmit { 0 } else { precise_now() };
        } else if segment.ack() {
            return true;
        } else {
            tracking.awaiting_ack = 1;
        }
    } else if !segment.egress() && segment.ack() && !segment.rst() && tracking.awaiting_ack != 0 {
        tracking.awaiting_ack = 0;
        return true;
    }
    false
}

/// Takes a free slot's owner word from [`SLOT_FREE`] to [`SLOT_CLAIMING`] atomically (BPF
/// compare-and-exchange, Linux 5.12+); false when another CPU or user space got there first.
#[inline(always)]
fn claim(owner: &mut u64) -> bool {
    let mut previous = SLOT_FREE;
    // SAFETY: `owner` is a valid, 8-byte aligned u64 in a map value; r0 holds the expected
    // value in and the previous value out, as the instruction defines.
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({0} + 0, r0, {1})",
            in(reg) owner as *mut u64,
            in(reg) SLOT_CLAIMING,
            inout("r0") previous,
        );
    }
    if previous != SLOT_FREE {
        report(KernelEvent::FlowSlotClaimLost, 0);
    }
    previous == SLOT_FREE
}

/// Stores a claimed slot's owner (the flow's family) with an atomic exchange, whose full
/// barrier orders it after the key written before: a program that sees the owner sees the key.
#[inline(always)]
fn publish(owner: &mut u64, family: u64) {
    // SAFETY: as in `claim`; the register receives the previous value, which is unused.
    unsafe {
        core::arch::asm!(
            "{1} = xchg_64({0} + 0, {1})",
            in(reg) owner as *mut u64,
            inout(reg) family => _,
        );
    }
}

/// CLOCK_MONOTONIC, nanoseconds.
#[inline(always)]
fn precise_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC as of the last tick (Linux 5.11+), nanoseconds. The coarse clock changes
/// once per jiffy, and reading the jiffies counter costs one load (the verifier inlines
/// `bpf_jiffies64`) where the clock's helper is a call: so the clock is read about once per
/// jiffy and kept in [`CLOCK_CACHE`] for every CPU. Same precision.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let cache = &raw mut CLOCK_CACHE;
    // SAFETY: reads and writes of plain words of global data, which every CPU may be writing
    // too: a reader may see the jiffy one CPU stored before the time it stored with it (on
    // CPUs that reorder stores), getting the previous jiffy's time, as a coarse clock read
    // just before the tick would. The jiffy only moves forwards: an older one is not stored.
    unsafe {
        let cached = core::ptr::read_volatile(&raw const (*cache).jiffies);
        if cached == jiffies {
            return core::ptr::read_volatile(&raw const (*cache).coarse_ns);
        }
        let now = bpf_ktime_get_coarse_ns();
        if jiffies > cached {
            core::ptr::write_volatile(&raw mut (*cache).coarse_ns, now);
            core::ptr::write_volatile(&raw mut (*cache).jiffies, jiffies);
        }
        now
    }
}

/// Takes the handshake start recorded on the opposite (egress) direction of `key` (in its slot
/// or its LRU map) and records the RTT up to now in the interface's histogram.
#[inline(always)]
fn complete_handshake<K: FlowMapKey>(device: &mut DeviceStats, key: &K) {
    let reversed = key.reversed();
    let words = reversed.words();
    let sent = match slot_of::<K>(words) {
        // SAFETY: a pointer into the array's value, valid for this program run.
        Some((_, slot)) if slot_holds::<K>(unsafe { &*slot }, words) => unsafe {
            &mut (*slot).tracking
        },
        _ => {
            let Some(flow) = K::map().get_ptr_mut(reversed) else {
                return;
            };
            // SAFETY: a pointer into the map value, valid for this program run.
            unsafe { &mut (*flow).tracking }
        }
    };
    let start = sent.handshake_start_ns;
    let now = precise_now();
    if start == 0 || now < start {
        return;
    }
    sent.handshake_start_ns = 0;
    let rtt_ns = now - start;
    device.handshake_rtt_sum_ns += rtt_ns;
    add_at(
        &mut device.handshake_rtt,
        log2_bucket(rtt_ns / 1000, RTT_BUCKETS),
        1,
    );
}

/// `a` comes before `b` in sequence space (RFC 1982 serial arithmetic).
#[inline(always)]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// Bucket of `value` in a log2 histogram of `buckets` buckets: 0 for 0, else the bit length,
/// clamped to the last bucket.
#[inline(always)]
fn log2_bucket(value: u64, buckets: usize) -> usize {
    let bits = (64 - value.leading_zeros()) as usize;
    if bits >= buckets { buckets - 1 } else { bits }
}

/// Adds `value` at `index` of `counters`, ignoring an out-of-range index (no panic path).
#[inline(always)]
fn add_at(counters: &mut [u64], index: usize, value: u64) {
    if let Some(counter) = counters.get_mut(index) {
        *counter += value;
    }
}

/// Counts one dropped packet under `key` in [`DROPS`] (in [`DROPS_LOST`] when the map is
/// full). The value is per CPU, but a drop in an interrupt can nest in another on the same
/// CPU, so the add is atomic all the same (one instruction, and drops are rare next to
/// packets).
#[inline(always)]
pub(crate) fn count_drop(key: &DropKey) {
    if let Some(count) = DROPS.get_ptr_mut(key) {
        // SAFETY: a valid u64 in a map value of this CPU.
        atomic_add(unsafe { &mut *count }, 1);
        return;
    }
    if DROPS.insert(key, 1u64, BPF_NOEXIST).is_ok() {
        return;
    }
    // Created meanwhile by a nested drop on this CPU (add to it), or the map is full.
    let target = DROPS.get_ptr_mut(key).or_else(|| {
        report(KernelEvent::DropsMapFull, 0);
        DROPS_LOST.get_ptr_mut(0)
    });
    if let Some(count) = target {
        // SAFETY: as above.
        atomic_add(unsafe { &mut *count }, 1);
    }
}
