//! Path MTU: ICMPv4 fragmentation-needed (type 3 code 4, RFC 1191) and ICMPv6 packet-too-big
//! (type 2, RFC 8201) messages, counted on the interface and direction they cross with the MTU
//! they announce (a histogram, [`network_probe_common::pmtu_bucket`]), and per flow: the
//! message quotes the head of the packet that did not fit, whose TCP flow (as it crossed this
//! interface, in the direction opposite to the message's) gets one count.
//!
//! Only packets the parser left as "not TCP" reach this module (a protocol compare), so TCP
//! segments pay nothing for it. The quoted header is read as it is, without walking IPv4
//! options' contents beyond their length or IPv6 extension headers: a quoted IPv6 packet whose
//! next header is not TCP counts on the interface only.

use network_probe_common::{Direction, FlowKey4, FlowKey6, FlowSignals, SignalStats, pmtu_bucket};

use crate::{packet::Packet, parse::Ip, signals};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// An IP packet that is not TCP: counts it if it is a path-MTU message.
#[inline(always)]
pub(crate) fn observe<P: Packet>(
    packet: &P,
    ip: &Ip,
    ifindex: u32,
    direction: Direction,
    stats: Option<&mut SignalStats>,
) {
    if ip.protocol != IPPROTO_ICMP && ip.protocol != IPPROTO_ICMPV6 {
        return;
    }
    let l4 = ip.l4_offset as usize;
    // The ICMP header: type, code, checksum, then the MTU field's word.
    let Some(header) = packet.load::<[u8; 8]>(l4) else {
        return;
    };
    let quoted = l4 + 8;
    // The flow of the quoted packet crossed this interface the other way.
    let quoted_direction = match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    let ifindex_direction = network_probe_common::ifindex_direction(ifindex, quoted_direction);
    let mtu = if ip.protocol == IPPROTO_ICMP {
        if header[0] != ICMP_DEST_UNREACH || header[1] != ICMP_FRAG_NEEDED {
            return;
        }
        quoted_flow4(packet, quoted, ifindex_direction);
        u16::from_be_bytes([header[6], header[7]]) as u32
    } else {
        if header[0] != ICMPV6_PKT_TOOBIG {
            return;
        }
        quoted_flow6(packet, quoted, ifindex_direction);
        u32::from_be_bytes([header[4], header[5], header[6], header[7]])
    };
    if let Some(stats) = stats {
        stats.pmtu_messages += 1;
        if let Some(bucket) = stats.pmtu_announced.get_mut(pmtu_bucket(mtu)) {
            *bucket += 1;
        }
        stats.pmtu_announced_sum += mtu as u64;
    }
}

/// One count for the TCP flow of the IPv4 packet quoted at `offset`, if it is TCP.
#[inline(always)]
fn quoted_flow4<P: Packet>(packet: &P, offset: usize, ifindex_direction: u32) {
    let Some(header) = packet.load::<[u8; 20]>(offset) else {
        return;
    };
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if header[0] >> 4 != 4 || header_len < 20 || header[9] != IPPROTO_TCP {
        return;
    }
    let Some(ports) = packet.load::<[u8; 4]>(offset + header_len) else {
        return;
    };
    let key = FlowKey4 {
        src: [header[12], header[13], header[14], header[15]],
        dst: [header[16], header[17], header[18], header[19]],
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        ifindex_direction,
    };
    count(&key);
}

/// One count for the TCP flow of the IPv6 packet quoted at `offset`, if its first next header
/// is TCP.
#[inline(always)]
fn quoted_flow6<P: Packet>(packet: &P, offset: usize, ifindex_direction: u32) {
    let Some(header) = packet.load::<[u8; 8]>(offset) else {
        return;
    };
    if header[0] >> 4 != 6 || header[6] != IPPROTO_TCP {
        return;
    }
    let (Some(src), Some(dst), Some(ports)) = (
        packet.load::<[u8; 16]>(offset + 8),
        packet.load::<[u8; 16]>(offset + 24),
        packet.load::<[u8; 4]>(offset + 40),
    ) else {
        return;
    };
    let key = FlowKey6 {
        src,
        dst,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        ifindex_direction,
    };
    count(&key);
}

#[inline(always)]
fn count<K: signals::SignalKey>(key: &K) {
    signals::add_to_flow(
        key,
        &FlowSignals {
            pmtu_messages: 1,
            ..FlowSignals::default()
        },
    );
}
