//! ICMP and ICMPv6 errors and the TCP header they quote, read once for every module that wants
//! them: path MTU (`pmtu`: fragmentation needed, packet too big) and connection outcomes
//! (`outcomes`: destination unreachable). Both used to read the quote themselves, and
//! `outcomes` parsed the Ethernet and IP headers a second time; here the parser's result
//! (`Ip`: the transport protocol, and the transport offset after VLAN tags, IPv4 options and
//! IPv6 extension headers) is where reading starts.
//!
//! The quoted packet is read as it is: its IPv4 options are skipped by their length, IPv6
//! extension headers are not walked (a quote whose first next header is not TCP yields
//! nothing: the kernel's own ICMPv6 errors carry none).

use network_probe_common::{Direction, FlowKey4, FlowKey6, ifindex_direction};

use crate::{packet::Packet, parse::Ip};

pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_TCP: u8 = 6;

/// The header of an ICMP or ICMPv6 message and where its quote starts.
#[derive(Clone, Copy)]
pub(crate) struct IcmpHeader {
    /// ICMPv6 rather than ICMP.
    pub v6: bool,
    pub kind: u8,
    pub code: u8,
    /// Bytes 4-7 (ICMP's next-hop MTU in its last two, ICMPv6 packet-too-big's MTU).
    pub rest: [u8; 4],
    /// Offset of the quoted packet's IP header from the start of the frame.
    pub quoted: usize,
}

/// The ICMP / ICMPv6 header of an IP packet that is not TCP (the parser's `ip`), if it is one
/// and its 8 bytes are there.
#[inline(always)]
pub(crate) fn header<P: Packet>(packet: &P, ip: &Ip) -> Option<IcmpHeader> {
    if ip.protocol != IPPROTO_ICMP && ip.protocol != IPPROTO_ICMPV6 {
        return None;
    }
    let l4 = ip.l4_offset as usize;
    let bytes = packet.load::<[u8; 8]>(l4)?;
    Some(IcmpHeader {
        v6: ip.protocol == IPPROTO_ICMPV6,
        kind: bytes[0],
        code: bytes[1],
        rest: [bytes[4], bytes[5], bytes[6], bytes[7]],
        quoted: l4 + 8,
    })
}

/// The interface and direction (`ifindex_direction`) under which the quoted packet's flow is
/// keyed: it crossed this interface the other way.
#[inline(always)]
pub(crate) fn quoted_ifindex_direction(ifindex: u32, direction: Direction) -> u32 {
    let sent = match direction {
        Direction::Ingress => Direction::Egress,
        Direction::Egress => Direction::Ingress,
    };
    ifindex_direction(ifindex, sent)
}

/// The TCP flow the message quotes, keyed under `ifindex_direction`: calls `v4` or `v6` (by the
/// message's family) with the flow key and the offset of the quoted TCP header, of which the
/// ports (its first 4 bytes) were read. Nothing is called when the quote is not TCP or is cut
/// before the ports.
#[inline(always)]
pub(crate) fn quoted_tcp<P: Packet>(
    packet: &P,
    icmp: &IcmpHeader,
    ifindex_direction: u32,
    v4: impl FnOnce(&FlowKey4, usize),
    v6: impl FnOnce(&FlowKey6, usize),
) {
    let at = icmp.quoted;
    if !icmp.v6 {
        let Some(header) = packet.load::<[u8; 20]>(at) else {
            return;
        };
        let header_len = ((header[0] & 0x0f) as usize) * 4;
        if header[0] >> 4 != 4 || header_len < 20 || header[9] != IPPROTO_TCP {
            return;
        }
        let tcp_at = at + header_len;
        let Some(ports) = packet.load::<[u8; 4]>(tcp_at) else {
            return;
        };
        let key = FlowKey4 {
            src: [header[12], header[13], header[14], header[15]],
            dst: [header[16], header[17], header[18], header[19]],
            src_port: u16::from_be_bytes([ports[0], ports[1]]),
            dst_port: u16::from_be_bytes([ports[2], ports[3]]),
            ifindex_direction,
        };
        v4(&key, tcp_at);
    } else {
        let Some(header) = packet.load::<[u8; 8]>(at) else {
            return;
        };
        if header[0] >> 4 != 6 || header[6] != IPPROTO_TCP {
            return;
        }
        let tcp_at = at + 40;
        let (Some(src), Some(dst), Some(ports)) = (
            packet.load::<[u8; 16]>(at + 8),
            packet.load::<[u8; 16]>(at + 24),
            packet.load::<[u8; 4]>(tcp_at),
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
        v6(&key, tcp_at);
    }
}
