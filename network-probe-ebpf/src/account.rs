//! Accounting: one parsed packet updates its interface's per-CPU statistics and, for TCP, its
//! flow's entry in the LRU flow map of its address family.
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

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use aya_ebpf::maps::LruHashMap;
use network_probe_common::{
    DeviceStats, Direction, FAMILY_IPV4, FlowKey4, FlowKey6, FlowStats, RTT_BUCKETS,
    ifindex_direction, size_bucket,
};

use crate::{
    maps::{DEVICE_STATS, FLOWS4, FLOWS6, IFINDEX_SLOTS},
    packet::Packet,
    parse::{Ip, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Tcp, parse},
};

/// `BPF_NOEXIST`: create only if absent.
const BPF_NOEXIST: u64 = 1;

/// How far [`observe`] goes. The daemon's programs do [`upto::ALL`]; benchmark programs stop
/// earlier, so `cargo xtask bench` can show what each step of the per-packet path costs.
pub mod upto {
    /// The interface's slot and per-CPU statistics found, packets and bytes counted.
    pub const DEVICE: u8 = 0;
    /// Also the headers parsed and the interface's IP and TCP statistics updated.
    pub const PARSE: u8 = 1;
    /// Also the flow's map entry looked up (the key built and hashed).
    pub const LOOKUP: u8 = 2;
    /// Everything: the flow entry updated (atomic counters, sequence tracking, clock).
    pub const ALL: u8 = 3;
}

/// Accounts one packet (`segments` wire packets) seen on `ifindex` in `direction`, as far as
/// `UPTO` (see [`upto`]).
#[inline(always)]
pub fn observe<P: Packet, const UPTO: u8>(
    packet: &P,
    ifindex: u32,
    direction: Direction,
    segments: u64,
) {
    // User space assigns the slot before attaching; without one this interface is not ours.
    let slot = match IFINDEX_SLOTS.get(ifindex) {
        Some(&slot) if slot != 0 => slot - 1,
        _ => return,
    };
    let Some(device) = DEVICE_STATS.get_ptr_mut(slot * 2 + direction as u32) else {
        return;
    };
    // SAFETY: a per-CPU value: only this CPU writes this copy, and the program is not
    // re-entered on this CPU while it runs.
    let device = unsafe { &mut *device };
    let len = packet.len() as u64;
    device.packets += segments;
    device.bytes += len;
    if UPTO == upto::DEVICE {
        return;
    }
    match parse(packet) {
        Parsed::NotIp(reason) => add_at(&mut device.unclassified, reason as usize, segments),
        Parsed::OtherIp(ip, reason) => {
            observe_ip(device, &ip, segments);
            add_at(&mut device.unclassified, reason as usize, segments);
        }
        Parsed::Tcp(ip, tcp) => {
            observe_ip(device, &ip, segments);
            observe_tcp_device(device, &tcp, segments);
            if UPTO == upto::PARSE {
                return;
            }
            let ifindex_direction = ifindex_direction(ifindex, direction);
            if ip.family == FAMILY_IPV4 {
                let key = FlowKey4 {
                    src: [ip.src[0], ip.src[1], ip.src[2], ip.src[3]],
                    dst: [ip.dst[0], ip.dst[1], ip.dst[2], ip.dst[3]],
                    src_port: tcp.src_port,
                    dst_port: tcp.dst_port,
                    ifindex_direction,
                };
                observe_flow::<_, UPTO>(device, key, direction, &ip, &tcp, segments, len);
            } else {
                let key = FlowKey6 {
                    src: ip.src,
                    dst: ip.dst,
                    src_port: tcp.src_port,
                    dst_port: tcp.dst_port,
                    ifindex_direction,
                };
                observe_flow::<_, UPTO>(device, key, direction, &ip, &tcp, segments, len);
            }
        }
    }
}

#[inline(always)]
fn observe_ip(device: &mut DeviceStats, ip: &Ip, segments: u64) {
    if ip.df {
        device.ipv4_df += segments;
    }
    add_at(&mut device.ip_size, size_bucket(ip.len), 1);
    device.ip_size_sum += ip.len as u64;
}

/// The interface's TCP counters and histograms.
#[inline(always)]
fn observe_tcp_device(device: &mut DeviceStats, tcp: &Tcp, segments: u64) {
    let rst = tcp.flags & TCP_RST != 0;
    device.tcp_packets += segments;
    device.tcp_rst += rst as u64;
    device.tcp_syn += (tcp.flags & TCP_SYN != 0) as u64;
    device.tcp_fin += (tcp.flags & TCP_FIN != 0) as u64;
    if tcp.window == 0 && !rst {
        device.tcp_zero_window += segments;
    }
    add_at(
        &mut device.tcp_payload_size,
        size_bucket(tcp.payload_len),
        1,
    );
    device.tcp_payload_sum += tcp.payload_len as u64;
}

/// A flow map key: what accounting needs from [`FlowKey4`] and [`FlowKey6`] alike.
trait FlowMapKey: Copy + 'static {
    /// The map holding flows with this key.
    fn map() -> &'static LruHashMap<Self, FlowStats>;
    /// The key of the opposite direction of the same connection on the same interface.
    fn reversed(&self) -> Self;
}

impl FlowMapKey for FlowKey4 {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, FlowStats> {
        &FLOWS4
    }
    #[inline(always)]
    fn reversed(&self) -> Self {
        FlowKey4::reversed(self)
    }
}

impl FlowMapKey for FlowKey6 {
    #[inline(always)]
    fn map() -> &'static LruHashMap<Self, FlowStats> {
        &FLOWS6
    }
    #[inline(always)]
    fn reversed(&self) -> Self {
        FlowKey6::reversed(self)
    }
}

/// The flow's entry: created on its first packet, counters, sequence tracking, handshake RTT.
#[inline(always)]
fn observe_flow<K: FlowMapKey, const UPTO: u8>(
    device: &mut DeviceStats,
    key: K,
    direction: Direction,
    ip: &Ip,
    tcp: &Tcp,
    segments: u64,
    len: u64,
) {
    let syn = tcp.flags & TCP_SYN != 0;
    let ack = tcp.flags & TCP_ACK != 0;
    let rst = tcp.flags & TCP_RST != 0;
    let fin = tcp.flags & TCP_FIN != 0;
    let zero_window = tcp.window == 0 && !rst;
    let sequence_len = tcp.payload_len + syn as u32 + fin as u32;
    // First/last seen only need the coarse clock (one tick, a few ms behind), which is cheaper;
    // the handshake legs below read the precise one, inside branches that exist anyway (a
    // branch of its own here would double the states the verifier walks).
    let now = coarse_now();
    let egress = direction == Direction::Egress;

    let flows = K::map();
    let Some(flow) = flows.get_ptr_mut(key) else {
        let flow = FlowStats {
            packets: segments,
            bytes: len,
            rst: rst as u64,
            syn: syn as u64,
            fin: fin as u64,
            zero_window: if zero_window { segments } else { 0 },
            df: if ip.df { segments } else { 0 },
            first_seen_ns: now,
            last_seen_ns: now,
            handshake_start_ns: if egress && syn { precise_now() } else { 0 },
            next_seq: tcp.seq.wrapping_add(sequence_len),
            window_scale_plus_one: if syn { tcp.window_scale_plus_one } else { 0 },
            seq_valid: (sequence_len > 0 && !rst) as u8,
            awaiting_ack: (!egress && syn && !ack) as u8,
            ..FlowStats::default()
        };
        if flows.insert(key, flow, BPF_NOEXIST).is_ok() {
            device.flows_created += 1;
        } else {
            device.flow_create_failures += 1;
        }
        if !egress && syn && ack {
            complete_handshake(device, &key);
        }
        return;
    };
    // SAFETY: a pointer into the map value, valid for this program run; counters are updated
    // with atomic adds, the rest is owned by the CPU processing this flow direction.
    let flow = unsafe { &mut *flow };
    if UPTO == upto::LOOKUP {
        return;
    }

    let mut retransmit = false;
    if sequence_len > 0 && !rst {
        let end = tcp.seq.wrapping_add(sequence_len);
        if syn && (flow.seq_valid == 0 || end != flow.next_seq) {
            // A SYN with a new initial sequence number: a new connection on this 4-tuple.
            flow.next_seq = end;
            flow.seq_valid = 1;
        } else if flow.seq_valid != 0 && before(tcp.seq, flow.next_seq) {
            retransmit = true;
            if after(end, flow.next_seq) {
                flow.next_seq = end;
            }
        } else {
            flow.next_seq = end;
            flow.seq_valid = 1;
        }
    }

    atomic_add(&mut flow.packets, segments);
    atomic_add(&mut flow.bytes, len);
    if retransmit {
        atomic_add(&mut flow.retransmits, segments);
        device.tcp_retransmits += segments;
    }
    if rst {
        atomic_add(&mut flow.rst, 1);
    }
    if syn {
        atomic_add(&mut flow.syn, 1);
        if tcp.window_scale_plus_one != 0 {
            flow.window_scale_plus_one = tcp.window_scale_plus_one;
        }
    }
    if fin {
        atomic_add(&mut flow.fin, 1);
    }
    if zero_window {
        atomic_add(&mut flow.zero_window, segments);
    }
    if ip.df {
        atomic_add(&mut flow.df, segments);
    }
    flow.last_seen_ns = now;

    // Handshake RTT. Karn's rule: a retransmitted SYN or SYN-ACK makes the sample ambiguous.
    if egress && syn {
        flow.handshake_start_ns = if retransmit { 0 } else { precise_now() };
    } else if !egress && syn && ack {
        complete_handshake(device, &key);
    } else if !egress && syn {
        flow.awaiting_ack = 1;
    } else if !egress && ack && !rst && flow.awaiting_ack != 0 {
        flow.awaiting_ack = 0;
        complete_handshake(device, &key);
    }
}

/// CLOCK_MONOTONIC, nanoseconds.
#[inline(always)]
fn precise_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC as of the last tick (Linux 5.11+), nanoseconds.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Takes the handshake start recorded on the opposite (egress) direction of `key` and records
/// the RTT up to now in the interface's histogram.
#[inline(always)]
fn complete_handshake<K: FlowMapKey>(device: &mut DeviceStats, key: &K) {
    let Some(sent) = K::map().get_ptr_mut(key.reversed()) else {
        return;
    };
    // SAFETY: a pointer into the map value, valid for this program run.
    let sent = unsafe { &mut *sent };
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

/// `*target += value` as one atomic instruction (BPF_ATOMIC | BPF_ADD): flow counters are
/// shared between CPUs. The bpfel target offers no AtomicU64::fetch_add, hence the asm.
#[inline(always)]
fn atomic_add(target: &mut u64, value: u64) {
    // SAFETY: `target` is a valid, 8-byte aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) target as *mut u64,
            in(reg) value,
        );
    }
}
