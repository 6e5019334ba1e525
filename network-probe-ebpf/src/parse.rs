//! Packet parsing: Ethernet (with up to two 802.1Q / 802.1ad tags), IPv4 (options skipped by
//! IHL), IPv6 (extension headers walked, bounded) and TCP (options scanned for window scale on
//! SYNs). Every read is bounds-checked (see `packet`); every loop is bounded. The result is
//! a small summary, or the reason the packet could not be classified.
//!
//! Headers are read as whole 8-byte words in memory order and their fields taken out with
//! shifts ([`byte`], [`be16`], [`be32`]): reading them as byte arrays made the compiler take
//! every byte apart and put the fields back together, a third of the parser's instructions.

use network_probe_common::Unclassified;

use crate::packet::Packet;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags walked before giving up (QinQ is two).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up.
const MAX_IPV6_EXTENSIONS: usize = 8;
/// TCP option bytes scanned (the TCP maximum).
const MAX_TCP_OPTION_BYTES: usize = 40;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const IPV6_MOBILITY: u8 = 135;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

/// The IP layer of a classified packet.
#[derive(Clone, Copy)]
pub(crate) struct Ip {
    /// IP packet length (header included), from the header's length field; for GSO super-packets
    /// that is the super-packet's length. Falls back to the bytes present when the field is 0.
    pub len: u32,
    /// IPv4 Don't Fragment bit.
    pub df: bool,
    /// The ECN field (RFC 3168): the low two bits of IPv4's TOS / IPv6's traffic class.
    pub ecn: u8,
    /// IPv4 protocol / IPv6 next header after the extension headers walked (the transport).
    pub protocol: u8,
    /// Offset of the transport header from the start of the frame.
    pub l4_offset: u16,
}

/// The TCP layer of a classified packet: the header's first 16 bytes as read, whose fields
/// the methods take out where they are used (decoded up front, the fields were packed into
/// and out of registers on the way to their users), and what the parser worked out.
#[derive(Clone, Copy)]
pub(crate) struct Tcp {
    /// Bytes 0-7: ports, sequence number.
    bytes_0_8: u64,
    /// Bytes 8-15: acknowledgment number, data offset, flags, window.
    bytes_8_16: u64,
    pub payload_len: u32,
    /// Window scale shift from a SYN's option, plus one; 0 if absent or not a SYN.
    pub window_scale_plus_one: u8,
    /// The timestamp option (passive RTT, see `crate::rtt`), read here where the header's
    /// offset is at hand: kept for later, the offset made the verifier follow each of the
    /// parser's paths separately through the rest of the program.
    pub timestamps: crate::tcp_timestamps::Timestamps,
}

impl Tcp {
    /// The source and destination ports as they sit in the header (network byte order), as one
    /// little-endian word: the flow key takes them from here without a swap per port.
    #[inline(always)]
    pub(crate) fn ports(&self) -> u32 {
        self.bytes_0_8 as u32
    }
    #[inline(always)]
    pub(crate) fn seq(&self) -> u32 {
        be32(self.bytes_0_8, 4)
    }
    #[inline(always)]
    pub(crate) fn ack(&self) -> u32 {
        be32(self.bytes_8_16, 0)
    }
    #[inline(always)]
    pub(crate) fn flags(&self) -> u8 {
        byte(self.bytes_8_16, 5)
    }
    #[inline(always)]
    pub(crate) fn window(&self) -> u16 {
        be16(self.bytes_8_16, 6)
    }
}

/// What the parser made of a packet.
pub(crate) enum Parsed {
    /// TCP over IPv4, with the source and destination addresses as one word in memory order
    /// (see `FlowKey4::words`).
    Tcp4(Ip, Tcp, u64),
    /// TCP over IPv6, with the source (`[0..2]`) and destination (`[2..4]`) addresses as words
    /// in memory order (see `FlowKey6::words`).
    Tcp6(Ip, Tcp, [u64; 4]),
    /// An IP packet that is not (first-fragment) TCP, with the reason.
    OtherIp(Ip, Unclassified),
    /// Not even an IP header could be read.
    NotIp(Unclassified),
}

#[inline(always)]
pub(crate) fn parse<P: Packet>(packet: &P) -> Parsed {
    parse_as::<P, false>(packet)
}

/// [`parse`], but the SYN option walk also picks up the timestamp option where it is not at
/// the aligned place (passive RTT's own programs, see `crate::rtt`; the accounting programs
/// leave it out: one more branch per option byte in the walk took the 6.1 verifier past its
/// limit).
#[inline(always)]
pub(crate) fn parse_with_syn_timestamps<P: Packet>(packet: &P) -> Parsed {
    parse_as::<P, true>(packet)
}

/// [`parse`]; `SYN_TIMESTAMPS` as [`parse_with_syn_timestamps`] says.
#[inline(always)]
fn parse_as<P: Packet, const SYN_TIMESTAMPS: bool>(packet: &P) -> Parsed {
    let Some(mut ethertype) = packet.load::<u16>(12).map(u16::from_be) else {
        return Parsed::NotIp(Unclassified::TruncatedL2);
    };
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // A tag is 2 bytes of TCI, then the inner EtherType.
        let Some(inner) = packet.load::<u16>(offset + 2) else {
            return Parsed::NotIp(Unclassified::TruncatedL2);
        };
        ethertype = u16::from_be(inner);
        offset += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4::<P, SYN_TIMESTAMPS>(packet, offset),
        ETH_P_IPV6 => parse_ipv6::<P, SYN_TIMESTAMPS>(packet, offset),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::NotIp(Unclassified::VlanTooDeep),
        _ => Parsed::NotIp(Unclassified::NotIp),
    }
}

/// Bytes of the packet from `offset` on, where a header at `offset` was just read: the packet
/// is at least that long (a direct read lies inside the linear data, which is part of the
/// packet; the load helpers fail past its end, and the XDP program, declared without
/// multi-buffer support, only ever sees whole linear frames), so the subtraction cannot wrap.
/// Saturating instead cost a branch and a select per packet.
#[inline(always)]
fn remaining<P: Packet>(packet: &P, offset: usize) -> u32 {
    packet.len().wrapping_sub(offset as u32)
}

#[inline(always)]
fn parse_ipv4<P: Packet, const SYN_TIMESTAMPS: bool>(packet: &P, offset: usize) -> Parsed {
    let Some(header) = packet.load::<Header20>(offset) else {
        return Parsed::NotIp(Unclassified::TruncatedIp);
    };
    let first = byte(header.bytes_0_8, 0);
    let version = first >> 4;
    let header_len = ((first & 0x0f) as usize) * 4;
    if version != 4 || header_len < 20 {
        return Parsed::NotIp(Unclassified::BadIpHeader);
    }
    let total_len = be16(header.bytes_0_8, 2) as u32;
    let flags_fragment = be16(header.bytes_0_8, 6);
    let ip = Ip {
        len: ip_len(total_len, remaining(packet, offset)),
        df: flags_fragment & 0x4000 != 0,
        ecn: byte(header.bytes_0_8, 1) & 3,
        protocol: byte(header.bytes_8_16, 1),
        l4_offset: (offset + header_len) as u16,
    };
    let declared = declared_len(total_len);
    if header_len as u32 > ip.len {
        // Past the length the header declares: inconsistent. Only past the frame: cut short.
        let reason = if header_len as u32 > declared {
            Unclassified::BadIpHeader
        } else {
            Unclassified::TruncatedIp
        };
        return Parsed::OtherIp(ip, reason);
    }
    if flags_fragment & 0x1fff != 0 {
        return Parsed::OtherIp(ip, Unclassified::Fragment);
    }
    if byte(header.bytes_8_16, 1) != IPPROTO_TCP {
        return Parsed::OtherIp(ip, Unclassified::NotTcp);
    }
    let l4_len = ip.len - header_len as u32;
    let declared_l4_len = declared - header_len as u32;
    let tcp = match parse_tcp::<P, SYN_TIMESTAMPS>(
        packet,
        offset + header_len,
        l4_len,
        declared_l4_len,
    ) {
        Ok(tcp) => tcp,
        Err(reason) => return Parsed::OtherIp(ip, reason),
    };
    // Source and destination address: bytes 12-19 of the header loaded above.
    let addresses = (header.bytes_8_16 >> 32) | ((header.bytes_16_20 as u64) << 32);
    Parsed::Tcp4(ip, tcp, addresses)
}

#[inline(always)]
fn parse_ipv6<P: Packet, const SYN_TIMESTAMPS: bool>(packet: &P, offset: usize) -> Parsed {
    // The fixed header is 40 bytes; its first word holds every field but the addresses.
    let Some([first_word, ..]) = packet.load::<[u64; 5]>(offset) else {
        return Parsed::NotIp(Unclassified::TruncatedIp);
    };
    if byte(first_word, 0) >> 4 != 6 {
        return Parsed::NotIp(Unclassified::BadIpHeader);
    }
    let payload_len = be16(first_word, 4) as u32;
    // A zero payload length means a jumbogram / BIG TCP packet: use what is there.
    let total_len = if payload_len == 0 {
        0
    } else {
        payload_len + 40
    };
    let mut ip = Ip {
        len: ip_len(total_len, remaining(packet, offset)),
        df: false,
        // The traffic class spans bytes 0-1; its low two bits are bits 4-5 of byte 1.
        ecn: (byte(first_word, 1) >> 4) & 3,
        protocol: 0,
        l4_offset: 0,
    };
    if ip.len < 40 {
        return Parsed::OtherIp(ip, Unclassified::TruncatedIp);
    }

    let mut next = byte(first_word, 6);
    let mut l4_offset = offset + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY => {
                let Some(ext) = packet.load::<u16>(l4_offset) else {
                    return Parsed::OtherIp(ip, Unclassified::TruncatedIp);
                };
                let [next_header, len_units] = ext.to_ne_bytes();
                next = next_header;
                l4_offset += (len_units as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = packet.load::<[u16; 2]>(l4_offset) else {
                    return Parsed::OtherIp(ip, Unclassified::TruncatedIp);
                };
                if u16::from_be(ext[1]) & 0xfff8 != 0 {
                    return Parsed::OtherIp(ip, Unclassified::Fragment);
                }
                next = ext[0].to_ne_bytes()[0];
                l4_offset += 8;
            }
            IPV6_AH => {
                let Some(ext) = packet.load::<u16>(l4_offset) else {
                    return Parsed::OtherIp(ip, Unclassified::TruncatedIp);
                };
                let [next_header, len_units] = ext.to_ne_bytes();
                next = next_header;
                l4_offset += (len_units as usize + 2) * 4;
            }
            _ => break,
        }
    }
    ip.protocol = next;
    ip.l4_offset = l4_offset as u16;
    match next {
        IPPROTO_TCP => {}
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_MOBILITY | IPV6_FRAGMENT
        | IPV6_AH => return Parsed::OtherIp(ip, Unclassified::Ipv6Extensions),
        // ESP hides the rest; anything else is another transport.
        50 => return Parsed::OtherIp(ip, Unclassified::Ipv6Extensions),
        _ => return Parsed::OtherIp(ip, Unclassified::NotTcp),
    }
    let headers = (l4_offset - offset) as u32;
    let declared = declared_len(total_len);
    if headers > ip.len {
        // Past the payload length the header declares: inconsistent. Only past the frame:
        // cut short.
        let reason = if headers > declared {
            Unclassified::BadIpHeader
        } else {
            Unclassified::TruncatedIp
        };
        return Parsed::OtherIp(ip, reason);
    }
    let l4_len = ip.len - headers;
    let tcp = match parse_tcp::<P, SYN_TIMESTAMPS>(packet, l4_offset, l4_len, declared - headers) {
        Ok(tcp) => tcp,
        Err(reason) => return Parsed::OtherIp(ip, reason),
    };
    // Read here rather than kept from the fixed header's load above, so that the extension
    // and option walks do not carry four more live words.
    match packet.load::<[u64; 4]>(offset + 8) {
        Some(addresses) => Parsed::Tcp6(ip, tcp, addresses),
        // Inside the fixed header, which was read whole before: cannot happen.
        None => Parsed::OtherIp(ip, Unclassified::TruncatedIp),
    }
}

/// A 20-byte header (IPv4 without options, TCP without options) as loaded: the first 16 bytes
/// as two words in memory order, whose fields [`byte`], [`be16`] and [`be32`] take out, then
/// the last 4 bytes (IPv4's destination address; for TCP only checked to be there, and the
/// compiler drops the unused load).
/// Packed to 4 bytes: 20 bytes long, not 24, so a load checks exactly the header's length.
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Header20 {
    bytes_0_8: u64,
    bytes_8_16: u64,
    bytes_16_20: u32,
}
const _: () = assert!(core::mem::size_of::<Header20>() == 20);

/// Byte `index` (0-7, memory order) of a word loaded from the packet.
#[inline(always)]
fn byte(word: u64, index: u32) -> u8 {
    (u64::from_le(word) >> (8 * index)) as u8
}

/// The big-endian 16-bit field at bytes `index`, `index + 1` (memory order) of a word loaded
/// from the packet (`index` at most 6).
#[inline(always)]
fn be16(word: u64, index: u32) -> u16 {
    ((u64::from_le(word) >> (8 * index)) as u16).swap_bytes()
}

/// The big-endian 32-bit field at bytes `index` to `index + 3` of a word loaded from the packet
/// (`index` at most 4).
#[inline(always)]
fn be32(word: u64, index: u32) -> u32 {
    ((u64::from_le(word) >> (8 * index)) as u32).swap_bytes()
}

/// The IP length to trust: the header's field, unless it is zero (GSO/BIG TCP) or claims more
/// than the packet holds (truncated capture, corrupt header).
#[inline(always)]
fn ip_len(header_field: u32, present: u32) -> u32 {
    if header_field == 0 || header_field > present {
        present
    } else {
        header_field
    }
}

/// The IP length the header's length field declares; unbounded when the field is 0 (GSO / BIG
/// TCP packets), which declares nothing.
#[inline(always)]
fn declared_len(header_field: u32) -> u32 {
    if header_field == 0 {
        u32::MAX
    } else {
        header_field
    }
}

/// Parses the TCP header at `offset`. `l4_len` is the length of the segment present in the
/// frame, `declared_l4_len` the length the IP header declares for it (at least `l4_len`): a TCP
/// header past the declared length is bad, one only past the frame is truncated.
#[inline(always)]
fn parse_tcp<P: Packet, const SYN_TIMESTAMPS: bool>(
    packet: &P,
    offset: usize,
    l4_len: u32,
    declared_l4_len: u32,
) -> Result<Tcp, Unclassified> {
    let Some(header) = packet.load::<Header20>(offset) else {
        let reason = if declared_l4_len < 20 {
            Unclassified::BadTcpHeader
        } else {
            Unclassified::TruncatedTcp
        };
        return Err(reason);
    };
    let data_offset = ((byte(header.bytes_8_16, 4) >> 4) as u32) * 4;
    if data_offset < 20 || data_offset > declared_l4_len {
        return Err(Unclassified::BadTcpHeader);
    }
    if data_offset > l4_len {
        return Err(Unclassified::TruncatedTcp);
    }
    let mut tcp = Tcp {
        bytes_0_8: header.bytes_0_8,
        bytes_8_16: header.bytes_8_16,
        payload_len: l4_len - data_offset,
        window_scale_plus_one: 0,
        // Read before the window-scale walk: the header's offset is not needed past it then.
        timestamps: crate::tcp_timestamps::timestamps(
            packet,
            offset,
            data_offset,
            header.bytes_0_8 as u32,
        ),
    };
    if tcp.flags() & TCP_SYN != 0 && data_offset > 20 {
        tcp.window_scale_plus_one = window_scale_option::<P, SYN_TIMESTAMPS>(
            packet,
            offset + 20,
            (data_offset - 20) as usize,
            &mut tcp.timestamps,
        );
    }
    Ok(tcp)
}

/// Scans TCP options for window scale (kind 3, length 3); returns the shift plus one, or 0. A
/// timestamp option before it is stored in `timestamps` when `SYN_TIMESTAMPS` (passive RTT,
/// see `crate::rtt`).
/// The options are copied to the stack once and walked there, which keeps the verifier's work
/// linear in the option bytes.
#[inline(always)]
fn window_scale_option<P: Packet, const SYN_TIMESTAMPS: bool>(
    packet: &P,
    offset: usize,
    options_len: usize,
    timestamps: &mut crate::tcp_timestamps::Timestamps,
) -> u8 {
    // 64 bytes so that masking an index with 63 proves it in bounds to the verifier.
    let mut options = [0u8; 64];
    let len = options_len.min(MAX_TCP_OPTION_BYTES);
    if !packet.load_span(offset, &mut options, len as u32) {
        return 0;
    }
    // Walk byte positions, not options: the position is the loop counter, and the start of
    // the next option is only ever compared with it. That keeps the verifier's states prunable
    // (a data-dependent index would multiply them per option).
    let mut next_option = 0usize;
    for position in 0..MAX_TCP_OPTION_BYTES {
        if position + 1 >= len {
            break;
        }
        if position != next_option {
            continue;
        }
        let kind = options[position & 63];
        if kind == 0 {
            break;
        }
        if kind == 1 {
            next_option = position + 1;
            continue;
        }
        let length = options[(position + 1) & 63] as usize;
        if kind == 3 && length == 3 {
            if position + 2 >= len {
                break;
            }
            // RFC 7323: shifts above 14 are treated as 14.
            return options[(position + 2) & 63].min(14) + 1;
        }
        if SYN_TIMESTAMPS && kind == 8 && length == 10 && position + 10 <= len {
            *timestamps = crate::tcp_timestamps::Timestamps::from_option(&options, position);
        }
        if length < 2 {
            break;
        }
        next_option = forget_bounds((position + length).min(63), &options);
    }
    0
}

/// `value` (at most 63) unchanged, but with its range hidden from the verifier: it sees
/// `value + a - b` for two bytes it cannot prove equal, masked to 0..=63. Without this, Linux
/// 6.1's verifier tracks every option start as its own range and cannot prune the walk's states
/// (it gives up at a million instructions); with it every path carries the same 0..=63.
#[inline(always)]
fn forget_bounds(value: usize, scratch: &[u8; 64]) -> usize {
    // SAFETY: two reads of the same initialised stack byte.
    let (a, b) = unsafe {
        (
            core::ptr::read_volatile(&scratch[0]),
            core::ptr::read_volatile(&scratch[0]),
        )
    };
    value.wrapping_add(a as usize).wrapping_sub(b as usize) & 63
}
